//! Scale-out end to end: dispatchd instances behind a router namespace that
//! runs bird2 and learns the VIP from a bird2 speaker beside each instance,
//! ECMP with an L4 hash (`scripts/scaleout.sh`); each speaker announces while
//! `dispatchd ctl ready` succeeds (`scripts/ready-watch.sh`), towards the
//! router the VIP and towards the daemons' bird2 a default route, so the
//! daemons return through any ready instance. Real kernel TCP clients under
//! persistent load (16 connections, maglev) and short-connection churn.
//! Needs root and bird2 (`scripts/install-deps.sh` installs it).
//!
//! `DISPATCHD_SCALEOUT_GRACE_MS` overrides the graceful stop's grace period
//! (2000 ms), to measure the stop without one (0: the route is withdrawn only
//! once dispatchd has gone, as before readiness existed).
use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use dispatchd_testkit::{
    outcome::{unix_ms, Failure},
    scaleout::{ScaleOut, VIP},
    wait_until, Proc,
};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const DAEMONS: usize = 4;
const HOLDS: usize = 16;
/// How often each watcher asks `ctl ready`.
const WATCH_INTERVAL: &str = "0.1";

fn grace_ms() -> u64 {
    std::env::var("DISPATCHD_SCALEOUT_GRACE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Each instance's flags: maglev (every instance picks the same daemon for a
/// connection), quick health checks, the graceful stop.
fn flags(grace: &str) -> Vec<&str> {
    vec![
        "--policy",
        "maglev",
        "--health-interval-ms",
        "200",
        "--stop-grace-ms",
        grace,
    ]
}

/// One instance's speaker and its watcher (they outlive a restart of its
/// dispatchd).
struct Speaker {
    _bird: Proc,
    watch: Proc,
}

fn speaker(so: &ScaleOut, k: usize) -> Speaker {
    Speaker {
        _bird: so.bird(&k.to_string()),
        watch: so.watcher(k, WATCH_INTERVAL),
    }
}

fn paths(addrs: &[usize], of: fn(usize) -> String) -> BTreeSet<String> {
    addrs.iter().map(|&k| of(k)).collect()
}

/// Waits until the router's VIP route and the daemons' return route go
/// through exactly the instances `ks`; returns how long that took.
fn converge(so: &ScaleOut, ks: &[usize], timeout: Duration, what: &str) -> Duration {
    let (vip, back) = (
        paths(ks, ScaleOut::front_addr),
        paths(ks, ScaleOut::back_addr),
    );
    wait_until(timeout, what, || {
        so.vip_paths() == vip && so.return_paths() == back
    })
}

/// What the clients saw: the failure lines of the holds and of the churn,
/// the churn's totals.
#[derive(Debug, Default)]
struct Seen {
    failures: Vec<Failure>,
    holds_failed: usize,
    churn_ok: u64,
    churn_failed: u64,
}

fn collect(mut holds: Vec<Proc>, mut churn: Proc, timeout: Duration) -> Seen {
    let mut seen = Seen::default();
    for h in &mut holds {
        if !h.wait(timeout).success() {
            seen.holds_failed += 1;
        }
        seen.failures
            .extend(h.output().lines().filter_map(Failure::parse_line));
    }
    churn.wait(timeout);
    let out = churn.output();
    seen.failures
        .extend(out.lines().filter_map(Failure::parse_line));
    let last = out
        .lines()
        .find(|l| l.starts_with("ok="))
        .unwrap_or_else(|| panic!("no churn totals in {out}"));
    for word in last.split_whitespace() {
        match word.split_once('=') {
            Some(("ok", n)) => seen.churn_ok = n.parse().expect("ok=N"),
            Some(("failed", n)) => seen.churn_failed = n.parse().expect("failed=N"),
            _ => {}
        }
    }
    seen
}

fn start_load(so: &ScaleOut, seconds: u64) -> (Vec<Proc>, Proc) {
    let secs = seconds.to_string();
    let holds = (0..HOLDS)
        .map(|_| {
            so.client_start(
                &[
                    "hold",
                    "--to",
                    VIP,
                    "--seconds",
                    &secs,
                    "--interval-ms",
                    "100",
                ],
                "opened",
            )
        })
        .collect();
    let churn_secs = (seconds - 4).to_string();
    let churn = so.client_start(
        &[
            "churn",
            "--to",
            VIP,
            "--seconds",
            &churn_secs,
            "--concurrency",
            "2",
        ],
        "churning",
    );
    (holds, churn)
}

/// The persistent connections among an instance's records: established ones
/// older than any short one can be (they last milliseconds).
const PERSISTENT_AGE_MS: u64 = 2500;

/// The client ports instance `k` tracks, and how many of them are the
/// persistent connections.
fn ports_of(so: &ScaleOut, k: usize) -> (BTreeSet<u16>, usize) {
    let rows = so.client_ports(k).expect("the instance's connections");
    let persistent = rows
        .iter()
        .filter(|(_, state, age)| state == "Established" && *age > PERSISTENT_AGE_MS)
        .count();
    (rows.into_iter().map(|(p, _, _)| p).collect(), persistent)
}

/// A counter summed over one instance's JSON stats (workers and XDP), if the
/// instance answers and counts it.
fn counter(so: &ScaleOut, k: usize, key: &str) -> Option<u64> {
    fn walk(v: &serde_json::Value, key: &str, found: &mut Option<u64>) {
        match v {
            serde_json::Value::Object(map) => {
                for (name, v) in map {
                    match v.as_u64() {
                        Some(n) if name == key => *found = Some(found.unwrap_or(0) + n),
                        _ => walk(v, key, found),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, key, found)),
            _ => {}
        }
    }
    let stats = so.stats(k).ok()?;
    let mut found = None;
    walk(&stats["workers"], key, &mut found);
    found
}

fn report_counters(so: &ScaleOut, ks: &[usize]) -> Vec<Option<u64>> {
    ks.iter()
        .map(|&k| {
            let recovered = counter(so, k, "recovered");
            println!(
                "instance {k}: new_flows {:?} recovered {recovered:?} no_flow {:?}",
                counter(so, k, "new_flows"),
                counter(so, k, "no_flow"),
            );
            recovered
        })
        .collect()
}

/// Two instances announced behind the router, with their daemons, birds and
/// watchers: everything a test starts from. A test binds every field, the
/// topology first, so that they drop in reverse: the instances first, the
/// namespaces last (a field left to `..` would drop at once).
struct TwoInstances {
    lbs: Vec<Proc>,
    speakers: Vec<Speaker>,
    birds: [Proc; 2],
    servers: Proc,
    so: ScaleOut,
}

fn two_instances(prefix: &str, grace: &str) -> TwoInstances {
    let so = ScaleOut::up(DISPATCHD, prefix, DAEMONS);
    let servers = so.serve(DAEMONS);
    let birds = [so.bird("router"), so.bird("daemons")];
    let speakers: Vec<Speaker> = (0..2).map(|k| speaker(&so, k)).collect();
    let lbs: Vec<Proc> = (0..2)
        .map(|k| so.dispatchd(k, DAEMONS, &flags(grace)))
        .collect();
    let took = converge(
        &so,
        &[0, 1],
        Duration::from_secs(30),
        "two instances announced",
    );
    println!("both instances announced {took:?} after start");
    TwoInstances {
        lbs,
        speakers,
        birds,
        servers,
        so,
    }
}

#[test]
fn instances_stop_restart_and_join_under_load_without_breaking_connections() {
    let grace = grace_ms().to_string();
    let TwoInstances {
        so,
        servers: _servers,
        birds: _birds,
        mut speakers,
        mut lbs,
    } = two_instances("so", &grace);

    let (holds, churn) = start_load(&so, 36);
    std::thread::sleep(Duration::from_secs(3));
    let (_, held) = ports_of(&so, 0);
    println!("instance 0 carries {held} of the {HOLDS} persistent connections");

    // Instance 0 stops gracefully: unready first, so its routes go before it does.
    let sent = Instant::now();
    lbs[0].signal("TERM");
    converge(&so, &[1], Duration::from_secs(5), "instance 0 withdrawn");
    let withdrawn = sent.elapsed();
    let status = lbs[0].wait(Duration::from_secs(10));
    assert!(status.success(), "{}", lbs[0].output());
    println!(
        "SIGTERM to instance 0: routes withdrawn after {withdrawn:?}, exited after {:?} (grace {grace} ms)",
        sent.elapsed()
    );
    if grace_ms() > 0 {
        assert!(
            withdrawn < Duration::from_millis(grace_ms()),
            "the routes must go while instance 0 still forwards"
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    // Restarted: announced again once ready.
    let started = Instant::now();
    lbs[0] = so.dispatchd(0, DAEMONS, &flags(&grace));
    converge(&so, &[0, 1], Duration::from_secs(10), "instance 0 back");
    println!(
        "instance 0 restarted: announced {:?} after its start",
        started.elapsed()
    );
    std::thread::sleep(Duration::from_secs(3));

    // A third instance joins.
    let started = Instant::now();
    speakers.push(speaker(&so, 2));
    lbs.push(so.dispatchd(2, DAEMONS, &flags(&grace)));
    converge(&so, &[0, 1, 2], Duration::from_secs(15), "instance 2 added");
    println!(
        "instance 2 added: announced {:?} after its start",
        started.elapsed()
    );

    let seen = collect(holds, churn, Duration::from_secs(60));
    let recovered = report_counters(&so, &[0, 1, 2]);
    for f in &seen.failures {
        println!("broken: {f:?}");
    }
    for (k, s) in speakers.iter().enumerate() {
        println!("watcher {k}:\n{}", s.watch.output());
    }
    println!(
        "persistent: {} of {HOLDS} broken; churn: {} ok, {} failed",
        seen.holds_failed, seen.churn_ok, seen.churn_failed
    );
    assert_eq!(seen.holds_failed, 0, "persistent connections broken");
    assert_eq!(seen.churn_failed, 0, "short connections failed");
    assert!(
        recovered.iter().flatten().sum::<u64>() > 0,
        "no instance recovered a connection that moved to it: {recovered:?}"
    );
}

#[test]
fn a_crashed_instance_leaves_the_survivors_connections_untouched() {
    let TwoInstances {
        so,
        servers: _servers,
        birds: _birds,
        speakers,
        mut lbs,
    } = two_instances("sk", "0");

    let (holds, churn) = start_load(&so, 20);
    std::thread::sleep(Duration::from_secs(3));
    let (on_a, held_a) = ports_of(&so, 0);
    let (on_b, held_b) = ports_of(&so, 1);

    let sent = Instant::now();
    let killed_ms = unix_ms();
    lbs[0].signal("KILL");
    converge(&so, &[1], Duration::from_secs(10), "instance 0 withdrawn");
    let withdrawn = sent.elapsed();
    lbs[0].wait(Duration::from_secs(5));

    let seen = collect(holds, churn, Duration::from_secs(60));
    let recovered = report_counters(&so, &[1]);
    let port = |f: &Failure| f.local.map(|l| l.port());
    let (mut of_a, mut of_b, mut unknown) = (0, 0, 0);
    for f in &seen.failures {
        // A port is only the same connection if it was open before the
        // kill: churn reuses ports.
        match port(f) {
            Some(p) if f.start_ms < killed_ms && on_a.contains(&p) => of_a += 1,
            Some(p) if f.start_ms < killed_ms && on_b.contains(&p) => of_b += 1,
            _ => unknown += 1,
        }
        println!("broken: {f:?}");
    }
    println!("watcher 0:\n{}", speakers[0].watch.output());
    println!(
        "SIGKILL of instance 0: routes withdrawn after {withdrawn:?}; connections before: \
         {} ({held_a} persistent) on 0, {} ({held_b} persistent) on 1; \
         broken: {of_a} of instance 0's, {of_b} of instance 1's, {unknown} opened after (churn); \
         persistent broken {} of {HOLDS}; churn {} ok, {} failed; recovered on 1: {recovered:?}",
        on_a.len(),
        on_b.len(),
        seen.holds_failed,
        seen.churn_ok,
        seen.churn_failed
    );
    assert_eq!(of_b, 0, "connections on the surviving instance broke");
}

/// An instance that dies silently, as a machine does (power, kernel panic):
/// nothing answers and nothing resets, so its peers notice only when the BGP
/// hold timer (3 s here) runs out. Meanwhile the connections hashed to it,
/// both ways (the router's VIP route and the daemons' default route), are
/// black-holed; after it, the survivors recover them (maglev) if the
/// clients' retransmissions have not given up. Measures what survives.
#[test]
fn a_silent_instance_is_routed_around_after_the_bgp_hold_time() {
    let TwoInstances {
        so,
        servers: _servers,
        birds: _birds,
        speakers: _speakers,
        mut lbs,
    } = two_instances("sd", "0");

    let (holds, churn) = start_load(&so, 24);
    std::thread::sleep(Duration::from_secs(3));
    let (on_a, held_a) = ports_of(&so, 0);
    let (on_b, held_b) = ports_of(&so, 1);

    // Everything in and out of instance 0's host dropped, then its
    // dispatchd killed: no frame is forwarded or answered any more.
    let i0 = so.instance(0);
    let dead = "add table inet dead; \
        add chain inet dead drop_in { type filter hook prerouting priority -500; policy drop; }; \
        add chain inet dead drop_out { type filter hook output priority -500; policy drop; }";
    let out = so.cmd(&i0, "nft").arg(dead).output().expect("running nft");
    assert!(
        out.status.success(),
        "nft: {}",
        dispatchd_testkit::text(&out)
    );
    let sent = Instant::now();
    let killed_ms = unix_ms();
    lbs[0].signal("KILL");
    converge(&so, &[1], Duration::from_secs(10), "instance 0 withdrawn");
    let withdrawn = sent.elapsed();
    lbs[0].wait(Duration::from_secs(5));

    let seen = collect(holds, churn, Duration::from_secs(60));
    let recovered = report_counters(&so, &[1]);
    let port = |f: &Failure| f.local.map(|l| l.port());
    let (mut of_a, mut of_b, mut unknown) = (0, 0, 0);
    for f in &seen.failures {
        // A port is only the same connection if it was open before the
        // kill: churn reuses ports.
        match port(f) {
            Some(p) if f.start_ms < killed_ms && on_a.contains(&p) => of_a += 1,
            Some(p) if f.start_ms < killed_ms && on_b.contains(&p) => of_b += 1,
            _ => unknown += 1,
        }
        println!("broken: {f:?}");
    }
    println!(
        "silent death of instance 0: routes withdrawn after {withdrawn:?} (hold time 3 s); \
         persistent connections before: {held_a} on 0, {held_b} on 1; broken: {of_a} of instance 0's, \
         {of_b} of instance 1's, {unknown} opened after (churn); persistent broken {} of {HOLDS}; \
         churn {} ok, {} failed; recovered on 1: {recovered:?}",
        seen.holds_failed, seen.churn_ok, seen.churn_failed
    );
    assert!(
        // The hold time (3 s) runs from the last keepalive, sent every second.
        withdrawn >= Duration::from_millis(1500) && withdrawn < Duration::from_secs(6),
        "withdrawn after {withdrawn:?}: not by the 3 s hold timer"
    );
}
