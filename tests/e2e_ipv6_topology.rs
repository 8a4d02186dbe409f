//! The dual-stack test topology (`Topology::up_dual`, `scripts/topology.sh ...
//! dual`) on its own, without dispatchd: every IPv6 address usable at once (no
//! duplicate address detection), the sysctls the IPv6 FIB lookup and the README
//! ask for, and the kernel routing IPv6 between the clients and the daemons
//! (ping6, and the testkit's TCP client against its echo servers over IPv6),
//! IPv4 as before. Needs root.
use std::time::Duration;

use dispatchd_testkit::{
    daemon_addr, daemon_addr6, per_daemon, text, Proc, Router, Topology, VIP6,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

fn sysctl(topo: &Topology, ns: &str, key: &str) -> String {
    topo.exec(ns, "sysctl", &["-n", key])
        .unwrap_or_else(|e| panic!("sysctl {key} in {ns}: {e:#}"))
        .trim()
        .to_owned()
}

/// Short connections from the client namespace straight to `to` (a daemon's
/// own address): how many each daemon took.
fn connect(topo: &Topology, to: &str, n: usize) -> Vec<(String, usize)> {
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
    assert!(
        out.status.success(),
        "{n} connections to {to}:\n{}",
        text(&out)
    );
    per_daemon(&String::from_utf8_lossy(&out.stdout))
}

#[test]
fn the_dual_stack_topology_routes_ipv6_between_clients_and_daemons() {
    let topo = Topology::up_dual(DISPATCHD, "v6ktopo", 2, 1);
    let (c, d, s) = (topo.client(), topo.dispatcher(), topo.daemons());

    // Every address is usable now: none is tentative (waiting for DAD).
    for ns in [&c, &d, &s] {
        let tentative = topo
            .exec(ns, "ip", &["-6", "-o", "addr", "show", "tentative"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert!(tentative.trim().is_empty(), "{ns}: {tentative}");
    }
    let front = topo
        .exec(&d, "ip", &["-6", "-o", "addr", "show", "dev", "l0"])
        .unwrap();
    for want in ["2001:2:0:1::1/64", "2001:2:0:1::100/128"] {
        assert!(front.contains(want), "l0 lacks {want}: {front}");
    }
    let daemons = topo
        .exec(&s, "ip", &["-6", "-o", "addr", "show", "dev", "s0"])
        .unwrap();
    for want in ["2001:2:0:2::2/64", "2001:2:0:2::11/64", "2001:2:0:2::12/64"] {
        assert!(daemons.contains(want), "s0 lacks {want}: {daemons}");
    }
    // What dispatchd's IPv6 FIB lookup needs (the back forwards IPv6), and the
    // router advertisements a forwarding interface would otherwise act on.
    assert_eq!(sysctl(&topo, &d, "net.ipv6.conf.l1.forwarding"), "1");
    assert_eq!(sysctl(&topo, &d, "net.ipv6.conf.all.forwarding"), "1");
    for dev in ["l0", "l1"] {
        assert_eq!(
            sysctl(&topo, &d, &format!("net.ipv6.conf.{dev}.accept_ra")),
            "0"
        );
    }

    // The kernel routes IPv6 both ways: the client reaches each daemon and
    // the VIP (local on l0).
    for to in ["2001:2:0:2::11", "2001:2:0:2::12", "2001:2:0:1::100"] {
        let out = topo.run(&c, "ping", &["-6", "-c", "1", "-W", "2", to]);
        assert!(out.status.success(), "ping -6 {to}:\n{}", text(&out));
    }

    // TCP over IPv6 with the testkit: each daemon's echo server sees the
    // client's own address (the client checks it) and echoes intact.
    let mut serve = topo.cmd(&s, &topo.programs().testkit);
    serve.arg("serve");
    for i in 0..2 {
        serve.args(["--listen", &daemon_addr6(i), "--listen", &daemon_addr(i)]);
    }
    let _servers =
        Proc::start(serve, "serving", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    for i in 0..2 {
        let to = daemon_addr6(i);
        assert_eq!(connect(&topo, &to, 20), [(to.clone(), 20)], "to {to}");
    }
    // IPv4 as in every other topology.
    let to = daemon_addr(0);
    assert_eq!(connect(&topo, &to, 20), [(to.clone(), 20)]);

    // Nothing serves the VIP's port: the host that owns it refuses.
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP6,
        "--connections",
        "1",
        "--timeout-ms",
        "2000",
    ]);
    assert!(
        !out.status.success(),
        "a connection to an unserved VIP6 port:\n{}",
        text(&out)
    );
}

/// The dual-stack topology with a router on either side
/// (`Topology::up_dual_routed`): IPv6 crosses the router both ways, the
/// clients reach the VIP's address through the front router, and the
/// daemons' UDP servers answer over IPv6 through the back router.
#[test]
fn the_routed_dual_stack_topologies_route_ipv6_through_the_router() {
    let topo = Topology::up_dual_routed(DISPATCHD, "v6kfr", 1, 1, Router::Front);
    let (c, d, r) = (topo.client(), topo.dispatcher(), topo.router());
    assert_eq!(sysctl(&topo, &r, "net.ipv6.conf.all.forwarding"), "1");
    let front = topo
        .exec(&d, "ip", &["-6", "-o", "addr", "show", "dev", "l0"])
        .unwrap();
    for want in ["2001:2:0:3::2/64", "2001:2:0:1::100/128"] {
        assert!(front.contains(want), "l0 lacks {want}: {front}");
    }
    for to in ["2001:2:0:1::100", "2001:2:0:3::2"] {
        let out = topo.run(&c, "ping", &["-6", "-c", "1", "-W", "2", to]);
        assert!(out.status.success(), "ping -6 {to}:\n{}", text(&out));
    }
    // The replies leave the dispatcher through the router, not on-link.
    let route = topo
        .exec(&d, "ip", &["-6", "route", "get", "2001:2:0:1::2"])
        .unwrap();
    assert!(route.contains("via 2001:2:0:3::1 dev l0"), "{route}");
    drop(topo);

    let topo = Topology::up_dual_routed(DISPATCHD, "v6kbr", 2, 1, Router::Back);
    let (d, s) = (topo.dispatcher(), topo.daemons());
    let route = topo
        .exec(&d, "ip", &["-6", "route", "get", "2001:2:0:2::11"])
        .unwrap();
    assert!(route.contains("via 2001:2:0:4::2 dev l1"), "{route}");
    let mut serve = topo.cmd(&s, &topo.programs().testkit);
    serve.arg("serve");
    let mut udp = topo.cmd(&s, &topo.programs().testkit);
    udp.arg("udp-serve");
    for i in 0..2 {
        serve.args(["--listen", &daemon_addr6(i)]);
        udp.args(["--listen", &daemon_addr6(i)]);
    }
    let _servers =
        Proc::start(serve, "serving", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    let _udp =
        Proc::start(udp, "serving udp", Duration::from_secs(5)).unwrap_or_else(|e| panic!("{e:#}"));
    for i in 0..2 {
        let to = daemon_addr6(i);
        assert_eq!(connect(&topo, &to, 10), [(to.clone(), 10)], "to {to}");
        let out = topo.client_run(&["udp-query", "--to", &to, "--clients", "5", "--count", "2"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "udp-query {to}:\n{}", text(&out));
        assert!(
            stdout.contains(&format!("daemon={to} flows=5 datagrams=10")),
            "{stdout}"
        );
        assert!(stdout.contains("ok=10 lost=0"), "{stdout}");
        assert!(stdout.contains("first_local=[2001:2:0:1::2]:"), "{stdout}");
    }

    // The router narrows its route to the daemons as tests/e2e_ipv6.rs
    // does: its packet too big reaches the client (here directly, the
    // kernel forwarding), whose route cache then holds the narrow MTU.
    let narrow = [
        "-6",
        "route",
        "replace",
        "2001:2:0:2::/64",
        "dev",
        "b1",
        "proto",
        "kernel",
        "metric",
        "256",
        "mtu",
        "1280",
    ];
    topo.exec(&topo.router(), "ip", &narrow)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let to = daemon_addr6(0);
    let out = topo.client_run(&["bulk", "--to", &to, "--bytes", "2000000"]);
    assert!(out.status.success(), "bulk to {to}:\n{}", text(&out));
    let cached = topo
        .exec(
            &topo.client(),
            "ip",
            &["-6", "route", "get", "2001:2:0:2::11"],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(cached.contains("mtu 1280"), "{cached}");
}
