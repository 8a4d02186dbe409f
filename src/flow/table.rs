//! The per-worker flow table: fixed capacity, open addressing, no allocation after
//! construction.
//!
//! # Layout
//!
//! Two parallel boxed slices of `slots` entries each, `slots` a power of two with
//! `slots >= capacity * 4 / 3` (so the load factor never exceeds 0.75) and
//! `slots > capacity` (so there is always an empty slot and probes terminate):
//!
//! * `tags: [u32]`: 0 marks an empty slot; otherwise the high 32 bits of the key's
//!   ahash (remapped 0 → 1). The slot a key hashes to ("home") is `tag & mask`, so
//!   probing compares 4-byte tags (16 per cache line) and touches a record only on a
//!   tag match, and deletion recomputes homes from tags without rehashing keys.
//! * `records: [FlowRecord]`: [`RECORD_BYTES`] each.
//!
//! Memory is `slots * SLOT_BYTES` ([`SLOT_BYTES`] = [`RECORD_BYTES`] + 4 = 52 bytes on
//! 64-bit targets; [`RECORD_BYTES`] = 48), e.g. capacity 1,000,000 → 2^21 slots →
//! 109,051,904 bytes (104 MiB). [`FlowTable::memory_bytes`] reports it.
//!
//! # Algorithm
//!
//! Linear probing; deletion by backward shift (no tombstones), so lookups in a table
//! that has seen any number of inserts and removes cost what they would in a freshly
//! built table with the same contents.
use std::{
    fmt,
    hash::Hash,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6},
};

use super::{FlowKey, FlowKey6, TcpState};
use crate::{ids::BackendId, prefetch::prefetch};

/// One connection: where its packets go and what has been seen of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord {
    pub key: FlowKey,
    /// The daemon, by its id in the worker's current configuration.
    pub backend: BackendId,
    /// The daemon's address (what the destination is rewritten to).
    pub daemon: SocketAddrV4,
    /// Monotonic clock nanoseconds, caller-supplied.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Where the client's next segment starts (after its last one's payload, SYN
    /// and FIN): a client's reset carries about this sequence number.
    pub client_next: u32,
    /// The client's last acknowledgment: where the daemon's stream stands, near
    /// which a daemon's reset's sequence number lies.
    pub client_ack: u32,
    pub state: TcpState,
    /// The worker's configuration epoch when `backend` was last set: a record of
    /// an older one is brought up to date (or dropped) when next met.
    pub epoch: u8,
}

/// One IPv6 connection: [`FlowRecord`] with IPv6 addresses. The daemon is an
/// address and a port, not a `SocketAddrV6`, whose flow label and scope would
/// add 8 bytes to every record and mean nothing here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowRecord6 {
    pub key: FlowKey6,
    pub backend: BackendId,
    pub daemon_ip: Ipv6Addr,
    pub daemon_port: u16,
    pub created_ns: u64,
    pub last_seen_ns: u64,
    pub client_next: u32,
    pub client_ack: u32,
    pub state: TcpState,
    pub epoch: u8,
}

impl FlowRecord6 {
    pub fn daemon(&self) -> SocketAddrV6 {
        SocketAddrV6::new(self.daemon_ip, self.daemon_port, 0, 0)
    }
}

/// What a [`Table`] keeps: a fixed-size record that carries its own key.
/// The table is monomorphised per record type, so the IPv4 table's code is
/// what it was before IPv6 records existed.
pub trait Record: Copy {
    type Key: Copy + Eq;
    /// What is hashed of a key: distinct keys give distinct values.
    type Packed: Hash;
    /// The filler of empty slots (never compared: tags say which slots hold records).
    const VACANT: Self;
    fn key(&self) -> &Self::Key;
    fn packed(key: &Self::Key) -> Self::Packed;
}

impl Record for FlowRecord {
    type Key = FlowKey;
    type Packed = u128;
    const VACANT: Self = VACANT;
    #[inline(always)]
    fn key(&self) -> &FlowKey {
        &self.key
    }
    #[inline(always)]
    fn packed(key: &FlowKey) -> u128 {
        key.packed()
    }
}

impl Record for FlowRecord6 {
    type Key = FlowKey6;
    type Packed = (u128, u128, u64);
    const VACANT: Self = FlowRecord6 {
        key: FlowKey6 {
            client_ip: Ipv6Addr::UNSPECIFIED,
            service_ip: Ipv6Addr::UNSPECIFIED,
            client_port: 0,
            service_port: 0,
            protocol: 0,
        },
        backend: BackendId(0),
        daemon_ip: Ipv6Addr::UNSPECIFIED,
        daemon_port: 0,
        created_ns: 0,
        last_seen_ns: 0,
        client_next: 0,
        client_ack: 0,
        state: TcpState(0),
        epoch: 0,
    };
    #[inline(always)]
    fn key(&self) -> &FlowKey6 {
        &self.key
    }
    #[inline(always)]
    fn packed(key: &FlowKey6) -> (u128, u128, u64) {
        key.packed()
    }
}

/// Size of a [`FlowRecord`] (48 bytes on the supported targets; asserted in tests).
pub const RECORD_BYTES: usize = size_of::<FlowRecord>();
/// Bytes per slot: one record plus its 4-byte tag (52 bytes).
pub const SLOT_BYTES: usize = RECORD_BYTES + size_of::<u32>();
/// Size of a [`FlowRecord6`] (88 bytes; asserted in tests).
pub const RECORD6_BYTES: usize = size_of::<FlowRecord6>();
/// Bytes per slot of an IPv6 table (92).
pub const SLOT6_BYTES: usize = RECORD6_BYTES + size_of::<u32>();
/// Largest capacity [`FlowTable::with_capacity`] accepts (tags address at most 2^32 slots).
pub const MAX_CAPACITY: usize = 1 << 30;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InsertError {
    #[error("flow table full ({capacity} records)")]
    Full { capacity: usize },
    #[error("flow already present")]
    Exists,
}

/// A record that entered or left a table keeping a journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change<R = FlowRecord> {
    Inserted(R),
    Removed(R),
}

const EMPTY_TAG: u32 = 0;

const VACANT: FlowRecord = FlowRecord {
    key: FlowKey {
        client_ip: Ipv4Addr::UNSPECIFIED,
        service_ip: Ipv4Addr::UNSPECIFIED,
        client_port: 0,
        service_port: 0,
        protocol: 0,
    },
    backend: BackendId(0),
    daemon: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    created_ns: 0,
    last_seen_ns: 0,
    client_next: 0,
    client_ack: 0,
    state: TcpState(0),
    epoch: 0,
};

/// `len` copies of `value`, written now: new flows then pay no page fault on the
/// hot path, and the table's memory is resident from the start. Huge pages are
/// asked for before the first write, so that writing maps them (see
/// [`advise_huge_pages`](crate::sys::advise_huge_pages)).
fn resident_slice<T: Copy>(len: usize, value: T) -> Box<[T]> {
    let mut v = Vec::with_capacity(len);
    crate::sys::advise_huge_pages(v.spare_capacity_mut());
    v.resize(len, value);
    v.into_boxed_slice()
}

/// A key's hash in one particular table (tables hash with their own random
/// state): computed once per packet, used for the prefetch and the lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowHash(u32);

/// Fixed-capacity hash table of records ([`FlowRecord`]s keyed by [`FlowKey`],
/// [`FlowRecord6`]s keyed by [`FlowKey6`]), for one
/// writer (one queue's worker). See the module docs for layout and memory.
///
/// Records returned by [`get_mut`](Self::get_mut) and [`insert`](Self::insert) must
/// not have their `key` changed: the record would stay in the table (reachable by
/// [`iter`](Self::iter)/[`retain`](Self::retain), which keep working) but no longer
/// be found by key.
pub struct Table<R: Record> {
    tags: Box<[u32]>,
    records: Box<[R]>,
    mask: usize,
    len: usize,
    capacity: usize,
    hasher: ahash::RandomState,
    /// All ones except in tests, which narrow it to force tag and home collisions.
    tag_mask: u32,
    /// Every record inserted and removed since the last drain, in order, while
    /// `keep_journal` is set ([`keep_journal`](Self::keep_journal)).
    journal: Vec<Change<R>>,
    keep_journal: bool,
}

/// The IPv4 flow table.
pub type FlowTable = Table<FlowRecord>;
/// The IPv6 flow table: the same table over [`FlowRecord6`].
pub type FlowTable6 = Table<FlowRecord6>;

impl<R: Record> fmt::Debug for Table<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("slots", &self.tags.len())
            .finish_non_exhaustive()
    }
}

impl<R: Record> Table<R> {
    const SLOT: usize = size_of::<R>() + size_of::<u32>();

    /// Allocates a table holding up to `capacity` records; nothing allocates later.
    ///
    /// # Panics
    /// If `capacity > MAX_CAPACITY`.
    pub fn with_capacity(capacity: usize) -> Self {
        assert!(
            capacity <= MAX_CAPACITY,
            "flow table capacity {capacity} exceeds {MAX_CAPACITY}"
        );
        let slots = Self::slots_for(capacity);
        let tags = resident_slice(slots, EMPTY_TAG);
        let records = resident_slice(slots, R::VACANT);
        Self {
            tags,
            records,
            mask: slots - 1,
            len: 0,
            capacity,
            hasher: ahash::RandomState::new(),
            tag_mask: u32::MAX,
            journal: Vec::new(),
            keep_journal: false,
        }
    }

    /// From now on, notes every record inserted and removed (by any method), in
    /// order, until [`drain_journal`](Self::drain_journal) takes them: what a
    /// copy of the table's contents kept elsewhere (the kernel's map of tracked
    /// connections) needs to follow it. `room` changes fit without allocating.
    pub fn keep_journal(&mut self, room: usize) {
        self.journal.reserve(room);
        self.keep_journal = true;
    }

    /// The changes noted since the last call, oldest first; none if no journal
    /// is kept.
    pub fn drain_journal(&mut self) -> std::vec::Drain<'_, Change<R>> {
        self.journal.drain(..)
    }

    /// Notes `record`, which stays in the table, as inserted again: a record
    /// that a new connection restarted (a reused port), whose copy elsewhere
    /// must be written afresh.
    pub fn note_restarted(&mut self, record: R) {
        self.note(Change::Inserted(record));
    }

    #[inline(always)]
    fn note(&mut self, change: Change<R>) {
        if self.keep_journal {
            self.push_change(change);
        }
    }

    /// Out of line, so that tables keeping no journal (reply_mode "stateless")
    /// carry only the test of the flag in their insert and remove paths.
    #[inline(never)]
    fn push_change(&mut self, change: Change<R>) {
        self.journal.push(change);
    }

    /// A table whose tags keep only `tag_mask` bits: with a small mask almost every
    /// key shares its home slot and tag with others (worst-case clustering).
    #[cfg(test)]
    fn with_capacity_and_tag_mask(capacity: usize, tag_mask: u32) -> Self {
        Self {
            tag_mask,
            ..Self::with_capacity(capacity)
        }
    }

    /// Slot count used for `capacity`: the smallest power of two that is at least
    /// `ceil(capacity * 4 / 3)` and greater than `capacity`.
    pub fn slots_for(capacity: usize) -> usize {
        capacity
            .saturating_mul(4)
            .div_ceil(3)
            .max(capacity + 1)
            .next_power_of_two()
    }

    #[inline]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots (power of two).
    #[inline]
    pub fn slots(&self) -> usize {
        self.tags.len()
    }

    /// Heap bytes held: `slots() * SLOT_BYTES` ([`SLOT6_BYTES`] for IPv6).
    #[inline]
    pub fn memory_bytes(&self) -> usize {
        self.slots() * Self::SLOT
    }

    /// [`memory_bytes`](Self::memory_bytes) of a table of `capacity`, before
    /// it is allocated.
    pub fn memory_for(capacity: usize) -> usize {
        Self::slots_for(capacity).saturating_mul(Self::SLOT)
    }

    /// `key`'s hash in this table, for the `*_hashed` methods.
    #[inline(always)]
    pub fn hash(&self, key: &R::Key) -> FlowHash {
        let t = (self.hasher.hash_one(R::packed(key)) >> 32) as u32 & self.tag_mask;
        FlowHash(if t == EMPTY_TAG { 1 } else { t })
    }

    /// `Ok(slot)` holding `key`, or `Err(slot)`: the empty slot ending its probe run.
    #[inline(always)]
    fn find(&self, key: &R::Key, FlowHash(tag): FlowHash) -> Result<usize, usize> {
        let mut i = tag as usize & self.mask;
        loop {
            let t = self.tags[i];
            if t == EMPTY_TAG {
                return Err(i);
            }
            if t == tag && self.records[i].key() == key {
                return Ok(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Starts loading the lines a lookup or insert of the key with `hash` touches
    /// first (its home slot's tag and record), for a frame a few places ahead in a
    /// batch.
    #[inline(always)]
    pub fn prefetch(&self, FlowHash(tag): FlowHash) {
        let home = tag as usize & self.mask;
        prefetch(&self.tags[home]);
        prefetch(&self.records[home]);
    }

    #[inline(always)]
    pub fn get(&self, key: &R::Key) -> Option<&R> {
        let i = self.find(key, self.hash(key)).ok()?;
        Some(&self.records[i])
    }

    #[inline(always)]
    pub fn get_mut(&mut self, key: &R::Key) -> Option<&mut R> {
        self.get_mut_hashed(key, self.hash(key))
    }

    /// [`get_mut`](Self::get_mut) for a key whose [`hash`](Self::hash) is known.
    #[inline(always)]
    pub fn get_mut_hashed(&mut self, key: &R::Key, hash: FlowHash) -> Option<&mut R> {
        debug_assert_eq!(hash, self.hash(key));
        let i = self.find(key, hash).ok()?;
        Some(&mut self.records[i])
    }

    /// [`get_mut_hashed`](Self::get_mut_hashed) for records that may have outlived
    /// what they point at: `valid` may bring the record up to date (and say so),
    /// or refuse it, and a refused record is removed and reported absent.
    #[inline(always)]
    pub fn get_valid_hashed(
        &mut self,
        key: &R::Key,
        hash: FlowHash,
        valid: impl FnOnce(&mut R) -> bool,
    ) -> Option<&mut R> {
        debug_assert_eq!(hash, self.hash(key));
        let i = self.find(key, hash).ok()?;
        if valid(&mut self.records[i]) {
            Some(&mut self.records[i])
        } else {
            self.remove_at(i);
            None
        }
    }

    /// Moves over `count` slots (at most all of them) from `from` on, wrapping,
    /// and calls `keep` on each record met; a record it refuses is removed.
    /// Returns the slot to start the next call from: a table-wide job done a
    /// slice at a time. Passes over all the slots in slices see every record that
    /// was there at the start and is still there at the end at least once, as
    /// long as nothing else removes records meanwhile (a removal behind the
    /// cursor can shift a record the pass has not seen yet behind it); a record
    /// a removal shifts across the point where the pass began is seen twice.
    pub fn sweep(
        &mut self,
        from: usize,
        count: usize,
        mut keep: impl FnMut(&mut R) -> bool,
    ) -> usize {
        let mut i = from & self.mask;
        let mut moved = 0;
        // Each removal costs one more step without moving; there are at most
        // `len` of them.
        while moved < count.min(self.tags.len()) {
            if self.tags[i] != EMPTY_TAG && !keep(&mut self.records[i]) {
                // The backward shift may have moved the next record into slot i:
                // look at it again.
                self.remove_at(i);
                continue;
            }
            i = (i + 1) & self.mask;
            moved += 1;
        }
        i
    }

    /// Inserts a record for a key not yet present. On error the table is untouched:
    /// `Exists` if the key is present (checked first), `Full` if `len() == capacity()`.
    pub fn insert(&mut self, record: R) -> Result<&mut R, InsertError> {
        self.insert_hashed(record, self.hash(record.key()))
    }

    /// [`insert`](Self::insert) for a record whose key's [`hash`](Self::hash) is known.
    #[inline]
    pub fn insert_hashed(&mut self, record: R, hash: FlowHash) -> Result<&mut R, InsertError> {
        debug_assert_eq!(hash, self.hash(record.key()));
        match self.find(record.key(), hash) {
            Ok(_) => Err(InsertError::Exists),
            Err(_) if self.len >= self.capacity => Err(InsertError::Full {
                capacity: self.capacity,
            }),
            Err(i) => {
                self.tags[i] = hash.0;
                self.records[i] = record;
                self.len += 1;
                self.note(Change::Inserted(record));
                Ok(&mut self.records[i])
            }
        }
    }

    pub fn remove(&mut self, key: &R::Key) -> Option<R> {
        let i = self.find(key, self.hash(key)).ok()?;
        Some(self.remove_at(i))
    }

    /// Empties occupied slot `i` and shifts later members of its probe run back so
    /// that every record stays reachable from its home slot without tombstones.
    fn remove_at(&mut self, i: usize) -> R {
        let removed = self.records[i];
        let mask = self.mask;
        let mut hole = i;
        let mut j = (i + 1) & mask;
        loop {
            let t = self.tags[j];
            if t == EMPTY_TAG {
                break;
            }
            let home = t as usize & mask;
            // Move j into the hole unless its home lies cyclically in (hole, j].
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.tags[hole] = t;
                self.records[hole] = self.records[j];
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.tags[hole] = EMPTY_TAG;
        self.len -= 1;
        self.note(Change::Removed(removed));
        removed
    }

    /// All records, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.tags
            .iter()
            .zip(self.records.iter())
            .filter(|(t, _)| **t != EMPTY_TAG)
            .map(|(_, r)| r)
    }

    /// Keeps the records for which `f` returns true, removes the others, and returns
    /// how many were removed. `f` is called exactly once per record. O(slots).
    pub fn retain(&mut self, mut f: impl FnMut(&R) -> bool) -> usize {
        if self.len == 0 {
            return 0;
        }
        // Start just after an empty slot: backward shifts never move a record across
        // an empty slot that stays empty, so no record is moved from the not-yet-visited
        // part into the visited part (or the other way round).
        let start = self
            .tags
            .iter()
            .position(|&t| t == EMPTY_TAG)
            .expect("slots > capacity, so a slot is always empty");
        let slots = self.slots();
        let mut removed = 0;
        let mut step = 1;
        while step < slots {
            let i = (start + step) & self.mask;
            if self.tags[i] != EMPTY_TAG && !f(&self.records[i]) {
                self.remove_at(i);
                removed += 1;
                // Slot i now holds the next unvisited record of the run, or is empty.
                continue;
            }
            step += 1;
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn key(n: u32) -> FlowKey {
        FlowKey {
            client_ip: Ipv4Addr::from(0x0a00_0000 | (n >> 8)),
            service_ip: Ipv4Addr::new(192, 0, 2, 1),
            client_port: 1024 + (n & 0xff) as u16,
            service_port: 80,
            protocol: 6,
        }
    }

    fn rec(n: u32, backend: u16, t: u64) -> FlowRecord {
        FlowRecord {
            key: key(n),
            backend: BackendId(backend),
            daemon: SocketAddrV4::new(Ipv4Addr::new(10, 1, 0, backend as u8), 8000 + backend),
            created_ns: t,
            last_seen_ns: t,
            client_next: n,
            client_ack: 0,
            state: TcpState::SYN_SEEN,
            epoch: 0,
        }
    }

    #[test]
    fn sizes_are_as_documented() {
        assert_eq!(RECORD_BYTES, 48);
        assert_eq!(SLOT_BYTES, 52);
        assert_eq!(size_of::<FlowKey>(), 14);
        assert_eq!(RECORD6_BYTES, 88);
        assert_eq!(SLOT6_BYTES, 92);
        assert_eq!(size_of::<FlowKey6>(), 38);
        assert_eq!(FlowTable6::memory_for(3), 4 * 92);
        assert_eq!(FlowTable::memory_for(3), 4 * 52);
    }

    fn key6(n: u32) -> FlowKey6 {
        FlowKey6 {
            client_ip: Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, (n >> 16) as u16, n as u16),
            service_ip: "2001:2:0:1::100".parse().unwrap(),
            client_port: 1024 + (n & 0xff) as u16,
            service_port: 80,
            protocol: 6,
        }
    }

    #[test]
    fn an_ipv6_table_inserts_finds_and_removes_by_the_whole_tuple() {
        let mut t = FlowTable6::with_capacity(64);
        for n in 0..64 {
            let r = FlowRecord6 {
                key: key6(n),
                backend: BackendId(n as u16 % 3),
                daemon_ip: "2001:2:0:2::11".parse().unwrap(),
                daemon_port: 8080,
                ..<FlowRecord6 as Record>::VACANT
            };
            t.insert(r).unwrap();
        }
        assert_eq!(
            t.insert(FlowRecord6 {
                key: key6(0),
                ..<FlowRecord6 as Record>::VACANT
            }),
            Err(InsertError::Exists)
        );
        assert_eq!(
            t.insert(FlowRecord6 {
                key: key6(64),
                ..<FlowRecord6 as Record>::VACANT
            }),
            Err(InsertError::Full { capacity: 64 })
        );
        // Keys that differ only in the low bits of the client address, or
        // only in the service address, are different flows.
        let mut other = key6(5);
        other.service_ip = "2001:2:0:1::101".parse().unwrap();
        assert!(t.get(&other).is_none());
        assert_eq!(t.get(&key6(5)).unwrap().backend, BackendId(2));
        assert_eq!(
            t.get(&key6(7)).unwrap().daemon().to_string(),
            "[2001:2:0:2::11]:8080"
        );
        assert_eq!(t.remove(&key6(5)).unwrap().key, key6(5));
        assert_eq!(t.len(), 63);
        assert_eq!(t.retain(|r| r.backend != BackendId(0)), 22, "0, 3, .., 63");
        assert!((0..64)
            .filter(|&n| n != 5)
            .all(|n| t.get(&key6(n)).is_some() == (n % 3 != 0)));
    }

    #[test]
    fn slot_counts() {
        assert_eq!(FlowTable::slots_for(0), 1);
        assert_eq!(FlowTable::slots_for(1), 2);
        assert_eq!(FlowTable::slots_for(3), 4);
        assert_eq!(FlowTable::slots_for(4), 8);
        assert_eq!(FlowTable::slots_for(6), 8);
        assert_eq!(FlowTable::slots_for(7), 16);
        assert_eq!(FlowTable::slots_for(1 << 20), 1 << 21);
        for c in 0..5000 {
            let s = FlowTable::slots_for(c);
            assert!(s.is_power_of_two() && s > c && s * 3 >= c * 4, "{c} -> {s}");
        }
    }

    #[test]
    fn zero_capacity_refuses() {
        let mut t = FlowTable::with_capacity(0);
        assert_eq!(
            t.insert(rec(1, 0, 0)),
            Err(InsertError::Full { capacity: 0 })
        );
        assert!(t.get(&key(1)).is_none() && t.remove(&key(1)).is_none());
        assert_eq!(t.retain(|_| false), 0);
    }

    #[test]
    fn insert_get_update_remove() {
        let mut t = FlowTable::with_capacity(8);
        assert!(t.is_empty());
        t.insert(rec(1, 1, 5)).unwrap().last_seen_ns = 6;
        assert_eq!(t.insert(rec(1, 2, 7)), Err(InsertError::Exists));
        assert_eq!(t.get(&key(1)).unwrap().last_seen_ns, 6);
        assert_eq!(t.get(&key(1)).unwrap().backend, BackendId(1));
        t.get_mut(&key(1))
            .unwrap()
            .state
            .insert(TcpState::ESTABLISHED);
        assert!(t.get(&key(1)).unwrap().state.is_established());
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(&key(1)).unwrap().last_seen_ns, 6);
        assert!(t.get(&key(1)).is_none() && t.remove(&key(1)).is_none());
        assert!(t.is_empty());
    }

    #[test]
    fn full_table_refuses_and_keeps_everything() {
        for tag_mask in [u32::MAX, 0x3, 0] {
            for cap in [1usize, 2, 3, 5, 6, 7, 64, 1000] {
                let mut t = FlowTable::with_capacity_and_tag_mask(cap, tag_mask);
                for n in 0..cap as u32 {
                    t.insert(rec(n, n as u16, u64::from(n))).unwrap();
                }
                assert_eq!(t.len(), cap);
                assert_eq!(
                    t.insert(rec(cap as u32, 0, 0)),
                    Err(InsertError::Full { capacity: cap })
                );
                // An existing key is reported as such even when full.
                assert_eq!(t.insert(rec(0, 9, 9)), Err(InsertError::Exists));
                assert_eq!(t.len(), cap);
                for n in 0..cap as u32 {
                    assert_eq!(t.get(&key(n)), Some(&rec(n, n as u16, u64::from(n))));
                }
                assert!(t.get(&key(cap as u32)).is_none());
                assert_eq!(t.iter().count(), cap);
                // Remove everything, then everything is reinsertable.
                for n in 0..cap as u32 {
                    assert_eq!(t.remove(&key(n)), Some(rec(n, n as u16, u64::from(n))));
                }
                assert_eq!(t.len(), 0);
                assert_eq!(t.iter().count(), 0);
                assert!(t.tags.iter().all(|&x| x == EMPTY_TAG));
                for n in (0..cap as u32).rev() {
                    t.insert(rec(n, 1, 1)).unwrap();
                }
                assert_eq!(t.len(), cap);
                assert_eq!(t.retain(|r| r.key.client_port % 2 == 0), cap / 2);
                assert_eq!(t.len(), cap - cap / 2);
                for n in 0..cap as u32 {
                    assert_eq!(t.get(&key(n)).is_some(), n % 2 == 0);
                }
            }
        }
    }

    #[test]
    fn the_journal_notes_every_insert_and_removal_in_order() {
        let mut t = FlowTable::with_capacity(16);
        t.insert(rec(1, 0, 0)).unwrap();
        assert_eq!(t.drain_journal().count(), 0, "kept only once asked for");
        t.keep_journal(4);
        t.insert(rec(2, 0, 0)).unwrap();
        assert_eq!(t.insert(rec(2, 1, 1)), Err(InsertError::Exists));
        t.get_mut(&key(2)).unwrap().last_seen_ns = 9;
        assert!(t.remove(&key(7)).is_none());
        let removed = t.remove(&key(1)).unwrap();
        t.insert(rec(3, 0, 0)).unwrap();
        t.insert(rec(4, 0, 0)).unwrap();
        assert_eq!(t.retain(|r| r.key == key(4)), 2);
        let mut changes: Vec<Change> = t.drain_journal().collect();
        // retain visits in slot order: compare its two removals as a set.
        let tail: Vec<Change> = changes.split_off(4);
        assert_eq!(
            changes,
            [
                Change::Inserted(rec(2, 0, 0)),
                Change::Removed(removed),
                Change::Inserted(rec(3, 0, 0)),
                Change::Inserted(rec(4, 0, 0)),
            ]
        );
        let mut gone: Vec<u16> = tail
            .iter()
            .map(|c| match c {
                Change::Removed(r) => r.key.client_port,
                Change::Inserted(r) => panic!("{r:?} inserted by retain"),
            })
            .collect();
        gone.sort_unstable();
        assert_eq!(gone, [key(2).client_port, key(3).client_port]);
        assert_eq!(t.drain_journal().count(), 0, "drained");
    }

    #[test]
    fn churn_does_not_degrade() {
        // Many insert/remove cycles at high load: with backward-shift deletion the
        // table never accumulates tombstones; every slot not holding a record is empty.
        let cap = 768; // 1024 slots, load 0.75
        let mut t = FlowTable::with_capacity(cap);
        for n in 0..cap as u32 {
            t.insert(rec(n, 0, 0)).unwrap();
        }
        for round in 0..50u32 {
            for n in 0..cap as u32 / 2 {
                let old = round * 1000 + n * 2;
                let _ = t.remove(&key(old % 100_000));
            }
            t.retain(|r| r.key.client_port % 3 != 0);
            let mut n = 0;
            while t.len() < cap {
                let _ = t.insert(rec(round * 7919 + n, 0, 0));
                n += 1;
            }
            assert_eq!(t.tags.iter().filter(|&&x| x != EMPTY_TAG).count(), cap);
        }
        for r in t.iter() {
            assert_eq!(t.get(&r.key), Some(r));
        }
    }

    #[test]
    fn retain_calls_once_per_record() {
        for tag_mask in [u32::MAX, 1, 0] {
            let mut t = FlowTable::with_capacity_and_tag_mask(48, tag_mask);
            for n in 0..48 {
                t.insert(rec(n, 0, 0)).unwrap();
            }
            let mut seen = HashMap::new();
            let removed = t.retain(|r| {
                *seen.entry(r.key).or_insert(0) += 1;
                r.key.client_port % 3 == 0
            });
            assert_eq!(seen.len(), 48);
            assert!(seen.values().all(|&c| c == 1));
            assert_eq!(removed, 32);
            assert_eq!(t.len(), 16);
        }
    }

    #[test]
    fn a_sweep_in_slices_sees_every_record_in_one_pass() {
        for capacity in [1, 7, 100, 1000] {
            let mut t = FlowTable::with_capacity(capacity);
            for n in 0..capacity as u32 {
                t.insert(rec(n, 0, u64::from(n))).unwrap();
            }
            let mut seen = std::collections::HashMap::<u32, u32>::new();
            let mut cursor = 12_345;
            let mut left = t.slots();
            while left > 0 {
                let slice = left.min(17);
                cursor = t.sweep(cursor, slice, |r| {
                    let n = ((u32::from(r.key.client_ip) - 0x0a00_0000) << 8)
                        | u32::from(r.key.client_port - 1024);
                    *seen.entry(n).or_default() += 1;
                    n % 3 != 0
                });
                left -= slice;
            }
            assert_eq!(seen.len(), capacity, "every record seen");
            assert_eq!(t.len(), (0..capacity).filter(|n| n % 3 != 0).count());
            for n in 0..capacity as u32 {
                assert_eq!(t.get(&key(n)).is_some(), n % 3 != 0, "key {n}");
            }
        }
    }

    #[test]
    fn an_invalid_record_is_removed_when_met() {
        let mut t = FlowTable::with_capacity(8);
        for n in 0..4 {
            t.insert(rec(n, 0, 0)).unwrap();
        }
        let k = key(2);
        let hash = t.hash(&k);
        assert!(t.get_valid_hashed(&k, hash, |_| false).is_none());
        assert!(t.get(&k).is_none());
        assert_eq!(t.len(), 3);
        let k = key(3);
        let hash = t.hash(&k);
        let r = t.get_valid_hashed(&k, hash, |r| {
            r.epoch = 9;
            true
        });
        assert_eq!(r.map(|r| r.epoch), Some(9));
    }

    #[test]
    fn million_capacity_memory() {
        let t = FlowTable::with_capacity(1_000_000);
        assert_eq!(t.slots(), 1 << 21);
        assert_eq!(t.memory_bytes(), 109_051_904);
        assert_eq!(
            t.tags.len() * 4 + t.records.len() * RECORD_BYTES,
            t.memory_bytes()
        );
        assert_eq!(FlowTable::memory_for(1_000_000), t.memory_bytes());
        assert_eq!(t.capacity(), 1_000_000);
        assert!(t.is_empty());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u32, u64),
        Get(u32),
        Update(u32, u64),
        Remove(u32),
        Retain(u32),
    }

    fn op(keys: u32) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..keys, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0..keys).prop_map(Op::Get),
            1 => (0..keys, any::<u64>()).prop_map(|(k, v)| Op::Update(k, v)),
            2 => (0..keys).prop_map(Op::Remove),
            1 => (1..5u32).prop_map(Op::Retain),
        ]
    }

    fn check_model(cap: usize, tag_mask: u32, ops: &[Op]) -> Result<(), TestCaseError> {
        let mut t = FlowTable::with_capacity_and_tag_mask(cap, tag_mask);
        let mut m: HashMap<FlowKey, FlowRecord> = HashMap::new();
        for op in ops {
            match *op {
                Op::Insert(k, v) => {
                    let r = FlowRecord {
                        last_seen_ns: v,
                        ..rec(k, (k % 7) as u16, v)
                    };
                    let got = t.insert(r).map(|x| *x);
                    let want = if m.contains_key(&r.key) {
                        Err(InsertError::Exists)
                    } else if m.len() == cap {
                        Err(InsertError::Full { capacity: cap })
                    } else {
                        m.insert(r.key, r);
                        Ok(r)
                    };
                    prop_assert_eq!(got, want);
                }
                Op::Get(k) => prop_assert_eq!(t.get(&key(k)), m.get(&key(k))),
                Op::Update(k, v) => {
                    let a = t.get_mut(&key(k)).map(|r| {
                        r.last_seen_ns = v;
                        *r
                    });
                    let b = m.get_mut(&key(k)).map(|r| {
                        r.last_seen_ns = v;
                        *r
                    });
                    prop_assert_eq!(a, b);
                }
                Op::Remove(k) => prop_assert_eq!(t.remove(&key(k)), m.remove(&key(k))),
                Op::Retain(d) => {
                    let keep = |r: &FlowRecord| !r.last_seen_ns.is_multiple_of(u64::from(d + 1));
                    let before = m.len();
                    m.retain(|_, r| keep(r));
                    prop_assert_eq!(t.retain(keep), before - m.len());
                }
            }
            prop_assert_eq!(t.len(), m.len());
            prop_assert!(t.len() <= cap);
        }
        // Final full comparison, both ways.
        prop_assert_eq!(t.iter().count(), m.len());
        for r in t.iter() {
            prop_assert_eq!(m.get(&r.key), Some(r));
        }
        for (k, r) in &m {
            prop_assert_eq!(t.get(k), Some(r));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn model_random_hashes(cap in 1usize..64, ops in prop::collection::vec(op(96), 0..400)) {
            check_model(cap, u32::MAX, &ops)?;
        }

        /// Tags of 0-2 bits: every key homes to one of at most 4 slots and shares its tag
        /// with a quarter of the others or more; long wrapping probe runs everywhere.
        #[test]
        fn model_heavy_collisions(
            cap in 1usize..64,
            tag_mask in prop_oneof![Just(0u32), Just(1), Just(3)],
            ops in prop::collection::vec(op(96), 0..400),
        ) {
            check_model(cap, tag_mask, &ops)?;
        }

        /// High bits only: homes collide (same low bits) but tags mostly differ, so probe
        /// runs are long and tag filtering is exercised.
        #[test]
        fn model_home_collisions(
            cap in 1usize..64,
            ops in prop::collection::vec(op(96), 0..400),
        ) {
            check_model(cap, 0xffff_0000 | 1, &ops)?;
        }
    }
}
