//! Shared pieces of the end-to-end tests: the DESIGN.md topology as a guard that
//! always tears down, and guards for the processes run inside it.
//!
//! These tests need root (namespaces, XDP, AF_XDP). Without it they fail with a
//! message saying so; they never skip.
#![allow(dead_code)] // each test file uses a different subset

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

pub const VIP: &str = "198.18.0.100:80";
pub const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
pub const TESTKIT: &str = env!("CARGO_BIN_EXE_dispatchd-testkit");

pub fn daemon_addr(i: usize) -> String {
    format!("198.19.0.{}:8080", 11 + i)
}

pub fn require_root() {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .expect("running id -u");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        uid, "0",
        "the end-to-end tests need root (network namespaces, XDP, AF_XDP); run scripts/test.sh as root"
    );
}

fn topology_script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/topology.sh")
}

/// Client, dispatcher and daemon namespaces; deleted on drop, also when the test
/// panics. Interfaces live inside them, so deleting them removes the veths too.
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    pub fn up(name: &str, daemons: usize, queues: usize) -> Self {
        require_root();
        let topo = Topology {
            prefix: format!("dt{name}{}", std::process::id() % 100_000),
        };
        let status = Command::new(topology_script())
            .args([
                "up",
                &topo.prefix,
                &daemons.to_string(),
                &queues.to_string(),
            ])
            .status()
            .expect("running scripts/topology.sh");
        assert!(
            status.success(),
            "scripts/topology.sh up {} failed",
            topo.prefix
        );
        topo
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

    /// A command run inside namespace `ns`.
    pub fn cmd(&self, ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Runs a command to completion inside `ns`, returning its output.
    pub fn run(&self, ns: &str, program: &str, args: &[&str]) -> Output {
        self.cmd(ns, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {program}: {e}"))
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
        let mut cmd = self.cmd(&self.daemons(), TESTKIT);
        cmd.arg("serve");
        for i in 0..n {
            cmd.args(["--listen", &daemon_addr(i)]);
        }
        Proc::start(cmd, "serving", Duration::from_secs(5))
    }

    /// Polls `check` every 50 ms until it holds or `timeout` passes; returns
    /// how long it took.
    pub fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut() -> bool,
    ) -> Duration {
        let start = Instant::now();
        while !check() {
            assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
            thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    /// This topology's control socket (the filesystem is shared by all namespaces).
    pub fn control_socket(&self) -> String {
        format!("/tmp/dispatchd-{}.sock", self.prefix)
    }

    /// Starts dispatchd in the dispatcher namespace with `args` after `run`, and
    /// this topology's control socket.
    pub fn dispatchd<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Proc {
        let mut cmd = self.cmd(&self.dispatcher(), DISPATCHD);
        cmd.arg("run")
            .args(args)
            .args(["--control-socket", &self.control_socket()]);
        Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
    }

    /// `dispatchd ctl ARGS` against this topology's dispatchd; panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(DISPATCHD)
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

    /// Starts an echo server for daemon `i` alone, so it can be stopped alone.
    pub fn serve_one(&self, i: usize, extra: &[&str]) -> Proc {
        let mut cmd = self.cmd(&self.daemons(), TESTKIT);
        cmd.args(["serve", "--listen", &daemon_addr(i)]).args(extra);
        Proc::start(cmd, "serving", Duration::from_secs(5))
    }

    /// Runs dispatchd expecting it to fail at start-up; returns its output.
    pub fn dispatchd_fails<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        let out = self
            .cmd(&self.dispatcher(), DISPATCHD)
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

    /// Runs the testkit as a client in the client namespace.
    pub fn client_run(&self, args: &[&str]) -> Output {
        self.run(&self.client(), TESTKIT, args)
    }

    /// Starts a testkit client in the background, ready once it printed `ready`.
    pub fn client_start(&self, args: &[&str], ready: &str) -> Proc {
        let mut cmd = self.cmd(&self.client(), TESTKIT);
        cmd.args(args);
        Proc::start(cmd, ready, Duration::from_secs(10))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.control_socket());
        let _ = Command::new(topology_script())
            .args(["down", &self.prefix])
            .status();
    }
}

/// A child process whose output is collected as it runs; killed on drop.
pub struct Proc {
    pub child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` and waits until its output contains `ready`.
    pub fn start(mut cmd: Command, ready: &str, timeout: Duration) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let streams: [Box<dyn std::io::Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("stdout is piped")),
            Box::new(child.stderr.take().expect("stderr is piped")),
        ];
        for stream in streams {
            let output = output.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = output.lock().unwrap_or_else(|p| p.into_inner());
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        let mut proc = Proc { child, output };
        let deadline = Instant::now() + timeout;
        while !proc.output().contains(ready) {
            if let Ok(Some(status)) = proc.child.try_wait() {
                thread::sleep(Duration::from_millis(100));
                panic!(
                    "{cmd:?} exited with {status} before it was ready:\n{}",
                    proc.output()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{cmd:?} not ready after {timeout:?}:\n{}",
                proc.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
        proc
    }

    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    /// Waits for the process to exit, then lets its output drain.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for child") {
                thread::sleep(Duration::from_millis(200));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit within {timeout:?}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The number after `"key":` in a JSON text (first occurrence after `from`).
pub fn json_number(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pat.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect::<String>()
        .parse()
        .expect("a number")
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
