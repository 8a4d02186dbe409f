//! A million records: a reload and a `ctl conns` with the table full must not
//! stall the packets or the loop, since table-wide work is done a slice at a
//! time. The stall measures (each worker's and the loop's longest round in the
//! last second) are printed before and after, as a measurement; what is asserted
//! is that nothing is lost: every record outlives the reload, persistent
//! connections keep working, `ctl conns` answers a page of a million.
use std::{thread, time::Duration};

use dispatchd_testkit::{daemon_addr, json::u64_at, text, wait_until_steady, Proc, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const SPOOFED: usize = 1_000_000;

/// The longest worker and loop rounds of the last second, over `samples`
/// seconds (ns).
fn stalls(topo: &Topology, samples: usize) -> (u64, u64) {
    let mut worst = (0, 0);
    for _ in 0..samples {
        thread::sleep(Duration::from_millis(1100));
        let s = topo.stats();
        worst.0 = worst.0.max(u64_at(&s, "/workers/0/round_max_1s_ns"));
        worst.1 = worst.1.max(u64_at(&s, "/loop_round_max_1s_ns"));
    }
    worst
}

/// The worker's records.
fn records(topo: &Topology) -> u64 {
    u64_at(&topo.stats(), "/workers/0/flows")
}

/// Half-open records from spoofed clients, paced so the worker takes them
/// all: at least half of `SPOOFED`. A starved worker (other work on its
/// core) leaves some in the kernel's full RX ring; the flood's tuples are
/// the same each time, so sending it again fills in what was missed.
fn flood(topo: &Topology) {
    for attempt in 1..=3 {
        let flood = topo
            .cmd(&topo.client(), &topo.programs().testkit)
            .args(topo.inject_args("198.18.128.1", VIP, "syn-flood", SPOOFED as u64))
            .args(["--rate", "150000"])
            .output()
            .expect("inject");
        assert!(flood.status.success(), "flood: {}", text(&flood));
        wait_until_steady(
            Duration::from_secs(20),
            "the flood's records settled",
            Duration::from_millis(500),
            || records(topo),
        );
        println!("flood {attempt}: {} records", records(topo));
        if records(topo) >= 500_000 {
            break;
        }
    }
}

#[test]
fn a_reload_and_ctl_conns_with_a_million_records_are_sliced() {
    let topo = Topology::up(DISPATCHD, "scale", 2, 1);
    let _servers = topo.serve(2);
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let write = |order: [usize; 2]| {
        let body = format!(
            "front = \"l0\"\nback = \"l1\"\n[timeouts]\nsyn_ms = 600000\n\
             [[service]]\naddress = \"{VIP}\"\nbackends = [\"{}\", \"{}\"]\n",
            daemon_addr(order[0]),
            daemon_addr(order[1])
        );
        std::fs::write(&file, body).expect("writing the config");
    };
    write([0, 1]);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);

    flood(&topo);
    let records = || records(&topo);
    let before = records();
    println!("records in the table: {before}");
    assert!(
        before >= 500_000,
        "most of the {SPOOFED} spoofed SYNs made a record: {before}"
    );

    // Persistent connections carry traffic throughout.
    let rr = |seconds: &str| {
        let mut cmd = topo.cmd(&topo.client(), &topo.programs().testkit);
        cmd.args([
            "rr",
            "--to",
            VIP,
            "--connections",
            "2",
            "--seconds",
            seconds,
        ]);
        Proc::start(cmd, "", Duration::from_secs(1)).expect("starting rr")
    };
    let mut quiet = rr("4");
    let baseline = stalls(&topo, 3);
    assert!(
        quiet.wait(Duration::from_secs(15)).success(),
        "{}",
        quiet.output()
    );

    let mut busy = rr("6");
    thread::sleep(Duration::from_millis(500));
    write([1, 0]);
    lb.signal("HUP");
    let conns: serde_json::Value =
        serde_json::from_str(&topo.ctl(&["conns", "--json", "--limit", "10"])).expect("conns JSON");
    let during = stalls(&topo, 3);
    assert!(
        busy.wait(Duration::from_secs(15)).success(),
        "persistent connections during the reload: {}",
        busy.output()
    );
    assert!(lb.output().contains("SIGHUP: reloaded"), "{}", lb.output());
    assert_eq!(conns["connections"].as_array().map(Vec::len), Some(10));
    let matched = conns["matched"].as_u64().unwrap_or(0);
    assert!(matched >= before, "ctl conns counted {matched} of {before}");
    println!(
        "longest round in a second, worker / loop: {} / {} µs with the table full, \
         {} / {} µs across a reload that re-points {before} records and a ctl conns over them",
        baseline.0 / 1000,
        baseline.1 / 1000,
        during.0 / 1000,
        during.1 / 1000,
    );
    println!("{}", topo.ctl(&["stats"]));
    // Every record outlives the reload (both daemons remain).
    assert!(
        records() >= before,
        "records after the reload: {}",
        records()
    );
    let _ = std::fs::remove_file(&file);
}

/// A takeover with a million records: the new process holds every one (and,
/// with tracked replies, the old program's million keys copied), persistent
/// connections keep working across it, and the switch window (printed from
/// the new process's log, a measurement) stays short enough that TCP only
/// retransmits.
#[test]
fn a_takeover_with_a_million_records_keeps_them_all() {
    let topo = Topology::up(DISPATCHD, "scalt", 2, 1);
    let _servers = topo.serve(2);
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\nreply_mode = \"tracked\"\n[timeouts]\nsyn_ms = 600000\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [\"{}\", \"{}\"]\n",
        daemon_addr(0),
        daemon_addr(1)
    );
    std::fs::write(&file, body).expect("writing the config");
    let config = ["--config", file.to_str().expect("utf-8 path")];
    let mut a = topo.dispatchd(&config);

    flood(&topo);
    let records = || records(&topo);
    let mut holds: Vec<Proc> = (0..4)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "8", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let before = records();
    println!("records in the table: {before}");
    assert!(
        before >= 500_000,
        "most of the {SPOOFED} spoofed SYNs made a record: {before}"
    );

    let started = std::time::Instant::now();
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.arg("run")
        .args(config)
        .arg("--takeover")
        .args(["--control-socket", &topo.control_socket()]);
    let b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    let took = started.elapsed();
    assert!(
        a.wait(Duration::from_secs(20)).success(),
        "the old process exits cleanly:\n{}",
        a.output()
    );
    let line = |what: &str| {
        b.output()
            .lines()
            .find(|l| l.contains(what))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no line with {what:?}:\n{}", b.output()))
    };
    println!("start to running {took:?}");
    println!("{}", line("tracked connections copied"));
    println!("{}", line("took over from pid"));
    assert_eq!(records(), before, "the new process holds every record");
    for (i, h) in holds.iter_mut().enumerate() {
        assert!(
            h.wait(Duration::from_secs(30)).success(),
            "connection {i} across the takeover:\n{}",
            h.output()
        );
    }
    let _ = std::fs::remove_file(&file);
}
