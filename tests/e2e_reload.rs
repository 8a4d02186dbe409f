//! A reload that reorders daemons: the connection tracker names daemons by
//! address, so when one of them fails and `on_failure = "reset"` drops its
//! connections, exactly its own go, and every other connection's record still
//! ends when the connection does.
use std::time::Duration;

use dispatchd_testkit::{daemon_addr, text, wait_until, Proc, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Cuts daemon `i` off without a FIN or RST, as a crashed host would: its
/// address drops everything in and out.
fn cut_off(topo: &Topology, i: usize) {
    let ip = daemon_addr(i).split(':').next().unwrap().to_owned();
    let rules = format!(
        "table inet cut {{ chain in {{ type filter hook input priority 0; ip daddr {ip} drop; }}; \
         chain out {{ type filter hook output priority 0; ip saddr {ip} drop; }}; }}"
    );
    let out = topo.run(&topo.daemons(), "nft", &[&rules]);
    assert!(out.status.success(), "nft: {}", text(&out));
}

/// The daemons `ctl conns` names, sorted.
fn tracked_daemons(topo: &Topology) -> Vec<String> {
    let json: serde_json::Value =
        serde_json::from_str(&topo.ctl(&["conns", "--json"])).expect("conns JSON");
    let mut daemons: Vec<String> = json["connections"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|c| c["daemon"].as_str().expect("daemon").to_owned())
        .collect();
    daemons.sort();
    daemons
}

#[test]
fn after_a_reordering_reload_a_failed_daemon_takes_only_its_own_connections() {
    let topo = Topology::up(DISPATCHD, "reord", 3, 1);
    let _servers: Vec<_> = (0..3).map(|i| topo.serve_one(i, &[])).collect();
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let write = |order: &[usize]| {
        let list: Vec<String> = order
            .iter()
            .map(|&i| format!("\"{}\"", daemon_addr(i)))
            .collect();
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\n[timeouts]\nlinger_ms = 300\n\
             [health]\ninterval_ms = 200\ntimeout_ms = 100\nfall = 2\non_failure = \"reset\"\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
            list.join(", ")
        );
        std::fs::write(&file, body).expect("writing the config");
    };
    write(&[0, 1, 2]);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    // Round robin: one long connection to each daemon, in order.
    let mut holds: Vec<Proc> = (0..3)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "6", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    let all: Vec<String> = (0..3).map(daemon_addr).collect();
    assert_eq!(tracked_daemons(&topo), all);

    write(&[2, 1, 0]);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    assert_eq!(
        tracked_daemons(&topo),
        all,
        "a reload keeps every connection"
    );

    cut_off(&topo, 0);
    wait_until(Duration::from_secs(5), "daemon 0 marked down", || {
        lb.output()
            .contains(&format!("daemon {} is down", daemon_addr(0)))
    });
    wait_until(Duration::from_secs(2), "its connection dropped", || {
        tracked_daemons(&topo) == all[1..]
    });

    // The other two connections carry on, and their records end with them.
    for (i, hold) in holds.iter_mut().enumerate().skip(1) {
        assert!(
            hold.wait(Duration::from_secs(15)).success(),
            "connection {i} broke:\n{}",
            hold.output()
        );
    }
    wait_until(Duration::from_secs(5), "no record left", || {
        let stats = topo.stats();
        stats["connections"] == 0 && stats["workers"][0]["flows"] == 0
    });
    let _ = std::fs::remove_file(&file);
}
