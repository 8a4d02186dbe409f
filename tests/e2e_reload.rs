//! Reloads. One that reorders daemons: the connection tracker names daemons by
//! address, so when one of them fails and `on_failure = "reset"` drops its
//! connections, exactly its own go, and every other connection's record still
//! ends when the connection does. One that removes a daemon: by `on_remove`,
//! its connections go on to their end (and then it goes), or are dropped at once.
use std::time::Duration;

use dispatchd_testkit::{daemon_addr, per_daemon, text, wait_until, Proc, Topology, VIP};

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

/// The daemons `ctl conns` names, sorted, each once.
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
    daemons.dedup();
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

/// Writes a config with `on_remove = rule`, health checks every 200 ms that
/// reset a failed daemon's connections, and round robin over `daemons`.
fn write_removal_config(file: &std::path::Path, rule: &str, daemons: &[usize]) {
    let list: Vec<String> = daemons
        .iter()
        .map(|&i| format!("\"{}\"", daemon_addr(i)))
        .collect();
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\non_remove = \"{rule}\"\n[timeouts]\nlinger_ms = 300\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 100\nfall = 2\non_failure = \"reset\"\n\
         [[service]]\naddress = \"{VIP}\"\npolicy = \"round_robin\"\nbackends = [{}]\n",
        list.join(", ")
    );
    std::fs::write(file, body).expect("writing the config");
}

/// `ctl backends --json`: each daemon's address and state.
fn backend_states(topo: &Topology) -> Vec<(String, String)> {
    let json: serde_json::Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    json.as_array()
        .expect("a list")
        .iter()
        .map(|b| {
            let field = |k: &str| b[k].as_str().expect(k).to_owned();
            (field("daemon"), field("state"))
        })
        .collect()
}

/// Two daemons, a long connection to each; a reload removes daemon 0, and new
/// connections then all go to daemon 1. Returns the topology, dispatchd, the
/// two connections (`[i]` to daemon i) and the servers.
fn remove_daemon_0_under_load(prefix: &str, rule: &str) -> (Topology, Proc, Vec<Proc>, Vec<Proc>) {
    let topo = Topology::up(DISPATCHD, prefix, 2, 1);
    let servers: Vec<_> = (0..2).map(|i| topo.serve_one(i, &[])).collect();
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    write_removal_config(&file, rule, &[0, 1]);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let mut holds: Vec<Proc> = (0..2)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "5", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    // holds[i] is the connection to daemon i.
    let to_daemon_0 = format!("daemon={} opened", daemon_addr(0));
    holds.sort_by_key(|h| !h.output().contains(&to_daemon_0));
    assert!(
        holds[0].output().contains(&to_daemon_0),
        "{}",
        holds[0].output()
    );
    let both: Vec<String> = (0..2).map(daemon_addr).collect();
    assert_eq!(tracked_daemons(&topo), both);

    write_removal_config(&file, rule, &[1]);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    let _ = std::fs::remove_file(&file);
    // New connections all go to the daemon that remains.
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "40",
        "--concurrency",
        "4",
    ]);
    assert!(out.status.success(), "new connections:\n{}", text(&out));
    assert_eq!(
        per_daemon(&String::from_utf8_lossy(&out.stdout)),
        [(daemon_addr(1), 40)]
    );
    (topo, lb, holds, servers)
}

#[test]
fn a_removed_daemon_keeps_its_connections_to_their_end_then_goes() {
    let (topo, lb, mut holds, _servers) = remove_daemon_0_under_load("rmfin", "finish");
    assert!(lb
        .output()
        .contains(&format!("{} (retired)", daemon_addr(0))));
    assert_eq!(
        backend_states(&topo),
        [
            (daemon_addr(1), "up".to_owned()),
            (daemon_addr(0), "retired".to_owned())
        ]
    );
    let refused = std::process::Command::new(DISPATCHD)
        .args(["ctl", "--socket", &topo.control_socket(), "undrain"])
        .arg(daemon_addr(0))
        .output()
        .expect("running dispatchd ctl");
    assert!(
        !refused.status.success() && text(&refused).contains("removed by a reload"),
        "{}",
        text(&refused)
    );
    for (i, hold) in holds.iter_mut().enumerate() {
        assert!(
            hold.wait(Duration::from_secs(15)).success(),
            "connection {i} broke:\n{}",
            hold.output()
        );
    }
    wait_until(
        Duration::from_secs(5),
        "the removed daemon let go of",
        || {
            lb.output().contains(&format!(
                "removed daemon {} has no connection left",
                daemon_addr(0)
            ))
        },
    );
    assert_eq!(backend_states(&topo), [(daemon_addr(1), "up".to_owned())]);
    wait_until(Duration::from_secs(5), "no record left", || {
        let stats = topo.stats();
        stats["connections"] == 0 && stats["workers"][0]["flows"] == 0
    });
}

#[test]
fn a_removed_daemon_loses_its_connections_at_once_with_on_remove_reset() {
    let (topo, _lb, mut holds, _servers) = remove_daemon_0_under_load("rmrst", "reset");
    assert_eq!(
        tracked_daemons(&topo),
        [daemon_addr(1)],
        "forgotten at once"
    );
    assert_eq!(backend_states(&topo), [(daemon_addr(1), "up".to_owned())]);
    assert!(
        !holds[0].wait(Duration::from_secs(15)).success(),
        "the removed daemon's connection went on:\n{}",
        holds[0].output()
    );
    assert!(
        holds[1].wait(Duration::from_secs(15)).success(),
        "the other connection broke:\n{}",
        holds[1].output()
    );
    wait_until(Duration::from_secs(5), "no record left", || {
        let stats = topo.stats();
        stats["connections"] == 0 && stats["workers"][0]["flows"] == 0
    });
}

/// One reload that reorders, removes and adds daemons while short connections
/// churn and a long one runs to each daemon: no short connection fails, the
/// added daemon takes new ones, the removed one's connection runs to its end
/// (`on_remove = "finish"`), and `on_failure = "reset"` then acts on exactly
/// the daemon that failed.
#[test]
fn a_reload_that_reorders_removes_and_adds_under_load_keeps_every_connection() {
    let topo = Topology::up(DISPATCHD, "rmix", 4, 1);
    let _servers: Vec<_> = (0..4).map(|i| topo.serve_one(i, &[])).collect();
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    write_removal_config(&file, "finish", &[0, 1, 2]);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let mut holds: Vec<Proc> = (0..3)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "7", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    // holds[i] is the connection to daemon i.
    holds.sort_by_key(|h| {
        (0..3)
            .position(|i| {
                h.output()
                    .contains(&format!("daemon={} opened", daemon_addr(i)))
            })
            .expect("a hold to one of the three")
    });
    let mut churn = topo.client_start(
        &["churn", "--to", VIP, "--seconds", "4", "--concurrency", "4"],
        "churning",
    );
    std::thread::sleep(Duration::from_millis(500));

    write_removal_config(&file, "finish", &[2, 3, 1]);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    let _ = std::fs::remove_file(&file);

    assert!(
        churn.wait(Duration::from_secs(15)).success(),
        "{}",
        churn.output()
    );
    let churned = churn.output();
    assert!(
        churned.contains(" failed=0 "),
        "short connections failed:\n{churned}"
    );
    let spread = per_daemon(&churned);
    assert!(
        spread.iter().any(|(d, n)| *d == daemon_addr(3) && *n > 0),
        "the added daemon took no connection: {spread:?}"
    );

    // Daemon 1 fails: only its own connection is dropped.
    cut_off(&topo, 1);
    wait_until(Duration::from_secs(5), "daemon 1 marked down", || {
        lb.output()
            .contains(&format!("daemon {} is down", daemon_addr(1)))
    });
    wait_until(Duration::from_secs(3), "its connection dropped", || {
        !tracked_daemons(&topo).contains(&daemon_addr(1))
    });
    for i in [0, 2] {
        assert!(
            holds[i].wait(Duration::from_secs(15)).success(),
            "the connection to daemon {i} broke:\n{}",
            holds[i].output()
        );
    }
    assert!(
        !holds[1].wait(Duration::from_secs(15)).success(),
        "the failed daemon's connection went on"
    );
    wait_until(
        Duration::from_secs(5),
        "the removed daemon let go of",
        || {
            lb.output().contains(&format!(
                "removed daemon {} has no connection left",
                daemon_addr(0)
            ))
        },
    );
}

/// With `reply_mode = "tracked"` the map of tracked IPv6 connections is sized
/// (and allocated) at start, for the IPv6 services then configured: a reload
/// that brings the first ones is refused, named as needing a restart, and the
/// running configuration keeps serving.
#[test]
fn a_reload_bringing_the_first_ipv6_services_in_tracked_mode_is_refused() {
    let topo = Topology::up_dual(DISPATCHD, "c6trk", 1, 1);
    let _servers = topo.serve(1);
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let v4 = format!(
        "front = \"l0\"\nback = \"l1\"\nreply_mode = \"tracked\"\nflow_capacity = 1024\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [\"{}\"]\n",
        daemon_addr(0)
    );
    std::fs::write(&file, &v4).expect("writing the config");
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    std::fs::write(
        &file,
        format!(
            "{v4}[[service]]\naddress = \"{}\"\nbackends = [\"{}\"]\n",
            dispatchd_testkit::VIP6,
            dispatchd_testkit::daemon_addr6(0)
        ),
    )
    .expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload's outcome", || {
        topo.ctl(&["stats"])
            .contains("reloads: success 0 failure 1")
    });
    assert!(
        lb.output()
            .contains("IPv6 services with reply_mode = \"tracked\" need a restart"),
        "{}",
        lb.output()
    );
    let backends = topo.ctl(&["backends"]);
    assert_eq!(backends.lines().count(), 1, "{backends}");
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    drop(lb);
    let _ = std::fs::remove_file(&file);
}

/// A reload that removes a whole service, with `on_remove = "finish"`: its
/// daemon is retired, and its connections go on to their end as a removed
/// daemon's do. Before, the program stopped steering the service's VIP:port at
/// once, so the clients' segments went to the host and the connections broke
/// (a retired daemon kept only its replies' entry).
#[test]
fn a_removed_services_connections_keep_going_to_their_end() {
    let topo = Topology::up(DISPATCHD, "rmsvc", 2, 1);
    let _servers: Vec<_> = (0..2).map(|i| topo.serve_one(i, &[])).collect();
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let vip = VIP.split(':').next().expect("an address");
    let other = format!("{vip}:81");
    let write = |both: bool| {
        let mut body = format!(
            "front = \"l0\"\nback = \"l1\"\non_remove = \"finish\"\n[timeouts]\nlinger_ms = 300\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = [\"{}\"]\n",
            daemon_addr(0)
        );
        if both {
            body += &format!(
                "[[service]]\naddress = \"{other}\"\nbackends = [\"{}\"]\n",
                daemon_addr(1)
            );
        }
        std::fs::write(&file, body).expect("writing the config");
    };
    write(true);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let mut hold = topo.client_start(
        &[
            "hold",
            "--to",
            &other,
            "--seconds",
            "4",
            "--interval-ms",
            "50",
        ],
        "opened",
    );
    write(false);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "reload applied", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    let _ = std::fs::remove_file(&file);
    assert!(
        lb.output()
            .contains(&format!("{} (retired)", daemon_addr(1))),
        "{}",
        lb.output()
    );
    assert!(
        hold.wait(Duration::from_secs(15)).success(),
        "the removed service's connection broke:\n{}",
        hold.output()
    );
    // A new connection to the removed service finds none.
    let out = topo.client_run(&[
        "connect",
        "--to",
        &other,
        "--connections",
        "1",
        "--timeout-ms",
        "500",
    ]);
    assert!(
        !out.status.success(),
        "a new connection to a removed service:\n{}",
        text(&out)
    );
    wait_until(
        Duration::from_secs(5),
        "the retired daemon let go of",
        || {
            lb.output().contains(&format!(
                "removed daemon {} has no connection left",
                daemon_addr(1)
            ))
        },
    );
    wait_until(Duration::from_secs(5), "no record left", || {
        let stats = topo.stats();
        stats["connections"] == 0 && stats["workers"][0]["flows"] == 0
    });
}
