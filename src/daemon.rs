//! Start-up, the running daemon, and shutdown.
//!
//! Order matters for "nothing left attached": everything that can fail on bad
//! input (interfaces, routes, program load, socket binds) happens before the
//! program is attached, and the attachment is a pair of bpf_links owned by this
//! process, so any exit after it, clean or not, detaches.
use std::{
    net::SocketAddrV4,
    sync::{atomic::AtomicBool, atomic::Ordering::Relaxed, Arc},
    thread,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    config::Config,
    dataplane::{Dataplane, NextHop},
    neigh::{self, Resolver},
    packet::DropReason,
    stats::{WorkerDrop, WorkerStats},
    sys::{self, Signal},
    worker::{self, WorkerReport, WorkerSetup},
    xdp::{Interface, Side, Steering, COUNTER_NAMES},
    xsk,
};

/// How often the main thread re-reads the kernel's neighbour table.
const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Every daemon of every service in config order: the index is its global id.
fn daemons_of(config: &Config) -> Vec<SocketAddrV4> {
    config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.addr))
        .collect()
}

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

/// The XDP program asks the kernel's FIB for the next hop of each reply to a
/// client, and the kernel answers only for interfaces that forward IPv4.
fn require_forwarding(front: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{front}/forwarding");
    let value = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    if value.trim() != "1" {
        bail!(
            "IPv4 forwarding is off on the front interface {front}; the reply path's FIB lookup needs it \
             (sysctl -w net.ipv4.conf.{front}.forwarding=1)"
        );
    }
    Ok(())
}

pub fn run(config: &Config) -> Result<()> {
    let missing = sys::missing_capabilities().context("reading this process's capabilities")?;
    if !missing.is_empty() {
        bail!(
            "permission denied: dispatchd needs {} (run as root)",
            missing.join(", ")
        );
    }
    sys::block_signals().context("blocking signals")?;
    let front = Interface::lookup(&config.front).context("front")?;
    let back = Interface::lookup(&config.back).context("back")?;
    let back_mac = neigh::interface_mac(&back.name)?;
    require_forwarding(&front.name)?;
    let daemons = daemons_of(config);

    let resolver = Resolver {
        back: back.name.clone(),
        probe_timeout: PROBE_TIMEOUT,
    };
    let next_hops: Arc<[NextHop]> = daemons.iter().map(|_| NextHop::default()).collect();
    for (&daemon, hop) in daemons.iter().zip(next_hops.iter()) {
        resolver.route(*daemon.ip())?;
        let mac = resolver.resolve(daemon)?;
        hop.set(mac);
        match mac {
            Some(mac) => println!("dispatchd: daemon {daemon} next hop {}", fmt_mac(mac)),
            None => println!(
                "dispatchd: daemon {} next hop unresolved yet; retrying",
                daemon
            ),
        }
    }

    let mut steering = Steering::load(&front, &back)?;
    for (i, s) in config.services.iter().enumerate() {
        steering.add_service(s.address, i as u32)?;
        for b in &s.backends {
            steering.add_daemon(b.addr, s.address)?;
        }
    }
    for addr in sys::ipv4_addrs(&back.name).context("reading the back interface's addresses")? {
        steering.add_local_addr(addr)?;
    }

    let mut queues = Vec::new();
    for q in 0..config.queues {
        let sockets = xsk::open_queue(&front, &back, q, config.frames_per_queue, config.bind_mode)?;
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

    let front_mode = steering.attach(&front, config.xdp_mode)?;
    let back_mode = steering.attach(&back, config.xdp_mode)?;
    println!(
        "dispatchd: XDP on {} (front) {front_mode}, on {} (back) {back_mode}",
        front.name, back.name
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

    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    let mut all_stats = Vec::new();
    for ((q, sockets), core) in queues.into_iter().enumerate().zip(worker_cores(config)) {
        let stats = Arc::new(WorkerStats::default());
        all_stats.push(stats.clone());
        let setup = WorkerSetup {
            queue: q as u32,
            core,
            batch: config.batch,
            poll: config.poll,
            flow_capacity: config.flow_capacity,
            sockets,
            plane: Dataplane::build(&config.services, next_hops.clone(), back_mac)?,
            stats,
            stop: stop.clone(),
        };
        let handle = thread::Builder::new()
            .name(format!("dispatchd-q{q}"))
            .spawn(move || worker::run(setup))
            .context("spawning a worker")?;
        println!(
            "dispatchd: worker {q} on core {}",
            core.map_or("any".into(), |c| c.to_string())
        );
        handles.push(handle);
    }
    println!(
        "dispatchd: running (poll {:?}); SIGTERM or SIGINT stops",
        config.poll
    );

    loop {
        match sys::wait_signal(NEIGHBOUR_REFRESH) {
            Some(Signal::Terminate | Signal::Interrupt) => break,
            Some(Signal::Hangup) => {
                println!("dispatchd: SIGHUP: configuration reload is not implemented yet")
            }
            None => refresh_next_hops(&resolver, &daemons, &next_hops),
        }
        if handles.iter().any(|h| h.is_finished()) {
            eprintln!("dispatchd: a worker stopped unexpectedly; shutting down");
            break;
        }
    }

    stop.store(true, Relaxed);
    let reports: Vec<WorkerReport> = handles.into_iter().filter_map(|h| h.join().ok()).collect();
    let counters = steering.counters().ok();
    steering.detach();
    print_final_stats(&all_stats, &reports, counters);
    Ok(())
}

fn refresh_next_hops(resolver: &Resolver, daemons: &[SocketAddrV4], next_hops: &[NextHop]) {
    for (&daemon, hop) in daemons.iter().zip(next_hops) {
        // A failing probe only means the daemon is unreachable right now.
        let known = hop.get();
        let mac = if known.is_some() {
            resolver.lookup(*daemon.ip())
        } else {
            resolver.resolve(daemon)
        };
        if let Ok(mac) = mac {
            if mac.is_some() && mac != known {
                println!(
                    "dispatchd: daemon {} next hop {}",
                    daemon,
                    fmt_mac(mac.unwrap_or_default())
                );
            }
            if mac.is_some() {
                hop.set(mac);
            }
        }
    }
}

fn print_final_stats(stats: &[Arc<WorkerStats>], reports: &[WorkerReport], xdp: Option<[u64; 6]>) {
    println!("dispatchd: final statistics");
    for (q, s) in stats.iter().enumerate() {
        println!(
            "  worker {q}: rx_front {} rx_back {} tx_back {} tx_front {} new_flows {} flows {} invalid {} dropped {} batches {} wakeups {} sleeps {}",
            s.rx_front.get(), s.rx_back.get(), s.tx_back.get(), s.tx_front.get(), s.new_flows.get(),
            s.flows.get(), s.invalid_total(), s.dropped_total(), s.batches.get(), s.wakeups.get(), s.sleeps.get()
        );
        for r in DropReason::ALL {
            let n = s.invalid[r.index()].get();
            if n > 0 {
                println!("    invalid {}: {n}", r.as_str());
            }
        }
        for d in WorkerDrop::ALL {
            let n = s.dropped[d as usize].get();
            if n > 0 {
                println!("    dropped {}: {n}", d.as_str());
            }
        }
    }
    for r in reports {
        let h = &r.latency_ns;
        if h.is_empty() {
            continue;
        }
        println!(
            "  worker {} per-packet ns: p50 {} p90 {} p99 {} p99.9 {} p99.99 {} max {} (n={}); batch p50 {} max {}",
            r.queue,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.value_at_quantile(0.9999),
            h.max(),
            h.len(),
            r.batch_sizes.value_at_quantile(0.5),
            r.batch_sizes.max()
        );
    }
    if let Some(c) = xdp {
        let line: Vec<String> = COUNTER_NAMES
            .iter()
            .zip(c)
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        println!("  xdp: {}", line.join(" "));
    }
}
