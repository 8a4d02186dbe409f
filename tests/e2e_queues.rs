//! Every RX queue of both interfaces served, on links with several queues: real
//! XDP program, real AF_XDP sockets, real kernel TCP in network namespaces.
//! Needs root.
//!
//! A veth spreads what its peer sends over its RX queues by the sender's TX
//! queue, which the sender's kernel picks per connection (by the socket's
//! hash), so connections from many source ports reach every queue, as RSS
//! spreads them on a NIC.
use std::time::Duration;

use dispatchd_testkit::{json::Value, per_daemon, text, Topology, VIP};

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
    let out = topo.client_run(&[
        "rr",
        "--to",
        VIP,
        "--connections",
        "32",
        "--seconds",
        "2",
    ]);
    assert!(
        out.status.success(),
        "persistent connections failed:\n{}",
        text(&out)
    );
}

/// Every socket of `side` for queues `0..queues` exists once and carried
/// traffic both ways.
fn assert_every_queue_served(stats: &Value, side: &str, queues: u64) {
    let all = sockets(stats);
    for q in 0..queues {
        let found: Vec<_> = all
            .iter()
            .filter(|(_, s, queue, _, _)| s == side && *queue == q)
            .collect();
        assert_eq!(found.len(), 1, "{side} queue {q} has one socket: {all:?}");
        let (worker, _, _, rx, tx) = found[0];
        assert!(
            *rx > 0 && *tx > 0,
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
    drive_traffic(&topo);

    let stats = topo.stats();
    assert_every_queue_served(&stats, "front", 4);
    assert_every_queue_served(&stats, "back", 4);
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
