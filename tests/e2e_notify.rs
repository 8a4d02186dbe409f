//! systemd's notifications end to end, on the DESIGN.md topology: the test is
//! the service manager. It opens a NOTIFY_SOCKET of its own, starts dispatchd
//! with it and a WATCHDOG_USEC, and reads what dispatchd says: READY=1 once it
//! serves, WATCHDOG=1 while every worker runs (and not while one is stopped),
//! RELOADING=1 then READY=1 around a SIGHUP (good or broken config),
//! STOPPING=1 on SIGTERM. Needs root (and ptrace, to stop one worker thread).
#![allow(unsafe_code)] // ptrace(2) on one worker thread; each call says why it is sound

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use dispatchd_testkit::{daemon_addr, Proc, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// What systemd would pass for WatchdogSec=400ms: fed every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;
const WATCHDOG: Duration = Duration::from_micros(WATCHDOG_USEC);
/// The sequence test's graceful stop: STOPPING=1 comes at its start.
const GRACE_MS: u64 = 1500;

/// The service manager's end: a datagram socket in a directory of its own.
struct Manager {
    socket: UnixDatagram,
    dir: PathBuf,
}

impl Manager {
    fn open(name: &str) -> Manager {
        let dir = std::env::temp_dir().join(format!("nt-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("making the socket's directory");
        let socket = UnixDatagram::bind(dir.join("notify")).expect("binding NOTIFY_SOCKET");
        // Writable by anyone, as systemd's own is (a test runs dispatchd as
        // an unprivileged user too).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join("notify"), std::fs::Permissions::from_mode(0o666))
            .expect("opening NOTIFY_SOCKET to all");
        Manager { socket, dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("notify")
    }

    /// The next notification, if one comes within `timeout`.
    fn next(&self, timeout: Duration) -> Option<String> {
        self.socket
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                None
            }
            Err(e) => panic!("reading NOTIFY_SOCKET: {e}"),
        }
    }

    /// The first notification other than WATCHDOG=1 within `timeout`.
    fn next_state(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Some(m) if m.trim() == "WATCHDOG=1" => continue,
                Some(m) => return m,
                None => panic!("no notification but WATCHDOG=1 within {timeout:?}"),
            }
        }
    }

    /// The times WATCHDOG=1 came in the next `window`; any other
    /// notification fails the test.
    fn watchdogs(&self, window: Duration) -> Vec<Instant> {
        let deadline = Instant::now() + window;
        let mut at = Vec::new();
        while let Some(m) = self.next(deadline.saturating_duration_since(Instant::now())) {
            assert_eq!(m.trim(), "WATCHDOG=1", "unexpected notification");
            at.push(Instant::now());
            if Instant::now() >= deadline {
                break;
            }
        }
        at
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of `key` in a notification, if there.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn gaps(at: &[Instant]) -> Vec<Duration> {
    at.windows(2).map(|w| w[1] - w[0]).collect()
}

/// Starts dispatchd as systemd would for a Type=notify unit with a watchdog.
fn start(topo: &Topology, manager: &Manager, args: &[String]) -> Proc {
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.arg("run")
        .args(args)
        .args(["--control-socket", &topo.control_socket()])
        .env("NOTIFY_SOCKET", manager.path())
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string());
    Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn write_config(file: &Path, daemons: usize) {
    let list: Vec<String> = (0..daemons)
        .map(|i| format!("\"{}\"", daemon_addr(i)))
        .collect();
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\npoll = \"wakeup\"\nstop_grace_ms = {GRACE_MS}\n[health]\ninterval_ms = 200\ntimeout_ms = 100\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
        list.join(", ")
    );
    std::fs::write(file, body).expect("writing the config");
}

#[test]
fn ready_watchdog_reloading_and_stopping_in_order() {
    let topo = Topology::up(DISPATCHD, "ntseq", 2, 1);
    let _servers = topo.serve(2);
    let manager = Manager::open("seq");
    let file = std::env::temp_dir().join(format!("nt-notify-{}.toml", topo.prefix));
    write_config(&file, 1);
    let mut lb = start(
        &topo,
        &manager,
        &["--config".into(), file.display().to_string()],
    );

    // READY=1 is the first word, sent when it says "running".
    let ready = manager
        .next(Duration::from_secs(2))
        .expect("READY=1 after start");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let status = field(&ready, "STATUS").expect("a STATUS= with READY=1");
    assert!(status.starts_with("serving; "), "{ready}");

    // Idle workers (poll = "wakeup": they sleep in poll between frames) keep
    // it fed, every half timeout, never near the timeout itself.
    let fed = manager.watchdogs(Duration::from_secs(3));
    let gaps = gaps(&fed);
    let longest = gaps.iter().max().copied().unwrap_or_default();
    println!(
        "idle: {} WATCHDOG=1 in 3 s, longest gap {longest:?}",
        fed.len()
    );
    assert!(fed.len() >= 10, "{} WATCHDOG=1 in 3 s", fed.len());
    assert!(
        longest < WATCHDOG,
        "a gap of {longest:?}: systemd would kill it"
    );

    // A reload: RELOADING=1 with the time it began, then READY=1 saying so.
    write_config(&file, 2);
    let before = dispatchd::sys::monotonic_usec();
    lb.signal("HUP");
    let reloading = manager.next_state(Duration::from_secs(2));
    let after = dispatchd::sys::monotonic_usec();
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let at: u64 = field(&reloading, "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading}"));
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    let done = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&done, "READY"), Some("1"), "{done}");
    assert!(
        field(&done, "STATUS").is_some_and(|s| s.starts_with("reloaded")),
        "{done}"
    );
    assert!(topo.ctl(&["backends"]).contains(&daemon_addr(1)));

    // A broken file: the running configuration stays, and systemd hears so.
    std::fs::write(&file, "front = \n").unwrap();
    lb.signal("HUP");
    let reloading = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    assert!(field(&reloading, "MONOTONIC_USEC").is_some(), "{reloading}");
    let kept = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&kept, "READY"), Some("1"), "{kept}");
    assert!(
        field(&kept, "STATUS")
            .is_some_and(|s| s.starts_with("reload failed, running configuration kept")),
        "{kept}"
    );
    assert!(topo.ctl(&["backends"]).contains(&daemon_addr(1)));
    // Still fed after the reloads.
    assert!(manager.watchdogs(Duration::from_secs(1)).len() >= 3);

    // A graceful stop: STOPPING=1 when it begins, not when it ends.
    let term = Instant::now();
    lb.signal("TERM");
    let stopping = manager.next_state(Duration::from_secs(1));
    let told = term.elapsed();
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(
        field(&stopping, "STATUS").is_some_and(|s| s.contains(&format!("{GRACE_MS} ms"))),
        "{stopping}"
    );
    assert!(lb.exited().is_none(), "exited before its grace period");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
    let exited = term.elapsed();
    println!("SIGTERM: STOPPING=1 after {told:?}, exit after {exited:?}");
    assert!(exited >= Duration::from_millis(GRACE_MS), "{exited:?}");
    let _ = std::fs::remove_file(&file);
}

/// One thread of another process stopped (the rest of it runs) while held:
/// PTRACE_SEIZE and PTRACE_INTERRUPT stop that thread only; the drop detaches,
/// which resumes it.
struct StoppedThread {
    tid: libc::pid_t,
}

impl StoppedThread {
    fn stop(tid: libc::pid_t) -> StoppedThread {
        // SAFETY: ptrace with integer arguments only; a failure is an error
        // return, checked.
        let seized = unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) };
        assert_eq!(
            seized,
            0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        let held = StoppedThread { tid };
        // SAFETY: as above.
        let interrupted = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) };
        assert_eq!(
            interrupted,
            0,
            "PTRACE_INTERRUPT {tid}: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live local.
        let waited = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        assert_eq!(
            waited,
            tid,
            "waitpid {tid}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            libc::WIFSTOPPED(status),
            "thread {tid} not stopped: status {status:#x}"
        );
        held
    }
}

impl Drop for StoppedThread {
    fn drop(&mut self) {
        // SAFETY: integer arguments only; the thread is in a ptrace stop, so
        // PTRACE_DETACH applies and resumes it.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}

/// The thread of `pid` named `name` (std names the workers' threads).
fn thread_named(pid: u32, name: &str) -> libc::pid_t {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("reading the threads");
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return task.file_name().to_string_lossy().parse().expect("a tid");
        }
    }
    panic!("no thread {name} in pid {pid}");
}

#[test]
fn a_stopped_worker_stops_the_watchdog_until_it_runs_again() {
    let topo = Topology::up_queues(DISPATCHD, "ntdog", 2, 2, 2);
    let _servers = topo.serve(2);
    let manager = Manager::open("dog");
    let mut flags = Topology::default_flags(2);
    flags.extend(["--cores", "0,1", "--poll", "wakeup"].map(String::from));
    let lb = start(&topo, &manager, &flags);
    let ready = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    let stats = topo.stats();
    assert_eq!(
        stats["workers"].as_array().map(Vec::len),
        Some(2),
        "two workers: {stats}"
    );
    assert!(manager.watchdogs(Duration::from_secs(1)).len() >= 3);

    let worker = thread_named(lb.pid(), "dispatchd-w1");
    let stopped_at = Instant::now();
    let held = StoppedThread::stop(worker);
    // Up to two feeds may still come: one sent as the thread stopped, and
    // the next if the worker moved between that feed and its stop. After
    // that, none while it is stopped.
    let late = manager.watchdogs(WATCHDOG);
    let quiet = manager.watchdogs(3 * WATCHDOG);
    println!(
        "worker 1 stopped: {} WATCHDOG=1 in the first {WATCHDOG:?} (in flight), {} in the next {:?}",
        late.len(),
        quiet.len(),
        3 * WATCHDOG
    );
    assert!(late.len() <= 2, "{} feeds after the stop", late.len());
    assert!(quiet.is_empty(), "fed while worker 1 was stopped");
    // The rest of the process runs: the loop answers, worker 0 goes on.
    let stats = topo.stats();
    assert!(stats["workers"][0].is_object(), "{stats}");
    let mut lb = lb;
    assert!(lb.exited().is_none(), "dispatchd exited: {}", lb.output());

    drop(held);
    let resumed_at = Instant::now();
    let back = manager
        .next(WATCHDOG)
        .expect("WATCHDOG=1 again once the worker runs");
    assert_eq!(back.trim(), "WATCHDOG=1");
    println!(
        "stopped for {:?}; fed again {:?} after the worker resumed",
        resumed_at - stopped_at,
        resumed_at.elapsed()
    );
    assert!(manager.watchdogs(Duration::from_secs(1)).len() >= 3);
    lb.signal("TERM");
    let stopping = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
}

/// A takeover between two units (README: a template unit run alternately):
/// the old process tells its unit STOPPING=1 and exits 0, the new one tells
/// its own unit READY=1 and feeds its watchdog. Neither hands the other its
/// main PID: each is the main process of its own unit.
#[test]
fn a_takeover_stops_the_old_unit_and_readies_the_new_one() {
    let topo = Topology::up(DISPATCHD, "nttk", 2, 1);
    let _servers = topo.serve(2);
    let flags = Topology::default_flags(2);
    let unit_a = Manager::open("tka");
    let mut a = start(&topo, &unit_a, &flags);
    let ready = unit_a.next_state(Duration::from_secs(2));
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");

    let unit_b = Manager::open("tkb");
    let mut takeover = flags.clone();
    takeover.push("--takeover".into());
    let mut b = start(&topo, &unit_b, &takeover);
    assert!(b.output().contains("took over from pid"), "{}", b.output());

    let stopping = unit_a.next_state(Duration::from_secs(2));
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(
        field(&stopping, "STATUS").is_some_and(|s| s.contains("takeover")),
        "{stopping}"
    );
    assert_eq!(field(&stopping, "MAINPID"), None, "{stopping}");
    assert!(a.wait(Duration::from_secs(10)).success(), "{}", a.output());
    // Nothing more from the old process once it said it stops.
    while let Some(m) = unit_a.next(Duration::from_millis(100)) {
        assert_eq!(m.trim(), "WATCHDOG=1", "after STOPPING=1: {m}");
    }

    let ready = unit_b.next_state(Duration::from_secs(2));
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(field(&ready, "MAINPID"), None, "{ready}");
    assert!(unit_b.watchdogs(Duration::from_secs(1)).len() >= 3);
    b.signal("INT");
    let stopping = unit_b.next_state(Duration::from_secs(2));
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
    assert!(b.wait(Duration::from_secs(10)).success(), "{}", b.output());
}

/// The capabilities the unit grants, from the unit file itself.
fn unit_capabilities() -> String {
    let unit = include_str!("../examples/systemd/dispatchd.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet= in the unit");
    line.split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the unit grants is enough to serve, as systemd applies it: as root
/// (the unit as shipped) with only those capabilities in the bounding set and
/// no_new_privs, and as an unprivileged user holding them as ambient
/// capabilities (a drop-in with User=). setpriv sets what systemd would.
#[test]
fn the_units_capabilities_are_enough_to_serve() {
    let topo = Topology::up(DISPATCHD, "ntcap", 2, 1);
    let _servers = topo.serve(2);
    let caps = unit_capabilities();
    assert_eq!(caps.split(',').count(), 5, "{caps}");
    let keep = format!("-all,+{}", caps.replace(',', ",+"));
    let as_root = vec![format!("--bounding-set={keep}"), "--inh-caps=-all".into()];
    let as_user = vec![
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--bounding-set={keep}"),
        format!("--inh-caps={keep}"),
        format!("--ambient-caps={keep}"),
    ];
    for (who, setpriv) in [("root", as_root), ("an unprivileged user", as_user)] {
        let manager = Manager::open("cap");
        let mut cmd = topo.cmd(&topo.dispatcher(), "setpriv");
        cmd.args(&setpriv)
            .arg("--no-new-privs")
            .arg(DISPATCHD)
            .arg("run")
            .args(Topology::default_flags(2))
            .args(["--control-socket", &topo.control_socket()])
            .env("NOTIFY_SOCKET", manager.path())
            .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string());
        let mut lb = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("as {who} with {caps}: {e:#}"));
        let ready = manager.next_state(Duration::from_secs(2));
        assert_eq!(field(&ready, "READY"), Some("1"), "as {who}: {ready}");
        let out = topo.client_run(&["connect", "--to", VIP, "--connections", "10"]);
        assert!(
            out.status.success(),
            "as {who}: {}",
            dispatchd_testkit::text(&out)
        );
        assert!(manager.watchdogs(Duration::from_secs(1)).len() >= 3);
        lb.signal("TERM");
        assert!(
            lb.wait(Duration::from_secs(10)).success(),
            "as {who}: {}",
            lb.output()
        );
        assert!(!topo.xdp_attached("l0"), "as {who}: still attached");
    }
}

/// Runs the rest of its arguments with every mount but /proc, /sys, /dev and
/// `$1` read-only, in a private mount namespace: what ProtectSystem=strict
/// leaves writable with RuntimeDirectory= as `$1`. Exits 97 if a write
/// outside `$1` still succeeds (the emulation failed, not dispatchd).
const READ_ONLY_SYSTEM: &str = r#"
set -e
rw="$1"; shift
mount --bind "$rw" "$rw"
for mp in $(awk '{print $2}' /proc/self/mounts); do
  case "$mp" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$rw") continue;; esac
  mount -o remount,bind,ro "$mp"
done
if touch /var/tmp/nt-ro-probe 2>/dev/null || touch "$(dirname "$rw")/nt-ro-probe" 2>/dev/null; then
  echo "the file system is still writable" >&2; exit 97
fi
touch "$rw/nt-rw-probe" && rm "$rw/nt-rw-probe"
exec "$@"
"#;

/// The unit's ProtectSystem=strict: dispatchd starts, serves, reloads and
/// stops with nothing writable but its runtime directory (the control socket).
#[test]
fn it_serves_with_nothing_writable_but_its_runtime_directory() {
    let topo = Topology::up(DISPATCHD, "ntro", 2, 1);
    let _servers = topo.serve(2);
    let manager = Manager::open("ro");
    let run = std::env::temp_dir().join(format!("nt-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run);
    std::fs::create_dir_all(&run).unwrap();
    let socket = run.join("dispatchd").join("dispatchd.sock");
    let mut cmd = topo.cmd(&topo.dispatcher(), "unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        READ_ONLY_SYSTEM,
        "sh",
    ])
    .arg(&run)
    .arg(DISPATCHD)
    .arg("run")
    .args(Topology::default_flags(2))
    .arg("--control-socket")
    .arg(&socket)
    .env("NOTIFY_SOCKET", manager.path())
    .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string());
    let mut lb = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ready = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    // The socket's directory made by dispatchd (RuntimeDirectory= makes it
    // under systemd), and the control socket answers.
    let out = Command::new(DISPATCHD)
        .args(["ctl", "--socket"])
        .arg(&socket)
        .arg("ready")
        .output()
        .expect("running dispatchd ctl");
    assert!(out.status.success(), "{}", dispatchd_testkit::text(&out));
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "10"]);
    assert!(out.status.success(), "{}", dispatchd_testkit::text(&out));
    lb.signal("HUP");
    let reloading = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&reloading, "RELOADING"), Some("1"), "{reloading}");
    let done = manager.next_state(Duration::from_secs(2));
    assert!(
        field(&done, "STATUS").is_some_and(|s| s.starts_with("reloaded")),
        "{done}"
    );
    lb.signal("TERM");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
    assert!(!socket.exists(), "the control socket is removed at exit");
    assert!(!topo.xdp_attached("l0"));
    std::fs::remove_dir_all(&run).unwrap();
}

/// STATUS= follows `ctl ready`: ready with daemons up, not ready (naming the
/// service) once none is healthy, ready again when one is back.
#[test]
fn the_status_follows_readiness() {
    let topo = Topology::up(DISPATCHD, "ntst", 1, 1);
    let servers = topo.serve(1);
    let manager = Manager::open("st");
    let mut flags = Topology::default_flags(1);
    flags.extend(["--health-interval-ms", "200"].map(String::from));
    let mut lb = start(&topo, &manager, &flags);
    let ready = manager.next_state(Duration::from_secs(2));
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(field(&ready, "STATUS"), Some("serving; ready"), "{ready}");

    drop(servers);
    let down = manager.next_state(Duration::from_secs(5));
    assert_eq!(
        field(&down, "STATUS"),
        Some(format!("serving; not ready: service {VIP} has no healthy daemon").as_str()),
        "{down}"
    );
    assert_eq!(field(&down, "READY"), None, "a status change only: {down}");
    let _servers = topo.serve(1);
    let up = manager.next_state(Duration::from_secs(5));
    assert_eq!(field(&up, "STATUS"), Some("serving; ready"), "{up}");
    lb.signal("TERM");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
}
