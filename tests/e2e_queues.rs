//! Every RX queue of both interfaces served, on links with several queues: real
//! XDP program, real AF_XDP sockets, real kernel TCP in network namespaces.
//! Needs root.
//!
//! A veth spreads what its peer sends over its RX queues by the sender's TX
//! queue, which the sender's kernel picks per connection (by the socket's
//! hash), so connections from many source ports reach every queue, as RSS
//! spreads them on a NIC.
use std::time::Duration;

use dispatchd_testkit::{json::Value, per_daemon, text, wait_until, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Every socket in `ctl stats --json`, as (worker, side, queue, rx, tx).
fn sockets(stats: &Value) -> Vec<(u64, String, u64, u64, u64)> {
    let workers = stats["workers"]
        .as_array()
        .unwrap_or_else(|| panic!("no workers in {stats}"));
    let mut out = Vec::new();
    for w in workers {
        let id = w["worker"].as_u64().expect("worker id");
        for s in w["sockets"].as_array().expect("a worker's sockets") {
            let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
            let side = s["side"].as_str().expect("side").to_owned();
            out.push((id, side, n("queue"), n("rx"), n("tx")));
        }
    }
    out
}

/// Short connections and persistent ones from many source ports: none may fail.
fn drive_traffic(topo: &Topology) {
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "2000",
        "--concurrency",
        "8",
        "--timeout-ms",
        "3000",
    ]);
    assert!(
        out.status.success(),
        "short connections failed:\n{}",
        text(&out)
    );
    assert_eq!(
        per_daemon(&String::from_utf8_lossy(&out.stdout))
            .iter()
            .map(|(_, n)| n)
            .sum::<usize>(),
        2000
    );
    let out = topo.client_run(&["rr", "--to", VIP, "--connections", "32", "--seconds", "2"]);
    assert!(
        out.status.success(),
        "persistent connections failed:\n{}",
        text(&out)
    );
}

/// Every socket of `side` for queues `0..queues` exists once and received
/// traffic, and sent some too where `every_tx` (a worker sends the other
/// side's frames on its socket `i % sockets of this side`, so with fewer
/// sockets on the other side, some of this side's only receive).
fn assert_every_queue_served(stats: &Value, side: &str, queues: u64, every_tx: bool) {
    let all = sockets(stats);
    for q in 0..queues {
        let found: Vec<_> = all
            .iter()
            .filter(|(_, s, queue, _, _)| s == side && *queue == q)
            .collect();
        assert_eq!(found.len(), 1, "{side} queue {q} has one socket: {all:?}");
        let (worker, _, _, rx, tx) = found[0];
        assert!(
            *rx > 0 && (*tx > 0 || !every_tx),
            "{side} queue {q} (worker {worker}) carried no traffic: {all:?}"
        );
    }
    assert!(
        all.iter().all(|(_, s, q, _, _)| s != side || *q < queues),
        "no socket beyond the {queues} {side} queues: {all:?}"
    );
}

/// Links with 4 queues and dispatchd's defaults: every queue is served, no
/// connection fails, and every socket carries traffic. (With one socket per
/// side, frames on queues 1-3 were dropped by the XDP program for want of a
/// socket, and 15 of 15 short connections failed.)
#[test]
fn four_queues_with_default_settings_serve_every_queue() {
    let topo = Topology::up(DISPATCHD, "q4", 4, 4);
    let _servers = topo.serve(4);
    let mut lb = topo.dispatchd(&Topology::default_flags(4));
    let started = lb.output();
    for line in [
        "l0 (front): 4 RX queues, MTU 1500 (frames fit up to 3826), AF_XDP zero-copy not advertised",
        "l0 and l1 do not advertise AF_XDP zero-copy: every socket binds in copy mode",
        // Copy mode, and this kernel takes the raised TX budget: one kick per
        // batch of 64.
        "8 sockets bound in copy mode (up to 64 frames per TX kick)",
        "UMEM 65536 frames x 4 KiB = 256 MiB locked",
    ] {
        assert!(started.contains(line), "{line:?} missing:\n{started}");
    }
    drive_traffic(&topo);

    let stats = topo.stats();
    assert_every_queue_served(&stats, "front", 4, true);
    assert_every_queue_served(&stats, "back", 4, true);
    assert_eq!(
        stats["xdp"]["no_socket"], 0,
        "no frame dropped for want of a socket: {stats}"
    );
    assert_eq!(stats["queues"]["front"]["seen"], 4, "{stats}");
    assert_eq!(stats["queues"]["front"]["served"], 4, "{stats}");
    lb.signal("TERM");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
}

/// The front with 4 queues, the back with 2, and two worker cores: two workers,
/// each with two front queues and one back queue on one UMEM, a flow table
/// each; every queue of both sides carries traffic and nothing fails.
#[test]
fn front_and_back_with_different_queue_counts() {
    let topo = Topology::up_queues(DISPATCHD, "q42", 4, 4, 2);
    let _servers = topo.serve(4);
    let mut flags = Topology::default_flags(4);
    flags.extend(["--cores", "0,1"].map(String::from));
    let mut lb = topo.dispatchd(&flags);
    let started = lb.output();
    let table_mib = dispatchd::flow::FlowTable::memory_for(1 << 20) >> 20;
    for line in [
        "worker 0: front l0 queues 0,2, back l1 queues 0: 3 sockets bound in copy mode".to_owned(),
        "worker 1: front l0 queues 1,3, back l1 queues 1: 3 sockets bound in copy mode".to_owned(),
        // frames_per_queue (16384) for each of 1.5 queue pairs, 4 KiB each,
        // on whatever pages the machine has reserved.
        "UMEM 24576 frames x 4 KiB = 96 MiB locked on ".to_owned(),
        format!("pages, flow table 1048576 connections = {table_mib} MiB"),
    ] {
        assert!(started.contains(&line), "{line:?} missing:\n{started}");
    }
    drive_traffic(&topo);

    let stats = topo.stats();
    // Each worker has one back socket: its replies leave on its first front
    // socket.
    assert_every_queue_served(&stats, "front", 4, false);
    assert_every_queue_served(&stats, "back", 2, true);
    let tx_of = |side: &str, q: u64| {
        sockets(&stats)
            .into_iter()
            .find(|(_, s, queue, _, _)| s == side && *queue == q)
            .map(|(.., tx)| tx)
    };
    assert!(tx_of("front", 0) > Some(0) && tx_of("front", 1) > Some(0));
    assert_eq!((tx_of("front", 2), tx_of("front", 3)), (Some(0), Some(0)));
    let owner = |side: &str, q: u64| {
        sockets(&stats)
            .into_iter()
            .find(|(_, s, queue, _, _)| s == side && *queue == q)
            .map(|(w, ..)| w)
    };
    for q in 0..4 {
        assert_eq!(
            owner("front", q),
            Some(q % 2),
            "front queue {q} goes to worker q % 2"
        );
    }
    for q in 0..2 {
        assert_eq!(owner("back", q), Some(q), "back queue {q}");
    }
    for w in 0..2 {
        assert!(
            stats["workers"][w]["new_flows"].as_u64() > Some(0),
            "worker {w} took connections: {stats}"
        );
    }
    assert_eq!(stats["xdp"]["no_socket"], 0, "{stats}");
    assert_eq!(stats["queues"]["back"]["seen"], 2, "{stats}");
    assert_eq!(stats["queues"]["back"]["served"], 2, "{stats}");
    lb.signal("TERM");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
}

/// One line on stderr naming what is wrong, non-zero exit, nothing attached.
fn assert_refused(topo: &Topology, args: &[String], expect: &[&str]) {
    let out = topo.dispatchd_fails(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", text(&out));
    for e in expect {
        assert!(lines[0].contains(e), "expected {e:?} in {:?}", lines[0]);
    }
    assert!(
        !topo.xdp_attached("l0") && !topo.xdp_attached("l1"),
        "nothing left attached"
    );
}

/// `queues` is an assertion of the count: one that leaves a queue of either
/// side without a socket, or names queues that do not exist, is refused at
/// start with both counts and the fix, with nothing attached. So are more
/// queues than the program's XSKMAP has slots, and zero-copy asked of
/// interfaces that cannot do it.
#[test]
fn queue_counts_that_cannot_be_served_are_refused() {
    let topo = Topology::up_queues(DISPATCHD, "qbad", 2, 4, 2);
    let with = |extra: &[&str]| {
        let mut flags = Topology::default_flags(2);
        flags.extend(extra.iter().map(|s| s.to_string()));
        flags
    };
    for queues in ["2", "4"] {
        assert_refused(
            &topo,
            &with(&["--queues", queues]),
            &[
                &format!("queues = {queues} would leave RX queues without a socket"),
                "l0 (front) has 4 RX queues, l1 (back) has 2",
                &format!("ethtool -L IF combined {queues}"),
            ],
        );
    }
    assert_refused(
        &topo,
        &with(&["--bind-mode", "zerocopy"]),
        &["bind_mode = zerocopy, but l0 does not advertise AF_XDP zero-copy"],
    );
    drop(topo);

    let topo = Topology::up_queues(DISPATCHD, "q65", 2, 65, 1);
    assert_refused(
        &topo,
        &Topology::default_flags(2),
        &[
            "l0 (front) has 65 RX queues; dispatchd serves at most 64",
            "ethtool -L l0 combined 64",
        ],
    );
}

/// Frames are single 4 KiB buffers: an interface whose MTU does not fit one is
/// refused at start rather than having its large frames dropped by the kernel.
#[test]
fn an_mtu_too_large_for_a_frame_is_refused() {
    let topo = Topology::up(DISPATCHD, "qmtu", 2, 1);
    let set_mtu = |mtu: &str| {
        let out = topo.run(
            &topo.dispatcher(),
            "ip",
            &["link", "set", "dev", "l0", "mtu", mtu],
        );
        assert!(out.status.success(), "{}", text(&out));
    };
    set_mtu("9000");
    assert_refused(
        &topo,
        &Topology::default_flags(2),
        &[
            "l0 (front) has MTU 9000",
            "(3826:",
            "ip link set dev l0 mtu 3826",
        ],
    );
    set_mtu("1500");
    let _servers = topo.serve(2);
    let lb = topo.dispatchd(&Topology::default_flags(2));
    assert!(lb
        .output()
        .contains("l0 (front): 1 RX queues, MTU 1500 (frames fit up to 3826)"));
}

/// `ethtool -L` while dispatchd runs: the new queues have no socket until a
/// restart, and that is said in the log, `ctl stats` (text and JSON) and
/// /metrics within about a second. (A veth takes a channel change while its
/// XDP program is attached; the kernel refuses to take away a queue that has
/// an AF_XDP socket, so the change that can happen is an increase.)
#[test]
fn a_channel_count_change_while_running_is_reported() {
    let topo = Topology::up(DISPATCHD, "qch", 2, 4);
    // Two of the four channels to begin with, on both ends of the link.
    let channels = |ns: &str, iface: &str, n: &str| {
        let out = topo.run(ns, "ethtool", &["-L", iface, "rx", n, "tx", n]);
        assert!(
            out.status.success(),
            "ethtool -L {iface} {n}:\n{}",
            text(&out)
        );
    };
    channels(&topo.dispatcher(), "l0", "2");
    channels(&topo.client(), "c0", "2");
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--metrics-listen", "127.0.0.1:9111"].map(String::from));
    let lb = topo.dispatchd(&flags);
    assert!(
        lb.output().contains("front l0 queues 0-1"),
        "{}",
        lb.output()
    );
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "200"]);
    assert!(out.status.success(), "{}", text(&out));

    channels(&topo.dispatcher(), "l0", "4");
    channels(&topo.client(), "c0", "4");
    let line =
        "l0 (front) now has 4 RX queues, dispatchd serves 2: frames on queues 2-3 have no socket";
    wait_until(Duration::from_secs(5), "the change is logged", || {
        lb.output().contains(line)
    });
    assert!(
        lb.output().contains("restart dispatchd to serve them"),
        "{}",
        lb.output()
    );

    let stats = topo.stats();
    let front = &stats["queues"]["front"];
    assert_eq!(
        (&front["seen"], &front["served"], &front["unserved"]),
        (&Value::from(4), &Value::from(2), &Value::from(2)),
        "{stats}"
    );
    assert_eq!(stats["queues"]["changes"], 1, "{stats}");
    let text_stats = topo.ctl(&["stats"]);
    assert!(
        text_stats.contains("front l0 seen 4 served 2")
            && text_stats.contains("QUEUES WITHOUT A SOCKET"),
        "{text_stats}"
    );
    let out = topo.run(
        &topo.dispatcher(),
        "bash",
        &["-c", "exec 3<>/dev/tcp/127.0.0.1/9111; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"],
    );
    let metrics = String::from_utf8_lossy(&out.stdout);
    for sample in [
        "dispatchd_rx_queues{side=\"front\",interface=\"l0\",state=\"seen\"} 4",
        "dispatchd_rx_queues{side=\"front\",interface=\"l0\",state=\"served\"} 2",
        "dispatchd_rx_queue_changes_total 1",
    ] {
        assert!(metrics.contains(sample), "{sample} missing:\n{metrics}");
    }
}

/// Busy-poll mode sets SO_PREFER_BUSY_POLL, SO_BUSY_POLL and
/// SO_BUSY_POLL_BUDGET on every socket (read back from the kernel at start)
/// and still carries traffic on every queue.
#[test]
fn busy_poll_mode_sets_the_socket_options() {
    let topo = Topology::up(DISPATCHD, "qbusy", 2, 2);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(["--poll", "busy"].map(String::from));
    let mut lb = topo.dispatchd(&flags);
    assert!(
        lb.output().contains(
            "worker 0: busy poll on every socket (SO_PREFER_BUSY_POLL 1, SO_BUSY_POLL 20 us, SO_BUSY_POLL_BUDGET 64)"
        ),
        "{}",
        lb.output()
    );
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "500",
        "--concurrency",
        "8",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let stats = topo.stats();
    assert_every_queue_served(&stats, "front", 2, true);
    assert_every_queue_served(&stats, "back", 2, true);
    lb.signal("TERM");
    assert!(
        lb.wait(Duration::from_secs(10)).success(),
        "{}",
        lb.output()
    );
}
