//! Per-worker counters: written by their worker only, read by anyone.
//!
//! Single writer means an update is a relaxed load and store, not an atomic
//! read-modify-write: no lock prefix on the hot path.
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::packet::{icmp::IcmpDrop, icmpv6::Icmpv6Drop, DropReason};

/// Drops decided by the worker after a frame parsed cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum WorkerDrop {
    /// A non-SYN segment from a client with no record (e.g. after a restart)
    /// that could not be recovered: the service's policy is not `maglev`, the
    /// segment is a reset or has no ACK, or every daemon is down.
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
    /// A connection's first segment here (a SYN, or the segment that would
    /// recover its record) failed its TCP checksum: no state is made for
    /// corrupted or forged segments. (Later segments are not verified; the
    /// incremental update keeps a wrong checksum wrong for the daemon to drop.)
    BadSynChecksum,
    /// An ICMP error from the front found the worker's ring to the management
    /// loop full (errors come in bursts of one per too-big segment; the sender
    /// retransmits and draws another).
    IcmpQueueFull,
    /// A translated ICMP error from the loop found no free UMEM frame or no room
    /// on the back TX ring.
    IcmpTxFailed,
}

impl WorkerDrop {
    pub const ALL: [WorkerDrop; 10] = [
        Self::NoFlow,
        Self::UnknownService,
        Self::UnknownDaemon,
        Self::NoBackend,
        Self::TableFull,
        Self::NoNeighbour,
        Self::TxRingFull,
        Self::BadSynChecksum,
        Self::IcmpQueueFull,
        Self::IcmpTxFailed,
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
            Self::BadSynChecksum => "bad_syn_checksum",
            Self::IcmpQueueFull => "icmp_queue_full",
            Self::IcmpTxFailed => "icmp_tx_failed",
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

    /// For high-water marks: keeps the larger of the current value and `value`.
    #[inline]
    pub fn raise(&self, value: u64) {
        if value > self.0.load(Relaxed) {
            self.0.store(value, Relaxed);
        }
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// A high-water mark one thread raises and another takes (resetting it):
/// the longest of something since the last look.
#[derive(Debug, Default)]
pub struct Peak(AtomicU64);

impl Peak {
    #[inline]
    pub fn raise(&self, value: u64) {
        self.0.fetch_max(value, Relaxed);
    }

    /// The peak since the last take.
    pub fn take(&self) -> u64 {
        self.0.swap(0, Relaxed)
    }
}

/// One daemon's traffic through one worker, in a bank indexed by
/// [`BackendId`](crate::ids::BackendId) that belongs to one plane: a reload
/// gives each worker a new plane with a new bank, so ids of two configurations
/// never share a counter (the loop sums banks by daemon address). Bytes are
/// whole frames, Ethernet header included.
#[derive(Debug, Default)]
pub struct BackendTraffic {
    /// Client frames forwarded to the daemon.
    pub to_packets: Counter,
    pub to_bytes: Counter,
    /// The daemon's replies forwarded to clients.
    pub from_packets: Counter,
    pub from_bytes: Counter,
}

impl BackendTraffic {
    /// A bank for `daemons` ids.
    pub fn bank(daemons: usize) -> std::sync::Arc<[BackendTraffic]> {
        (0..daemons).map(|_| BackendTraffic::default()).collect()
    }
}

/// One AF_XDP socket of a worker: its side, its queue, the frames it received
/// and the frames the worker put on its TX ring.
#[derive(Debug, Default)]
pub struct SocketStats {
    pub front: bool,
    pub queue: u32,
    pub rx: Counter,
    pub tx: Counter,
    /// Frames the kernel steered to this socket but dropped before the worker
    /// saw them (its RX ring full, or no frame to receive into; refreshed
    /// about once a second).
    pub kernel_drops: Counter,
}

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub rx_front: Counter,
    pub rx_back: Counter,
    pub tx_front: Counter,
    pub tx_back: Counter,
    pub new_flows: Counter,
    /// Records made for a mid-connection segment that met no record (after a
    /// restart, or moved here by ECMP): a `maglev` service's recovery table
    /// named the daemon.
    pub recovered: Counter,
    pub batches: Counter,
    pub wakeups: Counter,
    pub sleeps: Counter,
    /// Kicks of a copy-mode TX ring for frames still on it after the kick that
    /// queued them (a device that pushed back).
    pub tx_resent_kicks: Counter,
    /// Times this worker woke the management loop for its events (an eventfd
    /// write: the loop was asleep when the batch was published).
    pub loop_wakes: Counter,
    /// Sleeps in poll() that ended with the loop's command eventfd readable
    /// (rarely, a write whose commands the worker had already taken).
    pub command_wakes: Counter,
    pub flows: Counter,
    /// The capacity of the worker's IPv6 flow table (records): 0 in a process
    /// started without IPv6 services, until a reload brings the first one and
    /// the table the loop had allocated is in place.
    pub table6_capacity: Counter,
    /// The size of the huge pages the worker's UMEM is on; 0 on ordinary pages.
    pub umem_huge_page_bytes: Counter,
    /// Events that waited in the worker because its ring to the loop was full.
    pub events_deferred: Counter,
    /// Rounds the worker took no frame or command because the loop was behind
    /// with its events.
    pub held_back: Counter,
    /// Events lost: never, unless a round emits more than it may (a bug).
    pub events_dropped: Counter,
    /// Records the worker's sweep removed because they were idle beyond the age
    /// limit: the loop should have removed them (a message was lost).
    pub aged_out: Counter,
    /// The longest round (commands, both directions, the sweep; not the sleep
    /// when idle) since the loop last looked: what a frame may wait behind. The
    /// loop turns it, each second, into `round_max_1s_ns` and `round_max_ns`.
    pub round_peak: Peak,
    /// The longest round in the last second, in ns (written by the loop).
    pub round_max_1s_ns: Counter,
    /// The longest round since start, in ns (written by the loop).
    pub round_max_ns: Counter,
    /// Resets that did not end their connection: sequence number out of the
    /// window, or older than the record.
    pub rst_ignored: Counter,
    pub commands: Counter,
    /// Rounds begun, idle ones included (an idle worker wakes from its poll at
    /// least every 100 ms): the proof of life systemd's watchdog is fed on.
    pub heartbeat: Counter,
    /// The kernel's AF_XDP socket statistics, front and back sockets summed,
    /// refreshed about once a second. Frames the kernel steered to this queue but
    /// dropped before the worker saw them are `xsk_rx_ring_full` (the RX ring was
    /// full) plus `xsk_rx_dropped` (no frame to copy into, or another reason).
    pub xsk_rx_ring_full: Counter,
    pub xsk_rx_dropped: Counter,
    /// Times the kernel found the fill ring empty (in copy mode each such frame is
    /// also counted in `xsk_rx_dropped`).
    pub xsk_fill_ring_empty: Counter,
    /// Invalid descriptors, received and sent (a bug in frame accounting).
    pub xsk_invalid_descs: Counter,
    /// reply_mode "tracked": connections written to and removed from the
    /// kernel's map of tracked connections, and keys the kernel refused.
    pub tracked_inserted: Counter,
    pub tracked_removed: Counter,
    pub tracked_failed: Counter,
    pub invalid: [Counter; DropReason::COUNT],
    pub dropped: [Counter; WorkerDrop::COUNT],
    /// ICMP errors from the front about a connection's reply, copied to the
    /// management loop (which finds the connection's daemon).
    pub icmp_to_loop: Counter,
    /// ICMP errors the loop translated, sent to their daemon by this worker.
    pub icmp_to_daemon: Counter,
    /// ICMP errors from the back about a client's segment, translated and sent
    /// to the client.
    pub icmp_to_client: Counter,
    /// ICMP frames steered to this worker that are not translated, by reason.
    pub icmp_invalid: [Counter; IcmpDrop::COUNT],
    /// ICMPv6 frames steered to this worker that are not translated, by reason.
    pub icmpv6_invalid: [Counter; Icmpv6Drop::COUNT],
    /// Client SYNs whose MSS option was lowered to `mss_clamp`.
    pub mss_clamped: Counter,
    /// Per-packet processing time (ns), without the kernel's send in the TX kick.
    pub latency_ns: AtomicHistogram,
    /// Frames per non-empty batch.
    pub batch_sizes: AtomicHistogram,
    /// Each socket's own counts: the front ones, then the back ones, in the
    /// worker's queue order.
    pub sockets: Box<[SocketStats]>,
}

impl WorkerStats {
    /// Counters for a worker serving these front and back queues.
    pub fn with_sockets(front: &[u32], back: &[u32]) -> Self {
        let socket = |front: bool| {
            move |&queue: &u32| SocketStats {
                front,
                queue,
                ..SocketStats::default()
            }
        };
        Self {
            sockets: front
                .iter()
                .map(socket(true))
                .chain(back.iter().map(socket(false)))
                .collect(),
            ..Self::default()
        }
    }

    pub fn invalid_total(&self) -> u64 {
        self.invalid.iter().map(Counter::get).sum()
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }

    /// ICMP errors of both families not translated.
    pub fn icmp_invalid_total(&self) -> u64 {
        (self.icmp_invalid.iter().chain(&self.icmpv6_invalid))
            .map(Counter::get)
            .sum()
    }

    /// Every reason an ICMP error (either family) was not translated, with its
    /// count: IPv4 reasons, then IPv6 ones (`icmpv6_*`).
    pub fn icmp_invalid_by_reason(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        (IcmpDrop::ALL.iter())
            .map(|r| (r.as_str(), self.icmp_invalid[r.index()].get()))
            .chain(
                (Icmpv6Drop::ALL.iter())
                    .map(|r| (r.as_str(), self.icmpv6_invalid[r.index()].get())),
            )
    }
}

/// Nanoseconds since the process's first call: one clock for workers and the
/// management loop, so deadlines and last-seen times compare directly.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_nanos() as u64
}

/// Buckets below this value are exact; above, each power of two splits into
/// `SUB_BUCKETS` buckets (about 3 % relative error).
const LINEAR_BUCKETS: u64 = 64;
const SUB_BUCKET_BITS: u32 = 5;
const SUB_BUCKETS: usize = 1 << SUB_BUCKET_BITS;
const HISTOGRAM_BUCKETS: usize = LINEAR_BUCKETS as usize + (64 - 6) * SUB_BUCKETS;

/// A log-linear histogram with one writer and lock-free readers: the worker
/// records with a relaxed load and store per sample, the management loop turns a
/// snapshot into an HDR histogram to merge and query.
pub struct AtomicHistogram {
    buckets: Box<[AtomicU64]>,
    /// The sum of the recorded values, for an exposition's `_sum`.
    sum: AtomicU64,
}

impl Default for AtomicHistogram {
    fn default() -> Self {
        Self {
            buckets: (0..HISTOGRAM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }
}

impl std::fmt::Debug for AtomicHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicHistogram").finish_non_exhaustive()
    }
}

fn bucket_of(value: u64) -> usize {
    if value < LINEAR_BUCKETS {
        return value as usize;
    }
    let exp = 63 - value.leading_zeros(); // >= 6
    let sub = (value >> (exp - SUB_BUCKET_BITS)) as usize & (SUB_BUCKETS - 1);
    LINEAR_BUCKETS as usize + (exp as usize - 6) * SUB_BUCKETS + sub
}

/// The middle of a bucket's value range: what a snapshot records for it.
fn bucket_value(index: usize) -> u64 {
    if index < LINEAR_BUCKETS as usize {
        return index as u64;
    }
    let rel = index - LINEAR_BUCKETS as usize;
    let exp = (rel / SUB_BUCKETS) as u32 + 6;
    let sub = (rel % SUB_BUCKETS) as u64;
    let width = 1u64 << (exp - SUB_BUCKET_BITS);
    (1u64 << exp) + sub * width + width / 2
}

impl AtomicHistogram {
    #[inline]
    pub fn record_n(&self, value: u64, count: u64) {
        let b = &self.buckets[bucket_of(value)];
        // One writer per histogram: load+store cannot lose a count.
        b.store(b.load(Relaxed).wrapping_add(count), Relaxed);
        let total = value.wrapping_mul(count);
        self.sum
            .store(self.sum.load(Relaxed).wrapping_add(total), Relaxed);
    }

    /// The sum of every value recorded.
    pub fn sum(&self) -> u64 {
        self.sum.load(Relaxed)
    }

    /// Adds to `counts[k]` the samples at most `bounds[k]` (in the
    /// histogram's unit; `bounds` ascending), for cumulative buckets: a bucket
    /// counts below a bound when its middle value does.
    pub fn add_cumulative(&self, bounds: &[u64], counts: &mut [u64]) {
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n == 0 {
                continue;
            }
            let v = bucket_value(i);
            for (bound, c) in bounds.iter().zip(counts.iter_mut()) {
                if v <= *bound {
                    *c += n;
                }
            }
        }
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Adds this histogram's samples into `into`.
    pub fn merge_into(&self, into: &mut hdrhistogram::Histogram<u64>) {
        for (i, b) in self.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            if n > 0 {
                let v = bucket_value(i).max(1);
                // A bounded histogram refuses values beyond its range: clamp those.
                if into.record_n(v, n).is_err() {
                    let _ = into.record_n(into.high(), n);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(v);
            assert!(b >= last, "bucket order at {v}");
            assert!(b < HISTOGRAM_BUCKETS);
            last = b;
            let mid = bucket_value(b) as f64;
            if v > 0 {
                assert!((mid - v as f64).abs() / (v as f64) < 0.04, "{v} -> {mid}");
            }
        }
    }

    #[test]
    fn snapshot_percentiles_match_the_samples() {
        let h = AtomicHistogram::default();
        for v in 1..=10_000u64 {
            h.record_n(v, 1);
        }
        h.record_n(1_000_000, 10);
        let mut hdr = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        h.merge_into(&mut hdr);
        assert_eq!(hdr.len(), 10_010);
        let p50 = hdr.value_at_quantile(0.5) as f64;
        assert!((p50 - 5000.0).abs() / 5000.0 < 0.04, "p50 {p50}");
        let p99 = hdr.value_at_quantile(0.99) as f64;
        assert!((p99 - 9910.0).abs() / 9910.0 < 0.04, "p99 {p99}");
        assert!(hdr.max() >= 970_000, "max {}", hdr.max());
    }
}
