//! Everything that passes between a worker and the management loop, in one place:
//! what a worker reports ([`Event`], through a lock-free [`ring`] it publishes once
//! per batch), how it wakes the loop ([`Wake`]), and what the loop orders a worker
//! to do ([`Command`], through a bounded channel the worker drains between batches).
//!
//! ```text
//! worker ──EventSink: Event ring + Wake (eventfd)──▶ loop
//! worker ◀──────────── Command channel ──────────── loop
//! ```
//!
//! Both directions are bounded. A full event ring costs the event (counted as
//! `events_dropped`); a full command channel keeps the loop's command for its next
//! round, in order.
use std::{
    net::SocketAddrV4,
    sync::{
        atomic::{fence, AtomicBool, Ordering::SeqCst},
        mpsc::{sync_channel, Receiver, SyncSender},
        Arc,
    },
};

use crate::{
    balance::BackendState,
    flow::FlowKey,
    ids::{BackendId, WorkerId},
    stats::WorkerStats,
    sys::EventFd,
};

pub mod ring;

/// Events a worker may queue before it counts them as dropped; a burst of new
/// connections in one loop round must fit.
pub const EVENT_QUEUE: usize = 65_536;
/// Commands queued per worker; the loop keeps what does not fit for later.
pub const COMMAND_QUEUE: usize = 4_096;

/// What a worker reports. The worker that sees a daemon's FIN or RST may not be
/// the worker that owns the record (replies arrive on any queue); the loop routes
/// later commands by key to the owner it learned from `Opened`.
///
/// Every event carries `at_ns`, the worker's clock when it saw the segment, on
/// the one clock all threads share ([`crate::stats::now_ns`]). The loop ignores
/// an event from before the connection it would change was opened: a late event
/// about an old connection never touches a newer one that reused its ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A record was created (or restarted by a SYN reusing a closing connection's
    /// port) on `worker`, for a connection to `daemon`; `at_ns` is the record's
    /// creation time.
    Opened {
        worker: WorkerId,
        key: FlowKey,
        daemon: SocketAddrV4,
        at_ns: u64,
    },
    /// The client's first ACK after its SYN.
    Established { key: FlowKey, at_ns: u64 },
    Fin {
        key: FlowKey,
        from_client: bool,
        at_ns: u64,
    },
    /// The owner accepted a reset from either side: its sequence number was in
    /// the window the record has seen. The connection is over.
    Reset { key: FlowKey, at_ns: u64 },
    /// A daemon's reset, seen on any worker and not judged yet: the owner has the
    /// sequence numbers to judge it with.
    DaemonRst { key: FlowKey, seq: u32, at_ns: u64 },
    /// Answer to a `RemoveIfIdle`: the record's last activity (ns); the worker did
    /// NOT remove it.
    Active { key: FlowKey, last_seen_ns: u64 },
    /// The worker removed the record (after `RemoveIfIdle` found it idle, or for
    /// any reason).
    Removed { key: FlowKey, at_ns: u64 },
}

/// What the loop's connection tracker orders about one record; sent to the worker
/// that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCommand {
    /// Remove the record of the connection the loop heard open at `opened_ns`.
    /// A record created after that belongs to a newer connection that reused the
    /// key (its `Opened` may still be on its way to the loop) and stays.
    Remove { key: FlowKey, opened_ns: u64 },
    /// Remove the record if it has seen no packet since `idle_since_ns`; otherwise
    /// answer [`Event::Active`].
    RemoveIfIdle { key: FlowKey, idle_since_ns: u64 },
    /// Judge a daemon's reset (an [`Event::DaemonRst`]) against the record: if its
    /// sequence number is in the window and the record is not newer than the
    /// reset, mark the record reset and answer [`Event::Reset`].
    CheckRst { key: FlowKey, seq: u32, at_ns: u64 },
}

/// What the loop tells a worker. `Plane` is the worker's per-packet state (the
/// dataplane), which a reload replaces whole; it is a parameter so that this
/// module needs nothing above it.
pub enum Command<Plane> {
    Flow(FlowCommand),
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
}

/// Wakes the management loop through its eventfd, at most once per sleep: the
/// loop arms the flag before it waits, the first worker to see it armed writes.
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

    /// Called by the loop before it drains the queues and goes to sleep. The
    /// fence orders this store before the drain's loads, and pairs with the fence
    /// in `notify`: either the drain sees a worker's published events, or that
    /// worker's swap sees the flag armed. An event is never left without a wake-up.
    pub fn arm(&self) {
        self.armed.store(true, SeqCst);
        fence(SeqCst);
    }

    /// Called by a worker after it published events.
    fn notify(&self) {
        fence(SeqCst);
        if self.armed.swap(false, SeqCst) {
            self.eventfd.notify();
        }
    }
}

/// A worker's side of its bounded event queue to the management loop.
pub struct EventSink {
    queue: ring::Producer<Event>,
    wake: Arc<Wake>,
    sent: bool,
}

impl EventSink {
    /// Never blocks: a full queue costs the event, which is counted. The loop
    /// sees the event after the next [`flush`](Self::flush).
    #[inline]
    pub fn emit(&mut self, event: Event, stats: &WorkerStats) {
        match self.queue.try_push(event) {
            Ok(()) => self.sent = true,
            Err(_) => stats.events_dropped.add(1),
        }
    }

    /// Once per batch: publish this batch's events and wake the loop for them.
    #[inline]
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.sent) {
            self.queue.publish();
            self.wake.notify();
        }
    }
}

/// A worker's ends of its link with the loop.
pub struct WorkerEnd<Plane> {
    pub events: EventSink,
    pub commands: Receiver<Command<Plane>>,
}

/// The loop's ends of its link with one worker.
pub struct LoopEnd<Plane> {
    pub events: ring::Consumer<Event>,
    pub commands: SyncSender<Command<Plane>>,
}

/// A new link between the loop and one worker, at the protocol's queue sizes;
/// every worker's events wake the loop through the one `wake`.
pub fn link<Plane>(wake: Arc<Wake>) -> (WorkerEnd<Plane>, LoopEnd<Plane>) {
    link_sized(wake, EVENT_QUEUE)
}

/// [`link`] with an event ring of `events` slots (rounded up to a power of two),
/// for tests that fill it.
pub fn link_sized<Plane>(wake: Arc<Wake>, events: usize) -> (WorkerEnd<Plane>, LoopEnd<Plane>) {
    let (event_tx, event_rx) = ring::channel(events);
    let (command_tx, command_rx) = sync_channel(COMMAND_QUEUE);
    (
        WorkerEnd {
            events: EventSink {
                queue: event_tx,
                wake,
                sent: false,
            },
            commands: command_rx,
        },
        LoopEnd {
            events: event_rx,
            commands: command_tx,
        },
    )
}
