//! Per-worker counters: written by their worker only, read by anyone.
//!
//! Single writer means an update is a relaxed load and store, not an atomic
//! read-modify-write: no lock prefix on the hot path.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::packet::DropReason;

/// Drops decided by the worker after a frame parsed cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerDrop {
    /// A non-SYN segment from a client with no record (e.g. after a restart).
    NoFlow,
    /// The destination is not a configured service.
    UnknownService,
    /// A frame on the back not from a configured daemon: never rewritten to a VIP.
    UnknownDaemon,
    /// No daemon of the service takes new connections.
    NoBackend,
    /// The flow table is at capacity: the new connection is refused (SYN dropped).
    TableFull,
    /// The daemon's next-hop MAC is not resolved yet.
    NoNeighbour,
    /// The other socket's TX ring had no room.
    TxRingFull,
}

impl WorkerDrop {
    pub const ALL: [WorkerDrop; 7] = [
        Self::NoFlow,
        Self::UnknownService,
        Self::UnknownDaemon,
        Self::NoBackend,
        Self::TableFull,
        Self::NoNeighbour,
        Self::TxRingFull,
    ];
    pub const COUNT: usize = Self::ALL.len();

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoFlow => "no_flow",
            Self::UnknownService => "unknown_service",
            Self::UnknownDaemon => "unknown_daemon",
            Self::NoBackend => "no_backend",
            Self::TableFull => "table_full",
            Self::NoNeighbour => "no_neighbour",
            Self::TxRingFull => "tx_ring_full",
        }
    }
}

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Only the owning worker writes, so load+store cannot lose an update.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    /// For gauges, such as the number of records in a table.
    #[inline]
    pub fn set(&self, value: u64) {
        self.0.store(value, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rx_front: Counter,
    pub rx_back: Counter,
    pub tx_front: Counter,
    pub tx_back: Counter,
    pub new_flows: Counter,
    pub batches: Counter,
    pub wakeups: Counter,
    pub sleeps: Counter,
    pub flows: Counter,
    pub invalid: [Counter; DropReason::COUNT],
    pub dropped: [Counter; WorkerDrop::COUNT],
}

impl WorkerStats {
    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().map(Counter::get).sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }
}
