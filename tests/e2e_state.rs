//! The state file (`state_file`) end to end: the operator's drains and
//! weights survive a restart and a takeover, a reload keeps them, and a file
//! dispatchd could not read or write stops start-up with nothing attached.
//! Needs root.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use dispatchd_testkit::{daemon_addr, per_daemon, text, wait_until, Proc, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const DAEMONS: usize = 3;
const CONNECTIONS: usize = 400;

/// A directory of the test's own for the state file and the config,
/// removed when the test ends, also on failure.
struct StateDir(PathBuf);

impl StateDir {
    fn new(topo: &Topology) -> StateDir {
        let dir = std::env::temp_dir().join(format!("dispatchd-{}", topo.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("making the state directory");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        StateDir(dir)
    }

    fn state(&self) -> PathBuf {
        self.0.join("state.json")
    }

    fn arg(&self) -> String {
        self.state().to_str().expect("utf-8 path").to_owned()
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config file with the default service under weighted round robin, the
/// daemons' weights `weights`, and the state file.
fn write_config(dir: &StateDir, weights: &[u32]) -> String {
    let list: Vec<String> = weights
        .iter()
        .enumerate()
        .map(|(i, w)| format!("\"{}@{w}\"", daemon_addr(i)))
        .collect();
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\nstate_file = \"{}\"\n[[service]]\naddress = \"{VIP}\"\n\
         policy = \"weighted_round_robin\"\nbackends = [{}]\n",
        dir.arg(),
        list.join(", ")
    );
    let path = dir.0.join("dispatchd.toml");
    std::fs::write(&path, body).expect("writing the config");
    path.to_str().expect("utf-8 path").to_owned()
}

/// New connections per daemon, of `CONNECTIONS`.
fn shares(topo: &Topology) -> Vec<usize> {
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        &CONNECTIONS.to_string(),
        "--concurrency",
        "4",
    ]);
    assert!(out.status.success(), "connect:\n{}", text(&out));
    let spread = per_daemon(&String::from_utf8_lossy(&out.stdout));
    let got: Vec<usize> = (0..DAEMONS)
        .map(|i| {
            let d = daemon_addr(i);
            spread.iter().find(|(x, _)| *x == d).map_or(0, |(_, n)| *n)
        })
        .collect();
    assert_eq!(got.iter().sum::<usize>(), CONNECTIONS, "{spread:?}");
    got
}

/// `ctl backends` row of daemon `i`: its weight and override columns.
fn setting(topo: &Topology, i: usize) -> (String, String) {
    let all = topo.ctl(&["backends"]);
    let d = daemon_addr(i);
    let line = all
        .lines()
        .find(|l| l.starts_with(&format!("{d} ")))
        .unwrap_or_else(|| panic!("{d} in {all}"));
    let field = |key: &str| {
        line.split_whitespace()
            .skip_while(|w| *w != key)
            .nth(1)
            .unwrap_or_else(|| panic!("no {key} in {line}"))
            .to_owned()
    };
    (field("weight"), field("override"))
}

/// The same in `ctl backends --json`.
fn setting_json(topo: &Topology, i: usize) -> serde_json::Value {
    let rows: serde_json::Value =
        serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
    let d = daemon_addr(i);
    let row = rows
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["daemon"] == d.as_str())
        .unwrap_or_else(|| panic!("{d} in {rows}"));
    serde_json::json!({ "weight": row["weight"], "override": row["override"] })
}

fn within(got: usize, want: usize, what: &str) {
    // Weighted round robin over one worker is exact up to where the
    // concurrency interleaves; 5% of the total as elsewhere.
    let slack = CONNECTIONS / 20;
    assert!(
        got + slack >= want && got <= want + slack,
        "{what}: {got} of {CONNECTIONS}, expected {want} +- {slack}"
    );
}

fn stop(lb: &mut Proc) {
    lb.terminate(Duration::from_secs(10));
    assert!(
        lb.wait(Duration::from_secs(1)).success(),
        "dispatchd exits cleanly on SIGTERM:\n{}",
        lb.output()
    );
}

/// Drain daemon 0 and weigh daemon 1 at 3 by ctl, stop dispatchd (SIGTERM)
/// and start it again with the same state file: daemon 0 gets no new
/// connection from the first one on, 1 and 2 share 3 : 1, and `ctl
/// backends` says which settings are the operator's. A reload that changes
/// daemon 2's weight in the file keeps the overrides. Undrain and reset
/// persist likewise: after the next restart the config alone rules.
#[test]
fn drains_and_weights_set_by_ctl_survive_a_restart_and_a_reload() {
    let topo = Topology::up(DISPATCHD, "psrst", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let dir = StateDir::new(&topo);
    let config = write_config(&dir, &[1, 1, 1]);
    let mut lb = topo.dispatchd(&["--config", &config]);
    assert!(!dir.state().exists(), "no change yet, no file");
    let (d0, d1) = (daemon_addr(0), daemon_addr(1));

    assert_eq!(topo.ctl(&["drain", &d0]), format!("ok: {d0} draining\n"));
    assert_eq!(
        topo.ctl(&["weight", &d1, "3"]),
        format!("ok: {d1} weight 3\n")
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.state()).expect("the state file"))
            .expect("JSON");
    assert_eq!(
        saved,
        serde_json::json!({
            "version": 1,
            "daemons": [
                { "daemon": d0, "drained": true },
                { "daemon": d1, "drained": false, "weight": 3 },
            ]
        })
    );
    let mode = std::fs::metadata(dir.state()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    let before = shares(&topo);
    println!("before the restart: {before:?}");
    stop(&mut lb);

    let mut lb = topo.dispatchd(&["--config", &config]);
    assert_eq!(setting(&topo, 0), ("1".into(), "drained".into()));
    assert_eq!(setting(&topo, 1), ("3".into(), "weight=3".into()));
    assert_eq!(setting(&topo, 2), ("1".into(), "none".into()));
    assert_eq!(
        setting_json(&topo, 0),
        serde_json::json!({ "weight": 1, "override": { "drained": true, "weight": null } })
    );
    assert_eq!(
        setting_json(&topo, 1),
        serde_json::json!({ "weight": 3, "override": { "drained": false, "weight": 3 } })
    );
    assert_eq!(
        setting_json(&topo, 2),
        serde_json::json!({ "weight": 1, "override": null })
    );
    let after = shares(&topo);
    println!("after the restart: {after:?} (daemon 0 drained, weights 3 : 1)");
    assert_eq!(after[0], 0, "the drained daemon got new connections");
    within(after[1], 300, "weight 3 of 4");
    within(after[2], 100, "weight 1 of 4");

    // The file's weight is the base: a reload changes daemon 2's, and
    // daemon 1 keeps the operator's.
    write_config(&dir, &[1, 1, 2]);
    lb.signal("HUP");
    wait_until(
        Duration::from_secs(5),
        "the reload gives daemon 2 weight 2",
        || setting(&topo, 2).0 == "2",
    );
    assert_eq!(setting(&topo, 0), ("1".into(), "drained".into()));
    assert_eq!(setting(&topo, 1), ("3".into(), "weight=3".into()));
    let reloaded = shares(&topo);
    println!("after the reload: {reloaded:?} (weights 3 : 2)");
    assert_eq!(reloaded[0], 0);
    within(reloaded[1], 240, "weight 3 of 5");

    // A reset applies as a reload: the drained daemon's state, which the
    // workers carry over reloads, must be told undrained.
    assert_eq!(
        topo.ctl(&["weight", &d0, "--reset"]),
        format!("ok: {d0} weight 1 (the config's), undrained\n")
    );
    assert_eq!(setting(&topo, 0), ("1".into(), "none".into()));
    let reset = shares(&topo);
    println!("daemon 0 reset: {reset:?} (weights 1 : 3 : 2)");
    within(reset[0], 67, "daemon 0 reset, weight 1 of 6");
    assert_eq!(
        topo.ctl(&["weight", &d1, "--reset"]),
        format!("ok: {d1} weight 1 (the config's), undrained\n")
    );
    assert_eq!(setting(&topo, 1), ("1".into(), "none".into()));
    let file = std::fs::read_to_string(dir.state()).expect("the state file");
    assert!(file.contains("\"daemons\": []"), "{file}");
    stop(&mut lb);

    let _lb = topo.dispatchd(&["--config", &config]);
    for i in 0..DAEMONS {
        assert_eq!(setting(&topo, i).1, "none", "daemon {i}");
    }
    let cleared = shares(&topo);
    println!("after clearing and a restart: {cleared:?} (weights 1 : 1 : 2)");
    within(cleared[0], 100, "daemon 0 undrained, weight 1 of 4");
    within(cleared[1], 100, "daemon 1 back to weight 1 of 4");
    within(cleared[2], 200, "daemon 2 weight 2 of 4");
}

/// A state file dispatchd cannot parse, or one in a directory it could not
/// write once its capabilities are dropped, stops start-up with one line
/// naming it, before anything is attached; fixed, it starts.
/// An override of a daemon the configuration no longer has is dropped, from
/// the file too: a daemon drained by ctl, removed by a reload and added back
/// by the next one runs undrained (`ctl backends`: override none), and so it
/// must after a restart. The file kept the entry, so the restart drained it
/// again. Likewise for an entry the configuration at start did not have.
#[test]
fn an_override_dropped_with_its_daemon_does_not_come_back_at_the_next_start() {
    let topo = Topology::up(DISPATCHD, "psgone", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let dir = StateDir::new(&topo);
    let d2 = daemon_addr(2);
    let reload = |lb: &Proc, weights: &[u32], n: usize| {
        write_config(&dir, weights);
        lb.signal("HUP");
        wait_until(Duration::from_secs(5), "reload applied", || {
            lb.output().matches("SIGHUP: reloaded").count() >= n
        });
    };
    let config = write_config(&dir, &[1, 1, 1]);
    let mut lb = topo.dispatchd(&["--config", &config]);
    assert_eq!(topo.ctl(&["drain", &d2]), format!("ok: {d2} draining\n"));
    reload(&lb, &[1, 1], 1);
    reload(&lb, &[1, 1, 1], 2);
    assert_eq!(setting(&topo, 2).1, "none");
    stop(&mut lb);
    let mut lb = topo.dispatchd(&["--config", &config]);
    assert_eq!(setting(&topo, 2).1, "none", "{}", lb.output());
    assert!(shares(&topo)[2] > 0, "daemon 2 drained again");

    // Dropped at start: the configuration has no daemon 2.
    assert_eq!(topo.ctl(&["drain", &d2]), format!("ok: {d2} draining\n"));
    stop(&mut lb);
    write_config(&dir, &[1, 1]);
    let lb = topo.dispatchd(&["--config", &config]);
    reload(&lb, &[1, 1, 1], 1);
    assert_eq!(setting(&topo, 2).1, "none");
    let mut lb = lb;
    stop(&mut lb);
    let mut lb = topo.dispatchd(&["--config", &config]);
    assert_eq!(setting(&topo, 2).1, "none", "{}", lb.output());
    stop(&mut lb);
}

#[test]
fn a_corrupt_or_unwritable_state_file_stops_start_up_with_nothing_attached() {
    let topo = Topology::up(DISPATCHD, "psbad", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let dir = StateDir::new(&topo);
    let mut flags = Topology::default_flags(DAEMONS);
    flags.extend(["--state-file".into(), dir.arg()]);
    flags.extend(["--control-socket".into(), topo.control_socket()]);

    std::fs::write(dir.state(), "{\"version\": 1, \"daemons\": [").unwrap();
    let said = text(&topo.dispatchd_fails(&flags));
    assert!(
        said.contains(&format!(
            "state file {} is not a valid dispatchd state file",
            dir.arg()
        )) && said.contains("remove it"),
        "{said}"
    );
    assert!(!topo.xdp_attached("l0") && !topo.xdp_attached("l1"));

    std::fs::remove_file(dir.state()).unwrap();
    std::os::unix::fs::chown(&dir.0, Some(4242), Some(4242)).unwrap();
    let said = text(&topo.dispatchd_fails(&flags));
    assert!(
        said.contains(&format!("cannot write in {}", dir.0.display()))
            && said.contains("StateDirectory"),
        "{said}"
    );
    assert!(!topo.xdp_attached("l0") && !topo.xdp_attached("l1"));
    assert!(
        !Path::new(&topo.control_socket()).exists(),
        "no control socket left"
    );

    std::os::unix::fs::chown(&dir.0, Some(0), Some(0)).unwrap();
    let _lb = topo.dispatchd(&flags[..flags.len() - 2]);
    let d0 = daemon_addr(0);
    topo.ctl(&["drain", &d0]);
    assert!(dir.state().exists(), "written once writable");
}

/// `run --takeover` with the same state file: the new process runs with the
/// old one's overrides.
#[test]
fn overrides_carry_over_a_takeover() {
    let topo = Topology::up(DISPATCHD, "pstko", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let dir = StateDir::new(&topo);
    let config = write_config(&dir, &[1, 1, 1]);
    let mut a = topo.dispatchd(&["--config", &config]);
    let (d0, d1) = (daemon_addr(0), daemon_addr(1));
    topo.ctl(&["drain", &d0]);
    topo.ctl(&["weight", &d1, "3"]);

    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.args(["run", "--config", &config, "--takeover"])
        .args(["--control-socket", &topo.control_socket()]);
    let _b = Proc::start(cmd, "dispatchd: running", Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e:#}\nthe old process said:\n{}", a.output()));
    assert!(
        a.wait(Duration::from_secs(10)).success(),
        "the old process exits cleanly:\n{}",
        a.output()
    );
    assert_eq!(setting(&topo, 0), ("1".into(), "drained".into()));
    assert_eq!(setting(&topo, 1), ("3".into(), "weight=3".into()));
    let after = shares(&topo);
    println!("after the takeover: {after:?} (daemon 0 drained, weights 3 : 1)");
    assert_eq!(after[0], 0);
    within(after[1], 300, "weight 3 of 4");
    within(after[2], 100, "weight 1 of 4");

    // The new process writes the same file: an undrain persists.
    assert_eq!(topo.ctl(&["undrain", &d0]), format!("ok: {d0} undrained\n"));
    let file = std::fs::read_to_string(dir.state()).expect("the state file");
    assert!(
        !file.contains(&d0) && file.contains(&d1),
        "only daemon 1's weight is left: {file}"
    );
    let undrained = shares(&topo);
    println!("daemon 0 undrained: {undrained:?} (weights 1 : 3 : 1)");
    within(undrained[0], 80, "daemon 0 undrained, weight 1 of 5");
}

/// A change the operator makes on the old process after the new one read
/// the state file at its start, but before it took over (the test hook holds
/// it there), reaches the new process: it reads the file again once the old
/// one has stopped, and runs with the change.
#[test]
fn a_change_made_while_a_takeover_starts_reaches_the_new_process() {
    let topo = Topology::up(DISPATCHD, "pstkw", DAEMONS, 1);
    let _servers = topo.serve(DAEMONS);
    let dir = StateDir::new(&topo);
    let config = write_config(&dir, &[1, 1, 1]);
    let mut a = topo.dispatchd(&["--config", &config]);
    let (d0, d1) = (daemon_addr(0), daemon_addr(1));
    topo.ctl(&["drain", &d0]);

    let pause = dir.0.join("paused");
    let mut cmd = topo.cmd(&topo.dispatcher(), DISPATCHD);
    cmd.args(["run", "--config", &config, "--takeover"])
        .args(["--control-socket", &topo.control_socket()])
        .env("DISPATCHD_TEST_TAKEOVER_PAUSE_FILE", &pause);
    let mut b = Proc::start(cmd, "", Duration::ZERO).expect("starting the new process");
    wait_until(
        Duration::from_secs(20),
        "the new process read the state file and waits",
        || pause.exists(),
    );
    // On the old process, which still serves: the new one read the file
    // before these.
    topo.ctl(&["undrain", &d0]);
    topo.ctl(&["weight", &d1, "3"]);
    std::fs::remove_file(&pause).unwrap();
    assert!(
        a.wait(Duration::from_secs(20)).success(),
        "the old process exits cleanly:\n{}\nthe new one said:\n{}",
        a.output(),
        b.output()
    );
    assert!(
        b.exited().is_none(),
        "the new process runs:\n{}",
        b.output()
    );
    assert_eq!(setting(&topo, 0), ("1".into(), "none".into()));
    assert_eq!(setting(&topo, 1), ("3".into(), "weight=3".into()));
    let after = shares(&topo);
    println!("after the takeover: {after:?} (weights 1 : 3 : 1, none drained)");
    within(after[0], 80, "daemon 0 undrained, weight 1 of 5");
    within(after[1], 240, "daemon 1 weight 3 of 5");
}
