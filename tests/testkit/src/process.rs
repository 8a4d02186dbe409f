//! Child processes and the checks around them: a guard that collects a child's
//! output and kills it on drop, root required loudly, and polling.
use std::{
    io::{BufRead, BufReader, Lines, Read},
    process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Ok if this process runs as root, which network namespaces, XDP and AF_XDP
/// need.
pub fn ensure_root() -> Result<()> {
    let uid = output_of(Command::new("id").arg("-u"))?;
    let uid = uid.trim();
    if uid != "0" {
        bail!("needs root (network namespaces, XDP, AF_XDP), and runs as uid {uid}");
    }
    Ok(())
}

/// Panics unless root: a privileged test fails with a message, it never skips.
pub fn require_root() {
    if let Err(e) = ensure_root() {
        panic!("{e:#}; run scripts/test.sh as root");
    }
}

/// Runs `cmd` to completion: its stdout if it succeeded, an error with its
/// output otherwise.
pub fn output_of(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", text(&out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A finished command's status and output, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A number field of /proc/meminfo (its first word after the colon), such as
/// `HugePages_Free`, or `Hugepagesize` in kB.
pub fn meminfo(field: &str) -> Result<u64> {
    std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/meminfo"))
}

/// Polls `check` every 50 ms until it holds, panicking after `timeout`; returns
/// how long it took.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

/// Waits until `read` gives the same non-zero value twice in a row, reading
/// it every `every` plus [`wait_until`]'s own 50 ms: a counter that has
/// settled. Returns that value.
pub fn wait_until_steady(
    timeout: Duration,
    what: &str,
    every: Duration,
    mut read: impl FnMut() -> u64,
) -> u64 {
    let mut last = 0;
    wait_until(timeout, what, || {
        let now = read();
        let steady = now == last && now > 0;
        last = now;
        thread::sleep(every);
        steady
    });
    last
}

/// A child process whose output is collected as it runs; killed on drop, so a
/// failing test or benchmark leaves nothing running.
pub struct Proc {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Proc {
    /// Spawns `cmd` and waits until its output (stdout or stderr) contains
    /// `ready`; an empty `ready` does not wait.
    pub fn start(mut cmd: Command, ready: &str, timeout: Duration) -> Result<Proc> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let mut proc = Proc::collecting_stderr(child)?;
        proc.collect(stdout);
        let deadline = Instant::now() + timeout;
        while !proc.output().contains(ready) {
            if let Some(status) = proc.exited() {
                // Let the reader threads take the last lines.
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "{cmd:?} exited with {status} before it was ready:\n{}",
                    proc.output()
                );
            }
            if Instant::now() >= deadline {
                bail!("{cmd:?} not ready after {timeout:?}:\n{}", proc.output());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(proc)
    }

    /// Spawns `cmd` with its stdout left to the caller, line by line (to act on
    /// each line as it comes); stderr is collected as [`Proc::output`].
    pub fn start_reading(cmd: Command) -> Result<(Proc, Lines<BufReader<ChildStdout>>)> {
        let (proc, _, lines) = Proc::spawn_reading(cmd, Stdio::null())?;
        Ok((proc, lines))
    }

    /// [`Proc::start_reading`], and its stdin handed over too, to talk to the
    /// process; dropping it closes the process's input.
    pub fn start_talking(
        cmd: Command,
    ) -> Result<(Proc, ChildStdin, Lines<BufReader<ChildStdout>>)> {
        let (proc, stdin, lines) = Proc::spawn_reading(cmd, Stdio::piped())?;
        Ok((proc, stdin.context("stdin is piped")?, lines))
    }

    fn spawn_reading(
        mut cmd: Command,
        stdin: Stdio,
    ) -> Result<(Proc, Option<ChildStdin>, Lines<BufReader<ChildStdout>>)> {
        let mut child = cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {cmd:?}"))?;
        let stdout = child.stdout.take().context("stdout is piped")?;
        let stdin = child.stdin.take();
        Ok((
            Proc::collecting_stderr(child)?,
            stdin,
            BufReader::new(stdout).lines(),
        ))
    }

    fn collecting_stderr(mut child: Child) -> Result<Proc> {
        let stderr = child.stderr.take().context("stderr is piped")?;
        let mut proc = Proc {
            child,
            output: Arc::new(Mutex::new(String::new())),
        };
        proc.collect(stderr);
        Ok(proc)
    }

    fn collect(&mut self, stream: impl Read + Send + 'static) {
        let output = self.output.clone();
        thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let mut o = output.lock().unwrap_or_else(|p| p.into_inner());
                o.push_str(&line);
                o.push('\n');
            }
        });
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("waiting for a child")
    }

    /// Sends signal `sig` (a name such as `TERM` or `STOP`); panics if it
    /// cannot.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{sig} failed");
    }

    /// Waits for the process to exit, then lets its output drain; panics after
    /// `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
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

    /// SIGTERM, then SIGKILL if it has not exited within `grace`: for a process
    /// that should shut down cleanly (dispatchd detaching its program, perf
    /// writing its data).
    pub fn terminate(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        self.signal("TERM");
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "pid {} ignored SIGTERM for {grace:?}; killing it",
            self.pid()
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
