//! Recovery by consistent hashing on the real topology: persistent connections
//! through a restart of dispatchd, a flood of spoofed ACKs, and a policy that
//! cannot recover. Needs root.
//!
//! The restart: dispatchd is SIGKILLed under 16 persistent request/reply
//! connections and a second process with the same configuration is started at
//! once. While nothing is attached, the host would answer the clients'
//! segments to the VIP with RSTs (it owns the VIP); an nftables rule in the
//! dispatcher's input hook drops them instead, as an operator who restarts
//! dispatchd would set (XDP runs before nftables, so the rule never sees a
//! frame while a program is attached). What is left is what recovery
//! guarantees: the clients' retransmissions meet an instance without their
//! records.
use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use dispatchd_testkit::{
    json::{sum_of, u64_at, Value},
    text, wait_until, Topology, VIP,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

fn flags(policy: &str, extra: &[&str]) -> Vec<String> {
    let mut v = Topology::default_flags(4);
    v.extend(["--policy", policy].map(String::from));
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// While no program is attached, service frames reach the host both ways: the
/// clients' to the VIP, which it would answer with RSTs, and the daemons'
/// replies, which it would forward to the clients unrewritten (their kernels
/// answer those with RSTs that reach the daemons). The operator's two rules
/// drop both instead.
fn drop_service_frames_at_the_host(topo: &Topology) {
    for rule in [
        "add table ip recover",
        "add chain ip recover input { type filter hook input priority 0 ; }",
        "add rule ip recover input ip daddr 198.18.0.100 tcp dport 80 drop",
        "add chain ip recover forward { type filter hook forward priority 0 ; }",
        "add rule ip recover forward ip saddr 198.19.0.0/24 tcp sport 8080 drop",
    ] {
        let out = topo.run(&topo.dispatcher(), "nft", &[rule]);
        assert!(out.status.success(), "nft {rule}: {}", text(&out));
    }
}

/// `key=N` out of a line of the testkit's output.
fn field(out: &str, key: &str) -> u64 {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

struct Restart {
    requests: u64,
    broken: u64,
    /// From the SIGKILL to the second process attached and running.
    window: Duration,
    after: Value,
    /// The second process's `ctl stats` text and /metrics.
    text: String,
    metrics: String,
}

const METRICS: &str = "127.0.0.1:9110";

/// 16 persistent connections to a `policy` service; dispatchd is SIGKILLed
/// and started again under them.
fn restart_under_load(topo: &Topology, policy: &str) -> Restart {
    let _servers = topo.serve(4);
    drop_service_frames_at_the_host(topo);
    let first = topo.dispatchd(&flags(policy, &["--metrics-listen", METRICS]));
    let mut load = topo.client_start(
        &[
            "rr",
            "--to",
            VIP,
            "--connections",
            "16",
            "--seconds",
            "8",
            "--timeout-ms",
            "15000",
        ],
        "",
    );
    std::thread::sleep(Duration::from_millis(2000));
    let before = topo.stats();
    assert_eq!(sum_of(&before, "new_flows"), 16, "{before}");
    let killed = Instant::now();
    first.signal("KILL");
    drop(first);
    let second = topo.dispatchd(&flags(policy, &["--metrics-listen", METRICS]));
    let window = killed.elapsed();
    let status = load.wait(Duration::from_secs(40));
    let out = load.output();
    let after = topo.stats();
    let text = topo.ctl(&["stats"]);
    let metrics = topo.run(
        &topo.dispatcher(),
        "bash",
        &[
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/9110; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
        ],
    );
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    drop(second);
    println!("{policy}: window {window:?}; {out}");
    assert_eq!(
        status.success(),
        field(&out, "errors") == 0,
        "the client's verdict and its count agree: {out}"
    );
    Restart {
        requests: field(&out, "requests"),
        broken: field(&out, "errors"),
        window,
        after,
        text,
        metrics,
    }
}

/// (1) and (3): a maglev service's persistent connections go on through a
/// restart; a round-robin service's break, their segments dropped as
/// `no_flow` (what every policy did before recovery).
#[test]
fn persistent_connections_survive_a_restart_only_with_maglev() {
    let topo = Topology::up(DISPATCHD, "rcvm", 4, 1);
    let maglev = restart_under_load(&topo, "maglev");
    drop(topo);
    let topo = Topology::up(DISPATCHD, "rcvr", 4, 1);
    let round_robin = restart_under_load(&topo, "round_robin");

    let recovered = sum_of(&maglev.after, "recovered");
    println!(
        "maglev: {} of 16 broken, {} requests, {recovered} recovered, window {:?}, \
         recovery {}",
        maglev.broken, maglev.requests, maglev.window, maglev.after["recovery"]
    );
    assert_eq!(maglev.broken, 0, "maglev connections broke");
    assert_eq!(
        recovered, 16,
        "each connection recovered once: {}",
        maglev.after
    );
    assert_eq!(sum_of(&maglev.after, "no_flow"), 0, "{}", maglev.after);
    assert_eq!(
        u64_at(&maglev.after, "/recovery/confirmed"),
        16,
        "the clients proved their connections: {}",
        maglev.after
    );
    assert!(
        maglev
            .text
            .contains("recovered records: confirmed 16 expired 0"),
        "{}",
        maglev.text
    );
    for line in [
        "dispatchd_recovered_flows_total{worker=\"0\"} 16",
        "dispatchd_recovered_records_total{result=\"confirmed\"} 16",
        "dispatchd_recovered_records_total{result=\"expired\"} 0",
    ] {
        assert!(maglev.metrics.contains(line), "{line}:\n{}", maglev.metrics);
    }

    let no_flow = sum_of(&round_robin.after, "no_flow");
    println!(
        "round_robin: {} of 16 broken, {} requests, {no_flow} no_flow drops, window {:?}",
        round_robin.broken, round_robin.requests, round_robin.window
    );
    assert_eq!(sum_of(&round_robin.after, "recovered"), 0);
    assert!(no_flow > 0, "{}", round_robin.after);
    assert_eq!(
        round_robin.broken, 16,
        "round-robin connections cannot survive"
    );
}

/// (2) 100,000 spoofed ACKs on a maglev service: persistent connections keep
/// echoing, new ones are all accepted during and after, the spoofed records
/// expire after the short (syn) timeout and the table never fills.
#[test]
fn a_spoofed_ack_flood_leaves_real_connections_alone_and_expires() {
    let topo = Topology::up(DISPATCHD, "rcvf", 4, 1);
    let _servers = topo.serve(4);
    let _lb = topo.dispatchd(&flags(
        "maglev",
        &["--syn-timeout-ms", "2000", "--flow-capacity", "200000"],
    ));
    let mut persistent = topo.client_start(
        &["rr", "--to", VIP, "--connections", "16", "--seconds", "10"],
        "",
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut flood = topo.cmd(&topo.client(), &topo.programs().testkit);
    flood
        .args(topo.inject_args("198.18.0.2", VIP, "ack-flood", 100_000))
        .args(["--rate", "50000"]);
    let flooding = flood
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the flood");
    let mut during = topo.client_start(
        &[
            "connect",
            "--to",
            VIP,
            "--connections",
            "2000",
            "--concurrency",
            "4",
            "--timeout-ms",
            "5000",
        ],
        "",
    );
    let flood_out = flooding.wait_with_output().expect("flood finished");
    let flood_ended = Instant::now();
    assert!(flood_out.status.success(), "the flood generator failed");
    let peak = topo.stats();
    let during_ok = during.wait(Duration::from_secs(60)).success();
    let during = during.output();
    let after = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "300",
        "--concurrency",
        "4",
    ]);
    println!(
        "flood: {}new connections during: {}after: {}",
        String::from_utf8_lossy(&flood_out.stdout),
        during,
        String::from_utf8_lossy(&after.stdout)
    );
    assert!(during_ok, "during the flood:\n{during}");
    assert!(after.status.success(), "after the flood:\n{}", text(&after));

    let recovered = sum_of(&peak, "recovered");
    println!(
        "right after the flood: recovered {recovered}, tracked {}, records {}, table_full {}, \
         kernel drops {}",
        u64_at(&peak, "/connections"),
        u64_at(&peak, "/workers/0/flows"),
        sum_of(&peak, "table_full"),
        sum_of(&peak, "xsk_rx_ring_full") + sum_of(&peak, "xsk_rx_dropped"),
    );
    assert!(recovered >= 20_000, "the flood reached the worker: {peak}");
    assert_eq!(sum_of(&peak, "table_full"), 0, "{peak}");
    wait_until(
        Duration::from_secs(10),
        "the spoofed records expired",
        || {
            let j = topo.stats();
            u64_at(&j, "/workers/0/flows") <= 16 && u64_at(&j, "/connections") <= 16
        },
    );
    let end = topo.stats();
    println!(
        "gone {:?} after the flood ended: recovery {}",
        flood_ended.elapsed(),
        end["recovery"]
    );
    let expired = u64_at(&end, "/recovery/expired");
    assert!(
        expired + 16 >= sum_of(&end, "recovered") && expired > 0,
        "every spoofed record expired unproven: {end}"
    );
    let status = persistent.wait(Duration::from_secs(30));
    let out = persistent.output();
    println!("persistent: {}", out.lines().next().unwrap_or(""));
    assert!(status.success(), "persistent connections broke:\n{out}");
    assert_eq!(field(&out, "errors"), 0);
    assert!(field(&out, "requests") > 1000, "{out}");
}
