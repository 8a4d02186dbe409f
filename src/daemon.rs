//! Start-up, the running daemon, and shutdown.
//!
//! Order matters for "nothing left attached": everything that can fail on bad
//! input (interfaces, their queue counts and MTUs, routes, program load, socket
//! binds) happens before the program is attached, and the attachment is a pair
//! of bpf_links owned by this process, so any exit after it, clean or not,
//! detaches.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{SocketAddrV4, SocketAddrV6},
    os::fd::AsFd,
    sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    config::{Config, PollMode, Protocol, ReplyMode},
    control::{
        apply::{apply, Host, OffBack},
        ctl,
        manager::{Manager, ManagerParts, WorkerLink},
        state::{Overrides, StateFile},
        takeover::{self, Identity},
    },
    flow::{FlowRecord, FlowRecord6, FlowTable, FlowTable6},
    ids::WorkerId,
    kernel,
    neigh::{self, fmt_mac, HopBook, Kernel},
    protocol::{self, Wake},
    queues::{self, fmt_queues, LinkFacts, LinkWatch, WorkerQueues},
    stats::{now_ns, WorkerStats},
    sys::{self, EventFd, RawIcmp6Sender, RawIpSender},
    worker::{self, Gate, WorkerSetup},
    xdp::{self, Interface, Replies, Side, Steering},
    xsk::{self, Bind, SocketOptions},
};

/// Start-up's TCP attempt that makes the kernel resolve a daemon's next hop.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a worker may take to allocate and write its flow table.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

/// Which worker serves which queues, on which core: a worker per core (as
/// configured, or every core but the first), at most as many as the smaller
/// interface has queues.
fn plan_workers(config: &Config, front: &LinkFacts, back: &LinkFacts) -> Result<Vec<WorkerQueues>> {
    let available: Vec<usize> = core_affinity::get_core_ids()
        .map(|ids| ids.into_iter().map(|c| c.id).collect())
        .unwrap_or_default();
    // As for control_core: a worker that cannot pin would run wherever the
    // scheduler puts it, beside whatever the core was meant to be kept from.
    let usable = |core: &&usize| available.is_empty() || available.contains(core);
    if let Some(core) = config.cores.iter().find(|c| !usable(c)) {
        bail!(
            "cores: core {core} does not exist or is not in this process's CPU set (it may use {})",
            available
                .iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    let cores = queues::worker_cores(&config.cores, &available);
    let plan = queues::plan(front.rx_queues, back.rx_queues, &cores);
    if plan.len() < cores.len() {
        let unused: Vec<String> = cores[plan.len()..]
            .iter()
            .map(|c| c.map_or("any".into(), |c| c.to_string()))
            .collect();
        tracing::info!(
            "{} workers for {} front and {} back queues; core(s) {} unused",
            plan.len(),
            front.rx_queues,
            back.rx_queues,
            unused.join(",")
        );
    }
    Ok(plan)
}

/// The XDP program asks the kernel's FIB where it would forward each frame a
/// daemon sends (the client's next hop, or the host itself), as for a frame
/// arriving on the back; the kernel answers only if the back forwards IPv4.
fn require_forwarding(back: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{back}/forwarding");
    let value = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if value.trim() != "1" {
        bail!(
            "IPv4 forwarding is off on the back interface {back}; the reply path's FIB lookup needs it \
             (sysctl -w net.ipv4.conf.{back}.forwarding=1)"
        );
    }
    Ok(())
}

/// The same for IPv6 replies: the FIB lookup with `AF_INET6` checks the
/// back's own `forwarding` (not `all`'s).
fn require_forwarding6(back: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{back}/forwarding");
    let value = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if value.trim() != "1" {
        bail!(
            "IPv6 forwarding is off on the back interface {back}; the IPv6 reply path's FIB lookup \
             needs it (sysctl -w net.ipv6.conf.{back}.forwarding=1)"
        );
    }
    Ok(())
}

/// What the steering program needs to know of `reply_mode`, for `workers`
/// flow tables.
fn replies(config: &Config, workers: usize) -> Replies {
    match config.reply_mode {
        ReplyMode::Stateless => Replies::Stateless,
        // check_tracked_room keeps it within MAX_TRACKED, a u32.
        ReplyMode::Tracked => Replies::Tracked {
            capacity: u32::try_from(config.tracked_capacity(workers)).unwrap_or(u32::MAX),
            // Allocated in full at load: only for IPv6 services configured at
            // start (a reload bringing the first ones needs a restart).
            capacity6: match config.services6.is_empty() {
                true => 1,
                false => u32::try_from(config.tracked_capacity(workers)).unwrap_or(u32::MAX),
            },
        },
    }
}

/// Runs dispatchd until SIGTERM or SIGINT. `reload` re-reads the configuration
/// (the file and flags of the command line) on SIGHUP.
pub fn run(config: Config, reload: Box<dyn FnMut() -> Result<Config> + '_>) -> Result<()> {
    run_with(config, reload, Bare::Off, false)
}

/// The interfaces, checked to be usable.
struct Interfaces {
    front: Interface,
    back: Interface,
    back_mac: [u8; 6],
    front_link: LinkFacts,
    back_link: LinkFacts,
}

/// What must hold before anything is loaded: a kernel new enough, the
/// capabilities, the interfaces, forwarding on the back, RX queue counts
/// dispatchd can serve, MTUs whose frames fit a UMEM frame.
fn check_host(config: &Config) -> Result<Interfaces> {
    // First: an older kernel may not know CAP_BPF at all, and the capability
    // check would then blame the user's privileges instead of the kernel.
    let release = kernel::running_release().context("reading the kernel's release")?;
    if let Some(why) = kernel::too_old(&release) {
        bail!(why);
    }
    let missing = sys::missing_capabilities().context("reading this process's capabilities")?;
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        bail!(
            "permission denied: dispatchd needs {} (run as root)",
            names.join(", ")
        );
    }
    let front = Interface::lookup(&config.front).context("front")?;
    let back = Interface::lookup(&config.back).context("back")?;
    let back_mac = neigh::interface_mac(&back.name)?;
    require_forwarding(&back.name)?;
    if !config.services6.is_empty() {
        require_forwarding6(&back.name)?;
    }
    let front_link = queues::read_link(&front, Side::Front)?;
    let back_link = queues::read_link(&back, Side::Back)?;
    queues::check(
        config.queues,
        &front_link,
        &back_link,
        xsk::FRAME_SIZE,
        xsk::FRAME_HEADROOM,
    )?;
    Ok(Interfaces {
        front,
        back,
        back_mac,
        front_link,
        back_link,
    })
}

/// How every worker binds its sockets, from what both interfaces advertise;
/// says what each advertises and why the mode was chosen.
fn choose_bind(config: &Config, ifaces: &Interfaces) -> Result<Bind> {
    let front = xdp::zerocopy_support(&ifaces.front)?;
    let back = xdp::zerocopy_support(&ifaces.back)?;
    let max_mtu = queues::max_mtu(xsk::FRAME_SIZE, xsk::FRAME_HEADROOM);
    for (link, zc) in [(&ifaces.front_link, front), (&ifaces.back_link, back)] {
        tracing::info!(
            "{}: {} RX queues, MTU {} (frames fit up to {max_mtu}), AF_XDP zero-copy {}",
            link.label(),
            link.rx_queues,
            link.mtu,
            match zc {
                Some(true) => "advertised",
                Some(false) => "not advertised",
                None => "unknown (the kernel reports no XDP features)",
            }
        );
    }
    let (bind, note) = xsk::decide_bind(
        config.bind_mode,
        (&ifaces.front.name, front),
        (&ifaces.back.name, back),
    )?;
    if let Some(note) = note {
        tracing::info!("{note}");
    }
    Ok(bind)
}

fn socket_options(config: &Config, bind: Bind) -> SocketOptions {
    SocketOptions {
        bind,
        frames_per_queue: config.frames_per_queue,
        batch: config.batch,
        busy_poll: config.poll == PollMode::Busy,
    }
}

/// Opens every worker's sockets (on the UMEMs made beforehand, if any) and
/// registers each with the steering program under its interface and queue;
/// a bind refused with EBUSY is retried for up to `busy_wait`. Returns the
/// sockets and how many binds were refused so.
fn open_workers(
    config: &Config,
    ifaces: &Interfaces,
    plan: &[WorkerQueues],
    bind: Bind,
    steering: &Steering,
    umems: Vec<xsk::WorkerUmem>,
    busy_wait: Duration,
) -> Result<(Vec<xsk::WorkerSockets>, u32)> {
    let opts = socket_options(config, bind);
    let mut busy = 0;
    let table_mib = FlowTable::memory_for(config.flow_capacity) as u64 / MIB;
    let mut workers = Vec::new();
    let mut umem_mib = 0;
    let mut umems = umems.into_iter();
    for (w, queues) in plan.iter().enumerate() {
        let sockets = umems
            .next()
            .map_or_else(|| xsk::make_umem(queues, &opts), Ok)
            .and_then(|umem| {
                xsk::bind_worker(umem, &ifaces.front, &ifaces.back, queues, &opts, busy_wait)
            })
            .map(|(sockets, refused)| {
                busy += refused;
                sockets
            })
            .with_context(|| format!("worker {w}"))?;
        for rings in &sockets.front {
            steering.register_socket(Side::Front, rings.queue, rings.fd())?;
        }
        for rings in &sockets.back {
            steering.register_socket(Side::Back, rings.queue, rings.fd())?;
        }
        let all: Vec<&xsk::Rings> = sockets.front.iter().chain(&sockets.back).collect();
        let mode = if all.iter().all(|r| r.zerocopy) {
            "zero-copy (one TX kick per batch)".to_owned()
        } else if all.iter().all(|r| !r.zerocopy) {
            format!(
                "copy mode (up to {} frames per TX kick)",
                all.iter().map(|r| r.tx_budget).min().unwrap_or(0)
            )
        } else {
            let each: Vec<String> = all
                .iter()
                .map(|r| {
                    format!(
                        "queue {} {}",
                        r.queue,
                        if r.zerocopy { "zero-copy" } else { "copy" }
                    )
                })
                .collect();
            format!("mixed: {}", each.join(", "))
        };
        let frames = xsk::umem_frames(config.frames_per_queue, all.len());
        umem_mib += u64::from(frames) * u64::from(xsk::FRAME_SIZE) / MIB;
        tracing::info!(
            "worker {w}: front {} queues {}, back {} queues {}: {} sockets bound in {mode}; \
             memory: UMEM {frames} frames x {} KiB = {} MiB locked on {}, flow table {} connections = {table_mib} MiB",
            ifaces.front.name,
            fmt_queues(&queues.front),
            ifaces.back.name,
            fmt_queues(&queues.back),
            all.len(),
            xsk::FRAME_SIZE / 1024,
            u64::from(frames) * u64::from(xsk::FRAME_SIZE) / MIB,
            sockets.pages,
            config.flow_capacity,
        );
        if opts.busy_poll {
            if let Some(first) = all.first() {
                let (prefer, usecs) = xsk::busy_poll_options(first.fd())
                    .context("reading back the busy poll options")?;
                tracing::info!(
                    "worker {w}: busy poll on every socket (SO_PREFER_BUSY_POLL {prefer}, \
                     SO_BUSY_POLL {usecs} us, SO_BUSY_POLL_BUDGET {})",
                    config.batch
                );
            }
        }
        workers.push(sockets);
    }
    tracing::info!(
        "memory of {} workers: UMEM {umem_mib} MiB locked, flow tables {} MiB",
        workers.len(),
        table_mib * workers.len() as u64
    );
    if config.poll == PollMode::Busy {
        for iface in [&ifaces.front.name, &ifaces.back.name] {
            warn_undeferred_napi(iface);
        }
    }
    Ok((workers, busy))
}

/// Preferred busy polling owns a device's NAPI only if the device defers it
/// (the kernel's AF_XDP documentation): with `napi_defer_hard_irqs` or
/// `gro_flush_timeout` at 0, the kernel still runs the NAPI in softirq (or its
/// kthread) at every interrupt, beside the worker's busy poll.
fn warn_undeferred_napi(iface: &str) {
    let (defer, timeout) = match queues::napi_deferral(iface) {
        Ok(facts) => facts,
        Err(e) => {
            tracing::warn!(iface, "poll busy: cannot read {iface}'s NAPI deferral: {e}");
            return;
        }
    };
    if defer == 0 || timeout == 0 {
        tracing::warn!(
            iface,
            napi_defer_hard_irqs = defer,
            gro_flush_timeout_ns = timeout,
            "poll busy: {iface} does not defer its NAPI to the busy poll, so the kernel \
             keeps running it beside the worker; set both, e.g. \
             echo 2 > /sys/class/net/{iface}/napi_defer_hard_irqs; \
             echo 200000 > /sys/class/net/{iface}/gro_flush_timeout"
        );
    } else {
        tracing::info!(
            iface,
            napi_defer_hard_irqs = defer,
            gro_flush_timeout_ns = timeout,
            "poll busy: {iface} defers its NAPI to the busy poll"
        );
    }
}

/// A worker's flow tables, IPv4's and IPv6's.
type Tables = (FlowTable, FlowTable6);

/// Spawns the workers, runs `meanwhile`, then waits until each serves: each
/// allocates its flow table (first-touched on its own core) and enters its
/// inherited records before it says so. `fifo` (`worker_priority`) ends
/// once they are spawned, so only they keep SCHED_FIFO.
fn start_workers(
    setups: Vec<WorkerSetup>,
    fifo: Option<sys::FifoWhileSpawning>,
    meanwhile: impl FnOnce(),
) -> (Vec<thread::JoinHandle<Tables>>, Result<()>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for mut setup in setups {
        setup.ready = Some(ready_tx.clone());
        let (id, core) = (setup.id, setup.core);
        match thread::Builder::new()
            .name(format!("dispatchd-w{id}"))
            .spawn(move || worker::run(setup))
        {
            Ok(handle) => handles.push(handle),
            Err(e) => return (handles, Err(e).context("spawning a worker")),
        }
        tracing::info!(
            "worker {id} on core {}",
            core.map_or("any".into(), |c| c.to_string())
        );
    }
    if fifo.is_some() {
        tracing::info!("workers at SCHED_FIFO (worker_priority)");
    }
    drop(fifo);
    meanwhile();
    drop(ready_tx);
    let started = (0..handles.len()).try_for_each(|_| {
        ready_rx
            .recv_timeout(WORKER_START_TIMEOUT)
            .map(|id| tracing::info!(worker = %id, "worker {id} serving its queues"))
            .context("a worker did not start")
    });
    (handles, started)
}

/// What a takeover must find the same in the running process: the
/// interfaces, `reply_mode` and the queues of each worker.
fn identity(ifaces: &Interfaces, plan: &[WorkerQueues], reply_mode: ReplyMode) -> Identity {
    let replies = match reply_mode {
        ReplyMode::Stateless => "stateless",
        ReplyMode::Tracked => "tracked",
    };
    let layout: Vec<String> = plan
        .iter()
        .enumerate()
        .map(|(w, q)| format!("{w}:f{}/b{}", fmt_queues(&q.front), fmt_queues(&q.back)))
        .collect();
    Identity {
        front: ifaces.front.name.clone(),
        back: ifaces.back.name.clone(),
        replies: replies.to_owned(),
        layout: layout.join(";"),
        reply_key: Some(crate::config::REPLY_KEY_SIZE),
        reply_key6: Some(crate::config::REPLY_KEY6_SIZE),
    }
}

/// Every worker's flow tables (IPv4, and IPv6 of `capacity6`), each allocated
/// and written by a thread on the worker's core (as the worker itself would:
/// its memory first touched there), before a takeover's switch rather than in
/// its window.
fn allocate_tables(
    plan: &[WorkerQueues],
    capacity: usize,
    capacity6: usize,
) -> Result<Vec<Tables>> {
    thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .map(|q| {
                s.spawn(move || {
                    if let Some(core) = q.core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    (
                        FlowTable::with_capacity(capacity),
                        FlowTable6::with_capacity(capacity6),
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("allocating a flow table failed"))
            })
            .collect()
    })
}

/// How long a new process retries binding a socket while the kernel lets go
/// of the old process's socket on the same queue (EBUSY meanwhile).
const REBIND_PATIENCE: Duration = Duration::from_secs(2);

/// What a takeover brought: the records for each worker, and when the links
/// were switched.
struct TookOver {
    pid: u32,
    records: Vec<(u16, FlowRecord)>,
    records6: Vec<(u16, FlowRecord6)>,
    switched: Instant,
    umems: Vec<xsk::WorkerUmem>,
    /// Since the switch: when the records had come, when the sockets were bound.
    records_after: Duration,
    bound_after: Duration,
    /// Binds refused (EBUSY) while the old sockets' queues were released.
    busy: u32,
    tables: Vec<Tables>,
    /// `reply_mode = "tracked"`: what sets the maps against the records,
    /// while the workers enter them.
    settle: Option<Settle>,
}

/// A takeover's copied tracked keys, and what [`settle_tracked`] needs to
/// set them against the handed records.
struct Settle {
    copied: takeover::CopiedKeys<xdp::ReplyKey>,
    copied6: takeover::CopiedKeys<xdp::ReplyKey6>,
    map: xdp::TrackedMap<xdp::ReplyKey>,
    map6: xdp::TrackedMap<xdp::ReplyKey6>,
    /// The protocols of each configured daemon (see [`takeover::daemon_protocols`]).
    served: BTreeMap<SocketAddrV4, BTreeSet<Protocol>>,
    served6: BTreeMap<SocketAddrV6, BTreeSet<Protocol>>,
}

/// Copies the running process's tracked map (`from`) into this program's,
/// before the switch, so that its replies of every connection the running
/// process tracked are taken from the switch on. An older process's keys
/// have no protocol: each is converted by what its daemon serves in
/// `config` (README, "Takeover"). Returns the keys copied, to be removed
/// again where no kept record backs them ([`takeover::CopiedKeys`]).
fn copy_tracked(
    config: &Config,
    steering: &Steering,
    from: std::os::fd::BorrowedFd<'_>,
    pid: u32,
) -> Result<Vec<xdp::ReplyKey>> {
    let map = steering.tracked_map()?;
    match steering.handed_tracked_keys(from)? {
        xdp::HandedKeys::Current(keys) => {
            map.insert_all(&keys)
                .context("copying the running process's tracked connections")?;
            tracing::info!("{} tracked connections copied from pid {pid}", keys.len());
            Ok(keys)
        }
        xdp::HandedKeys::WithoutProtocol(old) => {
            let protocols = takeover::daemon_protocols(&config.services);
            let converted = takeover::convert_v0_keys(&old, &protocols);
            map.insert_all(&converted.certain)
                .context("copying the running process's tracked connections")?;
            // Twice as many keys as connections for these daemons: where the
            // map has no room for a guess, the connection's own key is
            // written from its record in the switch window (only the guesses
            // the map took count as copied). Those inserted are cleaned up
            // with the rest.
            let mut guessed = converted.guessed;
            let outcome = map.insert(&guessed);
            if let Some(e) = outcome.error {
                tracing::warn!(
                    "copying the guessed tracked keys (daemons serving TCP and UDP): {e} \
                     after {} of {}; the rest are written from the records in the switch window",
                    outcome.done,
                    guessed.len()
                );
            }
            tracing::info!(
                old = old.len(),
                certain = converted.certain.len(),
                guessed = guessed.len(),
                dropped = converted.dropped,
                "tracked connections copied from pid {pid}, an older version whose keys \
                 have no protocol: converted by the daemons' services in this configuration"
            );
            guessed.truncate(outcome.done);
            Ok([converted.certain, guessed].concat())
        }
    }
}

/// Copies the running process's IPv6 tracked map (`from`; an older process
/// hands none) into this program's, as [`copy_tracked`] the IPv4 one.
fn copy_tracked6(
    steering: &Steering,
    from: Option<std::os::fd::BorrowedFd<'_>>,
    pid: u32,
) -> Result<Vec<xdp::ReplyKey6>> {
    let Some(from) = from else {
        tracing::info!(
            "pid {pid} hands no map of tracked IPv6 connections (an older version): this \
             process writes theirs from the IPv6 records before its workers start"
        );
        return Ok(Vec::new());
    };
    let keys = steering.handed_tracked6_keys(from)?;
    (steering.tracked6_map()?.insert_all(&keys))
        .context("copying the running process's IPv6 tracked connections")?;
    tracing::info!(
        "{} IPv6 tracked connections copied from pid {pid}",
        keys.len()
    );
    Ok(keys)
}

/// The raw sockets that send next-hop probes out of `iface`: IPv4's, and
/// ICMPv6's opened whatever the configuration (a reload may bring IPv6
/// services, and the capability to open it is gone by then). Without the
/// ICMPv6 one start-up fails if `need6`, and otherwise says `without6`.
fn probe_sockets(
    iface: &Interface,
    need6: bool,
    without6: &str,
) -> Result<(RawIpSender, Option<RawIcmp6Sender>)> {
    let name = &iface.name;
    let v4 = RawIpSender::open(name)
        .with_context(|| format!("opening a raw socket on {name} for next-hop probes"))?;
    let v6 = match RawIcmp6Sender::open(name, iface.index) {
        Ok(p) => Some(p),
        Err(e) if need6 => {
            bail!("opening a raw ICMPv6 socket on {name} for next-hop probes: {e}")
        }
        Err(e) => {
            tracing::info!(error = %e, "no raw ICMPv6 socket on {name}: {without6}");
            None
        }
    };
    Ok((v4, v6))
}

/// The new process's side of a takeover, up to the records (see
/// [`takeover`]): asks the running dispatchd on the control socket, points
/// its links at this process's program, then reads the records it sends once
/// its workers stopped. Everything slow (the tables) is done before.
/// `None` if no dispatchd listens on the control socket: a fresh start.
fn take_over(
    config: &Config,
    plan: &[WorkerQueues],
    bind: Bind,
    me: &Identity,
    steering: &mut Steering,
) -> Result<Option<TookOver>> {
    let tables = allocate_tables(plan, config.flow_capacity, worker::flow_capacity6(config))?;
    let opts = socket_options(config, bind);
    let umems = plan
        .iter()
        .map(|q| xsk::make_umem(q, &opts))
        .collect::<Result<Vec<_>>>()?;
    let socket = &config.control.control_socket;
    let Some(mut request) = takeover::Request::send(socket, me)? else {
        tracing::info!(
            "no dispatchd listens on {}: nothing to take over, starting afresh",
            socket.display()
        );
        return Ok(None);
    };
    takeover::test_die_at("links");
    let pid = request.pid;
    // Before the switch, so that B's program takes the replies of every
    // connection A tracked (connections A opens from here to the switch are
    // written from their records before B's workers serve: settle_tracked).
    let settle = match config.reply_mode {
        ReplyMode::Tracked => Some(Settle {
            copied: takeover::CopiedKeys::new(copy_tracked(
                config,
                steering,
                request.tracked.as_fd(),
                pid,
            )?),
            copied6: takeover::CopiedKeys::new(copy_tracked6(
                steering,
                request.tracked6.as_ref().map(|m| m.as_fd()),
                pid,
            )?),
            map: steering.tracked_map()?,
            map6: steering.tracked6_map()?,
            served: takeover::daemon_protocols(&config.services),
            served6: takeover::daemon_protocols(&config.services6),
        }),
        ReplyMode::Stateless => None,
    };
    takeover::test_slow_switch();
    request.may_switch()?;
    steering.adopt_links(std::mem::take(&mut request.links))?;
    let switched = Instant::now();
    takeover::test_die_at("switched");
    let handed = match request.switched(now_ns) {
        Ok(h) => h,
        Err(e) => {
            // This process holds the links: it goes on alone.
            tracing::warn!(
                "the old process (pid {pid}) sent no records ({e:#}); \
                 going on without them"
            );
            takeover::Handed::default()
        }
    };
    Ok(Some(TookOver {
        pid,
        records: handed.records,
        records6: handed.records6,
        switched,
        records_after: switched.elapsed(),
        bound_after: Duration::ZERO,
        busy: 0,
        umems,
        tables,
        settle,
    }))
}

/// Brings this program's maps of tracked connections to the kept records
/// (`records`, `records6`), in the switch window while the workers enter
/// them: writes the keys the copy lacked and removes the copied keys no
/// record backs ([`takeover::Settled`]). The workers wait for it before they
/// write a key or serve, so none of these keys is one of this process's own
/// connections, and they write no inherited record's key.
fn settle_tracked(settle: Settle, records: &[(u16, FlowRecord)], records6: &[(u16, FlowRecord6)]) {
    let settled = settle.copied.settle(records, &settle.served);
    let settled6 = settle.copied6.settle(records6, &settle.served6);
    // First, to make room.
    let removed = (|| -> Result<usize> {
        Ok(settle.map.remove_each(&settled.unbacked)?
            + settle.map6.remove_each(&settled6.unbacked)?)
    })();
    match removed {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "{n} copied tracked keys that no kept record backs removed (records of \
             daemons not configured, connections ended since the copy, guesses of the \
             other protocol)"
        ),
        Err(e) => tracing::warn!("removing the copied tracked keys no record backs: {e:#}"),
    }
    let written = (|| -> Result<usize> {
        settle.map.insert_all(&settled.unwritten)?;
        settle.map6.insert_all(&settled6.unwritten)?;
        Ok(settled.unwritten.len() + settled6.unwritten.len())
    })();
    match written {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            "{n} tracked keys written from records that were not copied (connections \
             opened since the copy, a map not handed)"
        ),
        // Their replies are not taken (they pass to the host), as those of
        // any connection whose key the map refused.
        Err(e) => tracing::warn!("writing the tracked keys the copy lacked: {e:#}"),
    }
}

/// The benchmark's ceilings: forwarding with dispatchd's own work taken out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bare {
    /// dispatchd as deployed.
    Off,
    /// `--bare-forwarder`: workers move frames between the sockets without
    /// parsing or rewriting, the ceiling of the AF_XDP path.
    Sockets,
    /// `--bare-xdp-redirect`: the XDP program redirects what it would steer to
    /// the other interface, untouched, and no frame reaches a worker: the
    /// ceiling of forwarding in XDP itself.
    XdpRedirect,
}

/// [`run`], with one of the benchmark-only bare forwarders ([`Bare`]) or none.
///
/// With `takeover`, the program is not attached: the running dispatchd on the
/// same control socket hands its links and records over (see [`takeover`]).
pub fn run_with(
    config: Config,
    reload: Box<dyn FnMut() -> Result<Config> + '_>,
    bare: Bare,
    takeover: bool,
) -> Result<()> {
    // The shared clock starts here, not at its first reading: a record handed
    // over by a takeover keeps as much of its age (and idle time) as this
    // process's clock reaches back, which is then its whole life.
    now_ns();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        pid = std::process::id(),
        takeover,
        "starting"
    );
    let ifaces = check_host(&config)?;
    if let Some(priority) = config.worker_priority {
        // Tried now, and given back at once, so that a host that refuses it
        // (no CAP_SYS_NICE; systemd's RestrictRealtime=yes) fails start-up
        // before anything is attached or taken over, not after.
        drop(sys::FifoWhileSpawning::new(priority).with_context(|| {
            format!(
                "worker_priority = {priority}: cannot take SCHED_FIFO (it needs \
                 CAP_SYS_NICE, and under systemd RestrictRealtime=no)"
            )
        })?);
    }
    // Before any thread starts: the loop's helpers (probes, the takeover's
    // listener) inherit the placement; workers pin themselves to theirs.
    if let Some(core) = config.control_core {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
            bail!("control_core = {core}: cannot pin the management thread there (no such core, or not in this process's CPU set)");
        }
        tracing::info!(core, "management thread pinned");
    }
    let state_file = config.control.state_file.clone().map(StateFile::new);
    let mut overrides = match &state_file {
        Some(file) => read_overrides(file, &config)?,
        None => Overrides::default(),
    };
    sys::block_signals().context("blocking signals")?;
    sys::give_back_large_allocations();
    match sys::raise_descriptor_limit() {
        Ok(limit) => tracing::debug!(limit, "open descriptors"),
        Err(e) => tracing::warn!("cannot raise the open-descriptor limit: {e}"),
    }
    // Subscribed to the kernel's route and neighbour changes before the first
    // request, so that nothing that changes from here on goes unseen.
    let kernel = Kernel::open(&ifaces.back.name, ifaces.back.index, PROBE_TIMEOUT)?;
    // Before anything is steered, make the kernel resolve every daemon's next
    // hop, so that each takes connections from the first SYN on (the health
    // probes have the kernel resolve the ones that do not answer yet, and its
    // notification brings their MAC).
    for (_, _, daemon) in config.daemons() {
        kernel.resolve(daemon.addr)?;
    }
    for (_, _, daemon) in config.daemons6() {
        kernel.resolve6(daemon.addr)?;
    }
    let mut book = HopBook::new(ifaces.back.index);
    // The IPv6 table only for IPv6 daemons (a host may run with IPv6 off).
    let neighbours6 = match config.services6.is_empty() {
        true => Vec::new(),
        false => kernel
            .neighbours6()
            .context("reading the back interface's IPv6 neighbours")?,
    };
    book.load_neighbours(
        &kernel
            .neighbours()
            .context("reading the back interface's neighbours")?,
        &neighbours6,
        &mut Vec::new(),
    );
    let bind = choose_bind(&config, &ifaces)?;
    let plan = plan_workers(&config, &ifaces.front_link, &ifaces.back_link)?;
    config.check_tracked_room(plan.len())?;
    let replies = replies(&config, plan.len());
    let mut steering = match bare {
        Bare::XdpRedirect => Steering::load_bare_redirect(&ifaces.front, &ifaces.back, replies)?,
        _ => Steering::load(&ifaces.front, &ifaces.back, replies)?,
    };
    let host = Host {
        kernel: &kernel,
        back_mac: ifaces.back_mac,
        workers: plan.len(),
    };
    let mut applied = apply(
        &overrides.weighted(&config),
        &[],
        |_, hop| book.neighbour_mac(hop),
        &host,
        OffBack::Refuse,
        &mut steering,
    )?;
    drain_in_planes(&config, &overrides, &mut applied.planes);
    for ((_, _, daemon), hop) in config.all_daemons().zip(&applied.hops) {
        let via = match hop.hop() {
            Some(h) if h != daemon.addr.ip() => format!(" via {h}"),
            _ => String::new(),
        };
        match hop.usable() {
            Some(mac) => tracing::info!(
                "daemon {} next hop {}{via}",
                daemon.addr,
                fmt_mac(mac)
            ),
            None => tracing::info!(
                "daemon {} next hop{via} unresolved yet; the loop has the kernel resolve it (a health probe, or an echo request through the back)",
                daemon.addr
            ),
        }
    }
    book.install(applied.hops);
    let back_addrs =
        sys::ipv4_addrs(&ifaces.back.name).context("reading the back interface's addresses")?;
    match back_addrs.first() {
        Some(&addr) => steering.set_icmp_source(addr)?,
        None => tracing::info!(
            "{} has no IPv4 address: replies too big for the front path are dropped \
             without telling their daemon",
            ifaces.back.name
        ),
    }
    // Set whatever the configuration, for a reload that brings IPv6 services.
    let back_addrs6 = match sys::ipv6_addrs(&ifaces.back.name) {
        Ok(addrs) => addrs,
        Err(e) if config.services6.is_empty() => {
            tracing::debug!(error = %e, "reading the back interface's IPv6 addresses");
            Vec::new()
        }
        Err(e) => return Err(e).context("reading the back interface's IPv6 addresses"),
    };
    match back_addrs6.first() {
        Some(&addr) => steering.set_icmp_source6(addr)?,
        None if !config.services6.is_empty() => tracing::info!(
            "{} has no global IPv6 address: IPv6 replies too big for the front path \
             are dropped without telling their daemon",
            ifaces.back.name
        ),
        None => {}
    }
    // Opened while dispatchd still has CAP_NET_RAW, which sending does not need.
    let (probes, probes6) = probe_sockets(
        &ifaces.front,
        !config.services6.is_empty(),
        "IPv6 clients' next hops will not be probed",
    )?;
    // The same probes through the back, for daemons' hops that no health
    // probe makes the kernel resolve (a UDP daemon's, a retired one's).
    let (back_probes, back_probes6) = probe_sockets(
        &ifaces.back,
        false,
        "IPv6 daemons' next hops are resolved by their health probes only",
    )?;
    let identity = identity(&ifaces, &plan, config.reply_mode);
    if takeover {
        takeover::test_pause();
    }
    let took = match takeover {
        true => take_over(&config, &plan, bind, &identity, &mut steering)?,
        false => None,
    };
    // The old process wrote its last change before it sent the records: the
    // file now holds what it ran with (a change made since this process
    // read it is applied by the loop before it serves).
    let mut adopted = None;
    if let (Some(file), Some(_)) = (&state_file, &took) {
        match file.load() {
            Ok(mut now) => {
                now.retain_configured(&config);
                if now != overrides {
                    adopted = Some(now);
                }
            }
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "re-reading the state file after the takeover; keeping what was read at start"
            ),
        }
    }
    let (sockets, ctl, mut took_over) = if let Some(mut took) = took {
        let umems = std::mem::take(&mut took.umems);
        // The old process closed its sockets before it sent its records.
        let (sockets, busy) = open_workers(
            &config,
            &ifaces,
            &plan,
            bind,
            &steering,
            umems,
            REBIND_PATIENCE,
        )?;
        took.bound_after = took.switched.elapsed();
        took.busy = busy;
        // The old process left its socket file: this one replaces it.
        let ctl = ctl::bind(&config.control.control_socket, true)?;
        tracing::info!(
            "XDP on {} (front) and {} (back): links taken over from pid {}",
            ifaces.front.name,
            ifaces.back.name,
            took.pid
        );
        (sockets, ctl, Some(took))
    } else {
        let (sockets, _) = open_workers(
            &config,
            &ifaces,
            &plan,
            bind,
            &steering,
            Vec::new(),
            Duration::ZERO,
        )?;
        // Bound before anything is attached, so a bad path fails start-up cleanly.
        let ctl = ctl::bind(&config.control.control_socket, false)?;
        let front_mode = steering.attach(&ifaces.front, config.xdp_mode)?;
        let back_mode = steering.attach(&ifaces.back, config.xdp_mode)?;
        tracing::info!(
            "XDP on {} (front) {front_mode}, on {} (back) {back_mode}",
            ifaces.front.name,
            ifaces.back.name
        );
        (sockets, ctl, None)
    };
    let mut tables: Vec<Option<Tables>> = match &mut took_over {
        Some(t) => std::mem::take(&mut t.tables)
            .into_iter()
            .map(Some)
            .collect(),
        None => Vec::new(),
    };
    let settle = took_over.as_mut().and_then(|t| t.settle.take());
    let (settled, opener) = settle.as_ref().map(|_| Gate::new()).unzip();
    let mut inherited: Vec<Vec<FlowRecord>> = vec![Vec::new(); plan.len()];
    for &(w, record) in took_over.iter().flat_map(|t| &t.records) {
        if let Some(list) = inherited.get_mut(usize::from(w)) {
            list.push(record);
        }
    }
    let mut inherited6: Vec<Vec<FlowRecord6>> = vec![Vec::new(); plan.len()];
    for &(w, record) in took_over.iter().flat_map(|t| &t.records6) {
        if let Some(list) = inherited6.get_mut(usize::from(w)) {
            list.push(record);
        }
    }
    for s in &config.services {
        let list: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
        tracing::info!("service {} ({}) -> {}", s.address, s.policy, list.join(" "));
    }
    if let Some(mss) = config.mss_clamp {
        tracing::info!("client SYNs announce an MSS of at most {mss}");
    }
    match config.reply_mode {
        ReplyMode::Stateless => tracing::info!(
            "replies: every frame from a daemon's address and port routed out of {}",
            ifaces.front.name
        ),
        ReplyMode::Tracked => tracing::info!(
            "replies: tracked connections only (room for {} in the kernel)",
            config.tracked_capacity(plan.len())
        ),
    }
    match bare {
        Bare::Off => {}
        Bare::Sockets => tracing::info!(
            "BARE FORWARDER (benchmark only): frames cross unparsed, unrewritten"
        ),
        Bare::XdpRedirect => tracing::info!(
            "BARE XDP REDIRECT (benchmark only): XDP redirects service frames to the other interface untouched; no worker sees one"
        ),
    }

    let wake = Arc::new(Wake::new(EventFd::new().context("creating an eventfd")?));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_wake = Arc::new(EventFd::new().context("creating an eventfd")?);
    let mut links = Vec::new();
    let mut setups = Vec::new();
    let places = sockets.into_iter().zip(&plan).zip(applied.planes);
    for (w, ((sockets, queues), plane)) in places.enumerate() {
        let (table, table6) = tables.get_mut(w).and_then(Option::take).unzip();
        let stats = Arc::new(WorkerStats::with_sockets(&queues.front, &queues.back));
        let (worker_end, loop_end) =
            protocol::link(wake.clone(), config.event_ring).context("creating an eventfd")?;
        links.push(WorkerLink {
            link: loop_end,
            stats: stats.clone(),
            traffic: plane.traffic.clone(),
            core: queues.core,
        });
        setups.push(WorkerSetup {
            id: WorkerId(w as u16),
            core: queues.core,
            batch: config.batch,
            poll: config.poll,
            fifo: config.worker_priority.is_some(),
            flow_capacity: config.flow_capacity,
            flow_capacity6: worker::flow_capacity6(&config),
            sockets,
            plane,
            stats,
            stop: stop.clone(),
            stop_wake: stop_wake.clone(),
            link: worker_end,
            bare: bare == Bare::Sockets,
            tracked: match config.reply_mode {
                ReplyMode::Tracked => Some(steering.tracked_map()?),
                ReplyMode::Stateless => None,
            },
            tracked6: match config.reply_mode {
                ReplyMode::Tracked => Some(steering.tracked6_map()?),
                ReplyMode::Stateless => None,
            },
            ready: None,
            table,
            table6,
            inherited: std::mem::take(&mut inherited[w]),
            inherited6: std::mem::take(&mut inherited6[w]),
            settled: settled.clone(),
        });
    }
    let socket_path = config.control.control_socket.clone();
    let listening = format!(
        "control socket {}{}",
        socket_path.display(),
        config
            .control
            .metrics_listen
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    let poll = config.poll;
    let worker_priority = config.worker_priority;
    let stop_grace = config.control.stop_grace;
    let max_mtu = queues::max_mtu(xsk::FRAME_SIZE, xsk::FRAME_HEADROOM);
    let watch = [
        LinkWatch::new(ifaces.front_link.clone(), max_mtu),
        LinkWatch::new(ifaces.back_link.clone(), max_mtu),
    ];
    // The loop's ring, signalfd and listeners exist before the workers start, so
    // a failure here leaves nothing running.
    let mut manager = Manager::new(ManagerParts {
        config,
        reload,
        steering: &mut steering,
        workers: links,
        wake,
        next_hops: applied.next_hops,
        kernel,
        book,
        back_mac: ifaces.back_mac,
        ctl,
        links: watch,
        probes,
        back_probes,
        back_probes6,
        probes6,
        identity,
        overrides: std::mem::take(&mut overrides),
        state_file,
    })?;
    if let Some(now) = adopted {
        manager.adopt_overrides(now)?;
    }
    // The workers inherit SCHED_FIFO from this thread, which takes it while
    // it still may (CAP_SYS_NICE) and leaves it once they are spawned.
    let fifo = worker_priority
        .map(|priority| {
            sys::FifoWhileSpawning::new(priority).with_context(|| {
                format!(
                    "worker_priority = {priority}: cannot take SCHED_FIFO (it needs \
                     CAP_SYS_NICE, and under systemd RestrictRealtime=no)"
                )
            })
        })
        .transpose()?;
    // Everything privileged is done: the workers and the loop run without any
    // capability (the workers inherit this thread's empty sets).
    sys::drop_all_capabilities().context("dropping capabilities")?;
    tracing::info!("all capabilities dropped");
    let mut settled_after = None;
    let (handles, started) = start_workers(setups, fifo, || {
        if let (Some(settle), Some(t)) = (settle, &took_over) {
            settle_tracked(settle, &t.records, &t.records6);
            settled_after = Some(t.switched.elapsed());
        }
        // The workers wait for it, even if there was nothing to settle.
        drop(opener);
    });
    if let (Some(t), Ok(())) = (&took_over, &started) {
        let no_socket = xdp::COUNTER_NAMES.iter().position(|n| *n == "no_socket");
        let dropped = match (manager.xdp_counters(), no_socket) {
            (Ok(c), Some(i)) => c[i].to_string(),
            _ => "?".into(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            "took over from pid {} with {} IPv4 and {} IPv6 records: records {:.1} ms, sockets bound \
             {:.1} ms ({} binds refused while the kernel released the old ones){}, serving {:.1} ms \
             after the switch ({dropped} frames dropped meanwhile for want of a socket, none \
             passed to the host)",
            t.pid,
            t.records.len(),
            t.records6.len(),
            ms(t.records_after),
            ms(t.bound_after),
            t.busy,
            settled_after
                .map(|d| format!(", tracked keys settled {:.1} ms", ms(d)))
                .unwrap_or_default(),
            ms(t.switched.elapsed()),
        );
    }
    // After the workers serve, out of the switch window (a million records
    // took 0.4 s here): the loop reads no event before it, so the events the
    // workers send about inherited records wait in their rings (a worker
    // holds back, never drops, when its ring is full) and come after.
    if let (Some(t), Ok(())) = (&took_over, &started) {
        manager.inherit(&t.records, &t.records6);
    }
    let outcome = started.and_then(|()| {
        tracing::info!("{listening}");
        let term = if stop_grace.is_zero() {
            "SIGTERM or SIGINT stops".to_owned()
        } else {
            format!(
                "SIGTERM stops after {} ms unready (graceful), SIGINT at once",
                stop_grace.as_millis()
            )
        };
        tracing::info!("running (poll {poll:?}); {term}, SIGHUP reloads");
        manager.run()
    });
    stop.store(true, Relaxed);
    stop_wake.notify();
    // Each worker's sockets close as it ends: a new process can bind them.
    // By worker index, which the records travel with (a worker that panicked
    // has none left).
    let tables: Vec<Option<Tables>> = handles.into_iter().map(|h| h.join().ok()).collect();
    // First of all: the new process waits for them.
    let mut handover = manager.take_handover();
    if let Some(stream) = handover.as_mut() {
        hand_records(stream, &tables);
    }
    drop(tables);
    // Counted after the workers stopped, so the numbers are final.
    let final_stats = manager.final_stats();
    drop(manager);
    // After a takeover, the new process holds the links and has replaced the
    // socket file.
    if handover.is_none() {
        steering.detach();
        let _ = std::fs::remove_file(&socket_path);
    }
    outcome?;
    tracing::info!("final statistics");
    for line in final_stats.lines() {
        tracing::info!("  {line}");
    }
    Ok(())
}

/// The overrides `file` holds for the daemons `config` has, the file checked
/// to be writable once the capabilities are dropped; those of other daemons
/// are left out (and out of the file's next write), each said.
fn read_overrides(file: &StateFile, config: &Config) -> Result<Overrides> {
    let mut overrides = file.open_unprivileged()?;
    for gone in overrides.retain_configured(config) {
        tracing::warn!(
            daemon = %gone,
            path = %file.path().display(),
            "state file: an override of a daemon the configuration does not have is ignored"
        );
    }
    for (daemon, o) in overrides.iter() {
        tracing::info!(daemon = %daemon, drained = o.drained, weight = ?o.weight, "state file: operator's override applied");
    }
    tracing::info!(
        path = %file.path().display(),
        overrides = overrides.len(),
        "state file read; writable once the capabilities are dropped"
    );
    Ok(overrides)
}

/// Marks the drained daemons in the workers' planes before they serve, so
/// that none gets a connection before the loop first tells the states.
fn drain_in_planes(
    config: &Config,
    overrides: &Overrides,
    planes: &mut [crate::dataplane::Dataplane],
) {
    for (id, _, b) in config.all_daemons() {
        if overrides.get(b.addr).drained {
            for plane in planes.iter_mut() {
                plane.set_backend_state(id, crate::balance::BackendState::Draining);
            }
        }
    }
}

/// The old process's last step of a takeover: every worker's records, with
/// their owner, to the new process. If it cannot, the new one goes on
/// without them (it holds the links).
fn hand_records(stream: &mut std::os::unix::net::UnixStream, tables: &[Option<Tables>]) {
    let now = now_ns();
    let count: usize = tables.iter().flatten().map(|(t, _)| t.len()).sum();
    let count6: usize = tables.iter().flatten().map(|(_, t)| t.len()).sum();
    let mut bytes = Vec::with_capacity(count * takeover::RECORD_WIRE);
    let mut bytes6 = Vec::with_capacity(count6 * takeover::RECORD6_WIRE);
    for (w, tables) in tables.iter().enumerate() {
        let Some((table, table6)) = tables else {
            continue;
        };
        for record in table.iter() {
            takeover::encode(w as u16, record, now, &mut bytes);
        }
        for record in table6.iter() {
            takeover::encode6(w as u16, record, now, &mut bytes6);
        }
    }
    match takeover::send_records(stream, &bytes, &bytes6) {
        Ok(()) => tracing::info!(
            records = count,
            records6 = count6,
            "handed {count} IPv4 and {count6} IPv6 records over; exiting"
        ),
        Err(e) => tracing::error!("handing the records over: {e:#}"),
    }
}
