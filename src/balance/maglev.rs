//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software
//! Network Load Balancer", NSDI 2016, section 3.4), with weights.
//!
//! # Population
//!
//! The table has `M` entries, `M` prime. Daemon `i` has
//! `offset = h1(addr) mod M` and `skip = h2(addr) mod (M - 1) + 1` where
//! `(h1, h2) = `[`addr_hashes`]`(addr)` (stable across hosts), so its preference list
//! `offset, offset + skip, offset + 2·skip, ... (mod M)` is a permutation of `0..M`
//! (skip and M coprime). Daemons take turns claiming their next still-free preferred
//! entry until all `M` entries are claimed.
//!
//! **Turn order** is by daemon address (ascending ip, then port), not config order,
//! so the same set of daemons yields the same table whatever order it is configured
//! in. Entries hold the daemon's index in the *config* order.
//!
//! **Weights** (as in Katran's Maglev v2): each round, every eligible daemon adds its
//! weight to a credit; a daemon whose credit reaches `max_w` (the largest eligible
//! weight) takes one turn and pays `max_w`. A daemon of weight `w` therefore takes
//! `w / max_w` turns per round and ends up with `M·w/Σw` entries (±1 per turn-cycle
//! rounding). With equal weights this is exactly the paper's algorithm, and each daemon
//! gets `floor(M/N)` or `ceil(M/N)` entries. Cost is `O(M log M)` probes plus one
//! credit step per eligible daemon per round (rounds ≈ `M·max_w/Σw`), so wildly uneven
//! weights cost more to build.
//!
//! # Size
//!
//! `M` is the smallest of [`TABLE_SIZES`] that is at least `100·N` (`N` = configured
//! daemons, whether up or not), capped at the largest; 65537 for up to 655 daemons.
//! Since `M` depends only on the configuration, all hosts agree on it.
//!
//! Rebuilding ([`MaglevTable::rebuild`]) reuses the buffers allocated by
//! [`MaglevTable::new`]: no allocation.
use std::fmt;

use super::{BackendSpec, DaemonAddr};

/// Candidate table sizes, all prime.
pub const TABLE_SIZES: [u32; 5] = [65_537, 131_071, 262_139, 524_287, 1_048_573];
/// Table size for up to 655 daemons.
pub const DEFAULT_TABLE_SIZE: u32 = TABLE_SIZES[0];
/// Marks an entry that no daemon owns (only when no daemon is eligible).
pub const NO_BACKEND: u16 = u16::MAX;

/// The table size used for `n` configured daemons.
pub fn table_size_for(n: usize) -> u32 {
    TABLE_SIZES
        .iter()
        .copied()
        .find(|&m| m as usize >= n.saturating_mul(100))
        .unwrap_or(TABLE_SIZES[TABLE_SIZES.len() - 1])
}

/// Deterministic trial-division primality test (used to validate sizes).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    let n = u64::from(n);
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// A Maglev lookup table over a fixed list of daemons, rebuilt in place as their
/// eligibility changes.
#[derive(Clone)]
pub struct MaglevTable {
    size: u32,
    /// Owner (config index) of each entry, or [`NO_BACKEND`].
    entries: Box<[u16]>,
    /// Config indices sorted by address: the turn order.
    order: Box<[u16]>,
    offset: Box<[u32]>,
    skip: Box<[u32]>,
    weight: Box<[u32]>,
    // Scratch for rebuilds, indexed by config index.
    next: Box<[u32]>,
    credit: Box<[u64]>,
    eligible: Box<[bool]>,
    populated: bool,
}

/// Tables are equal when they answer every lookup alike for the same daemons; the
/// rebuild scratch space is not compared.
impl PartialEq for MaglevTable {
    fn eq(&self, other: &Self) -> bool {
        (
            self.size,
            self.populated,
            &self.entries,
            &self.order,
            &self.weight,
        ) == (
            other.size,
            other.populated,
            &other.entries,
            &other.order,
            &other.weight,
        )
    }
}

impl fmt::Debug for MaglevTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaglevTable")
            .field("size", &self.size)
            .field("backends", &self.order.len())
            .field("populated", &self.populated)
            .finish_non_exhaustive()
    }
}

impl MaglevTable {
    /// Allocates a table for `backends` with [`table_size_for`]`(backends.len())`
    /// entries, all daemons eligible, and populates it.
    ///
    /// # Panics
    /// If there are more than `u16::MAX` backends (the [`Pool`](super::Pool) rejects
    /// that first).
    pub fn new<A: DaemonAddr>(backends: &[BackendSpec<A>]) -> Self {
        Self::with_size(backends, table_size_for(backends.len()))
    }

    /// As [`new`](Self::new) with an explicit prime size.
    ///
    /// # Panics
    /// If `size` is not prime, or more than `u16::MAX` backends.
    pub fn with_size<A: DaemonAddr>(backends: &[BackendSpec<A>], size: u32) -> Self {
        assert!(is_prime(size), "maglev table size {size} is not prime");
        assert!(backends.len() <= usize::from(u16::MAX), "too many backends");
        let n = backends.len();
        let mut order: Vec<u16> = (0..n as u16).collect();
        order.sort_by_key(|&i| (backends[usize::from(i)].addr, i));
        let (offset, skip) = backends
            .iter()
            .map(|b| {
                let (h1, h2) = b.addr.addr_hashes();
                let m = u64::from(size);
                ((h1 % m) as u32, (h2 % (m - 1) + 1) as u32)
            })
            .unzip::<u32, u32, Vec<u32>, Vec<u32>>();
        let mut t = Self {
            size,
            entries: vec![NO_BACKEND; size as usize].into_boxed_slice(),
            order: order.into_boxed_slice(),
            offset: offset.into_boxed_slice(),
            skip: skip.into_boxed_slice(),
            weight: backends.iter().map(|b| b.weight).collect(),
            next: vec![0; n].into_boxed_slice(),
            credit: vec![0; n].into_boxed_slice(),
            eligible: vec![true; n].into_boxed_slice(),
            populated: false,
        };
        t.rebuild(|_| true);
        t
    }

    /// Repopulates the table over the daemons for which `eligible(config_index)` is
    /// true (daemons of weight 0 never are). Reuses existing buffers.
    pub fn rebuild(&mut self, mut eligible: impl FnMut(usize) -> bool) {
        let mut max_w = 0u32;
        for i in 0..self.order.len() {
            let e = self.weight[i] > 0 && eligible(i);
            self.eligible[i] = e;
            self.next[i] = self.offset[i];
            self.credit[i] = 0;
            if e {
                max_w = max_w.max(self.weight[i]);
            }
        }
        self.entries.fill(NO_BACKEND);
        self.populated = max_w > 0;
        if !self.populated {
            return;
        }
        let max_w = u64::from(max_w);
        let m = self.size;
        let mut filled = 0u32;
        loop {
            for &b in self.order.iter() {
                let b = usize::from(b);
                if !self.eligible[b] {
                    continue;
                }
                self.credit[b] += u64::from(self.weight[b]);
                if self.credit[b] < max_w {
                    continue;
                }
                self.credit[b] -= max_w;
                let skip = self.skip[b];
                let mut c = self.next[b];
                while self.entries[c as usize] != NO_BACKEND {
                    c += skip;
                    if c >= m {
                        c -= m;
                    }
                }
                self.entries[c as usize] = b as u16;
                c += skip;
                if c >= m {
                    c -= m;
                }
                self.next[b] = c;
                filled += 1;
                if filled == m {
                    return;
                }
            }
        }
    }

    /// The daemon (config index) owning `hash mod M`, or `None` if none is eligible.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        if !self.populated {
            return None;
        }
        Some(self.entries[(hash % u64::from(self.size)) as usize])
    }

    /// `M`.
    #[inline]
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Owner of every entry ([`NO_BACKEND`] throughout if no daemon is eligible).
    #[inline]
    pub fn entries(&self) -> &[u16] {
        &self.entries
    }

    /// Number of entries owned by each config index.
    pub fn counts(&self) -> Vec<u32> {
        let mut c = vec![0u32; self.order.len()];
        if self.populated {
            for &e in self.entries.iter() {
                c[usize::from(e)] += 1;
            }
        }
        c
    }

    /// The entries mapped to daemon addresses (for comparing tables built from
    /// differently ordered configurations).
    pub fn owners<'a, A: DaemonAddr>(
        &'a self,
        backends: &'a [BackendSpec<A>],
    ) -> impl Iterator<Item = Option<A>> + 'a {
        self.entries
            .iter()
            .map(|&e| (e != NO_BACKEND).then(|| backends[usize::from(e)].addr))
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    fn specs(n: u16) -> Vec<BackendSpec> {
        (0..n)
            .map(|i| BackendSpec {
                addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8), 9000),
                weight: 1,
            })
            .collect()
    }

    #[test]
    fn sizes_are_prime_and_chosen_by_count() {
        assert!(TABLE_SIZES.iter().all(|&m| is_prime(m)));
        assert!(!is_prime(65_535) && !is_prime(1) && is_prime(2));
        assert_eq!(table_size_for(1), 65_537);
        assert_eq!(table_size_for(655), 65_537);
        assert_eq!(table_size_for(656), 131_071);
        assert_eq!(table_size_for(65_535), 1_048_573);
    }

    #[test]
    fn small_prime_table_fills_and_none_when_ineligible() {
        let s = specs(3);
        let mut t = MaglevTable::with_size(&s, 7);
        assert!(t.entries().iter().all(|&e| e < 3));
        let c = t.counts();
        assert!(c.iter().all(|&x| x == 2 || x == 3), "{c:?}");
        t.rebuild(|i| i == 1);
        assert!(t.entries().iter().all(|&e| e == 1));
        t.rebuild(|_| false);
        assert_eq!(t.lookup(12345), None);
        assert!(t.entries().iter().all(|&e| e == NO_BACKEND));
    }

    #[test]
    fn zero_weight_never_owns() {
        let mut s = specs(3);
        s[2].weight = 0;
        let t = MaglevTable::new(&s);
        assert_eq!(t.counts()[2], 0);
    }
}
