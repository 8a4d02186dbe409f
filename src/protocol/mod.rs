//! Everything that passes between a worker and the management loop, in one place:
//! what a worker reports ([`Event`], through a lock-free [`ring`] it publishes once
//! per batch), the rare frames it hands over for the loop to handle
//! ([`SlowFrame`], copies of ICMP errors, through a second, small ring), how it
//! wakes the loop ([`Wake`]), and what the loop orders a worker to do
//! ([`Command`], through a bounded channel the worker drains between batches,
//! and a [`Wake`] of the worker's own for a worker asleep in poll()).
//!
//! ```text
//! worker ──EventSink: Event ring + SlowFrame ring + Wake (eventfd)──▶ loop
//! worker ◀──────────── Inbox: Command channel + Wake (eventfd) ───── loop
//! ```
//!
//! While events keep coming, the loop does not have each worker batch wake it:
//! it looks again when an [`EVENT_WINDOW`] ends ([`EventPace`]), and a worker
//! wakes it only for a copied frame or once a look found nothing.
//!
//! Each family has its own event ring ([`Event`] is generic over the flow key:
//! `Event<FlowKey>` for IPv4, [`Event6`] for IPv6), so an IPv4 event keeps its
//! size and an IPv6 one (twice as large) costs only IPv6 connections; commands
//! share the one channel ([`Command::Flow`] and [`Command::Flow6`]).
//!
//! Both directions are bounded and lose no event: a full event ring makes the
//! worker keep its events and, before that could overflow too, stop taking new
//! frames until the loop has caught up; a full command channel keeps the loop's
//! command for its next round, in order. A full frame ring (the rare ICMP
//! errors the loop must translate) costs the frame, counted by the caller.
use std::{
    collections::VecDeque,
    sync::{
        atomic::{
            fence, AtomicBool,
            Ordering::{Relaxed, SeqCst},
        },
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use crate::{
    balance::BackendState,
    flow::{FlowKey, FlowKey6, FlowTable6, KeyFamily},
    ids::{BackendId, WorkerId},
    stats::WorkerStats,
    sys::EventFd,
};

pub mod ring;

/// Commands queued per worker; the loop keeps what does not fit for later.
pub const COMMAND_QUEUE: usize = 4_096;
/// Frames a worker may hand to the loop before it counts them as dropped. They
/// are rare (ICMP errors) and a slot is a whole [`SlowFrame`], so the ring is
/// small and separate from the events', which it would otherwise bloat.
pub const SLOW_QUEUE: usize = 64;
/// The most of a frame a [`SlowFrame`] holds: an Ethernet header and the
/// largest ICMP error RFC 1812 lets a router send.
pub const SLOW_FRAME_MAX: usize =
    crate::packet::ethernet::HEADER_LEN + crate::packet::icmp::MAX_ERROR_IP_LEN;

/// A copy of a frame the worker does not handle itself, for the loop.
#[derive(Clone, Copy)]
pub struct SlowFrame {
    len: u16,
    bytes: [u8; SLOW_FRAME_MAX],
}

impl SlowFrame {
    /// A copy of `frame`, if it fits.
    pub fn new(frame: &[u8]) -> Option<Self> {
        let mut copy = SlowFrame {
            len: u16::try_from(frame.len()).ok()?,
            bytes: [0; SLOW_FRAME_MAX],
        };
        copy.bytes.get_mut(..frame.len())?.copy_from_slice(frame);
        Some(copy)
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for SlowFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowFrame").field("len", &self.len).finish()
    }
}

/// What a worker reports. The worker that sees a daemon's FIN or RST may not be
/// the worker that owns the record (replies arrive on any queue); the loop routes
/// later commands by key to the owner it learned from `Opened`.
///
/// Every event carries `at_ns`, the worker's clock when it saw the segment, on
/// the one clock all threads share ([`crate::stats::now_ns`]). The loop ignores
/// an event from before the connection it would change was opened: a late event
/// about an old connection never touches a newer one that reused its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<K: KeyFamily = FlowKey> {
    /// A record was created (or restarted by a SYN reusing a closing connection's
    /// port) on `worker`, for a connection to `daemon`; `at_ns` is the record's
    /// creation time.
    Opened {
        worker: WorkerId,
        key: K,
        daemon: K::Daemon,
        at_ns: u64,
    },
    /// A record was created on `worker` for a mid-connection segment that met
    /// no record (a `maglev` service's recovery): short-lived, like a half-open
    /// one, until `Established` says the connection is real.
    Recovered {
        worker: WorkerId,
        key: K,
        daemon: K::Daemon,
        at_ns: u64,
    },
    /// The client's first ACK after its SYN, or, for a recovered record, the
    /// first client segment that moved past the one that recovered it.
    Established { key: K, at_ns: u64 },
    Fin {
        key: K,
        from_client: bool,
        at_ns: u64,
    },
    /// The owner accepted a reset from either side: its sequence number was in
    /// the window the record has seen. The connection is over.
    Reset { key: K, at_ns: u64 },
    /// A daemon's reset, seen on any worker and not judged yet: the owner has the
    /// sequence numbers to judge it with.
    DaemonRst { key: K, seq: u32, at_ns: u64 },
    /// Answer to a `RemoveIfIdle`: the record's last activity (ns); the worker did
    /// NOT remove it.
    Active { key: K, last_seen_ns: u64 },
    /// The worker removed the record (after `RemoveIfIdle` found it idle, or for
    /// any reason).
    Removed { key: K, at_ns: u64 },
}

/// What the loop's connection tracker orders about one record; sent to the worker
/// that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCommand<K: KeyFamily = FlowKey> {
    /// Remove the record of the connection the loop heard open at `opened_ns`.
    /// A record created after that belongs to a newer connection that reused the
    /// key (its `Opened` may still be on its way to the loop) and stays.
    Remove { key: K, opened_ns: u64 },
    /// Remove the record if it has seen no packet since `idle_since_ns`; otherwise
    /// answer [`Event::Active`].
    RemoveIfIdle { key: K, idle_since_ns: u64 },
    /// Judge a daemon's reset (an [`Event::DaemonRst`]) against the record: if its
    /// sequence number is in the window and the record is not newer than the
    /// reset, mark the record reset and answer [`Event::Reset`].
    CheckRst { key: K, seq: u32, at_ns: u64 },
}

/// An IPv6 connection's event.
pub type Event6 = Event<FlowKey6>;
/// An order about an IPv6 connection's record.
pub type FlowCommand6 = FlowCommand<FlowKey6>;

/// What the loop tells a worker. `Plane` is the worker's per-packet state (the
/// dataplane), which a reload replaces whole; it is a parameter so that this
/// module needs nothing above it.
pub enum Command<Plane> {
    Flow(FlowCommand),
    Flow6(FlowCommand6),
    /// A daemon is up, down or draining: affects new connections only.
    BackendState {
        backend: BackendId,
        state: BackendState,
    },
    /// Forget every record of a daemon (its health check failed and the policy
    /// is to reset its connections).
    RemoveBackendFlows {
        backend: BackendId,
    },
    /// A reloaded configuration: the worker keeps its records for daemons that
    /// remain.
    ReplacePlane(Box<Plane>),
    /// An IPv6 flow table of the configured capacity, allocated off the
    /// worker's loop (the first IPv6 service a reload brings to a process
    /// started without any): the worker moves its few records into it and
    /// puts it in place of its own, which has no room.
    Table6(Box<FlowTable6>),
    /// A whole frame for a daemon, rewritten by the loop (a translated ICMP
    /// error): copy it into a free UMEM frame and send it on the back socket.
    TransmitBack(Box<[u8]>),
}

/// Wakes a sleeper through its eventfd, at most once per sleep: the sleeper
/// arms the flag before it waits, the first sender to see it armed writes. The
/// management loop has one that every worker's events wake; each worker has
/// one that the loop's commands wake.
#[derive(Debug)]
pub struct Wake {
    pub eventfd: EventFd,
    armed: AtomicBool,
}

impl Wake {
    pub fn new(eventfd: EventFd) -> Self {
        Self {
            eventfd,
            armed: AtomicBool::new(false),
        }
    }

    /// Called by the sleeper before it looks at its queues a last time and goes
    /// to sleep. The fence orders this store before that look's loads, and
    /// pairs with the fence in `notify`: either the look sees what a sender
    /// published, or that sender's swap sees the flag armed. Nothing published
    /// is ever left without a wake-up.
    fn arm(&self) {
        self.armed.store(true, SeqCst);
        fence(SeqCst);
    }

    /// Called by the sleeper once awake, so that senders stop paying for the
    /// swap and the write; what they publish meanwhile it sees on its next look.
    /// Relaxed is enough: a sender that still sees the flag armed writes once
    /// too often, and the next `arm` (SeqCst and a fence) is what rules out a
    /// lost wake-up.
    fn disarm(&self) {
        self.armed.store(false, Relaxed);
    }

    /// Called by a sender after it published. The load first: while the
    /// sleeper is awake the flag is clear, and a load leaves the cache line
    /// shared where a swap would take it from the sleeper and every other sender.
    fn notify(&self) -> bool {
        fence(SeqCst);
        let woke = self.armed.load(SeqCst) && self.armed.swap(false, SeqCst);
        if woke {
            self.eventfd.notify();
        }
        woke
    }

    /// Wakes the sleeper whether it armed the wake-up or not: for what must
    /// not wait for the sleeper's next look of its own.
    fn force(&self) {
        self.armed.store(false, Relaxed);
        self.eventfd.notify();
    }
}

/// How long the workers' events gather, while they keep coming, before the
/// loop looks again. They keep books (timers, counts, metrics), which a
/// couple of milliseconds do not change.
pub const EVENT_WINDOW: Duration = Duration::from_millis(2);

/// When the loop looks at the workers' events. Woken by every worker batch,
/// it would cost the forwarding core an eventfd write and a wake-up of the
/// loop per batch: about 30 µs of a new connection's 250 on the bench's
/// dedicated core. So a look that finds events, but not so many that a ring
/// could fill meanwhile, opens a window instead: the wake-up stays disarmed
/// and the loop looks again when the window ends. A look that finds none
/// arms the wake-up and sleeps until a worker writes it, as before.
#[derive(Clone, Copy, Debug)]
pub struct EventPace {
    /// Events in one look from which the loop stays woken by each batch: half
    /// a worker's ring.
    dense: usize,
    window_open: bool,
    /// Events the loop took since the last look without one (a tick's or a
    /// request's drain): the next look counts them as its own, or a window
    /// would not open for them.
    taken_aside: usize,
}

impl EventPace {
    /// For event rings of `ring_slots` slots.
    pub fn new(ring_slots: usize) -> Self {
        Self {
            dense: (ring_slots / 2).max(1),
            window_open: false,
            taken_aside: 0,
        }
    }

    /// `taken` events were taken outside a look.
    pub fn took_aside(&mut self, taken: usize) {
        self.taken_aside += taken;
    }

    /// One round's look at the events: `take` takes them all and says how
    /// many it took. True when the caller must open a window, i.e. have
    /// [`window_ended`](Self::window_ended) called an [`EVENT_WINDOW`] from now.
    pub fn look(&mut self, wake: &Wake, mut take: impl FnMut() -> usize) -> bool {
        let mut taken = take() + std::mem::take(&mut self.taken_aside);
        if self.window_open {
            return false;
        }
        let sparse = |taken| taken > 0 && taken < self.dense;
        if !sparse(taken) {
            // To sleep until woken: arm, then a last look (see `Wake::arm`).
            wake.arm();
            taken = take();
        }
        self.window_open = sparse(taken);
        if self.window_open {
            wake.disarm();
        }
        self.window_open
    }

    pub fn window_ended(&mut self) {
        self.window_open = false;
    }
}

/// Events a worker keeps when its ring is full, until the loop has room again.
pub const EVENT_OVERFLOW: usize = 4096;
/// The most events one worker round can emit: two per frame (a segment can both
/// establish and end a connection) in each direction of a batch, and one per
/// command. [`EventSink::must_hold_back`] keeps this much of the overflow free.
pub const EVENTS_PER_ROUND: usize = 2 * 2 * crate::config::MAX_BATCH + COMMANDS_PER_ROUND;
/// Commands a worker applies per round, so a burst of them cannot stall packets.
pub const COMMANDS_PER_ROUND: usize = 64;

/// A worker's side of its bounded event queue (and frame queue) to the
/// management loop.
///
/// No event is lost: what does not fit the ring waits in a preallocated
/// overflow (oldest first, so the loop sees events in order) and goes out at the
/// next flush; before the overflow could fill, the worker stops taking new
/// frames and commands ([`must_hold_back`](Self::must_hold_back)) until the
/// loop has caught up. Frames then wait in the kernel's rings instead.
pub struct EventSink {
    queue: ring::Producer<Event>,
    overflow: VecDeque<Event>,
    queue6: ring::Producer<Event6>,
    overflow6: VecDeque<Event6>,
    frames: ring::Producer<SlowFrame>,
    wake: Arc<Wake>,
    sent: bool,
    /// A frame was pushed since the last flush.
    frame_sent: bool,
}

impl EventSink {
    /// Never blocks. The loop sees the event after the next
    /// [`flush`](Self::flush).
    #[inline]
    pub fn emit<K: Lane>(&mut self, event: Event<K>, stats: &WorkerStats) {
        let (queue, overflow, sent) = K::lane(self);
        if overflow.is_empty() && queue.try_push(event).is_ok() {
            *sent = true;
            return;
        }
        if overflow.len() < EVENT_OVERFLOW {
            stats.events_deferred.add(1);
            overflow.push_back(event);
        } else {
            // Only if a round emitted more than EVENTS_PER_ROUND: a bug.
            stats.events_dropped.add(1);
        }
    }

    /// Hands a copy of `frame` to the loop; false if it does not fit a
    /// [`SlowFrame`] or the ring is full (the caller counts it). The loop sees
    /// it after the next [`flush`](Self::flush).
    pub fn emit_frame(&mut self, frame: &[u8]) -> bool {
        let Some(copy) = SlowFrame::new(frame) else {
            return false;
        };
        let pushed = self.frames.try_push(copy).is_ok();
        self.sent |= pushed;
        self.frame_sent |= pushed;
        pushed
    }

    /// Once per batch: move what waits in the overflow into the ring as far as
    /// it has room, publish this batch's events and frames, and wake the loop
    /// for them if it sleeps, or for a frame in any case (an ICMP error waits
    /// for no [`EVENT_WINDOW`]); whether this woke it.
    #[inline]
    pub fn flush(&mut self) -> bool {
        self.sent |= drain_overflow(&mut self.queue, &mut self.overflow);
        if !self.overflow6.is_empty() {
            self.sent |= drain_overflow(&mut self.queue6, &mut self.overflow6);
        }
        if std::mem::take(&mut self.sent) {
            self.queue.publish();
            self.queue6.publish();
            self.frames.publish();
            if std::mem::take(&mut self.frame_sent) {
                self.wake.force();
                return true;
            }
            return self.wake.notify();
        }
        false
    }

    /// Events still wait in the overflow: the worker must not sleep, since
    /// nothing but its own next round sends them (an idle worker would hold
    /// them for a poll timeout per ring's worth).
    #[inline]
    pub fn has_backlog(&self) -> bool {
        !self.overflow.is_empty() || !self.overflow6.is_empty()
    }

    /// Whether the worker must take no new frame or command this round: the
    /// overflow could not hold all a round may emit.
    #[inline]
    pub fn must_hold_back(&self) -> bool {
        // Each family's overflow must hold the worst round (all of a round's
        // events may be of one family).
        self.overflow.len().max(self.overflow6.len()) > EVENT_OVERFLOW - EVENTS_PER_ROUND
    }
}

/// Moves what waits in `overflow` into `queue` as far as it has room; whether
/// anything moved.
#[inline]
fn drain_overflow<T: Copy>(queue: &mut ring::Producer<T>, overflow: &mut VecDeque<T>) -> bool {
    let mut moved = false;
    while let Some(&event) = overflow.front() {
        if queue.try_push(event).is_err() {
            break;
        }
        overflow.pop_front();
        moved = true;
    }
    moved
}

/// The event ring and overflow of a key's family in an [`EventSink`].
pub trait Lane: KeyFamily {
    #[allow(clippy::type_complexity)]
    fn lane(
        sink: &mut EventSink,
    ) -> (
        &mut ring::Producer<Event<Self>>,
        &mut VecDeque<Event<Self>>,
        &mut bool,
    );
}

impl Lane for FlowKey {
    #[inline(always)]
    fn lane(sink: &mut EventSink) -> (&mut ring::Producer<Event>, &mut VecDeque<Event>, &mut bool) {
        (&mut sink.queue, &mut sink.overflow, &mut sink.sent)
    }
}

impl Lane for FlowKey6 {
    #[inline(always)]
    fn lane(
        sink: &mut EventSink,
    ) -> (
        &mut ring::Producer<Event6>,
        &mut VecDeque<Event6>,
        &mut bool,
    ) {
        (&mut sink.queue6, &mut sink.overflow6, &mut sink.sent)
    }
}

/// A worker's end of the loop's commands. A worker that sleeps in poll()
/// watches [`fd`](Self::fd) too, so that a command (a record's removal after its
/// linger, a reload) is applied at once, not when the poll times out.
pub struct Inbox<Plane> {
    commands: Receiver<Command<Plane>>,
    /// A command the last look before a sleep found, applied first.
    held: Option<Command<Plane>>,
    wake: Arc<Wake>,
}

impl<Plane> Inbox<Plane> {
    /// Up to `n` commands, in the order the loop sent them; each leaves the
    /// inbox only when the iterator yields it.
    pub fn take_up_to(&mut self, n: usize) -> impl Iterator<Item = Command<Plane>> + '_ {
        std::iter::from_fn(|| self.held.take().or_else(|| self.commands.try_recv().ok())).take(n)
    }

    /// Arms the wake-up before a sleep; false (the wake-up disarmed again) if a
    /// command waits already, which the sleep would leave waiting.
    pub fn ready_to_sleep(&mut self) -> bool {
        self.wake.arm();
        if self.held.is_none() {
            self.held = self.commands.try_recv().ok();
        }
        if self.held.is_some() {
            self.wake.disarm();
            return false;
        }
        true
    }

    /// After the sleep: disarms the wake-up and, if the loop wrote it
    /// (`woken`: the fd was readable), reads the eventfd back to empty.
    pub fn awake(&self, woken: bool) {
        self.wake.disarm();
        if woken {
            self.wake.eventfd.clear();
        }
    }

    /// Readable once the loop has woken this worker.
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.wake.eventfd.raw()
    }
}

/// The loop's end of one worker's commands.
pub struct Outbox<Plane> {
    commands: SyncSender<Command<Plane>>,
    wake: Arc<Wake>,
    /// Commands pushed since the last [`wake`](Self::wake).
    unannounced: bool,
}

impl<Plane> Outbox<Plane> {
    /// Queues `command`; a full queue gives it back. A sleeping worker learns
    /// of it at the next [`wake`](Self::wake).
    pub fn push(&mut self, command: Command<Plane>) -> Result<(), TrySendError<Command<Plane>>> {
        self.commands.try_send(command)?;
        self.unannounced = true;
        Ok(())
    }

    /// Wakes the worker if it sleeps and commands were pushed since the last
    /// call. Once per batch of commands, not per command: a worker woken by the
    /// first would take it, sleep again, and be woken again by the next.
    pub fn wake(&mut self) {
        if std::mem::take(&mut self.unannounced) {
            self.wake.notify();
        }
    }
}

/// A worker's ends of its link with the loop.
pub struct WorkerEnd<Plane> {
    pub events: EventSink,
    pub commands: Inbox<Plane>,
}

/// The loop's ends of its link with one worker.
pub struct LoopEnd<Plane> {
    pub events: ring::Consumer<Event>,
    /// IPv6 connections' events, in a ring of the same number of slots.
    pub events6: ring::Consumer<Event6>,
    pub frames: ring::Consumer<SlowFrame>,
    pub commands: Outbox<Plane>,
}

/// A new link between the loop and one worker, with an event ring of `events`
/// slots (rounded up to a power of two); every worker's events wake the loop
/// through the one `wake`, and the loop's commands wake this worker through an
/// eventfd of its own.
pub fn link<Plane>(
    wake: Arc<Wake>,
    events: usize,
) -> std::io::Result<(WorkerEnd<Plane>, LoopEnd<Plane>)> {
    let (event_tx, event_rx) = ring::channel(events);
    let (event6_tx, event6_rx) = ring::channel(events);
    let (frame_tx, frame_rx) = ring::channel(SLOW_QUEUE);
    let (command_tx, command_rx) = sync_channel(COMMAND_QUEUE);
    let worker_wake = Arc::new(Wake::new(EventFd::new()?));
    Ok((
        WorkerEnd {
            events: EventSink {
                queue: event_tx,
                overflow: VecDeque::with_capacity(EVENT_OVERFLOW),
                queue6: event6_tx,
                overflow6: VecDeque::with_capacity(EVENT_OVERFLOW),
                frames: frame_tx,
                wake,
                sent: false,
                frame_sent: false,
            },
            commands: Inbox {
                commands: command_rx,
                held: None,
                wake: worker_wake.clone(),
            },
        },
        LoopEnd {
            events: event_rx,
            events6: event6_rx,
            frames: frame_rx,
            commands: Outbox {
                commands: command_tx,
                wake: worker_wake,
                unannounced: false,
            },
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddrV4;

    use super::*;
    use crate::{ids::WorkerId, stats::WorkerStats};

    fn opened(i: u16) -> Event {
        let addr = |port| SocketAddrV4::new(std::net::Ipv4Addr::new(198, 18, 0, 2), port);
        Event::Opened {
            worker: WorkerId(0),
            key: FlowKey::new(addr(i), addr(80), 6),
            daemon: addr(8080),
            at_ns: u64::from(i),
        }
    }

    #[test]
    fn events_that_do_not_fit_wait_and_arrive_in_order() {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (mut worker, mut main) = link::<()>(wake, 4).expect("eventfd");
        let stats = WorkerStats::default();
        for i in 0..10 {
            worker.events.emit(opened(i), &stats);
        }
        assert_eq!(stats.events_deferred.get(), 6);
        assert!(
            worker.events.has_backlog(),
            "a worker must not sleep on these"
        );
        let mut seen = Vec::new();
        while seen.len() < 10 {
            worker.events.flush();
            seen.extend(main.events.try_iter());
        }
        assert!(!worker.events.has_backlog());
        assert_eq!(seen, (0..10).map(opened).collect::<Vec<_>>());
        assert_eq!(stats.events_dropped.get(), 0);
    }

    #[test]
    fn a_worker_holds_back_before_its_overflow_could_fill() {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (mut worker, _main) = link::<()>(wake, 2).expect("eventfd");
        let stats = WorkerStats::default();
        // The ring's two slots, then the overflow up to where a round still fits.
        for i in 0..2 + EVENT_OVERFLOW - EVENTS_PER_ROUND {
            worker.events.emit(opened(i as u16), &stats);
        }
        assert!(!worker.events.must_hold_back());
        // The worst round.
        for i in 0..EVENTS_PER_ROUND {
            worker.events.emit(opened(i as u16), &stats);
        }
        assert_eq!(stats.events_dropped.get(), 0);
        assert!(worker.events.must_hold_back());
    }

    fn readable(fd: std::os::fd::RawFd) -> bool {
        let mut pollfd = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        crate::xsk::poll_readable(&mut pollfd, 0);
        pollfd[0].revents & libc::POLLIN != 0
    }

    fn backend_up(i: u16) -> Command<()> {
        Command::BackendState {
            backend: BackendId(i),
            state: BackendState::Up,
        }
    }

    fn backend_of(command: Command<()>) -> u16 {
        match command {
            Command::BackendState { backend, .. } => backend.0,
            _ => panic!("not the command sent"),
        }
    }

    #[test]
    fn a_sleeping_worker_is_woken_by_a_command_and_an_awake_one_is_not() {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (mut worker, mut main) = link::<()>(wake, 4).expect("eventfd");
        let (inbox, outbox) = (&mut worker.commands, &mut main.commands);
        let mut send = |i| {
            outbox.push(backend_up(i)).expect("room");
            outbox.wake();
        };
        // Awake: a command costs no write.
        send(1);
        assert!(!readable(inbox.fd()));
        // The last look before a sleep finds it; it comes first, in order.
        assert!(!inbox.ready_to_sleep(), "a command waits");
        send(2);
        assert!(!readable(inbox.fd()), "the worker did not sleep");
        let taken: Vec<u16> = inbox.take_up_to(8).map(backend_of).collect();
        assert_eq!(taken, [1, 2]);
        // Asleep: the next command wakes it, once.
        assert!(inbox.ready_to_sleep());
        send(3);
        send(4);
        assert!(readable(inbox.fd()));
        inbox.awake(true);
        assert!(!readable(inbox.fd()), "the wake-up is read back");
        let taken: Vec<u16> = inbox.take_up_to(1).map(backend_of).collect();
        assert_eq!(taken, [3], "at most the round's number");
        // An iterator dropped unused loses nothing.
        drop(inbox.take_up_to(8));
        let taken: Vec<u16> = inbox.take_up_to(8).map(backend_of).collect();
        assert_eq!(taken, [4]);
        // Awake again after the sleep: no write.
        send(5);
        assert!(!readable(inbox.fd()));
    }

    #[test]
    fn a_batch_of_commands_wakes_a_sleeping_worker_once() {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (mut worker, mut main) = link::<()>(wake, 4).expect("eventfd");
        assert!(worker.commands.ready_to_sleep());
        for i in 0..3 {
            main.commands.push(backend_up(i)).expect("room");
        }
        assert!(!readable(worker.commands.fd()), "no wake-up per push");
        main.commands.wake();
        assert!(readable(worker.commands.fd()));
        worker.commands.awake(true);
        main.commands.wake();
        assert!(!readable(worker.commands.fd()), "nothing pushed since");
        let taken: Vec<u16> = worker.commands.take_up_to(8).map(backend_of).collect();
        assert_eq!(taken, [0, 1, 2]);
    }

    /// A link with event rings of `slots` slots, and a loop's pace for them.
    fn paced(slots: usize) -> (Arc<Wake>, WorkerEnd<()>, LoopEnd<()>, EventPace) {
        let wake = Arc::new(Wake::new(EventFd::new().expect("eventfd")));
        let (worker, main) = link::<()>(wake.clone(), slots).expect("eventfd");
        (wake, worker, main, EventPace::new(slots))
    }

    /// A loop's look through `pace` at `main`'s events and frames: how many
    /// it took each time it looked.
    fn look(pace: &mut EventPace, wake: &Wake, main: &mut LoopEnd<()>) -> (bool, Vec<usize>) {
        let mut looks = Vec::new();
        let open = pace.look(wake, || {
            let taken = main.events.try_iter().count() + main.frames.try_iter().count();
            looks.push(taken);
            taken
        });
        (open, looks)
    }

    #[test]
    fn while_events_keep_coming_the_loop_looks_when_a_window_ends_unwoken() {
        let (wake, mut worker, mut main, mut pace) = paced(64);
        let stats = WorkerStats::default();
        let batch = |worker: &mut WorkerEnd<()>, n: u16| {
            for i in 0..n {
                worker.events.emit(opened(i), &stats);
            }
            worker.events.flush()
        };

        // Nothing yet: the loop sleeps armed, and the first batch wakes it.
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![0, 0]));
        assert!(batch(&mut worker, 3));
        assert!(readable(wake.eventfd.raw()));
        wake.eventfd.clear();
        // That look finds events: a window opens, and batches in it wake
        // nothing (the loop's other completions look too, without arming).
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![3]));
        assert!(!batch(&mut worker, 2));
        assert!(!batch(&mut worker, 2));
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![4]));
        assert!(!batch(&mut worker, 1));
        assert!(!readable(wake.eventfd.raw()));
        // The window ends with events: another one.
        pace.window_ended();
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![1]));
        // It ends with none: armed again, after a last look.
        pace.window_ended();
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![0, 0]));
        assert!(batch(&mut worker, 1));
        assert!(readable(wake.eventfd.raw()));
    }

    #[test]
    fn events_taken_aside_open_the_window_the_next_look_would_have() {
        let (wake, mut worker, mut main, mut pace) = paced(64);
        let stats = WorkerStats::default();
        worker.events.emit(opened(1), &stats);
        worker.events.emit(opened(2), &stats);
        worker.events.flush();
        // A tick takes them before the round's look, which finds none itself.
        pace.took_aside(main.events.try_iter().count());
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![0]));
        worker.events.emit(opened(3), &stats);
        assert!(!worker.events.flush(), "inside the window");
        // The window's end finds the batch made inside it; the aside count
        // went into the first look only, so the next end finds nothing and arms.
        pace.window_ended();
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![1]));
        pace.window_ended();
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![0, 0]));
    }

    #[test]
    fn an_event_published_after_the_last_look_wakes_the_loop() {
        let (wake, mut worker, mut main, mut pace) = paced(64);
        let stats = WorkerStats::default();
        let mut looks = Vec::new();
        // The worker publishes right after the last look took the ring empty:
        // its flush finds the wake-up armed and writes it.
        let open = pace.look(&wake, || {
            let taken = main.events.try_iter().count();
            if !looks.is_empty() {
                worker.events.emit(opened(1), &stats);
                assert!(worker.events.flush(), "armed before the last look");
            }
            looks.push(taken);
            taken
        });
        assert_eq!((open, looks), (false, vec![0, 0]));
        assert!(readable(wake.eventfd.raw()));
        // The wake-up's look finds the event and opens a window.
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![1]));
    }

    #[test]
    fn half_a_ring_in_one_look_keeps_the_loop_woken_by_every_batch() {
        let (wake, mut worker, mut main, mut pace) = paced(8);
        let stats = WorkerStats::default();
        for i in 0..4 {
            worker.events.emit(opened(i), &stats);
        }
        worker.events.flush();
        // Four of eight slots: a window could see the ring fill.
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![4, 0]));
        worker.events.emit(opened(5), &stats);
        assert!(worker.events.flush(), "armed: the batch wakes the loop");
        // A ring of two slots never waits for a window.
        let mut pace = EventPace::new(2);
        assert_eq!(look(&mut pace, &wake, &mut main), (false, vec![1, 0]));
    }

    #[test]
    fn a_frame_wakes_the_loop_inside_a_window() {
        let (wake, mut worker, mut main, mut pace) = paced(64);
        let stats = WorkerStats::default();
        worker.events.emit(opened(1), &stats);
        worker.events.flush();
        assert_eq!(look(&mut pace, &wake, &mut main), (true, vec![1]));
        assert!(worker.events.emit_frame(&[0u8; 64]));
        assert!(worker.events.flush(), "an ICMP error waits for no window");
        assert!(readable(wake.eventfd.raw()));
        wake.eventfd.clear();
        // Only the batch with the frame.
        worker.events.emit(opened(2), &stats);
        assert!(!worker.events.flush());
        assert!(!readable(wake.eventfd.raw()));
    }
}
