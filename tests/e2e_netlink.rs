//! Daemons' routes and next hops as the kernel decides them, end to end: a
//! daemon reachable only through a policy-routing table, a multipath route
//! whose first path is down, a daemon whose MAC changes while it serves, a
//! route that moves a daemon off the back and back again, and the start-up and
//! reload errors, all from the kernel's own answers (rtnetlink), not from a
//! reading of the main table. Real XDP program, real AF_XDP sockets, real kernel
//! TCP; dispatchd runs without any capability after start-up. Needs root.
use std::{
    thread,
    time::{Duration, Instant},
};

use dispatchd_testkit::{
    daemon_addr6, json::u64_at, per_daemon, text, wait_until, Proc, Topology, VIP, VIP6,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Runs `ip ARGS` in namespace `ns`; panics with its output if it fails.
fn ip(topo: &Topology, ns: &str, args: &[&str]) -> String {
    topo.exec(ns, "ip", args)
        .unwrap_or_else(|e| panic!("ip {args:?} in {ns}: {e:#}"))
}

/// Echo servers on `addrs` in the daemon namespace.
fn serve_at(topo: &Topology, addrs: &[&str]) -> Proc {
    let mut cmd = topo.cmd(&topo.daemons(), &topo.programs().testkit);
    cmd.arg("serve");
    for a in addrs {
        cmd.args(["--listen", a]);
    }
    Proc::start(cmd, "serving", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `dispatchd run` flags for the VIP on l0/l1 and `daemons`.
fn flags(daemons: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--front", "l0", "--back", "l1", "--service", VIP]
        .map(String::from)
        .to_vec();
    for d in daemons {
        v.extend(["--backend".to_owned(), (*d).to_owned()]);
    }
    v
}

/// `n` short connections to the VIP, which must all succeed: how many each
/// daemon took.
fn connect(topo: &Topology, n: usize) -> Vec<(String, usize)> {
    connect_to(topo, VIP, n)
}

/// `n` short connections to the service `to`, as [`connect`].
fn connect_to(topo: &Topology, to: &str, n: usize) -> Vec<(String, usize)> {
    let n = n.to_string();
    let out = topo.client_run(&[
        "connect",
        "--to",
        to,
        "--connections",
        &n,
        "--concurrency",
        "2",
        "--timeout-ms",
        "3000",
    ]);
    assert!(out.status.success(), "{n} connections:\n{}", text(&out));
    per_daemon(&String::from_utf8_lossy(&out.stdout))
}

fn taken_by(spread: &[(String, usize)], daemon: &str) -> usize {
    spread
        .iter()
        .find(|(d, _)| d == daemon)
        .map_or(0, |(_, n)| *n)
}

/// The `ctl backends` line of `daemon`.
fn backend_line(topo: &Topology, daemon: &str) -> String {
    let all = topo.ctl(&["backends"]);
    all.lines()
        .find(|l| l.starts_with(daemon))
        .unwrap_or_else(|| panic!("{daemon} in {all}"))
        .to_owned()
}

/// The word after `key` in a `ctl backends` line.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .skip_while(|w| *w != key)
        .nth(1)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        .to_owned()
}

/// Polls `proc`'s output every millisecond until it contains `needle`; how
/// long that took.
fn wait_for_line(proc: &Proc, needle: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    while !proc.output().contains(needle) {
        assert!(
            start.elapsed() < timeout,
            "{needle:?} not in the output within {timeout:?}:\n{}",
            proc.output()
        );
        thread::sleep(Duration::from_millis(1));
    }
    start.elapsed()
}

/// A daemon in 198.19.1.0/24, which only a policy rule routes: `ip rule add to
/// 198.19.1.0/24 lookup 100` and, in table 100, a route via the daemons' host
/// (198.19.0.2) out of the back. The main table has no route for it (the
/// dispatcher has no default route), so a reading of the main table refused it
/// at start ("no route to daemon 198.19.1.11"); the kernel's own decision
/// (`ip route get`) goes through the rule, and connections reach it.
#[test]
fn a_daemon_routed_by_a_policy_rule_takes_connections() {
    let topo = Topology::up(DISPATCHD, "nlpol", 1, 1);
    let (d, s) = (topo.dispatcher(), topo.daemons());
    ip(&topo, &s, &["addr", "add", "198.19.1.11/32", "dev", "s0"]);
    ip(
        &topo,
        &d,
        &[
            "route",
            "add",
            "198.19.1.0/24",
            "via",
            "198.19.0.2",
            "dev",
            "l1",
            "table",
            "100",
        ],
    );
    ip(
        &topo,
        &d,
        &[
            "rule",
            "add",
            "to",
            "198.19.1.0/24",
            "lookup",
            "100",
            "pref",
            "1000",
        ],
    );
    // The kernel itself routes it so, and only through the rule.
    let got = ip(&topo, &d, &["route", "get", "198.19.1.11"]);
    assert!(got.contains("via 198.19.0.2 dev l1"), "{got}");
    let main = ip(
        &topo,
        &d,
        &["route", "show", "table", "main", "match", "198.19.1.11"],
    );
    assert!(main.trim().is_empty(), "the main table routes it: {main}");

    let _servers = serve_at(&topo, &["198.19.0.11:8080", "198.19.1.11:8080"]);
    let lb = topo.dispatchd(&flags(&["198.19.0.11:8080", "198.19.1.11:8080"]));
    let s0 = topo.mac(&s, "s0").expect("s0's MAC");
    let line = backend_line(&topo, "198.19.1.11:8080");
    assert_eq!(field(&line, "next_hop"), s0, "{line}");
    assert_eq!(field(&line, "via"), "198.19.0.2", "{line}");
    let spread = connect(&topo, 40);
    println!("policy-routed daemon: {spread:?}");
    assert!(taken_by(&spread, "198.19.1.11:8080") > 0, "{spread:?}");
    assert!(taken_by(&spread, "198.19.0.11:8080") > 0, "{spread:?}");
    drop(lb);
}

/// A multipath route to 198.19.1.0/24 whose first path (via a third interface,
/// m1) is down: the kernel skips the dead path and routes through the back.
/// /proc/net/route shows only a multipath route's first path (m1), so a reading
/// of it refused the daemon ("routed via m1"); the kernel's decision serves it.
#[test]
fn a_multipath_route_is_followed_as_the_kernel_picks_its_path() {
    let topo = Topology::up(DISPATCHD, "nlmp", 1, 1);
    let (d, s) = (topo.dispatcher(), topo.daemons());
    ip(&topo, &s, &["addr", "add", "198.19.1.11/32", "dev", "s0"]);
    // Both ends of m1's pair in the dispatcher's namespace: the namespace goes,
    // and the pair with it, whatever happens to the test.
    ip(
        &topo,
        &d,
        &["link", "add", "m1", "type", "veth", "peer", "name", "m2"],
    );
    ip(&topo, &d, &["addr", "add", "198.18.200.1/24", "dev", "m1"]);
    ip(&topo, &d, &["link", "set", "m1", "up"]);
    ip(&topo, &d, &["link", "set", "m2", "up"]);
    ip(
        &topo,
        &d,
        &[
            "route",
            "add",
            "198.19.1.0/24",
            "nexthop",
            "via",
            "198.18.200.2",
            "dev",
            "m1",
            "nexthop",
            "via",
            "198.19.0.2",
            "dev",
            "l1",
        ],
    );
    ip(&topo, &d, &["link", "set", "m1", "down"]);
    let shown = ip(&topo, &d, &["route", "show", "198.19.1.0/24"]);
    assert!(shown.contains("dead"), "m1's path is dead: {shown}");
    let got = ip(&topo, &d, &["route", "get", "198.19.1.11"]);
    assert!(got.contains("via 198.19.0.2 dev l1"), "{got}");

    let _servers = serve_at(&topo, &["198.19.1.11:8080"]);
    let lb = topo.dispatchd(&flags(&["198.19.1.11:8080"]));
    let line = backend_line(&topo, "198.19.1.11:8080");
    assert_eq!(field(&line, "via"), "198.19.0.2", "{line}");
    let spread = connect(&topo, 20);
    assert_eq!(taken_by(&spread, "198.19.1.11:8080"), 20, "{spread:?}");
    drop(lb);
}

/// The daemons' host changes its MAC (s0) while a long-lived connection runs,
/// and the dispatcher's kernel learns the new one: first told (`ip neigh
/// replace`), then by resolving again after a flush (the next health probe's
/// ARP). Each time dispatchd follows the kernel's neighbour notification: the
/// long-lived connection goes on (its segments meanwhile to the old MAC are
/// retransmitted) and new connections reach both daemons. How long dispatchd
/// took after the kernel's change is printed.
#[test]
fn a_daemons_new_mac_is_followed_at_once() {
    let topo = Topology::up(DISPATCHD, "nlmac", 2, 1);
    let (d, s) = (topo.dispatcher(), topo.daemons());
    let _servers = topo.serve(2);
    let lb = topo.dispatchd(&Topology::default_flags(2));
    let daemons = ["198.19.0.11:8080", "198.19.0.12:8080"];
    let old = topo.mac(&s, "s0").expect("s0's MAC");
    for daemon in daemons {
        assert_eq!(
            field(&backend_line(&topo, daemon), "next_hop"),
            old,
            "{daemon}"
        );
    }
    let mut hold = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "8", "--interval-ms", "50"],
        "opened",
    );
    thread::sleep(Duration::from_millis(500));

    // Told: the entries replaced with the new address.
    let told = "02:00:5e:10:00:01";
    ip(&topo, &s, &["link", "set", "s0", "address", told]);
    thread::sleep(Duration::from_millis(200));
    let replaced = Instant::now();
    for addr in ["198.19.0.11", "198.19.0.12"] {
        ip(
            &topo,
            &d,
            &[
                "neigh",
                "replace",
                addr,
                "lladdr",
                told,
                "dev",
                "l1",
                "nud",
                "reachable",
            ],
        );
    }
    let ip_took = replaced.elapsed();
    let mut seen = Duration::ZERO;
    for addr in ["198.19.0.11", "198.19.0.12"] {
        let line = format!("daemon {addr}:8080 next hop {told}");
        seen = seen.max(wait_for_line(&lb, &line, Duration::from_secs(2)));
    }
    let ctl_took = wait_until(Duration::from_secs(2), "ctl backends shows it", || {
        daemons
            .iter()
            .all(|d| field(&backend_line(&topo, d), "next_hop") == told)
    });
    println!(
        "replaced: both `ip neigh replace` done in {ip_took:?}; dispatchd's lines {seen:?} later, \
         ctl backends showing it {ctl_took:?} later"
    );
    let spread = connect(&topo, 20);
    assert!(
        daemons.iter().all(|d| taken_by(&spread, d) > 0),
        "{spread:?}"
    );

    // Learned: the entries flushed; the health probes make the kernel ask
    // again, and the answer comes from the new address.
    let learned = "02:00:5e:10:00:02";
    ip(&topo, &s, &["link", "set", "s0", "address", learned]);
    thread::sleep(Duration::from_millis(200));
    ip(&topo, &d, &["neigh", "flush", "dev", "l1"]);
    let mut seen = Duration::ZERO;
    for addr in ["198.19.0.11", "198.19.0.12"] {
        let line = format!("daemon {addr}:8080 next hop {learned}");
        seen = seen.max(wait_for_line(&lb, &line, Duration::from_secs(3)));
    }
    let entry = ip(&topo, &d, &["neigh", "show", "198.19.0.11", "dev", "l1"]);
    println!(
        "flushed: dispatchd's lines {seen:?} after the flush (the kernel resolving again: {})",
        entry.trim()
    );
    let spread = connect(&topo, 20);
    assert!(
        daemons.iter().all(|d| taken_by(&spread, d) > 0),
        "{spread:?}"
    );

    let status = hold.wait(Duration::from_secs(20));
    assert!(
        status.success(),
        "the long-lived connection broke:\n{}",
        hold.output()
    );
    println!("long-lived connection: {}", hold.output().trim());
    let stats = topo.stats();
    assert!(u64_at(&stats, "/netlink/messages") > 0, "{stats}");
    assert_eq!(u64_at(&stats, "/netlink/malformed"), 0, "{stats}");
    drop(lb);
}

/// A more specific route sends one daemon out of the front while dispatchd
/// runs: dispatchd says so in its log, shows it in `ctl backends`, and offers
/// the daemon no new connection; when the route goes, the daemon is back.
#[test]
fn a_daemon_routed_off_the_back_is_reported_and_avoided_until_it_returns() {
    let topo = Topology::up(DISPATCHD, "nloff", 2, 1);
    let d = topo.dispatcher();
    let _servers = topo.serve(2);
    let lb = topo.dispatchd(&Topology::default_flags(2));
    let (kept, moved) = ("198.19.0.11:8080", "198.19.0.12:8080");
    assert!(taken_by(&connect(&topo, 20), moved) > 0);

    let added = Instant::now();
    ip(&topo, &d, &["route", "add", "198.19.0.12/32", "dev", "l0"]);
    let took = wait_for_line(
        &lb,
        "daemon 198.19.0.12:8080 is routed via l0, not the back interface l1",
        Duration::from_secs(2),
    );
    println!(
        "route via the front reported {took:?} after `ip route add` began ({:?} in all)",
        added.elapsed()
    );
    let line = backend_line(&topo, moved);
    assert_eq!(field(&line, "state"), "down", "{line}");
    assert_eq!(field(&line, "next_hop"), "none", "{line}");
    let spread = connect(&topo, 30);
    assert_eq!(taken_by(&spread, moved), 0, "{spread:?}");
    assert_eq!(taken_by(&spread, kept), 30, "{spread:?}");

    ip(&topo, &d, &["route", "del", "198.19.0.12/32", "dev", "l0"]);
    let took = wait_for_line(
        &lb,
        "daemon 198.19.0.12:8080 is routed via the back interface l1 again",
        Duration::from_secs(2),
    );
    println!("route back reported {took:?} after `ip route del`");
    // Health may have seen a failed probe or two meanwhile (they went out of
    // l0): rise takes two good ones.
    wait_until(Duration::from_secs(5), "the daemon is up again", || {
        field(&backend_line(&topo, moved), "state") == "up"
    });
    let spread = connect(&topo, 30);
    assert!(taken_by(&spread, moved) > 0, "{spread:?}");
    drop(lb);
}

/// The same through IPv6 policy routing, changed while dispatchd runs: `ip -6
/// rule add` sends one IPv6 daemon to a table that routes it out of the front,
/// and `ip -6 rule del` brings it back. A rule change is a notification of its
/// own (no route changes), so the loop must follow IPv6 rules to see either.
#[test]
fn an_ipv6_rule_added_and_deleted_while_running_moves_a_daemon_off_the_back_and_back() {
    let topo = Topology::up_dual(DISPATCHD, "nlrule6", 2, 1);
    let d = topo.dispatcher();
    let _servers = topo.serve_on(&[daemon_addr6(0), daemon_addr6(1)], &[]);
    let lb = topo.dispatchd(&Topology::default_flags6(2));
    let moved = daemon_addr6(1);
    let moved_ip = moved.trim_start_matches('[').split(']').next().unwrap();
    assert!(taken_by(&connect_to(&topo, VIP6, 20), &moved) > 0);

    // Table 200 routes the daemon out of the front; nothing uses it yet.
    ip(
        &topo,
        &d,
        &["-6", "route", "add", moved_ip, "dev", "l0", "table", "200"],
    );
    let rule = [
        "-6", "rule", "add", "to", moved_ip, "lookup", "200", "pref", "1000",
    ];
    ip(&topo, &d, &rule);
    let took = wait_for_line(
        &lb,
        &format!("daemon {moved} is routed via l0, not the back interface l1"),
        Duration::from_secs(2),
    );
    println!("`ip -6 rule add` followed in {took:?}");
    let line = backend_line(&topo, &moved);
    assert_eq!(field(&line, "state"), "down", "{line}");
    let spread = connect_to(&topo, VIP6, 20);
    assert_eq!(taken_by(&spread, &moved), 0, "{spread:?}");

    let mut rule = rule;
    rule[2] = "del";
    ip(&topo, &d, &rule);
    let took = wait_for_line(
        &lb,
        &format!("daemon {moved} is routed via the back interface l1 again"),
        Duration::from_secs(2),
    );
    println!("`ip -6 rule del` followed in {took:?}");
    wait_until(Duration::from_secs(5), "the daemon is up again", || {
        field(&backend_line(&topo, &moved), "state") == "up"
    });
    assert!(taken_by(&connect_to(&topo, VIP6, 30), &moved) > 0);
    drop(lb);
}

/// One line on stderr, non-zero exit, nothing attached.
fn assert_refused(topo: &Topology, out: &std::process::Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr:\n{}", text(out));
    assert!(
        lines[0].starts_with("dispatchd: ") && lines[0].contains(expect),
        "expected {expect:?}:\n{}",
        text(out)
    );
    assert!(!topo.xdp_attached("l0") && !topo.xdp_attached("l1"));
}

/// Start-up refuses a daemon the kernel does not route out of the back, with
/// the kernel's reason: no route, an unreachable route, a route out of the
/// front, and a policy rule that sends a daemon of the back's own subnet out of
/// the front (the main table says l1, the kernel l0). A reload to such a
/// daemon is refused the same way and the running set is kept.
#[test]
fn start_up_and_reload_refuse_what_the_kernel_does_not_route_out_of_the_back() {
    let topo = Topology::up(DISPATCHD, "nlbad", 2, 1);
    let d = topo.dispatcher();
    let out = topo.dispatchd_fails(&flags(&["198.19.2.11:8080"]));
    assert_refused(&topo, &out, "no route to daemon 198.19.2.11");

    ip(&topo, &d, &["route", "add", "unreachable", "198.19.3.0/24"]);
    let out = topo.dispatchd_fails(&flags(&["198.19.3.11:8080"]));
    assert_refused(&topo, &out, "no route to daemon 198.19.3.11");

    let out = topo.dispatchd_fails(&flags(&["198.18.0.50:8080"]));
    assert_refused(
        &topo,
        &out,
        "daemon 198.18.0.50 is routed via l0, not the back interface l1",
    );

    ip(
        &topo,
        &d,
        &[
            "route",
            "add",
            "198.19.0.12/32",
            "dev",
            "l0",
            "table",
            "101",
        ],
    );
    ip(
        &topo,
        &d,
        &[
            "rule",
            "add",
            "to",
            "198.19.0.12",
            "lookup",
            "101",
            "pref",
            "1001",
        ],
    );
    let out = topo.dispatchd_fails(&flags(&["198.19.0.11:8080", "198.19.0.12:8080"]));
    assert_refused(
        &topo,
        &out,
        "daemon 198.19.0.12 is routed via l0, not the back interface l1",
    );

    // A reload to the same daemon: refused, the running set kept.
    let _servers = topo.serve(2);
    let dir = std::env::temp_dir().join(format!("dispatchd-nlbad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let file = dir.join("dispatchd.toml");
    let config = |daemons: &str| {
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\n[[service]]\naddress = \"{VIP}\"\nbackends = [{daemons}]\n"
        );
        std::fs::write(&file, body).expect("writing the config");
    };
    config("\"198.19.0.11:8080\"");
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    config("\"198.19.0.11:8080\", \"198.19.0.12:8080\"");
    lb.signal("HUP");
    wait_for_line(
        &lb,
        "SIGHUP: daemon 198.19.0.12 is routed via l0, not the back interface l1",
        Duration::from_secs(3),
    );
    let spread = connect(&topo, 10);
    assert_eq!(taken_by(&spread, "198.19.0.11:8080"), 10, "{spread:?}");
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The IPv6 side of the kernel's answers, against a dual-stack topology's real
/// tables (in the dispatcher namespace, no dispatchd): `ip -6 route get` and
/// `ip -6 neigh` over rtnetlink for a daemon on the back's link, for one behind
/// a router's link-local address, for the host's own addresses, a client and
/// an unrouted address; the TCP attempt of `resolve6` makes the kernel solicit
/// a hop, whose MAC then comes from the IPv6 neighbour table and its dump; and
/// the ICMPv6 echo probe makes the kernel solicit a client's hop on the front,
/// global or link-local, as the management loop will for the XDP program's
/// unresolved_hops6.
#[test]
fn ipv6_routes_and_neighbours_come_from_the_kernel() {
    use std::net::{Ipv6Addr, SocketAddrV6};

    use dispatchd::{
        neigh::{echo6_request, Kernel, Reach},
        sys::RawIcmp6Sender,
        xdp::Interface,
    };
    use dispatchd_testkit::NetNsGuard;

    let topo = Topology::up_dual(DISPATCHD, "v6knl", 1, 1);
    let (c, d, s) = (topo.client(), topo.dispatcher(), topo.daemons());
    let mac_of = |ns: &str, dev: &str| {
        let m = topo.mac(ns, dev).unwrap_or_else(|e| panic!("{e:#}"));
        dispatchd::neigh::parse_mac(&m).unwrap_or_else(|| panic!("{m}"))
    };
    let (s0_mac, c0_mac) = (mac_of(&s, "s0"), mac_of(&c, "c0"));
    // s0's link-local address: the router of a network behind it.
    let s0_ll: Ipv6Addr = {
        let out = ip(
            &topo,
            &s,
            &["-6", "-o", "addr", "show", "dev", "s0", "scope", "link"],
        );
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap_or_else(|| panic!("no link-local address on s0: {out}"));
        word.split('/').next().unwrap().parse().unwrap()
    };
    let c0_ll: Ipv6Addr = {
        let out = ip(
            &topo,
            &c,
            &["-6", "-o", "addr", "show", "dev", "c0", "scope", "link"],
        );
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap();
        word.split('/').next().unwrap().parse().unwrap()
    };
    ip(
        &topo,
        &s,
        &["addr", "add", "2001:2:0:3::11/128", "dev", "s0", "nodad"],
    );
    ip(
        &topo,
        &d,
        &[
            "-6",
            "route",
            "add",
            "2001:2:0:3::/64",
            "via",
            &s0_ll.to_string(),
            "dev",
            "l1",
        ],
    );

    let _inside = NetNsGuard::enter(&d).unwrap_or_else(|e| panic!("entering {d}: {e}"));
    let back = Interface::lookup("l1").expect("l1");
    let front = Interface::lookup("l0").expect("l0");
    let kernel = Kernel::open("l1", back.index, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("rtnetlink: {e:#}"));

    let on_link: Ipv6Addr = "2001:2:0:2::11".parse().unwrap();
    let behind: Ipv6Addr = "2001:2:0:3::11".parse().unwrap();
    assert_eq!(
        kernel.route6(on_link).unwrap(),
        Reach::Back { hop: on_link }
    );
    assert_eq!(kernel.route6(behind).unwrap(), Reach::Back { hop: s0_ll });
    for (local, via) in [
        ("2001:2:0:1::100", "lo"),
        ("2001:2:0:2::1", "lo"),
        ("2001:2:0:1::2", "l0"),
    ] {
        assert_eq!(
            kernel.route6(local.parse().unwrap()).unwrap(),
            Reach::Elsewhere {
                interface: via.into()
            },
            "{local}"
        );
    }
    let unrouted = kernel.route6("2001:2:0:9::9".parse().unwrap()).unwrap();
    assert!(matches!(unrouted, Reach::NoRoute { .. }), "{unrouted:?}");
    let refused = kernel
        .route_via_back6("2001:2:0:1::2".parse().unwrap())
        .unwrap_err();
    assert!(
        format!("{refused:#}").contains("not the back interface l1"),
        "{refused:#}"
    );

    // No entry for the router yet; resolving the daemon behind it (a TCP
    // attempt, refused: nothing listens) leaves a complete one.
    let before = kernel.neighbour6(s0_ll).unwrap();
    assert!(
        before.as_ref().and_then(|n| n.usable_mac()).is_none(),
        "{before:?}"
    );
    let (hop, mac) = kernel
        .resolve6(SocketAddrV6::new(behind, 8080, 0, 0))
        .unwrap();
    assert_eq!((hop, mac), (s0_ll, Some(s0_mac)));
    let entry = kernel
        .neighbour6(s0_ll)
        .unwrap()
        .expect("the router's entry");
    assert_eq!(
        (entry.ifindex, entry.dst, entry.usable_mac()),
        (back.index, Some(s0_ll), Some(s0_mac))
    );
    let dump = kernel.neighbours6().unwrap();
    assert!(
        dump.iter()
            .any(|n| n.dst == Some(s0_ll) && n.usable_mac() == Some(s0_mac)),
        "{dump:?}"
    );
    assert!(
        dump.iter()
            .all(|n| n.ifindex == back.index && n.family == 10),
        "{dump:?}"
    );

    // The probe: one echo request each, and the kernel solicits the client's
    // global and link-local addresses on the front until they answer.
    let probe = RawIcmp6Sender::open("l0", front.index)
        .unwrap_or_else(|e| panic!("raw ICMPv6 socket: {e}"));
    let client: Ipv6Addr = "2001:2:0:1::2".parse().unwrap();
    for (i, hop) in [client, c0_ll].into_iter().enumerate() {
        let known = kernel.neighbour6_on(front.index, hop).unwrap();
        assert!(
            known.as_ref().and_then(|n| n.usable_mac()).is_none(),
            "{hop}: {known:?}"
        );
        probe
            .send_to(&echo6_request(i as u16), hop)
            .unwrap_or_else(|e| panic!("probing {hop}: {e}"));
        let start = Instant::now();
        loop {
            let entry = kernel.neighbour6_on(front.index, hop).unwrap();
            if entry.as_ref().and_then(|n| n.usable_mac()) == Some(c0_mac) {
                eprintln!("{hop} resolved {:?} after the probe", start.elapsed());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(3),
                "{hop} unresolved: {entry:?}"
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// IPv6 daemons' next hops are followed as the management loop follows them
/// (the same `HopBook` calls on the kernel's own messages): their routes
/// from `ip -6 route get`, their MACs from the NDP table and its
/// notifications on the socket `Kernel::open` subscribes (IPv6 routes
/// included), beside an IPv4 daemon. A daemon's MAC changes (s0's address,
/// told with `ip -6 neigh replace`), a route takes a daemon off the back and
/// goes again, and a daemon behind a router's link-local address takes the
/// router's MAC. What dispatchd's loop does with the result (cells, states)
/// is the IPv4 path's; serving IPv6 end to end needs the IPv6 dataplane.
#[test]
fn ipv6_daemon_hops_are_followed_from_the_kernels_notifications() {
    use std::net::{IpAddr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use dispatchd::{
        ids::BackendId,
        neigh::{DaemonHop, HopBook, Kernel, Reach},
        netlink::{Message, Messages},
        xdp::Interface,
    };
    use dispatchd_testkit::NetNsGuard;

    let topo = Topology::up_dual(DISPATCHD, "c6hop", 2, 1);
    let (d, s) = (topo.dispatcher(), topo.daemons());
    let s0_mac = {
        let m = topo.mac(&s, "s0").unwrap_or_else(|e| panic!("{e:#}"));
        dispatchd::neigh::parse_mac(&m).unwrap_or_else(|| panic!("{m}"))
    };
    let s0_ll: Ipv6Addr = {
        let out = ip(
            &topo,
            &s,
            &["-6", "-o", "addr", "show", "dev", "s0", "scope", "link"],
        );
        let word = out
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .unwrap_or_else(|| panic!("no link-local address on s0: {out}"));
        word.split('/').next().unwrap().parse().unwrap()
    };
    ip(
        &topo,
        &s,
        &["addr", "add", "2001:2:0:3::11/128", "dev", "s0", "nodad"],
    );
    ip(
        &topo,
        &d,
        &[
            "-6",
            "route",
            "add",
            "2001:2:0:3::/64",
            "via",
            &s0_ll.to_string(),
            "dev",
            "l1",
        ],
    );

    // The whole test inside: interface names are read in the thread's namespace.
    let _inside = NetNsGuard::enter(&d).unwrap_or_else(|e| panic!("entering {d}: {e}"));
    let back = Interface::lookup("l1").expect("l1");
    let kernel = Kernel::open("l1", back.index, Duration::from_secs(1))
        .unwrap_or_else(|e| panic!("rtnetlink: {e:#}"));
    let v4: SocketAddrV4 = "198.19.0.11:8080".parse().unwrap();
    let on_link: SocketAddrV6 = "[2001:2:0:2::11]:8080".parse().unwrap();
    let behind: SocketAddrV6 = "[2001:2:0:3::11]:8080".parse().unwrap();
    // Start-up: each resolved (a TCP attempt has the kernel solicit the hop),
    // then the routes and both tables read, as daemon.rs and apply.rs do.
    kernel.resolve(v4).unwrap();
    kernel.resolve6(on_link).unwrap();
    kernel.resolve6(behind).unwrap();
    let mut book = HopBook::new(back.index);
    book.load_neighbours(
        &kernel.neighbours().unwrap(),
        &kernel.neighbours6().unwrap(),
        &mut Vec::new(),
    );
    let daemons: [IpAddr; 3] = [
        (*v4.ip()).into(),
        (*on_link.ip()).into(),
        (*behind.ip()).into(),
    ];
    book.install(
        daemons
            .iter()
            .map(|&addr| {
                let reach = kernel.route_ip(addr).unwrap();
                let mac = reach_hop(&reach).and_then(|hop| book.mac_for(addr, hop));
                DaemonHop { addr, reach, mac }
            })
            .collect(),
    );
    let hop_of = |book: &HopBook, i: u16| book.get(BackendId(i)).unwrap().clone();
    assert_eq!(hop_of(&book, 0).usable(), Some(s0_mac), "the IPv4 daemon");
    assert_eq!(
        hop_of(&book, 1).usable(),
        Some(s0_mac),
        "on the back's link"
    );
    assert_eq!(hop_of(&book, 1).hop(), Some((*on_link.ip()).into()));
    assert_eq!(hop_of(&book, 2).hop(), Some(s0_ll.into()), "the router");
    assert_eq!(hop_of(&book, 2).usable(), Some(s0_mac));

    // What the loop does with each notification (manager.rs on_notification
    // and reroute_slice), until `done` holds or 3 s pass.
    let follow = |book: &mut HopBook, what: &str, done: &dyn Fn(&HopBook) -> bool| {
        let start = Instant::now();
        let mut buf = vec![0u8; dispatchd::neigh::DATAGRAM_MAX];
        let mut changed = Vec::new();
        while !done(book) {
            assert!(start.elapsed() < Duration::from_secs(3), "{what}: {book:?}");
            let got = match kernel.notifications().recv(&mut buf) {
                Ok(got) => got,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(2));
                    continue;
                }
                Err(e) => panic!("{what}: {e}"),
            };
            let mut reroute = false;
            for item in Messages::new(&buf[..got.len]) {
                match item.unwrap_or_else(|e| panic!("{what}: {e}")).1 {
                    Message::Neighbour6(n) => reroute |= book.neighbour(&n, &mut changed),
                    Message::Neighbour(n) => reroute |= book.neighbour(&n, &mut changed),
                    Message::Route6(r) => reroute |= book.covers_a_daemon6(r.dst, r.dst_len),
                    Message::Route(r) => reroute |= book.covers_a_daemon(r.dst, r.dst_len),
                    Message::RoutingChanged => reroute = true,
                    _ => {}
                }
            }
            if reroute {
                for (i, addr) in daemons.iter().enumerate() {
                    let reach = kernel.route_ip(*addr).unwrap();
                    book.reroute(BackendId(i as u16), reach, &mut changed);
                }
            }
        }
        start.elapsed()
    };

    // s0 takes a new MAC; the dispatcher's kernel is told it for the on-link
    // daemon's entry: that daemon follows, the router's entry is another.
    let told = "02:00:5e:10:06:01";
    ip(&topo, &s, &["link", "set", "s0", "address", told]);
    ip(
        &topo,
        &d,
        &[
            "-6",
            "neigh",
            "replace",
            "2001:2:0:2::11",
            "lladdr",
            told,
            "dev",
            "l1",
            "nud",
            "reachable",
        ],
    );
    let told_mac = dispatchd::neigh::parse_mac(told).unwrap();
    let took = follow(&mut book, "the new MAC", &|b| {
        b.get(BackendId(1)).unwrap().usable() == Some(told_mac)
    });
    println!("new NDP entry followed {took:?} after `ip -6 neigh replace`");
    assert_eq!(
        hop_of(&book, 0).usable(),
        Some(s0_mac),
        "IPv4's ARP entry is its own"
    );
    assert_eq!(
        hop_of(&book, 2).usable(),
        Some(s0_mac),
        "the router's entry is its own"
    );

    // A more specific route sends the on-link daemon out of the front.
    ip(
        &topo,
        &d,
        &["-6", "route", "add", "2001:2:0:2::11/128", "dev", "l0"],
    );
    let took = follow(&mut book, "routed off the back", &|b| {
        !b.get(BackendId(1)).unwrap().reach.is_back()
    });
    println!("route off the back followed {took:?} after `ip -6 route add`");
    assert_eq!(
        hop_of(&book, 1).reach,
        Reach::Elsewhere {
            interface: "l0".into()
        }
    );
    assert_eq!(hop_of(&book, 1).usable(), None, "no MAC while off the back");
    assert!(hop_of(&book, 2).reach.is_back(), "the other daemons stay");
    ip(
        &topo,
        &d,
        &["-6", "route", "del", "2001:2:0:2::11/128", "dev", "l0"],
    );
    let took = follow(&mut book, "back on the back", &|b| {
        b.get(BackendId(1)).unwrap().usable() == Some(told_mac)
    });
    println!("route back followed {took:?} after `ip -6 route del`");
}

/// The hop a reach names, if it leaves by the back.
fn reach_hop(reach: &dispatchd::neigh::Reach<std::net::IpAddr>) -> Option<std::net::IpAddr> {
    match reach {
        dispatchd::neigh::Reach::Back { hop } => Some(*hop),
        _ => None,
    }
}

/// An IPv6 service needs the back to forward IPv6 (the XDP program's FIB
/// lookup for its replies checks the back's own `forwarding`): start-up says
/// so with the sysctl to set, and an IPv6 daemon the kernel does not route out
/// of the back is refused as an IPv4 one is, with nothing attached.
#[test]
fn start_up_refuses_an_ipv6_service_the_host_cannot_serve() {
    let topo = Topology::up_dual(DISPATCHD, "c6bad", 1, 1);
    let d = topo.dispatcher();
    let v6 = |daemons: &[&str]| {
        let mut v: Vec<String> = ["--front", "l0", "--back", "l1", "--service"]
            .map(String::from)
            .to_vec();
        v.push(dispatchd_testkit::VIP6.to_owned());
        for daemon in daemons {
            v.extend(["--backend".to_owned(), (*daemon).to_owned()]);
        }
        v
    };
    let out = topo.dispatchd_fails(&v6(&["[2001:2:0:9::11]:8080"]));
    assert_refused(&topo, &out, "no route to daemon 2001:2:0:9::11");
    let out = topo.dispatchd_fails(&v6(&["[2001:2:0:1::2]:8080"]));
    assert_refused(
        &topo,
        &out,
        "daemon 2001:2:0:1::2 is routed via l0, not the back interface l1",
    );

    topo.exec(&d, "sysctl", &["-qw", "net.ipv6.conf.l1.forwarding=0"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let out = topo.dispatchd_fails(&v6(&["[2001:2:0:2::11]:8080"]));
    assert_refused(
        &topo,
        &out,
        "IPv6 forwarding is off on the back interface l1; the IPv6 reply path's FIB lookup \
         needs it (sysctl -w net.ipv6.conf.l1.forwarding=1)",
    );
    // An IPv4 service alone does not need it.
    let _servers = topo.serve(1);
    let lb = topo.dispatchd(&Topology::default_flags(1));
    assert!(topo.xdp_attached("l0") && topo.xdp_attached("l1"));
    drop(lb);
}
