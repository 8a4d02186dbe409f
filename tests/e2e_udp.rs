//! UDP services end to end on the DESIGN.md topology: the real XDP program and
//! AF_XDP sockets, real kernel UDP sockets on both sides (`dispatchd-testkit
//! udp-serve` on the daemons, `udp-query` on the client, whose connected
//! sockets take answers from the queried VIP:port only). Needs root.
use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use dispatchd_testkit::{
    json::{sum_of, u64_at, Value},
    text, wait_until, Proc, Topology, VIP,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// The UDP service: a DNS-like port of the VIP.
const UDP_VIP: &str = "198.18.0.100:53";

/// The address of UDP daemon `i` (0-based).
fn udp_daemon(i: usize) -> String {
    format!("198.19.0.{}:5353", 11 + i)
}

/// Writes the config: a UDP service on `vip` over the first `daemons` UDP
/// daemons, `extra` lines at the top (before any table), `tables` after.
fn config(topo: &Topology, vip: &str, daemons: usize, extra: &str, tables: &str) -> String {
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let list: Vec<String> = (0..daemons)
        .map(|i| format!("\"{}\"", udp_daemon(i)))
        .collect();
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\n{extra}\n{tables}\n\
         [[service]]\naddress = \"{vip}\"\nprotocol = \"udp\"\nbackends = [{}]\n",
        list.join(", ")
    );
    std::fs::write(&file, body).expect("writing the config");
    file.to_str().expect("a UTF-8 path").to_owned()
}

/// UDP echo servers on UDP daemons `which`, in one process.
fn udp_serve(topo: &Topology, which: &[usize]) -> Proc {
    let mut cmd = topo.cmd(&topo.daemons(), &topo.programs().testkit);
    cmd.arg("udp-serve");
    for &i in which {
        cmd.args(["--listen", &udp_daemon(i)]);
    }
    Proc::start(cmd, "serving udp", Duration::from_secs(5)).expect("UDP servers")
}

/// Waits until every daemon takes new flows (its next hop resolved; UDP
/// daemons are not probed).
fn wait_all_up(topo: &Topology) {
    wait_until(Duration::from_secs(5), "every daemon up", || {
        let list: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        list.as_array()
            .expect("a list")
            .iter()
            .all(|b| b["state"] == "up")
    });
}

/// The outcome of one `udp-query` run.
#[derive(Debug, Default)]
struct Queries {
    /// Per daemon: (flows that started on it, answers from it).
    per_daemon: BTreeMap<String, (usize, usize)>,
    ok: usize,
    lost: usize,
    refused: usize,
    switched: usize,
    errors: usize,
    raw: String,
}

fn parse_queries(stdout: &str) -> Queries {
    let mut q = Queries {
        raw: stdout.to_owned(),
        ..Queries::default()
    };
    let field = |line: &str, key: &str| -> Option<usize> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    for line in stdout.lines() {
        if let Some(rest) = line.strip_prefix("daemon=") {
            let daemon = rest.split_whitespace().next().unwrap_or("").to_owned();
            let flows = field(line, "flows").expect("flows=");
            let datagrams = field(line, "datagrams").expect("datagrams=");
            q.per_daemon.insert(daemon, (flows, datagrams));
        } else if line.starts_with("ok=") {
            q.ok = field(line, "ok").expect("ok=");
            q.lost = field(line, "lost").expect("lost=");
            q.refused = field(line, "refused").expect("refused=");
            q.switched = field(line, "switched").expect("switched=");
            q.errors = field(line, "errors").expect("errors=");
        }
    }
    q
}

/// Runs `udp-query` against `to` from the client namespace with `args`.
fn query(topo: &Topology, to: &str, args: &[&str]) -> Queries {
    let mut all = vec!["udp-query", "--to", to];
    all.extend_from_slice(args);
    let out = topo.client_run(&all);
    assert!(out.status.success(), "udp-query {args:?}:\n{}", text(&out));
    parse_queries(&String::from_utf8_lossy(&out.stdout))
}

fn still_running(lb: &mut Proc) {
    assert!(lb.exited().is_none(), "dispatchd died:\n{}", lb.output());
}

#[test]
fn queries_from_many_ports_spread_and_a_long_flow_stays_on_its_daemon() {
    let topo = Topology::up(DISPATCHD, "duspread", 3, 1);
    let _servers = udp_serve(&topo, &[0, 1, 2]);
    let file = config(&topo, UDP_VIP, 3, "", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    // DNS-like: 200 sockets (200 source ports), one query and answer each.
    let q = query(&topo, UDP_VIP, &["--clients", "200", "--count", "1"]);
    println!("200 one-query flows: {:?}", q.per_daemon);
    assert_eq!((q.ok, q.lost, q.errors), (200, 0, 0), "{}", q.raw);
    assert_eq!(q.per_daemon.len(), 3, "every daemon answers: {}", q.raw);
    for (daemon, (flows, _)) in &q.per_daemon {
        // Round robin over three: 67, 67, 66.
        assert!(
            (66..=67).contains(flows),
            "{daemon}: {flows} flows\n{}",
            q.raw
        );
    }
    let stats = topo.stats();
    assert_eq!(
        sum_of(&stats, "new_flows"),
        200,
        "one record per flow: {stats}"
    );
    assert_eq!(u64_at(&stats, "/connections"), 200, "tracked: {stats}");

    // Long-lived: one socket, 100 queries, one daemon for all of them (the
    // answers come from the VIP:port: the connected socket takes no other).
    // Its port is below the client's ephemeral range (10000-65000, set by
    // scripts/topology.sh): one of the 200 flows above (still live) may have
    // had any port in that range.
    let q = query(
        &topo,
        UDP_VIP,
        &[
            "--clients",
            "1",
            "--count",
            "100",
            "--interval-ms",
            "5",
            "--src-port",
            "5400",
        ],
    );
    println!("one flow of 100 queries: {:?}", q.per_daemon);
    assert_eq!((q.ok, q.lost, q.switched), (100, 0, 0), "{}", q.raw);
    assert_eq!(q.per_daemon.len(), 1, "{}", q.raw);
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 201, "{stats}");
    let conns = topo.ctl(&["conns"]);
    assert!(
        conns.contains("-> 198.18.0.100:53/udp -> 198.19.0.1"),
        "ctl conns names the protocol: {conns}"
    );
    // `ctl backends` names the service with its protocol.
    let backends = topo.ctl(&["backends"]);
    assert!(
        backends.contains("service 198.18.0.100:53/udp"),
        "{backends}"
    );
    let json: Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    assert!(
        json.as_array()
            .expect("a list")
            .iter()
            .all(|b| b["protocol"] == "udp"),
        "{json}"
    );
    still_running(&mut lb);
}

#[test]
fn idle_flows_expire_and_a_new_datagram_starts_a_new_one() {
    let topo = Topology::up(DISPATCHD, "duidle", 2, 1);
    let _servers = udp_serve(&topo, &[0, 1]);
    let file = config(&topo, UDP_VIP, 2, "", "[timeouts]\nudp_idle_ms = 1000\n");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    let args = ["--clients", "20", "--count", "1", "--src-port", "6100"];
    let q = query(&topo, UDP_VIP, &args);
    assert_eq!((q.ok, q.lost), (20, 0), "{}", q.raw);
    let sent = Instant::now();
    let stats = topo.stats();
    assert_eq!(u64_at(&stats, "/connections"), 20, "{stats}");
    assert_eq!(u64_at(&stats, "/udp_flows"), 20, "{stats}");
    assert_eq!(sum_of(&stats, "flows"), 20, "records in the table: {stats}");
    let active: u64 = {
        let json: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        json.as_array()
            .expect("a list")
            .iter()
            .map(|b| b["active"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(active, 20, "UDP flows count as active");

    // Idle for udp_idle_ms: the tracker asks, the worker removes.
    let waited = wait_until(Duration::from_secs(5), "the UDP records expired", || {
        let j = topo.stats();
        u64_at(&j, "/connections") == 0 && u64_at(&j, "/udp_flows") == 0 && sum_of(&j, "flows") == 0
    });
    let gone_after = sent.elapsed();
    println!("20 idle UDP flows gone {gone_after:?} after their datagram (udp_idle_ms 1000, polled for {waited:?})");
    assert!(
        gone_after >= Duration::from_millis(1000),
        "not before the idle timeout: {gone_after:?}"
    );
    assert!(
        gone_after < Duration::from_millis(3500),
        "within a recheck of the idle timeout: {gone_after:?}"
    );

    // The same ports again: new flows, each picks afresh.
    let q = query(&topo, UDP_VIP, &args);
    assert_eq!((q.ok, q.lost), (20, 0), "{}", q.raw);
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 40, "{stats}");
    assert_eq!(u64_at(&stats, "/connections"), 20, "{stats}");
    still_running(&mut lb);
}

#[test]
fn a_stopped_daemons_port_unreachable_reaches_the_client_as_from_the_vip() {
    let topo = Topology::up(DISPATCHD, "duicmp", 1, 1);
    let mut server = udp_serve(&topo, &[0]);
    let file = config(&topo, UDP_VIP, 1, "", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let args = [
        "--clients",
        "1",
        "--count",
        "3",
        "--src-port",
        "6200",
        "--timeout-ms",
        "500",
    ];
    let q = query(&topo, UDP_VIP, &args);
    assert_eq!(q.ok, 3, "{}", q.raw);

    server.terminate(Duration::from_secs(2));
    let before = topo.stats();
    // The daemon's kernel answers with port unreachable (client -> daemon
    // quoted); the worker makes it about client -> VIP:53, from the VIP, and
    // the client's connected socket reports ECONNREFUSED.
    let q = query(&topo, UDP_VIP, &args);
    println!("after the daemon stopped: {}", q.raw);
    assert!(q.refused >= 1, "ECONNREFUSED on the client: {}", q.raw);
    assert_eq!(q.ok, 0, "{}", q.raw);
    let after = topo.stats();
    // Every refusal the client saw is one a worker translated (the host's
    // own stack answering for the VIP would also refuse, untranslated).
    let translated = sum_of(&after, "icmp_to_client") - sum_of(&before, "icmp_to_client");
    assert_eq!(
        translated, q.refused as u64,
        "translated by a worker: {after}"
    );
    still_running(&mut lb);
}

#[test]
fn hostile_udp_frames_are_counted_and_never_forwarded() {
    let topo = Topology::up(DISPATCHD, "duhostile", 1, 1);
    let _servers = udp_serve(&topo, &[0]);
    let file = config(&topo, UDP_VIP, 1, "", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let before = topo.stats();
    let rounds = 25u64;
    let out = topo
        .cmd(&topo.client(), &topo.programs().testkit)
        .args(topo.inject_args("198.18.0.2", UDP_VIP, "udp-malformed", rounds))
        .output()
        .expect("inject");
    assert!(out.status.success(), "inject:\n{}", text(&out));
    let sent = String::from_utf8_lossy(&out.stdout);
    let expected: Vec<(String, u64)> = sent
        .lines()
        .filter_map(|l| {
            let (k, n) = l.strip_prefix("sent ")?.split_once('=')?;
            Some((k.to_owned(), n.parse().ok()?))
        })
        .collect();
    assert_eq!(expected.len(), 4, "{sent}");
    std::thread::sleep(Duration::from_millis(300));
    let after = topo.stats();
    for (kind, n) in &expected {
        let delta = sum_of(&after, kind) - sum_of(&before, kind);
        println!("{kind}: sent {n}, counted {delta}");
        assert_eq!(delta, *n, "{kind}: counted {delta}, sent {n}\n{after}");
    }
    assert_eq!(sum_of(&after, "new_flows"), 0, "no record: {after}");
    assert_eq!(
        sum_of(&after, "tx_back"),
        0,
        "nothing reached a daemon: {after}"
    );
    // A well-formed query still works.
    let q = query(&topo, UDP_VIP, &["--clients", "1", "--count", "2"]);
    assert_eq!(q.ok, 2, "{}", q.raw);
    still_running(&mut lb);
}

#[test]
fn a_spoofed_udp_flood_leaves_tcp_connections_and_udp_flows_working() {
    let topo = Topology::up(DISPATCHD, "duflood", 2, 1);
    let _tcp = topo.serve(2);
    let _udp = udp_serve(&topo, &[0, 1]);
    // A small table, so that the flood fills it: existing flows must go on,
    // new ones are refused and counted, then the flood's records expire.
    let file = config(
        &topo,
        UDP_VIP,
        2,
        "flow_capacity = 1024",
        &format!(
            "[timeouts]\nudp_idle_ms = 1500\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = [\"198.19.0.11:8080\", \"198.19.0.12:8080\"]\n"
        ),
    );
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);

    // Established before the flood, and talking all through it.
    let mut tcp_hold = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "6", "--interval-ms", "50"],
        "opened",
    );
    let mut udp_long = topo.cmd(&topo.client(), &topo.programs().testkit);
    udp_long.args([
        "udp-query",
        "--to",
        UDP_VIP,
        "--clients",
        "4",
        "--count",
        "120",
        "--interval-ms",
        "50",
        "--timeout-ms",
        "2000",
    ]);
    let udp_long = udp_long
        .stdout(Stdio::piped())
        .spawn()
        .expect("long UDP flows");
    std::thread::sleep(Duration::from_millis(300));

    let flood = topo
        .cmd(&topo.client(), &topo.programs().testkit)
        .args(topo.inject_args("198.18.128.1", UDP_VIP, "udp-flood", 30_000))
        .args(["--rate", "20000"])
        .output()
        .expect("inject");
    assert!(flood.status.success(), "flood:\n{}", text(&flood));
    let during = topo.stats();
    // (`sum_of` would count it twice: a worker field and a drop reason.)
    let refused = u64_at(&during, "/workers/0/table_full");
    println!(
        "flood: {}tracked {} new_flows {} table_full {refused}",
        String::from_utf8_lossy(&flood.stdout),
        u64_at(&during, "/connections"),
        sum_of(&during, "new_flows")
    );
    assert!(refused > 0, "the table filled: {during}");

    let udp_out = udp_long.wait_with_output().expect("long UDP flows ended");
    let q = parse_queries(&String::from_utf8_lossy(&udp_out.stdout));
    println!(
        "existing UDP flows through the flood: {:?} ok={} lost={}",
        q.per_daemon, q.ok, q.lost
    );
    assert_eq!(
        (q.ok, q.lost, q.switched, q.errors),
        (480, 0, 0, 0),
        "{}",
        q.raw
    );
    let status = tcp_hold.wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "the TCP connection broke:\n{}",
        tcp_hold.output()
    );

    // The flood's records expire; new flows and connections are taken again.
    wait_until(
        Duration::from_secs(8),
        "the flood's records expired",
        || sum_of(&topo.stats(), "flows") <= 8,
    );
    let q = query(&topo, UDP_VIP, &["--clients", "50", "--count", "1"]);
    assert_eq!(q.ok, 50, "{}", q.raw);
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "50"]);
    assert!(out.status.success(), "{}", text(&out));
    still_running(&mut lb);
}

#[test]
fn a_tcp_and_a_udp_service_share_a_vip_port() {
    let topo = Topology::up(DISPATCHD, "duboth", 2, 1);
    let _tcp = topo.serve(2);
    let _udp = udp_serve(&topo, &[0, 1]);
    // The UDP service on port 80 too.
    let file = config(
        &topo,
        VIP,
        2,
        "",
        &format!("[[service]]\naddress = \"{VIP}\"\nbackends = [\"198.19.0.11:8080\", \"198.19.0.12:8080\"]\n"),
    );
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "40"]);
    assert!(out.status.success(), "TCP:\n{}", text(&out));
    let tcp = dispatchd_testkit::per_daemon(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        tcp,
        [
            ("198.19.0.11:8080".to_owned(), 20),
            ("198.19.0.12:8080".to_owned(), 20)
        ],
        "TCP to the TCP daemons"
    );
    let q = query(&topo, VIP, &["--clients", "40", "--count", "2"]);
    assert_eq!((q.ok, q.lost), (80, 0), "{}", q.raw);
    let udp: Vec<(&str, usize)> = q
        .per_daemon
        .iter()
        .map(|(d, (flows, _))| (d.as_str(), *flows))
        .collect();
    assert_eq!(
        udp,
        [(udp_daemon(0).as_str(), 20), (udp_daemon(1).as_str(), 20)],
        "UDP to the UDP daemons"
    );
    let stats = topo.stats();
    assert_eq!(sum_of(&stats, "new_flows"), 80, "{stats}");
    still_running(&mut lb);
}

#[test]
fn tracked_replies_carry_udp_flows_too() {
    let topo = Topology::up(DISPATCHD, "dutracked", 2, 1);
    let _servers = udp_serve(&topo, &[0, 1]);
    let file = config(&topo, UDP_VIP, 2, "reply_mode = \"tracked\"", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let q = query(&topo, UDP_VIP, &["--clients", "50", "--count", "2"]);
    assert_eq!((q.ok, q.lost, q.switched), (100, 0, 0), "{}", q.raw);
    let stats = topo.stats();
    // Each flow's reply key reached the kernel's map (the program takes only
    // tracked replies in this mode).
    assert_eq!(sum_of(&stats, "tracked_inserted"), 50, "{stats}");
    assert_eq!(sum_of(&stats, "tracked_failed"), 0, "{stats}");
    still_running(&mut lb);
}

/// The value of the sample `name{labels}` on the /metrics page from `port`.
fn metric(topo: &Topology, port: u16, name: &str, labels: &str) -> u64 {
    let get = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = topo.run(&topo.dispatcher(), "bash", &["-c", &get]);
    let page = String::from_utf8_lossy(&out.stdout).into_owned();
    let sample = format!("{name}{{{labels}}} ");
    let found: Vec<u64> = page
        .lines()
        .filter_map(|l| l.strip_prefix(&sample))
        .map(|v| v.trim().parse().expect("an integer sample"))
        .collect();
    assert_eq!(found.len(), 1, "{sample}: {found:?} in\n{page}");
    found[0]
}

/// `ctl backends --json` as (daemon, protocol) -> row.
fn backend_rows(topo: &Topology) -> BTreeMap<(String, String), Value> {
    let json: Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    json.as_array()
        .expect("a list")
        .iter()
        .map(|b| {
            let daemon = b["daemon"].as_str().expect("daemon").to_owned();
            let protocol = b["protocol"].as_str().expect("protocol").to_owned();
            ((daemon, protocol), b.clone())
        })
        .collect()
}

/// A DNS-like server answering TCP and UDP on one ADDR:PORT, behind a TCP
/// and a UDP service on one VIP:port: two daemons per ADDR:PORT, each with
/// its own flows, counts and rows; a drain of the ADDR:PORT stops new flows of
/// both; a reload keeps the open flows of both.
#[test]
fn one_daemon_addr_port_serves_a_tcp_and_a_udp_service() {
    let port = 9153;
    let topo = Topology::up(DISPATCHD, "dudual", 2, 1);
    let daemons = ["198.19.0.11:8080", "198.19.0.12:8080"];
    let _tcp = topo.serve(2);
    let mut cmd = topo.cmd(&topo.daemons(), &topo.programs().testkit);
    cmd.arg("udp-serve");
    for d in daemons {
        cmd.args(["--listen", d]);
    }
    let _udp = Proc::start(cmd, "serving udp", Duration::from_secs(5)).expect("UDP servers");
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let list = format!("[\"{}\", \"{}\"]", daemons[0], daemons[1]);
    let write = |udp_idle_ms: u64| {
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\
             [timeouts]\nudp_idle_ms = {udp_idle_ms}\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = {list}\n\
             [[service]]\naddress = \"{VIP}\"\nprotocol = \"udp\"\nbackends = {list}\n"
        );
        std::fs::write(&file, body).expect("writing the config");
    };
    write(60_000);
    let mut lb = topo.dispatchd(&["--config", file.to_str().expect("a UTF-8 path")]);
    wait_all_up(&topo);
    assert_eq!(backend_rows(&topo).len(), 4, "two daemons per ADDR:PORT");

    // Both services carry traffic, spread over both daemons.
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "40"]);
    assert!(out.status.success(), "TCP:\n{}", text(&out));
    let tcp = dispatchd_testkit::per_daemon(&String::from_utf8_lossy(&out.stdout));
    let even: Vec<(String, usize)> = daemons.iter().map(|d| (d.to_string(), 20)).collect();
    assert_eq!(tcp, even, "TCP over both daemons");
    // Ports of their own below the client's ephemeral range (5200-5229; the
    // range is 10000-65000, set by scripts/topology.sh),
    // as the later batches have: these flows live on (idle timeout 60 s),
    // and a later socket the kernel gave one of their ports would continue
    // that flow on its daemon, not start a new one.
    let q = query(
        &topo,
        VIP,
        &["--clients", "30", "--count", "2", "--src-port", "5200"],
    );
    assert_eq!((q.ok, q.lost, q.switched), (60, 0, 0), "{}", q.raw);
    let udp: Vec<(String, usize)> = q
        .per_daemon
        .iter()
        .map(|(d, (f, _))| (d.clone(), *f))
        .collect();
    let even15: Vec<(String, usize)> = daemons.iter().map(|d| (d.to_string(), 15)).collect();
    assert_eq!(udp, even15, "UDP over both daemons");

    // One row per service and daemon, each with its own protocol's counts.
    let rows = backend_rows(&topo);
    for d in daemons {
        let (t, u) = (
            &rows[&(d.to_owned(), "tcp".to_owned())],
            &rows[&(d.to_owned(), "udp".to_owned())],
        );
        assert_eq!(t["service"], VIP, "{t}");
        assert_eq!(u["service"], VIP, "{u}");
        // The 15 UDP flows of the daemon are live (idle timeout 60 s); its
        // TCP connections are closed: none is active.
        assert_eq!(
            (u["active"].as_u64(), u["inactive"].as_u64()),
            (Some(15), Some(0)),
            "{u}"
        );
        assert_eq!(t["active"].as_u64(), Some(0), "{t}");
        assert!(t["inactive"].as_u64().expect("inactive") <= 20, "{t}");
        let new = |service: &str| {
            metric(
                &topo,
                port,
                "dispatchd_backend_new_connections_total",
                &format!("service=\"{service}\",backend=\"{d}\""),
            )
        };
        assert_eq!((new(VIP), new(&format!("{VIP}/udp"))), (20, 15), "{d}");
        let packets = |service: &str| {
            metric(
                &topo,
                port,
                "dispatchd_backend_packets_total",
                &format!("service=\"{service}\",backend=\"{d}\",direction=\"to_backend\""),
            )
        };
        // Two datagrams per UDP flow; a TCP connection is several segments.
        assert_eq!(packets(&format!("{VIP}/udp")), 30, "{d}");
        assert!(packets(VIP) >= 20 * 4, "{d}");
    }

    // Long flows of both protocols, one on each daemon, across a reload that
    // reorders the services (the daemons' ids change).
    let holds: Vec<Proc> = (0..2)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "5", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    let long_udp = std::thread::scope(|s| {
        let long = s.spawn(|| {
            query(
                &topo,
                VIP,
                &[
                    "--clients",
                    "2",
                    "--count",
                    "40",
                    "--interval-ms",
                    "100",
                    "--src-port",
                    "5100",
                ],
            )
        });
        std::thread::sleep(Duration::from_millis(1000));
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\nmetrics_listen = \"127.0.0.1:{port}\"\n\
             [timeouts]\nudp_idle_ms = 60000\n\
             [[service]]\naddress = \"{VIP}\"\nprotocol = \"udp\"\nbackends = [\"{}\", \"{}\"]\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = [\"{}\", \"{}\"]\n",
            daemons[1], daemons[0], daemons[1], daemons[0]
        );
        std::fs::write(&file, body).expect("writing the config");
        lb.signal("HUP");
        wait_until(Duration::from_secs(5), "reload applied", || {
            lb.output().contains("SIGHUP: reloaded")
        });
        long.join().expect("the long UDP flows")
    });
    assert_eq!(
        (long_udp.ok, long_udp.lost, long_udp.switched),
        (80, 0, 0),
        "{}",
        long_udp.raw
    );
    assert_eq!(
        long_udp.per_daemon.len(),
        2,
        "one long flow per daemon: {}",
        long_udp.raw
    );
    for (i, mut hold) in holds.into_iter().enumerate() {
        assert!(
            hold.wait(Duration::from_secs(15)).success(),
            "TCP connection {i} broke across the reload:\n{}",
            hold.output()
        );
    }

    // Draining the ADDR:PORT stops new flows of both protocols there.
    let reply = topo.ctl(&["drain", daemons[0]]);
    assert!(reply.starts_with("ok"), "{reply}");
    let rows = backend_rows(&topo);
    for protocol in ["tcp", "udp"] {
        let row = &rows[&(daemons[0].to_owned(), protocol.to_owned())];
        assert_eq!(row["state"], "draining", "{row}");
        let other = &rows[&(daemons[1].to_owned(), protocol.to_owned())];
        assert_eq!(other["state"], "up", "{other}");
    }
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "20"]);
    assert!(out.status.success(), "TCP:\n{}", text(&out));
    let tcp = dispatchd_testkit::per_daemon(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        tcp,
        [(daemons[1].to_owned(), 20)],
        "no new TCP connection to the drained"
    );
    let q = query(
        &topo,
        VIP,
        &["--clients", "20", "--count", "1", "--src-port", "5300"],
    );
    assert_eq!((q.ok, q.lost), (20, 0), "{}", q.raw);
    let udp: Vec<(String, usize)> = q
        .per_daemon
        .iter()
        .map(|(d, (f, _))| (d.clone(), *f))
        .collect();
    assert_eq!(
        udp,
        [(daemons[1].to_owned(), 20)],
        "no new UDP flow to the drained"
    );
    still_running(&mut lb);
}

/// A UDP daemon a reload adds, whose address the kernel has no neighbour
/// entry for, comes into selection once the kernel has resolved it. UDP
/// daemons have no health probe, and nothing else made the kernel send to it,
/// so it stayed down ("unresolved") for good. Now the loop sends an echo
/// request to such a hop through the back once a second.
#[test]
fn a_udp_daemon_a_reload_adds_gets_its_next_hop_resolved() {
    let topo = Topology::up(DISPATCHD, "duhop", 3, 1);
    let _servers = udp_serve(&topo, &[0, 1, 2]);
    let file = config(&topo, UDP_VIP, 2, "", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    // No entry for the new daemon's address, whatever set the topology up.
    let added = udp_daemon(2);
    let ip = added.split(':').next().expect("an address");
    let out = topo.run(
        &topo.dispatcher(),
        "ip",
        &["-4", "neigh", "flush", "to", ip, "dev", "l1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    config(&topo, UDP_VIP, 3, "", "");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    wait_all_up(&topo);
    let q = query(
        &topo,
        UDP_VIP,
        &["--clients", "30", "--count", "1", "--src-port", "6300"],
    );
    assert_eq!((q.ok, q.lost), (30, 0), "{}", q.raw);
    assert!(
        q.per_daemon
            .get(&added)
            .is_some_and(|&(flows, _)| flows > 0),
        "flows on the added daemon: {}",
        q.raw
    );
    // The loop's echo requests did it, and say so.
    let stats = topo.stats();
    assert!(
        u64_at(&stats, "/daemon_next_hops/probes_sent") > 0,
        "{stats}"
    );
    assert_eq!(
        u64_at(&stats, "/daemon_next_hops/probe_errors"),
        0,
        "{stats}"
    );
    still_running(&mut lb);
}

/// A route sends a UDP daemon out of the front while flows to it are open:
/// their datagrams, which were dropped for good (`no_neighbour`) while each
/// kept the record alive, go to the other daemon from the next one on; when
/// the route goes, new flows reach the daemon again.
#[test]
fn udp_flows_of_a_daemon_routed_off_the_back_move_to_another() {
    let topo = Topology::up(DISPATCHD, "duoff", 2, 1);
    let _servers = udp_serve(&topo, &[0, 1]);
    let file = config(&topo, UDP_VIP, 2, "[timeouts]\nudp_idle_ms = 30000\n", "");
    let mut lb = topo.dispatchd(&["--config", &file]);
    wait_all_up(&topo);
    let flows = ["--clients", "10", "--count", "1", "--src-port", "6500"];
    let before = query(&topo, UDP_VIP, &flows);
    let (kept, moved) = (udp_daemon(0), udp_daemon(1));
    assert_eq!((before.ok, before.lost), (10, 0), "{}", before.raw);
    assert!(before.per_daemon.contains_key(&moved), "{}", before.raw);

    let moved_ip = moved.split(':').next().expect("an address");
    let route = ["route", "add", &format!("{moved_ip}/32"), "dev", "l0"];
    let out = topo.run(&topo.dispatcher(), "ip", &route);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(2), "the move reported", || {
        lb.output().contains(&format!(
            "daemon {moved} is routed via l0, not the back interface l1"
        ))
    });
    // The same ten flows (same ports, records alive): every query answered,
    // by the daemon left.
    let after = query(
        &topo,
        UDP_VIP,
        &[&flows[..], &["--timeout-ms", "1000"]].concat(),
    );
    assert_eq!((after.ok, after.lost), (10, 0), "{}", after.raw);
    assert_eq!(
        after.per_daemon.keys().collect::<Vec<_>>(),
        [&kept],
        "{}",
        after.raw
    );
    let stats = topo.stats();
    assert_eq!(
        u64_at(&stats, "/udp_flows"),
        10,
        "moved, not doubled: {stats}"
    );

    let mut route = route;
    route[1] = "del";
    let out = topo.run(&topo.dispatcher(), "ip", &route);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(2), "the return reported", || {
        lb.output().contains(&format!(
            "daemon {moved} is routed via the back interface l1 again"
        ))
    });
    wait_all_up(&topo);
    let fresh = query(
        &topo,
        UDP_VIP,
        &["--clients", "10", "--count", "1", "--src-port", "6600"],
    );
    assert_eq!((fresh.ok, fresh.lost), (10, 0), "{}", fresh.raw);
    assert!(fresh.per_daemon.contains_key(&moved), "{}", fresh.raw);
    still_running(&mut lb);
}
