//! Everything that passes between a worker and the management loop, in one place:
//! what a worker reports ([`Event`], through a lock-free [`ring`] it publishes once
//! per batch), the rare frames it hands over for the loop to handle
//! ([`SlowFrame`], copies of ICMP errors, through a second, small ring), how it
//! wakes the loop ([`Wake`]), and what the loop orders a worker to do
//! ([`Command`], through a bounded channel the worker drains between batches).
//!
//! ```text
//! worker ──EventSink: Event ring + SlowFrame ring + Wake (eventfd)──▶ loop
//! worker ◀───────────────────── Command channel ──────────────────── loop
//! ```
//!
//! Both directions are bounded. A full event ring costs the event (counted as
//! `events_dropped`), a full frame ring the frame (counted by the caller); a full
//! command channel keeps the loop's command for its next round, in order.
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A record was created (or restarted by a SYN reusing a closing connection's
    /// port) on `worker`, for a connection to `daemon`.
    Opened {
        worker: WorkerId,
        key: FlowKey,
        daemon: SocketAddrV4,
    },
    /// The client's first ACK after its SYN.
    Established {
        key: FlowKey,
    },
    Fin {
        key: FlowKey,
        from_client: bool,
    },
    Rst {
        key: FlowKey,
        from_client: bool,
    },
    /// Answer to a `RemoveIfIdle`: the record's last activity (ns); the worker did
    /// NOT remove it.
    Active {
        key: FlowKey,
        last_seen_ns: u64,
    },
    /// The worker removed the record (after `RemoveIfIdle` found it idle, or for
    /// any reason).
    Removed {
        key: FlowKey,
    },
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
    /// A whole frame for a daemon, rewritten by the loop (a translated ICMP
    /// error): copy it into a free UMEM frame and send it on the back socket.
    TransmitBack(Box<[u8]>),
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

/// A worker's side of its bounded event queue (and frame queue) to the
/// management loop.
pub struct EventSink {
    queue: ring::Producer<Event>,
    frames: ring::Producer<SlowFrame>,
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

    /// Hands a copy of `frame` to the loop; false if it does not fit a
    /// [`SlowFrame`] or the ring is full (the caller counts it). The loop sees
    /// it after the next [`flush`](Self::flush).
    pub fn emit_frame(&mut self, frame: &[u8]) -> bool {
        let Some(copy) = SlowFrame::new(frame) else {
            return false;
        };
        let pushed = self.frames.try_push(copy).is_ok();
        self.sent |= pushed;
        pushed
    }

    /// Once per batch: publish this batch's events and frames and wake the loop
    /// for them.
    #[inline]
    pub fn flush(&mut self) {
        if std::mem::take(&mut self.sent) {
            self.queue.publish();
            self.frames.publish();
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
    pub frames: ring::Consumer<SlowFrame>,
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
    let (frame_tx, frame_rx) = ring::channel(SLOW_QUEUE);
    let (command_tx, command_rx) = sync_channel(COMMAND_QUEUE);
    (
        WorkerEnd {
            events: EventSink {
                queue: event_tx,
                frames: frame_tx,
                wake,
                sent: false,
            },
            commands: command_rx,
        },
        LoopEnd {
            events: event_rx,
            frames: frame_rx,
            commands: command_tx,
        },
    )
}
