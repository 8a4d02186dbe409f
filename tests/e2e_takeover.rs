//! Restart and upgrade under persistent load. A plain restart (SIGTERM, start
//! again) leaves a window with no program attached, in which the host's own
//! stack answers service frames with RST, and the new process knows none of the
//! connections; `run --takeover` hands the attachment (bpf_links re-pointed by
//! `bpf_link_update`) and the flow records over instead. Needs root.
use std::time::{Duration, Instant};

use dispatchd_testkit::{json::u64_at, text, wait_until, Proc, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const CONNECTIONS: usize = 16;
const DAEMONS: usize = 3;

fn flags(policy: &str) -> Vec<String> {
    let mut f = Topology::default_flags(DAEMONS);
    f.extend(["--policy", policy].map(String::from));
    f
}

fn flags_with(policy: &str, extra: &[&str]) -> Vec<String> {
    let mut f = flags(policy);
    f.extend(extra.iter().map(|s| s.to_string()));
    f
}

/// `CONNECTIONS` long connections exchanging a message every 50 ms.
fn hold(topo: &Topology, seconds: u64) -> Vec<Proc> {
    let seconds = seconds.to_string();
    (0..CONNECTIONS)
        .map(|_| {
            topo.client_start(
                &[
                    "hold",
                    "--to",
                    VIP,
                    "--seconds",
                    &seconds,
                    "--interval-ms",
                    "50",
                ],
                "opened",
            )
        })
        .collect()
}

/// How many of the connections broke; their reports are printed.
fn broken(holds: &mut [Proc]) -> usize {
    let mut broken = 0;
    for (i, h) in holds.iter_mut().enumerate() {
        if !h.wait(Duration::from_secs(30)).success() {
            broken += 1;
            eprintln!("connection {i} broke:\n{}", h.output());
        }
    }
    broken
}

/// Counts, from now on, the TCP resets the dispatcher host's own stack sends
/// from the VIP (what it answers service frames with when no program takes
/// them). The health probes' resets to the daemons are not among them.
fn count_host_rsts(topo: &Topology) {
    let rules = format!(
        "table inet tko {{ counter rsts {{ }}; chain out {{ type filter hook output priority 0; \
         ip saddr {} tcp flags & rst == rst counter name rsts; }}; }}",
        VIP.split(':').next().unwrap()
    );
    let out = topo.run(&topo.dispatcher(), "nft", &[&rules]);
    assert!(out.status.success(), "nft: {}", text(&out));
}

/// The resets counted by [`count_host_rsts`] so far.
fn host_rsts(topo: &Topology) -> u64 {
    topo.nft_counter(&topo.dispatcher(), "inet", "tko", "rsts")
        .expect("the resets' counter")
}

/// The old process ends, with status 0, once it handed its records over.
fn exits_cleanly(a: &mut Proc) {
    assert!(
        a.wait(Duration::from_secs(10)).success(),
        "the old process exits cleanly:\n{}",
        a.output()
    );
}

/// Short connections through whichever process serves now all succeed.
fn new_connections_work(topo: &Topology) {
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "20"]);
    assert!(out.status.success(), "new connections:\n{}", text(&out));
}

/// Before: a plain restart under load. Measured and reported, not asserted
/// to break (the point of the takeover is the number below it).
#[test]
fn a_plain_restart_breaks_connections() {
    let topo = Topology::up(DISPATCHD, "tkr", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let mut a = topo.dispatchd(&flags("maglev"));
    count_host_rsts(&topo);
    let mut holds = hold(&topo, 6);
    std::thread::sleep(Duration::from_millis(500));
    let rsts = host_rsts(&topo);
    a.terminate(Duration::from_secs(5));
    let _b = topo.dispatchd(&flags("maglev"));
    let broken = broken(&mut holds);
    let rsts = host_rsts(&topo) - rsts;
    eprintln!(
        "plain restart (maglev): {broken} of {CONNECTIONS} connections broken, {rsts} RSTs from the host"
    );
}

/// A takeover under load (`policy`): no connection breaks, the host sends no
/// reset, the new process holds every record the old one held, serves new
/// connections, and the old one exits.
fn takeover_under_load(name: &str, policy: &str, extra: &[&str]) {
    let topo = Topology::up(DISPATCHD, name, DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let mut a = topo.dispatchd(&flags_with(policy, extra));
    count_host_rsts(&topo);
    let mut holds = hold(&topo, 6);
    std::thread::sleep(Duration::from_millis(500));
    let before = u64_at(&topo.stats(), "/connections");
    assert_eq!(before, CONNECTIONS as u64, "records before the takeover");
    let rsts = host_rsts(&topo);

    let mut takeover = flags_with(policy, extra);
    takeover.push("--takeover".into());
    let started = Instant::now();
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.arg("run")
        .args(&takeover)
        .args(["--control-socket", &topo.control_socket()]);
    let b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    let took = started.elapsed();
    exits_cleanly(&mut a);
    let window = b
        .output()
        .lines()
        .find(|l| l.contains("took over"))
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no takeover line:\n{}", b.output()));
    let stats = topo.stats();
    assert_eq!(
        u64_at(&stats, "/connections"),
        before,
        "the new process tracks every connection:\n{}\nold:\n{}",
        b.output(),
        a.output()
    );
    assert_eq!(
        u64_at(&stats, "/workers/0/flows"),
        before,
        "its worker holds every record"
    );
    if extra.contains(&"tracked") {
        let copied = format!("{CONNECTIONS} tracked connections copied");
        assert!(b.output().contains(&copied), "{}", b.output());
    }
    new_connections_work(&topo);
    let broken = broken(&mut holds);
    let rsts = host_rsts(&topo) - rsts;
    eprintln!(
        "takeover ({policy} {extra:?}): {broken} of {CONNECTIONS} connections broken, {rsts} RSTs from the host, \
         start to running {took:?}; {window}"
    );
    assert_eq!(broken, 0, "connections broken by the takeover");
    assert_eq!(
        rsts, 0,
        "the host answered service frames during the switch"
    );
    assert!(topo.xdp_attached("l0") && topo.xdp_attached("l1"));
    drop(b);
}

#[test]
fn a_takeover_breaks_no_maglev_connection() {
    takeover_under_load("tkm", "maglev", &[]);
}

#[test]
fn a_takeover_breaks_no_round_robin_connection() {
    takeover_under_load("tkrr", "round_robin", &[]);
}

/// With `reply_mode = "tracked"` the new program must take the replies of
/// every connection from the switch on: it copies the old one's map first.
#[test]
fn a_takeover_in_tracked_reply_mode_breaks_no_connection() {
    takeover_under_load("tktr", "least_connections", &["--reply-mode", "tracked"]);
}

/// A takeover whose configuration names another front interface is refused
/// with a clear error by the running process, which goes on unchanged.
#[test]
fn a_takeover_of_other_interfaces_is_refused() {
    let topo = Topology::up(DISPATCHD, "tki", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let mut a = topo.dispatchd(&flags("maglev"));
    let mut holds = hold(&topo, 3);
    // Another interface in the dispatcher's namespace (gone with it).
    let out = topo.run(
        &topo.dispatcher(),
        "ip",
        &["link", "add", "x0", "type", "veth", "peer", "name", "x1"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = topo.run(&topo.dispatcher(), "ip", &["link", "set", "x0", "up"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut other = flags("maglev");
    other[1] = "x0".into();
    other.extend(["--takeover", "--control-socket"].map(String::from));
    other.push(topo.control_socket());
    let said = text(&topo.dispatchd_fails(&other));
    assert!(
        said.contains("takeover refused") && said.contains("front l0") && said.contains("front x0"),
        "{said}"
    );
    assert!(a.exited().is_none(), "the running process goes on");
    assert_eq!(broken(&mut holds), 0);
    new_connections_work(&topo);
    a.terminate(Duration::from_secs(5));
    assert!(!topo.xdp_attached("x0"));
}

/// A new process that dies during the takeover leaves the running one
/// serving: before it re-points the links (`stage` "links": it holds them,
/// unchanged), or after (`stage` "switched": the old process points them back
/// at its own program).
fn a_new_process_dying_leaves_the_old_serving(name: &str, stage: &str) {
    a_failed_takeover_leaves_the_old_serving(
        name,
        ("DISPATCHD_TEST_TAKEOVER_DIE_AT", stage),
        4,
        "",
    );
}

/// A takeover whose new process fails through the test hook `hook` (a
/// variable and its value) leaves the old one serving, its `holding_s`
/// connections unbroken; the new one's output says `said`.
fn a_failed_takeover_leaves_the_old_serving(
    name: &str,
    hook: (&str, &str),
    holding_s: u64,
    said: &str,
) {
    let topo = Topology::up(DISPATCHD, name, DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let mut a = topo.dispatchd(&flags("maglev"));
    let mut holds = hold(&topo, holding_s);
    let mut takeover = flags("maglev");
    takeover.extend(["--takeover", "--control-socket"].map(String::from));
    takeover.push(topo.control_socket());
    let out = topo
        .cmd(&topo.dispatcher(), DISPATCHD)
        .arg("run")
        .args(&takeover)
        .env(hook.0, hook.1)
        .output()
        .expect("running dispatchd");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(said), "{}", text(&out));
    wait_until(Duration::from_secs(5), "the old process says so", || {
        a.output().contains("takeover abandoned")
    });
    assert!(a.exited().is_none(), "the running process goes on");
    assert_eq!(broken(&mut holds), 0, "{}", a.output());
    new_connections_work(&topo);
    a.terminate(Duration::from_secs(5));
}

/// A new process too slow to re-point the links before the running one stops
/// waiting for it (a huge map of tracked connections to copy) gives up
/// instead. It used to re-point them anyway, after the old process had pointed
/// them back at itself to serve on: the new one then ran with no records (the
/// old one's `switched` read had failed) and the old one, alive and ready,
/// saw no traffic. 5.5 s: past the old process's wait.
#[test]
fn a_new_process_too_slow_to_switch_leaves_the_old_serving() {
    a_failed_takeover_leaves_the_old_serving(
        "tkslow",
        ("DISPATCHD_TEST_TAKEOVER_SLOW_SWITCH_MS", "5500"),
        10,
        "not switching",
    );
}

#[test]
fn a_new_process_killed_before_the_switch_leaves_the_old_serving() {
    a_new_process_dying_leaves_the_old_serving("tkk", "links");
}

#[test]
fn a_new_process_killed_after_the_switch_leaves_the_old_serving() {
    a_new_process_dying_leaves_the_old_serving("tkks", "switched");
}

/// With `reply_mode = "tracked"`, a takeover whose configuration lacks one of
/// the daemons: the new process refuses the records of that daemon's
/// connections, and removes the tracked keys it copied for them, which
/// nothing removed later (left in its map for good, each taking the room of a
/// connection). The other daemons' connections go on.
#[test]
fn a_takeover_removes_the_copied_keys_of_the_records_it_refuses() {
    let topo = Topology::up(DISPATCHD, "tkstale", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let extra = ["--reply-mode", "tracked"];
    let mut a = topo.dispatchd(&flags_with("round_robin", &extra));
    let mut holds: Vec<Proc> = (0..2 * DAEMONS)
        .map(|_| {
            topo.client_start(
                &["hold", "--to", VIP, "--seconds", "6", "--interval-ms", "50"],
                "opened",
            )
        })
        .collect();
    wait_until(Duration::from_secs(2), "a record per connection", || {
        u64_at(&topo.stats(), "/connections") == 2 * DAEMONS as u64
    });

    // The last daemon left out: two connections on it.
    let mut takeover = Topology::default_flags(DAEMONS - 1);
    takeover.extend(["--policy", "round_robin", "--takeover"].map(String::from));
    takeover.extend(extra.map(String::from));
    takeover.extend(["--control-socket".to_owned(), topo.control_socket()]);
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.arg("run").args(&takeover);
    let b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    exits_cleanly(&mut a);
    let said = b.output();
    assert!(
        said.contains(&format!("{} tracked connections copied", 2 * DAEMONS)),
        "{said}"
    );
    assert!(
        said.contains("2 of 6 records handed over refused"),
        "{said}"
    );
    assert!(
        said.contains("2 copied tracked keys that no kept record backs removed"),
        "{said}"
    );
    let stats = topo.stats();
    assert_eq!(u64_at(&stats, "/connections"), 4, "{stats}");
    // The kept connections' keys were copied; none the map refused.
    assert_eq!(u64_at(&stats, "/workers/0/tracked_failed"), 0, "{stats}");
    let broken: Vec<usize> = (holds.iter_mut().enumerate())
        .filter_map(|(i, h)| (!h.wait(Duration::from_secs(30)).success()).then_some(i))
        .collect();
    assert!(broken.len() <= 2, "only the left-out daemon's: {broken:?}");
    new_connections_work(&topo);
    drop(b);
}

/// With `reply_mode = "tracked"`, connections the running process opens
/// after the new one copied its map of tracked connections (held 1.5 s
/// between the copy and the switch by the test hook) have no copied key: the
/// new process writes theirs from their records before its workers serve.
/// Without them their daemons' replies would pass to the host and reach the
/// clients from the daemons' addresses, which the clients reset.
#[test]
fn a_takeover_writes_the_keys_of_connections_opened_after_the_copy() {
    let topo = Topology::up(DISPATCHD, "tkgap", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let extra = ["--reply-mode", "tracked"];
    let mut a = topo.dispatchd(&flags_with("round_robin", &extra));
    let mut early = hold(&topo, 8);
    wait_until(Duration::from_secs(2), "a record per connection", || {
        u64_at(&topo.stats(), "/connections") == CONNECTIONS as u64
    });
    count_host_rsts(&topo);

    let mut takeover = flags_with("round_robin", &extra);
    takeover.extend(["--takeover".to_owned(), "--control-socket".to_owned()]);
    takeover.push(topo.control_socket());
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.arg("run")
        .args(&takeover)
        .env("DISPATCHD_TEST_TAKEOVER_SLOW_SWITCH_MS", "1500");
    let copied = format!("{CONNECTIONS} tracked connections copied");
    let b = Proc::start(cmd, &copied, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    // Opened through the old process, after the copy, before the switch.
    let mut late = hold(&topo, 6);
    assert!(
        !b.output().contains("dispatchd: running"),
        "the switch came before the late connections opened:\n{}",
        b.output()
    );
    wait_until(Duration::from_secs(20), "the new process runs", || {
        b.output().contains("dispatchd: running")
    });
    exits_cleanly(&mut a);
    let said = b.output();
    assert!(
        said.contains(&format!(
            "{CONNECTIONS} tracked keys written from records that were not copied"
        )),
        "{said}"
    );
    let stats = topo.stats();
    assert_eq!(
        u64_at(&stats, "/connections"),
        2 * CONNECTIONS as u64,
        "{stats}"
    );
    // The workers wrote no inherited record's key again.
    assert_eq!(u64_at(&stats, "/workers/0/tracked_inserted"), 0, "{stats}");
    assert_eq!(broken(&mut late), 0, "connections opened after the copy");
    assert_eq!(broken(&mut early), 0, "connections opened before the copy");
    assert_eq!(host_rsts(&topo), 0, "the host answered service frames");
    new_connections_work(&topo);
    drop(b);
}
