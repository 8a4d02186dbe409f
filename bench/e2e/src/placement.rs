//! Where a mode puts the work. Dedicated: clients, daemons and the packet
//! generator on core 0; each variant forwards on core 1 (dispatchd's worker by
//! `--cores 1`, the kernel variants by RPS on the dispatcher's interfaces), and
//! the clients' and daemons' own receive stays on core 0 (RPS on c0 and s0).
//! Shared: nothing pinned but dispatchd's worker and the generator.
//!
//! On veth, a frame's receive runs in the sender's context unless NAPI or RPS
//! moves it: dispatchd's XDP program and copy-mode receive would run on the
//! clients' core. Its interfaces have NAPI (XDP attached), so in dedicated mode
//! they are switched to threaded NAPI and the kthreads pinned to core 1.
use std::{collections::BTreeSet, fs, process::Command};

use anyhow::{bail, Context, Result};

use dispatchd_testkit::Topology;

use crate::{
    cli::Mode,
    setup::{sh, Undo},
};

pub const CLIENT_CORE: usize = 0;
pub const FORWARDING_CORE: usize = 1;

/// RPS masks: the dispatcher's interfaces to the forwarding core, the client's
/// and daemons' to theirs.
fn rps(t: &Topology) -> [(String, &'static str, String); 4] {
    let (fwd, ends) = (
        format!("{:x}", 1u32 << FORWARDING_CORE),
        format!("{:x}", 1u32 << CLIENT_CORE),
    );
    [
        (t.dispatcher(), "l0", fwd.clone()),
        (t.dispatcher(), "l1", fwd),
        (t.client(), "c0", ends.clone()),
        (t.daemons(), "s0", ends),
    ]
}

/// Sets the mode's placement up, the daemons' servers (`server_pids`) pinned
/// with the clients; undone when the returned value drops.
pub fn enter(topo: &Topology, server_pids: &[u32], mode: Mode) -> Result<Undo> {
    let mut undo = Undo::default();
    if mode == Mode::Shared {
        return Ok(undo);
    }
    let all = format!("0-{}", num_cores().saturating_sub(1));
    let daemons = topo.daemons();
    for server in server_pids.iter().map(u32::to_string) {
        let pin = |cores: &str| topo.exec(&daemons, "taskset", &["-a", "-p", "-c", cores, &server]);
        pin(&CLIENT_CORE.to_string()).context("pinning the daemons")?;
        undo.push(&daemons, "taskset", &["-a", "-p", "-c", &all, &server]);
    }
    for (ns, dev, mask) in rps(topo) {
        // Every receive queue (a run with --queues has more than one).
        let paths = format!("/sys/class/net/{dev}/queues/rx-*/rps_cpus");
        sh(
            topo,
            &ns,
            &format!("for q in {paths}; do echo {mask} > $q; done"),
        )?;
        undo.push(
            &ns,
            "sh",
            &["-c", &format!("for q in {paths}; do echo 0 > $q; done")],
        );
    }
    Ok(undo)
}

pub fn num_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// NAPI kthreads of the dispatcher's interfaces (`napi/l0-<id>`), by pid.
fn napi_kthreads() -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let Ok(dir) = fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            if comm.starts_with("napi/l0-") || comm.starts_with("napi/l1-") {
                found.insert(pid);
            }
        }
    }
    found
}

/// Before dispatchd starts: the kthreads that are not its interfaces'.
pub fn napi_before() -> BTreeSet<u32> {
    napi_kthreads()
}

/// After dispatchd attached (its XDP program gives the veths NAPI): threaded
/// NAPI on l0 and l1, the kthreads pinned to the forwarding core (at
/// SCHED_FIFO 50 with `fifo`, --napi-fifo). Their names.
pub fn thread_napi(
    topo: &Topology,
    fifo: bool,
    before: &BTreeSet<u32>,
    undo: &mut Undo,
) -> Result<String> {
    let ns = topo.dispatcher();
    for dev in ["l0", "l1"] {
        let path = format!("/sys/class/net/{dev}/threaded");
        sh(topo, &ns, &format!("echo 1 > {path}"))?;
        // Without NAPI (XDP detached) the write fails: nothing to undo then.
        undo.push(
            &ns,
            "sh",
            &["-c", &format!("echo 0 > {path} 2>/dev/null; true")],
        );
    }
    let new: Vec<u32> = napi_kthreads().difference(before).copied().collect();
    if new.is_empty() {
        bail!("threaded NAPI on l0/l1 made no napi/ kthread");
    }
    let mut names = Vec::new();
    for pid in new {
        let out = Command::new("taskset")
            .args(["-p", "-c", &FORWARDING_CORE.to_string(), &pid.to_string()])
            .output()
            .context("taskset")?;
        if !out.status.success() {
            bail!(
                "pinning napi kthread {pid}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // --napi-fifo: as a threaded IRQ handler runs (SCHED_FIFO 50),
        // preempting a polling worker at once, where a SCHED_OTHER kthread
        // waits for the scheduler.
        if fifo {
            let out = Command::new("chrt")
                .args(["-f", "-p", "50", &pid.to_string()])
                .output()
                .context("chrt")?;
            if !out.status.success() {
                bail!(
                    "chrt -f 50 on napi kthread {pid}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        names.push(comm.trim().to_owned());
    }
    Ok(names.join(", "))
}
