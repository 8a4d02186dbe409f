//! What the kernel variants and the packet generator change in the namespaces
//! (sysctls, nftables rulesets), and undoing it.
use std::{
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use dispatchd_testkit::{output_of, topology::netns_cmd, Topology};

pub fn sysctl(topo: &Topology, ns: &str, kv: &str) -> Result<()> {
    topo.exec(ns, "sysctl", &["-qw", kv]).map(drop)
}

/// Runs a shell line in namespace `ns` (a sysfs write: the path is the
/// namespace's own /sys only for a process inside it).
pub fn sh(topo: &Topology, ns: &str, line: &str) -> Result<()> {
    topo.exec(ns, "sh", &["-c", line])
        .map(drop)
        .with_context(|| format!("in {ns}: {line}"))
}

/// Loads `ruleset` with `nft -f -` in namespace `ns`.
pub fn nft(topo: &Topology, ns: &str, ruleset: &str) -> Result<()> {
    let mut child = topo
        .cmd(ns, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft -f in {ns}: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Commands that undo a variant's set-up, run in reverse order when dropped.
#[derive(Default)]
pub struct Undo {
    steps: Vec<Command>,
}

impl Undo {
    /// Runs `program args` in namespace `ns` on drop.
    pub fn push(&mut self, ns: &str, program: &str, args: &[&str]) {
        let mut cmd = netns_cmd(ns, program);
        cmd.args(args);
        self.steps.push(cmd);
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for cmd in self.steps.iter_mut().rev() {
            if let Err(e) = output_of(cmd) {
                eprintln!("dispatchd-bench: undo: {e:#}");
            }
        }
    }
}
