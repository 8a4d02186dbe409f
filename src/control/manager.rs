//! The management loop: one thread, driven by io_uring ([`uring`](super::uring)).
//! Every wait is a submission: the workers' eventfd, a periodic tick, the
//! signalfd, the control socket and the metrics listener (accept, request, reply),
//! and health probes: a TCP connect, or for HTTP checks a connect, a send and
//! receives, each linked to a timeout that ends with the probe's.
//!
//! It drains the workers' events into the connection tracker, sends the tracker's
//! orders and the daemons' state changes to the workers, probes the daemons,
//! follows the kernel's routes and neighbours (rtnetlink notifications, polled
//! on the ring like everything else) for the daemons' next hops, has the kernel
//! resolve clients' next hops that the XDP program found unresolved, answers the
//! control socket and reloads on SIGHUP.
use std::{
    collections::VecDeque,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::{mpsc::TrySendError, Arc},
    time::Duration,
};

use ahash::{AHashMap, AHashSet};
use anyhow::{Context, Result};

use super::{
    apply::{apply, Host, OffBack},
    backends::{Backend, Backends},
    conntrack::{BackendConns, ConnTracker, ConnTracker6, Order, Order6, RecoveryCounts},
    ctl::{self, Format, HttpAsk, Request, REQUEST_MAX},
    health::{self, Health, StatusLine},
    icmp::{self, IcmpStats},
    metrics::{self, BackendMetric, ScrapeExtra, ServiceMetric},
    nexthops::{self, HopProber},
    ready::{self, NotReady},
    report::{self, BackendSetting, PendingKey, ReloadCounts, StatsSnapshot},
    state::{Overrides, StateFile},
    table6::{self, Tables6, Tables6Plan},
    takeover::{self, Identity},
    traffic::TrafficBook,
    uring::{Completion, Uring},
};
use crate::{
    balance::PolicyKind,
    config::{self, Config, OnFailure, OnRemove, ProbeKind, Protocol, ReplyMode},
    dataplane::{Dataplane, Retired},
    flow::{FlowRecord, FlowRecord6, KeyFamily, TcpState},
    ids::{BackendId, WorkerId},
    neigh::{self, HopBook, Kernel, NetlinkStats, NextHop, Reach, Rerouted},
    netlink::{Message, Messages},
    notify::{self, Notifier, Verdict, Watchdog},
    protocol::{Event, Event6, EventPace, LoopEnd, SlowFrame, Wake, EVENT_WINDOW},
    queues::{self, LinkWatch},
    stats::{now_ns, BackendTraffic, WorkerStats},
    sys::{self, RawIcmp6Sender, RawIpSender, Signal, SignalFd, SIGINFO_LEN},
    worker::Command,
    xdp::Steering,
};

/// How often the loop wakes by itself: timers, probes.
const TICK: Duration = Duration::from_millis(100);
/// How often retired daemons are checked for connections left.
const RETIRED_CHECK_NS: u64 = 1_000_000_000;
/// Notification datagrams read per wake-up at most: a flood of changes is
/// read over several rounds, the ring's other completions in between (the
/// poll fires again at once while some are left).
const DRAIN_DATAGRAMS: usize = 1024;
/// Route requests per round at most when the daemons' routes are asked again
/// (each is a request the kernel answers at once, a few microseconds): with
/// thousands of daemons the pass is sliced, so no round stalls the loop.
const REROUTE_SLICE: usize = 128;
/// The pause between two slices, for the ring's other completions.
const REROUTE_PAUSE: Duration = Duration::from_millis(1);
/// The window of the "longest round in the last second" stall measures.
const PEAK_WINDOW_NS: u64 = 1_000_000_000;
/// How often the interfaces' RX queue counts and MTUs are re-read.
const LINK_REFRESH_NS: u64 = 1_000_000_000;
const RING_ENTRIES: u32 = 256;
/// How long a client of the control socket or the metrics listener has to send
/// its request, and to take the reply: a connection that sends nothing (an
/// idle or half-open one) would otherwise hold its descriptor for good, and
/// enough of them would leave none for the health probes.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
const REPLY_DEADLINE: Duration = Duration::from_secs(10);
/// How long a listener rests after an accept failed for want of descriptors or
/// memory: accepting again at once would fail again at once, in a loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);
/// At most one warning this often about health probes that could not start.
const PROBE_WARNING_NS: u64 = 1_000_000_000;

/// What each in-flight operation is for.
#[derive(Clone, Copy, Debug)]
enum Tag {
    EventFd,
    Signal,
    Tick,
    Accept {
        metrics: bool,
    },
    /// The end of an [`ACCEPT_PAUSE`].
    AcceptPause {
        metrics: bool,
    },
    Recv {
        metrics: bool,
    },
    Send,
    Probe {
        backend: BackendId,
        generation: u64,
        step: ProbeStep,
        /// When the whole probe must be over (`now_ns` clock).
        deadline_ns: u64,
    },
    /// The rtnetlink notification socket became readable.
    Netlink,
    /// The next slice of route requests.
    Reroute,
    /// The end of an [`EVENT_WINDOW`]: the events that came meanwhile.
    EventWindow,
}

/// Where a probe is: every check connects; an HTTP check then sends its
/// request and receives until the status line is whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProbeStep {
    Connect,
    Send,
    Recv,
}

/// What a probe does after one of its steps completed.
enum ProbeNext {
    Verdict(bool),
    Send(OwnedFd, Box<[u8]>, usize),
    Recv(OwnedFd, Box<[u8]>, usize),
}

/// Echo requests that make the kernel resolve next hops out of one interface
/// (its raw sockets were opened before the capabilities were dropped), at
/// most one per hop and [`nexthops::PROBE_INTERVAL_NS`].
struct HopProbes {
    v4: HopProber,
    v6: HopProber<Ipv6Addr>,
    socket: RawIpSender,
    /// None where IPv6 is off on this host.
    socket6: Option<RawIcmp6Sender>,
}

impl HopProbes {
    fn new(socket: RawIpSender, socket6: Option<RawIcmp6Sender>) -> Self {
        Self {
            v4: HopProber::default(),
            v6: HopProber::default(),
            socket,
            socket6,
        }
    }

    fn run(&mut self, hops: &[Ipv4Addr], hops6: &[Ipv6Addr], now: u64) {
        let socket = &self.socket;
        (self.v4).run(hops, now, |packet, hop| socket.send_to(packet, hop));
        if let Some(socket6) = &self.socket6 {
            self.v6.run_with(
                hops6,
                now,
                |_, seq| neigh::echo6_request(seq),
                |message, hop| socket6.send_to(message, hop),
            );
        }
    }

    fn stats(&self) -> nexthops::HopStats {
        self.v4.stats.plus(self.v6.stats)
    }
}

/// A worker as the loop sees it.
pub struct WorkerLink {
    pub link: LoopEnd<Dataplane>,
    pub stats: Arc<WorkerStats>,
    /// The traffic bank of the plane the worker starts with (the loop takes
    /// it at its start).
    pub traffic: Arc<[BackendTraffic]>,
    /// The core the worker is pinned to, if any.
    pub core: Option<usize>,
}

/// What `dispatchd run` hands the loop: the state start-up built, and how to
/// rebuild it on reload.
pub struct ManagerParts<'a> {
    pub config: Config,
    pub reload: Box<dyn FnMut() -> Result<Config> + 'a>,
    pub steering: &'a mut Steering,
    pub workers: Vec<WorkerLink>,
    pub wake: Arc<Wake>,
    pub next_hops: Arc<[NextHop]>,
    /// rtnetlink: the requests and the notifications (subscribed before
    /// start-up's first request).
    pub kernel: Kernel,
    /// What start-up learnt of the daemons' routes and hops, in the order of
    /// `next_hops`.
    pub book: HopBook,
    pub back_mac: [u8; 6],
    pub ctl: UnixListener,
    /// The front and back interfaces as start-up found and served them.
    pub links: [LinkWatch; 2],
    /// Sends the probes that make the kernel resolve clients' next hops, out of
    /// the front (opened before the capabilities were dropped).
    pub probes: RawIpSender,
    /// The same through the back, for daemons' hops.
    pub back_probes: RawIpSender,
    pub back_probes6: Option<RawIcmp6Sender>,
    /// The same for IPv6 clients' hops; none if it could not be opened (IPv6
    /// off on this host).
    pub probes6: Option<RawIcmp6Sender>,
    /// What a new process must share with this one to take over from it.
    pub identity: Identity,
    /// The operator's drain and weight overrides, read from `state_file` at
    /// start (only daemons `config` has); the workers' planes are built with
    /// the drained ones draining.
    pub overrides: Overrides,
    /// Where the overrides are written on every change; none = not kept.
    pub state_file: Option<StateFile>,
}

pub struct Manager<'a> {
    uring: Uring<Tag>,
    tracker: ConnTracker,
    /// IPv6 connections: a tracker of their own (see [`ConnTracker6`]).
    tracker6: ConnTracker6,
    workers: Vec<WorkerLink>,
    stats: Vec<Arc<WorkerStats>>,
    wake: Arc<Wake>,
    signals: SignalFd,
    backends: Backends,
    /// The running configuration: `base` with the operator's weights.
    config: Config,
    /// The configuration as loaded (file and flags), without the overrides:
    /// what they are cleared back to.
    base: Config,
    overrides: Overrides,
    state_file: Option<StateFile>,
    reload: Box<dyn FnMut() -> Result<Config> + 'a>,
    steering: &'a mut Steering,
    next_hops: Arc<[NextHop]>,
    kernel: Kernel,
    /// The daemons' routes and hops as the kernel told them; their usable MACs
    /// are what `next_hops` holds.
    book: HopBook,
    netlink: NetlinkStats,
    /// The notification socket's receive buffer.
    netlink_buf: Vec<u8>,
    /// Daemons whose next hop changed, to copy into their cells and states.
    hop_changes: Vec<BackendId>,
    /// The next daemon whose route is to be asked again, while a pass runs.
    reroute_next: Option<usize>,
    /// A [`Tag::Reroute`] timeout is in flight.
    reroute_armed: bool,
    /// When the workers' events are looked at: an open window is a
    /// [`Tag::EventWindow`] timeout in flight.
    event_pace: EventPace,
    /// The last rtnetlink failure said, so a repeated one is only counted.
    netlink_error: Option<String>,
    back_mac: [u8; 6],
    /// Commands that did not fit a worker's queue yet, in order.
    backlog: VecDeque<(WorkerId, Command)>,
    ctl: UnixListener,
    metrics: Option<TcpListener>,
    orders: Vec<Order>,
    orders6: Vec<Order6>,
    icmp: IcmpStats,
    next_retired_check_ns: u64,
    /// The longest round (ns), from a wake-up to the next wait: since the last
    /// second began, in the last whole second, and since start.
    round_peak: u64,
    round_max_1s: u64,
    round_max: u64,
    next_peaks_ns: u64,
    /// When a warning about probes that could not start may come next.
    next_probe_warning_ns: u64,
    links: [LinkWatch; 2],
    /// Changes of an interface's queue count or MTU seen while running.
    link_changes: u64,
    /// The last failure to read an interface, said once.
    link_error: Option<String>,
    next_link_refresh_ns: u64,
    /// Clients' hops, out of the front (see [`Self::resolve_client_hops`]).
    client_probes: HopProbes,
    /// Daemons' hops, out of the back (see [`Self::resolve_daemon_hops`]).
    daemon_probes: HopProbes,
    next_daemon_hops_ns: u64,
    /// Scratch for the hops to probe in a round.
    unresolved: Vec<Ipv4Addr>,
    unresolved6: Vec<Ipv6Addr>,
    /// A graceful stop under way: when it ends (monotonic ns). Meanwhile the
    /// instance forwards as before but says it is not ready.
    stopping_until_ns: Option<u64>,
    identity: Identity,
    /// Each daemon's frames, bytes and new connections, by address.
    traffic: TrafficBook,
    reloads: ReloadCounts,
    /// The settings only a restart applies, as this process runs them.
    running: Vec<(&'static str, String)>,
    /// Whether the steering program can track IPv6 connections: its tracked6
    /// map is sized at start, for the IPv6 services then configured (see
    /// `daemon::replies`); always with `reply_mode = "stateless"`.
    ipv6_tracked_room: bool,
    /// Those of them the file, at the last successful reload, asks otherwise.
    pending: Vec<PendingKey>,
    /// Unix time of the start.
    started_unix: f64,
    /// Each worker's flow-table capacity, as started.
    table_capacity: u64,
    /// The workers' IPv6 tables: there, absent, or being made off-loop.
    tables6: Tables6,
    /// The connection of a new process that took the links over: it waits
    /// for the records once the workers stopped.
    handover: Option<UnixStream>,
    stop: bool,
    /// systemd's notification socket (a no-op outside systemd).
    notify: Notifier,
    /// Fed from the tick while every worker moves, when systemd asks for it.
    watchdog: Option<Watchdog>,
    /// The readiness last told systemd as STATUS=.
    told_status: String,
}

impl<'a> Manager<'a> {
    pub fn new(mut parts: ManagerParts<'a>) -> Result<Self> {
        let metrics = match parts.config.control.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("binding metrics_listen {addr}"))?,
            ),
            None => None,
        };
        let next_hops = parts.next_hops;
        let config = parts.overrides.weighted(&parts.config);
        let mut backends = Backends::new(
            &config,
            &[],
            &Backends::default(),
            |id| next_hops[id.index()].get().is_some(),
            now_ns(),
        );
        for (addr, o) in parts.overrides.iter() {
            if o.drained {
                for id in backends.at(addr).collect::<Vec<_>>() {
                    backends.built_draining(id);
                }
            }
        }
        let mut traffic = TrafficBook::default();
        let daemons = traffic.install(
            (parts.config.all_daemon_keys()).map(|((addr, p), _)| (addr, p.number())),
            (parts.config.all_services()).map(|(address, p)| (address, p.number())),
        );
        // Taken, not cloned: a bank is let go of once its plane alone held it.
        for w in &mut parts.workers {
            let bank = std::mem::replace(&mut w.traffic, BackendTraffic::bank(0));
            traffic.track(daemons.clone(), bank);
        }
        let started_unix = unix_now();
        let tables6 = Tables6::new(
            Tables6Plan {
                capacity: parts.config.flow_capacity,
                present: crate::worker::flow_capacity6(&parts.config) > 0,
                workers: parts.workers.len(),
                cores: table6::cores_beside(
                    &(core_affinity::get_core_ids().unwrap_or_default())
                        .into_iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>(),
                    parts.workers.iter().map(|w| w.core),
                ),
            },
            parts.wake.clone(),
        );
        Ok(Manager {
            uring: Uring::new(RING_ENTRIES)?,
            tracker: ConnTracker::new(parts.config.control.timeouts),
            tracker6: ConnTracker6::new(parts.config.control.timeouts),
            stats: parts.workers.iter().map(|w| w.stats.clone()).collect(),
            workers: parts.workers,
            wake: parts.wake,
            signals: SignalFd::new().context("creating a signalfd")?,
            backends,
            reload: parts.reload,
            steering: parts.steering,
            next_hops,
            kernel: parts.kernel,
            book: parts.book,
            netlink: NetlinkStats::default(),
            netlink_buf: vec![0; neigh::DATAGRAM_MAX],
            hop_changes: Vec::new(),
            reroute_next: None,
            reroute_armed: false,
            event_pace: EventPace::new(parts.config.event_ring),
            netlink_error: None,
            back_mac: parts.back_mac,
            backlog: VecDeque::new(),
            ctl: parts.ctl,
            metrics,
            orders: Vec::new(),
            orders6: Vec::new(),
            icmp: IcmpStats::default(),
            next_retired_check_ns: 0,
            round_peak: 0,
            round_max_1s: 0,
            round_max: 0,
            next_peaks_ns: 0,
            next_probe_warning_ns: 0,
            links: parts.links,
            link_changes: 0,
            link_error: None,
            next_link_refresh_ns: 0,
            client_probes: HopProbes::new(parts.probes, parts.probes6),
            daemon_probes: HopProbes::new(parts.back_probes, parts.back_probes6),
            next_daemon_hops_ns: 0,
            unresolved: Vec::new(),
            unresolved6: Vec::new(),
            stopping_until_ns: None,
            identity: parts.identity,
            traffic,
            reloads: ReloadCounts {
                last_success_unix: started_unix,
                ..ReloadCounts::default()
            },
            running: parts.config.restart_only(),
            ipv6_tracked_room: parts.config.reply_mode == ReplyMode::Stateless
                || !parts.config.services6.is_empty(),
            pending: Vec::new(),
            started_unix,
            table_capacity: parts.config.flow_capacity as u64,
            tables6,
            handover: None,
            stop: false,
            notify: Notifier::from_env().context("opening $NOTIFY_SOCKET")?,
            watchdog: None,
            told_status: String::new(),
            config,
            base: parts.config,
            overrides: parts.overrides,
            state_file: parts.state_file,
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<()> {
        self.uring.read(Tag::EventFd, self.wake.eventfd.raw(), 8)?;
        self.uring
            .read(Tag::Signal, self.signals.raw(), SIGINFO_LEN)?;
        self.uring.timeout(Tag::Tick, TICK)?;
        self.uring
            .accept(Tag::Accept { metrics: false }, self.ctl.as_raw_fd())?;
        if let Some(m) = &self.metrics {
            self.uring
                .accept(Tag::Accept { metrics: true }, m.as_raw_fd())?;
        }
        self.uring
            .poll_readable(Tag::Netlink, self.kernel.notifications().raw())?;
        // Daemons whose next hop is still unknown start out of selection.
        self.tell_states();
        self.tell_ready();
        self.prune_state_file();
        let wake = self.wake.clone();
        while !self.stop {
            let round_started = now_ns();
            let mut pace = self.event_pace;
            if pace.look(&wake, || self.drain_events()) {
                self.uring.timeout(Tag::EventWindow, EVENT_WINDOW)?;
            }
            self.event_pace = pace;
            self.round_peak = self.round_peak.max(now_ns() - round_started);
            let done = self.uring.wait()?;
            let round_started = now_ns();
            for done in done {
                self.complete(done)?;
            }
            self.round_peak = self.round_peak.max(now_ns() - round_started);
        }
        Ok(())
    }

    /// The XDP program's verdict counters now.
    pub fn xdp_counters(&self) -> Result<[u64; crate::xdp::COUNTER_NAMES.len()]> {
        self.steering.counters()
    }

    /// The new process's connection, if a takeover ended [`run`](Self::run).
    pub fn take_handover(&mut self) -> Option<UnixStream> {
        self.handover.take()
    }

    /// Tracks the connections whose records a takeover brought (owner, record
    /// on this process's clock), IPv4 and IPv6, in the phase each record
    /// shows: opened, established, closed by the client, reset. A daemon's FIN
    /// is not in a record: such a connection restarts established and ends by
    /// its own FINs or the idle timeout. Records of daemons this
    /// configuration lacks are left out, as the workers refuse them.
    pub fn inherit(&mut self, records: &[(u16, FlowRecord)], records6: &[(u16, FlowRecord6)]) {
        let now = now_ns();
        let served: AHashSet<(SocketAddr, u8)> = (self.config.all_daemon_keys())
            .map(|((addr, protocol), _)| (addr, protocol.number()))
            .collect();
        let kept = |daemon: SocketAddr, protocol: u8| served.contains(&(daemon, protocol));
        for &(worker, r) in records
            .iter()
            .filter(|(_, r)| kept(r.daemon.into(), r.key.protocol))
        {
            let events = inherited_events(WorkerId(worker), r.key, r.daemon, r.state, r.created_ns);
            for event in events.into_iter().flatten() {
                self.tracker.on_event(event, now, &mut self.orders);
            }
        }
        for &(worker, r) in
            (records6.iter()).filter(|(_, r)| kept(r.daemon().into(), r.key.protocol))
        {
            let events =
                inherited_events(WorkerId(worker), r.key, r.daemon(), r.state, r.created_ns);
            for event in events.into_iter().flatten() {
                self.tracker6.on_event(event, now, &mut self.orders6);
            }
        }
        // Orders (a reset connection's removal) reach the workers once they run.
        for (worker, command) in self.orders.drain(..) {
            self.backlog.push_back((worker, Command::Flow(command)));
        }
        for (worker, command) in self.orders6.drain(..) {
            self.backlog.push_back((worker, Command::Flow6(command)));
        }
    }

    /// A new process asks to take over (see [`takeover`]): refused with a
    /// reply if it does not match this one; otherwise the links are passed and,
    /// once it says it switched them, the loop stops and the daemon hands the
    /// records over. If it goes away or fails before, the links are pointed
    /// back at this process's program and nothing else changed.
    fn takeover_request(&mut self, fd: OwnedFd, line: &str) -> Result<()> {
        let accepted =
            Identity::parse(line).and_then(|theirs| match self.identity.refusal(&theirs) {
                Some(refusal) => Err(refusal),
                None => Ok(theirs),
            });
        let theirs = match accepted {
            Ok(theirs) => theirs,
            Err(refusal) => {
                tracing::warn!("takeover refused: {refusal}");
                let reply = format!("error: {refusal}\n")
                    .into_bytes()
                    .into_boxed_slice();
                return self.uring.send(Tag::Send, fd, reply, 0);
            }
        };
        let mut stream = UnixStream::from(fd);
        let mut fds = self.steering.links();
        fds.push(self.steering.tracked_fd());
        // Only a new process that asks for it expects the IPv6 map.
        if theirs.reply_key6.is_some() {
            fds.push(self.steering.tracked6_fd());
        }
        match takeover::hand_links(&mut stream, &fds) {
            Ok(()) => {
                tracing::info!(
                    "a new process took the links over; stopping and handing the records over"
                );
                // Each process is the main process of a unit of its own
                // (README: a template unit run alternately), so this one's
                // unit stops here; the new one told its own unit READY=1.
                self.tell_stopping("stopping: handing over to a new process (takeover)");
                self.handover = Some(stream);
                self.stop = true;
            }
            Err(e) => {
                let reclaimed = match self.steering.reclaim_links() {
                    Ok(()) => String::new(),
                    Err(e) => format!(" (pointing the links back failed: {e:#})"),
                };
                tracing::warn!("takeover abandoned: {e:#}; serving on{reclaimed}");
            }
        }
        Ok(())
    }

    /// Takes the operator's overrides the old process's state file held once
    /// a takeover switched (see `daemon::run_with`): applied as a reload with
    /// them would be, before the loop runs.
    pub fn adopt_overrides(&mut self, overrides: Overrides) -> Result<()> {
        self.overrides = overrides;
        self.install(self.base.clone(), Vec::new(), OffBack::Keep)?;
        tracing::info!(
            overrides = self.overrides.len(),
            "state file re-read after the takeover"
        );
        Ok(())
    }

    /// The statistics text, for printing at exit.
    pub fn final_stats(&self) -> String {
        report::stats_text(&self.snapshot())
    }

    fn snapshot(&self) -> StatsSnapshot<'_> {
        StatsSnapshot {
            workers: &self.stats,
            xdp: self.steering.counters().ok(),
            connections: self.tracker.len() + self.tracker6.len(),
            udp_flows: self.tracker.udp_len() + self.tracker6.udp_len(),
            ignored_events: self.tracker.ignored_events() + self.tracker6.ignored_events(),
            recovery: {
                let (a, b) = (self.tracker.recovery(), self.tracker6.recovery());
                RecoveryCounts {
                    confirmed: a.confirmed + b.confirmed,
                    expired: a.expired + b.expired,
                }
            },
            timer_entries: self.tracker.timer_entries() + self.tracker6.timer_entries(),
            loop_round_max_ns: self.round_max,
            loop_round_max_1s_ns: self.round_max_1s,
            icmp: self.icmp,
            links: &self.links,
            link_changes: self.link_changes,
            next_hops: self.client_probes.stats(),
            daemon_next_hops: self.daemon_probes.stats(),
            netlink: self.netlink,
            ready: self.readiness().is_ok(),
            pending_restart: &self.pending,
            reloads: self.reloads,
        }
    }

    /// GET /metrics: the snapshot, each service and daemon, the process.
    fn scrape(&mut self) -> String {
        self.traffic.settle();
        let totals = self.traffic.totals();
        let (per_daemon, per_daemon6) = (self.tracker.per_daemon(), self.tracker6.per_daemon());
        let weights: AHashMap<(SocketAddr, Protocol), u32> =
            self.config.all_daemon_keys().collect();
        let backends: Vec<BackendMetric> = self
            .backends
            .iter()
            .map(|b| {
                let conns = conns_of(per_daemon, per_daemon6, b.addr, b.protocol.number());
                BackendMetric {
                    service: b.service,
                    protocol: b.protocol,
                    daemon: b.addr,
                    up: b.health.health() == Health::Up,
                    weight: weights.get(&(b.addr, b.protocol)).copied().unwrap_or(0),
                    drained: b.draining || b.retired,
                    retired: b.retired,
                    active: conns.active,
                    inactive: conns.inactive,
                    traffic: (totals.get(&(b.addr, b.protocol.number())))
                        .copied()
                        .unwrap_or_default(),
                }
            })
            .collect();
        let services = (self.config.all_services())
            .map(|(address, protocol)| {
                let mine = backends
                    .iter()
                    .filter(|b| b.service == address && b.protocol == protocol);
                let (mut up, mut active, mut inactive) = (0, 0, 0);
                for b in mine {
                    up += u32::from(b.up && !b.retired);
                    active += u64::from(b.active);
                    inactive += u64::from(b.inactive);
                }
                ServiceMetric {
                    address,
                    protocol,
                    daemons_up: up,
                    new_connections: self.traffic.service_opened(address, protocol.number()),
                    active,
                    inactive,
                }
            })
            .collect();
        let pending: AHashSet<&str> = self.pending.iter().map(|p| p.key).collect();
        let extra = ScrapeExtra {
            services,
            backends,
            table_capacity: self.table_capacity,
            started_unix: self.started_unix,
            reloads: self.reloads,
            restart_keys: self
                .running
                .iter()
                .map(|(key, _)| (*key, pending.contains(key)))
                .collect(),
        };
        metrics::render(&self.snapshot(), extra)
    }

    /// Ready for traffic, or why not (see [`ready`]).
    fn readiness(&self) -> Result<(), NotReady> {
        let running: Vec<bool> = self
            .workers
            .iter()
            .map(|w| !w.link.events.producer_gone())
            .collect();
        let services: Vec<_> = self.config.all_services().collect();
        ready::decide(ready::Facts {
            stopping_left_ms: self
                .stopping_until_ns
                .map(|until| until.saturating_sub(now_ns()) / 1_000_000),
            workers_running: &running,
            services: &services,
            backends: self.backends.iter(),
        })
    }

    /// Tells systemd the daemon serves (READY=1), with `ctl ready`'s answer
    /// as its status, and starts the watchdog if systemd asks for one. Ready
    /// for systemd means started: whether traffic should come is the status,
    /// as a load balancer must start even while its daemons are down.
    fn tell_ready(&mut self) {
        self.told_status = self.status_line();
        self.notify
            .tell(&format!("READY=1\n{}", notify::status(&self.told_status)));
        if let Some(timeout) = notify::watchdog_timeout() {
            let dog = Watchdog::new(timeout, &self.heartbeats(), now_ns());
            tracing::info!(
                timeout_ms = timeout.as_millis() as u64,
                interval_ms = dog.interval().as_millis() as u64,
                "systemd watchdog on: fed while every worker moves"
            );
            self.watchdog = Some(dog);
        }
    }

    /// The STATUS= systemd shows: `ctl ready`'s line.
    fn status_line(&self) -> String {
        match self.readiness() {
            Ok(()) => "serving; ready".to_owned(),
            Err(why) => format!("serving; not ready: {why}"),
        }
    }

    /// A new STATUS= when readiness changed (a tick's check).
    fn tell_status(&mut self) {
        if !self.notify.enabled() || self.stopping_until_ns.is_some() {
            return;
        }
        let line = self.status_line();
        if line != self.told_status {
            self.notify.tell(&notify::status(&line));
            self.told_status = line;
        }
    }

    fn heartbeats(&self) -> Vec<u64> {
        self.stats.iter().map(|s| s.heartbeat.get()).collect()
    }

    /// WATCHDOG=1 when due and every worker moved since the last feed; a
    /// worker that did not is named, and systemd, unfed, restarts dispatchd.
    fn feed_watchdog(&mut self, now: u64) {
        let heartbeats = self.heartbeats();
        let Some(dog) = &mut self.watchdog else {
            return;
        };
        match dog.check(now, &heartbeats) {
            Verdict::NotDue => {}
            Verdict::Feed { resumed } => {
                for worker in resumed {
                    tracing::info!(
                        worker,
                        "worker runs again; feeding systemd's watchdog again"
                    );
                }
                self.notify.tell("WATCHDOG=1");
            }
            Verdict::Withhold { newly, .. } => {
                for worker in newly {
                    tracing::warn!(
                        worker,
                        "worker stalled: its rounds stopped; not feeding systemd's watchdog"
                    );
                }
            }
        }
    }

    /// STOPPING=1, with what the stop does.
    fn tell_stopping(&self, how: &str) {
        self.notify
            .tell(&format!("STOPPING=1\n{}", notify::status(how)));
    }

    /// SIGINT: stop now.
    fn interrupt(&mut self) {
        self.tell_stopping("stopping (SIGINT)");
        self.stop = true;
    }

    /// SIGTERM: with a grace period, turn unready first (so the speaker
    /// withdraws this instance's routes and new traffic goes elsewhere) and
    /// keep forwarding until it ends; without one, or when a stop is already
    /// under way (a second SIGTERM), stop now.
    fn terminate(&mut self) {
        let grace = self.config.control.stop_grace;
        if grace.is_zero() || self.stopping_until_ns.is_some() {
            if self.stopping_until_ns.is_some() {
                tracing::info!("SIGTERM again: stopping now");
            }
            self.tell_stopping("stopping (SIGTERM)");
            self.stop = true;
            return;
        }
        self.stopping_until_ns = Some(now_ns() + grace.as_nanos() as u64);
        self.tell_stopping(&format!(
            "stopping (SIGTERM): not ready, forwarding for {} ms more",
            grace.as_millis()
        ));
        tracing::info!(
            "SIGTERM: not ready from now on; forwarding for {} ms more, then stopping \
             (SIGINT or another SIGTERM stops at once)",
            grace.as_millis()
        );
    }

    /// Accepts the next connection on the metrics listener or the control socket.
    fn accept(&mut self, metrics: bool) -> Result<()> {
        let listener = match (&self.metrics, metrics) {
            (Some(l), true) => l.as_raw_fd(),
            _ => self.ctl.as_raw_fd(),
        };
        self.uring.accept(Tag::Accept { metrics }, listener)
    }

    /// Ends a graceful stop whose time is up.
    fn check_stopping(&mut self, now: u64) {
        if self.stopping_until_ns.is_some_and(|until| now >= until) {
            tracing::info!(
                "grace period of {} ms over; stopping",
                self.config.control.stop_grace.as_millis()
            );
            self.stop = true;
        }
    }

    fn complete(&mut self, done: Completion<Tag>) -> Result<()> {
        let failed = done.error();
        match done.tag {
            // The round's look, right after these completions, takes the
            // events: a look that finds them is what opens a window.
            Tag::EventFd => {
                self.hand_out_tables6();
                self.uring.read(Tag::EventFd, self.wake.eventfd.raw(), 8)?;
            }
            Tag::Signal => {
                match done.buf.as_deref().and_then(SignalFd::decode) {
                    Some(Signal::Terminate) => self.terminate(),
                    Some(Signal::Interrupt) => self.interrupt(),
                    Some(Signal::Hangup) => self.reload_config(),
                    None => {}
                }
                self.uring
                    .read(Tag::Signal, self.signals.raw(), SIGINFO_LEN)?;
            }
            // The next round's look takes what came, and opens another
            // window if anything did.
            Tag::EventWindow => self.event_pace.window_ended(),
            Tag::Tick => {
                self.tick()?;
                self.hand_out_tables6();
                self.uring.timeout(Tag::Tick, TICK)?;
            }
            Tag::Accept { metrics } => {
                let mut rest = false;
                match (done.fd, failed) {
                    (Some(fd), _) => self.uring.recv_within(
                        Tag::Recv { metrics },
                        fd,
                        vec![0; REQUEST_MAX].into_boxed_slice(),
                        0,
                        REQUEST_DEADLINE,
                    )?,
                    (None, Some(e)) => {
                        let on = if metrics {
                            "metrics listener"
                        } else {
                            "control socket"
                        };
                        rest = matches!(
                            e.raw_os_error(),
                            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                        );
                        tracing::error!("accept on the {on}: {e}");
                    }
                    (None, None) => {}
                }
                if rest {
                    self.uring
                        .timeout(Tag::AcceptPause { metrics }, ACCEPT_PAUSE)?;
                } else {
                    self.accept(metrics)?;
                }
            }
            Tag::AcceptPause { metrics } => self.accept(metrics)?,
            Tag::Recv { metrics } => {
                let (Some(fd), Some(buf)) = (done.fd, done.buf) else {
                    return Ok(());
                };
                // A request is answered once whole, or as it came if the
                // client ended it early (EOF after part of it).
                if done.result > 0 || (done.result == 0 && done.sent > 0) {
                    // An HTTP request may come in several segments: answered
                    // (and the socket closed) before its end, the unread rest
                    // would make the close a reset the client may see before
                    // the answer.
                    if metrics
                        && done.result > 0
                        && !ctl::http_request_complete(&buf[..done.sent])
                        && done.sent < buf.len()
                    {
                        let filled = done.sent;
                        return self.uring.recv_within(
                            Tag::Recv { metrics },
                            fd,
                            buf,
                            filled,
                            REQUEST_DEADLINE,
                        );
                    }
                    let request = String::from_utf8_lossy(&buf[..done.sent]);
                    if !metrics && request.starts_with(takeover::VERB) {
                        let request = request.into_owned();
                        return self.takeover_request(fd, &request);
                    }
                    // An answer counts every event published before the
                    // request came, even inside an event window.
                    self.drain_events_aside();
                    let reply = if metrics {
                        match ctl::http_ask(&request) {
                            HttpAsk::Ready => ready::http(&self.readiness()),
                            HttpAsk::Metrics => metrics::http_metrics(&self.scrape()),
                        }
                    } else {
                        self.ctl_reply(&request)
                    };
                    self.uring.send_within(
                        Tag::Send,
                        fd,
                        reply.into_bytes().into_boxed_slice(),
                        0,
                        REPLY_DEADLINE,
                    )?;
                }
            }
            Tag::Send => {
                if let (Some(fd), Some(buf)) = (done.fd, done.buf) {
                    if done.result > 0 && done.sent < buf.len() {
                        let sent = done.sent;
                        self.uring
                            .send_within(Tag::Send, fd, buf, sent, REPLY_DEADLINE)?;
                    }
                }
            }
            Tag::Probe {
                backend,
                generation,
                step,
                deadline_ns,
            } => self.probe_step(backend, generation, step, deadline_ns, done)?,
            Tag::Netlink => {
                if let Some(e) = failed {
                    self.netlink_fault(format!("polling the rtnetlink socket: {e}"));
                }
                self.drain_netlink()?;
                self.uring
                    .poll_readable(Tag::Netlink, self.kernel.notifications().raw())?;
            }
            Tag::Reroute => {
                self.reroute_armed = false;
                self.reroute_slice()?;
            }
        }
        Ok(())
    }

    /// [`drain_events`](Self::drain_events) outside the round's look: the
    /// look counts what it took, so a window opens for them all the same.
    fn drain_events_aside(&mut self) {
        let taken = self.drain_events();
        self.event_pace.took_aside(taken);
    }

    /// Takes every worker's events and frames; how many there were.
    fn drain_events(&mut self) -> usize {
        let mut taken = 0;
        for w in &mut self.workers {
            while let Some(event) = w.link.events.try_pop() {
                taken += 1;
                if let Event::Opened { key, daemon, .. } = event {
                    self.traffic.opened(key.service(), key.protocol, daemon);
                }
                // Read after the event arrived, so a connection's opening time is
                // never before its record's creation: removals compare the two.
                self.tracker.on_event(event, now_ns(), &mut self.orders);
            }
            while let Some(event) = w.link.events6.try_pop() {
                taken += 1;
                if let Event6::Opened { key, daemon, .. } = event {
                    self.traffic.opened(key.service(), key.protocol, daemon);
                }
                self.tracker6.on_event(event, now_ns(), &mut self.orders6);
            }
        }
        // After the events, so an error about a connection that just opened
        // finds it.
        for w in 0..self.workers.len() {
            while let Some(frame) = self.workers[w].link.frames.try_pop() {
                taken += 1;
                self.icmp_to_daemon(WorkerId(w as u16), frame);
            }
        }
        self.send_orders();
        taken
    }

    /// Translates an ICMP error that `worker` copied from the front for the
    /// daemon of its connection, and has that worker send it (it just received
    /// the error, so it is alive; any worker's back socket reaches the daemon).
    fn icmp_to_daemon(&mut self, worker: WorkerId, mut frame: SlowFrame) {
        let (tracker, backends, next_hops) = (&self.tracker, &self.backends, &self.next_hops);
        let tracker6 = &self.tracker6;
        let bytes = frame.bytes_mut();
        // The worker copied either family's errors; the ethertype says which.
        let outcome = if icmp::is_ipv6(bytes) {
            icmp::to_daemon6(
                bytes,
                |key| tracker6.daemon_of(key),
                |daemon| {
                    // Either protocol's: one address, one next hop.
                    let id = backends.at(daemon).next()?;
                    next_hops.get(id.index())?.get()
                },
                self.back_mac,
            )
        } else {
            icmp::to_daemon(
                bytes,
                |key| tracker.daemon_of(key),
                |daemon| {
                    // Either protocol's: one address, one next hop.
                    let id = backends.at(daemon).next()?;
                    next_hops.get(id.index())?.get()
                },
                self.back_mac,
            )
        };
        let outcome = outcome.map(|bytes| {
            self.backlog
                .push_back((worker, Command::TransmitBack(bytes.into())));
        });
        self.icmp.count(outcome);
    }

    /// Queues the tracker's orders behind whatever waits already, then sends.
    fn send_orders(&mut self) {
        for (worker, command) in self.orders.drain(..) {
            self.backlog.push_back((worker, Command::Flow(command)));
        }
        for (worker, command) in self.orders6.drain(..) {
            self.backlog.push_back((worker, Command::Flow6(command)));
        }
        self.send_backlog();
    }

    fn send_backlog(&mut self) {
        // A full command queue keeps that worker's command, and every later one
        // of it, for the next round: the worker may drain meanwhile, and a later
        // command that found room would overtake the kept one.
        let mut kept = VecDeque::new();
        let mut full = Vec::new();
        while let Some((w, c)) = self.backlog.pop_front() {
            let Some(worker) = self.workers.get_mut(w.index()) else {
                continue;
            };
            if full.contains(&w) {
                kept.push_back((w, c));
                continue;
            }
            match worker.link.commands.push(c) {
                Ok(()) => {}
                Err(TrySendError::Full(c)) => {
                    full.push(w);
                    kept.push_back((w, c));
                }
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        self.backlog = kept;
        for worker in &mut self.workers {
            worker.link.commands.wake();
        }
    }

    /// Queues `command` for every worker.
    fn broadcast(&mut self, command: impl Fn() -> Command) {
        for w in 0..self.workers.len() {
            self.backlog.push_back((WorkerId(w as u16), command()));
        }
    }

    fn tick(&mut self) -> Result<()> {
        let now = now_ns();
        // A worker only ends when told to stop, after this loop: one that ended
        // on its own (a panic) leaves its queue's traffic unserved. Stopping the
        // whole daemon detaches XDP, so the host gets its traffic back, and lets
        // a supervisor restart dispatchd.
        if let Some(w) = self
            .workers
            .iter()
            .position(|w| w.link.events.producer_gone())
        {
            anyhow::bail!("worker {w} stopped unexpectedly; stopping dispatchd");
        }
        self.check_stopping(now);
        self.feed_watchdog(now);
        self.tell_status();
        // Before the timers: a SYN's record must not expire on an
        // establishment that is already published.
        self.drain_events_aside();
        self.tracker.expire(now, &mut self.orders);
        self.tracker6.expire(now, &mut self.orders6);
        self.send_orders();
        self.resolve_client_hops(now);
        self.resolve_daemon_hops(now);
        let generation = self.backends.generation();
        let mut not_started = None;
        for backend in self.backends.due_probes(now) {
            let b = self.backends.get(backend);
            let timeout = b.check.schedule.timeout;
            let tag = Tag::Probe {
                backend,
                generation,
                step: ProbeStep::Connect,
                deadline_ns: now.saturating_add(timeout.as_nanos().try_into().unwrap_or(u64::MAX)),
            };
            if let Err(e) = self.uring.connect(tag, b.probe_target(), timeout) {
                // A probe that could not start (no descriptor left, say) says
                // nothing of the daemon: it keeps its health, and is probed
                // again an interval later.
                self.backends.probe_not_started(backend, generation);
                not_started.get_or_insert((0, e)).0 += 1;
            }
        }
        if let Some((count, e)) = not_started {
            if now >= self.next_probe_warning_ns {
                self.next_probe_warning_ns = now + PROBE_WARNING_NS;
                tracing::warn!(
                    "{count} health probe(s) could not start, tried again an interval later \
                     (the daemons keep their health meanwhile): {e:#}"
                );
            }
        }
        if now >= self.next_peaks_ns {
            self.next_peaks_ns = now + PEAK_WINDOW_NS;
            self.turn_peaks();
        }
        if now >= self.next_retired_check_ns {
            self.next_retired_check_ns = now + RETIRED_CHECK_NS;
            self.let_go_of_finished();
        }
        // A pass of route requests whose next slice could not be scheduled.
        if !self.reroute_armed {
            self.reroute_slice()?;
        }
        if now >= self.next_link_refresh_ns {
            self.next_link_refresh_ns = now + LINK_REFRESH_NS;
            self.watch_links();
        }
        Ok(())
    }

    /// Closes a second of stall measures: each worker's and the loop's longest
    /// round in it, and the longest since start.
    fn turn_peaks(&mut self) {
        for w in &self.stats {
            let peak = w.round_peak.take();
            w.round_max_1s_ns.set(peak);
            w.round_max_ns.raise(peak);
        }
        self.round_max_1s = std::mem::take(&mut self.round_peak);
        self.round_max = self.round_max.max(self.round_max_1s);
    }

    /// Re-reads both interfaces' RX queue counts and MTUs. A change is never
    /// silent: one line when it happens (queues added after start have no
    /// socket until a restart, and the line says so), a counter, and the counts
    /// seen beside those served in `ctl stats` and /metrics.
    fn watch_links(&mut self) {
        for link in &mut self.links {
            match queues::read_counts(&link.facts.name) {
                Ok((rx_queues, mtu)) => {
                    if let Some(line) = link.update(rx_queues, mtu) {
                        self.link_changes += 1;
                        tracing::warn!("{line}");
                    }
                }
                Err(e) => {
                    let line = format!("cannot re-read {}: {e}", link.facts.label());
                    if self.link_error.as_ref() != Some(&line) {
                        tracing::warn!("{line}");
                        self.link_error = Some(line);
                    }
                }
            }
        }
    }

    /// Has the kernel resolve the next hops towards clients that replies found
    /// without a neighbour entry since the last round (see [`super::nexthops`]).
    fn resolve_client_hops(&mut self, now: u64) {
        self.unresolved.clear();
        if let Err(e) = self.steering.take_unresolved_hops(&mut self.unresolved) {
            tracing::error!("reading the unresolved next hops: {e:#}");
        }
        self.unresolved6.clear();
        if let Err(e) = self.steering.take_unresolved_hops6(&mut self.unresolved6) {
            tracing::error!("reading the unresolved IPv6 next hops: {e:#}");
        }
        (self.client_probes).run(&self.unresolved, &self.unresolved6, now);
    }

    /// Has the kernel resolve, once a probe interval, the hops of daemons it
    /// routes out of the back but has no complete neighbour entry for: a TCP daemon's
    /// health probes do that, but nothing would for a UDP daemon (no probes),
    /// a retired one, or one a reload added or a route moved to a hop nothing
    /// on this host has used yet. Such a daemon stayed out of selection for
    /// good. An echo request through the back makes the kernel resolve the
    /// hop; the neighbour notification then brings its MAC.
    fn resolve_daemon_hops(&mut self, now: u64) {
        if now < self.next_daemon_hops_ns {
            return;
        }
        self.next_daemon_hops_ns = now + nexthops::PROBE_INTERVAL_NS;
        self.unresolved.clear();
        self.unresolved6.clear();
        // Whether or not the daemon keeps the hop's last MAC (a flushed or
        // failed entry leaves it): only a complete entry of the kernel's
        // follows the hop, a new MAC included.
        let book = &self.book;
        let hops = (book.daemons().iter()).filter_map(|d| d.hop());
        for hop in hops.filter(|&hop| book.neighbour_mac(hop).is_none()) {
            match hop {
                IpAddr::V4(hop) => self.unresolved.push(hop),
                IpAddr::V6(hop) => self.unresolved6.push(hop),
            }
        }
        (self.daemon_probes).run(&self.unresolved, &self.unresolved6, now);
    }

    // ---- routes and neighbours (rtnetlink) ----------------------------------

    /// Reads the notifications the kernel has queued: a neighbour change
    /// reaches the daemons behind that hop at once (cells, states, workers);
    /// a route, rule, address or link change starts a pass of route requests
    /// for the daemons. Lost notifications (ENOBUFS) make it read every
    /// neighbour and route again.
    fn drain_netlink(&mut self) -> Result<()> {
        let mut buf = std::mem::take(&mut self.netlink_buf);
        for _ in 0..DRAIN_DATAGRAMS {
            match self.kernel.notifications().recv(&mut buf) {
                // Only the kernel may send to the groups (CAP_NET_ADMIN), but
                // any process may try: never taken for the kernel's word.
                Ok(got) if !got.from_kernel => self.netlink.malformed += 1,
                Ok(got) if got.truncated => {
                    self.netlink_fault("a notification longer than the buffer".into());
                    self.resync(&mut buf);
                }
                Ok(got) => {
                    for item in Messages::new(&buf[..got.len]) {
                        match item {
                            Ok((_, message)) => self.on_notification(message),
                            Err(e) => {
                                self.netlink.malformed += 1;
                                self.say_netlink(format!(
                                    "a malformed rtnetlink notification: {e}"
                                ));
                            }
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.resync(&mut buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.netlink_fault(format!("reading rtnetlink notifications: {e}"));
                    break;
                }
            }
        }
        self.netlink_buf = buf;
        self.apply_hop_changes();
        self.reroute_slice()
    }

    fn on_notification(&mut self, message: Message) {
        self.netlink.messages += 1;
        match message {
            Message::Neighbour(n) => {
                if self.book.neighbour(&n, &mut self.hop_changes) {
                    self.start_reroute();
                }
            }
            Message::Route(r) => {
                if self.book.covers_a_daemon(r.dst, r.dst_len) {
                    self.start_reroute();
                }
            }
            Message::Neighbour6(n) => {
                if self.book.neighbour(&n, &mut self.hop_changes) {
                    self.start_reroute();
                }
            }
            Message::Route6(r) => {
                if self.book.covers_a_daemon6(r.dst, r.dst_len) {
                    self.start_reroute();
                }
            }
            Message::RoutingChanged => self.start_reroute(),
            Message::Done | Message::Error(_) | Message::Other => {}
        }
    }

    /// Notifications were lost: what is still queued is older than the loss
    /// (applied after a fresh dump, it could undo it), so it is dropped, and
    /// every neighbour and route is read again.
    fn resync(&mut self, buf: &mut [u8]) {
        self.netlink.resyncs += 1;
        tracing::warn!(
            "rtnetlink notifications were lost (the socket's buffer overflowed); \
             reading the neighbours and the daemons' routes again"
        );
        for _ in 0..DRAIN_DATAGRAMS {
            match self.kernel.notifications().recv(buf) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {}
                Err(_) => break,
            }
        }
        self.read_neighbours(self.book.has_ipv6());
        self.start_reroute();
    }

    /// Reads the kernel's neighbours on the back as the truth; the IPv6 table
    /// only with `ipv6` (when an IPv6 daemon's hop is in it: a host may run
    /// with IPv6 off).
    fn read_neighbours(&mut self, ipv6: bool) {
        match self.kernel.neighbours() {
            Ok(entries) => match ipv6.then(|| self.kernel.neighbours6()) {
                None => self
                    .book
                    .load_neighbours(&entries, &[], &mut self.hop_changes),
                Some(Ok(entries6)) => {
                    self.book
                        .load_neighbours(&entries, &entries6, &mut self.hop_changes)
                }
                Some(Err(e)) => self.netlink_fault(format!("{e:#}")),
            },
            Err(e) => self.netlink_fault(format!("{e:#}")),
        }
    }

    /// Asks every daemon's route again, from the first (a pass under way
    /// starts over: the change may concern the daemons it already asked).
    fn start_reroute(&mut self) {
        self.reroute_next = Some(0);
    }

    /// One slice of a pass of route requests, and the next one scheduled.
    fn reroute_slice(&mut self) -> Result<()> {
        let Some(start) = self.reroute_next else {
            return Ok(());
        };
        let daemons = self.book.daemons().len();
        let end = (start + REROUTE_SLICE).min(daemons);
        for i in start..end {
            let id = BackendId(i as u16);
            let addr = self.book.daemons()[i].addr;
            self.netlink.route_requests += 1;
            match self.kernel.route_ip(addr) {
                Ok(reach) => {
                    if let Some(change) = self.book.reroute(id, reach, &mut self.hop_changes) {
                        self.report_reroute(id, &change);
                    }
                }
                Err(e) => self.netlink_fault(format!("{e:#}")),
            }
        }
        self.reroute_next = (end < daemons).then_some(end);
        self.apply_hop_changes();
        if self.reroute_next.is_some() && !self.reroute_armed {
            self.reroute_armed = true;
            self.uring.timeout(Tag::Reroute, REROUTE_PAUSE)?;
        }
        Ok(())
    }

    /// Says how a daemon's route changed: loudly when it no longer leaves by
    /// the back (it is offered nothing until it does again).
    fn report_reroute(&self, id: BackendId, change: &Rerouted) {
        if id.index() >= self.backends.len() {
            return;
        }
        let daemon = self.backends.get(id).addr;
        let back = self.kernel.back();
        match (&change.before, &change.after) {
            (_, after) if !after.is_back() => tracing::warn!(
                "{}: it takes no new connection until it is routed via {back} again",
                after.problem(daemon, back).unwrap_or_default()
            ),
            (Reach::Back { hop: was }, Reach::Back { hop }) => {
                tracing::info!("daemon {daemon}'s next hop is now {hop} (was {was})")
            }
            (_, Reach::Back { hop }) => tracing::info!(
                "daemon {daemon} is routed via the back interface {back} again (next hop {hop})"
            ),
            _ => {}
        }
    }

    /// Copies the changed daemons' usable MACs into their cells (the workers
    /// read them per packet), and their states to the workers: a daemon
    /// without one is offered no new connection.
    fn apply_hop_changes(&mut self) {
        let mut changed = std::mem::take(&mut self.hop_changes);
        for &id in &changed {
            let (Some(hop), Some(cell)) = (self.book.get(id), self.next_hops.get(id.index()))
            else {
                continue;
            };
            if id.index() >= self.backends.len() {
                continue;
            }
            let (before, after) = (cell.get(), hop.usable());
            cell.set(after);
            if let Some(mac) = after.filter(|m| before != Some(*m)) {
                tracing::info!(
                    "daemon {} next hop {} (was {})",
                    self.backends.get(id).addr,
                    neigh::fmt_mac(mac),
                    before.map_or("unknown".to_owned(), neigh::fmt_mac)
                );
            }
            self.backends.set_next_hop_known(id, after.is_some());
            self.tell_state(id);
        }
        changed.clear();
        self.hop_changes = changed;
    }

    /// A failed read or request: counted, said once until another fails.
    fn netlink_fault(&mut self, what: String) {
        self.netlink.errors += 1;
        self.say_netlink(what);
    }

    fn say_netlink(&mut self, what: String) {
        if self.netlink_error.as_ref() != Some(&what) {
            tracing::warn!("{what}");
            self.netlink_error = Some(what);
        }
    }

    /// One step of a probe completed: a TCP check's connect is its verdict; an
    /// HTTP check goes on to the next step within what is left of its
    /// timeout, and passes iff the status line carries the expected code. A
    /// short, malformed or late answer fails it. The socket is closed when
    /// the probe ends (dropped with the completion).
    fn probe_step(
        &mut self,
        backend: BackendId,
        generation: u64,
        step: ProbeStep,
        deadline_ns: u64,
        done: Completion<Tag>,
    ) -> Result<()> {
        // A probe of the list before a reload: its daemon may be another now.
        if generation != self.backends.generation() {
            return Ok(());
        }
        let b = self.backends.get(backend);
        let ProbeKind::Http(http) = &b.check.kind else {
            self.probe_result(backend, generation, done.result == 0);
            return Ok(());
        };
        let left = deadline_ns.saturating_sub(now_ns());
        let next = match (step, done.fd, done.buf) {
            _ if done.result < 0 || left == 0 => ProbeNext::Verdict(false),
            (ProbeStep::Connect, Some(fd), _) => {
                let request = health::http_request(http, b.probe_target());
                ProbeNext::Send(fd, request.into_boxed_slice(), 0)
            }
            (ProbeStep::Send, Some(fd), Some(buf)) if done.result > 0 => {
                if done.sent < buf.len() {
                    ProbeNext::Send(fd, buf, done.sent)
                } else {
                    ProbeNext::Recv(fd, vec![0; health::HTTP_REPLY_MAX].into_boxed_slice(), 0)
                }
            }
            (ProbeStep::Recv, Some(fd), Some(buf)) => {
                let filled = done.sent.min(buf.len());
                match health::parse_status_line(&buf[..filled]) {
                    StatusLine::Status(code) => ProbeNext::Verdict(http.passes(code)),
                    StatusLine::Malformed => ProbeNext::Verdict(false),
                    // Closed or out of room before the line's end.
                    StatusLine::Incomplete if done.result == 0 || filled == buf.len() => {
                        ProbeNext::Verdict(false)
                    }
                    StatusLine::Incomplete => ProbeNext::Recv(fd, buf, filled),
                }
            }
            _ => ProbeNext::Verdict(false),
        };
        let left = Duration::from_nanos(left);
        let tag = |step| Tag::Probe {
            backend,
            generation,
            step,
            deadline_ns,
        };
        match next {
            ProbeNext::Verdict(ok) => self.probe_result(backend, generation, ok),
            ProbeNext::Send(fd, buf, from) => {
                self.uring
                    .send_within(tag(ProbeStep::Send), fd, buf, from, left)?
            }
            ProbeNext::Recv(fd, buf, from) => {
                self.uring
                    .recv_within(tag(ProbeStep::Recv), fd, buf, from, left)?
            }
        }
        Ok(())
    }

    fn probe_result(&mut self, backend: BackendId, generation: u64, ok: bool) {
        if generation != self.backends.generation() {
            return;
        }
        if let Some(flip) = self.backends.probe_done(backend, generation, ok) {
            let addr = self.backends.get(backend).addr;
            match flip {
                Health::Up => tracing::info!(daemon = %addr, health = "up", "daemon {addr} is up"),
                Health::Down => {
                    tracing::warn!(daemon = %addr, health = "down", "daemon {addr} is down")
                }
            }
            if flip == Health::Down && self.config.control.on_failure == OnFailure::Reset {
                self.reset_backend(backend);
            }
        }
        self.tell_state(backend);
    }

    /// Tells every worker a daemon's state, if it changed.
    fn tell_state(&mut self, backend: BackendId) {
        if let Some(state) = self.backends.news(backend) {
            self.broadcast(|| Command::BackendState { backend, state });
            self.send_backlog();
        }
    }

    fn tell_states(&mut self) {
        for backend in self.backends.ids().collect::<Vec<_>>() {
            self.tell_state(backend);
        }
    }

    /// Drops every record of a failed daemon: the tracker's, by the daemon's
    /// address and protocol, and the workers'.
    fn reset_backend(&mut self, backend: BackendId) {
        let b = self.backends.get(backend);
        self.forget_connections_of(b.addr, b.protocol.number());
        self.broadcast(|| Command::RemoveBackendFlows { backend });
        self.send_backlog();
    }

    /// The tracker forgets every connection of IP protocol `protocol` to
    /// `daemon`. O(tracked connections).
    fn forget_connections_of(&mut self, daemon: SocketAddr, protocol: u8) {
        let now = now_ns();
        match daemon {
            SocketAddr::V4(daemon) => {
                let doomed: Vec<_> = self.tracker.connections_of(daemon, protocol).collect();
                for key in doomed {
                    let removed = Event::Removed { key, at_ns: now };
                    self.tracker.on_event(removed, now, &mut self.orders);
                }
            }
            SocketAddr::V6(daemon) => {
                let doomed: Vec<_> = self.tracker6.connections_of(daemon, protocol).collect();
                for key in doomed {
                    let removed = Event6::Removed { key, at_ns: now };
                    self.tracker6.on_event(removed, now, &mut self.orders6);
                }
            }
        }
        self.send_orders();
    }

    /// Connections of IP protocol `protocol` the trackers hold to `daemon`,
    /// of either family.
    fn connections_to(&self, daemon: SocketAddr, protocol: u8) -> u32 {
        conns_of(
            self.tracker.per_daemon(),
            self.tracker6.per_daemon(),
            daemon,
            protocol,
        )
        .total()
    }

    // ---- control socket ---------------------------------------------------

    fn ctl_reply(&mut self, line: &str) -> String {
        let request = match Request::parse(line) {
            Ok(r) => r,
            Err(e) => return format!("error: {e}\n"),
        };
        let (per_daemon, per_daemon6) = (self.tracker.per_daemon(), self.tracker6.per_daemon());
        let counts = |b: &Backend| conns_of(per_daemon, per_daemon6, b.addr, b.protocol.number());
        match request {
            Request::Stats(Format::Text) => report::stats_text(&self.snapshot()),
            Request::Stats(Format::Json) => report::stats_json(&self.snapshot()),
            Request::Ready(Format::Text) => ready::line(&self.readiness()),
            Request::Ready(Format::Json) => ready::json(&self.readiness()),
            Request::Conns(filter, format) => {
                let tracked = self.tracker.len() + self.tracker6.len();
                let every = || {
                    (self.tracker.iter().map(report::Listed::from))
                        .chain(self.tracker6.iter().map(report::Listed::from))
                };
                if filter.daemon.is_none() && filter.client.is_none() {
                    // Every connection matches: no need to walk them all.
                    let first = every().take(filter.limit);
                    return report::conns(first, tracked, tracked, filter.limit, now_ns(), format);
                }
                // Finding what matches a filter walks every connection once.
                let matching = every().filter(|c| {
                    filter.daemon.is_none_or(|d| c.daemon == d)
                        && filter.client.is_none_or(|f| f.matches(c.client))
                });
                let (rows, matched) = report::first_of(matching, filter.limit);
                report::conns(
                    rows.into_iter(),
                    matched,
                    tracked,
                    filter.limit,
                    now_ns(),
                    format,
                )
            }
            Request::Backends(format) => {
                let hops = self.book.daemons();
                let rows = self
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (b, hops.get(i)));
                let back = self.kernel.back();
                let weights: ahash::AHashMap<(SocketAddr, Protocol), u32> =
                    self.config.all_daemon_keys().collect();
                let overrides = &self.overrides;
                let settings = |b: &Backend| BackendSetting {
                    weight: weights.get(&(b.addr, b.protocol)).copied(),
                    overridden: overrides.get(b.addr),
                };
                match format {
                    Format::Text => report::backends_text(rows, back, counts, settings),
                    Format::Json => report::backends_json(rows, back, counts, settings),
                }
            }
            Request::Weight(addr, weight) => self.set_weight(addr, Some(weight)),
            Request::WeightReset(addr) => self.set_weight(addr, None),
            Request::Drain(addr) | Request::Undrain(addr) => {
                let draining = matches!(request, Request::Drain(_));
                // Every daemon at the ADDR:PORT: the TCP and the UDP service's.
                let at: Vec<BackendId> = self.backends.at(addr).collect();
                let live: Vec<BackendId> = (at.iter().copied())
                    .filter(|&b| !self.backends.get(b).retired)
                    .collect();
                match (at.is_empty(), live.is_empty()) {
                    (false, true) => {
                        format!(
                            "error: {addr} was removed by a reload; it takes no new connection\n"
                        )
                    }
                    (false, false) => {
                        for &backend in &live {
                            self.backends.set_draining(backend, draining);
                            self.tell_state(backend);
                        }
                        self.overrides.set_drained(addr, draining);
                        let word = if draining { "draining" } else { "undrained" };
                        tracing::info!(daemon = %addr, draining, "ctl: daemon {addr} {word}");
                        self.saved(format!("{addr} {word}"))
                    }
                    (true, _) => format!("error: {addr} is not a configured daemon\n"),
                }
            }
        }
    }

    /// The reply to a change the operator made, once the overrides are in
    /// the state file (if one is configured). Written here, on the loop, as
    /// a blocking write of a few KB: a rare control action, and a reply
    /// that says "ok" means the change survives a restart.
    fn saved(&self, change: String) -> String {
        let Some(file) = &self.state_file else {
            return format!("ok: {change}\n");
        };
        match file.save(&self.overrides) {
            Ok(()) => {
                tracing::info!(
                    path = %file.path().display(),
                    overrides = self.overrides.len(),
                    "state file written"
                );
                format!("ok: {change}\n")
            }
            Err(e) => {
                tracing::error!(path = %file.path().display(), error = %e, "writing the state file");
                format!(
                    "error: {change}, but writing the state file {} failed ({e}): the change is \
                     lost at the next restart\n",
                    file.path().display()
                )
            }
        }
    }

    /// Writes the state file if it holds more than the running overrides: an
    /// override of a daemon the configuration did not have at start was
    /// ignored, and would come back, were a reload to add the daemon, at the
    /// next start or takeover (`ctl backends` saying there was none).
    fn prune_state_file(&self) {
        let Some(file) = &self.state_file else {
            return;
        };
        match file.load() {
            Ok(on_file) if on_file.to_json() != self.overrides.to_json() => {
                let _ = self.saved("the overrides of daemons not configured dropped".into());
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(path = %file.path().display(), "reading the state file again: {e:#}")
            }
        }
    }

    /// `ctl weight`: 0 drains the daemon (IPVS's quiesce: its connections
    /// finish); any other weight is applied as a reload with that one change
    /// would apply it (records kept, planes rebuilt), and undrains it. `None`
    /// (`--reset`) clears the daemon's overrides: the config's weight,
    /// undrained. The override is kept over the config across reloads, and
    /// across restarts with a state file.
    fn set_weight(&mut self, addr: SocketAddr, weight: Option<u32>) -> String {
        // Every daemon at the ADDR:PORT: the TCP and the UDP service's.
        let at: Vec<BackendId> = self.backends.at(addr).collect();
        if at.is_empty() {
            return format!("error: {addr} is not a configured daemon\n");
        }
        let live: Vec<BackendId> = (at.into_iter())
            .filter(|&b| !self.backends.get(b).retired)
            .collect();
        if live.is_empty() {
            return format!("error: {addr} was removed by a reload; it takes no new connection\n");
        }
        if weight == Some(0) {
            for &id in &live {
                self.backends.set_draining(id, true);
                self.tell_state(id);
            }
            self.overrides.set_drained(addr, true);
            tracing::info!(daemon = %addr, weight = 0, draining = true, "ctl: daemon {addr} weight 0: draining");
            return self.saved(format!("{addr} weight 0: draining"));
        }
        let Some((policy, was)) = (self.config.services.iter())
            .flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (s.policy, b.addr.into(), b.weight))
            })
            .chain((self.config.services6.iter()).flat_map(|s| {
                s.backends
                    .iter()
                    .map(|b| (s.policy, b.addr.into(), b.weight))
            }))
            .find(|&(_, a, _): &(_, SocketAddr, _)| a == addr)
            .map(|(p, _, w)| (p, w))
        else {
            return format!("error: {addr} is not a configured daemon\n");
        };
        let before = self.overrides.clone();
        match weight {
            Some(w) => self.overrides.set_weight(addr, w),
            None => self.overrides.clear(addr),
        }
        let ignored = if policy == PolicyKind::RoundRobin {
            " (its service's policy, round_robin, gives every daemon the same share)"
        } else {
            ""
        };
        let new = self.overrides.weighted(&self.base);
        if let Err(e) = new.validate() {
            self.overrides = before;
            return format!("error: {e}\n");
        }
        let retired = self.retire(&new);
        if let Err(e) = self.install(self.base.clone(), retired, OffBack::Keep) {
            self.overrides = before;
            tracing::error!(daemon = %addr, ?weight, "ctl: daemon {addr} weight: {e:#}");
            return format!("error: {e:#}\n");
        }
        let now = self
            .config
            .all_daemons()
            .find(|(_, _, b)| b.addr == addr)
            .map_or(was, |(_, _, b)| b.weight);
        let reset = if weight.is_none() { " (reset)" } else { "" };
        tracing::info!(daemon = %addr, weight = now, was, reset = weight.is_none(), "ctl: daemon {addr} weight {was} -> {now}{reset}{ignored}");
        match weight {
            Some(_) => self.saved(format!("{addr} weight {now}{ignored}")),
            None => self.saved(format!(
                "{addr} weight {now} (the config's), undrained{ignored}"
            )),
        }
    }

    // ---- reload ------------------------------------------------------------

    /// SIGHUP: re-read the configuration and apply its services and daemons.
    /// Records of daemons that remain are kept (workers re-point them); the rest
    /// of the settings need a restart, which is said, not silently ignored.
    fn reload_config(&mut self) {
        // systemd (253+) matches MONOTONIC_USEC with the reload it asked for.
        self.notify.tell(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\n{}",
            sys::monotonic_usec(),
            notify::status("reloading (SIGHUP)")
        ));
        let outcome = (self.reload)()
            .context("keeping the running configuration")
            .and_then(|new| self.reload_to(new));
        let status = match &outcome {
            Ok(()) => "reloaded".to_owned(),
            Err(e) => format!("reload failed, running configuration kept: {e:#}"),
        };
        if let Err(e) = outcome {
            self.reloads.failure += 1;
            tracing::error!("SIGHUP: {e:#}");
        }
        self.told_status = self.status_line();
        self.notify.tell(&format!(
            "READY=1\n{}",
            notify::status(&format!("{status}; {}", self.told_status))
        ));
    }

    fn reload_to(&mut self, new: Config) -> Result<()> {
        if !self.ipv6_tracked_room && !new.services6.is_empty() {
            anyhow::bail!(
                "service {}: IPv6 services with reply_mode = \"tracked\" need a restart when \
                 dispatchd started without any (the map of tracked IPv6 connections is sized \
                 at start)",
                new.services6[0].address
            );
        }
        // The file's changes against what it said before, not against the
        // operator's overrides, which the reload keeps.
        let changed = config::changes(&self.base, &new);
        let pending: Vec<PendingKey> = self
            .running
            .iter()
            .zip(new.restart_only())
            .filter(|((_, running), (_, file))| running != file)
            .map(|((key, running), (_, file))| PendingKey {
                key,
                running: running.clone(),
                file,
            })
            .collect();
        let retired = self.retire(&new);
        self.install(new, retired, OffBack::Refuse)?;
        self.reloads.success += 1;
        self.reloads.last_success_unix = unix_now();
        for p in &pending {
            tracing::warn!(
                key = p.key,
                running = %p.running,
                file = %p.file,
                "SIGHUP: setting needs a restart; keeping the running value"
            );
        }
        if !pending.is_empty() {
            let keys: Vec<&str> = pending.iter().map(|p| p.key).collect();
            tracing::warn!(
                "SIGHUP: {} need a restart; applying services only",
                keys.join(", ")
            );
        }
        self.pending = pending;
        let list: Vec<String> = self
            .backends
            .iter()
            .map(|b| {
                if b.retired {
                    format!("{} (retired)", b.addr)
                } else {
                    b.addr.to_string()
                }
            })
            .collect();
        let changed = if changed.is_empty() {
            "nothing".to_owned()
        } else {
            changed.join("; ")
        };
        tracing::info!(
            %changed,
            "SIGHUP: reloaded; daemons {}",
            list.join(" ")
        );
        Ok(())
    }

    /// The daemons `new` drops that stay, retired, until their connections end
    /// (`on_remove = "finish"`): those with tracked connections, dropped now or
    /// by an earlier reload. With `on_remove = "reset"` there are none: the
    /// tracker forgets the dropped daemons' connections now, and the workers
    /// drop their records when next met (their daemon is in no plane).
    fn retire(&mut self, new: &Config) -> Vec<Retired> {
        // Counted with every event published before the reload, even inside
        // an event window, as a ctl answer is: a daemon whose only connections
        // opened there would count none, and be let go of at once instead of
        // retired, its connections' records with it.
        self.drain_events_aside();
        let kept: AHashSet<(SocketAddr, Protocol)> =
            new.all_daemon_keys().map(|(key, _)| key).collect();
        let gone: Vec<Retired> = self
            .backends
            .iter()
            .filter(|b| !kept.contains(&(b.addr, b.protocol)))
            .map(|b| Retired {
                daemon: b.addr,
                service: b.service,
                protocol: b.protocol,
            })
            .collect();
        match new.control.on_remove {
            OnRemove::Finish => gone
                .into_iter()
                .filter(|r| self.connections_to(r.daemon, r.protocol.number()) > 0)
                .collect(),
            OnRemove::Reset => {
                for r in gone {
                    self.forget_connections_of(r.daemon, r.protocol.number());
                }
                Vec::new()
            }
        }
    }

    /// Lets go of retired daemons whose last connection has ended: the planes
    /// and maps are rebuilt without them (O(daemons); records of the others are
    /// re-pointed when next met).
    fn let_go_of_finished(&mut self) {
        let (still, done): (Vec<Retired>, Vec<Retired>) = self
            .backends
            .retired()
            .partition(|r| self.connections_to(r.daemon, r.protocol.number()) > 0);
        if done.is_empty() {
            return;
        }
        match self.install(self.base.clone(), still, OffBack::Keep) {
            Ok(()) => {
                for r in done {
                    tracing::info!("removed daemon {} has no connection left; gone", r.daemon);
                }
            }
            Err(e) => tracing::error!("letting go of retired daemons: {e:#}"),
        }
    }

    /// Makes `base` with the operator's overrides, and the `retired` daemons,
    /// the running set: maps, planes, next hops and the loop's view of the
    /// daemons. `off_back` says whether a daemon the kernel does not route
    /// out of the back refuses it. Overrides of daemons `base` no longer has
    /// are forgotten (and left out of the state file's next write).
    fn install(&mut self, base: Config, retired: Vec<Retired>, off_back: OffBack) -> Result<()> {
        let config = self.overrides.weighted(&base);
        if !config.services6.is_empty() && !self.book.has_ipv6() {
            // The first IPv6 daemons: the NDP table was not read (start-up
            // reads it only for IPv6 services), and a complete entry that
            // does not change brings no notification.
            self.read_neighbours(true);
        }
        let host = Host {
            kernel: &self.kernel,
            back_mac: self.back_mac,
            workers: self.workers.len(),
        };
        let book = &self.book;
        let applied = apply(
            &config,
            &retired,
            |addr, hop| book.mac_for(addr, hop),
            &host,
            off_back,
            self.steering,
        )?;
        let dropped = self.overrides.retain_configured(&base);
        for gone in &dropped {
            tracing::warn!(daemon = %gone, "the operator's override of a daemon no longer configured is dropped");
        }
        if !dropped.is_empty() {
            // Out of the file too: a reload that brings the daemon back runs
            // it without the override, and so must the next start.
            let _ = self.saved(format!("{} override(s) dropped", dropped.len()));
        }
        let daemons = self.traffic.install(
            (config
                .all_daemon_keys()
                .map(|((addr, p), _)| (addr, p.number())))
            .chain(retired.iter().map(|r| (r.daemon, r.protocol.number()))),
            (config.all_services()).map(|(address, p)| (address, p.number())),
        );
        self.traffic.settle();
        self.tables6.provide(!config.services6.is_empty());
        for (w, plane) in applied.planes.into_iter().enumerate() {
            self.traffic.track(daemons.clone(), plane.traffic.clone());
            self.backlog
                .push_back((WorkerId(w as u16), Command::ReplacePlane(Box::new(plane))));
        }
        self.tracker.set_timeouts(config.control.timeouts);
        self.tracker6.set_timeouts(config.control.timeouts);
        self.next_hops = applied.next_hops;
        self.book.install(applied.hops);
        // A pass of route requests under way starts over on the new list.
        if self.reroute_next.is_some() {
            self.start_reroute();
        }
        let next_hops = &self.next_hops;
        self.backends = Backends::new(
            &config,
            &retired,
            &self.backends,
            |id| next_hops[id.index()].get().is_some(),
            now_ns(),
        );
        // The overrides are the one source of a drain: one cleared since
        // (`ctl weight --reset`) must not be carried over by address.
        for id in self.backends.ids().collect::<Vec<_>>() {
            let drained = self.overrides.get(self.backends.get(id).addr).drained;
            self.backends.set_draining(id, drained);
        }
        self.config = config;
        self.base = base;
        self.send_backlog();
        self.tell_states();
        Ok(())
    }

    /// Sends each IPv6 table made since the last look to its worker.
    fn hand_out_tables6(&mut self) {
        let tables = self.tables6.arrived();
        if tables.is_empty() {
            return;
        }
        for (worker, table) in tables {
            self.backlog.push_back((worker, Command::Table6(table)));
        }
        self.send_backlog();
    }
}

/// Seconds since the Unix epoch, for timestamps operators compare with clocks.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The connection counts of a daemon of either family and its service's IP
/// protocol `protocol` in the trackers' tables.
fn conns_of(
    per_daemon: &AHashMap<(SocketAddrV4, u8), BackendConns>,
    per_daemon6: &AHashMap<(SocketAddrV6, u8), BackendConns>,
    daemon: SocketAddr,
    protocol: u8,
) -> BackendConns {
    match daemon {
        SocketAddr::V4(d) => per_daemon.get(&(d, protocol)),
        SocketAddr::V6(d) => per_daemon6.get(&(d, protocol)),
    }
    .copied()
    .unwrap_or_default()
}

/// The events that bring a tracker to the phase an inherited record shows
/// (see [`Manager::inherit`]), its times from `at_ns` (the record's creation).
fn inherited_events<K: KeyFamily>(
    worker: WorkerId,
    key: K,
    daemon: K::Daemon,
    state: TcpState,
    at_ns: u64,
) -> [Option<Event<K>>; 4] {
    [
        Some(Event::Opened {
            worker,
            key,
            daemon,
            at_ns,
        }),
        state
            .is_established()
            .then_some(Event::Established { key, at_ns }),
        state.contains(TcpState::FIN_CLIENT).then_some(Event::Fin {
            key,
            from_client: true,
            at_ns,
        }),
        state
            .contains(TcpState::RST)
            .then_some(Event::Reset { key, at_ns }),
    ]
}
