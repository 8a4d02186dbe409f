//! ICMP errors and path MTU end to end: real XDP program, real AF_XDP sockets,
//! real kernel TCP on both sides, a router namespace where the path narrows.
//! Needs root.
//!
//! Every test downloads (or uploads) megabytes in full-size segments over a path
//! whose MTU is smaller somewhere than the ends believe: the transfer completes
//! only if the "fragmentation needed" reaches the sender, or if the sender never
//! sends segments that large.
use std::time::Duration;

use dispatchd_testkit::{text, Router, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// The narrow hop's MTU: IPv6's minimum, a common tunnel MTU.
const NARROW_MTU: &str = "1280";
const DOWNLOAD_BYTES: &str = "2000000";
const DOWNLOADS: &str = "3";

/// Sets the MTU of the connected route of `dev` (in namespace `ns`) to `mtu`:
/// forwarded and generated packets towards that subnet are held to it, while the
/// interfaces themselves (and so the MSS both ends announce) stay at 1500.
fn narrow_route(topo: &Topology, ns: &str, subnet: &str, dev: &str, src: &str, mtu: &str) {
    let args = [
        "route", "replace", subnet, "dev", dev, "proto", "kernel", "scope", "link", "src", src,
        "mtu", mtu,
    ];
    if let Err(e) = topo.exec(ns, "ip", &args) {
        panic!("narrowing the route to {subnet} in {ns}: {e:#}");
    }
}

/// `count` downloads of DOWNLOAD_BYTES from the daemons, each byte-exact and
/// none stalled for `timeout_ms`; the testkit's output.
fn download(topo: &Topology, count: &str, timeout_ms: &str) -> std::process::Output {
    topo.client_run(&[
        "download",
        "--to",
        VIP,
        "--bytes",
        DOWNLOAD_BYTES,
        "--count",
        count,
        "--timeout-ms",
        timeout_ms,
    ])
}

fn stats_field(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in ctl stats --json: {stats}"))
}

/// A worker counter summed over every worker.
fn worker_sum(stats: &serde_json::Value, key: &str) -> u64 {
    let workers = stats["workers"].as_array().expect("workers in ctl stats");
    workers
        .iter()
        .map(|w| {
            w[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in worker stats: {w}"))
        })
        .sum()
}

/// A router between the clients and the front whose onward route to the
/// clients has a smaller MTU than everything else: the daemons' full-size
/// segments are refused there with "fragmentation needed", addressed to the
/// VIP. Without translation that error reaches no one who can act on it (the
/// host has no socket for the service) and every download stalls.
#[test]
fn a_narrow_route_beyond_a_front_router_does_not_stall_downloads() {
    let topo = Topology::up_routed(DISPATCHD, "ifr", 4, 1, Router::Front);
    narrow_route(
        &topo,
        &topo.router(),
        "198.18.0.0/24",
        "r0",
        "198.18.0.1",
        NARROW_MTU,
    );
    let _servers = topo.serve_with(4, &["--download"]);
    let mut lb = topo.dispatchd(&Topology::default_flags(4));

    let out = download(&topo, DOWNLOADS, "10000");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "downloads through the narrow route:\n{}\n{}",
        text(&out),
        lb.output()
    );
    assert!(
        stdout.contains(&format!("ok={DOWNLOADS} failed=0")),
        "{stdout}"
    );

    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    // The router's errors were steered, queued to the loop, matched to their
    // connection and sent to its daemon.
    assert!(stats_field(&stats, &["xdp", "icmp_front_steered"]) >= 1);
    assert!(worker_sum(&stats, "icmp_to_loop") >= 1);
    assert_eq!(
        stats_field(&stats, &["icmp", "translated"]),
        worker_sum(&stats, "icmp_to_daemon"),
        "every translated error was sent"
    );
    assert!(worker_sum(&stats, "icmp_to_daemon") >= 1);
    assert_eq!(stats_field(&stats, &["icmp", "no_connection"]), 0);
    assert_eq!(worker_sum(&stats, "invalid"), 0, "{stats}");
    lb.terminate(Duration::from_secs(10));
}
