//! A takeover (`run --takeover`) of a dual-stack dispatchd hands the IPv6
//! flow records over as it hands the IPv4 ones: IPv6 connections of a
//! round-robin service (which, unlike maglev, cannot find a connection's
//! daemon again without its record) keep echoing, the new process's tracker
//! knows them (`ctl conns`, their ages kept) and ends them by their FINs.
//! Needs root.
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use dispatchd_testkit::{
    daemon_addr, daemon_addr6, json::u64_at, json::Value, wait_until, Proc, Topology, VIP, VIP6,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const CONNECTIONS6: usize = 6;
/// How long the connections run before the takeover.
const BEFORE: Duration = Duration::from_millis(800);

/// `[[service]]` on `vip`, round robin over `daemons`.
fn service_table(vip: &str, daemons: &[String]) -> String {
    let list: Vec<String> = daemons.iter().map(|d| format!("\"{d}\"")).collect();
    format!(
        "[[service]]\naddress = \"{vip}\"\nprotocol = \"tcp\"\npolicy = \"round_robin\"\n\
         backends = [{}]\n",
        list.join(", ")
    )
}

/// A long connection to `to` (a message every 50 ms for `seconds`, then a
/// close); the daemon it landed on.
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

/// The loop's count of connections and the records the workers hold.
fn records(topo: &Topology) -> (u64, u64) {
    let stats = topo.stats();
    let workers = stats["workers"].as_array().expect("workers in ctl stats");
    let held = workers
        .iter()
        .map(|w| w["flows"].as_u64().expect("flows"))
        .sum();
    (u64_at(&stats, "/connections"), held)
}

/// `ctl conns --json`'s rows of `service`: (daemon, state, age in ms).
fn conns_of(topo: &Topology, service: &str) -> Vec<(String, String, u64)> {
    let list: Value = serde_json::from_str(&topo.ctl(&["conns", "--json"])).expect("conns JSON");
    list["connections"]
        .as_array()
        .expect("connections")
        .iter()
        .filter(|c| c["service"] == service)
        .map(|c| {
            (
                c["daemon"].as_str().expect("daemon").to_owned(),
                c["state"].as_str().expect("state").to_owned(),
                c["age_ms"].as_u64().expect("age_ms"),
            )
        })
        .collect()
}

/// How many connections each daemon holds.
fn tally(daemons: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for d in daemons {
        *t.entry(d).or_insert(0) += 1;
    }
    t
}

#[test]
fn a_takeover_hands_ipv6_round_robin_connections_over() {
    let topo = Topology::up_dual(DISPATCHD, "tk6", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6: Vec<String> = (0..2).map(daemon_addr6).collect();
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\n[timeouts]\nlinger_ms = 300\n\n{}\n{}",
        service_table(VIP, &v4),
        service_table(VIP6, &v6)
    );
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    std::fs::write(&file, body).expect("writing the config");
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let mut a = topo.dispatchd(&["--config", &file]);
    wait_until(Duration::from_secs(5), "every daemon up", || {
        let list: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        list.as_array()
            .expect("a list")
            .iter()
            .all(|b| b["state"] == "up")
    });

    let mut holds6: Vec<(Proc, String)> =
        (0..CONNECTIONS6).map(|_| hold(&topo, VIP6, "5")).collect();
    let (mut hold4, daemon4) = hold(&topo, VIP, "5");
    std::thread::sleep(BEFORE);
    let all = (CONNECTIONS6 + 1) as u64;
    assert_eq!(records(&topo), (all, all), "records before the takeover");
    let held6 = tally(holds6.iter().map(|(_, d)| d.clone()));

    let started = Instant::now();
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.args(["run", "--config", &file, "--takeover"])
        .args(["--control-socket", &topo.control_socket()]);
    let b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    let took = started.elapsed();
    let running = Instant::now();
    assert!(
        a.wait(Duration::from_secs(10)).success(),
        "the old process exits cleanly:\n{}",
        a.output()
    );
    let window = b
        .output()
        .lines()
        .find(|l| l.contains("took over"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no takeover line:\n{}", b.output()));
    assert_eq!(
        records(&topo),
        (all, all),
        "the new process tracks and holds every record, IPv4 and IPv6:\n{}\nold:\n{}",
        b.output(),
        a.output()
    );

    // The new process's tracker lists them, on their daemons, established,
    // with their ages: as old as they were, as far as the new process's clock
    // goes back (its start), so at least its time running, read before the
    // queries: an age is taken when its query arrives.
    let running_ms = running.elapsed().as_millis() as u64;
    let rows6 = conns_of(&topo, VIP6);
    assert_eq!(
        tally(rows6.iter().map(|(d, _, _)| d.clone())),
        held6,
        "{rows6:?}"
    );
    let rows4 = conns_of(&topo, VIP);
    assert_eq!(rows4.len(), 1, "{rows4:?}");
    assert_eq!(rows4[0].0, daemon4);
    for (daemon, state, age) in rows6.iter().chain(&rows4) {
        assert_eq!(state, "Established", "{daemon}");
        assert!(
            *age >= running_ms,
            "{daemon}: age {age} ms, younger than the new process's {running_ms} ms running"
        );
    }

    // They keep echoing through the new process to their end.
    for (i, (h, daemon)) in holds6.iter_mut().enumerate() {
        assert!(
            h.wait(Duration::from_secs(15)).success(),
            "IPv6 connection {i} to {daemon} broke:\n{}\nnew process:\n{}",
            h.output(),
            b.output()
        );
        assert!(h.output().contains(" ok"), "{}", h.output());
    }
    assert!(
        hold4.wait(Duration::from_secs(15)).success(),
        "the IPv4 connection broke:\n{}",
        hold4.output()
    );
    // Their FINs end them in the new process's tracker and tables.
    let gone = wait_until(
        Duration::from_secs(5),
        "the records of closed connections gone",
        || records(&topo) == (0, 0),
    );
    eprintln!(
        "takeover (dual stack, round robin): {CONNECTIONS6} IPv6 and 1 IPv4 connections held, \
         start to running {took:?}, records gone {gone:?} after the last close; {window}"
    );
    drop(b);
}
