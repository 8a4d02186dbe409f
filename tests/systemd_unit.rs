//! The systemd unit in examples/systemd: systemd itself accepts it
//! (`systemd-analyze verify`, against the binary cargo built), and what it
//! grants and makes matches what the code needs, from the code's own lists.
use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use dispatchd::{config::DEFAULT_CONTROL_SOCKET, sys::NEEDED_CAPS};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const UNIT: &str = include_str!("../examples/systemd/dispatchd.service");
const INSTALLED_AT: &str = "/usr/local/bin/dispatchd";

/// Every value of `key` in the unit's [Service] section, in order.
fn values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn one(key: &str) -> &'static str {
    match values(key).as_slice() {
        [v] => v,
        other => panic!("{key}= set {} times in the unit: {other:?}", other.len()),
    }
}

fn seconds(value: &str) -> Duration {
    let s = value
        .strip_suffix('s')
        .unwrap_or_else(|| panic!("{value}: expected seconds, as NNs"));
    Duration::from_secs(s.parse().unwrap_or_else(|e| panic!("{value}: {e}")))
}

#[test]
fn systemd_analyze_verify_passes_without_a_warning() {
    assert!(
        one("ExecStart").starts_with(&format!("{INSTALLED_AT} run ")),
        "ExecStart runs {INSTALLED_AT}: {}",
        one("ExecStart")
    );
    // The same unit, its binary the one cargo built (verify wants it to
    // exist), under its own name in a directory of its own.
    let dir = std::env::temp_dir().join(format!("nt-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let unit = UNIT.replace(INSTALLED_AT, DISPATCHD);
    assert_ne!(unit, UNIT);
    for name in ["dispatchd.service", "dispatchd@a.service"] {
        let path = dir.join(name);
        std::fs::write(&path, &unit).unwrap();
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("running systemd-analyze (scripts/install-deps.sh installs systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Other units of this host may draw warnings of their own; none may
        // be about this one.
        let about: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("dispatchd") || l.contains(&*dir.to_string_lossy()))
            .collect();
        assert!(
            out.status.success() && about.is_empty(),
            "systemd-analyze verify {name}: {}\n{stderr}",
            out.status
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A unit that lets start-up through grants exactly the capabilities the code
/// checks for (`sys::NEEDED_CAPS`): one fewer and start-up refuses, one more
/// is a privilege for nothing.
#[test]
fn the_unit_grants_exactly_the_capabilities_the_code_needs() {
    let needed: BTreeSet<String> = NEEDED_CAPS.iter().map(ToString::to_string).collect();
    assert_eq!(needed.len(), 5, "{needed:?}");
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let granted: BTreeSet<String> = one(key).split_whitespace().map(String::from).collect();
        assert_eq!(granted, needed, "{key}= differs from sys::NEEDED_CAPS");
    }
}

#[test]
fn the_unit_makes_the_control_sockets_directory_and_waits_for_the_stop() {
    let dir = Path::new(DEFAULT_CONTROL_SOCKET)
        .parent()
        .expect("the default socket is in a directory");
    assert_eq!(
        Path::new("/run").join(one("RuntimeDirectory")),
        dir,
        "RuntimeDirectory= is where the default control_socket lives"
    );
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert_eq!(one("KillSignal"), "SIGTERM");
    assert_eq!(one("LimitMEMLOCK"), "infinity");
    assert_eq!(one("StateDirectory"), "dispatchd");
    // The default stop_grace (0) plus the final statistics and a takeover's
    // records: well within it.
    let stop = seconds(one("TimeoutStopSec"));
    assert!(
        stop >= dispatchd::config::DEFAULT_STOP_GRACE + Duration::from_secs(10),
        "TimeoutStopSec={stop:?}"
    );
    // Fed at half of it; an idle worker moves every 100 ms at least.
    assert!(seconds(one("WatchdogSec")) >= Duration::from_secs(1));
}
