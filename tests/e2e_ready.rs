//! Readiness and the graceful stop end to end, on the DESIGN.md topology:
//! `dispatchd ctl ready`, `GET /ready` and `dispatchd_ready` follow the
//! daemons' health and a stop; during the grace period of a SIGTERM traffic
//! still flows while readiness says stopping, and after it nothing is left
//! attached. Needs root.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use dispatchd_testkit::{text, wait_until, Topology, VIP};

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
const METRICS_PORT: u16 = 9119;

/// `dispatchd ctl ready`: its exit status and its one line.
fn ready(topo: &Topology) -> (bool, String) {
    let out = Command::new(DISPATCHD)
        .args(["ctl", "--socket", &topo.control_socket(), "ready"])
        .output()
        .expect("running dispatchd ctl ready");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said.trim().to_owned())
}

/// A GET of `path` from the metrics listener inside the dispatcher namespace.
fn http_get(topo: &Topology, path: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT}; printf 'GET {path} HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = topo.run(&topo.dispatcher(), "bash", &["-c", &script]);
    assert!(out.status.success(), "GET {path}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same GET written in two pieces 200 ms apart, the path split between
/// them, as TCP may deliver any request.
fn http_get_split(topo: &Topology, first: &str, rest: &str) -> String {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{METRICS_PORT}; printf '{first}' >&3; sleep 0.2; \
         printf '{rest}' >&3; cat <&3"
    );
    let out = topo.run(&topo.dispatcher(), "bash", &["-c", &script]);
    assert!(out.status.success(), "split GET: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn gauge(topo: &Topology) -> String {
    let metrics = http_get(topo, "/metrics");
    metrics
        .lines()
        .find(|l| l.starts_with("dispatchd_ready "))
        .unwrap_or_else(|| panic!("no dispatchd_ready in {metrics}"))
        .to_owned()
}

#[test]
fn readiness_follows_the_daemons_health() {
    let topo = Topology::up(DISPATCHD, "ready", 2, 1);
    let mut servers: Vec<_> = (0..2).map(|i| topo.serve_one(i, &[])).collect();
    let mut flags = Topology::default_flags(2);
    flags.extend(
        [
            "--health-interval-ms",
            "200",
            "--metrics-listen",
            &format!("127.0.0.1:{METRICS_PORT}"),
        ]
        .map(String::from),
    );
    let _lb = topo.dispatchd(&flags);

    assert_eq!(ready(&topo), (true, "ready".to_owned()));
    let get = http_get(&topo, "/ready");
    assert!(get.starts_with("HTTP/1.1 200 OK\r\n"), "{get}");
    assert!(get.ends_with("\r\n\r\nready\n"), "{get}");
    // Answered once the request is whole, not on its first segment (which
    // named "/rea", i.e. the metrics, and left the rest to reset the close).
    let get = http_get_split(&topo, "GET /rea", "dy HTTP/1.0\\r\\nHost: lb\\r\\n\\r\\n");
    assert!(get.ends_with("\r\n\r\nready\n"), "{get}");
    assert_eq!(gauge(&topo), "dispatchd_ready 1");
    let json = topo.ctl(&["--json", "ready"]);
    assert_eq!(json.trim(), "{\"ready\":true}");

    // One healthy daemon is enough.
    drop(servers.remove(0));
    thread_sleep_ms(1200);
    assert_eq!(ready(&topo), (true, "ready".to_owned()));

    drop(servers.remove(0));
    let took = wait_until(Duration::from_secs(3), "unready without a daemon", || {
        !ready(&topo).0
    });
    println!("not ready {took:?} after the last daemon stopped (probes every 200 ms, fall 3)");
    let why = "not ready: service 198.18.0.100:80 has no healthy daemon";
    assert_eq!(ready(&topo), (false, why.to_owned()));
    let get = http_get(&topo, "/ready");
    assert!(
        get.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{get}"
    );
    assert!(get.ends_with(&format!("\r\n\r\n{why}\n")), "{get}");
    assert_eq!(gauge(&topo), "dispatchd_ready 0");

    servers.push(topo.serve_one(1, &[]));
    wait_until(Duration::from_secs(3), "ready again", || ready(&topo).0);
    assert_eq!(gauge(&topo), "dispatchd_ready 1");
}

fn thread_sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

#[test]
fn a_graceful_stop_turns_unready_keeps_forwarding_then_detaches() {
    let topo = Topology::up(DISPATCHD, "grace", 2, 1);
    let _servers = topo.serve(2);
    let mut flags = Topology::default_flags(2);
    flags.extend(
        [
            "--stop-grace-ms",
            "4000",
            "--metrics-listen",
            &format!("127.0.0.1:{METRICS_PORT}"),
        ]
        .map(String::from),
    );
    let mut lb = topo.dispatchd(&flags);
    assert!(ready(&topo).0);
    // A connection that lives into the grace period and ends inside it.
    let mut hold = topo.client_start(
        &["hold", "--to", VIP, "--seconds", "3", "--interval-ms", "50"],
        "opened",
    );
    thread_sleep_ms(300);
    let sent = Instant::now();
    lb.signal("TERM");
    wait_until(Duration::from_secs(1), "stopping said", || {
        ready(&topo).1.contains("stopping")
    });
    let (ok, why) = ready(&topo);
    assert!(!ok && why.starts_with("not ready: stopping (SIGTERM; forwarding for "));
    let get = http_get(&topo, "/ready");
    assert!(get.starts_with("HTTP/1.1 503"), "{get}");
    assert_eq!(gauge(&topo), "dispatchd_ready 0");

    // New connections are still taken while the routers converge.
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        "100",
        "--concurrency",
        "4",
    ]);
    assert!(
        out.status.success(),
        "connect in the grace period:\n{}",
        text(&out)
    );
    let status = hold.wait(Duration::from_secs(5));
    assert!(
        status.success(),
        "the held connection broke during the grace period:\n{}",
        hold.output()
    );
    assert!(
        sent.elapsed() < Duration::from_millis(3800),
        "the checks ran past the grace period ({:?}): they proved nothing",
        sent.elapsed()
    );
    assert!(
        lb.exited().is_none(),
        "dispatchd left before its grace period"
    );
    assert!(topo.xdp_attached("l0") && topo.xdp_attached("l1"));

    let status = lb.wait(Duration::from_secs(4));
    let took = sent.elapsed();
    assert!(status.success(), "{}", lb.output());
    assert!(
        took >= Duration::from_millis(4000) && took < Duration::from_millis(5500),
        "stopped {took:?} after SIGTERM with a 4000 ms grace period"
    );
    println!("stopped {took:?} after SIGTERM (grace 4000 ms)");
    let log = lb.output();
    assert!(
        log.contains("SIGTERM: not ready from now on; forwarding for 4000 ms more"),
        "{log}"
    );
    assert!(
        log.contains("grace period of 4000 ms over; stopping"),
        "{log}"
    );
    assert!(!topo.xdp_attached("l0"), "XDP left on l0");
    assert!(!topo.xdp_attached("l1"), "XDP left on l1");
}

#[test]
fn sigint_or_a_second_sigterm_stops_at_once() {
    let topo = Topology::up(DISPATCHD, "graceint", 1, 1);
    let _servers = topo.serve(1);
    let mut flags = Topology::default_flags(1);
    flags.extend(["--stop-grace-ms", "60000"].map(String::from));
    for second in ["TERM", "INT"] {
        let mut lb = topo.dispatchd(&flags);
        lb.signal("TERM");
        wait_until(Duration::from_secs(1), "stopping said", || {
            ready(&topo).1.contains("stopping")
        });
        let sent = Instant::now();
        lb.signal(second);
        let status = lb.wait(Duration::from_secs(3));
        assert!(status.success(), "{}", lb.output());
        println!(
            "SIG{second} during the grace period: stopped in {:?}",
            sent.elapsed()
        );
        assert!(!topo.xdp_attached("l0") && !topo.xdp_attached("l1"));
    }
    // SIGINT alone needs no second signal.
    let mut lb = topo.dispatchd(&flags);
    let sent = Instant::now();
    lb.signal("INT");
    assert!(lb.wait(Duration::from_secs(3)).success());
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert!(!lb.output().contains("grace period"), "{}", lb.output());
}
