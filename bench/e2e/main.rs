//! dispatchd-bench: the end-to-end benchmark. Compares, in one run on the DESIGN.md
//! topology, four ways to get a client's TCP to the daemons:
//!
//! * direct:    the client talks to one daemon's own address, routed by the
//!   dispatcher namespace's kernel (no NAT): the floor of the topology;
//! * nftables:  the kernel's own load balancer, `dnat to numgen inc mod 4 map`;
//! * dispatchd: XDP steering + one AF_XDP worker pinned to core 1;
//! * bare:      dispatchd's sockets and rings with no parsing or rewriting
//!   (`--bare-forwarder`): the ceiling of the substrate (packet rate only).
//!
//! Workloads: new connections per second, requests per second on persistent
//! connections, bulk throughput, forwarded packets per second from an AF_XDP
//! packet generator (`dispatchd-bench pktgen`). Writes `bench/results/e2e-<ts>.md`,
//! `.json`, `-latency.svg` and `latest.md`.
//!
//! Needs root. Run through `scripts/bench.sh`.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod pktgen;
mod report;

use report::{Results, VARIANTS};

const VIP: &str = "198.18.0.100:80";
const DIRECT: &str = "198.19.0.11:8080";
const DAEMONS: usize = 4;
/// Client ports of the packet generator: below the ephemeral range the kernel
/// clients use, and dropped at the daemons' ingress so nothing answers them.
const PKTGEN_PORT: u16 = 2000;

#[derive(Parser)]
#[command(name = "dispatchd-bench")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up the topology, run every variant and workload, write the results.
    Run(RunOpts),
    /// The AF_XDP packet generator (run inside the client namespace).
    Pktgen(pktgen::PktgenArgs),
    /// Draw the latency SVG of a results JSON again (to stdout).
    #[command(hide = true)]
    Svg { json: PathBuf },
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Warm-up seconds before each measured workload.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Smoke test: 3 s per workload, 1 s warm-up (about a minute in all).
    #[arg(long)]
    quick: bool,
    /// Client threads of the new-connections workload.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Persistent connections of the requests-per-second workload.
    #[arg(long, default_value_t = 16)]
    rr_connections: usize,
    /// 5-tuples of the packet generator.
    #[arg(long, default_value_t = 1024)]
    tuples: u16,
    /// Variants to run (comma-separated subset of direct,nftables,dispatchd,bare).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nftables,dispatchd,bare"
    )]
    variants: Vec<String>,
    /// Record `perf record -a -e cpu-clock` during the rr and pps workloads of
    /// nftables and dispatchd and write the top symbols next to the results.
    #[arg(long)]
    perf: bool,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    out_dir: PathBuf,
    /// Directory holding dispatchd and dispatchd-testkit (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Namespace prefix (default: db<pid>).
    #[arg(long)]
    prefix: Option<String>,
}

/// Set by SIGINT/SIGTERM: the run stops after the current workload and tears down.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(opts) => run(opts),
        Cmd::Pktgen(args) => pktgen::run(args),
        Cmd::Svg { json } => fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))
            .and_then(|text| {
                Results::from_json_latencies(&text).context("no latency_us section in the JSON")
            })
            .map(|r| print!("{}", r.svg())),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatchd-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Processes and guards

fn sh(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on our own child's pid.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(self.child.id() as i32, libc::SIGTERM)
            };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
            eprintln!("dispatchd-bench: {} ignored SIGTERM; killing it", self.name);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The three namespaces; deleted on drop, also on error or panic.
struct Topology {
    prefix: String,
    script: PathBuf,
}

impl Topology {
    fn up(prefix: &str) -> Result<Topology> {
        let script = PathBuf::from("scripts/topology.sh");
        let topo = Topology {
            prefix: prefix.to_owned(),
            script,
        };
        let status = Command::new(&topo.script)
            .args(["up", prefix, &DAEMONS.to_string(), "1"])
            .status()
            .context("running scripts/topology.sh")?;
        if !status.success() {
            bail!("scripts/topology.sh up {prefix} failed");
        }
        Ok(topo)
    }
    fn ns(&self, which: char) -> String {
        format!("{}{which}", self.prefix)
    }
    fn exec(&self, which: char, args: &[&str]) -> Result<String> {
        let ns = self.ns(which);
        let mut all = vec!["netns", "exec", &ns];
        all.extend_from_slice(args);
        sh("ip", &all)
    }
    fn cmd(&self, which: char, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(which)]).arg(program);
        c
    }
    fn sysctl(&self, which: char, kv: &str) -> Result<()> {
        self.exec(which, &["sysctl", "-qw", kv]).map(drop)
    }
    fn nft(&self, which: char, ruleset: &str) -> Result<()> {
        let mut child = self
            .cmd(which, Path::new("nft"))
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft")?;
        use std::io::Write;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "nft -f in {}: {}\n{ruleset}",
                self.ns(which),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .args(["down", &self.prefix])
            .status();
    }
}

/// Undoes a variant's set-up (nft tables, sysctls) when dropped.
struct Undo {
    prefix: String,
    steps: Vec<(char, Vec<String>)>,
}

impl Drop for Undo {
    fn drop(&mut self) {
        for (which, args) in self.steps.iter().rev() {
            let ns = format!("{}{which}", self.prefix);
            let mut all = vec!["netns", "exec", &ns];
            all.extend(args.iter().map(String::as_str));
            if let Err(e) = sh("ip", &all) {
                eprintln!("dispatchd-bench: undo: {e:#}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing the testkit's key=value lines

fn field(out: &str, line_prefix: &str, key: &str) -> Option<f64> {
    out.lines()
        .filter(|l| line_prefix.is_empty() || l.starts_with(line_prefix))
        .flat_map(|l| l.split_whitespace())
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// `latency_us p50=.. p90=.. p99=.. p99.9=.. max=..` as [p50, p90, p99, p99.9, max].
fn latency(out: &str) -> Option<[f64; 5]> {
    let l = |k| field(out, "latency_us", k);
    Some([l("p50")?, l("p90")?, l("p99")?, l("p99.9")?, l("max")?])
}

// ---------------------------------------------------------------------------
// What else the machine was doing

/// CPU accounting at one instant: the whole machine's busy time, this benchmark's
/// own processes' time, and every live process's time by pid.
struct Load {
    at: Instant,
    busy_s: f64,
    ours_s: f64,
    procs: BTreeMap<u32, (String, f64)>,
}

const HZ: f64 = 100.0;

fn proc_stat(pid: &str) -> Option<(String, u32, f64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (l, r) = (text.find('(')?, text.rfind(')')?);
    let comm = text[l + 1..r].to_owned();
    let f: Vec<&str> = text[r + 2..].split_whitespace().collect();
    // After the comm: state ppid pgrp session tty tpgid flags minflt cminflt
    // majflt cmajflt utime stime; flags bit 0x200000 = kernel thread.
    let flags: u64 = f.get(6)?.parse().ok()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    let kthread = flags & 0x0020_0000 != 0;
    Some((comm, u32::from(kthread), ticks / HZ))
}

fn rusage_s(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage, which lives for the call.
    #[allow(unsafe_code)]
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Load {
    fn sample(server: u32) -> Load {
        let busy_s = fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| {
                let v: Vec<f64> = t
                    .lines()
                    .next()?
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                Some(
                    [0, 1, 2, 5, 6, 7]
                        .iter()
                        .filter_map(|&i| v.get(i))
                        .sum::<f64>()
                        / HZ,
                )
            })
            .unwrap_or(0.0);
        let mut procs = BTreeMap::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Ok(pid) = name.parse::<u32>() else {
                    continue;
                };
                if let Some((comm, kthread, cpu)) = proc_stat(&name) {
                    if kthread == 0 {
                        procs.insert(pid, (comm, cpu));
                    }
                }
            }
        }
        let server_s = procs.get(&server).map_or(0.0, |p| p.1);
        Load {
            at: Instant::now(),
            busy_s,
            ours_s: rusage_s(libc::RUSAGE_SELF) + rusage_s(libc::RUSAGE_CHILDREN) + server_s,
            procs,
        }
    }

    /// Cores' worth of CPU spent outside this benchmark's processes since `self`
    /// (an estimate: kernel threads doing the benchmark's packet work count as
    /// outside), and the busiest outside processes alive at both samples.
    fn outside_since(&self, server: u32) -> (f64, Vec<String>) {
        let now = Load::sample(server);
        let wall = now.at.duration_since(self.at).as_secs_f64().max(1e-3);
        let outside = ((now.busy_s - self.busy_s) - (now.ours_s - self.ours_s)) / wall;
        let mine = ["dispatchd", "dispatchd-testk", "dispatchd-bench", "perf"];
        let mut top: Vec<(f64, String)> = now
            .procs
            .iter()
            .filter(|(pid, (comm, _))| **pid != server && !mine.contains(&comm.as_str()))
            .filter_map(|(pid, (comm, cpu))| {
                let before = self.procs.get(pid).map_or(0.0, |p| p.1);
                let cores = (cpu - before) / wall;
                (cores >= 0.05).then(|| (cores, comm.clone()))
            })
            .collect();
        top.sort_by(|a, b| b.0.total_cmp(&a.0));
        let names = top
            .iter()
            .take(4)
            .map(|(c, n)| format!("{n} {c:.2}"))
            .collect();
        (outside.max(0.0), names)
    }
}

// ---------------------------------------------------------------------------
// The run

/// A system-wide `perf record` running over one measured window.
struct Perf {
    proc: Proc,
    data: PathBuf,
    report: PathBuf,
}

struct Bench {
    opts: RunOpts,
    topo: Topology,
    testkit: PathBuf,
    dispatchd: PathBuf,
    me: PathBuf,
    /// `/proc/<server pid>/root/...`: s0's rx counter as seen from the daemon
    /// namespace, readable without a process per read.
    s0_rx: PathBuf,
    c0_mac: String,
    l0_mac: String,
    server_pid: u32,
    results: Results,
    stamp: String,
}

fn run(mut opts: RunOpts) -> Result<()> {
    if opts.quick {
        opts.seconds = 3.0;
        opts.warmup = 1.0;
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t)
        };
    }
    if sh("id", &["-u"])?.trim() != "0" {
        bail!("needs root (network namespaces, XDP, AF_XDP); run scripts/bench.sh as root");
    }
    for v in &opts.variants {
        if !VARIANTS.contains(&v.as_str()) {
            bail!("unknown variant {v}");
        }
    }
    let me = std::env::current_exe()?;
    let bin_dir = opts
        .bin_dir
        .clone()
        .unwrap_or_else(|| me.parent().map(Path::to_path_buf).unwrap_or_default());
    let testkit = bin_dir.join("dispatchd-testkit");
    let dispatchd = bin_dir.join("dispatchd");
    for b in [&testkit, &dispatchd] {
        if !b.exists() {
            bail!(
                "{} is missing; build with cargo build --release --bins",
                b.display()
            );
        }
    }
    let prefix = opts
        .prefix
        .clone()
        .unwrap_or_else(|| format!("db{}", std::process::id() % 100_000));
    let stamp = sh("date", &["-u", "+%Y%m%dT%H%M%SZ"])?.trim().to_owned();

    let topo = Topology::up(&prefix)?;
    let c0_mac = topo
        .exec('c', &["cat", "/sys/class/net/c0/address"])?
        .trim()
        .to_owned();
    let l0_mac = topo
        .exec('d', &["cat", "/sys/class/net/l0/address"])?
        .trim()
        .to_owned();
    // Clients open many short connections: a wide port range, and TIME_WAIT
    // ports reused (the client closes first).
    topo.sysctl('c', "net.ipv4.ip_local_port_range=10000 65000")?;
    topo.sysctl('c', "net.ipv4.tcp_tw_reuse=1")?;
    topo.sysctl('s', "net.core.somaxconn=4096")?;
    // The generator's frames are counted on arrival at s0 (the veth counts before
    // the ingress hook) and dropped there, so the daemons answer none of them
    // (a SYN-ACK or RST would end dispatchd's records).
    topo.nft(
        's',
        &format!(
            "table netdev dbench {{\n chain in {{\n type filter hook ingress device \"s0\" priority 0; policy accept;\n \
             ip saddr 198.18.0.2 tcp sport {PKTGEN_PORT}-{} drop\n }}\n}}\n",
            PKTGEN_PORT + opts.tuples - 1
        ),
    )?;

    let mut serve = topo.cmd('s', &testkit);
    serve.arg("serve");
    for i in 0..DAEMONS {
        serve.args(["--listen", &format!("198.19.0.{}:8080", 11 + i)]);
    }
    let server = spawn_waiting(serve, "serving", "testkit serve")?;
    let s0_rx = PathBuf::from(format!(
        "/proc/{}/root/sys/class/net/s0/statistics/rx_packets",
        server.child.id()
    ));

    let mut bench = Bench {
        results: Results::new(&opts, &stamp),
        opts,
        topo,
        testkit,
        dispatchd,
        me,
        s0_rx,
        c0_mac,
        l0_mac,
        server_pid: server.child.id(),
        stamp,
    };
    bench.check_counter()?;
    let variants = bench.opts.variants.clone();
    for v in VARIANTS {
        if variants.iter().any(|x| x == v) {
            interrupted()?;
            eprintln!("== {v}");
            if let Err(e) = bench.variant(v) {
                eprintln!("dispatchd-bench: variant {v}: {e:#}");
                bench.results.note(format!("variant {v} failed: {e:#}"));
            }
        }
    }
    drop(server);
    bench.write()
}

fn spawn_waiting(mut cmd: Command, ready: &str, name: &str) -> Result<Proc> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut proc = Proc {
        child,
        name: name.into(),
    };
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break,
            Some(Ok(_)) => {}
            _ => {
                proc.stop();
                bail!("{name} exited before saying {ready:?}");
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("{name} did not say {ready:?} within 10 s");
        }
    }
    // Keep draining its output so it never blocks on a full pipe.
    thread::spawn(move || for _ in lines {});
    Ok(proc)
}

impl Bench {
    fn check_counter(&mut self) -> Result<()> {
        if self.rx().is_err() {
            // Fall back to a process per read: a few ms of skew on each window.
            eprintln!("dispatchd-bench: reading s0's counter through ip netns exec");
            self.s0_rx = PathBuf::new();
        }
        self.rx().map(drop)
    }

    fn rx(&self) -> Result<u64> {
        let text = if self.s0_rx.as_os_str().is_empty() {
            self.topo
                .exec('s', &["cat", "/sys/class/net/s0/statistics/rx_packets"])?
        } else {
            fs::read_to_string(&self.s0_rx)
                .with_context(|| format!("reading {}", self.s0_rx.display()))?
        };
        text.trim().parse().context("s0 rx_packets")
    }

    fn variant(&mut self, v: &'static str) -> Result<()> {
        let load = Load::sample(self.server_pid);
        let r = self.variant_inner(v);
        let (outside, top) = load.outside_since(self.server_pid);
        eprintln!(
            "   CPU outside the benchmark: {outside:.2} cores ({})",
            top.join(", ")
        );
        self.results.set("outside_cpu", v, outside);
        if !top.is_empty() {
            self.results.note(format!(
                "{v}: busiest processes outside the benchmark (cores): {}",
                top.join(", ")
            ));
        }
        r
    }

    fn variant_inner(&mut self, v: &'static str) -> Result<()> {
        let mut undo = Undo {
            prefix: self.topo.prefix.clone(),
            steps: Vec::new(),
        };
        let mut lb = None;
        let socket = format!("/tmp/dispatchd-bench-{}.sock", self.topo.prefix);
        match v {
            "direct" | "nftables" => {
                self.topo.sysctl('d', "net.ipv4.ip_forward=1")?;
                // ip_forward=0 turns forwarding off on every interface; dispatchd
                // needs it back on l0 (its reply path's FIB lookup).
                undo.steps.push((
                    'd',
                    ["sysctl", "-qw", "net.ipv4.conf.l0.forwarding=1"]
                        .map(String::from)
                        .to_vec(),
                ));
                undo.steps.push((
                    'd',
                    ["sysctl", "-qw", "net.ipv4.ip_forward=0"]
                        .map(String::from)
                        .to_vec(),
                ));
                if v == "nftables" {
                    let map: Vec<String> = (0..DAEMONS)
                        .map(|i| format!("{i} : 198.19.0.{} . 8080", 11 + i))
                        .collect();
                    self.topo.nft(
                        'd',
                        &format!(
                            "table ip dbench {{\n chain pre {{\n type nat hook prerouting priority dstnat; policy accept;\n \
                             ip daddr 198.18.0.100 tcp dport 80 dnat ip to numgen inc mod {DAEMONS} map {{ {} }}\n }}\n}}\n",
                            map.join(", ")
                        ),
                    )?;
                    undo.steps.push((
                        'd',
                        ["nft", "delete", "table", "ip", "dbench"]
                            .map(String::from)
                            .to_vec(),
                    ));
                }
            }
            _ => {
                let mut cmd = self.topo.cmd('d', &self.dispatchd);
                cmd.args([
                    "run",
                    "--front",
                    "l0",
                    "--back",
                    "l1",
                    "--service",
                    VIP,
                    "--cores",
                    "1",
                    "--control-socket",
                    &socket,
                    // The generator's tuples stay half-open (nothing answers
                    // their SYN); keep their records for the whole run.
                    "--syn-timeout-ms",
                    "600000",
                ]);
                for i in 0..DAEMONS {
                    cmd.args(["--backend", &format!("198.19.0.{}:8080", 11 + i)]);
                }
                if v == "bare" {
                    cmd.arg("--bare-forwarder");
                }
                lb = Some(spawn_waiting(cmd, "dispatchd: running", "dispatchd")?);
            }
        }
        let to = if v == "direct" { DIRECT } else { VIP };
        // A failed workload is reported and the run goes on.
        if v != "bare" {
            let r = interrupted().and_then(|()| self.connections(v, to));
            self.attempt(v, "connections", r);
            let r = interrupted().and_then(|()| self.rr(v, to));
            self.attempt(v, "rr", r);
            let r = interrupted().and_then(|()| self.bulk(v, to));
            self.attempt(v, "bulk", r);
        }
        let r = interrupted().and_then(|()| self.pps(v, to));
        self.attempt(v, "pps", r);
        if lb.is_some() {
            match self.topo.exec(
                'd',
                &[
                    self.dispatchd.to_str().unwrap_or("dispatchd"),
                    "ctl",
                    "--socket",
                    &socket,
                    "--json",
                    "stats",
                ],
            ) {
                Ok(json) => {
                    // After the generator only its half-open tuples keep records
                    // (the connections' ones linger 2 s after their FINs).
                    if let ("dispatchd", Some(n)) = (v, report::json_number(&json, "connections")) {
                        self.results.note(format!(
                            "{v}: records at the end (the generator's tuples, {} sent SYNs): {n}",
                            self.opts.tuples
                        ));
                    }
                    self.results.stats_json(v, &json)
                }
                Err(e) => self.results.note(format!("{v}: ctl stats: {e:#}")),
            }
        }
        drop(lb);
        drop(undo);
        Ok(())
    }

    fn attempt(&mut self, v: &str, name: &str, r: Result<()>) {
        if INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Err(e) = r {
            eprintln!("dispatchd-bench: {v} {name}: {e:#}");
            self.results.note(format!("{v} {name} failed: {e:#}"));
        }
    }

    fn testkit(&self, args: &[&str]) -> Result<String> {
        let out = self
            .topo
            .cmd('c', &self.testkit)
            .args(args)
            .output()
            .context("running dispatchd-testkit")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "testkit {} failed: {}\n{}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim(),
                text.lines()
                    .filter(|l| l.starts_with("error"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(text)
    }

    fn connections(&mut self, v: &'static str, to: &str) -> Result<()> {
        let c = self.opts.concurrency.to_string();
        let warm = self.testkit(&[
            "connect",
            "--to",
            to,
            "--connections",
            "500",
            "--concurrency",
            &c,
            "--payload",
            "64",
        ])?;
        // The warm-up's rate sizes the measured run to last about --seconds.
        let rate = field(&warm, "ok=", "rate").unwrap_or(1000.0);
        let n = ((rate * self.opts.seconds).clamp(500.0, 500_000.0) as usize).to_string();
        let out = self.testkit(&[
            "connect",
            "--to",
            to,
            "--connections",
            &n,
            "--concurrency",
            &c,
            "--payload",
            "64",
        ])?;
        let rate = field(&out, "ok=", "rate").context("connect printed no rate")?;
        let lat = latency(&out).context("connect printed no latency")?;
        eprintln!(
            "   connections: {rate:.0}/s p50={}us p99={}us",
            lat[0], lat[2]
        );
        self.results.set("conn_rate", v, rate);
        self.results.latency("connections", v, lat);
        Ok(())
    }

    fn rr(&mut self, v: &'static str, to: &str) -> Result<()> {
        let k = self.opts.rr_connections.to_string();
        let (w, s) = (self.opts.warmup.to_string(), self.opts.seconds.to_string());
        self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &w])?;
        let perf = self.perf_start(v, "rr")?;
        let out = self.testkit(&["rr", "--to", to, "--connections", &k, "--seconds", &s])?;
        self.perf_finish(perf)?;
        let rate = field(&out, "requests=", "rate").context("rr printed no rate")?;
        let lat = latency(&out).context("rr printed no latency")?;
        eprintln!("   rr: {rate:.0}/s p50={}us p99={}us", lat[0], lat[2]);
        self.results.set("rr_rate", v, rate);
        self.results.latency("rr", v, lat);
        Ok(())
    }

    fn bulk(&mut self, v: &'static str, to: &str) -> Result<()> {
        let warm = self.testkit(&["bulk", "--to", to, "--bytes", "4000000"])?;
        let mbit = field(&warm, "", "mbit_per_s").unwrap_or(1000.0);
        // Both directions carry the bytes: size it to last about --seconds.
        let bytes = (mbit * 1e6 / 8.0 / 2.0 * self.opts.seconds).clamp(4e6, 256e6) as usize;
        let out = self.testkit(&["bulk", "--to", to, "--bytes", &bytes.to_string()])?;
        let mbit = field(&out, "", "mbit_per_s").context("bulk printed no mbit_per_s")?;
        eprintln!("   bulk: {mbit:.0} Mbit/s ({bytes} bytes each way)");
        self.results.set("bulk_mbit", v, mbit);
        Ok(())
    }

    fn pps(&mut self, v: &'static str, to: &str) -> Result<()> {
        let (ip, port) = to.split_once(':').context("address")?;
        let mut cmd = self.topo.cmd('c', &self.me);
        cmd.args([
            "pktgen",
            "--iface",
            "c0",
            "--src-mac",
            &self.c0_mac,
            "--dst-mac",
            &self.l0_mac,
            "--src-ip",
            "198.18.0.2",
            "--dst-ip",
            ip,
            "--dst-port",
            port,
            "--base-port",
            &PKTGEN_PORT.to_string(),
            "--tuples",
            &self.opts.tuples.to_string(),
            "--warmup",
            &self.opts.warmup.to_string(),
            "--seconds",
            &self.opts.seconds.to_string(),
            "--core",
            "0",
        ]);
        if v == "dispatchd" {
            cmd.arg("--syn-first");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting pktgen")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut proc = Proc {
            child,
            name: "pktgen".into(),
        };
        let mut lines = BufReader::new(stdout).lines();
        let mut window = None;
        let mut out = String::new();
        let mut perf = None;
        for line in lines.by_ref() {
            let line = line?;
            match line.as_str() {
                "start" => {
                    window = Some((self.rx()?, Instant::now()));
                    perf = self.perf_start(v, "pps")?;
                }
                "stop" => {
                    let (rx0, t0) = window.context("stop before start")?;
                    let (rx1, secs) = (self.rx()?, t0.elapsed().as_secs_f64());
                    window = Some((rx1 - rx0, t0));
                    out.push_str(&format!("received={} rx_seconds={secs:.3}\n", rx1 - rx0));
                }
                _ => {
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        }
        let status = proc.child.wait()?;
        self.perf_finish(perf)?;
        if !status.success() {
            let mut err = String::new();
            if let Some(mut e) = proc.child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            bail!("pktgen failed: {}", err.trim());
        }
        let sent = field(&out, "sent=", "pps").context("pktgen printed no pps")?;
        let received = field(&out, "received=", "received").context("no received count")?;
        let secs = field(&out, "received=", "rx_seconds").context("no rx window")?;
        let rx_pps = received / secs;
        eprintln!("   pps: sent {sent:.0}/s, received at s0 {rx_pps:.0}/s");
        self.results.set("pps_sent", v, sent);
        self.results.set("pps_received", v, rx_pps);
        Ok(())
    }

    fn perf_start(&self, v: &str, workload: &str) -> Result<Option<Perf>> {
        if !self.opts.perf || !(v == "dispatchd" || v == "nftables") {
            return Ok(None);
        }
        fs::create_dir_all(&self.opts.out_dir)?;
        let data = std::env::temp_dir().join(format!("dispatchd-bench-{v}-{workload}.data"));
        let child = Command::new("perf")
            .args(["record", "-a", "-e", "cpu-clock", "-F", "2000", "-g", "-o"])
            .arg(&data)
            .args(["--", "sleep", &(self.opts.seconds * 0.8).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting perf record")?;
        let report = self
            .opts
            .out_dir
            .join(format!("e2e-{}-perf-{v}-{workload}.txt", self.stamp));
        Ok(Some(Perf {
            proc: Proc {
                child,
                name: "perf".into(),
            },
            data,
            report,
        }))
    }

    fn perf_finish(&mut self, perf: Option<Perf>) -> Result<()> {
        let Some(Perf {
            mut proc,
            data,
            report,
        }) = perf
        else {
            return Ok(());
        };
        let _ = proc.child.wait();
        let mut text = String::new();
        let views: [(&str, &[&str]); 4] = [
            ("--sort cpu", &["--sort", "cpu"]),
            ("--sort comm,dso", &["--sort", "comm,dso"]),
            ("--sort sym", &["--sort", "sym"]),
            (
                "--comms dispatchd-q0 --sort dso,sym (the worker thread alone)",
                &["--comms", "dispatchd-q0", "--sort", "dso,sym"],
            ),
        ];
        for (sort, args) in views {
            let out = Command::new("perf")
                .args([
                    "report",
                    "--no-children",
                    "--stdio",
                    "-g",
                    "none",
                    "--percent-limit",
                    "0.5",
                ])
                .args(args)
                .arg("-i")
                .arg(&data)
                .output()
                .context("perf report")?;
            let _ = writeln!(text, "### perf report {sort}\n");
            text.push_str(
                &String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .take(60)
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            text.push_str("\n\n");
        }
        fs::write(&report, text)?;
        self.results.note(format!(
            "perf profile: {} (data with call graphs: {})",
            report.display(),
            data.display()
        ));
        Ok(())
    }

    fn write(&mut self) -> Result<()> {
        let dir = &self.opts.out_dir;
        fs::create_dir_all(dir)?;
        let base = dir.join(format!("e2e-{}", self.stamp));
        let md = self.results.markdown();
        fs::write(base.with_extension("md"), &md)?;
        fs::write(dir.join("latest.md"), &md)?;
        fs::write(base.with_extension("json"), self.results.json())?;
        let svg = dir.join(format!("e2e-{}-latency.svg", self.stamp));
        fs::write(&svg, self.results.svg())?;
        println!("{md}");
        println!(
            "wrote {}, {}, {} and {}",
            base.with_extension("md").display(),
            base.with_extension("json").display(),
            svg.display(),
            dir.join("latest.md").display()
        );
        Ok(())
    }
}
