//! The management loop: one thread, driven by io_uring. Every wait is a
//! submission on its ring: the workers' eventfd, a periodic timeout, the signalfd,
//! the control socket and the metrics listener (accept, request, reply), and TCP
//! connects for health probes (each linked to a timeout).
//!
//! Every in-flight operation is a slot in `ops`, its index the `user_data`; the
//! slot owns whatever buffer or descriptor the kernel is using until the
//! completion comes back, so nothing the kernel may touch is freed early.
#![allow(unsafe_code)] // io_uring submissions and raw sockets; each block says why it is sound

use std::{
    collections::VecDeque,
    io,
    net::{SocketAddrV4, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{fs::PermissionsExt, net::UnixListener},
    },
    sync::{
        mpsc::{SyncSender, TrySendError},
        Arc,
    },
    time::Duration,
};

use ahash::AHashMap;
use anyhow::{Context, Result};
use io_uring::{opcode, squeue, types, IoUring};

use super::{
    conntrack::{Command as FlowCommand, ConnTracker, Event},
    health::{Health, HealthState},
    report::{self, StatsSnapshot},
};
use crate::{
    balance::BackendState,
    config::{Config, OnFailure},
    dataplane::{Dataplane, NextHop, Wake},
    neigh::Resolver,
    spsc::Consumer,
    stats::{now_ns, WorkerStats},
    sys::{Signal, SignalFd, SIGINFO_LEN},
    worker::Command,
    xdp::Steering,
};

/// How often the loop wakes by itself: timers, probes, neighbours.
const TICK: Duration = Duration::from_millis(100);
const NEIGHBOUR_REFRESH_NS: u64 = 1_000_000_000;
const REQUEST_MAX: usize = 1024;
const RING_ENTRIES: u32 = 256;

/// A worker as the loop sees it.
pub struct WorkerLink {
    pub events: Consumer<Event>,
    pub commands: SyncSender<Command>,
    pub stats: Arc<WorkerStats>,
}

/// A daemon's health, drain flag and the state the workers were last told.
struct Backend {
    addr: SocketAddrV4,
    service: SocketAddrV4,
    health: HealthState,
    draining: bool,
    told: BackendState,
    probing: bool,
    next_probe_ns: u64,
    /// Whether the kernel has told us the MAC of its next hop: a daemon is not
    /// offered new connections before (a freshly added one, say), since the
    /// workers could not send them anywhere.
    next_hop_known: bool,
}

impl Backend {
    fn effective(&self) -> BackendState {
        if self.health.health() == Health::Down || !self.next_hop_known {
            BackendState::Down
        } else if self.draining {
            BackendState::Draining
        } else {
            BackendState::Up
        }
    }
}

enum Op {
    EventFd(Box<[u8; 8]>),
    Signal(Box<[u8; SIGINFO_LEN]>),
    Tick(Box<types::Timespec>),
    Accept {
        metrics: bool,
    },
    Recv {
        fd: OwnedFd,
        buf: Box<[u8; REQUEST_MAX]>,
        metrics: bool,
    },
    Send {
        fd: OwnedFd,
        buf: Vec<u8>,
        sent: usize,
    },
    Probe {
        backend: usize,
        generation: u64,
        _fd: OwnedFd,
        _addr: Box<libc::sockaddr_in>,
    },
    ProbeTimeout(Box<types::Timespec>),
}

/// What `dispatchd run` needs from start-up to run the loop and to reload.
pub struct Manager<'a> {
    ring: IoUring,
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    tracker: ConnTracker,
    workers: Vec<WorkerLink>,
    stats: Vec<Arc<WorkerStats>>,
    wake: Arc<Wake>,
    signals: SignalFd,
    backends: Vec<Backend>,
    /// Bumped on reload, so that probes in flight for the old list are ignored.
    generation: u64,
    config: Config,
    reload: Box<dyn FnMut() -> Result<Config> + 'a>,
    steering: &'a mut Steering,
    next_hops: Arc<[NextHop]>,
    resolver: Resolver,
    back_mac: [u8; 6],
    backlog: VecDeque<(usize, Command)>,
    ctl: UnixListener,
    metrics: Option<TcpListener>,
    commands: Vec<FlowCommand>,
    next_refresh_ns: u64,
    stop: bool,
}

fn timespec(d: Duration) -> Box<types::Timespec> {
    Box::new(
        types::Timespec::new()
            .sec(d.as_secs())
            .nsec(d.subsec_nanos()),
    )
}

/// Binds the control socket with mode 0600 from the start (umask), replacing a
/// stale socket file left by a dead process.
pub fn bind_control_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            let _ = std::fs::remove_file(path);
        }
    }
    // SAFETY: umask only swaps the process's file mode mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener =
        bound.with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(listener)
}

pub struct ManagerParts<'a> {
    pub config: Config,
    pub reload: Box<dyn FnMut() -> Result<Config> + 'a>,
    pub steering: &'a mut Steering,
    pub workers: Vec<WorkerLink>,
    pub wake: Arc<Wake>,
    pub next_hops: Arc<[NextHop]>,
    pub resolver: Resolver,
    pub back_mac: [u8; 6],
    pub ctl: UnixListener,
}

impl<'a> Manager<'a> {
    pub fn new(parts: ManagerParts<'a>) -> Result<Self> {
        let metrics = match parts.config.control.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .with_context(|| format!("binding metrics_listen {addr}"))?,
            ),
            None => None,
        };
        let mut m = Manager {
            ring: IoUring::new(RING_ENTRIES)
                .context("creating an io_uring (kernel 5.6 or later)")?,
            ops: Vec::new(),
            free: Vec::new(),
            tracker: ConnTracker::new(parts.config.control.timeouts),
            stats: parts.workers.iter().map(|w| w.stats.clone()).collect(),
            workers: parts.workers,
            wake: parts.wake,
            signals: SignalFd::new().context("creating a signalfd")?,
            backends: Vec::new(),
            generation: 0,
            reload: parts.reload,
            steering: parts.steering,
            next_hops: parts.next_hops,
            resolver: parts.resolver,
            back_mac: parts.back_mac,
            backlog: VecDeque::new(),
            ctl: parts.ctl,
            metrics,
            commands: Vec::new(),
            next_refresh_ns: 0,
            stop: false,
            config: parts.config,
        };
        m.backends = m.backend_list(&[]);
        Ok(m)
    }

    /// The daemons of the current config, keeping health and drain state of the
    /// ones in `old`; indexes match `next_hops` (both in config order).
    fn backend_list(&self, old: &[Backend]) -> Vec<Backend> {
        let now = now_ns();
        self.config
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s.address, b.addr)))
            .enumerate()
            .map(|(i, (service, addr))| {
                let previous = old.iter().find(|o| o.addr == addr);
                Backend {
                    addr,
                    service,
                    health: previous.map_or_else(
                        || HealthState::new(&self.config.control.health),
                        |o| o.health.clone(),
                    ),
                    draining: previous.is_some_and(|o| o.draining),
                    // The workers' fresh pools start with every daemon up.
                    told: BackendState::Up,
                    probing: false,
                    next_probe_ns: now,
                    next_hop_known: self.next_hops.get(i).is_some_and(|h| h.get().is_some()),
                }
            })
            .collect()
    }

    /// Runs until SIGTERM or SIGINT. Returns the final statistics text.
    pub fn run(&mut self) -> Result<String> {
        let efd = self.wake.eventfd.raw();
        self.submit_eventfd(efd)?;
        self.submit_signal()?;
        self.submit_tick()?;
        self.submit_accept(false)?;
        if self.metrics.is_some() {
            self.submit_accept(true)?;
        }
        // Daemons whose next hop is still unknown start out of selection.
        for b in 0..self.backends.len() {
            self.tell_state(b);
        }
        while !self.stop {
            self.wake.arm();
            self.drain_events();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                // A stop and continue (SIGSTOP/SIGCONT, a debugger attaching)
                // interrupts the wait; nothing is lost, the loop just goes round.
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("waiting on the io_uring"),
            }
            let done: Vec<(u64, i32)> = self
                .ring
                .completion()
                .map(|c| (c.user_data(), c.result()))
                .collect();
            for (token, result) in done {
                self.complete(token as usize, result)?;
            }
        }
        Ok(report::stats_text(&self.snapshot()))
    }

    /// The statistics text, for printing at exit.
    pub fn final_stats(&self) -> String {
        report::stats_text(&self.snapshot())
    }

    fn snapshot(&self) -> StatsSnapshot<'_> {
        StatsSnapshot {
            workers: &self.stats,
            xdp: self.steering.counters().ok(),
            connections: self.tracker.len(),
            ignored_events: self.tracker.ignored_events(),
        }
    }

    // ---- submissions ------------------------------------------------------

    /// Stores `op` in a slot and pushes the entry `build` makes for it. The entry
    /// points into the op's boxed buffers, which stay put while the slot holds them.
    fn push(&mut self, op: Op, build: impl FnOnce(&mut Op) -> squeue::Entry) -> Result<usize> {
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                self.ops.len() - 1
            }
        };
        let op = self.ops[slot].insert(op);
        let entry = build(op).user_data(slot as u64);
        self.push_entry(&entry)?;
        Ok(slot)
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> Result<()> {
        loop {
            // SAFETY: every buffer and fd the entry refers to is owned by its slot
            // in `ops`, which is freed only when the completion arrives.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // A full submission queue: hand what is queued to the kernel first.
            self.ring.submit().context("submitting to the io_uring")?;
        }
    }

    fn release(&mut self, slot: usize) -> Option<Op> {
        let op = self.ops.get_mut(slot)?.take();
        if op.is_some() {
            self.free.push(slot);
        }
        op
    }

    fn submit_eventfd(&mut self, fd: RawFd) -> Result<()> {
        self.push(Op::EventFd(Box::new([0; 8])), |op| {
            let Op::EventFd(buf) = op else {
                unreachable!("just stored")
            };
            opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), 8).build()
        })?;
        Ok(())
    }

    fn submit_signal(&mut self) -> Result<()> {
        let fd = self.signals.raw();
        self.push(Op::Signal(Box::new([0; SIGINFO_LEN])), |op| {
            let Op::Signal(buf) = op else {
                unreachable!("just stored")
            };
            opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), SIGINFO_LEN as u32).build()
        })?;
        Ok(())
    }

    fn submit_tick(&mut self) -> Result<()> {
        self.push(Op::Tick(timespec(TICK)), |op| {
            let Op::Tick(ts) = op else {
                unreachable!("just stored")
            };
            opcode::Timeout::new(&**ts as *const types::Timespec).build()
        })?;
        Ok(())
    }

    fn submit_accept(&mut self, metrics: bool) -> Result<()> {
        let fd = match (&self.metrics, metrics) {
            (Some(l), true) => l.as_raw_fd(),
            _ => self.ctl.as_raw_fd(),
        };
        self.push(Op::Accept { metrics }, |_| {
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        })?;
        Ok(())
    }

    fn submit_recv(&mut self, fd: OwnedFd, metrics: bool) -> Result<()> {
        let raw = fd.as_raw_fd();
        self.push(
            Op::Recv {
                fd,
                buf: Box::new([0; REQUEST_MAX]),
                metrics,
            },
            |op| {
                let Op::Recv { buf, .. } = op else {
                    unreachable!("just stored")
                };
                opcode::Recv::new(types::Fd(raw), buf.as_mut_ptr(), REQUEST_MAX as u32).build()
            },
        )?;
        Ok(())
    }

    fn submit_send(&mut self, fd: OwnedFd, buf: Vec<u8>, sent: usize) -> Result<()> {
        let raw = fd.as_raw_fd();
        self.push(Op::Send { fd, buf, sent }, |op| {
            let Op::Send { buf, sent, .. } = op else {
                unreachable!("just stored")
            };
            let rest = &buf[*sent..];
            opcode::Send::new(types::Fd(raw), rest.as_ptr(), rest.len() as u32).build()
        })?;
        Ok(())
    }

    /// A TCP connect to the daemon, linked to a timeout: the connect completes
    /// with 0 (up), a refusal, or -ECANCELED when the timeout fired first.
    fn submit_probe(&mut self, backend: usize) -> Result<()> {
        let addr = self.backends[backend].addr;
        // SAFETY: plain socket(2); a non-negative result is a new fd we own.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("creating a probe socket");
        }
        // SAFETY: raw is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sin = Box::new(libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        });
        let generation = self.generation;
        self.push(
            Op::Probe {
                backend,
                generation,
                _fd: fd,
                _addr: sin,
            },
            |op| {
                let Op::Probe { _addr, .. } = op else {
                    unreachable!("just stored")
                };
                opcode::Connect::new(
                    types::Fd(raw),
                    (&**_addr as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
                .build()
                .flags(squeue::Flags::IO_LINK)
            },
        )?;
        let timeout = self.config.control.health.timeout;
        self.push(Op::ProbeTimeout(timespec(timeout)), |op| {
            let Op::ProbeTimeout(ts) = op else {
                unreachable!("just stored")
            };
            opcode::LinkTimeout::new(&**ts as *const types::Timespec).build()
        })?;
        self.backends[backend].probing = true;
        Ok(())
    }

    // ---- completions -----------------------------------------------------

    fn complete(&mut self, slot: usize, result: i32) -> Result<()> {
        let Some(op) = self.release(slot) else {
            return Ok(());
        };
        match op {
            Op::EventFd(_) => {
                self.drain_events();
                self.submit_eventfd(self.wake.eventfd.raw())?;
            }
            Op::Signal(buf) => {
                match SignalFd::decode(&buf[..]) {
                    Some(Signal::Terminate | Signal::Interrupt) => self.stop = true,
                    Some(Signal::Hangup) => self.reload_config(),
                    None => {}
                }
                self.submit_signal()?;
            }
            Op::Tick(_) => {
                self.tick()?;
                self.submit_tick()?;
            }
            Op::Accept { metrics } => {
                if result >= 0 {
                    // SAFETY: a successful accept returns a new fd we now own.
                    let fd = unsafe { OwnedFd::from_raw_fd(result) };
                    self.submit_recv(fd, metrics)?;
                }
                self.submit_accept(metrics)?;
            }
            Op::Recv { fd, buf, metrics } => {
                if result > 0 {
                    let request = String::from_utf8_lossy(&buf[..result as usize]).into_owned();
                    let reply = if metrics {
                        self.metrics_reply()
                    } else {
                        self.ctl_reply(request.trim())
                    };
                    self.submit_send(fd, reply.into_bytes(), 0)?;
                }
            }
            Op::Send { fd, buf, sent } => {
                let sent = sent + result.max(0) as usize;
                if result > 0 && sent < buf.len() {
                    self.submit_send(fd, buf, sent)?;
                }
            }
            Op::Probe {
                backend,
                generation,
                ..
            } => {
                if generation == self.generation {
                    self.backends[backend].probing = false;
                    self.probe_result(backend, result == 0);
                }
            }
            Op::ProbeTimeout(_) => {}
        }
        Ok(())
    }

    fn drain_events(&mut self) {
        for w in 0..self.workers.len() {
            while let Some(event) = self.workers[w].events.try_pop() {
                // Read after the event arrived, so a connection's opening time is
                // never before its record's creation: removals compare the two.
                let now = now_ns();
                self.tracker.on_event(event, now, &mut self.commands);
            }
        }
        self.send_commands();
    }

    fn send_commands(&mut self) {
        for c in self.commands.drain(..) {
            let worker = match c {
                FlowCommand::Remove { worker, .. } | FlowCommand::RemoveIfIdle { worker, .. } => {
                    worker
                }
            };
            self.backlog
                .push_back((usize::from(worker), Command::Flow(c)));
        }
        // A full command queue keeps the rest for the next round, in order.
        let mut kept = VecDeque::new();
        while let Some((w, c)) = self.backlog.pop_front() {
            let Some(link) = self.workers.get(w) else {
                continue;
            };
            match link.commands.try_send(c) {
                Ok(()) => {}
                Err(TrySendError::Full(c)) => kept.push_back((w, c)),
                Err(TrySendError::Disconnected(_)) => {}
            }
        }
        self.backlog = kept;
    }

    fn tick(&mut self) -> Result<()> {
        let now = now_ns();
        // A worker only ends when told to stop, after this loop: one that ended
        // on its own (a panic) leaves its queue's traffic unserved. Stopping the
        // whole daemon detaches XDP, so the host gets its traffic back, and lets
        // a supervisor restart dispatchd.
        if let Some(w) = self.workers.iter().position(|w| w.events.producer_gone()) {
            anyhow::bail!("worker {w} stopped unexpectedly; stopping dispatchd");
        }
        self.drain_events();
        self.tracker.expire(now, &mut self.commands);
        self.send_commands();
        let interval = self.config.control.health.interval.as_nanos() as u64;
        for b in 0..self.backends.len() {
            if !self.backends[b].probing && self.backends[b].next_probe_ns <= now {
                self.backends[b].next_probe_ns = now + interval;
                self.submit_probe(b)?;
            }
        }
        if now >= self.next_refresh_ns {
            self.next_refresh_ns = now + NEIGHBOUR_REFRESH_NS;
            self.refresh_next_hops();
        }
        Ok(())
    }

    fn refresh_next_hops(&mut self) {
        for b in 0..self.backends.len() {
            self.refresh_next_hop(b);
        }
    }

    /// Re-reads a daemon's next hop from the kernel's tables (the probes make
    /// the kernel resolve it) and tells the workers if that changes its state.
    fn refresh_next_hop(&mut self, backend: usize) {
        let (Some(b), Some(hop)) = (self.backends.get_mut(backend), self.next_hops.get(backend))
        else {
            return;
        };
        if let Ok(Some(mac)) = self.resolver.lookup(*b.addr.ip()) {
            hop.set(Some(mac));
        }
        b.next_hop_known = hop.get().is_some();
        self.tell_state(backend);
    }

    fn probe_result(&mut self, backend: usize, ok: bool) {
        if ok && !self.backends[backend].next_hop_known {
            // The probe's handshake has just made the kernel resolve the hop.
            self.refresh_next_hop(backend);
        }
        let b = &mut self.backends[backend];
        if let Some(flip) = b.health.record(ok) {
            println!(
                "dispatchd: daemon {} is {}",
                b.addr,
                if flip == Health::Up { "up" } else { "down" }
            );
            if flip == Health::Down && self.config.control.on_failure == OnFailure::Reset {
                self.reset_backend(backend);
            }
        }
        self.tell_state(backend);
    }

    /// Tells every worker a daemon's state, if it changed.
    fn tell_state(&mut self, backend: usize) {
        let state = self.backends[backend].effective();
        if state == self.backends[backend].told {
            return;
        }
        self.backends[backend].told = state;
        for w in 0..self.workers.len() {
            self.backlog.push_back((
                w,
                Command::BackendState {
                    backend: backend as u16,
                    state,
                },
            ));
        }
        self.send_commands();
    }

    fn reset_backend(&mut self, backend: usize) {
        let doomed: Vec<_> = self
            .tracker
            .connections_of(backend as u16)
            .map(|(_, key)| key)
            .collect();
        let now = now_ns();
        for key in doomed {
            self.tracker
                .on_event(Event::Removed { key }, now, &mut self.commands);
        }
        for w in 0..self.workers.len() {
            self.backlog.push_back((
                w,
                Command::RemoveBackendFlows {
                    backend: backend as u16,
                },
            ));
        }
        self.send_commands();
    }

    // ---- control socket ---------------------------------------------------

    fn ctl_reply(&mut self, request: &str) -> String {
        let mut words: Vec<&str> = request.split_whitespace().collect();
        let json = words.last() == Some(&"json");
        if json {
            words.pop();
        }
        match words.as_slice() {
            ["stats"] if json => report::stats_json(&self.snapshot()),
            ["stats"] => report::stats_text(&self.snapshot()),
            ["conns"] => self.conns_reply(json),
            ["backends"] => self.backends_reply(json),
            [verb @ ("drain" | "undrain"), addr] => match addr.parse::<SocketAddrV4>() {
                Ok(addr) => match self.backends.iter().position(|b| b.addr == addr) {
                    Some(i) => {
                        self.backends[i].draining = *verb == "drain";
                        self.tell_state(i);
                        format!("ok: {addr} {}
", if *verb == "drain" { "draining" } else { "undrained" })
                    }
                    None => format!("error: {addr} is not a configured daemon
"),
                },
                Err(_) => format!("error: {addr:?} is not an IPv4 ADDR:PORT
"),
            },
            _ => "error: expected stats|conns|backends|drain ADDR|undrain ADDR, optionally followed by json
".into(),
        }
    }

    fn conns_reply(&self, json: bool) -> String {
        let now = now_ns();
        let rows: Vec<String> = self
            .tracker
            .iter()
            .map(|c| {
                let age_ms = now.saturating_sub(c.opened_ns) / 1_000_000;
                let phase = format!("{:?}", c.phase);
                if json {
                    format!(
                        r#"{{"client":"{}","service":"{}","daemon":"{}","worker":{},"state":"{}","age_ms":{age_ms}}}"#,
                        c.key.client(),
                        c.key.service(),
                        c.daemon,
                        c.worker,
                        phase.replace('"', "'")
                    )
                } else {
                    format!("{} -> {} -> {} worker {} {phase} age {age_ms} ms", c.key.client(), c.key.service(), c.daemon, c.worker)
                }
            })
            .collect();
        if json {
            format!(
                "[{}]
",
                rows.join(",")
            )
        } else {
            format!(
                "{}
{} connections
",
                rows.join(
                    "
"
                ),
                rows.len()
            )
        }
    }

    fn backends_reply(&self, json: bool) -> String {
        let mut active: AHashMap<SocketAddrV4, u32> = AHashMap::new();
        for c in self.tracker.iter() {
            *active.entry(c.daemon).or_default() += 1;
        }
        let rows: Vec<String> = self
            .backends
            .iter()
            .map(|b| {
                let health = if b.health.health() == Health::Up { "up" } else { "down" };
                let state = format!("{:?}", b.effective()).to_lowercase();
                let n = active.get(&b.addr).copied().unwrap_or(0);
                if json {
                    format!(
                        r#"{{"daemon":"{}","service":"{}","health":"{health}","draining":{},"state":"{state}","active":{n}}}"#,
                        b.addr, b.service, b.draining
                    )
                } else {
                    format!("{} service {} health {health} state {state} active {n}", b.addr, b.service)
                }
            })
            .collect();
        if json {
            format!(
                "[{}]
",
                rows.join(",")
            )
        } else {
            format!(
                "{}
",
                rows.join(
                    "
"
                )
            )
        }
    }

    fn metrics_reply(&self) -> String {
        let body = report::prometheus(&self.snapshot());
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    // ---- reload ------------------------------------------------------------

    /// SIGHUP: re-read the configuration and apply its services and daemons.
    /// Records of daemons that remain are kept (workers re-point them); the rest
    /// of the settings need a restart, which is said, not silently ignored.
    fn reload_config(&mut self) {
        let new = match (self.reload)() {
            Ok(c) => c,
            Err(e) => {
                eprintln!("dispatchd: SIGHUP: keeping the running configuration: {e:#}");
                return;
            }
        };
        if let Err(e) = self.apply(new) {
            eprintln!("dispatchd: SIGHUP: {e:#}");
        }
    }

    fn apply(&mut self, new: Config) -> Result<()> {
        let old = &self.config;
        if (
            &new.front,
            &new.back,
            new.queues,
            &new.cores,
            new.flow_capacity,
            new.frames_per_queue,
        ) != (
            &old.front,
            &old.back,
            old.queues,
            &old.cores,
            old.flow_capacity,
            old.frames_per_queue,
        ) {
            println!("dispatchd: SIGHUP: interface, queue and memory settings need a restart; applying services only");
        }
        // Build everything first: a failure leaves the running state untouched.
        let daemons: Vec<SocketAddrV4> = new
            .services
            .iter()
            .flat_map(|s| s.backends.iter().map(|b| b.addr))
            .collect();
        let next_hops: Arc<[NextHop]> = daemons.iter().map(|_| NextHop::default()).collect();
        for (d, hop) in daemons.iter().zip(next_hops.iter()) {
            self.resolver.route(*d.ip())?;
            let known = self
                .backends
                .iter()
                .position(|b| b.addr == *d)
                .and_then(|i| self.next_hops[i].get());
            hop.set(known.or_else(|| self.resolver.lookup(*d.ip()).ok().flatten()));
        }
        let planes: Vec<Dataplane> = (0..self.workers.len())
            .map(|w| Dataplane::build(w as u16, &new.services, next_hops.clone(), self.back_mac))
            .collect::<Result<_>>()?;

        for s in &old.services {
            if !new.services.iter().any(|n| n.address == s.address) {
                self.steering.remove_service(s.address)?;
            }
            for b in &s.backends {
                if !daemons.contains(&b.addr) {
                    self.steering.remove_daemon(b.addr)?;
                }
            }
        }
        for (i, s) in new.services.iter().enumerate() {
            self.steering.add_service(s.address, i as u32)?;
            for b in &s.backends {
                self.steering.add_daemon(b.addr, s.address)?;
            }
        }
        for (w, plane) in planes.into_iter().enumerate() {
            self.backlog
                .push_back((w, Command::ReplacePlane(Box::new(plane))));
        }
        self.tracker.set_timeouts(new.control.timeouts);
        self.next_hops = next_hops;
        self.generation += 1;
        let old_backends = std::mem::take(&mut self.backends);
        self.config = new;
        self.backends = self.backend_list(&old_backends);
        self.send_commands();
        for b in 0..self.backends.len() {
            self.tell_state(b);
        }
        let list: Vec<String> = daemons.iter().map(|d| d.to_string()).collect();
        println!("dispatchd: SIGHUP: reloaded; daemons {}", list.join(" "));
        Ok(())
    }
}

/// Sends one request to a running dispatchd's control socket and returns the reply.
pub fn ctl_request(socket: &std::path::Path, request: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {} (is dispatchd running?)", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("{request}\n").as_bytes())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply).context("reading the reply")?;
    Ok(reply)
}
