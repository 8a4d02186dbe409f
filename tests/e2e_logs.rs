//! The log as a log pipeline reads it: with `--log-format json` every line
//! dispatchd writes is one JSON object with a time, a level and a message, and
//! every state change is there with the fields to filter on. Needs root.
use std::time::Duration;

use dispatchd_testkit::{daemon_addr, text, wait_until, Topology, VIP};
use serde_json::Value;

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Every line of `output`, parsed; panics on the first that is not a JSON
/// object with `timestamp`, `level` and `message`.
fn records(output: &str) -> Vec<Value> {
    output
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}\nin:\n{output}"));
            for key in ["timestamp", "level", "message"] {
                assert!(
                    record.get(key).is_some_and(|v| v.is_string()),
                    "no string {key:?} in {line}"
                );
            }
            record
        })
        .collect()
}

/// The first record whose message contains `words`.
fn find<'a>(all: &'a [Value], words: &str) -> &'a Value {
    all.iter()
        .find(|r| r["message"].as_str().unwrap().contains(words))
        .unwrap_or_else(|| panic!("no record saying {words:?} in {all:#?}"))
}

#[test]
fn every_line_is_json_and_every_state_change_is_logged() {
    let topo = Topology::up(DISPATCHD, "lgj", 2, 1);
    let _kept = topo.serve_one(0, &[]);
    let victim = topo.serve_one(1, &[]);
    let mut flags = Topology::default_flags(2);
    flags.extend(
        [
            "--log-format",
            "json",
            "--health-interval-ms",
            "100",
            "--policy",
            "weighted_round_robin",
        ]
        .map(String::from),
    );
    let mut lb = topo.dispatchd_until(&flags, r#""message":"running"#);
    let (d0, d1) = (daemon_addr(0), daemon_addr(1));

    topo.ctl(&["drain", &d1]);
    topo.ctl(&["undrain", &d1]);
    topo.ctl(&["weight", &d0, "3"]);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload logged", || {
        lb.output().contains("SIGHUP: reloaded")
    });
    drop(victim);
    wait_until(Duration::from_secs(5), "the daemon's fall logged", || {
        lb.output().contains(&format!("daemon {d1} is down"))
    });
    lb.signal("TERM");
    wait_until(Duration::from_secs(10), "dispatchd to exit", || {
        lb.exited().is_some()
    });
    // Let the reader threads take the last lines.
    std::thread::sleep(Duration::from_millis(200));
    let output = lb.output();
    let all = records(&output);

    let start = find(&all, "starting");
    assert_eq!(start["level"], "INFO");
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"), "{start}");
    assert_eq!(find(&all, "worker 0 serving")["worker"], "0");
    find(&all, "all capabilities dropped");
    find(&all, "running (poll");

    let drained = find(&all, &format!("daemon {d1} draining"));
    assert_eq!(
        (&drained["daemon"], &drained["draining"]),
        (&Value::from(d1.clone()), &Value::from(true))
    );
    let undrained = find(&all, &format!("daemon {d1} undrained"));
    assert_eq!(undrained["draining"], false);
    let weighed = find(&all, &format!("daemon {d0} weight 1 -> 3"));
    assert_eq!(
        (&weighed["weight"], &weighed["was"]),
        (&Value::from(3), &Value::from(1))
    );

    // The file is the flags, unchanged; the operator's weight is kept over
    // them (README: the state file), so the reload changes nothing.
    let reloaded = find(&all, "SIGHUP: reloaded");
    assert_eq!(reloaded["changed"], "nothing", "{reloaded}");

    let down = find(&all, &format!("daemon {d1} is down"));
    assert_eq!(down["level"], "WARN");
    assert_eq!(
        (&down["daemon"], &down["health"]),
        (&Value::from(d1.clone()), &Value::from("down"))
    );
    find(&all, "final statistics");
}

#[test]
fn a_start_up_error_is_a_json_record_and_one_line_on_stderr() {
    let topo = Topology::up(DISPATCHD, "lge", 1, 1);
    let mut flags = Topology::default_flags(1);
    flags[1] = "nosuch0".into();
    flags.extend(["--log-format", "json"].map(String::from));
    let out = topo.dispatchd_fails(&flags);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = records(&stdout);
    let last = all
        .last()
        .unwrap_or_else(|| panic!("no records:\n{}", text(&out)));
    assert_eq!(last["level"], "ERROR", "{last}");
    assert!(
        last["error"].as_str().unwrap().contains("nosuch0"),
        "the cause names the interface: {last}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{}", text(&out));
    assert!(stderr.starts_with("dispatchd: ") && stderr.contains("nosuch0"));
}

/// `poll = "busy"` owns a device's NAPI only where the device defers it to the
/// busy poll, and polls it only through a socket that has its NAPI id (README:
/// busy polling): dispatchd says which interfaces defer, with the values it
/// read, and for each socket whether there is a NAPI to poll.
#[test]
fn busy_poll_reports_each_interfaces_napi_deferral_and_each_sockets_napi_id() {
    let topo = Topology::up(DISPATCHD, "lgb", 1, 1);
    let _daemon = topo.serve_one(0, &[]);
    // The back defers (the values the kernel's AF_XDP documentation gives),
    // the front keeps the kernel's default of 0.
    let sysfs = "echo 2 > /sys/class/net/l1/napi_defer_hard_irqs; \
                 echo 200000 > /sys/class/net/l1/gro_flush_timeout";
    let set = topo.run(&topo.dispatcher(), "sh", &["-c", sysfs]);
    assert!(set.status.success(), "{}", text(&set));
    let mut flags = Topology::default_flags(1);
    flags.extend(["--log-format", "json", "--poll", "busy"].map(String::from));
    let mut lb = topo.dispatchd_until(&flags, r#""message":"running"#);
    // Frames both ways: each socket learns its NAPI id, if any, from its first.
    let out = topo.client_run(&["connect", "--to", VIP, "--connections", "5"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until(Duration::from_secs(5), "both sockets' verdicts", || {
        lb.output().matches("busy poll: l").count() >= 2
    });
    lb.signal("TERM");
    wait_until(Duration::from_secs(10), "dispatchd to exit", || {
        lb.exited().is_some()
    });
    std::thread::sleep(Duration::from_millis(200));
    let all = records(&lb.output());

    let front = find(&all, "l0 does not defer its NAPI");
    assert_eq!(front["level"], "WARN", "{front}");
    assert_eq!(
        (
            &front["iface"],
            &front["napi_defer_hard_irqs"],
            &front["gro_flush_timeout_ns"]
        ),
        (&Value::from("l0"), &Value::from(0), &Value::from(0)),
        "{front}"
    );
    let back = find(&all, "l1 defers its NAPI");
    assert_eq!(back["level"], "INFO", "{back}");
    assert_eq!(
        (&back["napi_defer_hard_irqs"], &back["gro_flush_timeout_ns"]),
        (&Value::from(2), &Value::from(200_000)),
        "{back}"
    );
    assert!(
        !all.iter().any(|r| r["message"]
            .as_str()
            .is_some_and(|m| m.contains("l1 does not defer"))),
        "the back was reported as not deferring"
    );
    // veth's copy-mode receive gives its sockets no NAPI id (README: busy
    // polling), so each socket's first frames end its busy poll, once.
    for iface in ["l0", "l1"] {
        let verdicts: Vec<&Value> = all
            .iter()
            .filter(|r| {
                r["iface"] == iface
                    && r["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("NAPI id") || m.contains("polls NAPI"))
            })
            .collect();
        assert_eq!(verdicts.len(), 1, "{iface}: {verdicts:#?}");
        let verdict = verdicts[0];
        assert_eq!(verdict["level"], "WARN", "{verdict}");
        assert!(
            verdict["message"]
                .as_str()
                .unwrap()
                .contains(&format!("{iface} queue 0's socket has no NAPI id (0)")),
            "{verdict}"
        );
        assert_eq!(
            (&verdict["queue"], &verdict["worker"]),
            (&Value::from(0), &Value::from("0")),
            "{verdict}"
        );
    }
}
