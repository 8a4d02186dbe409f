//! The DESIGN.md test topology as a guard: client, dispatcher and daemon
//! namespaces made by `scripts/topology.sh` and deleted on drop, also when a
//! test panics or a benchmark fails. Interfaces live inside the namespaces, so
//! deleting those removes the veths too.
use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::process::{output_of, require_root, text, Proc};

pub const VIP: &str = "198.18.0.100:80";

/// The address of daemon `i` (0-based) in the daemon namespace.
pub fn daemon_addr(i: usize) -> String {
    format!("198.19.0.{}:8080", 11 + i)
}

/// The IPv6 VIP and port of a dual-stack topology ([`Topology::up_dual`]).
pub const VIP6: &str = "[2001:2:0:1::100]:80";

/// The IPv6 address of daemon `i` (0-based) of a dual-stack topology:
/// 2001:2:0:2::11, ::12, ... (hexadecimal, as the script writes them).
pub fn daemon_addr6(i: usize) -> String {
    format!("[2001:2:0:2::{:x}]:8080", 0x11 + i)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn topology_script() -> PathBuf {
    workspace_root().join("scripts/topology.sh")
}

/// A command run inside network namespace `ns`.
pub fn netns_cmd(ns: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// The programs run inside the topology.
#[derive(Clone, Debug)]
pub struct Programs {
    pub dispatchd: PathBuf,
    pub testkit: PathBuf,
}

impl Programs {
    /// For a test of the dispatchd package: pass `env!("CARGO_BIN_EXE_dispatchd")`
    /// (cargo builds it for the test); the testkit is built on demand.
    pub fn for_test(dispatchd: &str) -> Programs {
        Programs {
            dispatchd: dispatchd.into(),
            testkit: testkit_bin().to_owned(),
        }
    }
}

/// The `dispatchd-testkit` binary, built once per process with the profile of
/// the running test executable. Cargo builds a test's dependencies but not the
/// binaries of another package, so the test asks cargo itself; that is a no-op
/// when the binary is fresh. Panics with cargo's output if the build fails.
pub fn testkit_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_testkit().unwrap_or_else(|e| panic!("{e:#}")))
}

fn build_testkit() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding the test executable")?;
    // A test executable is target/<profile dir>/deps/<name>-<hash>.
    let profile_dir = exe
        .parent()
        .filter(|deps| deps.ends_with("deps"))
        .and_then(Path::parent)
        .with_context(|| {
            format!(
                "{} is not under target/<profile>/deps: cannot tell which testkit to build",
                exe.display()
            )
        })?;
    let target_dir = profile_dir.parent().context("target directory")?;
    let profile = match profile_dir.file_name().and_then(OsStr::to_str) {
        Some("debug") => "dev",
        Some(name) => name,
        None => bail!("profile directory {}", profile_dir.display()),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace_root())
        .args(["build", "--locked", "-p", "dispatchd-testkit"])
        .args(["--bin", "dispatchd-testkit", "--profile", profile])
        .arg("--target-dir")
        .arg(target_dir);
    output_of(&mut build).context("building dispatchd-testkit for the end-to-end tests")?;
    let bin = profile_dir.join("dispatchd-testkit");
    if !bin.exists() {
        bail!(
            "cargo built dispatchd-testkit but {} is missing",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where a fourth namespace routes between the dispatcher and the others
/// (`scripts/topology.sh`'s ROUTER argument), so a test can give that hop a
/// smaller route MTU or a filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Router {
    /// The DESIGN.md topology: direct links.
    None,
    /// Between the clients and the front: c0 <-> r0 | r1 <-> l0.
    Front,
    /// Between the back and the daemons: l1 <-> b0 | b1 <-> s0.
    Back,
}

impl Router {
    fn arg(self) -> &'static str {
        match self {
            Router::None => "none",
            Router::Front => "front",
            Router::Back => "back",
        }
    }
}

pub struct Topology {
    pub prefix: String,
    programs: Programs,
}

impl Topology {
    /// A topology for test `name`, unique to this process; panics if it cannot
    /// be made. `dispatchd` is `env!("CARGO_BIN_EXE_dispatchd")`.
    pub fn up(dispatchd: &str, name: &str, daemons: usize, queues: usize) -> Topology {
        Topology::up_queues(dispatchd, name, daemons, queues, queues)
    }

    /// [`Topology::up`] with `front_queues` queues on the client's veth pair
    /// (c0/l0) and `back_queues` on the daemons' (l1/s0).
    pub fn up_queues(
        dispatchd: &str,
        name: &str,
        daemons: usize,
        front_queues: usize,
        back_queues: usize,
    ) -> Topology {
        Topology::up_shaped(
            dispatchd,
            name,
            daemons,
            (front_queues, back_queues),
            Router::None,
        )
    }

    /// [`Topology::up`] with a router namespace on one side.
    pub fn up_routed(
        dispatchd: &str,
        name: &str,
        daemons: usize,
        queues: usize,
        router: Router,
    ) -> Topology {
        Topology::up_shaped(dispatchd, name, daemons, (queues, queues), router)
    }

    /// [`Topology::up`] with `queues` (front, back) and a `router`.
    pub fn up_shaped(
        dispatchd: &str,
        name: &str,
        daemons: usize,
        queues: (usize, usize),
        router: Router,
    ) -> Topology {
        require_root();
        let prefix = format!("dt{name}{}", std::process::id() % 100_000);
        Topology::create_shaped(
            &prefix,
            daemons,
            queues,
            router,
            Programs::for_test(dispatchd),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// [`Topology::up`] with IPv6 besides IPv4 (`scripts/topology.sh`'s
    /// "dual"): the clients 2001:2:0:1::2/64, the front 2001:2:0:1::1/64 with
    /// the VIP [`VIP6`], the back 2001:2:0:2::1/64 forwarding IPv6, the
    /// daemons [`daemon_addr6`]; no duplicate address detection anywhere.
    pub fn up_dual(dispatchd: &str, name: &str, daemons: usize, queues: usize) -> Topology {
        Topology::up_dual_routed(dispatchd, name, daemons, queues, Router::None)
    }

    /// [`Topology::up_dual`] with a router namespace on one side, its IPv6
    /// links beside its IPv4 ones: front, r1 2001:2:0:3::1/64 <-> l0
    /// 2001:2:0:3::2/64 (the clients' side of the router keeps
    /// 2001:2:0:1::1/64); back, l1 2001:2:0:4::1/64 <-> b0 2001:2:0:4::2/64
    /// (the daemons' side keeps 2001:2:0:2::1/64).
    pub fn up_dual_routed(
        dispatchd: &str,
        name: &str,
        daemons: usize,
        queues: usize,
        router: Router,
    ) -> Topology {
        require_root();
        let prefix = format!("dt{name}{}", std::process::id() % 100_000);
        Topology::create_family(
            &prefix,
            daemons,
            (queues, queues),
            router,
            true,
            Programs::for_test(dispatchd),
        )
        .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The namespaces `<prefix>c`, `<prefix>d`, `<prefix>s` with `daemons`
    /// daemon addresses and `queues` queues per veth.
    pub fn create(
        prefix: &str,
        daemons: usize,
        queues: usize,
        programs: Programs,
    ) -> Result<Topology> {
        Topology::create_shaped(prefix, daemons, (queues, queues), Router::None, programs)
    }

    /// [`Topology::create`] with `queues.0` queues on the clients' side
    /// (c0/l0), `queues.1` on the daemons' (l1/s0), and a router namespace
    /// `<prefix>r` on one side or none.
    pub fn create_shaped(
        prefix: &str,
        daemons: usize,
        queues: (usize, usize),
        router: Router,
        programs: Programs,
    ) -> Result<Topology> {
        Topology::create_family(prefix, daemons, queues, router, false, programs)
    }

    /// [`Topology::create_shaped`], with IPv6 besides if `dual`.
    pub fn create_family(
        prefix: &str,
        daemons: usize,
        queues: (usize, usize),
        router: Router,
        dual: bool,
        programs: Programs,
    ) -> Result<Topology> {
        let topo = Topology {
            prefix: prefix.to_owned(),
            programs,
        };
        let status = Command::new(topology_script())
            .args([
                "up",
                prefix,
                &daemons.to_string(),
                &queues.0.to_string(),
                &queues.1.to_string(),
                router.arg(),
                if dual { "dual" } else { "ipv4" },
            ])
            .status()
            .context("running scripts/topology.sh")?;
        if !status.success() {
            bail!("scripts/topology.sh up {prefix} failed");
        }
        Ok(topo)
    }

    pub fn programs(&self) -> &Programs {
        &self.programs
    }

    pub fn client(&self) -> String {
        format!("{}c", self.prefix)
    }
    pub fn dispatcher(&self) -> String {
        format!("{}d", self.prefix)
    }
    pub fn daemons(&self) -> String {
        format!("{}s", self.prefix)
    }
    /// The router namespace of a topology made with a [`Router`].
    pub fn router(&self) -> String {
        format!("{}r", self.prefix)
    }

    /// A command run inside namespace `ns`.
    pub fn cmd(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        netns_cmd(ns, program)
    }

    /// Runs a command to completion inside `ns`, returning its output whatever
    /// its status; panics if it cannot be run.
    pub fn run(&self, ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        let program = program.as_ref();
        self.cmd(ns, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program:?}: {e}"))
    }

    /// Runs a command inside `ns`: its stdout if it succeeded, an error otherwise.
    pub fn exec(&self, ns: &str, program: impl AsRef<OsStr>, args: &[&str]) -> Result<String> {
        output_of(self.cmd(ns, program).args(args))
    }

    /// The packets an nftables named counter (`nft list counter FAMILY TABLE
    /// NAME`) in namespace `ns` has counted.
    pub fn nft_counter(&self, ns: &str, family: &str, table: &str, name: &str) -> Result<u64> {
        let listed = self.exec(ns, "nft", &["list", "counter", family, table, name])?;
        let mut words = listed.split_whitespace();
        words
            .find(|&w| w == "packets")
            .and_then(|_| words.next())
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no packet count in nft's {listed:?}"))
    }

    /// The MAC address of `iface` in namespace `ns`.
    pub fn mac(&self, ns: &str, iface: &str) -> Result<String> {
        let path = format!("/sys/class/net/{iface}/address");
        Ok(self.exec(ns, "cat", &[&path])?.trim().to_owned())
    }

    /// The arguments of `dispatchd-testkit inject` sending `count` frames of
    /// `kind` from the client's c0 to `to` through l0 (its MAC read here), from
    /// `src_ip`; callers add `--rate` and the like, and the program (and a
    /// `taskset` in front of it) themselves.
    pub fn inject_args(&self, src_ip: &str, to: &str, kind: &str, count: u64) -> Vec<String> {
        let l0 = self
            .mac(&self.dispatcher(), "l0")
            .unwrap_or_else(|e| panic!("l0's MAC: {e:#}"));
        [
            "inject",
            "--iface",
            "c0",
            "--dst-mac",
            &l0,
            "--src-ip",
            src_ip,
            "--to",
            to,
            "--kind",
            kind,
            "--count",
        ]
        .map(String::from)
        .into_iter()
        .chain([count.to_string()])
        .collect()
    }

    /// True if an XDP program is attached to `iface` in the dispatcher namespace.
    pub fn xdp_attached(&self, iface: &str) -> bool {
        let out = self.run(
            &self.dispatcher(),
            "ip",
            &["-d", "link", "show", "dev", iface],
        );
        assert!(out.status.success(), "ip link show {iface}: {}", text(&out));
        let shown = String::from_utf8_lossy(&out.stdout);
        shown.contains("prog/xdp") || shown.contains(" xdp")
    }

    /// Starts echo servers on the first `n` daemon addresses.
    pub fn serve(&self, n: usize) -> Proc {
        self.serve_with(n, &[])
    }

    /// [`Topology::serve`] with more `serve` flags (e.g. `--download`).
    pub fn serve_with(&self, n: usize, extra: &[&str]) -> Proc {
        let mut cmd = self.cmd(&self.daemons(), &self.programs.testkit);
        cmd.arg("serve");
        for i in 0..n {
            cmd.args(["--listen", &daemon_addr(i)]);
        }
        cmd.args(extra);
        started(cmd, "serving", Duration::from_secs(5))
    }

    /// Echo servers on `addrs` (any family) in one process, with more `serve`
    /// flags.
    pub fn serve_on<S: AsRef<str>>(&self, addrs: &[S], extra: &[&str]) -> Proc {
        let mut cmd = self.cmd(&self.daemons(), &self.programs.testkit);
        cmd.arg("serve");
        for a in addrs {
            cmd.args(["--listen", a.as_ref()]);
        }
        cmd.args(extra);
        started(cmd, "serving", Duration::from_secs(5))
    }

    /// Starts an echo server for daemon `i` alone, so it can be stopped alone.
    pub fn serve_one(&self, i: usize, extra: &[&str]) -> Proc {
        let mut cmd = self.cmd(&self.daemons(), &self.programs.testkit);
        cmd.args(["serve", "--listen", &daemon_addr(i)]).args(extra);
        started(cmd, "serving", Duration::from_secs(5))
    }

    /// This topology's control socket (the filesystem is shared by all namespaces).
    pub fn control_socket(&self) -> String {
        format!("/tmp/dispatchd-{}.sock", self.prefix)
    }

    /// Starts dispatchd in the dispatcher namespace with `args` after `run`, and
    /// this topology's control socket.
    pub fn dispatchd<S: AsRef<OsStr>>(&self, args: &[S]) -> Proc {
        self.dispatchd_until(args, "dispatchd: running")
    }

    /// [`Topology::dispatchd`], started once its output holds `ready` (for
    /// log formats other than the text one).
    pub fn dispatchd_until<S: AsRef<OsStr>>(&self, args: &[S], ready: &str) -> Proc {
        let mut cmd = self.cmd(&self.dispatcher(), &self.programs.dispatchd);
        cmd.arg("run")
            .args(args)
            .args(["--control-socket", &self.control_socket()]);
        started(cmd, ready, Duration::from_secs(20))
    }

    /// Runs dispatchd expecting it to fail at start-up; returns its output.
    pub fn dispatchd_fails<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        let out = self
            .cmd(&self.dispatcher(), &self.programs.dispatchd)
            .arg("run")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running dispatchd");
        assert!(
            !out.status.success(),
            "dispatchd was expected to fail:\n{}",
            text(&out)
        );
        out
    }

    /// `dispatchd ctl ARGS` against this topology's dispatchd; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(&self.programs.dispatchd)
            .args(["ctl", "--socket", &self.control_socket()])
            .args(args)
            .output()
            .expect("running dispatchd ctl");
        assert!(
            out.status.success(),
            "dispatchd ctl {args:?}:\n{}",
            text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `dispatchd ctl stats --json`, parsed.
    pub fn stats(&self) -> serde_json::Value {
        let json = self.ctl(&["stats", "--json"]);
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("ctl stats --json: {e}: {json}"))
    }

    /// Flags for the default service on l0/l1 and its first `n` daemons.
    pub fn default_flags(n: usize) -> Vec<String> {
        let mut v: Vec<String> = ["--front", "l0", "--back", "l1", "--service", VIP]
            .map(String::from)
            .to_vec();
        for i in 0..n {
            v.push("--backend".into());
            v.push(daemon_addr(i));
        }
        v
    }

    /// [`Topology::default_flags`] for the IPv6 service [`VIP6`] of a
    /// dual-stack topology and its first `n` daemons ([`daemon_addr6`]).
    pub fn default_flags6(n: usize) -> Vec<String> {
        let mut v: Vec<String> = ["--front", "l0", "--back", "l1", "--service", VIP6]
            .map(String::from)
            .to_vec();
        for i in 0..n {
            v.push("--backend".into());
            v.push(daemon_addr6(i));
        }
        v
    }

    /// Runs the testkit as a client in the client namespace.
    pub fn client_run(&self, args: &[&str]) -> Output {
        self.run(&self.client(), &self.programs.testkit, args)
    }

    /// `many`: opens `connections` to the VIP at once (`concurrency` at a time),
    /// holds them, checks that each still echoes, then closes them all.
    pub fn client_many(&self, connections: usize, concurrency: usize) -> Output {
        self.client_run(&[
            "many",
            "--to",
            VIP,
            "--connections",
            &connections.to_string(),
            "--concurrency",
            &concurrency.to_string(),
        ])
    }

    /// One connection to `to` from the client's local `port`, ended by a
    /// reset: no TIME_WAIT on either side keeps the client from the port or
    /// the daemon from the next connection of the same 4-tuple. A connect
    /// gives up after 1.5 s.
    pub fn client_reset_from_port(&self, to: &str, port: u16) -> Output {
        self.client_run(&[
            "connect",
            "--to",
            to,
            "--connections",
            "1",
            "--reset",
            "--src-port",
            &port.to_string(),
            "--timeout-ms",
            "1500",
        ])
    }

    /// Starts a testkit client in the background, ready once it printed `ready`.
    pub fn client_start(&self, args: &[&str], ready: &str) -> Proc {
        let mut cmd = self.cmd(&self.client(), &self.programs.testkit);
        cmd.args(args);
        started(cmd, ready, Duration::from_secs(10))
    }
}

fn started(cmd: Command, ready: &str, timeout: Duration) -> Proc {
    Proc::start(cmd, ready, timeout).unwrap_or_else(|e| panic!("{e:#}"))
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.control_socket());
        let _ = Command::new(topology_script())
            .args(["down", &self.prefix])
            .status();
    }
}

/// Parses the `daemon=ADDR connections=N` lines of `dispatchd-testkit connect`.
pub fn per_daemon(stdout: &str) -> Vec<(String, usize)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (addr, n) = l.strip_prefix("daemon=")?.split_once(" connections=")?;
            Some((addr.to_owned(), n.trim().parse().ok()?))
        })
        .collect()
}
