//! IPv6 services end to end on the dual-stack topology (`Topology::up_dual`):
//! the real XDP program and AF_XDP sockets, real kernel TCP and UDP on both
//! sides, IPv6 everywhere a test names an IPv6 address. The IPv4 tests these
//! mirror: e2e_dataplane (spread, bulk), e2e_control (records gone after FIN
//! and RST, drain, health), e2e_icmp (path MTU), e2e_udp, e2e_metrics. And a
//! dual-stack config, an IPv4 and an IPv6 service at once. Needs root.
use std::{collections::BTreeMap, time::Duration};

use dispatchd_testkit::{
    daemon_addr, daemon_addr6, json::sum_of, json::u64_at, json::Value, per_daemon, text,
    wait_until, Proc, Router, Topology, VIP, VIP6,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// The client's address, as a daemon sees it (the testkit prints
/// `peer=[2001:2:0:1::2]:PORT`).
const CLIENT6: &str = "[2001:2:0:1::2]:";
/// The narrow hop's MTU: IPv6's minimum link MTU.
const NARROW_MTU: &str = "1280";
const DOWNLOAD_BYTES: &str = "2000000";
const DOWNLOADS: &str = "3";

/// The first `n` IPv6 daemon addresses.
fn daemons6(n: usize) -> Vec<String> {
    (0..n).map(daemon_addr6).collect()
}

/// dispatchd with `flags` and `extra`.
fn dispatchd(topo: &Topology, flags: Vec<String>, extra: &[&str]) -> Proc {
    let mut flags = flags;
    flags.extend(extra.iter().map(|s| s.to_string()));
    topo.dispatchd(&flags)
}

/// Writes `body` as this topology's config file; its path.
fn config_file(topo: &Topology, body: &str) -> String {
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    std::fs::write(&file, body).expect("writing the config");
    file.to_str().expect("a UTF-8 path").to_owned()
}

/// `[[service]]` on `vip` (protocol `protocol`) over `daemons`.
fn service_table(vip: &str, protocol: &str, daemons: &[String]) -> String {
    let list: Vec<String> = daemons.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[[service]]\naddress = \"{vip}\"\nprotocol = \"{protocol}\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

/// `connect` from the client namespace to `to` with `extra` flags; its
/// stdout. Every connection must succeed.
fn connect(topo: &Topology, to: &str, extra: &[&str]) -> String {
    let mut args = vec!["connect", "--to", to];
    args.extend_from_slice(extra);
    let out = topo.client_run(&args);
    assert!(
        out.status.success(),
        "connect to {to} {extra:?}:\n{}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` short connections to `to`, 3 at a time: how many each daemon took.
fn spread(topo: &Topology, to: &str, n: usize) -> BTreeMap<String, usize> {
    let n = n.to_string();
    per_daemon(&connect(
        topo,
        to,
        &["--connections", &n, "--concurrency", "3"],
    ))
    .into_iter()
    .collect()
}

/// Records of open connections: the management loop's count and the
/// workers' tables (IPv4 and IPv6 records together in `flows`).
fn records(topo: &Topology) -> (u64, u64) {
    let stats = topo.stats();
    (u64_at(&stats, "/connections"), worker_sum(&stats, "flows"))
}

fn xdp(stats: &Value, key: &str) -> u64 {
    u64_at(stats, &format!("/xdp/{key}"))
}

/// A worker counter summed over every worker.
fn worker_sum(stats: &Value, key: &str) -> u64 {
    stats["workers"]
        .as_array()
        .expect("workers in ctl stats")
        .iter()
        .map(|w| {
            w[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in worker stats: {w}"))
        })
        .sum()
}

/// Waits until every daemon takes new connections (probed, its next hop
/// resolved), so that round robin splits them evenly.
fn wait_all_up(topo: &Topology) {
    wait_until(Duration::from_secs(5), "every daemon up", || {
        backends_json(topo).iter().all(|b| b["state"] == "up")
    });
}

fn backends_json(topo: &Topology) -> Vec<Value> {
    let list: Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    list.as_array().expect("a list").clone()
}

/// `ctl backends`' health word of `daemon`.
fn health_of(topo: &Topology, daemon: &str) -> String {
    let all = topo.ctl(&["backends"]);
    let line = all
        .lines()
        .find(|l| l.starts_with(&format!("{daemon} ")))
        .unwrap_or_else(|| panic!("{daemon} in {all}"));
    line.split_whitespace()
        .skip_while(|w| *w != "health")
        .nth(1)
        .expect("health value")
        .to_owned()
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

/// The value of the one sample `name{...}` whose labels include every pair
/// of `labels`.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = page
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.rsplit_once("} ")?;
            labels
                .iter()
                .all(|(k, v)| set.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.trim().parse().ok())?
        })
        .collect();
    assert_eq!(found.len(), 1, "one {name} {labels:?} in:\n{page}");
    found[0]
}

/// Starts a `hold` connection to `to` (one exchange every 50 ms for
/// `seconds`); the daemon it landed on.
fn hold(topo: &Topology, to: &str, seconds: &str) -> (Proc, String) {
    let long = topo.client_start(
        &[
            "hold",
            "--to",
            to,
            "--seconds",
            seconds,
            "--interval-ms",
            "50",
        ],
        "opened",
    );
    let daemon = long
        .output()
        .lines()
        .find_map(|l| l.strip_prefix("daemon=")?.strip_suffix(" opened"))
        .expect("hold names its daemon")
        .to_owned();
    (long, daemon)
}

fn held_to_the_end(long: &mut Proc) {
    assert!(
        long.wait(Duration::from_secs(15)).success(),
        "the long-lived connection broke:\n{}",
        long.output()
    );
    assert!(long.output().contains(" ok"), "{}", long.output());
}

#[test]
fn ipv6_connections_spread_evenly_and_echo_intact() {
    let topo = Topology::up_dual(DISPATCHD, "v6rr", 4, 1);
    let _servers = topo.serve_on(&daemons6(4), &[]);
    let mut lb = dispatchd(&topo, Topology::default_flags6(4), &[]);
    wait_all_up(&topo);

    let (mut long, held_by) = hold(&topo, VIP6, "4");
    let out = connect(
        &topo,
        VIP6,
        &[
            "--connections",
            "400",
            "--concurrency",
            "4",
            "--payload",
            "333",
        ],
    );
    let spread = per_daemon(&out);
    println!("400 IPv6 connections: {spread:?}, the long one on {held_by}");
    let names: Vec<&str> = spread.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        names,
        daemons6(4),
        "every daemon, named by IPv6: {spread:?}"
    );
    // The long-lived connection took one round-robin turn before these 400.
    let counts: Vec<usize> = spread.iter().map(|(_, n)| *n).collect();
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "round robin within one of even: {spread:?}");
    assert_eq!(counts.iter().sum::<usize>(), 400);
    held_to_the_end(&mut long);

    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 401, "{stats}");
    // Each connection: SYN, ACK, data, FIN, ACK from the client at least;
    // SYN-ACK, hello, echo, FIN from the daemon.
    assert!(xdp(&stats, "front6_steered") >= 4 * 401, "{stats}");
    assert!(xdp(&stats, "back6_steered") >= 4 * 401, "{stats}");
    assert_eq!(xdp(&stats, "front_steered"), 0, "no IPv4 service: {stats}");
    assert_eq!(worker_sum(&stats, "invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    lb.terminate(Duration::from_secs(10));
}

#[test]
fn a_five_megabyte_ipv6_transfer_each_way_stays_on_one_daemon() {
    let topo = Topology::up_dual(DISPATCHD, "v6bulk", 4, 1);
    let _servers = topo.serve_on(&daemons6(4), &[]);
    let mut lb = dispatchd(&topo, Topology::default_flags6(4), &[]);
    for round in 0..2 {
        // The echo is compared byte for byte: a segment delivered to another
        // daemon would reset the connection or leave a hole.
        let out = topo.client_run(&["bulk", "--to", VIP6, "--bytes", "5000000"]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("bulk {round}: {stdout}");
        assert!(
            out.status.success(),
            "bulk transfer {round}:\n{}\n{}",
            text(&out),
            lb.output()
        );
        assert!(stdout.contains("bytes=5000000"), "{stdout}");
        assert!(
            stdout.contains(&format!("peer={CLIENT6}")),
            "the daemon sees the real client: {stdout}"
        );
    }
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 2, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    lb.terminate(Duration::from_secs(10));
}

/// Persistent connections exchange requests back to back; while one is
/// open it is one record, and none is left once they all closed.
#[test]
fn persistent_ipv6_connections_carry_requests_and_leave_no_record() {
    let topo = Topology::up_dual(DISPATCHD, "v6rr2", 2, 1);
    let _servers = topo.serve_on(&daemons6(2), &[]);
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(2),
        &["--linger-ms", "500", "--rst-linger-ms", "500"],
    );
    wait_all_up(&topo);

    let (mut long, _) = hold(&topo, VIP6, "2");
    wait_until(Duration::from_secs(2), "the connection is tracked", || {
        records(&topo) == (1, 1)
    });
    held_to_the_end(&mut long);

    let out = topo.client_run(&[
        "rr",
        "--to",
        VIP6,
        "--connections",
        "8",
        "--seconds",
        "2",
        "--payload",
        "200",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("8 persistent IPv6 connections for 2 s: {stdout}");
    assert!(out.status.success(), "rr:\n{}\n{}", text(&out), lb.output());
    let requests: u64 = stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix("requests=")?.parse().ok())
        .unwrap_or_else(|| panic!("no requests= in {stdout}"));
    assert!(requests >= 1000, "8 connections, 2 s: {requests} requests");
    assert!(stdout.contains(" errors=0 "), "{stdout}");
    let took = wait_until(Duration::from_secs(5), "no record left", || {
        records(&topo) == (0, 0)
    });
    println!("the 9 closed connections' records gone {took:?} after the last close");
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 9, "{stats}");
    lb.terminate(Duration::from_secs(10));
}

/// Records end on the close itself (FIN both ways, or a RST from either
/// side), not on the idle timeout (the default, minutes).
#[test]
fn closed_and_reset_ipv6_connections_leave_no_records() {
    let topo = Topology::up_dual(DISPATCHD, "v6close", 4, 1);
    let servers = topo.serve_on(&daemons6(4), &[]);
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(4),
        &["--linger-ms", "500", "--rst-linger-ms", "500"],
    );
    wait_all_up(&topo);

    connect(
        &topo,
        VIP6,
        &["--connections", "1000", "--concurrency", "4"],
    );
    let took = wait_until(
        Duration::from_secs(5),
        "records of closed connections removed",
        || records(&topo) == (0, 0),
    );
    println!("1000 closed IPv6 connections gone {took:?} after the last close (linger 500 ms)");
    assert_eq!(sum_of(&topo.stats(), "new_flows"), 1000);

    connect(
        &topo,
        VIP6,
        &["--connections", "200", "--concurrency", "4", "--reset"],
    );
    let took = wait_until(
        Duration::from_secs(3),
        "records of client-reset connections removed",
        || records(&topo) == (0, 0),
    );
    println!("200 client-reset IPv6 connections gone {took:?} after the last reset");

    drop(servers);
    let _resetting = topo.serve_on(&daemons6(4), &["--reset"]);
    connect(
        &topo,
        VIP6,
        &[
            "--connections",
            "200",
            "--concurrency",
            "4",
            "--expect-reset",
        ],
    );
    let took = wait_until(
        Duration::from_secs(3),
        "records of daemon-reset connections removed",
        || records(&topo) == (0, 0),
    );
    println!("200 daemon-reset IPv6 connections gone {took:?} after the last reset");
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 1400, "{stats}");
    lb.terminate(Duration::from_secs(10));
}

/// Sets the MTU of the connected route to `subnet` via `dev` in `ns`: the
/// interfaces (and the MSS both ends announce) stay at 1500. `mtu` may be
/// `lock N`: bpf_ipv6_fib_lookup (so dispatchd's reply path) honours a
/// route's MTU only when it is locked (ip6_mtu_from_fib6), where the
/// kernel's own forwarding always does.
fn narrow_route(topo: &Topology, ns: &str, subnet: &str, dev: &str, mtu: &str) {
    let mut args = vec![
        "-6", "route", "replace", subnet, "dev", dev, "proto", "kernel", "metric", "256", "mtu",
    ];
    args.extend(mtu.split_whitespace());
    if let Err(e) = topo.exec(ns, "ip", &args) {
        panic!("narrowing the route to {subnet} in {ns}: {e:#}");
    }
}

/// DOWNLOADS downloads of DOWNLOAD_BYTES from the IPv6 service, each
/// byte-exact and none stalled for 10 s; `what` names the case.
fn all_downloaded(topo: &Topology, lb: &Proc, what: &str) {
    let out = topo.client_run(&[
        "download",
        "--to",
        VIP6,
        "--bytes",
        DOWNLOAD_BYTES,
        "--count",
        DOWNLOADS,
        "--timeout-ms",
        "10000",
    ]);
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

/// No router: the dispatcher's own route to the clients has a smaller MTU
/// than the daemons'. The XDP program's FIB lookup for a reply says "too
/// big"; the program answers the daemon with an ICMPv6 packet too big, as a
/// router would, so the daemon's kernel lowers its path MTU and the
/// downloads complete.
#[test]
fn an_ipv6_reply_too_big_for_the_front_route_is_answered_with_packet_too_big() {
    let topo = Topology::up_dual(DISPATCHD, "v6tb", 4, 1);
    narrow_route(
        &topo,
        &topo.dispatcher(),
        "2001:2:0:1::/64",
        "l0",
        &format!("lock {NARROW_MTU}"),
    );
    // The answer leaves by XDP_TX, which a veth delivers only to a peer that
    // runs NAPI: one with an XDP program or, as here, GRO on.
    if let Err(e) = topo.exec(&topo.daemons(), "ethtool", &["-K", "s0", "gro", "on"]) {
        panic!("GRO on s0: {e:#}");
    }
    let _servers = topo.serve_on(&daemons6(4), &["--download"]);
    let mut lb = dispatchd(&topo, Topology::default_flags6(4), &[]);

    all_downloaded(&topo, &lb, "IPv6 downloads over the narrow front route");
    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    let sent = xdp(&stats, "packet_too_big_sent");
    assert!(sent >= 1, "{stats}");
    assert_eq!(xdp(&stats, "frag_needed_sent"), 0, "not IPv4's: {stats}");
    assert_eq!(xdp(&stats, "too_big"), 0, "{stats}");
    assert_eq!(xdp(&stats, "fib_failed"), 0, "{stats}");
    // The daemons' kernels took it: their route cache to the client holds
    // the narrow MTU.
    let cached = topo
        .exec(
            &topo.daemons(),
            "ip",
            &[
                "-6",
                "route",
                "get",
                "2001:2:0:1::2",
                "from",
                "2001:2:0:2::11",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(cached.contains(&format!("mtu {NARROW_MTU}")), "{cached}");
    lb.terminate(Duration::from_secs(10));
}

/// A router between the clients and the front whose route to the clients
/// is narrower than everything else: the daemons' full-size segments are
/// refused there with a packet too big addressed to the VIP. dispatchd
/// steers it to the loop, which finds the connection and sends it on to its
/// daemon, translated; untranslated, every download would stall.
#[test]
fn a_narrow_ipv6_route_beyond_a_front_router_does_not_stall_downloads() {
    let topo = Topology::up_dual_routed(DISPATCHD, "v6ifr", 4, 1, Router::Front);
    narrow_route(&topo, &topo.router(), "2001:2:0:1::/64", "r0", NARROW_MTU);
    let _servers = topo.serve_on(&daemons6(4), &["--download"]);
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(4),
        &["--metrics-listen", "127.0.0.1:9161"],
    );

    all_downloaded(&topo, &lb, "IPv6 downloads through the narrow route");
    let stats = topo.stats();
    println!("{}", topo.ctl(&["stats"]));
    let steered = xdp(&stats, "icmp6_front_steered");
    assert!(steered >= 1, "{stats}");
    assert_eq!(xdp(&stats, "icmp_front_steered"), 0, "not IPv4's: {stats}");
    assert_eq!(worker_sum(&stats, "icmp_to_loop"), steered, "{stats}");
    assert_eq!(u64_at(&stats, "/icmp/translated"), steered, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_to_daemon"), steered, "{stats}");
    assert_eq!(u64_at(&stats, "/icmp/no_connection"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    let m = metrics(&topo, 9161);
    assert_eq!(
        sample(
            &m,
            "dispatchd_xdp_verdicts_total",
            &[("verdict", "icmp6_front_steered")]
        ),
        steered as f64
    );
    lb.terminate(Duration::from_secs(10));
}

/// A router between the back and the daemons whose route to the daemons is
/// narrower: the clients' full-size segments are refused there, and the
/// router tells the client, quoting the segment as dispatchd forwarded it
/// (to the daemon's address). Translated back to the VIP on the way out, the
/// error lowers the client's path MTU; untranslated, the client would find
/// no connection to 2001:2:0:2::1x and keep sending.
#[test]
fn a_narrow_ipv6_route_beyond_a_back_router_does_not_stall_uploads() {
    let topo = Topology::up_dual_routed(DISPATCHD, "v6ibr", 4, 1, Router::Back);
    narrow_route(&topo, &topo.router(), "2001:2:0:2::/64", "b1", NARROW_MTU);
    let _servers = topo.serve_on(&daemons6(4), &[]);
    let mut lb = dispatchd(&topo, Topology::default_flags6(4), &[]);
    for round in 0..3 {
        // 2 MB up (through the narrow route) and the echo down, byte for byte.
        let out = topo.client_run(&["bulk", "--to", VIP6, "--bytes", DOWNLOAD_BYTES]);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        println!("{stdout}");
        assert!(
            out.status.success(),
            "IPv6 upload {round} through the narrow route:\n{}\n{}",
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
    let steered = xdp(&stats, "icmp6_back_steered");
    assert!(steered >= 1, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_to_client"), steered, "{stats}");
    assert_eq!(worker_sum(&stats, "icmp_invalid"), 0, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    assert_eq!(xdp(&stats, "icmp6_front_steered"), 0, "{stats}");
    // The client's kernel took the translated error: its route to the VIP
    // holds the narrow MTU.
    let cached = topo
        .exec(
            &topo.client(),
            "ip",
            &["-6", "route", "get", "2001:2:0:1::100"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(cached.contains(&format!("mtu {NARROW_MTU}")), "{cached}");
    lb.terminate(Duration::from_secs(10));
}

/// One config, an IPv4 and an IPv6 service, both carrying connections at
/// the same time, each to its own family's daemons only.
#[test]
fn a_dual_stack_config_serves_an_ipv4_and_an_ipv6_service_at_once() {
    let topo = Topology::up_dual(DISPATCHD, "v6dual", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6 = daemons6(2);
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\n[timeouts]\nlinger_ms = 300\n\n{}\n{}",
        service_table(VIP, "tcp", &v4),
        service_table(VIP6, "tcp", &v6)
    );
    let file = config_file(&topo, &body);
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    // The IPv4 daemons come first, then the IPv6 ones, each with its service.
    let rows: Vec<(String, String)> = backends_json(&topo)
        .iter()
        .map(|b| {
            (
                b["daemon"].as_str().expect("daemon").to_owned(),
                b["service"].as_str().expect("service").to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = v4
        .iter()
        .map(|d| (d.clone(), VIP.to_owned()))
        .chain(v6.iter().map(|d| (d.clone(), VIP6.to_owned())))
        .collect();
    assert_eq!(rows, expected);

    let (by4, by6) = std::thread::scope(|s| {
        let four = s.spawn(|| spread(&topo, VIP, 200));
        let six = s.spawn(|| spread(&topo, VIP6, 200));
        (four.join().unwrap(), six.join().unwrap())
    });
    println!("at once: IPv4 {by4:?}, IPv6 {by6:?}");
    let even = |daemons: &[String]| -> BTreeMap<String, usize> {
        daemons.iter().map(|d| (d.clone(), 100)).collect()
    };
    assert_eq!(by4, even(&v4), "the IPv4 service, round robin");
    assert_eq!(by6, even(&v6), "the IPv6 service, round robin");

    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 400, "{stats}");
    assert!(xdp(&stats, "front_steered") >= 4 * 200, "{stats}");
    assert!(xdp(&stats, "front6_steered") >= 4 * 200, "{stats}");
    assert_eq!(worker_sum(&stats, "dropped"), 0, "{stats}");
    wait_until(Duration::from_secs(3), "no record left", || {
        records(&topo) == (0, 0)
    });
    lb.terminate(Duration::from_secs(10));
}

/// `udp-query`'s summary: per daemon (flows started on it, answers from it),
/// and ok, lost, switched.
struct Queries {
    per_daemon: BTreeMap<String, (usize, usize)>,
    ok: usize,
    lost: usize,
    switched: usize,
    raw: String,
}

fn udp_query(topo: &Topology, to: &str, args: &[&str]) -> Queries {
    let mut all = vec!["udp-query", "--to", to];
    all.extend_from_slice(args);
    let out = topo.client_run(&all);
    assert!(out.status.success(), "udp-query {args:?}:\n{}", text(&out));
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |line: &str, key: &str| -> usize {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {line}"))
    };
    let mut q = Queries {
        per_daemon: BTreeMap::new(),
        ok: 0,
        lost: 0,
        switched: 0,
        raw: raw.clone(),
    };
    for line in raw.lines() {
        if let Some(rest) = line.strip_prefix("daemon=") {
            let daemon = rest.split_whitespace().next().unwrap_or("").to_owned();
            q.per_daemon
                .insert(daemon, (field(line, "flows"), field(line, "datagrams")));
        } else if line.starts_with("ok=") {
            (q.ok, q.lost, q.switched) = (
                field(line, "ok"),
                field(line, "lost"),
                field(line, "switched"),
            );
            assert_eq!(field(line, "errors"), 0, "{raw}");
        }
    }
    q
}

/// UDP over IPv6: one-query flows from 200 source ports spread over three
/// daemons, one long flow stays on its daemon, and every answer comes from
/// the VIP:port (the client's connected sockets take nothing else).
#[test]
fn ipv6_udp_queries_spread_and_answers_come_from_the_vip() {
    let topo = Topology::up_dual(DISPATCHD, "v6udp", 3, 1);
    let vip = "[2001:2:0:1::100]:53";
    let daemons: Vec<String> = (0..3)
        .map(|i| format!("[2001:2:0:2::{:x}]:5353", 0x11 + i))
        .collect();
    let mut serve = topo.cmd(&topo.daemons(), &topo.programs().testkit);
    serve.arg("udp-serve");
    for d in &daemons {
        serve.args(["--listen", d]);
    }
    let _servers = Proc::start(serve, "serving udp", Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\n\n{}",
        service_table(vip, "udp", &daemons)
    );
    let file = config_file(&topo, &body);
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    let q = udp_query(&topo, vip, &["--clients", "200", "--count", "1"]);
    println!("200 one-query IPv6 flows: {:?}", q.per_daemon);
    assert_eq!((q.ok, q.lost), (200, 0), "{}", q.raw);
    let names: Vec<&String> = q.per_daemon.keys().collect();
    assert_eq!(names, daemons.iter().collect::<Vec<_>>(), "{}", q.raw);
    for (daemon, (flows, _)) in &q.per_daemon {
        // Round robin over three: 67, 67, 66.
        assert!((66..=67).contains(flows), "{daemon}: {flows}\n{}", q.raw);
    }
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 200, "{stats}");
    assert_eq!(u64_at(&stats, "/connections"), 200, "tracked: {stats}");

    let q = udp_query(
        &topo,
        vip,
        &["--clients", "1", "--count", "100", "--interval-ms", "5"],
    );
    println!("one IPv6 flow of 100 queries: {:?}", q.per_daemon);
    assert_eq!((q.ok, q.lost, q.switched), (100, 0, 0), "{}", q.raw);
    assert_eq!(q.per_daemon.len(), 1, "{}", q.raw);
    assert_eq!(sum_of(&topo.stats(), "new_flows"), 201);
    let conns = topo.ctl(&["conns"]);
    assert!(
        conns.contains(&format!("-> {vip}/udp -> [2001:2:0:2::1")),
        "ctl conns names the IPv6 service and daemon: {conns}"
    );
    let backends = topo.ctl(&["backends"]);
    for d in &daemons {
        assert!(
            backends.contains(&format!("{d} service {vip}/udp ")),
            "{backends}"
        );
    }
    assert!(lb.exited().is_none(), "dispatchd died:\n{}", lb.output());
    lb.terminate(Duration::from_secs(10));
}

/// `ctl drain` and `ctl undrain` take an IPv6 daemon by its bracketed name;
/// the drained daemon keeps its open connection, takes no new one, and the
/// metrics name it the same way.
#[test]
fn ctl_drain_and_metrics_name_an_ipv6_daemon() {
    let port = 9162;
    let topo = Topology::up_dual(DISPATCHD, "v6drain", 3, 1);
    let _servers = topo.serve_on(&daemons6(3), &[]);
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(3),
        &["--metrics-listen", &format!("127.0.0.1:{port}")],
    );
    wait_all_up(&topo);
    let (mut long, daemon) = hold(&topo, VIP6, "4");
    assert!(daemons6(3).contains(&daemon), "{daemon}");
    // `ctl conns` shows it, filtered by its daemon's bracketed name.
    let conns = topo.ctl(&["conns", "--daemon", &daemon]);
    let row = format!("-> {VIP6} -> {daemon} worker 0 ");
    assert!(
        conns
            .lines()
            .any(|l| l.starts_with(CLIENT6) && l.contains(&row)),
        "{conns}"
    );
    assert!(
        conns.contains("1 shown of 1 matching of 1 tracked"),
        "{conns}"
    );

    let reply = topo.ctl(&["drain", &daemon]);
    assert!(reply.contains("draining"), "{reply}");
    assert!(reply.contains(&daemon), "{reply}");
    let drained = spread(&topo, VIP6, 60);
    println!("{daemon} drained: {drained:?}");
    assert!(!drained.contains_key(&daemon), "{drained:?}");
    assert_eq!(drained.values().sum::<usize>(), 60);
    assert_eq!(drained.len(), 2, "{drained:?}");

    let m = metrics(&topo, port);
    assert_eq!(
        sample(
            &m,
            "dispatchd_backend_drained",
            &[("service", VIP6), ("backend", &daemon)]
        ),
        1.0
    );
    // The held connection is the drained daemon's only one.
    assert_eq!(
        sample(
            &m,
            "dispatchd_backend_new_connections_total",
            &[("service", VIP6), ("backend", &daemon)]
        ),
        1.0
    );
    for (d, n) in &drained {
        assert_eq!(
            sample(
                &m,
                "dispatchd_backend_new_connections_total",
                &[("service", VIP6), ("backend", d)]
            ),
            *n as f64,
            "{d}"
        );
    }
    held_to_the_end(&mut long);

    topo.ctl(&["undrain", &daemon]);
    let back = spread(&topo, VIP6, 60);
    assert_eq!(back.get(&daemon), Some(&20), "undrained: {back:?}");
    assert_eq!(
        sample(
            &metrics(&topo, port),
            "dispatchd_backend_drained",
            &[("service", VIP6), ("backend", &daemon)]
        ),
        0.0
    );
    lb.terminate(Duration::from_secs(10));
}

/// An IPv6 daemon whose server stops fails its probes, goes down and gets no
/// new connection; started again, it comes back up and gets its share.
#[test]
fn a_stopped_ipv6_daemon_goes_down_and_gets_no_new_connections() {
    let topo = Topology::up_dual(DISPATCHD, "v6health", 3, 1);
    let mut servers: Vec<Proc> = daemons6(3)
        .iter()
        .map(|d| topo.serve_on(&[d], &[]))
        .collect();
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(3),
        &["--health-interval-ms", "200"],
    );
    wait_all_up(&topo);
    let victim = daemon_addr6(1);
    assert_eq!(health_of(&topo, &victim), "up");

    drop(servers.remove(1));
    // interval x fall = 200 ms x 3, plus a probe in flight.
    let took = wait_until(
        Duration::from_secs(3),
        "the IPv6 daemon marked down",
        || health_of(&topo, &victim) == "down",
    );
    println!("{victim} marked down {took:?} after it stopped");
    let avoided = spread(&topo, VIP6, 90);
    println!("while down: {avoided:?}");
    assert!(!avoided.contains_key(&victim), "{avoided:?}");
    assert_eq!(avoided.values().sum::<usize>(), 90);

    servers.insert(1, topo.serve_on(&[&victim], &[]));
    wait_until(Duration::from_secs(3), "the IPv6 daemon marked up", || {
        health_of(&topo, &victim) == "up"
    });
    let back = spread(&topo, VIP6, 90);
    println!("up again: {back:?}");
    assert_eq!(back.get(&victim), Some(&30), "{back:?}");
    lb.terminate(Duration::from_secs(10));
}

/// A TCP connect whose every segment carries a destination options header
/// (the kernel's own, set with IPV6_DSTOPTS on the socket; one PadN option):
/// prints `connected <the daemon's hello>` or `failed <the error's type>`.
const CONNECT_WITH_DSTOPTS: &str = r#"
import socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.settimeout(timeout)
try:
    s.connect((host, port))
    print("connected", s.recv(200).decode().strip())
except OSError as e:
    print("failed", type(e).__name__)
"#;

fn connect_with_dstopts(topo: &Topology, host: &str, port: &str) -> String {
    let out = topo.run(
        &topo.client(),
        "python3",
        &["-c", CONNECT_WITH_DSTOPTS, host, port, "2"],
    );
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// IPv6 extension headers are not walked on the hot path: a segment to the
/// VIP behind one is dropped by the XDP program and counted, so a client
/// whose kernel adds destination options gets no answer at all (neither a
/// daemon's nor the VIP's host's reset), while plain connections go on and
/// the host still forwards such segments to addresses that are no VIP.
#[test]
fn ipv6_segments_with_an_extension_header_to_the_vip_are_dropped_and_counted() {
    let topo = Topology::up_dual(DISPATCHD, "v6ext", 2, 1);
    let plain = "[2001:2:0:2::11]:9090";
    let _servers = topo.serve_on(&[daemons6(2), vec![plain.to_owned()]].concat(), &[]);
    let mut lb = dispatchd(&topo, Topology::default_flags6(2), &[]);
    wait_all_up(&topo);

    let got = connect_with_dstopts(&topo, "2001:2:0:1::100", "80");
    assert_eq!(got, "failed TimeoutError", "to the VIP with options");
    let stats = topo.stats();
    // The SYN and its retransmission within 2 s at least.
    let dropped = xdp(&stats, "vip6_ext_header");
    println!("a connect with destination options: {dropped} SYNs dropped");
    assert!(dropped >= 2, "{stats}");
    assert_eq!(xdp(&stats, "front6_steered"), 0, "{stats}");
    assert_eq!(sum_of(&stats, "new_flows"), 0, "{stats}");

    let spread = spread(&topo, VIP6, 10);
    assert_eq!(spread.values().sum::<usize>(), 10, "{spread:?}");
    let got = connect_with_dstopts(&topo, "2001:2:0:2::11", "9090");
    assert!(
        got.starts_with(&format!("connected hello daemon={plain} peer={CLIENT6}")),
        "not to a VIP: the host's, forwarded: {got}"
    );
    assert_eq!(xdp(&topo.stats(), "vip6_ext_header"), dropped);
    lb.terminate(Duration::from_secs(10));
}

/// How many reloads dispatchd has logged as applied.
fn reloads(lb: &Proc) -> usize {
    lb.output().matches("SIGHUP: reloaded").count()
}

/// A connection to the IPv6 VIP's port while no service has it: the host
/// owning the VIP refuses it.
fn vip6_refused(topo: &Topology) -> bool {
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP6,
        "--connections",
        "1",
        "--timeout-ms",
        "2000",
    ]);
    !out.status.success() && text(&out).contains("Connection refused")
}

/// Writes `dual` (two IPv4 and two IPv6 daemons) to `file` and has `lb`
/// reload it (its first reload): how long its IPv6 daemons took to come up.
fn reload_to_dual(topo: &Topology, lb: &Proc, file: &str, dual: &str) -> Duration {
    std::fs::write(file, dual).expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload applied", || {
        reloads(lb) == 1
    });
    wait_until(Duration::from_secs(5), "the IPv6 daemons up", || {
        let rows = backends_json(topo);
        rows.len() == 4 && rows.iter().all(|b| b["state"] == "up")
    })
}

/// SIGHUP turns an IPv4-only configuration into a dual-stack one and back:
/// the IPv6 service starts serving once its daemons are up, leaves the VIP's
/// port to the host again when removed, and an IPv4 connection open across
/// both reloads goes on.
#[test]
fn a_reload_adds_an_ipv6_service_beside_an_ipv4_one_and_removes_it() {
    let topo = Topology::up_dual(DISPATCHD, "v6hup", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6 = daemons6(2);
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let ipv4_only = format!(
        "front = \"l0\"\nback = \"l1\"\n[timeouts]\nlinger_ms = 300\n\n{}",
        service_table(VIP, "tcp", &v4)
    );
    let dual = format!("{ipv4_only}\n{}", service_table(VIP6, "tcp", &v6));
    let file = config_file(&topo, &ipv4_only);
    let lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let (mut long, _) = hold(&topo, VIP, "5");
    assert!(vip6_refused(&topo), "no IPv6 service yet: the host's port");

    let took = reload_to_dual(&topo, &lb, &file, &dual);
    println!("IPv6 daemons up {took:?} after the reload");
    let by6 = spread(&topo, VIP6, 100);
    assert_eq!(by6, v6.iter().map(|d| (d.clone(), 50)).collect(), "{by6:?}");
    let by4 = spread(&topo, VIP, 100);
    assert_eq!(
        by4.keys().collect::<Vec<_>>(),
        v4.iter().collect::<Vec<_>>()
    );
    assert_eq!(by4.values().sum::<usize>(), 100, "{by4:?}");

    std::fs::write(&file, &ipv4_only).expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the second reload applied", || {
        reloads(&lb) == 2
    });
    wait_until(Duration::from_secs(5), "the IPv6 service gone", || {
        vip6_refused(&topo)
    });
    held_to_the_end(&mut long);
    let by4 = spread(&topo, VIP, 10);
    assert_eq!(by4.values().sum::<usize>(), 10, "{by4:?}");
}

/// The first IPv6 service a reload brings, whose daemons' hops already have
/// complete NDP entries that never change (here permanent ones; a REACHABLE
/// entry is the same until it ages): their MACs come from a read of the NDP
/// table at that reload. Start-up reads the table only when there are IPv6
/// services, and a notification comes only when an entry changes, so these
/// daemons stayed down ("unresolved") for good.
#[test]
fn the_first_ipv6_service_a_reload_brings_reads_the_ndp_table() {
    let topo = Topology::up_dual(DISPATCHD, "v6ndp", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6 = daemons6(2);
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let s0 = topo.mac(&topo.daemons(), "s0").expect("s0's MAC");
    for d in &v6 {
        let ip = d.trim_start_matches('[').split(']').next().unwrap();
        let out = topo.run(
            &topo.dispatcher(),
            "ip",
            &[
                "-6",
                "neigh",
                "replace",
                ip,
                "lladdr",
                &s0,
                "dev",
                "l1",
                "nud",
                "permanent",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
    }
    let ipv4_only = format!(
        "front = \"l0\"\nback = \"l1\"\n\n{}",
        service_table(VIP, "tcp", &v4)
    );
    let file = config_file(&topo, &ipv4_only);
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    let dual = format!("{ipv4_only}\n{}", service_table(VIP6, "tcp", &v6));
    let took = reload_to_dual(&topo, &lb, &file, &dual);
    println!("IPv6 daemons behind permanent NDP entries up {took:?} after the reload");
    let by6 = spread(&topo, VIP6, 20);
    assert_eq!(by6, v6.iter().map(|d| (d.clone(), 10)).collect(), "{by6:?}");
    lb.terminate(Duration::from_secs(10));
}

/// A client reaching an IPv6 daemon by its own address through the
/// dispatcher: with the default stateless replies, the daemon's SYN-ACK is
/// rewritten to come from the VIP and the connection cannot open; with
/// `--reply-mode tracked` only the replies of tracked IPv6 connections are
/// rewritten (`tracked6`), so the direct connections work while the VIP
/// carries its own.
#[test]
fn a_client_reaching_an_ipv6_daemon_directly_works_with_tracked_replies() {
    let topo = Topology::up_dual(DISPATCHD, "v6trk", 2, 1);
    let _servers = topo.serve_on(&daemons6(2), &[]);
    let direct = daemon_addr6(0);
    let direct_connect = |n: &str| {
        topo.client_run(&[
            "connect",
            "--to",
            &direct,
            "--connections",
            n,
            "--concurrency",
            "2",
            "--timeout-ms",
            "1500",
        ])
    };

    let mut lb = dispatchd(&topo, Topology::default_flags6(2), &[]);
    let out = direct_connect("1");
    assert!(
        !out.status.success(),
        "stateless replies rewrite the direct connection's SYN-ACK:\n{}",
        text(&out)
    );
    lb.terminate(Duration::from_secs(10));

    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(2),
        &["--reply-mode", "tracked"],
    );
    wait_all_up(&topo);
    let by6 = spread(&topo, VIP6, 100);
    assert_eq!(
        by6,
        daemons6(2).into_iter().map(|d| (d, 50)).collect(),
        "{by6:?}"
    );
    let before = topo.stats();
    let out = direct_connect("20");
    assert!(out.status.success(), "direct:\n{}", text(&out));
    assert_eq!(
        per_daemon(&String::from_utf8_lossy(&out.stdout)),
        [(direct.clone(), 20)]
    );
    let after = topo.stats();
    let moved = |k: &str| sum_of(&after, k) - sum_of(&before, k);
    assert_eq!(moved("rx_back"), 0, "a direct reply reached a worker");
    assert_eq!(moved("tx_front"), 0, "a direct reply was rewritten");
    assert!(
        xdp(&after, "back_untracked") - xdp(&before, "back_untracked") >= 20 * 4,
        "each direct connection's replies pass: {after}"
    );
    assert_eq!(sum_of(&after, "tracked_inserted"), 100, "{after}");
    lb.terminate(Duration::from_secs(10));
}

/// e2e_host's `a_direct_connection_from_a_lingering_vip_connections_port_is_the_hosts`
/// over IPv6: a direct connection from the port of a VIP connection whose
/// record lingers (the same 4-tuple at the daemon) opens, and a VIP
/// connection from that port again is tracked again.
#[test]
fn a_direct_ipv6_connection_from_a_lingering_vip_connections_port_opens() {
    let topo = Topology::up_dual(DISPATCHD, "v6trkp", 1, 1);
    let _servers = topo.serve_on(&daemons6(1), &[]);
    let direct = daemon_addr6(0);
    let mut lb = dispatchd(
        &topo,
        Topology::default_flags6(1),
        &["--reply-mode", "tracked", "--rst-linger-ms", "20000"],
    );
    wait_all_up(&topo);
    let from_the_port = |to: &str, what: &str| {
        let out = topo.client_reset_from_port(to, 40000);
        assert!(out.status.success(), "{what}:\n{}", text(&out));
        let stats = topo.stats();
        println!("{what}: {} records", records(&topo).1);
        stats
    };

    let vip = from_the_port(VIP6, "the VIP connection");
    assert_eq!(records(&topo), (1, 1), "its record lingers: {vip}");
    let direct_done = from_the_port(&direct, "the direct connection");
    assert_eq!(xdp(&direct_done, "direct_took_over"), 1, "{direct_done}");
    assert_eq!(
        sum_of(&direct_done, "rx_back"),
        sum_of(&vip, "rx_back"),
        "a direct reply reached a worker"
    );
    let again = from_the_port(VIP6, "a VIP connection from that port again");
    assert_eq!(sum_of(&again, "new_flows"), 2, "{again}");
    assert_eq!(sum_of(&again, "tracked_inserted"), 2, "{again}");
    assert!(sum_of(&again, "rx_back") > sum_of(&direct_done, "rx_back"));
    lb.terminate(Duration::from_secs(10));
}

/// The IPv6 reply path's FIB lookup needs the back to forward IPv6
/// (`net.ipv6.conf.<back>.forwarding`, not `all`): with IPv6 services,
/// start-up is refused in one line naming the setting, nothing attached;
/// an IPv4-only configuration does not need it.
#[test]
fn ipv6_services_need_ipv6_forwarding_on_the_back() {
    let topo = Topology::up_dual(DISPATCHD, "v6fwd", 2, 1);
    let _servers = topo.serve_on(&[daemon_addr(0), daemon_addr6(0)], &[]);
    if let Err(e) = topo.exec(
        &topo.dispatcher(),
        "sysctl",
        &["-qw", "net.ipv6.conf.l1.forwarding=0"],
    ) {
        panic!("{e:#}");
    }
    let out = topo.dispatchd_fails(&Topology::default_flags6(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", text(&out));
    assert!(
        lines[0].starts_with("dispatchd: ")
            && lines[0].contains("IPv6 forwarding is off on the back interface l1"),
        "{}",
        lines[0]
    );
    assert!(!topo.xdp_attached("l0") && !topo.xdp_attached("l1"));

    let mut lb = dispatchd(&topo, Topology::default_flags(1), &[]);
    let by4 = spread(&topo, VIP, 10);
    assert_eq!(by4, [(daemon_addr(0), 10)].into_iter().collect());
    lb.terminate(Duration::from_secs(10));
}

/// Each worker's IPv6 table capacity, as `ctl stats --json` shows it.
fn table6_capacities(topo: &Topology) -> Vec<u64> {
    topo.stats()["workers"]
        .as_array()
        .expect("workers in ctl stats")
        .iter()
        .map(|w| w["table6_capacity"].as_u64().expect("table6_capacity"))
        .collect()
}

/// The first IPv6 service a reload brings into an IPv4-only process needs
/// each worker's IPv6 table (193 MB at the default capacity): it is made
/// off the workers' loops and handed to them, while an IPv4 connection
/// echoes on across the reload; then IPv6 connections are served, and `ctl
/// stats` and `/metrics` show the table's capacity. Removing the service
/// and bringing it back by two quick reloads keeps the table.
#[test]
fn the_first_ipv6_service_a_reload_brings_gets_a_table_made_off_the_workers_loops() {
    let port = 9172;
    let capacity = 1u64 << 20; // the default flow_capacity
    let topo = Topology::up_dual(DISPATCHD, "vggrow", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6 = daemons6(2);
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let ipv4_only = format!(
        "front = \"l0\"\nback = \"l1\"\n\n{}",
        service_table(VIP, "tcp", &v4)
    );
    let dual = format!("{ipv4_only}\n{}", service_table(VIP6, "tcp", &v6));
    let file = config_file(&topo, &ipv4_only);
    let lb = topo.dispatchd(&[
        "--config",
        &file,
        "--metrics-listen",
        &format!("127.0.0.1:{port}"),
    ]);
    wait_all_up(&topo);
    assert_eq!(table6_capacities(&topo), [0], "IPv4 only: no IPv6 table");
    let table6_metric = || {
        sample(
            &metrics(&topo, port),
            "dispatchd_flow_table6_capacity",
            &[("worker", "0")],
        )
    };
    assert_eq!(table6_metric(), 0.0);
    let (mut long, _) = hold(&topo, VIP, "6");
    let round_max = || u64_at(&topo.stats(), "/workers/0/round_max_ns");
    let before = round_max();
    let loop_before = u64_at(&topo.stats(), "/loop_round_max_ns");

    std::fs::write(&file, &dual).expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload applied", || {
        reloads(&lb) == 1
    });
    let took = wait_until(Duration::from_secs(10), "the IPv6 table in place", || {
        table6_capacities(&topo) == [capacity]
    });
    // Measured, not asserted: the longest worker and loop rounds before and
    // after, and what the worker said of the swap.
    let stats = topo.stats();
    println!(
        "IPv6 table in place {took:?} after the reload; worker round_max_ns {before} before, {} after; \
         loop_round_max_ns {loop_before} before, {} after; {}",
        u64_at(&stats, "/workers/0/round_max_ns"),
        u64_at(&stats, "/loop_round_max_ns"),
        lb.output()
            .lines()
            .filter(|l| l.contains("IPv6 flow table"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    assert_eq!(table6_metric(), capacity as f64);
    wait_until(Duration::from_secs(5), "the IPv6 daemons up", || {
        let rows = backends_json(&topo);
        rows.len() == 4 && rows.iter().all(|b| b["state"] == "up")
    });
    let by6 = spread(&topo, VIP6, 100);
    assert_eq!(by6, v6.iter().map(|d| (d.clone(), 50)).collect(), "{by6:?}");

    std::fs::write(&file, &ipv4_only).expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the removal applied", || {
        reloads(&lb) == 2
    });
    std::fs::write(&file, &dual).expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the re-addition applied", || {
        reloads(&lb) == 3
    });
    assert_eq!(table6_capacities(&topo), [capacity], "the table kept");
    wait_all_up(&topo);
    let by6 = spread(&topo, VIP6, 10);
    assert_eq!(by6.values().sum::<usize>(), 10, "{by6:?}");
    assert_eq!(table6_capacities(&topo), [capacity]);
    held_to_the_end(&mut long);
    println!("the IPv4 connection across the reloads: {}", long.output());
}
