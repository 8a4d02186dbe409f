//! A worker: for each of its sockets, receive a batch, rewrite each frame in
//! place, transmit the same descriptors on a socket of the other side, recycle
//! completions into fill rings.
//!
//! A worker serves one queue or several of each interface, all its sockets on
//! one UMEM. Front socket `i` transmits on back socket `i % back sockets` and
//! back socket `j` on front socket `j % front sockets`: a fixed pairing, so the
//! frames of one flow, which the NIC keeps on one RX queue, also leave through
//! one TX queue, in order.
//!
//! Nothing on this path allocates, locks or makes a syscall per packet: the only
//! syscalls are the TX kick (per batch, when the ring asks for it), poll() when
//! there is nothing to do, and in busy-poll mode a recvfrom() on an empty RX
//! ring (that is the busy poll).
#![allow(unsafe_code)] // UMEM frame access and ring produce/consume; each block says why it is sound

use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Condvar, Mutex, PoisonError,
    },
    time::Instant,
};

use xsk_rs::{FrameDesc, RxQueue, TxQueue, Umem};

use crate::{
    config::Config,
    config::PollMode,
    dataplane::{pipelined, Dataplane, Forwarder, FrameHandler, PlaneRecord, Reverser},
    flow::{
        FlowRecord, FlowRecord6, FlowTable, FlowTable6, InsertError, Record, RstWindow, Table,
        TcpState,
    },
    ids::WorkerId,
    protocol::{self, Event, EventSink, FlowCommand, Inbox, WorkerEnd, COMMANDS_PER_ROUND},
    stats::{now_ns, WorkerDrop, WorkerStats},
    sys::EventFd,
    tracked::ReplyTracker,
    xdp::{ReplyKey6, TrackedMap},
    xsk::{self, poll_readable, BusyPoll, TxRetry, WorkerSockets},
};

/// Empty polls an adaptive worker makes (yielding the core after each) before
/// it sleeps in poll().
const ADAPTIVE_SPINS: u32 = 2_000;
/// Longest sleep, so that a stop request is noticed promptly.
const POLL_TIMEOUT_MS: i32 = 100;
/// The first wait before a TX ring whose kick sent nothing is kicked again (a
/// stopped queue restarts without telling the socket); it doubles while kicks
/// go on sending nothing.
const TX_RETRY_MS: u64 = 1;
/// Kicks one round makes for a TX ring's left frames while they go: a budget
/// each in copy mode, so the round's receive is not held up for long.
const RESEND_KICKS: usize = 4;

/// What the loop tells a worker.
pub type Command = protocol::Command<Dataplane>;

pub struct WorkerSetup {
    pub id: WorkerId,
    pub core: Option<usize>,
    pub batch: usize,
    pub poll: PollMode,
    /// `worker_priority` is set: the worker runs at SCHED_FIFO (inherited from
    /// the thread that spawns it), so it must not spin while it waits for the loop.
    pub fifo: bool,
    pub flow_capacity: usize,
    /// The IPv6 table's capacity (see [`flow_capacity6`]).
    pub flow_capacity6: usize,
    pub sockets: WorkerSockets,
    pub plane: Dataplane,
    pub stats: Arc<WorkerStats>,
    pub stop: Arc<AtomicBool>,
    /// Readable once `stop` is set: a sleeping worker wakes at once (a
    /// takeover waits for the sockets to close).
    pub stop_wake: Arc<EventFd>,
    pub link: WorkerEnd<Dataplane>,
    /// Benchmark only (`--bare-forwarder`): frames cross untouched, no parsing.
    pub bare: bool,
    /// reply_mode "tracked": the kernel's map this worker mirrors its table into.
    pub tracked: Option<TrackedMap>,
    /// reply_mode "tracked": the kernel's map of IPv6 connections.
    pub tracked6: Option<TrackedMap<ReplyKey6>>,
    /// Told this worker's id once it is about to serve (its table allocated).
    pub ready: Option<std::sync::mpsc::Sender<WorkerId>>,
    /// A table allocated beforehand (a takeover allocates it before the
    /// switch, to keep slow work out of the window); else the worker does.
    pub table: Option<FlowTable>,
    /// The IPv6 table, likewise.
    pub table6: Option<FlowTable6>,
    /// Records a takeover brought for this worker, entered before it serves.
    pub inherited: Vec<FlowRecord>,
    /// IPv6 records a takeover brought for this worker, likewise.
    pub inherited6: Vec<FlowRecord6>,
    /// A takeover's, in tracked reply mode: opened once the maps of tracked
    /// connections match the handed records. The worker enters its records
    /// meanwhile, and waits at it before it writes a key or serves.
    pub settled: Option<Arc<Gate>>,
}

/// Opened once, by dropping the [`GateOpener`] (so a thread that panics
/// opens it too); waited at by any number of threads.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    /// A closed gate and what opens it.
    pub fn new() -> (Arc<Gate>, GateOpener) {
        let gate = Arc::new(Gate::default());
        (gate.clone(), GateOpener(gate))
    }

    pub fn wait(&self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        while !*open {
            open = (self.opened.wait(open)).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// Opens its [`Gate`] when dropped.
pub struct GateOpener(Arc<Gate>);

impl Drop for GateOpener {
    fn drop(&mut self) {
        *self.0.open.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.0.opened.notify_all();
    }
}

/// The capacity of each worker's IPv6 flow table: `flow_capacity`, as the
/// IPv4 table's, when `config` has IPv6 services; none otherwise, so that an
/// IPv4-only process does not hold a table of 92-byte slots it never uses (at
/// the default capacity, 193 MB per worker). An IPv6 service added by a reload
/// to a process started without any gets its table then, allocated off the
/// worker's loop (see [`crate::control::table6`] and [`Command::Table6`]).
pub fn flow_capacity6(config: &Config) -> usize {
    if config.services6.is_empty() {
        0
    } else {
        config.flow_capacity
    }
}

/// One direction of one pump: the RX ring of a socket and the TX ring of the
/// other side's socket it is paired with.
struct Rings<'a> {
    umem: &'a Umem,
    rx: &'a mut RxQueue,
    tx: &'a mut TxQueue,
    /// Frames one kick of `tx` sends.
    tx_budget: usize,
}

/// Descriptor scratch space, sized once.
struct Batches {
    rx: Vec<FrameDesc>,
    tx: Vec<FrameDesc>,
    free: Vec<FrameDesc>,
}

/// Runs until told to stop; returns the flow tables (a takeover hands their
/// records to the next process).
pub fn run(setup: WorkerSetup) -> (FlowTable, FlowTable6) {
    let WorkerSetup {
        id,
        core,
        batch,
        poll,
        fifo,
        flow_capacity,
        flow_capacity6,
        sockets,
        mut plane,
        stats,
        stop,
        stop_wake,
        link: WorkerEnd {
            mut events,
            mut commands,
        },
        bare,
        tracked,
        tracked6,
        ready,
        table,
        table6,
        inherited,
        inherited6,
        settled,
    } = setup;
    if let Some(core) = core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            tracing::warn!("worker {id} could not pin to core {core}; running unpinned");
        }
    }
    let WorkerSockets {
        umem,
        frames,
        pages,
        mut front,
        mut back,
    } = sockets;
    stats.umem_huge_page_bytes.set(pages.huge_page_bytes());
    let mut table = table.unwrap_or_else(|| FlowTable::with_capacity(flow_capacity));
    let mut table6 = table6.unwrap_or_else(|| FlowTable6::with_capacity(flow_capacity6));
    stats.table6_capacity.set(table6.capacity() as u64);
    // Before the trackers, whose journals would write every inherited
    // record's key again: the takeover brings the maps of tracked
    // connections to the records meanwhile (`settled`).
    let inherited_count = inherited.len() + inherited6.len();
    let (mut refused, mut full, mut full6) = (0, Vec::new(), Vec::new());
    for mut record in inherited {
        if !plane.adopt(&mut record) {
            refused += 1;
        } else if let Err(e) = table.insert(record) {
            plane.connection_closed(record.backend);
            refused += 1;
            if matches!(e, InsertError::Full { .. }) {
                full.push(record);
            }
        }
    }
    for mut record in inherited6 {
        if !plane.adopt6(&mut record) {
            refused += 1;
        } else if let Err(e) = table6.insert(record) {
            plane.connection_closed(record.backend);
            refused += 1;
            if matches!(e, InsertError::Full { .. }) {
                full6.push(record);
            }
        }
    }
    if refused > 0 {
        tracing::warn!(
            "worker {id}: {refused} of {inherited_count} records handed over refused \
             (their daemon is not configured, or the table is full)"
        );
    }
    if let Some(gate) = settled {
        gate.wait();
    }
    let mut tracker = tracked.map(|map| ReplyTracker::new(map, &mut table));
    let mut tracker6 = tracked6.map(|map| ReplyTracker::new(map, &mut table6));
    // Their keys were written for them; nothing else would remove them.
    if let Some(t) = &mut tracker {
        t.forget(&full, &stats);
    }
    if let Some(t) = &mut tracker6 {
        t.forget(&full6, &stats);
    }
    let mut b = Batches {
        // Placeholders, overwritten by each consume before they are read.
        rx: vec![FrameDesc::default(); batch],
        tx: Vec::with_capacity(batch),
        free: frames,
    };
    let mut pollfds = xsk::pollfds(front.iter().chain(back.iter()));
    pollfds.push(libc::pollfd {
        fd: stop_wake.raw(),
        events: libc::POLLIN,
        revents: 0,
    });
    // Last, where `sleep` looks for it.
    pollfds.push(libc::pollfd {
        fd: commands.fd(),
        events: libc::POLLIN,
        revents: 0,
    });
    let n_front = front.len();
    let mut idle_spins = 0u32;
    let mut sweeper = Sweeper::default();
    let mut sweeper6 = Sweeper::default();
    let mut round_started: Option<u64> = None;
    let mut next_sweep_ns = 0;
    // The daemon waits for this before it says it is running; frames that
    // arrived meanwhile are waiting in the RX rings.
    if let Some(ready) = ready {
        let _ = ready.send(id);
    }

    let mut next_socket_stats_ns = 0;

    while !stop.load(Relaxed) {
        // First: a round held back by the loop still shows this worker alive.
        stats.heartbeat.add(1);
        let now_ns = now_ns();
        // Measured from the previous round's start, so that it includes
        // everything the round did; a round that ended in a sleep is not
        // measured (its gap is the sleep).
        if let Some(started) = round_started.replace(now_ns) {
            stats.round_peak.raise(now_ns - started);
        }
        if now_ns >= next_socket_stats_ns {
            next_socket_stats_ns = now_ns + SOCKET_STATS_INTERVAL_NS;
            read_socket_stats(front.iter().chain(back.iter()), &stats);
        }
        for rings in front.iter_mut().chain(back.iter_mut()) {
            recycle(rings, &mut b, &stats);
        }
        if events.flush() {
            stats.loop_wakes.add(1);
        }
        if events.must_hold_back() {
            // The loop is behind with this worker's events: taking more frames or
            // commands could cost events, which would cost connections. Frames
            // wait in the kernel's rings meanwhile.
            stats.held_back.add(1);
            if fifo {
                wait_for_loop();
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        for command in commands.take_up_to(COMMANDS_PER_ROUND) {
            stats.commands.add(1);
            if let Command::TransmitBack(frame) = command {
                // Any back socket will do: the frame starts no flow.
                let to = &mut back[0];
                transmit_copy(&umem, &mut to.tx, to.tx_budget, &mut b.free, &frame, &stats);
                continue;
            }
            obey(
                command,
                (&mut table, &mut table6),
                tracker6.as_mut(),
                &mut plane,
                (&mut sweeper, &mut sweeper6),
                &mut events,
                &stats,
                now_ns,
            );
        }
        if let Some(t) = &mut tracker {
            t.sync(&mut table, &stats);
        }
        if let Some(t) = &mut tracker6 {
            t.sync(&mut table6, &stats);
        }

        let mut busy_ns = 0u64;
        let (mut n_fwd, mut n_rev, mut sent_fwd, mut sent_rev) = (0, 0, 0, 0);
        for (i, from) in front.iter_mut().enumerate() {
            let j = i % back.len();
            let to = &mut back[j];
            let mut rings = Rings {
                umem: &umem,
                rx: &mut from.rx,
                tx: &mut to.tx,
                tx_budget: to.tx_budget,
            };
            // The bare forwarder (benchmark only) passes every frame untouched.
            let (received, sent) = pump(
                &mut rings,
                &mut b,
                &stats,
                &mut busy_ns,
                bare,
                &mut Forwarder {
                    table: &mut table,
                    table6: &mut table6,
                    plane: &mut plane,
                    events: &mut events,
                    stats: &stats,
                    now_ns,
                },
                |f| {
                    if let Some(t) = &mut tracker {
                        t.sync(f.table, f.stats);
                    }
                    if let Some(t) = &mut tracker6 {
                        t.sync(f.table6, f.stats);
                    }
                },
            );
            count_socket(&stats, i, n_front + j, received, sent);
            busy_poll(from, received, id);
            n_fwd += received;
            sent_fwd += sent;
        }
        for (j, from) in back.iter_mut().enumerate() {
            let i = j % front.len();
            let to = &mut front[i];
            let mut rings = Rings {
                umem: &umem,
                rx: &mut from.rx,
                tx: &mut to.tx,
                tx_budget: to.tx_budget,
            };
            let (received, sent) = pump(
                &mut rings,
                &mut b,
                &stats,
                &mut busy_ns,
                bare,
                &mut Reverser {
                    plane: &plane,
                    events: &mut events,
                    stats: &stats,
                    now_ns,
                },
                |_| {},
            );
            count_socket(&stats, n_front + j, i, received, sent);
            busy_poll(from, received, id);
            n_rev += received;
            sent_rev += sent;
        }
        let n = (n_fwd + n_rev) as u64;
        let tx_due = resend(front.iter_mut().chain(back.iter_mut()), now_ns, &stats);
        if now_ns >= next_sweep_ns {
            next_sweep_ns = now_ns + SWEEP_EVERY_NS;
            sweeper.step(
                SWEEP_SLICE,
                &mut table,
                &mut plane,
                &mut events,
                &stats,
                now_ns,
            );
            if !table6.is_empty() || sweeper6.pass_left > 0 {
                sweeper6.step(
                    SWEEP_SLICE,
                    &mut table6,
                    &mut plane,
                    &mut events,
                    &stats,
                    now_ns,
                );
            }
        }
        if events.flush() {
            stats.loop_wakes.add(1);
        }
        stats.rx_front.add(n_fwd as u64);
        stats.rx_back.add(n_rev as u64);
        stats.tx_back.add(sent_fwd as u64);
        stats.tx_front.add(sent_rev as u64);
        stats.flows.set((table.len() + table6.len()) as u64);

        if let Some(per_packet) = busy_ns.checked_div(n) {
            stats.latency_ns.record_n(per_packet, n);
            stats.batch_sizes.record_n(n, 1);
            stats.batches.add(1);
            idle_spins = 0;
            continue;
        }
        if events.has_backlog() {
            // The loop is behind: give it the core, and flush again at once.
            if fifo {
                wait_for_loop();
            } else {
                std::thread::yield_now();
            }
            continue;
        }
        // Frames waiting on a TX ring are sent by a later round's kick: a
        // sleep until the next frame arrives would hold them that long.
        let timeout_ms = tx_due.map_or(POLL_TIMEOUT_MS, |due| {
            (due.saturating_sub(now_ns).div_ceil(1_000_000) as i32).clamp(1, POLL_TIMEOUT_MS)
        });
        match poll {
            PollMode::Busy => std::hint::spin_loop(),
            PollMode::Wakeup => {
                if sleep(&mut pollfds, timeout_ms, &mut commands, &stats) {
                    round_started = None;
                }
            }
            PollMode::Adaptive => {
                idle_spins += 1;
                if idle_spins >= ADAPTIVE_SPINS {
                    if sleep(&mut pollfds, timeout_ms, &mut commands, &stats) {
                        round_started = None;
                    }
                    idle_spins = 0;
                } else {
                    // An empty round gives the core to anything else runnable
                    // on it: clients or daemons on a shared core, or a NAPI
                    // kthread pinned beside the worker, whose frames a spin
                    // would keep waiting (and dropping at the device's ring)
                    // to the end of the worker's slice. Alone on its core,
                    // this returns at once.
                    std::thread::yield_now();
                }
            }
        }
    }
    (table, table6)
}

/// After a pump of `from`: an empty RX ring is busy-polled, and the first
/// frames tell whether that can work (see [`BusyPoll::Unproven`]); where it
/// cannot, the worker stops making the syscall and says so once.
#[inline]
fn busy_poll(from: &mut crate::xsk::Rings, received: usize, worker: WorkerId) {
    match from.busy_poll {
        BusyPoll::Off => {}
        BusyPoll::On | BusyPoll::Unproven if received == 0 => from.poll_device(),
        BusyPoll::On => {}
        BusyPoll::Unproven => match from.napi_id() {
            Ok(id) if id != 0 => {
                tracing::info!(
                    worker = %worker,
                    iface = %from.iface,
                    queue = from.queue,
                    napi_id = id,
                    "busy poll: {} queue {} polls NAPI {id}",
                    from.iface,
                    from.queue
                );
                from.busy_poll = BusyPoll::On;
            }
            outcome => {
                tracing::warn!(
                    worker = %worker,
                    iface = %from.iface,
                    queue = from.queue,
                    "busy poll: {} queue {}'s socket has no NAPI id ({}), so there is nothing \
                     to busy-poll (copy mode on a device whose XDP receive has none, such as \
                     veth); the worker spins on its rings without the syscall",
                    from.iface,
                    from.queue,
                    match outcome {
                        Ok(_) => "0".to_owned(),
                        Err(e) => e.to_string(),
                    }
                );
                from.busy_poll = BusyPoll::Off;
            }
        },
    }
}

/// Adds one pump's frames to the counters of the socket that received them and
/// of the one that sent them (a batch at a time, and only when there was one).
#[inline]
fn count_socket(stats: &WorkerStats, from: usize, to: usize, received: usize, sent: usize) {
    if received > 0 {
        if let Some(s) = stats.sockets.get(from) {
            s.rx.add(received as u64);
        }
    }
    if sent > 0 {
        if let Some(s) = stats.sockets.get(to) {
            s.tx.add(sent as u64);
        }
    }
}

/// Carries out one command of the management loop as a round takes it: all
/// but [`Command::TransmitBack`], which needs the rings and is sent by `run`.
/// A reload's plane is applied as it comes, whatever its IPv6 services: the
/// IPv6 table they need is allocated by the loop, off this thread, and comes
/// as a [`Command::Table6`] of its own.
#[allow(clippy::too_many_arguments)]
fn obey(
    command: Command,
    (table, table6): (&mut FlowTable, &mut FlowTable6),
    tracker6: Option<&mut ReplyTracker<FlowRecord6>>,
    plane: &mut Dataplane,
    (sweeper, sweeper6): (&mut Sweeper, &mut Sweeper),
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) {
    match command {
        Command::Table6(grown) => {
            swap_in_table6(
                table6, *grown, tracker6, plane, sweeper6, events, stats, now_ns,
            );
            if events.flush() {
                stats.loop_wakes.add(1);
            }
        }
        command => apply(
            command,
            (table, table6),
            plane,
            (sweeper, sweeper6),
            events,
            stats,
            now_ns,
        ),
    }
}

/// Puts `grown`, allocated by the loop's helper thread, in place of the
/// worker's IPv6 table (one with no room: the process started without IPv6
/// services), moving its records, if any, over. Only moves and a free of the
/// small old table happen here; frames wait in the rings meanwhile.
#[cold]
#[allow(clippy::too_many_arguments)]
fn swap_in_table6(
    table6: &mut FlowTable6,
    mut grown: FlowTable6,
    tracker6: Option<&mut ReplyTracker<FlowRecord6>>,
    plane: &mut Dataplane,
    sweeper6: &mut Sweeper,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) {
    if grown.capacity() <= table6.capacity() || !grown.is_empty() {
        // The loop sends one table once, larger than the one it replaces.
        tracing::warn!(
            worker = %plane.worker,
            capacity = grown.capacity(),
            records = grown.len(),
            "IPv6 flow table refused: not an empty table larger than the worker's own ({})",
            table6.capacity()
        );
        return;
    }
    // The old table's journal goes to the kernel's map first, so that no
    // change it noted is lost with it; the new one keeps its own.
    if let Some(t) = tracker6 {
        t.sync(table6, stats);
        grown.keep_journal(crate::tracked::ROOM);
    }
    // A pass under way walks the old table's slots: it ends there, and the
    // next one starts on the new table.
    let started = Instant::now();
    sweeper6.finish_pass(table6, plane, events, stats, now_ns);
    sweeper6.cursor = 0;
    let moved = table6.len();
    for record in table6.iter() {
        // Cannot fail: the new table is larger and empty. The journal notes
        // the insertion again; the tracked map already has the key.
        let _ = grown.insert(*record);
    }
    *table6 = grown;
    let took_us = started.elapsed().as_micros() as u64;
    stats.table6_capacity.set(table6.capacity() as u64);
    tracing::info!(
        worker = %plane.worker,
        capacity = table6.capacity(),
        moved,
        took_us,
        "IPv6 flow table in place"
    );
}

/// Carries out one command of the management loop; the worker stays the only
/// writer of its tables and pools.
fn apply(
    command: Command,
    (table, table6): (&mut FlowTable, &mut FlowTable6),
    plane: &mut Dataplane,
    (sweeper, sweeper6): (&mut Sweeper, &mut Sweeper),
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) {
    match command {
        Command::Flow(command) => apply_flow(command, table, plane, events, stats, now_ns),
        Command::Flow6(command) => apply_flow(command, table6, plane, events, stats, now_ns),
        Command::BackendState { backend, state } => plane.set_backend_state(backend, state),
        Command::RemoveBackendFlows { backend } => {
            sweeper.finish_pass(table, plane, events, stats, now_ns);
            sweeper6.finish_pass(table6, plane, events, stats, now_ns);
            plane.reset_daemon(backend, now_ns);
            sweeper.begin_pass(table);
            sweeper6.begin_pass(table6);
        }
        Command::ReplacePlane(new) => {
            sweeper.finish_pass(table, plane, events, stats, now_ns);
            sweeper6.finish_pass(table6, plane, events, stats, now_ns);
            let old = std::mem::replace(plane, *new);
            plane.take_over(&old);
            sweeper.begin_pass(table);
            sweeper6.begin_pass(table6);
        }
        // Needs the rings, which `run` holds: it sends these itself.
        Command::TransmitBack(_) => {}
        // Taken by `obey`, which has the IPv6 tracker.
        Command::Table6(_) => {}
    }
    if events.flush() {
        stats.loop_wakes.add(1);
    }
}

/// One order about a record of either family's table.
fn apply_flow<R: PlaneRecord>(
    command: FlowCommand<R::FlowKey>,
    table: &mut Table<R>,
    plane: &mut Dataplane,
    events: &mut EventSink,
    stats: &WorkerStats,
    now_ns: u64,
) {
    match command {
        FlowCommand::Remove { key, opened_ns } => {
            // A record restarted by a reused port since the loop decided is a
            // newer connection's.
            if table.get(&key).is_some_and(|r| r.created_ns() <= opened_ns) {
                if let Some(record) = table.remove(&key) {
                    count_closed(record, plane);
                }
            }
        }
        FlowCommand::RemoveIfIdle { key, idle_since_ns } => match table.get(&key) {
            Some(record) if record.last_seen_ns() > idle_since_ns => {
                events.emit(
                    Event::Active {
                        key,
                        last_seen_ns: record.last_seen_ns(),
                    },
                    stats,
                );
            }
            _ => {
                if let Some(record) = table.remove(&key) {
                    count_closed(record, plane);
                }
                events.emit(Event::Removed { key, at_ns: now_ns }, stats);
            }
        },
        FlowCommand::CheckRst { key, seq, at_ns } => match table.get_mut(&key) {
            // A reset from before the record (re)started is about an older
            // connection on the same ports.
            Some(r)
                if r.created_ns() <= at_ns
                    && !r.state().contains(TcpState::RST)
                    && RstWindow::DAEMON.admits(seq, r.client_ack()) =>
            {
                r.state_mut().insert(TcpState::RST);
                events.emit(Event::Reset { key, at_ns }, stats);
            }
            _ => stats.rst_ignored.add(1),
        },
    }
}

/// Counts a removed record's connection off its daemon. The record may still
/// carry an older plane's id (a reload renumbers the daemons, and the sweep
/// brings records up to date a slice at a time): its daemon is found by
/// address, as the sweep does, and a record whose daemon is gone, or was reset
/// since, counts off nothing (its count was not carried, or was zeroed).
fn count_closed<R: PlaneRecord>(mut record: R, plane: &mut Dataplane) {
    if record.is_current(plane) {
        plane.connection_closed(record.backend());
    }
}

/// How long a SCHED_FIFO worker sleeps while it waits for the management
/// loop: neither a spin nor a yield would let the loop run if it shares the
/// worker's core (a SCHED_FIFO thread yields only to its own priority), until
/// the kernel's real-time throttling took the core from the worker.
const LOOP_WAIT: std::time::Duration = std::time::Duration::from_micros(50);

#[cold]
fn wait_for_loop() {
    std::thread::sleep(LOOP_WAIT);
}

/// Flow-table slots a worker sweeps at a time, at most once per
/// [`SWEEP_EVERY_NS`]: about a million slots a second (a default table's two
/// million in two seconds) for a microsecond or two each millisecond, so the
/// sweep never adds more than that to a frame's wait.
const SWEEP_SLICE: usize = 1024;
const SWEEP_EVERY_NS: u64 = 1_000_000;

/// The worker's walk over its own table, a slice per round: records of an
/// earlier epoch are brought up to date (or dropped), records idle beyond the
/// plane's age limit are removed whatever the loop said. Table-wide work is
/// thus never done at once on the packet path.
#[derive(Default)]
struct Sweeper {
    cursor: usize,
    /// Slots left before every record has been looked at since the epoch last
    /// moved.
    pass_left: usize,
}

impl Sweeper {
    fn step<R: PlaneRecord>(
        &mut self,
        slots: usize,
        table: &mut Table<R>,
        plane: &mut Dataplane,
        events: &mut EventSink,
        stats: &WorkerStats,
        now_ns: u64,
    ) {
        let age_limit = plane.age_limit_ns;
        self.cursor = table.sweep(self.cursor, slots, |r| {
            if !r.is_current(plane) {
                return false;
            }
            if now_ns.saturating_sub(r.last_seen_ns()) <= age_limit {
                return true;
            }
            plane.connection_closed(r.backend());
            events.emit(
                Event::Removed {
                    key: *r.key(),
                    at_ns: now_ns,
                },
                stats,
            );
            stats.aged_out.add(1);
            false
        });
        self.pass_left = self.pass_left.saturating_sub(slots);
    }

    /// The epoch is about to move: records must not lag two epochs behind (an
    /// 8-bit epoch must not wrap onto a live one), so a pass still running is
    /// finished now. Rare: two changes within one pass.
    fn finish_pass<R: PlaneRecord>(
        &mut self,
        table: &mut Table<R>,
        plane: &mut Dataplane,
        events: &mut EventSink,
        stats: &WorkerStats,
        now_ns: u64,
    ) {
        if self.pass_left > 0 {
            self.step(self.pass_left, table, plane, events, stats, now_ns);
        }
    }

    fn begin_pass<R: Record>(&mut self, table: &Table<R>) {
        self.pass_left = table.slots();
    }
}

/// Sends a copy of `frame` (a translated ICMP error, from the loop) on the back
/// TX ring, in a frame taken from the free list. Rare: one produce and kick per
/// frame is fine. No free frame or no room on the ring costs the frame, counted.
fn transmit_copy(
    umem: &Umem,
    tx: &mut TxQueue,
    tx_budget: usize,
    free: &mut Vec<FrameDesc>,
    frame: &[u8],
    stats: &WorkerStats,
) {
    let Some(mut desc) = free.pop() else {
        stats.dropped[WorkerDrop::IcmpTxFailed as usize].add(1);
        return;
    };
    // SAFETY: the descriptor came off the free list, so user space owns the
    // frame and nothing else refers to it until it is handed to a ring below.
    let mut data = unsafe { umem.data_mut(&mut desc) };
    let mut cursor = data.cursor();
    cursor.set_pos(0);
    if std::io::Write::write_all(&mut cursor, frame).is_err() {
        // Longer than a UMEM frame: the loop never builds one.
        free.push(desc);
        stats.dropped[WorkerDrop::IcmpTxFailed as usize].add(1);
        return;
    }
    // SAFETY: the frame is owned by user space and belongs to this UMEM, the
    // one the ring was created with; on success it leaves for the kernel.
    if unsafe { tx.produce_one(&desc) } == 0 {
        free.push(desc);
        stats.dropped[WorkerDrop::IcmpTxFailed as usize].add(1);
        return;
    }
    stats.icmp_to_daemon.add(1);
    stats.tx_back.add(1);
    kick(tx, 1, tx_budget, stats);
}

/// How often a worker asks the kernel for its sockets' drop counters (a syscall
/// per socket, so not per batch).
const SOCKET_STATS_INTERVAL_NS: u64 = 1_000_000_000;

fn read_socket_stats<'a>(sockets: impl Iterator<Item = &'a xsk::Rings>, stats: &WorkerStats) {
    let mut sum = [0u64; 4];
    for (i, rings) in sockets.enumerate() {
        // An error (none is expected on a bound socket) keeps the last values.
        let Ok(k) = rings.kernel_drops() else {
            return;
        };
        for (total, v) in sum.iter_mut().zip(k) {
            *total += v;
        }
        if let Some(s) = stats.sockets.get(i) {
            s.kernel_drops.set(k[0] + k[2]);
        }
    }
    stats.xsk_rx_ring_full.set(sum[0]);
    stats.xsk_fill_ring_empty.set(sum[1]);
    stats.xsk_rx_dropped.set(sum[2]);
    stats.xsk_invalid_descs.set(sum[3]);
}

/// Sleeps until a socket has frames, the loop sends a command, the worker is
/// told to stop or `timeout_ms` passes; not at all if a command waits already.
/// The commands' eventfd is the last of `pollfds`. Returns whether it slept.
fn sleep(
    pollfds: &mut [libc::pollfd],
    timeout_ms: i32,
    commands: &mut Inbox<Dataplane>,
    stats: &WorkerStats,
) -> bool {
    debug_assert_eq!(pollfds.last().map(|p| p.fd), Some(commands.fd()));
    if !commands.ready_to_sleep() {
        return false;
    }
    stats.sleeps.add(1);
    poll_readable(pollfds, timeout_ms);
    let woken = pollfds
        .last()
        .is_some_and(|fd| fd.revents & libc::POLLIN != 0);
    if woken {
        stats.command_wakes.add(1);
    }
    commands.awake(woken);
    true
}

/// Kicks every copy-mode TX ring that still holds frames the kernel did not
/// take, as xdpsock does while it has frames outstanding: a device that pushed
/// back (its queue stopped) made the kernel leave them on the ring for user
/// space to send again, and only a kick (or a poll() of the socket) sends them.
/// A kick that sends nothing backs that ring off, 1 ms doubling to
/// [`POLL_TIMEOUT_MS`], so a device that stays stopped (down, its queue gone)
/// costs a failing syscall now and then, not one per round. Returns when the
/// earliest ring that still waits is due again (ns), if any does.
fn resend<'a>(
    sockets: impl Iterator<Item = &'a mut crate::xsk::Rings>,
    now_ns: u64,
    stats: &WorkerStats,
) -> Option<u64> {
    let mut due = u64::MAX;
    // In zero-copy mode the driver takes frames as its own ring frees up.
    for rings in sockets.filter(|r| !r.zerocopy) {
        let before = rings.tx_waiting();
        if before == 0 {
            rings.tx_retry = TxRetry::default();
            continue;
        }
        if now_ns >= rings.tx_retry.at_ns {
            let mut left = before;
            for _ in 0..RESEND_KICKS {
                stats.tx_resent_kicks.add(1);
                let _ = rings.tx.wakeup();
                let now = rings.tx_waiting();
                let moved = now < left;
                left = now;
                if !moved || left == 0 {
                    break;
                }
            }
            rings.tx_retry = next_retry(rings.tx_retry, before, left, now_ns);
            if left == 0 {
                continue;
            }
        }
        due = due.min(rings.tx_retry.at_ns);
    }
    (due != u64::MAX).then_some(due)
}

/// A TX ring's backoff after this round's kicks took it from `before` frames
/// waiting to `left`: none left, no backoff; some sent, again next round;
/// none sent, a wait twice the last (1 ms to [`POLL_TIMEOUT_MS`]).
fn next_retry(last: TxRetry, before: u32, left: u32, now_ns: u64) -> TxRetry {
    if left == 0 {
        return TxRetry::default();
    }
    let backoff_ms = if left < before {
        0
    } else {
        (last.backoff_ms * 2).clamp(TX_RETRY_MS, POLL_TIMEOUT_MS as u64)
    };
    TxRetry {
        at_ns: now_ns + backoff_ms * 1_000_000,
        backoff_ms,
    }
}

/// Completed transmissions come back as free frames; free frames go to the fill
/// ring so the kernel can receive into them.
fn recycle(rings: &mut crate::xsk::Rings, b: &mut Batches, stats: &WorkerStats) {
    loop {
        // SAFETY: the descriptors belong to this worker's UMEM, the only one these
        // rings were created with.
        let done = unsafe { rings.comp.consume(&mut b.rx) };
        b.free.extend_from_slice(&b.rx[..done]);
        if done < b.rx.len() {
            break;
        }
    }
    rings.refill(&mut b.free);
    if rings.fill.needs_wakeup() {
        stats.wakeups.add(1);
        // A zero-timeout poll only nudges the driver; errors mean "try later".
        let _ = rings.fill.wakeup(rings.rx.fd_mut(), 0);
    }
}

/// Kicks that send `n` frames when one kick sends at most `budget`: one in
/// zero-copy mode (the driver's NAPI drains the whole ring), one per budget in
/// copy mode (the kernel's generic transmit stops at its budget).
fn kicks_for(n: usize, budget: usize) -> usize {
    n.div_ceil(budget.max(1)).max(1)
}

/// Asks the kernel to send `n` newly queued frames, if the ring wants a wake-up.
fn kick(tx: &mut TxQueue, n: usize, budget: usize, stats: &WorkerStats) {
    if !tx.needs_wakeup() {
        return;
    }
    for _ in 0..kicks_for(n, budget) {
        stats.wakeups.add(1);
        // EAGAIN/ENOBUFS/EBUSY mean the kernel is busy sending; xsk-rs folds
        // them into Ok, anything else would show as missing completions.
        let _ = tx.wakeup();
    }
}

/// Receives one batch on `rings.rx`, runs `handle` over each frame in place and
/// transmits the ones it accepts on `rings.tx`; `before_send` runs once the
/// batch is handled and before any of it is handed to the ring. Returns the
/// frames received and sent, and adds to `busy_ns` the time from taking the
/// batch to handing it to the TX ring: the dispatcher's own per-packet cost,
/// without the kernel's send in the kick.
#[allow(clippy::too_many_arguments)]
fn pump<H: FrameHandler>(
    rings: &mut Rings<'_>,
    b: &mut Batches,
    stats: &WorkerStats,
    busy_ns: &mut u64,
    bare: bool,
    handler: &mut H,
    before_send: impl FnOnce(&mut H),
) -> (usize, usize) {
    // SAFETY: the descriptors belong to this worker's UMEM.
    let received = unsafe { rings.rx.consume(&mut b.rx) };
    if received == 0 {
        return (0, 0);
    }
    let start = Instant::now();
    b.tx.clear();
    let umem = rings.umem;
    pipelined(
        &mut b.rx[..received],
        handler,
        |desc| {
            if !bare {
                // SAFETY: the frame was consumed from the RX ring, so the
                // kernel is done with it; this view ends with the statement,
                // long before the frame's mutable view in the last closure.
                crate::prefetch::prefetch_start(unsafe { umem.data(desc) }.contents());
            }
        },
        |h, desc| {
            if bare {
                return Default::default();
            }
            // SAFETY: the frame was consumed from the RX ring, so the kernel is
            // done with it; the only mutable view of a frame lives inside the
            // closure below, for the frame being handled, never this one.
            h.prefetch(unsafe { umem.data(desc) }.contents())
        },
        |h, desc, hint| {
            // SAFETY: the frame was just consumed from the RX ring, so the kernel
            // is done with it, and no other reference to it exists until it is
            // handed to a ring again below.
            let mut data = unsafe { umem.data_mut(desc) };
            if bare || h.handle(data.contents_mut(), hint) {
                b.tx.push(*desc);
            } else {
                b.free.push(*desc);
            }
        },
    );
    // reply_mode "tracked": the batch's new connections reach the kernel's map
    // before their SYNs leave, so no SYN-ACK can come back ahead of its key.
    before_send(handler);
    if b.tx.is_empty() {
        *busy_ns += start.elapsed().as_nanos() as u64;
        return (received, 0);
    }
    // SAFETY (both produce calls): the frames are owned by user space and belong
    // to this UMEM; a produce takes all of them or none (libxdp reserves all or
    // none), and on success they leave b.tx for the kernel.
    let mut sent = unsafe { rings.tx.produce(&b.tx) };
    *busy_ns += start.elapsed().as_nanos() as u64;
    if sent == 0 {
        // The kernel has not taken earlier batches yet: push it, then retry once.
        kick(rings.tx, b.tx.len(), rings.tx_budget, stats);
        sent = unsafe { rings.tx.produce(&b.tx) };
    }
    if sent == 0 {
        stats.dropped[WorkerDrop::TxRingFull as usize].add(b.tx.len() as u64);
        b.free.extend_from_slice(&b.tx);
    } else {
        kick(rings.tx, sent, rings.tx_budget, stats);
    }
    (received, sent)
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    /// Every waiter passes once the opener is dropped, even by a thread
    /// that panicked, and not before; a late waiter passes at once.
    #[test]
    fn a_gate_opens_for_every_waiter_when_its_opener_is_dropped() {
        let (gate, opener) = Gate::new();
        let passed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let (gate, passed) = (gate.clone(), passed.clone());
                std::thread::spawn(move || {
                    gate.wait();
                    passed.fetch_add(1, Relaxed);
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(passed.load(Relaxed), 0, "closed until the opener goes");
        let opening = std::thread::spawn(move || {
            let _opener = opener;
            panic!("the settling thread fails");
        });
        assert!(opening.join().is_err());
        for w in waiters {
            w.join().expect("a waiter");
        }
        assert_eq!(passed.load(Relaxed), 3);
        gate.wait();
    }

    /// [`super::apply`] for the IPv4 table alone (an empty IPv6 one beside it).
    fn apply(
        command: Command,
        table: &mut FlowTable,
        plane: &mut Dataplane,
        sweeper: &mut Sweeper,
        events: &mut EventSink,
        stats: &WorkerStats,
        now_ns: u64,
    ) {
        let mut table6 = FlowTable6::with_capacity(0);
        let mut sweeper6 = Sweeper::default();
        super::apply(
            command,
            (table, &mut table6),
            plane,
            (sweeper, &mut sweeper6),
            events,
            stats,
            now_ns,
        );
    }
    use crate::{
        dataplane::{forward, testing},
        flow::FlowKey,
    };

    #[test]
    fn a_tx_ring_that_sends_nothing_backs_off_and_one_that_sends_goes_on() {
        const MS: u64 = 1_000_000;
        let start = TxRetry::default();
        // Nothing sent: 1, 2, 4 ... ms, up to the poll timeout.
        let mut r = next_retry(start, 10, 10, 0);
        assert_eq!(
            r,
            TxRetry {
                at_ns: MS,
                backoff_ms: 1
            }
        );
        let mut waits = vec![r.backoff_ms];
        for _ in 0..9 {
            r = next_retry(r, 10, 10, r.at_ns);
            waits.push(r.backoff_ms);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
        // Some sent: again at once, the backoff forgotten.
        assert_eq!(
            next_retry(r, 10, 4, 7 * MS),
            TxRetry {
                at_ns: 7 * MS,
                backoff_ms: 0
            }
        );
        // All sent: nothing to come back for.
        assert_eq!(next_retry(r, 10, 0, 7 * MS), TxRetry::default());
    }

    const VIP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80);
    const CLIENT: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000);

    fn segment(syn: bool) -> Vec<u8> {
        testing::segment(CLIENT, VIP, if syn { 0x02 } else { 0x11 })
    }

    /// The loop removes a closed connection's record when its linger ends; if the
    /// client has reused the port meanwhile, the worker already restarted the
    /// record for the new connection, whose `Opened` the loop may not have seen
    /// yet. That record must survive the old connection's removal.
    #[test]
    fn a_remove_spares_a_record_restarted_by_a_reused_port() {
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let key = FlowKey::new(CLIENT, VIP, 6);
        let mut send = |syn: bool, now_ns: u64, table: &mut FlowTable, plane: &mut Dataplane| {
            let mut f = segment(syn);
            assert!(forward(
                &mut f,
                table,
                plane,
                &mut events,
                &stats,
                now_ns,
                None
            ));
        };
        let (mut loop_side, _rx2) = testing::events();
        let remove = |opened_ns: u64| Command::Flow(FlowCommand::Remove { key, opened_ns });

        // The first connection opens at 10 (the loop hears it at 20) and closes.
        send(true, 10, &mut table, &mut plane);
        send(false, 15, &mut table, &mut plane);
        // The port is reused at 30: the record restarts for the new connection.
        send(true, 30, &mut table, &mut plane);
        let mut sweeper = Sweeper::default();
        apply(
            remove(20),
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut loop_side,
            &stats,
            40,
        );
        assert_eq!(table.get(&key).map(|r| r.created_ns), Some(30), "kept");
        // The new connection's own removal (the loop heard it open at 35) works.
        apply(
            remove(35),
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut loop_side,
            &stats,
            40,
        );
        assert!(table.get(&key).is_none());
    }

    /// Zero-copy: the driver drains the whole TX ring on one kick. Copy mode:
    /// the kernel's generic transmit sends at most its budget per kick.
    #[test]
    fn one_kick_per_batch_in_zero_copy_mode_one_per_budget_in_copy_mode() {
        assert_eq!(kicks_for(64, usize::MAX), 1);
        assert_eq!(kicks_for(256, usize::MAX), 1);
        assert_eq!(kicks_for(1, usize::MAX), 1);
        assert_eq!(kicks_for(64, crate::xsk::COPY_MODE_TX_BUDGET), 2);
        assert_eq!(kicks_for(33, crate::xsk::COPY_MODE_TX_BUDGET), 2);
        assert_eq!(kicks_for(32, crate::xsk::COPY_MODE_TX_BUDGET), 1);
        assert_eq!(kicks_for(64, 64), 1, "a raised copy-mode budget");
    }

    fn syn(client: SocketAddrV4, vip: SocketAddrV4) -> Vec<u8> {
        testing::segment(client, vip, 0x02)
    }

    /// The loop's orders to remove a record may reach it before the sweep
    /// brought it up to a reload's plane, whose ids may differ: the connection
    /// is counted off its daemon by address, and not at all when its daemon is
    /// gone. Before, the record's old id was used: under least connections the
    /// wrong daemon lost a connection and the right one kept it for good.
    #[test]
    fn a_removal_after_a_reload_that_renumbers_the_daemons_counts_off_the_right_one() {
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let b = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080);
        let mut plane = testing::plane(VIP, &[a, b]);
        let mut table = FlowTable::with_capacity(8);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        let client = |port| SocketAddrV4::new(*CLIENT.ip(), port);
        let mut open = |port, table: &mut FlowTable, plane: &mut Dataplane, now_ns| {
            assert!(forward(
                &mut syn(client(port), VIP),
                table,
                plane,
                &mut events,
                &stats,
                now_ns,
                None
            ));
            FlowKey::new(client(port), VIP, 6)
        };
        let active = |plane: &Dataplane, daemon: SocketAddrV4| {
            (plane.daemons())
                .find(|d| d.0 == std::net::SocketAddr::V4(daemon))
                .map(|d| d.3)
        };
        // Round robin: the first to a (id 0), the second to b (id 1).
        let to_a = open(40000, &mut table, &mut plane, 1);
        let to_b = open(40001, &mut table, &mut plane, 1);
        assert_eq!(table.get(&to_b).map(|r| r.daemon), Some(b));
        assert_eq!((active(&plane, a), active(&plane, b)), (Some(1), Some(1)));

        // The reload leaves b alone, as id 0.
        let (mut loop_side, _rx2) = testing::events();
        let mut sweeper = Sweeper::default();
        apply(
            Command::ReplacePlane(Box::new(testing::plane(VIP, &[b]))),
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut loop_side,
            &stats,
            2,
        );
        assert_eq!((active(&plane, a), active(&plane, b)), (None, Some(1)));
        let _after = open(40002, &mut table, &mut plane, 3);
        assert_eq!(active(&plane, b), Some(2));

        // Before the sweep reaches them: a's record (its daemon gone) leaves
        // b's count alone, and b's own record counts off b.
        let remove = |key| Command::Flow(FlowCommand::Remove { key, opened_ns: 10 });
        apply(
            remove(to_a),
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut loop_side,
            &stats,
            4,
        );
        assert_eq!(active(&plane, b), Some(2), "a's record counted off b");
        apply(
            remove(to_b),
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut loop_side,
            &stats,
            5,
        );
        assert_eq!(active(&plane, b), Some(1));
        assert_eq!(table.len(), 1);
    }

    /// A reload hands the worker a dataplane built from the new configuration;
    /// afterwards the worker must be in the state a fresh start with that
    /// configuration would reach with the same connections open: records of
    /// remaining daemons re-pointed at their new ids and counted, the others
    /// gone, daemon states kept, and nothing of the old services left.
    #[test]
    fn a_reload_leaves_the_state_of_a_fresh_start_with_the_new_config() {
        use crate::{
            balance::{BackendSpec, BackendState, PolicyKind},
            config::ServiceConfig,
            ids::BackendId,
            neigh::NextHop,
        };
        let addr = |s: &str| s.parse::<SocketAddrV4>().unwrap();
        let service = |vip: &str, policy, daemons: &[&str]| ServiceConfig {
            address: addr(vip),
            protocol: crate::config::Protocol::Tcp,
            policy,
            backends: daemons
                .iter()
                .map(|d| BackendSpec {
                    addr: addr(d),
                    weight: 1,
                })
                .collect(),
            health: Default::default(),
        };
        let (a, b, c, d, e) = (
            "198.19.0.11:8080",
            "198.19.0.12:8080",
            "198.19.0.13:8080",
            "198.19.0.14:8080",
            "198.19.0.15:8080",
        );
        let old = [
            service("198.18.0.100:80", PolicyKind::RoundRobin, &[a, b, c]),
            service("198.18.0.101:80", PolicyKind::RoundRobin, &[d]),
        ];
        // 101 goes, 102 comes, and 100 loses b, has its daemons reordered and
        // changes policy.
        let new = [
            service("198.18.0.102:80", PolicyKind::Maglev, &[e]),
            service("198.18.0.100:80", PolicyKind::LeastConnections, &[c, a]),
        ];
        let plane = |services: &[ServiceConfig]| {
            let n = services.iter().map(|s| s.backends.len()).sum::<usize>();
            let hops: Arc<[NextHop]> = (0..n).map(|_| NextHop::default()).collect();
            hops.iter().for_each(|h| h.set(Some([6; 6])));
            Dataplane::build(WorkerId(0), services, &[], &[], hops, [8; 6]).unwrap()
        };

        let mut running = plane(&old);
        let mut table = FlowTable::with_capacity(64);
        let stats = WorkerStats::default();
        let (mut events, _rx) = testing::events();
        for i in 0..12u16 {
            let client = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 40000 + i);
            let vip = if i % 4 == 3 {
                old[1].address
            } else {
                old[0].address
            };
            assert!(forward(
                &mut syn(client, vip),
                &mut table,
                &mut running,
                &mut events,
                &stats,
                1,
                None
            ));
        }
        running.set_backend_state(BackendId(2), BackendState::Draining); // c
        let count = |table: &FlowTable, daemon: &str| {
            table.iter().filter(|r| r.daemon == addr(daemon)).count()
        };
        let (kept_a, kept_c) = (count(&table, a), count(&table, c));
        assert!(kept_a > 0 && kept_c > 0 && count(&table, b) > 0 && count(&table, d) > 0);

        let mut sweeper = Sweeper::default();
        apply(
            Command::ReplacePlane(Box::new(plane(&new))),
            &mut table,
            &mut running,
            &mut sweeper,
            &mut events,
            &stats,
            2,
        );
        // The records are brought up to date a slice at a time: none was touched
        // by the reload itself.
        assert_eq!(table.len(), 12);
        while sweeper.pass_left > 0 {
            sweeper.step(5, &mut table, &mut running, &mut events, &stats, 3);
        }

        // A fresh start with `new`, brought to the same connections and states.
        let mut fresh = plane(&new);
        let ids = |p: &Dataplane, daemon: &str| {
            (0..3u16)
                .map(BackendId)
                .find(|&id| {
                    p.backend_owner.get(id.index()).is_some_and(|o| {
                        p.services[o.service.index()].pool.addr(o.local) == addr(daemon)
                    })
                })
                .unwrap()
        };
        for r in table.iter() {
            assert_eq!(
                r.backend,
                ids(&fresh, &r.daemon.to_string()),
                "{r:?} re-pointed"
            );
        }
        for daemon in [a, c] {
            let id = ids(&fresh, daemon);
            for _ in 0..count(&table, daemon) {
                let o = fresh.backend_owner[id.index()];
                fresh.services[o.service.index()]
                    .pool
                    .connection_opened(o.local);
            }
        }
        fresh.set_backend_state(ids(&fresh, c), BackendState::Draining);

        assert_eq!((count(&table, a), count(&table, c)), (kept_a, kept_c));
        assert_eq!(table.len(), kept_a + kept_c, "b's and d's records are gone");
        assert_eq!(running.services, fresh.services);
        assert_eq!(running.service_by_vip, fresh.service_by_vip);
        assert_eq!(running.service_by_daemon, fresh.service_by_daemon);
        assert_eq!(running.backend_owner, fresh.backend_owner);
        let hops = |p: &Dataplane| p.next_hops.iter().map(NextHop::get).collect::<Vec<_>>();
        assert_eq!(hops(&running), hops(&fresh));
    }

    #[test]
    fn a_daemon_reset_ends_the_connection_only_inside_its_window_and_after_its_start() {
        use crate::dataplane::testing::segment_at;
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let mut table = FlowTable::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut events, mut rx) = testing::events();
        let key = FlowKey::new(CLIENT, VIP, 6);
        for (flags, seq, ack) in [(0x02, 100, 0), (0x10, 101, 5000)] {
            let mut f = segment_at(CLIENT, VIP, flags, seq, ack);
            assert!(forward(
                &mut f,
                &mut table,
                &mut plane,
                &mut events,
                &stats,
                10,
                None
            ));
        }
        events.flush();
        rx.try_iter().for_each(drop);
        let mut check = |table: &mut FlowTable, seq: u32, at_ns: u64| {
            let command = Command::Flow(FlowCommand::CheckRst { key, seq, at_ns });
            let sweeper = &mut Sweeper::default();
            apply(command, table, &mut plane, sweeper, &mut events, &stats, 20);
            rx.try_iter().collect::<Vec<_>>()
        };
        assert_eq!(check(&mut table, 5000u32.wrapping_add(1 << 31), 15), []);
        // In the window, but seen before this connection started: an older one's.
        assert_eq!(check(&mut table, 5000 + 1000, 5), []);
        assert_eq!(stats.rst_ignored.get(), 2);
        assert!(!table.get(&key).unwrap().state.contains(TcpState::RST));
        // Ahead of the client's last acknowledgment by what is in flight.
        let reset = Event::Reset { key, at_ns: 15 };
        assert_eq!(check(&mut table, 5000 + 1000, 15), [reset]);
        assert!(table.get(&key).unwrap().state.contains(TcpState::RST));
    }

    #[test]
    fn a_reset_daemon_loses_its_records_lazily_and_idle_records_age_out() {
        use crate::{dataplane::testing::segment_at, ids::BackendId};
        let (a, b) = (
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080),
            SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 12), 8080),
        );
        let mut plane = testing::plane(VIP, &[a, b]);
        plane.age_limit_ns = 1000;
        let mut table = FlowTable::with_capacity(16);
        let stats = WorkerStats::default();
        let (mut events, mut rx) = testing::events();
        let client = |i: u16| SocketAddrV4::new(*CLIENT.ip(), 40000 + i);
        // Round robin: clients 0 and 2 go to a, 1 and 3 to b.
        for i in 0..4 {
            let mut syn = segment_at(client(i), VIP, 0x02, 1, 0);
            assert!(forward(
                &mut syn,
                &mut table,
                &mut plane,
                &mut events,
                &stats,
                10,
                None
            ));
        }
        events.flush();
        rx.try_iter().for_each(drop);
        let mut sweeper = Sweeper::default();
        let reset_a = Command::RemoveBackendFlows {
            backend: BackendId(0),
        };
        apply(
            reset_a,
            &mut table,
            &mut plane,
            &mut sweeper,
            &mut events,
            &stats,
            20,
        );
        assert_eq!(table.len(), 4, "nothing walked the table");

        // A segment of one of a's connections finds no record any more.
        let mut ack = segment_at(client(0), VIP, 0x10, 2, 1);
        assert!(!forward(
            &mut ack,
            &mut table,
            &mut plane,
            &mut events,
            &stats,
            30,
            None
        ));
        assert_eq!(stats.dropped[WorkerDrop::NoFlow as usize].get(), 1);
        assert_eq!(table.len(), 3);
        // The sweep takes the other; b's stay (idle 30 ns of 1000).
        while sweeper.pass_left > 0 {
            sweeper.step(3, &mut table, &mut plane, &mut events, &stats, 40);
        }
        let daemons: Vec<_> = table.iter().map(|r| r.daemon).collect();
        assert_eq!(daemons, [b, b]);
        events.flush();
        assert_eq!(rx.try_iter().count(), 0, "the loop already forgot a's");

        // Long idle: the sweep removes them on its own, and tells the loop.
        sweeper.step(
            table.slots(),
            &mut table,
            &mut plane,
            &mut events,
            &stats,
            2000,
        );
        assert!(table.is_empty());
        assert_eq!(stats.aged_out.get(), 2);
        events.flush();
        let removed = rx
            .try_iter()
            .filter(|e| matches!(e, Event::Removed { at_ns: 2000, .. }))
            .count();
        assert_eq!(removed, 2);
    }

    /// A reload bringing the first IPv6 service to a worker started without
    /// any: its plane is applied as it comes and the IPv6 table is not grown
    /// in the worker (it has no room: an IPv6 SYN is refused and counted);
    /// the table the loop made arrives as `Table6` and is swapped in, with
    /// the old table's records; a table no larger than the worker's is
    /// refused.
    #[test]
    fn a_reload_does_not_grow_the_ipv6_table_and_table6_swaps_one_in() {
        use std::net::{Ipv6Addr, SocketAddrV6};

        use crate::{balance::PolicyKind, dataplane::forward6, flow::FlowKey6};
        let vip6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100), 80, 0, 0);
        let daemon6 = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11), 8080, 0, 0);
        let client =
            |port: u16| SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2), port, 0, 0);
        let syn = |from: SocketAddrV6| testing::syn6(from, vip6, 1000);
        let daemon = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 11), 8080);
        let mut plane = testing::plane(VIP, &[daemon]);
        let dual = testing::plane_of(
            &[testing::service(VIP, &[daemon], PolicyKind::RoundRobin)],
            &[testing::service(vip6, &[daemon6], PolicyKind::RoundRobin)],
        );
        let mut table = FlowTable::with_capacity(4);
        let mut table6 = FlowTable6::with_capacity(0);
        let stats = WorkerStats::default();
        let (mut events, _main) = testing::link();
        let (mut sweeper, mut sweeper6) = (Sweeper::default(), Sweeper::default());
        let mut obey = |command: Command, table6: &mut FlowTable6, plane: &mut Dataplane| {
            super::obey(
                command,
                (&mut table, table6),
                None,
                plane,
                (&mut sweeper, &mut sweeper6),
                &mut events,
                &stats,
                20,
            );
        };
        obey(
            Command::ReplacePlane(Box::new(dual)),
            &mut table6,
            &mut plane,
        );
        assert_eq!(plane.services6.len(), 1, "the reload applied");
        assert_eq!(table6.capacity(), 0, "not grown in the worker");
        let (mut events, _main) = testing::link();
        let mut send = |from, table6: &mut FlowTable6, plane: &mut Dataplane| {
            forward6(&mut syn(from), table6, plane, &mut events, &stats, 30, None)
        };
        assert!(!send(client(40000), &mut table6, &mut plane));
        assert_eq!(stats.dropped[WorkerDrop::TableFull as usize].get(), 1);

        let small = Box::new(FlowTable6::with_capacity(2));
        obey(Command::Table6(small), &mut table6, &mut plane);
        assert_eq!((table6.capacity(), stats.table6_capacity.get()), (2, 2));
        assert!(send(client(40000), &mut table6, &mut plane));
        let key = FlowKey6::new(client(40000), vip6, 6);
        let record = *table6.get(&key).expect("recorded");

        let grown = Box::new(FlowTable6::with_capacity(64));
        obey(Command::Table6(grown), &mut table6, &mut plane);
        assert_eq!((table6.capacity(), stats.table6_capacity.get()), (64, 64));
        assert_eq!(table6.len(), 1);
        assert_eq!(table6.get(&key), Some(&record), "moved as it was");
        for port in 40001..40004 {
            assert!(send(client(port), &mut table6, &mut plane));
        }
        assert_eq!(table6.len(), 4, "room beyond the old table's 2");

        let smaller = Box::new(FlowTable6::with_capacity(16));
        obey(Command::Table6(smaller), &mut table6, &mut plane);
        assert_eq!((table6.capacity(), table6.len()), (64, 4), "refused");
        assert_eq!(stats.table6_capacity.get(), 64);
    }

    /// The worker answers the loop's orders about IPv6 records as about IPv4
    /// ones, and its own sweep ages IPv6 records out.
    #[test]
    fn ipv6_records_answer_the_loops_orders_and_age_out_in_the_sweep() {
        use std::net::{Ipv6Addr, SocketAddrV6};

        use crate::{
            balance::PolicyKind,
            dataplane::forward6,
            flow::FlowKey6,
            protocol::{Event6, FlowCommand6},
        };
        let vip = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 0x100), 80, 0, 0);
        let client = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 1, 0, 0, 0, 2), 40000, 0, 0);
        let daemon = SocketAddrV6::new(Ipv6Addr::new(0x2001, 2, 0, 2, 0, 0, 0, 0x11), 8080, 0, 0);
        let mut plane = testing::plane_of(
            &[],
            &[testing::service(vip, &[daemon], PolicyKind::RoundRobin)],
        );
        plane.age_limit_ns = 1_000;
        let mut table = FlowTable::with_capacity(4);
        let mut table6 = FlowTable6::with_capacity(4);
        let stats = WorkerStats::default();
        let (mut events, main) = testing::link();
        let mut rx = main.events6;
        let syn = |seq: u32| testing::syn6(client, vip, seq);
        let key = FlowKey6::new(client, vip, 6);
        let mut order = |command: FlowCommand6,
                         table6: &mut FlowTable6,
                         plane: &mut Dataplane,
                         events: &mut EventSink| {
            super::apply(
                Command::Flow6(command),
                (&mut table, table6),
                plane,
                (&mut Sweeper::default(), &mut Sweeper::default()),
                events,
                &stats,
                50,
            );
        };
        assert!(forward6(
            &mut syn(1000),
            &mut table6,
            &mut plane,
            &mut events,
            &stats,
            10,
            None
        ));
        events.flush();
        assert!(matches!(
            rx.try_pop(),
            Some(Event6::Opened { at_ns: 10, .. })
        ));
        // Busy since: it stays and says so.
        let busy = FlowCommand6::RemoveIfIdle {
            key,
            idle_since_ns: 5,
        };
        order(busy, &mut table6, &mut plane, &mut events);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            [Event6::Active {
                key,
                last_seen_ns: 10
            }]
        );
        // A daemon's reset in the window (around the client's acknowledgment,
        // 0 before any) ends it; one from before it opened does not.
        let old = FlowCommand6::CheckRst {
            key,
            seq: 0,
            at_ns: 9,
        };
        order(old, &mut table6, &mut plane, &mut events);
        assert_eq!(stats.rst_ignored.get(), 1);
        let rst = FlowCommand6::CheckRst {
            key,
            seq: 0,
            at_ns: 20,
        };
        order(rst, &mut table6, &mut plane, &mut events);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            [Event6::Reset { key, at_ns: 20 }]
        );
        // Idle: removed, and the daemon's count with it.
        let idle = FlowCommand6::RemoveIfIdle {
            key,
            idle_since_ns: 20,
        };
        order(idle, &mut table6, &mut plane, &mut events);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            [Event6::Removed { key, at_ns: 50 }]
        );
        assert!(table6.is_empty());
        assert_eq!(plane.services6[0].pool.active(crate::ids::PoolIndex(0)), 0);
        // A new connection on the port: a Remove of the old one spares it.
        assert!(forward6(
            &mut syn(7000),
            &mut table6,
            &mut plane,
            &mut events,
            &stats,
            60,
            None
        ));
        let stale = FlowCommand6::Remove { key, opened_ns: 10 };
        order(stale, &mut table6, &mut plane, &mut events);
        assert_eq!(table6.len(), 1);
        // The sweep ages it out past the plane's age limit, whatever the loop said.
        rx.try_iter().for_each(drop);
        let mut sweeper6 = Sweeper::default();
        sweeper6.step(
            table6.slots(),
            &mut table6,
            &mut plane,
            &mut events,
            &stats,
            2_000,
        );
        events.flush();
        assert!(table6.is_empty());
        assert_eq!(stats.aged_out.get(), 1);
        assert_eq!(
            rx.try_iter().collect::<Vec<_>>(),
            [Event6::Removed { key, at_ns: 2_000 }]
        );
    }
}
