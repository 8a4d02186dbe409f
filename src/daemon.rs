//! Start-up, the running daemon, and shutdown.
//!
//! Order matters for "nothing left attached": everything that can fail on bad
//! input (interfaces, routes, program load, socket binds) happens before the
//! program is attached, and the attachment is a pair of bpf_links owned by this
//! process, so any exit after it, clean or not, detaches.
use std::{
    sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    config::{Config, ReplyMode},
    control::{
        apply::{apply, Host},
        ctl,
        manager::{Manager, ManagerParts, WorkerLink},
    },
    ids::WorkerId,
    neigh::{self, Resolver},
    protocol::{self, Wake},
    stats::WorkerStats,
    sys::{self, EventFd, RawIpSender},
    worker::{self, WorkerSetup},
    xdp::{Interface, Replies, Side, Steering},
    xsk,
};

/// Start-up's TCP attempt that makes the kernel resolve a daemon's next hop.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a worker may take to allocate and write its flow table.
const WORKER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// The cores workers run on: as configured, or else every core but the first
/// (which keeps the main thread and the kernel's own work), round-robin.
fn worker_cores(config: &Config) -> Vec<Option<usize>> {
    if !config.cores.is_empty() {
        return config.cores.iter().map(|&c| Some(c)).collect();
    }
    let n = core_affinity::get_core_ids().map_or(1, |c| c.len()).max(1);
    (0..config.queues as usize)
        .map(|q| Some(if n > 1 { 1 + q % (n - 1) } else { 0 }))
        .collect()
}

fn fmt_mac(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
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

/// What the steering program needs to know of `reply_mode`.
fn replies(config: &Config) -> Replies {
    match config.reply_mode {
        ReplyMode::Stateless => Replies::Stateless,
        // Validation keeps it within MAX_TRACKED, a u32.
        ReplyMode::Tracked => Replies::Tracked {
            capacity: u32::try_from(config.tracked_capacity()).unwrap_or(u32::MAX),
        },
    }
}

/// Runs dispatchd until SIGTERM or SIGINT. `reload` re-reads the configuration
/// (the file and flags of the command line) on SIGHUP.
pub fn run(config: Config, reload: Box<dyn FnMut() -> Result<Config> + '_>) -> Result<()> {
    run_with(config, reload, false)
}

/// The interfaces, checked to be usable.
struct Interfaces {
    front: Interface,
    back: Interface,
    back_mac: [u8; 6],
}

/// What must hold before anything is loaded: the capabilities, the interfaces,
/// forwarding on the back.
fn check_host(config: &Config) -> Result<Interfaces> {
    let missing = sys::missing_capabilities().context("reading this process's capabilities")?;
    if !missing.is_empty() {
        bail!(
            "permission denied: dispatchd needs {} (run as root)",
            missing.join(", ")
        );
    }
    let front = Interface::lookup(&config.front).context("front")?;
    let back = Interface::lookup(&config.back).context("back")?;
    let back_mac = neigh::interface_mac(&back.name)?;
    require_forwarding(&back.name)?;
    Ok(Interfaces {
        front,
        back,
        back_mac,
    })
}

/// Opens every queue's sockets and registers them with the steering program.
fn open_queues(
    config: &Config,
    ifaces: &Interfaces,
    steering: &Steering,
) -> Result<Vec<xsk::QueueSockets>> {
    let mut queues = Vec::new();
    for q in 0..config.queues {
        let sockets = xsk::open_queue(
            &ifaces.front,
            &ifaces.back,
            q,
            config.frames_per_queue,
            config.bind_mode,
        )?;
        steering.register_socket(Side::Front, q, sockets.front.fd())?;
        steering.register_socket(Side::Back, q, sockets.back.fd())?;
        let mode = |zc: bool| if zc { "zero-copy" } else { "copy" };
        println!(
            "dispatchd: queue {q}: front socket {}, back socket {}",
            mode(sockets.front.zerocopy),
            mode(sockets.back.zerocopy)
        );
        queues.push(sockets);
    }
    Ok(queues)
}

/// Starts the workers and waits until each serves: each allocates its flow
/// table (first-touched on its own core) before it says so.
fn start_workers(setups: Vec<WorkerSetup>) -> (Vec<thread::JoinHandle<()>>, Result<()>) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let mut handles = Vec::new();
    for mut setup in setups {
        setup.ready = Some(ready_tx.clone());
        let (id, core) = (setup.id, setup.core);
        match thread::Builder::new()
            .name(format!("dispatchd-q{id}"))
            .spawn(move || worker::run(setup))
        {
            Ok(handle) => handles.push(handle),
            Err(e) => return (handles, Err(e).context("spawning a worker")),
        }
        println!(
            "dispatchd: worker {id} on core {}",
            core.map_or("any".into(), |c| c.to_string())
        );
    }
    drop(ready_tx);
    let started = (0..handles.len()).try_for_each(|_| {
        ready_rx
            .recv_timeout(WORKER_START_TIMEOUT)
            .map(drop)
            .context("a worker did not start")
    });
    (handles, started)
}

/// [`run`], with the benchmark-only bare forwarder (`--bare-forwarder`) on or off:
/// when on, workers move frames between the sockets without parsing or rewriting.
pub fn run_with(
    config: Config,
    reload: Box<dyn FnMut() -> Result<Config> + '_>,
    bare: bool,
) -> Result<()> {
    let ifaces = check_host(&config)?;
    sys::block_signals().context("blocking signals")?;
    sys::give_back_large_allocations();
    let resolver = Resolver {
        back: ifaces.back.name.clone(),
        probe_timeout: PROBE_TIMEOUT,
    };
    // Before anything is steered, make the kernel resolve every daemon's next
    // hop, so that each takes connections from the first SYN on (the loop
    // resolves the ones that do not answer yet).
    for (_, _, daemon) in config.daemons() {
        resolver.resolve(daemon.addr)?;
    }
    let mut steering = Steering::load(&ifaces.front, &ifaces.back, replies(&config))?;
    let host = Host {
        resolver: &resolver,
        back_mac: ifaces.back_mac,
        workers: config.queues as usize,
    };
    let applied = apply(&config, |_| None, &host, &mut steering)?;
    for ((_, _, daemon), hop) in config.daemons().zip(applied.next_hops.iter()) {
        match hop.get() {
            Some(mac) => println!(
                "dispatchd: daemon {} next hop {}",
                daemon.addr,
                fmt_mac(mac)
            ),
            None => println!(
                "dispatchd: daemon {} next hop unresolved yet; retrying",
                daemon.addr
            ),
        }
    }
    // Opened while dispatchd still has CAP_NET_RAW, which sending does not need.
    let probes = RawIpSender::open(&ifaces.front.name).with_context(|| {
        format!(
            "opening a raw socket on {} for next-hop probes",
            ifaces.front.name
        )
    })?;
    let queues = open_queues(&config, &ifaces, &steering)?;

    // Bound before anything is attached, so a bad path fails start-up cleanly.
    let ctl = ctl::bind(&config.control.control_socket)?;
    let front_mode = steering.attach(&ifaces.front, config.xdp_mode)?;
    let back_mode = steering.attach(&ifaces.back, config.xdp_mode)?;
    println!(
        "dispatchd: XDP on {} (front) {front_mode}, on {} (back) {back_mode}",
        ifaces.front.name, ifaces.back.name
    );
    for s in &config.services {
        let list: Vec<String> = s.backends.iter().map(|b| b.addr.to_string()).collect();
        println!(
            "dispatchd: service {} ({}) -> {}",
            s.address,
            s.policy,
            list.join(" ")
        );
    }
    match config.reply_mode {
        ReplyMode::Stateless => println!(
            "dispatchd: replies: every frame from a daemon's address and port routed out of {}",
            ifaces.front.name
        ),
        ReplyMode::Tracked => println!(
            "dispatchd: replies: tracked connections only (room for {} in the kernel)",
            config.tracked_capacity()
        ),
    }
    if bare {
        println!("dispatchd: BARE FORWARDER (benchmark only): frames cross unparsed, unrewritten");
    }

    let wake = Arc::new(Wake::new(EventFd::new().context("creating an eventfd")?));
    let stop = Arc::new(AtomicBool::new(false));
    let mut links = Vec::new();
    let mut setups = Vec::new();
    let places = queues
        .into_iter()
        .zip(worker_cores(&config))
        .zip(applied.planes);
    for (q, ((sockets, core), plane)) in places.enumerate() {
        let stats = Arc::new(WorkerStats::default());
        let (worker_end, loop_end) = protocol::link(wake.clone());
        links.push(WorkerLink {
            link: loop_end,
            stats: stats.clone(),
        });
        setups.push(WorkerSetup {
            id: WorkerId(q as u16),
            core,
            batch: config.batch,
            poll: config.poll,
            flow_capacity: config.flow_capacity,
            sockets,
            plane,
            stats,
            stop: stop.clone(),
            link: worker_end,
            bare,
            tracked: match config.reply_mode {
                ReplyMode::Tracked => Some(steering.tracked_map()?),
                ReplyMode::Stateless => None,
            },
            ready: None,
        });
    }
    let socket_path = config.control.control_socket.clone();
    let listening = format!(
        "dispatchd: control socket {}{}",
        socket_path.display(),
        config
            .control
            .metrics_listen
            .map(|a| format!(", metrics on http://{a}/metrics"))
            .unwrap_or_default()
    );
    let poll = config.poll;
    // The loop's ring, signalfd and listeners exist before the workers start, so
    // a failure here leaves nothing running.
    let mut manager = Manager::new(ManagerParts {
        config,
        reload,
        steering: &mut steering,
        workers: links,
        wake,
        next_hops: applied.next_hops,
        resolver,
        back_mac: ifaces.back_mac,
        ctl,
        probes,
    })?;
    // Everything privileged is done: the workers and the loop run without any
    // capability (the workers inherit this thread's empty sets).
    sys::drop_all_capabilities().context("dropping capabilities")?;
    println!("dispatchd: all capabilities dropped");
    let (handles, started) = start_workers(setups);
    let outcome = started.and_then(|()| {
        println!("{listening}");
        println!("dispatchd: running (poll {poll:?}); SIGTERM or SIGINT stops, SIGHUP reloads");
        manager.run()
    });
    stop.store(true, Relaxed);
    for h in handles {
        let _ = h.join();
    }
    // Counted after the workers stopped, so the numbers are final.
    let final_stats = manager.final_stats();
    drop(manager);
    steering.detach();
    let _ = std::fs::remove_file(&socket_path);
    outcome?;
    println!("dispatchd: final statistics");
    for line in final_stats.lines() {
        println!("  {line}");
    }
    Ok(())
}
