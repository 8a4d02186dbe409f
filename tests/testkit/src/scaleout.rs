//! Several dispatchd instances behind an ECMP router that learns the VIP by
//! BGP, as a guard: the namespaces `scripts/scaleout.sh` makes (a client, a
//! router running bird2, three instance namespaces each with a bird2 speaker,
//! the daemons' namespace with its own bird2 for the return routes), deleted
//! with the birds on drop, also when a test panics.
use std::{
    collections::BTreeSet,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::{
    process::{output_of, require_root, Proc},
    topology::{daemon_addr, netns_cmd, Programs},
};

/// The service every instance serves.
pub const VIP: &str = "198.18.0.100:80";
/// The client's address.
pub const CLIENT: &str = "198.18.1.2";
/// Instance namespaces the script makes (instance `k` is 0-based).
pub const INSTANCES: usize = 3;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

pub struct ScaleOut {
    pub prefix: String,
    programs: Programs,
}

impl ScaleOut {
    /// The topology for test `name`, unique to this process, with `daemons`
    /// daemon addresses; panics if it cannot be made.
    pub fn up(dispatchd: &str, name: &str, daemons: usize) -> ScaleOut {
        require_root();
        let prefix = format!("ds{name}{}", std::process::id() % 100_000);
        let so = ScaleOut {
            prefix,
            programs: Programs::for_test(dispatchd),
        };
        let status = Command::new(script("scaleout.sh"))
            .args(["up", &so.prefix, &daemons.to_string()])
            .status()
            .expect("running scripts/scaleout.sh");
        assert!(
            status.success(),
            "scripts/scaleout.sh up {} failed",
            so.prefix
        );
        so
    }

    pub fn client(&self) -> String {
        format!("{}c", self.prefix)
    }
    pub fn router(&self) -> String {
        format!("{}r", self.prefix)
    }
    pub fn daemons(&self) -> String {
        format!("{}s", self.prefix)
    }
    pub fn instance(&self, k: usize) -> String {
        format!("{}i{k}", self.prefix)
    }
    /// Instance `k`'s address on the router's link, the VIP route's next hop.
    pub fn front_addr(k: usize) -> String {
        format!("198.18.{}.2", 10 + k)
    }
    /// Instance `k`'s address on the back bridge, the daemons' next hop.
    pub fn back_addr(k: usize) -> String {
        format!("198.19.0.{}", 1 + k)
    }
    fn run_dir(&self) -> PathBuf {
        PathBuf::from(format!("/tmp/{}-bird", self.prefix))
    }
    /// The control socket of instance `k`'s dispatchd.
    pub fn control_socket(&self, k: usize) -> String {
        format!("/tmp/dispatchd-{}-i{k}.sock", self.prefix)
    }

    /// Starts bird2 in the foreground for `which`: `router`, `daemons`, or an
    /// instance number.
    pub fn bird(&self, which: &str) -> Proc {
        let mut cmd = Command::new(script("scaleout.sh"));
        cmd.args(["bird", &self.prefix, which]);
        Proc::start(cmd, "Started", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts dispatchd in instance `k`'s namespace: the VIP on l0/l1 to the
    /// first `daemons` daemons, with `extra` flags.
    pub fn dispatchd(&self, k: usize, daemons: usize, extra: &[&str]) -> Proc {
        let mut cmd = netns_cmd(&self.instance(k), &self.programs.dispatchd);
        cmd.args(["run", "--front", "l0", "--back", "l1", "--service", VIP]);
        for i in 0..daemons {
            cmd.args(["--backend", &daemon_addr(i)]);
        }
        cmd.args(extra)
            .args(["--control-socket", &self.control_socket(k)]);
        Proc::start(cmd, "dispatchd: running", Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `scripts/ready-watch.sh` for instance `k`: its bird announces
    /// while its dispatchd says it is ready.
    pub fn watcher(&self, k: usize, interval: &str) -> Proc {
        let mut cmd = Command::new(script("ready-watch.sh"));
        cmd.env("DISPATCHD", &self.programs.dispatchd).args([
            &self.control_socket(k),
            self.run_dir()
                .join(format!("i{k}.ctl"))
                .to_str()
                .expect("UTF-8 path"),
            "ready",
            interval,
        ]);
        Proc::start(cmd, "ready-watch: following", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Echo servers on the first `n` daemon addresses.
    pub fn serve(&self, n: usize) -> Proc {
        let mut cmd = netns_cmd(&self.daemons(), &self.programs.testkit);
        cmd.arg("serve");
        for i in 0..n {
            cmd.args(["--listen", &daemon_addr(i)]);
        }
        Proc::start(cmd, "serving", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The next hops of the route to `dst` in namespace `ns`, as the kernel
    /// has it now (none without a route).
    pub fn next_hops(&self, ns: &str, dst: &str) -> BTreeSet<String> {
        let out = output_of(Command::new("ip").args(["-n", ns, "route", "show", dst]))
            .unwrap_or_default();
        let words: Vec<&str> = out.split_whitespace().collect();
        words
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_owned())
            .collect()
    }

    /// The instances the router sends the VIP's traffic to.
    pub fn vip_paths(&self) -> BTreeSet<String> {
        self.next_hops(&self.router(), "198.18.0.100")
    }

    /// The instances the daemons send their replies through.
    pub fn return_paths(&self) -> BTreeSet<String> {
        self.next_hops(&self.daemons(), "default")
    }

    /// `dispatchd ctl ARGS` against instance `k`: its output, or an error.
    pub fn ctl(&self, k: usize, args: &[&str]) -> Result<String> {
        output_of(
            Command::new(&self.programs.dispatchd)
                .args(["ctl", "--socket", &self.control_socket(k)])
                .args(args),
        )
    }

    /// `dispatchd ctl stats --json` of instance `k`, parsed.
    pub fn stats(&self, k: usize) -> Result<serde_json::Value> {
        let json = self.ctl(k, &["--json", "stats"])?;
        serde_json::from_str(&json).with_context(|| format!("ctl stats --json: {json}"))
    }

    /// The client ports of the connections instance `k` tracks, with their
    /// phases and ages in milliseconds.
    pub fn client_ports(&self, k: usize) -> Result<Vec<(u16, String, u64)>> {
        let json = self.ctl(
            k,
            &["--json", "conns", "--client", CLIENT, "--limit", "100000"],
        )?;
        let doc: serde_json::Value =
            serde_json::from_str(&json).with_context(|| format!("ctl conns --json: {json}"))?;
        let Some(rows) = doc["connections"].as_array() else {
            bail!("no connections in {json}");
        };
        Ok(rows
            .iter()
            .filter_map(|r| {
                let port = r["client"].as_str()?.rsplit_once(':')?.1.parse().ok()?;
                let state = r["state"].as_str()?.to_owned();
                Some((port, state, r["age_ms"].as_u64()?))
            })
            .collect())
    }

    /// Runs the testkit as a client to completion.
    pub fn client_run(&self, args: &[&str]) -> Output {
        netns_cmd(&self.client(), &self.programs.testkit)
            .args(args)
            .output()
            .expect("running the testkit client")
    }

    /// Starts a testkit client, ready once it printed `ready`.
    pub fn client_start(&self, args: &[&str], ready: &str) -> Proc {
        let mut cmd = netns_cmd(&self.client(), &self.programs.testkit);
        cmd.args(args);
        Proc::start(cmd, ready, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A command in namespace `ns`.
    pub fn cmd(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        netns_cmd(ns, program)
    }
}

impl Drop for ScaleOut {
    fn drop(&mut self) {
        for k in 0..INSTANCES {
            let _ = std::fs::remove_file(self.control_socket(k));
        }
        let _ = Command::new(script("scaleout.sh"))
            .args(["down", &self.prefix])
            .status();
    }
}
