//! `reply_mode = "tracked"` with one daemon ADDR:PORT behind a TCP and a UDP
//! service on one VIP:port, end to end on the DESIGN.md topology: the real
//! XDP program and AF_XDP sockets, a real kernel TCP connection and UDP flow
//! from ONE client port (`dispatchd-testkit two-protocols`). The tracked
//! map's key carries the protocol, so the end of either leaves the other's
//! replies taken and rewritten. Needs root.
use std::time::Duration;

use dispatchd_testkit::{
    json::{sum_of, Value},
    text, wait_until, Proc, Topology, VIP,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// The one daemon: a TCP echo server and a UDP one on the same ADDR:PORT.
const DAEMON: &str = "198.19.0.11:8080";
/// How long a closed TCP connection's record lingers, and a UDP flow's
/// record lives without datagrams: short, so that either ends while the
/// other still runs.
const LINGER_MS: u64 = 200;
const UDP_IDLE_MS: u64 = 500;

fn tracked_dispatchd(topo: &Topology) -> Proc {
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\nreply_mode = \"tracked\"\n\
         [timeouts]\nlinger_ms = {LINGER_MS}\nudp_idle_ms = {UDP_IDLE_MS}\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [\"{DAEMON}\"]\n\
         [[service]]\naddress = \"{VIP}\"\nprotocol = \"udp\"\nbackends = [\"{DAEMON}\"]\n"
    );
    std::fs::write(&file, body).expect("writing the config");
    topo.dispatchd(&["--config", file.to_str().expect("a UTF-8 path")])
}

fn counter(topo: &Topology, name: &str) -> u64 {
    sum_of(&topo.stats(), name)
}

/// One run of `two-protocols`: both flows open from one port, `close` ends,
/// and the other must go on for 3 s. While it runs, the ended one's key
/// leaves the map (`tracked_removed` grows by one): the kept flow's replies
/// are still taken after that, and at the end its own key leaves too.
fn close_one_keep_the_other(topo: &Topology, close: &str) {
    wait_until(Duration::from_secs(3), "every earlier key removed", || {
        counter(topo, "tracked_removed") == counter(topo, "tracked_inserted")
    });
    let (inserted, removed) = (
        counter(topo, "tracked_inserted"),
        counter(topo, "tracked_removed"),
    );
    let mut client = topo.client_start(
        &[
            "two-protocols",
            "--to",
            VIP,
            "--close",
            close,
            "--after-ms",
            "3000",
            "--interval-ms",
            "50",
        ],
        "closed=",
    );
    wait_until(
        Duration::from_secs(2),
        "the closed flow's key removed",
        || counter(topo, "tracked_removed") == removed + 1,
    );
    assert!(
        client.exited().is_none(),
        "the kept flow ended before the closed one's key was removed:\n{}",
        client.output()
    );
    assert_eq!(counter(topo, "tracked_inserted"), inserted + 2);
    let status = client.wait(Duration::from_secs(10));
    let output = client.output();
    assert!(
        status.success(),
        "close {close}: the other flow broke:\n{output}"
    );
    let kept = if close == "tcp" { "Udp" } else { "Tcp" };
    assert!(output.contains(&format!("kept={kept} ")), "{output}");
    let port = output
        .lines()
        .find_map(|l| l.strip_prefix("port="))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the client's port line");
    assert!(
        output.contains(&format!("tcp={DAEMON} udp={DAEMON}")),
        "both flows on the one daemon: {output}"
    );
    // Two keys, each removed once: none shared, none missing.
    wait_until(
        Duration::from_secs(3),
        "the kept flow's key removed",
        || counter(topo, "tracked_removed") == removed + 2,
    );
    assert_eq!(counter(topo, "tracked_failed"), 0, "port {port}");
}

#[test]
fn one_client_ports_tcp_and_udp_flows_to_one_daemon_outlive_each_other() {
    let topo = Topology::up(DISPATCHD, "tkboth", 1, 1);
    let _tcp = topo.serve(1);
    let mut cmd = topo.cmd(&topo.daemons(), &topo.programs().testkit);
    cmd.args(["udp-serve", "--listen", DAEMON]);
    let _udp = Proc::start(cmd, "serving udp", Duration::from_secs(5)).expect("the UDP server");
    let mut lb = tracked_dispatchd(&topo);
    wait_until(Duration::from_secs(10), "both daemons up", || {
        let list: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        let list = list.as_array().expect("a list");
        list.len() == 2 && list.iter().all(|b| b["state"] == "up")
    });
    // A plain connection first: the daemons' next hops resolved.
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "2"]);
    assert!(out.status.success(), "TCP:\n{}", text(&out));

    close_one_keep_the_other(&topo, "udp");
    close_one_keep_the_other(&topo, "tcp");
    assert!(lb.exited().is_none(), "dispatchd died:\n{}", lb.output());
}
