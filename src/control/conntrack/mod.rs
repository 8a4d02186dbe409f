//! Connection close state machine with its timers (IPVS-like).
//!
//! Workers report [`Event`]s; the tracker keeps one record per connection, learns the
//! owning worker from [`Event::Opened`] and routes every later [`FlowCommand`] for that
//! key to it (a FIN or RST may be seen by another worker). A connection's daemon is
//! named by its address, which a reload does not change.
//!
//! ```text
//! Recovered ──▶ Recovered ──Established (the client moved on)──▶ Established; syn deadline: Remove
//! Opened ──▶ SynSent ──Established──▶ Established ──Fin──▶ HalfClosed ──Fin (other side)──▶ Closing
//!   syn deadline: Remove     idle deadline: RemoveIfIdle (recheck)         linger deadline: Remove
//! Reset (any phase; the owner accepted a RST) ──▶ Reset: Remove at the reset linger deadline.
//! DaemonRst: CheckRst to the owner, which answers Reset if the RST is in the window.
//! Removed (worker dropped it): forget.
//! UDP (no handshake, no close): Opened or Recovered ──▶ Established at once;
//!   udp idle deadline: RemoveIfIdle (recheck), as an idle TCP connection.
//! ```
//!
//! The tracker is generic over the flow key's family ([`KeyFamily`]): the loop
//! keeps one for IPv4 connections ([`ConnTracker`]) and one for IPv6 ones
//! ([`ConnTracker6`]), each monomorphised, so the IPv4 one keeps its `u128` keys.
//!
//! Events carry the time the worker saw them; one from before the tracked
//! connection was opened is about an older connection on the same ports and is
//! ignored, so the order in which the loop drains the workers cannot let a late
//! event end a newer connection.
//!
//! Timers: a min-heap of `(deadline, generation, packed key)` with lazy invalidation.
//! Every record has exactly one live heap entry, the one whose generation matches the
//! record's; re-arming pushes a new entry and leaves the old one stale. Stale entries
//! at the top are popped after every call, so the top is always a live deadline;
//! when stale entries exceed `2 × len() + COMPACT_SLACK` the heap is rebuilt from the
//! records (O(n), amortised O(1) per push), so the heap never holds more than
//! `3 × len() + COMPACT_SLACK` entries between calls.
use std::{cmp::Reverse, collections::BinaryHeap, time::Duration};

use ahash::AHashMap;

use crate::{
    config::Timeouts,
    flow::{FlowKey, FlowKey6, KeyFamily},
    ids::WorkerId,
    protocol::{Event, FlowCommand},
};

/// Time after a `RemoveIfIdle` without answer before it is sent again.
pub const RECHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Stale timer entries tolerated beyond `2 × len()` before the heap is rebuilt.
pub const COMPACT_SLACK: usize = 1024;

/// A command for the worker that owns the record.
pub type Order<K = FlowKey> = (WorkerId, FlowCommand<K>);
/// A command about an IPv6 record.
pub type Order6 = Order<FlowKey6>;
/// The tracker of IPv6 connections.
pub type ConnTracker6 = ConnTracker<FlowKey6>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    SynSent,
    /// Made for a mid-connection segment without a record (Maglev recovery),
    /// not yet proven: removed at the syn deadline like a half-open one. A FIN
    /// does not move it (that would let a spoofed FIN|ACK buy an idle timeout).
    Recovered,
    Established,
    HalfClosed {
        client_fin: bool,
        daemon_fin: bool,
    },
    /// Both FINs seen: lingering until the linger deadline.
    Closing,
    /// A reset accepted by the owner: lingering until the reset linger deadline.
    Reset,
}

/// One tracked connection, as listed by `ctl conns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo<K: KeyFamily = FlowKey> {
    pub worker: WorkerId,
    pub key: K,
    pub daemon: K::Daemon,
    pub phase: Phase,
    pub opened_ns: u64,
    /// When the record's current timer fires.
    pub deadline_ns: u64,
}

/// Connections of one backend, IPVS-style: `active` are Established or HalfClosed,
/// `inactive` are SynSent or Closing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConns {
    pub active: u32,
    pub inactive: u32,
}

impl BackendConns {
    pub fn total(&self) -> u32 {
        self.active + self.inactive
    }

    fn count(&mut self, phase: Phase, add: bool) {
        let n = if is_active(phase) {
            &mut self.active
        } else {
            &mut self.inactive
        };
        *n = if add { *n + 1 } else { n.saturating_sub(1) };
    }
}

/// IPVS's split: established and half-closed connections are active.
fn is_active(phase: Phase) -> bool {
    matches!(phase, Phase::Established | Phase::HalfClosed { .. })
}

/// A daemon as the counts know it: its address and its service's IP protocol
/// number (one ADDR:PORT may serve a TCP and a UDP service, two daemons).
pub type DaemonKey<K> = (<K as KeyFamily>::Daemon, u8);

/// Counts a connection `info` in (or out of) its daemon's counts.
fn count<K: KeyFamily>(
    counts: &mut AHashMap<DaemonKey<K>, BackendConns>,
    info: &ConnInfo<K>,
    add: bool,
) {
    let daemon = (info.daemon, info.key.protocol());
    if add {
        counts.entry(daemon).or_default().count(info.phase, true);
    } else if let Some(c) = counts.get_mut(&daemon) {
        c.count(info.phase, false);
        if c.total() == 0 {
            counts.remove(&daemon);
        }
    }
}

/// Moves a connection to `phase`, keeping its daemon's counts right.
fn set_phase<K: KeyFamily>(
    counts: &mut AHashMap<DaemonKey<K>, BackendConns>,
    info: &mut ConnInfo<K>,
    phase: Phase,
) {
    if is_active(info.phase) != is_active(phase) {
        count(counts, info, false);
        info.phase = phase;
        count(counts, info, true);
    } else {
        info.phase = phase;
    }
}

#[derive(Clone, Copy, Debug)]
struct Conn<K: KeyFamily> {
    info: ConnInfo<K>,
    /// Generation of the record's one live heap entry.
    gen: u64,
}

/// The management thread's view of every connection; see the module doc.
#[derive(Debug)]
pub struct ConnTracker<K: KeyFamily = FlowKey> {
    timeouts: Timeouts,
    conns: AHashMap<K::Packed, Conn<K>>,
    /// How many of `conns` are UDP flows.
    udp: usize,
    /// Connections per daemon, kept up to date as they come, change phase and
    /// go, so that asking costs O(daemons), not a walk of every connection.
    per_daemon: AHashMap<DaemonKey<K>, BackendConns>,
    timers: Timers<K>,
    ignored: u64,
    recovery: RecoveryCounts,
}

/// What became of records made by recovery.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RecoveryCounts {
    /// Proven by a later client segment: tracked like any established one.
    pub confirmed: u64,
    /// Removed at their short deadline, never proven (spoofed, or a connection
    /// that sent nothing new in time: its next segment recovers it again).
    pub expired: u64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn is_udp<K: KeyFamily>(key: &K) -> bool {
    key.protocol() == crate::packet::L4Proto::Udp.number()
}

/// How long a record of `key` may go without a packet: a UDP flow's own
/// timeout, or an established TCP connection's.
fn idle_of<K: KeyFamily>(t: &Timeouts, key: &K) -> Duration {
    if is_udp(key) {
        t.udp_idle
    } else {
        t.idle
    }
}

/// Min-heap of `(deadline, generation, packed key)` and the generation counter.
#[derive(Debug)]
struct Timers<K: KeyFamily> {
    heap: BinaryHeap<Reverse<(u64, u64, K::Packed)>>,
    next_gen: u64,
}

impl<K: KeyFamily> Default for Timers<K> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_gen: 0,
        }
    }
}

impl<K: KeyFamily> Timers<K> {
    /// Sets the record's deadline: a new generation and a new heap entry (the previous
    /// entry becomes stale).
    fn arm(&mut self, conn: &mut Conn<K>, deadline: u64) {
        conn.gen = self.next_gen;
        self.next_gen += 1;
        conn.info.deadline_ns = deadline;
        self.heap
            .push(Reverse((deadline, conn.gen, conn.info.key.pack())));
    }
}

/// The record of `key` if it was opened no later than `at_ns` (the time the
/// event about it was seen); otherwise the event is counted as ignored.
fn current<'a, K: KeyFamily>(
    conns: &'a mut AHashMap<K::Packed, Conn<K>>,
    ignored: &mut u64,
    key: K,
    at_ns: u64,
) -> Option<&'a mut Conn<K>> {
    let c = conns
        .get_mut(&key.pack())
        .filter(|c| c.info.opened_ns <= at_ns);
    if c.is_none() {
        *ignored += 1;
    }
    c
}

impl<K: KeyFamily> ConnTracker<K> {
    pub fn new(timeouts: Timeouts) -> Self {
        Self {
            timeouts,
            conns: AHashMap::new(),
            udp: 0,
            per_daemon: AHashMap::new(),
            timers: Timers::default(),
            ignored: 0,
            recovery: RecoveryCounts::default(),
        }
    }

    /// New timeouts apply to deadlines set from now on; armed deadlines are kept.
    pub fn set_timeouts(&mut self, t: Timeouts) {
        self.timeouts = t;
    }

    /// Applies one worker event. An `Opened` replacing a record owned by another
    /// worker emits a `Remove` for the old owner's copy; a daemon's reset is sent
    /// to the owner to judge. An event from before the connection it names was
    /// opened is about an older connection on the same ports, and is ignored.
    pub fn on_event(&mut self, event: Event<K>, now_ns: u64, out: &mut Vec<Order<K>>) {
        let t = self.timeouts;
        match event {
            Event::Opened {
                worker,
                key,
                daemon,
                at_ns,
            } => self.open(worker, key, daemon, at_ns, Phase::SynSent, now_ns, out),
            Event::Recovered {
                worker,
                key,
                daemon,
                at_ns,
            } => self.open(worker, key, daemon, at_ns, Phase::Recovered, now_ns, out),
            Event::Established { key, at_ns } => {
                if let Some(c) = current(&mut self.conns, &mut self.ignored, key, at_ns) {
                    if c.info.phase == Phase::Recovered {
                        self.recovery.confirmed += 1;
                    }
                    if matches!(
                        c.info.phase,
                        Phase::SynSent | Phase::Recovered | Phase::Established
                    ) {
                        set_phase(&mut self.per_daemon, &mut c.info, Phase::Established);
                        let deadline = now_ns.saturating_add(nanos(t.idle));
                        self.timers.arm(c, deadline);
                    }
                }
            }
            Event::Fin {
                key,
                from_client,
                at_ns,
            } => {
                if let Some(c) = current(&mut self.conns, &mut self.ignored, key, at_ns) {
                    let (client_fin, daemon_fin) = match c.info.phase {
                        Phase::SynSent | Phase::Established => (false, false),
                        Phase::Recovered => return self.maintain(),
                        Phase::HalfClosed {
                            client_fin,
                            daemon_fin,
                        } => (client_fin, daemon_fin),
                        Phase::Closing | Phase::Reset => return self.maintain(),
                    };
                    let client_fin = client_fin || from_client;
                    let daemon_fin = daemon_fin || !from_client;
                    if client_fin && daemon_fin {
                        set_phase(&mut self.per_daemon, &mut c.info, Phase::Closing);
                        let deadline = now_ns.saturating_add(nanos(t.linger));
                        self.timers.arm(c, deadline);
                    } else {
                        // First FIN: keep the current (idle, or syn) deadline.
                        let half = Phase::HalfClosed {
                            client_fin,
                            daemon_fin,
                        };
                        set_phase(&mut self.per_daemon, &mut c.info, half);
                    }
                }
            }
            Event::Reset { key, at_ns } => {
                if let Some(c) = current(&mut self.conns, &mut self.ignored, key, at_ns) {
                    if c.info.phase != Phase::Reset {
                        set_phase(&mut self.per_daemon, &mut c.info, Phase::Reset);
                        let deadline = now_ns.saturating_add(nanos(t.rst_linger));
                        self.timers.arm(c, deadline);
                    }
                }
            }
            Event::DaemonRst { key, seq, at_ns } => {
                if let Some(c) = current(&mut self.conns, &mut self.ignored, key, at_ns) {
                    if c.info.phase != Phase::Reset {
                        out.push((c.info.worker, FlowCommand::CheckRst { key, seq, at_ns }));
                    }
                }
            }
            Event::Active { key, last_seen_ns } => {
                if let Some(c) = current(&mut self.conns, &mut self.ignored, key, last_seen_ns) {
                    // Only a probed phase is re-armed; a late answer for a record that has
                    // since moved to Closing keeps its linger deadline.
                    if matches!(c.info.phase, Phase::Established | Phase::HalfClosed { .. }) {
                        let deadline = last_seen_ns.saturating_add(nanos(idle_of(&t, &key)));
                        self.timers.arm(c, deadline);
                    }
                }
            }
            Event::Removed { key, at_ns } => {
                if current(&mut self.conns, &mut self.ignored, key, at_ns).is_some() {
                    if let Some(gone) = self.conns.remove(&key.pack()) {
                        self.udp -= usize::from(is_udp(&gone.info.key));
                        count(&mut self.per_daemon, &gone.info, false);
                    }
                }
            }
        }
        self.maintain();
    }

    /// A record made on `worker` (by a SYN, or by recovery): tracked from its
    /// `phase` with the syn deadline; a UDP flow's, established with the UDP
    /// idle deadline.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &mut self,
        worker: WorkerId,
        key: K,
        daemon: K::Daemon,
        at_ns: u64,
        phase: Phase,
        now_ns: u64,
        out: &mut Vec<Order<K>>,
    ) {
        if self
            .conns
            .get(&key.pack())
            .is_some_and(|c| c.info.opened_ns > at_ns)
        {
            self.ignored += 1;
            return;
        }
        // A UDP flow is as proven as it will ever be by its first datagram
        // (recovered or not): it lives until idle.
        let (phase, timeout) = if is_udp(&key) {
            (Phase::Established, self.timeouts.udp_idle)
        } else {
            (phase, self.timeouts.syn)
        };
        let mut conn = Conn {
            info: ConnInfo {
                worker,
                key,
                daemon,
                phase,
                opened_ns: at_ns,
                deadline_ns: 0,
            },
            gen: 0,
        };
        let deadline = now_ns.saturating_add(nanos(timeout));
        self.timers.arm(&mut conn, deadline);
        // The client reused the port: the new record replaces the old one (whose
        // heap entry is now stale). If another worker held it, drop its copy.
        count(&mut self.per_daemon, &conn.info, true);
        let old = self.conns.insert(key.pack(), conn);
        self.udp += usize::from(old.is_none() && is_udp(&key));
        if let Some(old) = old {
            count(&mut self.per_daemon, &old.info, false);
            if old.info.worker != worker {
                let opened_ns = old.info.opened_ns;
                out.push((old.info.worker, FlowCommand::Remove { key, opened_ns }));
            }
        }
    }

    /// Fires every deadline `<= now_ns`: SynSent and Closing records are removed
    /// (`Remove`), Established and HalfClosed ones are probed (`RemoveIfIdle`) and
    /// re-armed `RECHECK_INTERVAL` later in case the answer never comes.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Order<K>>) {
        let timeouts = self.timeouts;
        while let Some(&Reverse((deadline, gen, packed))) = self.timers.heap.peek() {
            if deadline > now_ns {
                break;
            }
            self.timers.heap.pop();
            let Some(c) = self.conns.get_mut(&packed) else {
                continue;
            };
            if c.gen != gen {
                continue;
            }
            let (worker, key, opened_ns) = (c.info.worker, c.info.key, c.info.opened_ns);
            match c.info.phase {
                Phase::Established | Phase::HalfClosed { .. } => {
                    let idle_since_ns = now_ns.saturating_sub(nanos(idle_of(&timeouts, &key)));
                    out.push((worker, FlowCommand::RemoveIfIdle { key, idle_since_ns }));
                    let recheck = now_ns.saturating_add(nanos(RECHECK_INTERVAL));
                    self.timers.arm(c, recheck);
                }
                Phase::SynSent | Phase::Recovered | Phase::Closing | Phase::Reset => {
                    if c.info.phase == Phase::Recovered {
                        self.recovery.expired += 1;
                    }
                    if let Some(gone) = self.conns.remove(&packed) {
                        self.udp -= usize::from(is_udp(&gone.info.key));
                        count(&mut self.per_daemon, &gone.info, false);
                    }
                    out.push((worker, FlowCommand::Remove { key, opened_ns }));
                }
            }
        }
        self.maintain();
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// How many of the tracked records are UDP flows.
    pub fn udp_len(&self) -> usize {
        self.udp
    }

    /// Events for keys not tracked (late segments after a removal, lost `Opened`).
    pub fn ignored_events(&self) -> u64 {
        self.ignored
    }

    /// What became of the records made by recovery.
    pub fn recovery(&self) -> RecoveryCounts {
        self.recovery
    }

    /// Entries in the timer heap, live and stale (at most `3 × len() + COMPACT_SLACK`):
    /// with [`len`](Self::len), what the tracker's memory grows with.
    pub fn timer_entries(&self) -> usize {
        self.timers.heap.len()
    }

    /// Every tracked connection, in no particular order (for `ctl conns`).
    pub fn iter(&self) -> impl Iterator<Item = ConnInfo<K>> + '_ {
        self.conns.values().map(|c| c.info)
    }

    /// The daemon of a tracked connection (for translating ICMP errors).
    pub fn daemon_of(&self, key: K) -> Option<K::Daemon> {
        self.conns.get(&key.pack()).map(|c| c.info.daemon)
    }

    /// Connection counts per daemon and protocol (for `ctl backends`): O(1),
    /// kept as connections come and go.
    pub fn per_daemon(&self) -> &AHashMap<DaemonKey<K>, BackendConns> {
        &self.per_daemon
    }

    /// Keys of every connection of IP protocol `protocol` to `daemon`, e.g. to
    /// reset a failed daemon's connections. O(len()).
    pub fn connections_of(&self, daemon: K::Daemon, protocol: u8) -> impl Iterator<Item = K> + '_ {
        self.conns
            .values()
            .filter(move |c| c.info.daemon == daemon && c.info.key.protocol() == protocol)
            .map(|c| c.info.key)
    }

    /// Pops stale entries off the top (so the earliest entry is a live deadline),
    /// rebuilds the heap when stale entries exceed `2 × len() + COMPACT_SLACK`,
    /// and gives back memory the map and the heap no longer need.
    fn maintain(&mut self) {
        while let Some(&Reverse((_, gen, packed))) = self.timers.heap.peek() {
            if self.conns.get(&packed).is_some_and(|c| c.gen == gen) {
                break;
            }
            self.timers.heap.pop();
        }
        let live = self.conns.len();
        debug_assert!(self.timers.heap.len() >= live);
        let stale = self.timers.heap.len() - live;
        if stale > 2 * live + COMPACT_SLACK {
            self.timers.heap = self
                .conns
                .iter()
                .map(|(&packed, c)| Reverse((c.info.deadline_ns, c.gen, packed)))
                .collect();
        }
        // Memory follows the connections down as well as up: a table that has
        // room for four times what it holds gives half of it back. (Amortised:
        // the connections must have fallen to a quarter since the last time.)
        if self.conns.capacity() > 4 * live + COMPACT_SLACK {
            self.conns.shrink_to(2 * live);
        }
        let entries = self.timers.heap.len();
        if self.timers.heap.capacity() > 4 * entries + COMPACT_SLACK {
            self.timers.heap.shrink_to(2 * entries);
        }
    }
}

#[cfg(test)]
mod tests;
