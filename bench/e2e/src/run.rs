//! One run: the topology and the echo servers once, then each variant's set-up,
//! workloads and tear-down in turn, and the results written at the end.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::{
    daemon_addr, ensure_root, meminfo, output_of, Proc, Programs, Topology, VIP,
};

use crate::{
    cli::{Mode, RunOpts, RR4_CONNECTIONS, WORKLOADS},
    load::Load,
    placement,
    report::{Results, VARIANTS},
    setup::{nft, sysctl, Undo},
};

const DIRECT: &str = "198.19.0.11:8080";
const DAEMONS: usize = 4;
/// Client ports of the packet generator: below the ephemeral range the kernel
/// clients use, and dropped at the daemons' ingress so nothing answers them.
pub const PKTGEN_PORT: u16 = 2000;
/// The named nftables counter of the generator's frames arriving at s0.
const PKTGEN_COUNTER: &str = "pktgen";
/// The stream workload's iperf3 server: one daemon, behind a service of its own
/// on the VIP (iperf3's control and data connections must meet the same server).
pub const STREAM_DAEMON: &str = "198.19.0.11";
pub const STREAM_PORT: u16 = 5201;

/// Set by SIGINT/SIGTERM: the run stops after the current workload and tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub struct Bench {
    pub opts: RunOpts,
    pub topo: Topology,
    /// This binary, run again as the packet generator.
    pub me: PathBuf,
    /// `/proc/<server pid>/root/...`: s0's rx counter as seen from the daemon
    /// namespace, readable without a process per read.
    s0_rx: PathBuf,
    pub c0_mac: String,
    pub l0_mac: String,
    server_pid: u32,
    /// Every daemon-side server (the testkit's, iperf3's): pinned in dedicated mode.
    server_pids: Vec<u32>,
    pub mode: Mode,
    pub results: Results,
    pub stamp: String,
}

pub fn run(mut opts: RunOpts) -> Result<()> {
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
    ensure_root().context("run scripts/bench.sh as root")?;
    for v in &opts.variants {
        if !VARIANTS.contains(&v.as_str()) {
            bail!("unknown variant {v}");
        }
    }
    for w in &opts.workloads {
        if !WORKLOADS.contains(&w.as_str()) {
            bail!("unknown workload {w}");
        }
    }
    let me = std::env::current_exe()?;
    let bin_dir = opts
        .bin_dir
        .clone()
        .unwrap_or_else(|| me.parent().map(Path::to_path_buf).unwrap_or_default());
    let programs = Programs {
        dispatchd: bin_dir.join("dispatchd"),
        testkit: bin_dir.join("dispatchd-testkit"),
    };
    for b in [&programs.testkit, &programs.dispatchd] {
        if !b.exists() {
            bail!(
                "{} is missing; build with cargo build --release --workspace --bins",
                b.display()
            );
        }
    }
    let prefix = opts
        .prefix
        .clone()
        .unwrap_or_else(|| format!("db{}", std::process::id() % 100_000));
    let stamp = output_of(Command::new("date").arg("-u").arg("+%Y%m%dT%H%M%SZ"))?
        .trim()
        .to_owned();

    let topo = Topology::create(&prefix, DAEMONS, opts.queues.max(1), programs)?;
    let (client, daemons) = (topo.client(), topo.daemons());
    let c0_mac = topo.mac(&client, "c0")?;
    let l0_mac = topo.mac(&topo.dispatcher(), "l0")?;
    // scripts/topology.sh gives the clients a wide port range with TIME_WAIT
    // reuse, and the daemons deep accept queues.
    // The generator's frames are counted on arrival at s0 (the veth counts before
    // the ingress hook) and dropped there, so the daemons answer none of them
    // (a SYN-ACK or RST would end dispatchd's records). The rule's counter
    // counts the generator's frames alone: the zero-loss trials' received.
    nft(
        &topo,
        &daemons,
        &format!(
            "table netdev dbench {{\n counter {PKTGEN_COUNTER} {{ }}\n chain in {{\n type filter hook ingress device \"s0\" priority 0; policy accept;\n \
             ip saddr 198.18.0.2 tcp sport {PKTGEN_PORT}-{} counter name \"{PKTGEN_COUNTER}\" drop\n }}\n}}\n",
            PKTGEN_PORT + opts.tuples - 1
        ),
    )?;

    let mut serve = topo.cmd(&daemons, &topo.programs().testkit);
    serve.arg("serve");
    for i in 0..DAEMONS {
        serve.args(["--listen", &daemon_addr(i)]);
    }
    let server = Proc::start(serve, "serving", Duration::from_secs(10)).context("testkit serve")?;
    let mut server_pids = vec![server.pid()];
    let stream_server = if opts.workloads.iter().any(|w| w == "stream") {
        let mut cmd = topo.cmd(&daemons, "iperf3");
        let port = STREAM_PORT.to_string();
        cmd.args(["-s", "-B", STREAM_DAEMON, "-p", &port, "--forceflush"]);
        let iperf = Proc::start(cmd, "Server listening", Duration::from_secs(10))
            .context("iperf3 -s (scripts/install-deps.sh installs iperf3)")?;
        server_pids.push(iperf.pid());
        Some(iperf)
    } else {
        None
    };
    let s0_rx = PathBuf::from(format!(
        "/proc/{}/root/sys/class/net/s0/statistics/rx_packets",
        server.pid()
    ));

    let first = opts.modes.first().copied().unwrap_or(Mode::Shared);
    let mut bench = Bench {
        results: Results::new(&opts, &stamp, first),
        mode: first,
        opts,
        topo,
        me,
        s0_rx,
        c0_mac,
        l0_mac,
        server_pid: server.pid(),
        server_pids,
        stamp,
    };
    bench.check_counter()?;
    let variants = bench.opts.variants.clone();
    let mut done = Vec::new();
    for mode in bench.opts.modes.clone() {
        bench.mode = mode;
        bench.results = Results::new(&bench.opts, &bench.stamp, mode);
        let placed = placement::enter(&bench.topo, &bench.server_pids, mode)?;
        for round in 1..=bench.opts.rounds() {
            for v in VARIANTS {
                if variants.iter().any(|x| x == v) {
                    interrupted()?;
                    eprintln!("== {} round {round}: {v}", mode.name());
                    if let Err(e) = bench.variant(v) {
                        eprintln!("dispatchd-bench: variant {v}: {e:#}");
                        bench.results.note(format!("variant {v} failed: {e:#}"));
                    }
                }
            }
        }
        drop(placed);
        done.push(std::mem::replace(
            &mut bench.results,
            Results::new(&bench.opts, &bench.stamp, mode),
        ));
    }
    drop(stream_server);
    drop(server);
    bench.write(&done)
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

    /// `program` run in namespace `ns` as a client or daemon: on the clients'
    /// core in dedicated mode.
    pub fn end_cmd(&self, ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        match self.mode {
            Mode::Shared => self.topo.cmd(ns, program),
            Mode::Dedicated => {
                let mut cmd = self.topo.cmd(ns, "taskset");
                cmd.args(["-c", &placement::CLIENT_CORE.to_string()])
                    .arg(program);
                cmd
            }
        }
    }

    /// Frames received on s0 so far.
    pub fn rx(&self) -> Result<u64> {
        let text = if self.s0_rx.as_os_str().is_empty() {
            self.topo.exec(
                &self.topo.daemons(),
                "cat",
                &["/sys/class/net/s0/statistics/rx_packets"],
            )?
        } else {
            fs::read_to_string(&self.s0_rx)
                .with_context(|| format!("reading {}", self.s0_rx.display()))?
        };
        text.trim().parse().context("s0 rx_packets")
    }

    /// The generator's frames that arrived at s0 so far (its ingress rule's
    /// counter: nothing else, unlike rx_packets).
    pub fn pktgen_arrived(&self) -> Result<u64> {
        self.topo
            .nft_counter(&self.topo.daemons(), "netdev", "dbench", PKTGEN_COUNTER)
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
        let mut undo = Undo::default();
        let mut lb = None;
        let socket = format!("/tmp/dispatchd-bench-{}.sock", self.topo.prefix);
        let dispatcher = self.topo.dispatcher();
        match v {
            "direct" | "nftables" => {
                sysctl(&self.topo, &dispatcher, "net.ipv4.ip_forward=1")?;
                // ip_forward=0 turns forwarding off on every interface; dispatchd
                // needs it back on l1 (its reply path's FIB lookup), and the
                // topology has it on l0 as well.
                undo.push(
                    &dispatcher,
                    "sysctl",
                    &[
                        "-qw",
                        "net.ipv4.conf.l0.forwarding=1",
                        "net.ipv4.conf.l1.forwarding=1",
                    ],
                );
                undo.push(&dispatcher, "sysctl", &["-qw", "net.ipv4.ip_forward=0"]);
                if v == "nftables" {
                    let map: Vec<String> = (0..DAEMONS)
                        .map(|i| format!("{i} : 198.19.0.{} . 8080", 11 + i))
                        .collect();
                    nft(
                        &self.topo,
                        &dispatcher,
                        &format!(
                            "table ip dbench {{\n chain pre {{\n type nat hook prerouting priority dstnat; policy accept;\n \
                             ip daddr 198.18.0.100 tcp dport 80 dnat ip to numgen inc mod {DAEMONS} map {{ {} }}\n \
                             ip daddr 198.18.0.100 tcp dport {STREAM_PORT} dnat ip to {STREAM_DAEMON}:{STREAM_PORT}\n }}\n}}\n",
                            map.join(", ")
                        ),
                    )?;
                    undo.push(&dispatcher, "nft", &["delete", "table", "ip", "dbench"]);
                }
            }
            "dispatchd2" if self.mode == Mode::Dedicated => {
                bail!("dispatchd2 (two workers) needs both cores: shared mode only")
            }
            _ => {
                if !self.opts.umem_small_pages {
                    self.reserve_huge_pages(&mut undo)?;
                }
                let napi = placement::napi_before();
                let mut cmd = self.topo.cmd(&dispatcher, &self.topo.programs().dispatchd);
                let cores = if v == "dispatchd2" { "0,1" } else { "1" };
                cmd.args([
                    "run",
                    "--front",
                    "l0",
                    "--back",
                    "l1",
                    "--cores",
                    cores,
                    "--control-socket",
                    &socket,
                    // The generator's tuples stay half-open (nothing answers
                    // their SYN); keep their records for the whole run.
                    "--syn-timeout-ms",
                    "600000",
                ]);
                if self.opts.workloads.iter().any(|w| w == "stream") {
                    // Two services need the file (flags define one).
                    let file = format!("/tmp/dispatchd-bench-{}.toml", self.topo.prefix);
                    fs::write(&file, services_toml())?;
                    undo.push(&dispatcher, "rm", &["-f", &file]);
                    cmd.args(["--config", &file]);
                } else {
                    cmd.args(["--service", VIP]);
                    for i in 0..DAEMONS {
                        cmd.args(["--backend", &daemon_addr(i)]);
                    }
                }
                match v {
                    "bare" => {
                        cmd.arg("--bare-forwarder");
                    }
                    "bare-xdp" => {
                        // veth takes a redirected frame only into a peer with NAPI
                        // on: GRO on the client's c0 and the daemons' s0.
                        for (ns, dev) in [(self.topo.client(), "c0"), (self.topo.daemons(), "s0")] {
                            self.topo.exec(&ns, "ethtool", &["-K", dev, "gro", "on"])?;
                            undo.push(&ns, "ethtool", &["-K", dev, "gro", "off"]);
                        }
                        cmd.arg("--bare-xdp-redirect");
                    }
                    _ => {}
                }
                if self.mode == Mode::Dedicated {
                    cmd.args(["--control-core", &self.opts.control_core.to_string()]);
                    if let Some(poll) = self.opts.dedicated_poll() {
                        cmd.args(["--poll", poll]);
                    }
                }
                if let Some(more) = &self.opts.dispatchd_args {
                    cmd.args(more.split_whitespace());
                }
                if let Some(mode) = &self.opts.reply_mode {
                    cmd.args(["--reply-mode", mode]);
                }
                let started = Proc::start(cmd, "dispatchd: running", Duration::from_secs(10));
                lb = Some(started.context("starting dispatchd")?);
                if self.mode == Mode::Dedicated && !self.opts.no_threaded_napi {
                    let names =
                        placement::thread_napi(&self.topo, self.opts.napi_fifo, &napi, &mut undo)?;
                    if !self
                        .results
                        .notes
                        .iter()
                        .any(|n| n.starts_with("threaded NAPI"))
                    {
                        self.results.note(format!(
                            "threaded NAPI on the dispatcher's l0 and l1 while dispatchd runs, kthreads pinned to core {}: {names}",
                            placement::FORWARDING_CORE
                        ));
                    }
                }
            }
        }
        let to = if v == "direct" { DIRECT } else { VIP };
        let stream_to = if v == "direct" {
            STREAM_DAEMON
        } else {
            VIP.split_once(':').map_or(VIP, |(ip, _)| ip)
        };
        // A failed workload is reported and the run goes on.
        for w in WORKLOADS {
            let packets = w == "pps" || w == "frames1500";
            if !self.opts.workloads.iter().any(|x| x == w) || (v.starts_with("bare") && !packets) {
                continue;
            }
            let r = interrupted().and_then(|()| match w {
                "connections" => self.connections(v, to),
                "rr" => self.rr(v, to, "rr", self.opts.rr_connections),
                "rr4" => self.rr(v, to, "rr4", RR4_CONNECTIONS),
                "bulk" => self.bulk(v, to),
                "stream" => self.stream(v, stream_to),
                "pps" => self.pps(v, to),
                _ => self.frames1500(v, to),
            });
            self.attempt(v, w, r);
        }
        if let Some(mut lb) = lb {
            self.final_stats(v, &socket);
            // Stopped cleanly, so the next variant finds the interfaces free.
            lb.terminate(Duration::from_secs(5));
        }
        // dispatchd's undo (threaded NAPI off) needs it gone: its detach ends NAPI.
        drop(undo);
        Ok(())
    }

    /// Raises `vm.nr_hugepages` by what dispatchd's UMEMs take at its default
    /// `frames_per_queue` (a queue pair's 16384 frames of 4 KiB, however the
    /// queues are split between workers), as an operator would; `undo` puts
    /// the count back. Whether the UMEMs got them, dispatchd's statistics say
    /// (`umem_huge_page_bytes`, in the results' JSON).
    fn reserve_huge_pages(&mut self, undo: &mut Undo) -> Result<()> {
        const UMEM_PER_QUEUE_PAIR: u64 = 16384 * 4096;
        const NR_HUGEPAGES: &str = "/proc/sys/vm/nr_hugepages";
        let page = meminfo("Hugepagesize")? * 1024;
        let want = (self.opts.queues.max(1) as u64 * UMEM_PER_QUEUE_PAIR).div_ceil(page);
        let was: u64 = fs::read_to_string(NR_HUGEPAGES)?.trim().parse()?;
        let dispatcher = self.topo.dispatcher();
        undo.push(
            &dispatcher,
            "sysctl",
            &["-qw", &format!("vm.nr_hugepages={was}")],
        );
        sysctl(
            &self.topo,
            &dispatcher,
            &format!("vm.nr_hugepages={}", was + want),
        )
    }

    /// dispatchd's own statistics at the end of its variant, into the results.
    fn final_stats(&mut self, v: &str, socket: &str) {
        let dispatchd = self.topo.programs().dispatchd.clone();
        let args = ["ctl", "--socket", socket, "--json", "stats"];
        let stats = self
            .topo
            .exec(&self.topo.dispatcher(), &dispatchd, &args)
            .and_then(|json| Ok(serde_json::from_str::<serde_json::Value>(&json)?));
        match stats {
            Ok(stats) => {
                // After the generator only its half-open tuples keep records
                // (the connections' ones linger 2 s after their FINs).
                if let ("dispatchd", Some(n)) = (v, stats["connections"].as_u64()) {
                    self.results.note(format!(
                        "{v}: records at the end (the generator's tuples, {} sent SYNs): {n}",
                        self.opts.tuples
                    ));
                }
                self.results.ctl_stats(v, stats);
            }
            Err(e) => self.results.note(format!("{v}: ctl stats: {e:#}")),
        }
    }

    fn attempt(&mut self, v: &str, name: &str, r: Result<()>) {
        if INTERRUPTED.load(Ordering::Relaxed) {
            return;
        }
        if let Err(e) = r {
            eprintln!("dispatchd-bench: {v} {name}: {e:#}");
            self.results.note(format!("{v} {name} failed: {e:#}"));
        }
    }

    /// Each mode's results: `e2e-<ts>.json` (shared, as before this run had
    /// modes) or `e2e-<ts>-<mode>.json` and its latency SVG; one Markdown
    /// document with every mode's table, also as `latest.md`.
    fn write(&self, done: &[Results]) -> Result<()> {
        let dir = &self.opts.out_dir;
        fs::create_dir_all(dir)?;
        let base = format!("e2e-{}", self.stamp);
        let mut md = String::new();
        let mut wrote = Vec::new();
        for r in done {
            if !md.is_empty() {
                md.push_str("\n---\n\n");
            }
            md.push_str(&r.markdown());
            let name = match r.mode.as_str() {
                "shared" | "" => base.clone(),
                m => format!("{base}-{m}"),
            };
            let json = dir.join(format!("{name}.json"));
            fs::write(&json, r.json()?)?;
            let svg = dir.join(format!("{name}-latency.svg"));
            fs::write(&svg, r.svg())?;
            wrote.extend([json, svg]);
        }
        let md_path = dir.join(format!("{base}.md"));
        fs::write(&md_path, &md)?;
        fs::write(dir.join("latest.md"), &md)?;
        println!("{md}");
        wrote.extend([md_path, dir.join("latest.md")]);
        let names: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
        println!("wrote {}", names.join(", "));
        Ok(())
    }
}

/// The services of a run with the stream workload: the VIP's port 80 over the
/// four daemons, and iperf3's port on one daemon.
fn services_toml() -> String {
    let backends: Vec<String> = (0..DAEMONS)
        .map(|i| format!("\"{}\"", daemon_addr(i)))
        .collect();
    let (vip, _) = VIP.split_once(':').unwrap_or((VIP, ""));
    format!(
        "[[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n\n\
         [[service]]\naddress = \"{vip}:{STREAM_PORT}\"\nbackends = [\"{STREAM_DAEMON}:{STREAM_PORT}\"]\n",
        backends.join(", ")
    )
}
