//! The control plane end to end: record removal on close, reset and idleness,
//! health checks, drain, reload and the control socket, on the real topology.
//! Needs root.
use std::{os::unix::fs::PermissionsExt, time::Duration};

use dispatchd_testkit::{daemon_addr, json::u64_at, per_daemon, text, wait_until, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Connections the management loop tracks, and records the workers hold.
fn records(topo: &Topology) -> (u64, u64) {
    let stats = topo.stats();
    (
        u64_at(&stats, "/connections"),
        u64_at(&stats, "/workers/0/flows"),
    )
}

fn connect(topo: &Topology, extra: &[&str]) -> String {
    let mut args = vec!["connect", "--to", VIP];
    args.extend_from_slice(extra);
    let out = topo.client_run(&args);
    assert!(out.status.success(), "connect {extra:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn closed_and_reset_connections_leave_no_records() {
    let topo = Topology::up(DISPATCHD, "close", 4, 1);
    let servers = topo.serve(4);
    let mut flags = Topology::default_flags(4);
    flags.extend(["--linger-ms", "500", "--rst-linger-ms", "500"].map(String::from));
    let _lb = topo.dispatchd(&flags);

    connect(&topo, &["--connections", "1000", "--concurrency", "4"]);
    let took = wait_until(
        Duration::from_secs(5),
        "records of closed connections removed",
        || records(&topo) == (0, 0),
    );
    println!("1000 closed connections gone {took:?} after the last close (linger 500 ms)");

    connect(
        &topo,
        &["--connections", "200", "--concurrency", "4", "--reset"],
    );
    wait_until(
        Duration::from_secs(3),
        "records of client-reset connections removed",
        || records(&topo) == (0, 0),
    );

    drop(servers);
    let _resetting = (0..4)
        .map(|i| topo.serve_one(i, &["--reset"]))
        .collect::<Vec<_>>();
    connect(
        &topo,
        &[
            "--connections",
            "200",
            "--concurrency",
            "4",
            "--expect-reset",
        ],
    );
    wait_until(
        Duration::from_secs(3),
        "records of daemon-reset connections removed",
        || records(&topo) == (0, 0),
    );
}

#[test]
fn an_idle_connection_is_removed_after_the_idle_timeout() {
    let topo = Topology::up(DISPATCHD, "idle", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--idle-timeout-ms", "2000"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    // One exchange, then silence for longer than the idle timeout.
    let _idle = topo.client_start(
        &[
            "hold",
            "--to",
            VIP,
            "--seconds",
            "1",
            "--interval-ms",
            "8000",
        ],
        "opened",
    );
    wait_until(Duration::from_secs(2), "the connection is tracked", || {
        records(&topo) == (1, 1)
    });
    let took = wait_until(Duration::from_secs(6), "the idle record removed", || {
        records(&topo) == (0, 0)
    });
    assert!(
        took >= Duration::from_millis(1000),
        "removed after {took:?}: too early for a 2 s idle timeout"
    );
}

fn health_of(topo: &Topology, daemon: &str) -> String {
    let all = topo.ctl(&["backends"]);
    let line = all
        .lines()
        .find(|l| l.starts_with(daemon))
        .unwrap_or_else(|| panic!("{daemon} in {all}"));
    line.split_whitespace()
        .skip_while(|w| *w != "health")
        .nth(1)
        .expect("health value")
        .to_owned()
}

#[test]
fn a_failed_daemon_is_avoided_until_it_comes_back() {
    let topo = Topology::up(DISPATCHD, "health", 3, 1);
    let mut servers: Vec<_> = (0..3).map(|i| topo.serve_one(i, &[])).collect();
    let mut flags = Topology::default_flags(3);
    flags.extend(["--health-interval-ms", "200"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    let victim = daemon_addr(1);

    drop(servers.remove(1));
    // interval x fall = 200 ms x 3, plus a probe in flight.
    let took = wait_until(Duration::from_secs(3), "daemon marked down", || {
        health_of(&topo, &victim) == "down"
    });
    println!("marked down {took:?} after it stopped");
    let spread = per_daemon(&connect(
        &topo,
        &["--connections", "90", "--concurrency", "3"],
    ));
    assert!(
        spread.iter().all(|(d, _)| *d != victim),
        "no new connection to the failed daemon: {spread:?}"
    );
    assert_eq!(spread.iter().map(|(_, n)| n).sum::<usize>(), 90);

    servers.insert(1, topo.serve_one(1, &[]));
    wait_until(Duration::from_secs(3), "daemon marked up", || {
        health_of(&topo, &victim) == "up"
    });
    let spread = per_daemon(&connect(
        &topo,
        &["--connections", "90", "--concurrency", "3"],
    ));
    assert!(
        spread.iter().any(|(d, n)| *d == victim && *n > 0),
        "the daemon gets connections again: {spread:?}"
    );
}

#[test]
fn a_draining_daemon_keeps_its_connection_and_gets_no_new_ones() {
    let topo = Topology::up(DISPATCHD, "drain", 3, 1);
    let _servers = topo.serve(3);
    let _lb = topo.dispatchd(&Topology::default_flags(3));
    let mut long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "4", "--interval-ms", "50"],
        "opened",
    );
    let opened = long.output();
    let daemon = opened
        .lines()
        .find_map(|l| l.strip_prefix("daemon=")?.strip_suffix(" opened"))
        .expect("hold names its daemon")
        .to_owned();

    let reply = topo.ctl(&["drain", &daemon]);
    assert!(reply.contains("draining"), "{reply}");
    let spread = per_daemon(&connect(
        &topo,
        &["--connections", "60", "--concurrency", "3"],
    ));
    assert!(
        spread.iter().all(|(d, _)| *d != daemon),
        "draining daemon got new connections: {spread:?}"
    );
    assert!(
        long.wait(Duration::from_secs(10)).success(),
        "the drained daemon's connection broke:\n{}",
        long.output()
    );

    topo.ctl(&["undrain", &daemon]);
    let spread = per_daemon(&connect(
        &topo,
        &["--connections", "60", "--concurrency", "3"],
    ));
    assert!(
        spread.iter().any(|(d, _)| *d == daemon),
        "undrained daemon gets connections: {spread:?}"
    );
}

/// A client that reuses the port of a connection that has just closed (its
/// record lingers) after that connection's daemon was drained opens a new
/// connection: it goes to another daemon, not the drained one.
#[test]
fn a_reused_port_of_a_drained_daemons_closed_connection_goes_elsewhere() {
    let topo = Topology::up(DISPATCHD, "drainport", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--rst-linger-ms", "20000"].map(String::from));
    let lb = topo.dispatchd(&flags);
    let from_the_port = || {
        let out = topo.client_reset_from_port(VIP, 40000);
        assert!(out.status.success(), "{}", text(&out));
        per_daemon(&String::from_utf8_lossy(&out.stdout))
    };
    let first = from_the_port();
    let [(daemon, 1)] = &first[..] else {
        panic!("one connection: {first:?}");
    };
    assert_eq!(
        u64_at(&topo.stats(), "/connections"),
        1,
        "its record lingers"
    );
    let reply = topo.ctl(&["drain", daemon]);
    assert!(reply.contains("draining"), "{reply}");
    let again = from_the_port();
    assert!(
        again.len() == 1 && again[0].0 != *daemon,
        "the drained {daemon} got the port's new connection: {again:?}\n{}",
        lb.output()
    );
    assert_eq!(u64_at(&topo.stats(), "/workers/0/new_flows"), 2);
}

/// `ctl weight`: a weight shifts the share of new connections at once (the
/// records kept, as across a reload), 0 drains the daemon while its open
/// connection goes on, and a weight above 0 gives it connections again.
#[test]
fn a_weight_set_by_ctl_shifts_new_connections_and_zero_drains() {
    let topo = Topology::up(DISPATCHD, "weight", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--policy", "weighted_round_robin"].map(String::from));
    let lb = topo.dispatchd(&flags);
    let (heavy, light) = (daemon_addr(0), daemon_addr(1));
    let share = |topo: &Topology| {
        let spread = per_daemon(&connect(
            topo,
            &["--connections", "400", "--concurrency", "4"],
        ));
        let of = |d: &str| spread.iter().find(|(x, _)| x == d).map_or(0, |(_, n)| *n);
        (of(&heavy), of(&light))
    };

    let reply = topo.ctl(&["weight", &heavy, "3"]);
    assert_eq!(reply, format!("ok: {heavy} weight 3\n"));
    let (h, l) = share(&topo);
    println!("weight 3 : 1 -> {h} : {l}");
    assert_eq!(h + l, 400);
    assert!((280..=320).contains(&h), "weight 3 of 4 took {h} of 400");
    assert!(lb
        .output()
        .contains(&format!("daemon {heavy} weight 1 -> 3")));

    let mut long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "3", "--interval-ms", "50"],
        "opened",
    );
    let reply = topo.ctl(&["weight", &heavy, "0"]);
    assert_eq!(reply, format!("ok: {heavy} weight 0: draining\n"));
    assert_eq!(
        share(&topo),
        (0, 400),
        "a daemon of weight 0 takes nothing new"
    );
    assert!(
        long.wait(Duration::from_secs(10)).success(),
        "an open connection outlives weight 0:\n{}",
        long.output()
    );

    topo.ctl(&["weight", &heavy, "1"]);
    let (h, l) = share(&topo);
    assert!((180..=220).contains(&h), "weight 1 : 1 again: {h} : {l}");
}

#[test]
fn sighup_adds_and_removes_daemons_without_breaking_remaining_connections() {
    let topo = Topology::up(DISPATCHD, "hup", 4, 1);
    let _servers = topo.serve(4);
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let write = |daemons: &[usize]| {
        let list: Vec<String> = daemons
            .iter()
            .map(|&i| format!("\"{}\"", daemon_addr(i)))
            .collect();
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\n[[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
            list.join(", ")
        );
        std::fs::write(&file, body).expect("writing the config");
    };
    write(&[0, 1, 2]);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let mut long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "4", "--interval-ms", "50"],
        "opened",
    );
    let kept = daemon_addr(0);
    assert!(
        long.output().contains(&format!("daemon={kept} opened")),
        "{}",
        long.output()
    );

    write(&[0, 1, 3]);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    // A new daemon takes connections once its health probe has resolved its next hop.
    let added = daemon_addr(3);
    wait_until(Duration::from_secs(5), "added daemon in selection", || {
        topo.ctl(&["backends"])
            .lines()
            .any(|l| l.starts_with(&added) && l.contains("state up"))
    });
    let spread = per_daemon(&connect(
        &topo,
        &["--connections", "90", "--concurrency", "3"],
    ));
    assert!(
        spread.iter().any(|(d, n)| *d == daemon_addr(3) && *n > 0),
        "added daemon gets traffic: {spread:?}"
    );
    assert!(
        spread.iter().all(|(d, _)| *d != daemon_addr(2)),
        "removed daemon gets none: {spread:?}"
    );
    assert!(
        long.wait(Duration::from_secs(10)).success(),
        "connection to {kept} broke in the reload:\n{}",
        long.output()
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn ctl_stats_json_and_metrics_after_traffic() {
    let topo = Topology::up(DISPATCHD, "stats", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--metrics-listen", "127.0.0.1:9109"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    connect(&topo, &["--connections", "200", "--concurrency", "4"]);

    let mode = std::fs::metadata(topo.control_socket())
        .expect("control socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket mode");

    let stats = topo.stats();
    for at in [
        "/workers/0/rx_front",
        "/workers/0/rx_back",
        "/workers/0/tx_front",
        "/workers/0/tx_back",
        "/workers/0/new_flows",
        "/xdp/front_steered",
        "/xdp/back_steered",
    ] {
        assert!(u64_at(&stats, at) > 0, "{at} is zero in {stats}");
    }
    assert_eq!(u64_at(&stats, "/workers/0/new_flows"), 200, "{stats}");
    let p: Vec<u64> = ["p50", "p90", "p99", "p99.9", "p99.99", "max"]
        .iter()
        .map(|k| u64_at(&stats, &format!("/per_packet_ns/{k}")))
        .collect();
    let section = &stats["per_packet_ns"];
    assert!(p[0] > 0, "{section}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles ordered: {p:?}"
    );

    let out = topo.run(
        &topo.dispatcher(),
        "bash",
        &["-c", "exec 3<>/dev/tcp/127.0.0.1/9109; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"],
    );
    let metrics = String::from_utf8_lossy(&out.stdout);
    assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{}", text(&out));
    assert!(
        metrics.contains("dispatchd_new_flows_total{worker=\"0\"} 200"),
        "{metrics}"
    );
    // A histogram in seconds, its count and sum beside its buckets.
    for part in [
        "dispatchd_packet_processing_seconds_bucket{le=\"+Inf\"} ",
        "dispatchd_packet_processing_seconds_sum ",
        "dispatchd_packet_processing_seconds_count ",
    ] {
        let value: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(part))
            .unwrap_or_else(|| panic!("no {part} in {metrics}"))
            .parse()
            .expect("a number");
        assert!(value > 0.0, "{part}{value}");
    }
}

#[test]
fn ctl_conns_filters_by_daemon_and_client_and_stops_at_the_limit() {
    let topo = Topology::up(DISPATCHD, "connsf", 2, 1);
    let _servers = topo.serve(2);
    let _lb = topo.dispatchd(&Topology::default_flags(2));
    // Round robin: the two long connections go one to each daemon.
    let holds: Vec<_> = (0..2)
        .map(|_| {
            topo.client_start(
                &[
                    "hold",
                    "--to",
                    VIP,
                    "--seconds",
                    "5",
                    "--interval-ms",
                    "100",
                ],
                "opened",
            )
        })
        .collect();
    let conns = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["conns", "--json"];
        all.extend(args);
        serde_json::from_str(&topo.ctl(&all)).expect("conns JSON")
    };
    let rows = |v: &serde_json::Value| v["connections"].as_array().expect("rows").len();

    let every = conns(&[]);
    assert_eq!(
        (rows(&every), &every["matched"], &every["tracked"]),
        (2, &2.into(), &2.into())
    );
    let d0 = daemon_addr(0);
    let to_d0 = conns(&["--daemon", &d0]);
    assert_eq!((rows(&to_d0), &to_d0["matched"]), (1, &1.into()), "{to_d0}");
    assert_eq!(to_d0["connections"][0]["daemon"], d0.as_str());
    let client = to_d0["connections"][0]["client"]
        .as_str()
        .expect("client")
        .to_owned();
    let by_client = conns(&["--client", &client]);
    assert_eq!(
        by_client["connections"][0]["daemon"],
        d0.as_str(),
        "{by_client}"
    );
    assert_eq!(rows(&conns(&["--client", "198.18.0.2"])), 2);
    assert_eq!(rows(&conns(&["--client", "198.18.0.9"])), 0);
    let limited = conns(&["--limit", "1"]);
    assert_eq!(
        (rows(&limited), &limited["matched"]),
        (1, &2.into()),
        "{limited}"
    );
    let text = topo.ctl(&["conns", "--limit", "1"]);
    assert!(
        text.ends_with("1 shown of 2 matching of 2 tracked connections\n"),
        "{text}"
    );
    drop(holds);
}

/// In `poll = "wakeup"` an idle worker sleeps in poll(). 3000 connections
/// closed at once (`many` holds them, then closes them all) leave 3000 records
/// that the loop removes together after the linger: the loop's commands must
/// wake the worker. A worker that only took them when its poll timed out, 64
/// per 100 ms, still held some 3.8 s after the close.
#[test]
fn an_idle_wakeup_worker_takes_the_loops_removals_at_once() {
    let topo = Topology::up(DISPATCHD, "wake", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--linger-ms", "500", "--poll", "wakeup"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    let out = topo.client_many(3000, 100);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout.contains("accepted=3000 refused=0"), "{stdout}");
    let took = wait_until(
        Duration::from_secs(3),
        "3000 records removed within 2.5 s of their linger (500 ms)",
        || records(&topo) == (0, 0),
    );
    println!("3000 records gone {took:?} after the close (linger 500 ms)");
    let stats = topo.stats();
    assert!(
        u64_at(&stats, "/workers/0/command_wakes") > 0,
        "the loop woke the worker: {stats}"
    );
}

#[test]
fn a_tiny_event_ring_under_a_connection_storm_loses_no_event() {
    let topo = Topology::up(DISPATCHD, "tiny", 4, 1);
    let _servers = topo.serve(4);
    let mut flags = Topology::default_flags(4);
    flags.extend(["--event-ring", "2", "--linger-ms", "500"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    // The last events wait in the worker's overflow after the storm: an idle
    // worker must still send them (it slept 100 ms per two of them before,
    // and records outlived this wait in 3 runs of 10).
    storm_loses_no_event(&topo, Duration::from_secs(3));
}

/// 3000 connections at concurrency 16 through a worker whose event ring
/// (`--event-ring 2`, `--linger-ms 500`) overflows: every connection must
/// succeed (`connect` fails on any error) although the loop can take only two
/// events of the worker at a time, no event is dropped, and no record is left
/// `records_within` after the storm.
fn storm_loses_no_event(topo: &Topology, records_within: Duration) {
    connect(topo, &["--connections", "3000", "--concurrency", "16"]);
    let stats = topo.stats();
    let (deferred, held_back) = (
        u64_at(&stats, "/workers/0/events_deferred"),
        u64_at(&stats, "/workers/0/held_back"),
    );
    println!("events deferred {deferred}, rounds held back {held_back}");
    assert!(deferred > 0, "the ring never overflowed: {stats}");
    assert_eq!(u64_at(&stats, "/workers/0/events_dropped"), 0, "{stats}");
    wait_until(
        records_within,
        "no record left after the linger (500 ms)",
        || records(topo) == (0, 0),
    );
}

/// The scheduling policy and real-time priority of `pid`'s thread `name`
/// (/proc/PID/task/TID/stat fields 41 and 40).
fn thread_policy(pid: u32, name: &str) -> (u32, u32) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("the process's threads") {
        let path = task.expect("a thread").path();
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if !head.ends_with(&format!("({name}")) {
            continue;
        }
        // Fields from the 3rd on; rt_priority is the 40th, policy the 41st.
        let f: Vec<&str> = rest.split_whitespace().collect();
        return (f[41 - 3].parse().unwrap(), f[40 - 3].parse().unwrap());
    }
    panic!("no thread {name} in process {pid}");
}

/// A SCHED_FIFO worker (`--worker-priority`) with the management loop pinned
/// to its core, under the storm that makes the worker wait for the loop: it
/// must sleep while it waits. A spin or a yield would leave the loop, an
/// ordinary thread, only what the kernel's real-time throttling takes back.
#[test]
fn a_fifo_worker_sharing_its_core_with_the_loop_loses_no_event() {
    let topo = Topology::up(DISPATCHD, "fifo", 4, 1);
    let _servers = topo.serve(4);
    let mut flags = Topology::default_flags(4);
    flags.extend(
        [
            "--event-ring",
            "2",
            "--linger-ms",
            "500",
            "--poll",
            "wakeup",
            "--worker-priority",
            "10",
            "--cores",
            "1",
            "--control-core",
            "1",
        ]
        .map(String::from),
    );
    let lb = topo.dispatchd(&flags);
    assert_eq!(
        thread_policy(lb.pid(), "dispatchd-w0"),
        (libc::SCHED_FIFO as u32, 10),
        "the worker runs at SCHED_FIFO 10"
    );
    // The thread that spawned it went back to the ordinary scheduler.
    assert_eq!(
        thread_policy(lb.pid(), "dispatchd"),
        (libc::SCHED_OTHER as u32, 0),
        "the management thread"
    );
    storm_loses_no_event(&topo, Duration::from_secs(5));
}
