//! Hostile and malformed traffic, exhaustion, crashes and privileges, on the real
//! topology. Needs root.
use std::time::Duration;

use dispatchd_testkit::{
    json::{sum_of, u64_at, Value},
    text, wait_until, Proc, Topology, VIP,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

fn iface_mac(topo: &Topology, ns: &str, iface: &str) -> String {
    topo.mac(ns, iface).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sends raw frames with `dispatchd-testkit inject` from `ns` out of `iface`.
fn inject(topo: &Topology, ns: &str, iface: &str, dst_mac: &str, args: &[&str]) -> String {
    let mut all = vec!["inject", "--iface", iface, "--dst-mac", dst_mac];
    all.extend_from_slice(args);
    let out = topo.run(ns, &topo.programs().testkit, &all);
    assert!(out.status.success(), "inject {args:?}:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn still_running(lb: &mut Proc) {
    assert!(lb.exited().is_none(), "dispatchd died:\n{}", lb.output());
}

#[test]
fn malformed_frames_are_counted_by_reason_and_never_forwarded() {
    let topo = Topology::up(DISPATCHD, "bad", 2, 1);
    let _servers = topo.serve(2);
    let mut lb = topo.dispatchd(&Topology::default_flags(2));
    let mut long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "3", "--interval-ms", "50"],
        "opened",
    );
    let before = topo.stats();

    let l0 = iface_mac(&topo, &topo.dispatcher(), "l0");
    let rounds = 20u64;
    let sent = inject(
        &topo,
        &topo.client(),
        "c0",
        &l0,
        &[
            "--src-ip",
            "198.18.0.2",
            "--to",
            VIP,
            "--kind",
            "malformed",
            "--count",
            &rounds.to_string(),
        ],
    );
    let expected: Vec<(String, u64)> = sent
        .lines()
        .filter_map(|l| {
            let (k, n) = l.strip_prefix("sent ")?.split_once('=')?;
            Some((k.to_owned(), n.parse().ok()?))
        })
        .collect();
    assert!(expected.len() >= 12, "{sent}");
    std::thread::sleep(Duration::from_millis(300));
    let after = topo.stats();
    still_running(&mut lb);

    for (kind, n) in &expected {
        let delta = sum_of(&after, kind) - sum_of(&before, kind);
        // IPv6 and VLAN counts also see the kernel's own IPv6 chatter on the link.
        if kind == "ipv6" || kind == "truncated" {
            assert!(delta >= *n, "{kind}: counted {delta}, sent {n}");
        } else {
            assert_eq!(delta, *n, "{kind}: counted {delta}, sent {n}\n{after}");
        }
    }
    // Nothing malformed made a connection or reached a daemon: the only
    // connection is the long-lived one, and what the worker sent to the back is
    // exactly what it accepted.
    assert_eq!(sum_of(&after, "new_flows"), 1, "{after}");
    let forwarded = sum_of(&after, "tx_back") - sum_of(&before, "tx_back");
    let accepted = (sum_of(&after, "rx_front") - sum_of(&before, "rx_front"))
        - (sum_of(&after, "invalid") - sum_of(&before, "invalid"))
        - (sum_of(&after, "dropped") - sum_of(&before, "dropped"));
    assert_eq!(forwarded, accepted, "{after}");
    assert!(
        long.wait(Duration::from_secs(10)).success(),
        "the open connection broke:\n{}",
        long.output()
    );
}

#[test]
fn a_full_table_refuses_new_connections_and_keeps_the_accepted_ones() {
    let topo = Topology::up(DISPATCHD, "full", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--flow-capacity", "1000", "--linger-ms", "300"].map(String::from));
    let _lb = topo.dispatchd(&flags);

    let out = topo.client_many(2000, 200);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "accepted connections were disturbed:\n{}",
        text(&out)
    );
    assert!(stdout.contains("accepted=1000 refused=1000"), "{stdout}");
    assert!(stdout.contains("disturbed=0"), "{stdout}");
    let json = topo.stats();
    assert!(
        sum_of(&json, "table_full") >= 1000,
        "refusals are counted: {json}"
    );

    wait_until(
        Duration::from_secs(5),
        "records freed after the close",
        || u64_at(&topo.stats(), "/workers/0/flows") == 0,
    );
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "200",
        "--concurrency",
        "4",
    ]);
    assert!(
        out.status.success(),
        "new connections after the flood of closes:\n{}",
        text(&out)
    );
}

#[test]
fn a_syn_flood_expires_and_real_connections_still_work() {
    let topo = Topology::up(DISPATCHD, "flood", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--syn-timeout-ms", "2000"].map(String::from));
    let mut lb = topo.dispatchd(&flags);
    // Warm up first: the workers allocate their tables as they start.
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "10"]);
    assert!(out.status.success(), "{}", text(&out));
    let rss_before = rss_kib(&lb);
    let mut flood = topo.cmd(&topo.client(), &topo.programs().testkit);
    flood.args(topo.inject_args("198.18.128.1", VIP, "syn-flood", 100_000));
    let flooding = flood
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("starting the flood");
    // Real clients during the flood.
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "200",
        "--concurrency",
        "4",
        "--timeout-ms",
        "5000",
    ]);
    let real = String::from_utf8_lossy(&out.stdout).into_owned();
    let flood_out = flooding.wait_with_output().expect("flood finished");
    println!(
        "flood: {}real clients during it: {}",
        String::from_utf8_lossy(&flood_out.stdout),
        real
    );
    assert!(flood_out.status.success(), "the flood generator failed");
    assert!(
        out.status.success(),
        "real connections during the flood:\n{}",
        text(&out)
    );

    let json = topo.stats();
    let half_open = u64_at(&json, "/connections");
    println!("tracked right after the flood: {half_open}");
    // Under the flood the worker's RX ring overflows (counted by the kernel, not
    // here): tens of thousands of half-open records is the point, not all 100,000.
    assert!(
        sum_of(&json, "new_flows") >= 20_000,
        "the flood reached the worker: {json}"
    );
    wait_until(Duration::from_secs(8), "half-open records expired", || {
        let j = topo.stats();
        u64_at(&j, "/connections") == 0 && u64_at(&j, "/workers/0/flows") == 0
    });
    still_running(&mut lb);
    let rss_after = rss_kib(&lb);
    println!("dispatchd RSS {rss_before} KiB before, {rss_after} KiB after the flood");
    // The flow table is allocated up front; the loop's tracker grew and shrank.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "memory bounded: {rss_before} -> {rss_after} KiB"
    );
}

fn rss_kib(p: &Proc) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid())).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

#[test]
fn frames_from_unknown_back_sources_are_never_rewritten() {
    let topo = Topology::up(DISPATCHD, "spoof", 2, 1);
    let _servers = topo.serve(2);
    let _lb = topo.dispatchd(&Topology::default_flags(2));
    let before = topo.stats();
    let l1 = iface_mac(&topo, &topo.dispatcher(), "l1");
    // Not a daemon at all, and a daemon's address on a port that is not its service.
    for (src, port) in [("198.19.0.99", "8080"), ("198.19.0.11", "9999")] {
        inject(
            &topo,
            &topo.daemons(),
            "s0",
            &l1,
            &[
                "--src-ip",
                src,
                "--src-port",
                port,
                "--to",
                "198.18.0.2:40000",
                "--kind",
                "ack",
                "--count",
                "50",
            ],
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = topo.stats();
    for key in ["back_steered", "rx_back", "tx_front"] {
        assert_eq!(
            sum_of(&after, key),
            sum_of(&before, key),
            "{key} moved: spoofed frames reached the worker"
        );
    }
    assert!(
        sum_of(&after, "passed") >= sum_of(&before, "passed") + 100,
        "{after}"
    );
}

#[test]
fn sigkill_during_traffic_leaves_nothing_attached_and_a_restart_serves() {
    let topo = Topology::up(DISPATCHD, "kill", 2, 1);
    let _servers = topo.serve(2);
    let lb = topo.dispatchd(&Topology::default_flags(2));
    let load = topo.client_start(
        &[
            "connect",
            "--to",
            VIP,
            "--connections",
            "100000",
            "--concurrency",
            "4",
            "--timeout-ms",
            "500",
        ],
        "",
    );
    std::thread::sleep(Duration::from_millis(700));
    lb.signal("KILL");
    drop(lb);
    drop(load);
    assert!(
        !topo.xdp_attached("l0") && !topo.xdp_attached("l1"),
        "XDP left attached after SIGKILL"
    );
    let ping = topo.run(
        &topo.client(),
        "ping",
        &["-c", "1", "-W", "2", "198.18.0.1"],
    );
    assert!(
        ping.status.success(),
        "host traffic after the crash:\n{}",
        text(&ping)
    );

    let _again = topo.dispatchd(&Topology::default_flags(2));
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "50"]);
    assert!(out.status.success(), "after the restart:\n{}", text(&out));
}

#[test]
fn the_running_daemon_holds_no_capabilities() {
    let topo = Topology::up(DISPATCHD, "caps", 2, 1);
    let _servers = topo.serve(2);
    let lb = topo.dispatchd(&Topology::default_flags(2));
    assert!(
        lb.output().contains("all capabilities dropped"),
        "{}",
        lb.output()
    );
    let tasks = std::fs::read_dir(format!("/proc/{}/task", lb.pid())).expect("tasks");
    let mut seen = 0;
    for task in tasks {
        let status =
            std::fs::read_to_string(task.expect("task").path().join("status")).expect("status");
        for key in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            let value = status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .expect(key)
                .trim()
                .to_owned();
            assert_eq!(value, "0000000000000000", "{key} of a dispatchd thread");
        }
        seen += 1;
    }
    assert!(seen >= 2, "the main thread and at least one worker");
    // Still fully working without them: traffic, control socket, a reload.
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "50"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(topo.ctl(&["backends"]).contains("health up"));
    lb.signal("HUP");
    wait_until(
        Duration::from_secs(5),
        "reload without capabilities",
        || lb.output().contains("SIGHUP: reloaded"),
    );
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "50"]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Frames the kernel steered to a worker's sockets but dropped before the worker
/// saw them (its rings full while it was stopped) are reported from the sockets'
/// own statistics, and account exactly for what the XDP program steered and the
/// worker never received. Normal traffic shows none. dispatchd itself survives
/// being stopped and continued (its io_uring wait is interrupted).
#[test]
fn kernel_socket_drops_are_reported_and_account_for_every_steered_frame() {
    let topo = Topology::up(DISPATCHD, "xskd", 2, 1);
    let _servers = topo.serve(2);
    let mut lb = topo.dispatchd(&Topology::default_flags(2));
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "50"]);
    assert!(out.status.success(), "{}", text(&out));
    // Dropped frames: RX ring full, or another drop (no fill frame, mostly).
    let socket_drops =
        |json: &Value| sum_of(json, "xsk_rx_ring_full") + sum_of(json, "xsk_rx_dropped");
    // The workers refresh these each second.
    std::thread::sleep(Duration::from_millis(1500));
    let json = topo.stats();
    assert_eq!(socket_drops(&json), 0, "normal traffic: {json}");
    assert_eq!(sum_of(&json, "xsk_fill_ring_empty"), 0, "{json}");
    assert_eq!(sum_of(&json, "xsk_invalid_descs"), 0, "{json}");

    // A stopped worker cannot drain its rings (4096 frames each); the flood
    // overflows them in the kernel.
    let l0 = iface_mac(&topo, &topo.dispatcher(), "l0");
    lb.signal("STOP");
    let sent = inject(
        &topo,
        &topo.client(),
        "c0",
        &l0,
        &[
            "--src-ip",
            "198.18.128.1",
            "--to",
            VIP,
            "--kind",
            "syn-flood",
            "--count",
            "20000",
        ],
    );
    lb.signal("CONT");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (drops, missing, json) = loop {
        std::thread::sleep(Duration::from_millis(500));
        still_running(&mut lb);
        let json = topo.stats();
        let missing = sum_of(&json, "front_steered") - sum_of(&json, "rx_front");
        let drops = socket_drops(&json);
        if drops == missing || std::time::Instant::now() > deadline {
            break (drops, missing, json);
        }
    };
    println!("flood: {sent}kernel socket drops {drops}");
    assert!(drops > 10_000, "the flood overflowed the rings: {json}");
    assert!(sum_of(&json, "xsk_fill_ring_empty") > 0, "{json}");
    assert_eq!(drops, missing, "steered but never received: {json}");
    assert_eq!(sum_of(&json, "xsk_invalid_descs"), 0, "{json}");
    still_running(&mut lb);
}

/// The one tracked connection's client address and daemon, and its phase.
fn the_connection(topo: &Topology) -> (String, String, String) {
    let conns: Value = serde_json::from_str(&topo.ctl(&["conns", "--json"])).expect("conns JSON");
    let c = &conns["connections"][0];
    let field = |k: &str| {
        c[k].as_str()
            .unwrap_or_else(|| panic!("{k} in {conns}"))
            .to_owned()
    };
    (field("client"), field("daemon"), field("state"))
}

/// The sequence and acknowledgment numbers of the client's next segment.
fn sniff_client(topo: &Topology, client: &str) -> (u32, u32) {
    let out = topo.run(
        &topo.client(),
        &topo.programs().testkit,
        &["sniff", "--iface", "c0", "--from", client],
    );
    assert!(out.status.success(), "sniff: {}", text(&out));
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |k: &str| -> u32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line:?}"))
    };
    (num("seq="), num("ack="))
}

#[test]
fn a_blind_reset_does_not_end_a_connection_and_an_in_window_one_does() {
    let topo = Topology::up(DISPATCHD, "rst", 1, 1);
    let _servers = topo.serve(1);
    let mut flags = Topology::default_flags(1);
    flags.extend(["--rst-linger-ms", "1000"].map(String::from));
    let _lb = topo.dispatchd(&flags);
    let l0 = iface_mac(&topo, &topo.dispatcher(), "l0");
    let l1 = iface_mac(&topo, &topo.dispatcher(), "l1");
    let resets = |from_ns: &str, iface: &str, mac: &str, from: &str, to: &str, seq: u32| {
        let (ip, port) = from.split_once(':').expect("ADDR:PORT");
        inject(
            &topo,
            from_ns,
            iface,
            mac,
            &[
                "--src-ip",
                ip,
                "--src-port",
                port,
                "--to",
                to,
                "--kind",
                "rst",
                "--seq",
                &seq.to_string(),
            ],
        );
    };
    let ignored = || sum_of(&topo.stats(), "rst_ignored");

    let mut long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "3", "--interval-ms", "50"],
        "opened",
    );
    let (client, daemon, _) = the_connection(&topo);
    let (seq, ack) = sniff_client(&topo, &client);
    // Half the sequence space away from what the connection expects: outside
    // any window, from the client's side and from the daemon's.
    resets(
        &topo.client(),
        "c0",
        &l0,
        &client,
        VIP,
        seq.wrapping_add(1 << 31),
    );
    resets(
        &topo.daemons(),
        "s0",
        &l1,
        &daemon,
        &client,
        ack.wrapping_add(1 << 31),
    );
    wait_until(Duration::from_secs(2), "both resets judged", || {
        ignored() == 2
    });
    assert_eq!(the_connection(&topo).2, "Established");
    assert!(
        long.wait(Duration::from_secs(10)).success(),
        "the connection broke:\n{}",
        long.output()
    );

    // A reset at the client's own sequence number ends it: the record lingers
    // (state Reset) and then goes.
    wait_until(
        Duration::from_secs(5),
        "the first connection's record gone",
        || u64_at(&topo.stats(), "/connections") == 0,
    );
    let _long = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "5", "--interval-ms", "50"],
        "opened",
    );
    let (client, _, _) = the_connection(&topo);
    let (seq, _) = sniff_client(&topo, &client);
    resets(&topo.client(), "c0", &l0, &client, VIP, seq);
    wait_until(Duration::from_secs(2), "the reset accepted", || {
        the_connection(&topo).2 == "Reset"
    });
    assert_eq!(ignored(), 2);
    wait_until(
        Duration::from_secs(3),
        "the record gone after its linger",
        || u64_at(&topo.stats(), "/connections") == 0,
    );
}

/// Opens `count` connections to the metrics listener on 127.0.0.1:`port` and
/// as many to the control socket at `control`, sends nothing on any, and holds
/// them until stdin closes; then prints how many of each the server had closed
/// (EOF) by then.
const HOLD_IDLE: &str = r#"
import socket, sys
port, control, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
held = []
for _ in range(count):
    t = socket.create_connection(("127.0.0.1", port), timeout=2)
    u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    u.settimeout(2)
    u.connect(control)
    held += [("tcp", t), ("unix", u)]
print("holding", len(held), flush=True)
sys.stdin.read()
closed = {"tcp": 0, "unix": 0}
for kind, s in held:
    s.setblocking(False)
    try:
        if s.recv(1) == b"":
            closed[kind] += 1
    except BlockingIOError:
        pass
print("closed", closed["tcp"], closed["unix"], flush=True)
"#;

/// Idle connections to the metrics listener and the control socket (clients
/// that send nothing, or whose peer vanished) hold a descriptor each. With the
/// process's limit used up by them, a health probe that cannot get a socket
/// ended the management loop, and dispatchd with it; and they were never
/// closed. Now such a probe is tried again an interval later, the daemons keep
/// their health, and the server closes a connection whose request has not come
/// within its deadline, which gives the descriptors back.
#[test]
fn idle_control_connections_neither_stop_the_daemon_nor_hold_descriptors_for_good() {
    use std::io::BufRead;
    let topo = Topology::up(DISPATCHD, "fds", 2, 1);
    let _servers = topo.serve(2);
    let port = 9157;
    let mut flags = Topology::default_flags(2);
    flags.extend(
        [
            "--metrics-listen",
            "127.0.0.1:9157",
            "--health-interval-ms",
            "100",
        ]
        .map(String::from),
    );
    let mut lb = topo.dispatchd(&flags);
    let pid = lb.pid();
    // A limit a few descriptors above what the daemon holds: the idle
    // connections reach it. (It raised its soft limit to the hard one at
    // start; prlimit sets both.)
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the daemon's descriptors")
        .count();
    let limit = (open + 12).to_string();
    let set = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("prlimit (util-linux)");
    assert!(set.status.success(), "prlimit: {}", text(&set));

    let mut hold = topo
        .cmd(&topo.dispatcher(), "/usr/bin/python3")
        .args([
            "-c",
            HOLD_IDLE,
            &port.to_string(),
            &topo.control_socket(),
            "10",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = std::io::BufReader::new(hold.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("reading");
    assert_eq!(first, "holding 20", "the idle clients");
    // Many probe intervals with every descriptor taken.
    std::thread::sleep(Duration::from_secs(2));
    still_running(&mut lb);
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "20"]);
    assert!(
        out.status.success(),
        "connections while out of descriptors: {}",
        text(&out)
    );
    // The deadline closes the idle ones, which gives their descriptors back:
    // the control socket answers again.
    wait_until(Duration::from_secs(15), "ctl answering again", || {
        std::process::Command::new(DISPATCHD)
            .args([
                "ctl",
                "--socket",
                &topo.control_socket(),
                "backends",
                "--json",
            ])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    still_running(&mut lb);
    let list: Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    for b in list.as_array().expect("a list") {
        assert_eq!(b["state"], "up", "a daemon lost its health: {b}");
    }
    drop(hold.stdin.take());
    let last = lines.next().expect("a line").expect("reading");
    let closed: Vec<usize> = last
        .strip_prefix("closed ")
        .unwrap_or_else(|| panic!("{last}"))
        .split(' ')
        .map(|n| n.parse().expect("a count"))
        .collect();
    // Those the daemon accepted were closed at their deadline; the rest were
    // accepted after the first ones closed, and closed at theirs or are
    // still within it. So at least the ones it held at first were closed.
    assert!(
        closed.iter().sum::<usize>() >= 8,
        "idle connections closed by the server (tcp, unix): {closed:?}"
    );
    let _ = hold.wait();
}
