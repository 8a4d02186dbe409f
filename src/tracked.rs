//! `reply_mode = "tracked"`: each worker mirrors the connections of its flow
//! table into the kernel's map of tracked connections, which the XDP program
//! looks every daemon frame up in before taking it as a reply. A reply may
//! arrive on any queue, so the record it belongs to may be another worker's:
//! the map is the one place every queue's program can see them all.
//!
//! The table keeps a journal of the records it gains and loses
//! ([`Table::keep_journal`]); [`ReplyTracker::sync`] writes it to the map,
//! one batch syscall per run of insertions or removals, in the order they
//! happened. The worker calls it after handling a batch of client frames and
//! before handing them to the TX ring (so a daemon's SYN-ACK never arrives
//! before its connection is in the map), and after applying the loop's
//! commands (so removed records leave the map even when no traffic follows).
//! A connection costs one key write and one key removal, each shared with the
//! other connections of its batch; a record restarted by a reused port keeps
//! its key.
use crate::{
    flow::{Change, FlowRecord, FlowRecord6, Record, Table},
    stats::WorkerStats,
    xdp::{reply_key, reply_key6, BatchOutcome, ReplyKey, ReplyKey6, TrackedKey, TrackedMap},
};

/// A record whose connection the kernel's map of its family tracks: the IPv4
/// records go to `tracked`, the IPv6 ones to `tracked6`.
pub trait Tracked: Record {
    type ReplyKey: TrackedKey;
    fn reply_key(&self) -> Self::ReplyKey;
}

impl Tracked for FlowRecord {
    type ReplyKey = ReplyKey;
    #[inline]
    fn reply_key(&self) -> ReplyKey {
        reply_key(self.key.client(), self.daemon, self.key.protocol)
    }
}

impl Tracked for FlowRecord6 {
    type ReplyKey = ReplyKey6;
    #[inline]
    fn reply_key(&self) -> ReplyKey6 {
        reply_key6(self.key.client(), self.daemon(), self.key.protocol)
    }
}

/// Journal entries a worker expects between two syncs without allocating: a
/// full batch of new connections, or a round of removal commands.
pub const ROOM: usize = 1024;

/// One worker's writer of the tracked map of one family (`R` is its records).
pub struct ReplyTracker<R: Tracked = FlowRecord> {
    map: TrackedMap<R::ReplyKey>,
    /// The run being gathered: keys to insert (`inserting`) or to remove.
    keys: Vec<R::ReplyKey>,
    inserting: bool,
}

impl<R: Tracked> ReplyTracker<R> {
    /// A tracker writing to `map`; `table` starts keeping the journal it needs.
    pub fn new(map: TrackedMap<R::ReplyKey>, table: &mut Table<R>) -> Self {
        table.keep_journal(ROOM);
        Self {
            map,
            keys: Vec::with_capacity(ROOM),
            inserting: true,
        }
    }

    /// Writes the table's changes since the last call to the kernel's map. No
    /// syscall when nothing changed.
    #[inline]
    pub fn sync(&mut self, table: &mut Table<R>, stats: &WorkerStats) {
        for change in table.drain_journal() {
            let (inserted, record) = match change {
                Change::Inserted(r) => (true, r),
                Change::Removed(r) => (false, r),
            };
            if inserted != self.inserting {
                if !self.keys.is_empty() {
                    write(&self.map, &mut self.keys, self.inserting, stats);
                }
                self.inserting = inserted;
            }
            self.keys.push(record.reply_key());
        }
        if !self.keys.is_empty() {
            write(&self.map, &mut self.keys, self.inserting, stats);
        }
    }

    /// Removes the keys of `records` the table never held (handed over by a
    /// takeover, whose keys were written before the table refused them).
    pub fn forget(&mut self, records: &[R], stats: &WorkerStats) {
        if records.is_empty() {
            return;
        }
        debug_assert!(self.keys.is_empty(), "each sync writes its last run");
        self.keys.extend(records.iter().map(Tracked::reply_key));
        write(&self.map, &mut self.keys, false, stats);
    }
}

/// Inserts or removes `keys` (then empties it), counting what the kernel took
/// and refused.
#[cold]
fn write<K: TrackedKey>(map: &TrackedMap<K>, keys: &mut Vec<K>, insert: bool, stats: &WorkerStats) {
    // A key the map lacks (its insertion failed earlier) is skipped by a
    // removal; anything else (no memory, a map full, which the sizing rules
    // out) refuses the rest of the run.
    let (done, failed) = if insert {
        let BatchOutcome { done, error } = map.insert(keys);
        (done, error.map_or(0, |_| keys.len() - done))
    } else {
        let (removed, skipped, error) = map.remove_present(keys);
        let refused = error.map_or(0, |_| keys.len() - removed - skipped);
        (removed, skipped + refused)
    };
    let counter = if insert {
        &stats.tracked_inserted
    } else {
        &stats.tracked_removed
    };
    counter.add(done as u64);
    stats.tracked_failed.add(failed as u64);
    keys.clear();
}
