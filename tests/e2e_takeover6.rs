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

/// A configuration of both services, round robin over `v4` and `v6`, with
/// `top` (top-level settings) first; its path.
fn config_file(topo: &Topology, top: &str, v4: &[String], v6: &[String]) -> String {
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\n{top}\n[timeouts]\nlinger_ms = 300\n\n{}\n{}",
        service_table(VIP, v4),
        service_table(VIP6, v6)
    );
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    std::fs::write(&file, body).expect("writing the config");
    file.to_str().expect("a UTF-8 path").to_owned()
}

/// dispatchd run with `file`, once every daemon is up.
fn start(topo: &Topology, file: &str) -> Proc {
    let a = topo.dispatchd(&["--config", file]);
    wait_until(Duration::from_secs(5), "every daemon up", || {
        let list: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        list.as_array()
            .expect("a list")
            .iter()
            .all(|b| b["state"] == "up")
    });
    a
}

/// A new process with `file` takes over from `a`, which exits cleanly: the
/// new process, and its line that says how long the window was.
fn take_over(topo: &Topology, file: &str, a: &mut Proc) -> (Proc, String) {
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.args(["run", "--config", file, "--takeover"])
        .args(["--control-socket", &topo.control_socket()]);
    let b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
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
    (b, window)
}

#[test]
fn a_takeover_hands_ipv6_round_robin_connections_over() {
    let topo = Topology::up_dual(DISPATCHD, "tk6", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6: Vec<String> = (0..2).map(daemon_addr6).collect();
    let _servers = topo.serve_on(&[v4.clone(), v6.clone()].concat(), &[]);
    let file = config_file(&topo, "", &v4, &v6);
    let mut a = start(&topo, &file);

    let mut holds6: Vec<(Proc, String)> =
        (0..CONNECTIONS6).map(|_| hold(&topo, VIP6, "5")).collect();
    let (mut hold4, daemon4) = hold(&topo, VIP, "5");
    std::thread::sleep(BEFORE);
    let all = (CONNECTIONS6 + 1) as u64;
    assert_eq!(records(&topo), (all, all), "records before the takeover");
    let held6 = tally(holds6.iter().map(|(_, d)| d.clone()));

    let started = Instant::now();
    let (b, window) = take_over(&topo, &file, &mut a);
    let took = started.elapsed();
    let running = Instant::now();
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

/// Downloads back to back from `to`, each `DOWNLOAD_BYTES` on a new
/// connection. Started once the first is done.
fn downloads(topo: &Topology, to: &str) -> Proc {
    topo.client_start(
        &[
            "download",
            "--to",
            to,
            "--bytes",
            DOWNLOAD_BYTES,
            "--count",
            "100000",
            "--timeout-ms",
            "5000",
        ],
        "download=0 ",
    )
}

/// The downloads `client` has reported: (completed, failed lines).
fn downloaded(client: &Proc) -> (usize, Vec<String>) {
    let out = client.output();
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("download=")).collect();
    let failed = lines
        .iter()
        .filter(|l| l.contains("failed"))
        .map(|l| l.to_string())
        .collect();
    (lines.len(), failed)
}

/// Each download's bytes, and how fast the daemons send them: a quarter of
/// a second each, the daemon's pacing timer sending through the takeover's
/// window (tens of milliseconds) as much as its congestion window allows.
const DOWNLOAD_BYTES: &str = "1000000";
const PACE_BYTES_PER_S: &str = "4000000";

/// With `reply_mode = "tracked"`, the new program must take the replies of
/// every IPv6 connection from the switch on, as it does IPv4's. A daemon's
/// segment it passes to the host instead is forwarded untranslated: the
/// client, which has no connection from the daemon's address, answers with
/// a RST that ends the connection at the daemon. Paced downloads over both
/// families (the daemons sending on their own timers, not only as the
/// client's acknowledgments come), back to back across the takeover: none
/// fails, and B copied the IPv6 map as it did the IPv4 one.
#[test]
fn a_takeover_in_tracked_reply_mode_breaks_no_ipv6_download() {
    let topo = Topology::up_dual(DISPATCHD, "tk6t", 2, 1);
    let v4: Vec<String> = (0..2).map(daemon_addr).collect();
    let v6: Vec<String> = (0..2).map(daemon_addr6).collect();
    let _servers = topo.serve_on(
        &[v4.clone(), v6.clone()].concat(),
        &["--download", "--pace-bytes-per-s", PACE_BYTES_PER_S],
    );
    let file = config_file(&topo, "reply_mode = \"tracked\"", &v4, &v6);
    let mut a = start(&topo, &file);
    let mut clients = [downloads(&topo, VIP), downloads(&topo, VIP6)];
    let (b, window) = take_over(&topo, &file, &mut a);
    // Each client finishes the download the takeover cut through and two
    // more (or reports a failure).
    let running: Vec<usize> = clients.iter().map(|c| downloaded(c).0).collect();
    for (client, running) in clients.iter().zip(&running) {
        wait_until(
            Duration::from_secs(30),
            "downloads after the takeover",
            || {
                let (done, failed) = downloaded(client);
                done >= running + 3 || !failed.is_empty()
            },
        );
    }
    for c in &mut clients {
        c.terminate(Duration::from_secs(1));
    }
    for (family, client) in ["IPv4", "IPv6"].iter().zip(&clients) {
        let (done, failed) = downloaded(client);
        assert!(
            failed.is_empty(),
            "{family} downloads broken by the takeover ({done} reported):\n{}\nnew process:\n{}",
            failed.join("\n"),
            b.output()
        );
    }
    let said = b.output();
    let copied: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("tracked connections copied"))
        .collect();
    // At the copy each family had a download running, its key in the map.
    let counts: Vec<u64> = copied
        .iter()
        .filter_map(|l| {
            let (_, n) = l.split_once("INFO dispatchd: ")?;
            n.split_whitespace().next()?.parse().ok()
        })
        .collect();
    assert!(
        copied.len() == 2 && copied.iter().any(|l| l.contains("IPv6")),
        "the maps of both families copied:\n{said}"
    );
    assert!(
        counts.len() == 2 && counts.iter().all(|&n| n >= 1),
        "a running connection of each family copied: {counts:?}\n{said}"
    );
    let stats = topo.stats();
    assert_eq!(u64_at(&stats, "/workers/0/tracked_failed"), 0, "{stats}");
    eprintln!("takeover under IPv4 and IPv6 downloads (tracked replies): {window}");
    drop(b);
}
