//! ICMP errors and path MTU end to end: real XDP program, real AF_XDP sockets,
//! real kernel TCP on both sides, a router namespace where the path narrows.
//! Needs root.
//!
//! Every test downloads (or uploads) megabytes in full-size segments over a path
//! whose MTU is smaller somewhere than the ends believe: the transfer completes
//! only if the "fragmentation needed" reaches the sender, or if the sender never
//! sends segments that large.
use std::time::Duration;

use dispatchd_testkit::{text, Proc, Router, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// The narrow hop's MTU: IPv6's minimum, a common tunnel MTU.
const NARROW_MTU: &str = "1280";
const DOWNLOAD_BYTES: &str = "2000000";
const DOWNLOADS: &str = "3";

/// Sets the MTU of the connected route of `dev` (in namespace `ns`) to `mtu`:
/// forwarded and generated packets towards that subnet are held to it, while the
/// interfaces themselves (and so the MSS both ends announce) stay at 1500.
/// `mtu` may be `lock N`: bpf_fib_lookup (so dispatchd's reply path) honours a
/// route's MTU only when it is locked (ip_mtu_from_fib_result), where the
/// kernel's own forwarding always does.
fn narrow_route(topo: &Topology, ns: &str, subnet: &str, dev: &str, src: &str, mtu: &str) {
    let mut args = vec![
        "route", "replace", subnet, "dev", dev, "proto", "kernel", "scope", "link", "src", src,
        "mtu",
    ];
    args.extend(mtu.split_whitespace());
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

/// All DOWNLOADS downloads must complete: `what` names the case in the
/// failure, with dispatchd's output.
fn all_downloaded(topo: &Topology, lb: &Proc, what: &str) {
    let out = download(topo, DOWNLOADS, "10000");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{what}: {stdout}");
    assert!(
        out.status.success(),
        "{what}:\n{}\n{}",
        text(&out),
        lb.output()
    );
    assert!(
        stdout.contains(&format!("ok={DOWNLOADS} failed=0")),
        "{stdout}"
    );
}

fn stats_field(stats: &serde_json::Value, path: &[&str]) -> u64 {
    let mut v = stats;
    for p in path {
        v = &v[*p];
    }
    v.as_u64()
        .unwrap_or_else(|| panic!("no number at {path:?} in ctl stats --json: {stats}"))
}

/// `GET /metrics` from dispatchd's Prometheus listener on `port`.
fn metrics(topo: &Topology, port: u16) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = topo.run(&topo.dispatcher(), "bash", &["-c", &script]);
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{}", text(&out));
    body
}

/// The value of the Prometheus sample `name{labels}`.
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{metrics}"))
}

/// dispatchd with the service's four daemons and `extra` flags.
fn dispatchd(topo: &Topology, extra: &[&str]) -> Proc {
    let mut flags = Topology::default_flags(4);
    flags.extend(extra.iter().map(|s| s.to_string()));
    topo.dispatchd(&flags)
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
/// host has no socket for the service) and every download stalls. Two queues,
/// as on a NIC: the loop translates an error whichever queue it lands on (here
/// the router's forwarding keeps the front on queue 0; the replies use both).
#[test]
fn a_narrow_route_beyond_a_front_router_does_not_stall_downloads() {
    let topo = Topology::up_routed(DISPATCHD, "ifr", 4, 2, Router::Front);
    narrow_route(
        &topo,
        &topo.router(),
        "198.18.0.0/24",
        "r0",
        "198.18.0.1",
        NARROW_MTU,
    );
    let _servers = topo.serve_with(4, &["--download"]);
    let mut lb = dispatchd(
        &topo,
        &["--queues", "2", "--metrics-listen", "127.0.0.1:9131"],
    );

    all_downloaded(&topo, &lb, "downloads through the narrow route");

    let stats = topo.stats();
    let shown = topo.ctl(&["stats"]);
    println!("{shown}");
    // The router's errors were steered, queued to the loop, matched to their
    // connection and sent to its daemon.
    let steered = stats_field(&stats, &["xdp", "icmp_front_steered"]);
    assert!(steered >= 1, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_to_loop"), steered, "{stats}");
    assert_eq!(stats_field(&stats, &["icmp", "translated"]), steered);
    assert_eq!(worker_sum(&stats, "icmp_to_daemon"), steered, "{stats}");
    assert_eq!(stats_field(&stats, &["icmp", "no_connection"]), 0);
    assert_eq!(worker_sum(&stats, "icmp_invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    assert!(
        shown.contains(&format!("icmp to daemons: translated {steered} ")),
        "{shown}"
    );
    let m = metrics(&topo, 9131);
    assert_eq!(
        sample(
            &m,
            "dispatchd_icmp_errors_total{worker=\"0\",what=\"to_daemon\"}"
        ),
        steered
    );
    assert_eq!(
        sample(&m, "dispatchd_icmp_loop_total{result=\"translated\"}"),
        steered
    );
    assert_eq!(
        sample(
            &m,
            "dispatchd_xdp_verdicts_total{verdict=\"icmp_front_steered\"}"
        ),
        steered
    );
    lb.terminate(Duration::from_secs(10));
}

/// A router between the back and the daemons whose route to the daemons has a
/// smaller MTU: the clients' full-size segments are refused there, and the
/// router tells the client, quoting the segment as dispatchd forwarded it (to
/// the daemon's address). Translated back to the VIP on the way out, the error
/// lowers the client's path MTU; untranslated, the client would find no
/// connection to 198.19.0.1x and keep sending.
#[test]
fn a_narrow_route_beyond_a_back_router_does_not_stall_uploads() {
    let topo = Topology::up_routed(DISPATCHD, "ibr", 4, 1, Router::Back);
    narrow_route(
        &topo,
        &topo.router(),
        "198.19.0.0/24",
        "b1",
        "198.19.0.1",
        NARROW_MTU,
    );
    let _servers = topo.serve(4);
    let mut lb = dispatchd(&topo, &[]);
    for round in 0..3 {
        // 2 MB up (through the narrow route) and the echo down, byte for byte.
        let out = topo.client_run(&["bulk", "--to", VIP, "--bytes", DOWNLOAD_BYTES]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{stdout}");
        assert!(
            out.status.success(),
            "upload {round} through the narrow route:\n{}\n{}",
            text(&out),
            lb.output()
        );
        assert!(
            stdout.contains(&format!("bytes={DOWNLOAD_BYTES}")),
            "{stdout}"
        );
    }
    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    let steered = stats_field(&stats, &["xdp", "icmp_back_steered"]);
    assert!(steered >= 1, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_to_client"), steered, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    assert_eq!(stats_field(&stats, &["xdp", "icmp_front_steered"]), 0);
    lb.terminate(Duration::from_secs(10));
}

/// No router at all: the dispatcher's own route to the clients has a smaller
/// MTU than the daemons'. The XDP program's FIB lookup for a reply says
/// "fragmentation needed"; the program answers the daemon as a router would,
/// in place, instead of dropping the reply silently.
#[test]
fn a_reply_too_big_for_the_front_route_is_answered_with_fragmentation_needed() {
    let topo = Topology::up(DISPATCHD, "itb", 4, 1);
    narrow_route(
        &topo,
        &topo.dispatcher(),
        "198.18.0.0/24",
        "l0",
        "198.18.0.1",
        &format!("lock {NARROW_MTU}"),
    );
    // The answer leaves by XDP_TX, which a veth delivers only to a peer that
    // runs NAPI: one with an XDP program or, as here, GRO on. A real NIC has
    // no such condition.
    if let Err(e) = topo.exec(&topo.daemons(), "ethtool", &["-K", "s0", "gro", "on"]) {
        panic!("GRO on s0: {e:#}");
    }
    let _servers = topo.serve_with(4, &["--download"]);
    let mut lb = dispatchd(&topo, &[]);

    all_downloaded(&topo, &lb, "downloads over the narrow front route");
    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    assert!(
        stats_field(&stats, &["xdp", "frag_needed_sent"]) >= 1,
        "{stats}"
    );
    assert_eq!(stats_field(&stats, &["xdp", "too_big"]), 0, "{stats}");
    assert_eq!(stats_field(&stats, &["xdp", "fib_failed"]), 0, "{stats}");
    lb.terminate(Duration::from_secs(10));
}

/// The front router drops ICMP, as some paths do: no "fragmentation needed"
/// reaches anyone, so full-size downloads stall whatever dispatchd translates.
/// With `--mss-clamp 1240` (the narrow MTU less 40 bytes of headers) the client's
/// SYN announces no more than that, the daemons never send a segment the route
/// refuses, and the downloads complete.
#[test]
fn mss_clamp_carries_downloads_over_a_path_that_drops_icmp() {
    let topo = Topology::up_routed(DISPATCHD, "iclamp", 4, 1, Router::Front);
    narrow_route(
        &topo,
        &topo.router(),
        "198.18.0.0/24",
        "r0",
        "198.18.0.1",
        NARROW_MTU,
    );
    // The router's own errors (output) and anyone else's (forward).
    let rules = "table ip dropicmp {
        chain generated { type filter hook output priority 0; ip protocol icmp drop; }
        chain forwarded { type filter hook forward priority 0; ip protocol icmp drop; }
    }";
    if let Err(e) = topo.exec(&topo.router(), "nft", &[rules]) {
        panic!("nftables on the router: {e:#}");
    }
    let _servers = topo.serve_with(4, &["--download"]);

    // Without the clamp: the path black-holes the daemons' full-size segments.
    let mut lb = dispatchd(&topo, &[]);
    let out = download(&topo, "1", "3000");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("without the clamp: {stdout}");
    assert!(
        !out.status.success() && stdout.contains("stalled"),
        "the download without the clamp was expected to stall:\n{}",
        text(&out)
    );
    let stats = topo.stats();
    assert_eq!(
        stats_field(&stats, &["xdp", "icmp_front_steered"]),
        0,
        "{stats}"
    );
    assert_eq!(worker_sum(&stats, "mss_clamped"), 0, "{stats}");
    lb.terminate(Duration::from_secs(10));

    let mut lb = dispatchd(&topo, &["--mss-clamp", "1240"]);
    all_downloaded(&topo, &lb, "downloads with the clamp");
    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    let downloads: u64 = DOWNLOADS.parse().expect("a number");
    assert_eq!(worker_sum(&stats, "mss_clamped"), downloads, "one SYN each");
    assert_eq!(
        stats_field(&stats, &["xdp", "icmp_front_steered"]),
        0,
        "{stats}"
    );
    lb.terminate(Duration::from_secs(10));
}
