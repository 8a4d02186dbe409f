//! Per-service HTTP health checks end to end: each daemon of the topology also
//! runs a real HTTP server (Python's http.server) on a check port, and its
//! service's `[service.health]` asks for `GET /health` there. A daemon whose
//! check answers 404 goes down although its service port still accepts
//! connections, takes no new connection through the VIP, and comes back when
//! the check passes again; a reload's new `fall` applies to a running daemon;
//! the Host header is the configured one, or the probed address.
//! Needs root.
use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use dispatchd_testkit::{daemon_addr, per_daemon, text, Proc, Topology, VIP};
use serde_json::Value;

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");
/// Debian's Python, which `scripts/install-deps.sh` installs.
const PYTHON: &str = "/usr/bin/python3";
/// The daemons' HTTP check port (their service port is 8080).
const CHECK_PORT: u16 = 8081;
const INTERVAL_MS: u64 = 200;

/// An HTTP server for daemon `i` on its address and [`CHECK_PORT`], serving a
/// directory of its own that holds `health` until [`HealthPage::fail`]; the
/// directory is removed and the server killed on drop.
struct HealthPage {
    dir: PathBuf,
    _server: Proc,
}

impl HealthPage {
    fn start(topo: &Topology, i: usize) -> HealthPage {
        let dir = std::env::temp_dir().join(format!("dispatchd-{}-http{i}", topo.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a directory for the health page");
        let mut cmd = topo.cmd(&topo.daemons(), PYTHON);
        cmd.args(["-u", "-m", "http.server", "--bind", ip_of(&daemon_addr(i))])
            .arg("--directory")
            .arg(&dir)
            .arg(CHECK_PORT.to_string());
        let page = HealthPage {
            dir,
            _server: Proc::start(cmd, "Serving HTTP on", Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{e:#}")),
        };
        page.pass();
        page
    }

    fn pass(&self) {
        std::fs::write(self.dir.join("health"), "ok\n").expect("writing the health page");
    }

    /// From now on the check gets 404.
    fn fail(&self) {
        std::fs::remove_file(self.dir.join("health")).expect("removing the health page");
    }
}

impl Drop for HealthPage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip_of(addr: &str) -> &str {
    addr.split(':').next().expect("ADDR:PORT")
}

/// A config file with one service over `daemons` daemons, checked by HTTP on
/// [`CHECK_PORT`] every [`INTERVAL_MS`] with `fall`.
fn write_config(path: &std::path::Path, daemons: usize, fall: u32) {
    write_config_on(path, daemons, fall, CHECK_PORT);
}

/// [`write_config`] with the check on `port`.
fn write_config_on(path: &std::path::Path, daemons: usize, fall: u32, port: u16) {
    write_config_with(path, daemons, fall, port, "");
}

/// [`write_config_on`] with more `[service.health]` lines.
fn write_config_with(path: &std::path::Path, daemons: usize, fall: u32, port: u16, more: &str) {
    let list: Vec<String> = (0..daemons)
        .map(|i| format!("{:?}", daemon_addr(i)))
        .collect();
    let text = format!(
        "front = \"l0\"\nback = \"l1\"\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n\
         [service.health]\nkind = \"http\"\npath = \"/health\"\nport = {port}\n\
         status = 200\ninterval_ms = {INTERVAL_MS}\ntimeout_ms = 150\nrise = 2\nfall = {fall}\n\
         {more}\n",
        list.join(", ")
    );
    std::fs::write(path, text).expect("writing the config");
}

/// Removes the config file on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `ctl backends --json`: the row of `daemon`.
fn row(topo: &Topology, daemon: &str) -> Value {
    let json = topo.ctl(&["backends", "--json"]);
    let all: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("backends --json: {e}: {json}"));
    all.as_array()
        .and_then(|rows| rows.iter().find(|r| r["daemon"] == daemon))
        .unwrap_or_else(|| panic!("{daemon} in {json}"))
        .clone()
}

fn health(row: &Value) -> &str {
    row["health"].as_str().expect("a health word")
}

fn count(row: &Value, key: &str) -> u64 {
    row[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {row}"))
}

/// Polls `daemon`'s row every 10 ms until `done` holds; returns the row and
/// the time it took. Panics after `timeout`.
fn until(
    topo: &Topology,
    daemon: &str,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let r = row(topo, daemon);
        if done(&r) {
            return (r, start.elapsed());
        }
        assert!(
            start.elapsed() < timeout,
            "{daemon}: {what} not within {timeout:?}: {r}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connections through the VIP, from the client: how many each daemon took.
fn through_vip(topo: &Topology, n: usize) -> Vec<(String, usize)> {
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        &n.to_string(),
        "--concurrency",
        "3",
    ]);
    assert!(
        out.status.success(),
        "connect through the VIP:\n{}",
        text(&out)
    );
    let spread = per_daemon(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        spread.iter().map(|(_, k)| k).sum::<usize>(),
        n,
        "{spread:?}"
    );
    spread
}

/// Every daemon up with HTTP probes that passed (rather than up as every
/// daemon starts): the check runs against the real servers.
fn all_up_by_http(topo: &Topology, daemons: usize) {
    for i in 0..daemons {
        let (r, _) = until(
            topo,
            &daemon_addr(i),
            Duration::from_secs(5),
            "HTTP probes passing",
            |r| health(r) == "up" && count(r, "probes_passed") >= 2,
        );
        assert_eq!(r["check"]["kind"], "http", "{r}");
        assert_eq!(r["check"]["path"], "/health", "{r}");
        let target = format!("{}:{CHECK_PORT}", ip_of(&daemon_addr(i)));
        assert_eq!(r["check"]["target"], target.as_str(), "{r}");
        assert_eq!(count(&r, "probes_failed"), 0, "{r}");
    }
}

#[test]
fn a_404_takes_a_daemon_down_while_its_port_accepts_and_a_200_brings_it_back() {
    let topo = Topology::up(DISPATCHD, "hchttp", 3, 1);
    let _servers = topo.serve(3);
    let pages: Vec<HealthPage> = (0..3).map(|i| HealthPage::start(&topo, i)).collect();
    let config = TempFile(std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix)));
    write_config(&config.0, 3, 3);
    let _lb = topo.dispatchd(&["--config", config.0.to_str().unwrap()]);
    all_up_by_http(&topo, 3);
    let victim = daemon_addr(1);

    let failed_before = count(&row(&topo, &victim), "probes_failed");
    pages[1].fail();
    let (r, took) = until(&topo, &victim, Duration::from_secs(5), "down", |r| {
        health(r) == "down"
    });
    let failed = count(&r, "probes_failed") - failed_before;
    println!(
        "404: down {took:?} after the page went ({failed} failed probes seen; \
         fall 3, interval {INTERVAL_MS} ms)"
    );
    assert!(
        (3..=4).contains(&failed),
        "down after fall = 3 failed probes, saw {failed}: {r}"
    );
    assert!(
        took >= Duration::from_millis(2 * INTERVAL_MS - 100),
        "down after {took:?}: sooner than three probes {INTERVAL_MS} ms apart"
    );
    for i in [0, 2] {
        assert_eq!(health(&row(&topo, &daemon_addr(i))), "up");
    }

    // Its service port still accepts: the TCP check of old would keep it up.
    let direct = topo.run(
        &topo.dispatcher(),
        &topo.programs().testkit,
        &["connect", "--to", &victim, "--connections", "5"],
    );
    assert!(
        direct.status.success(),
        "a direct connection to {victim}:\n{}",
        text(&direct)
    );
    assert_eq!(
        per_daemon(&String::from_utf8_lossy(&direct.stdout)),
        [(victim.clone(), 5)]
    );
    let spread = through_vip(&topo, 90);
    assert!(
        spread.iter().all(|(d, _)| *d != victim),
        "no new connection to the daemon whose check fails: {spread:?}"
    );

    let passed_before = count(&row(&topo, &victim), "probes_passed");
    pages[1].pass();
    let (r, took) = until(&topo, &victim, Duration::from_secs(5), "up", |r| {
        health(r) == "up"
    });
    let passed = count(&r, "probes_passed") - passed_before;
    println!("200 again: up {took:?} after ({passed} passed probes seen; rise 2)");
    assert!(
        (2..=3).contains(&passed),
        "up after rise = 2 passed probes, saw {passed}: {r}"
    );
    let spread = through_vip(&topo, 90);
    assert!(
        spread.iter().any(|(d, n)| *d == victim && *n > 0),
        "the daemon gets connections again: {spread:?}"
    );
}

/// Down after the page goes: (time, failed probes seen at the flip).
fn time_to_down(topo: &Topology, page: &HealthPage, daemon: &str) -> (Duration, u64) {
    let before = count(&row(topo, daemon), "probes_failed");
    page.fail();
    let (r, took) = until(topo, daemon, Duration::from_secs(5), "down", |r| {
        health(r) == "down"
    });
    let failed = count(&r, "probes_failed") - before;
    page.pass();
    until(topo, daemon, Duration::from_secs(5), "up again", |r| {
        health(r) == "up"
    });
    (took, failed)
}

#[test]
fn a_reload_lowering_fall_applies_to_a_running_daemon() {
    let topo = Topology::up(DISPATCHD, "hcfall", 2, 1);
    let _servers = topo.serve(2);
    let pages: Vec<HealthPage> = (0..2).map(|i| HealthPage::start(&topo, i)).collect();
    let config = TempFile(std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix)));
    write_config(&config.0, 2, 3);
    let mut lb = topo.dispatchd(&["--config", config.0.to_str().unwrap()]);
    all_up_by_http(&topo, 2);
    let daemon = daemon_addr(0);

    let (slow, failed) = time_to_down(&topo, &pages[0], &daemon);
    println!("fall 3: down after {slow:?}, {failed} failed probes");
    assert!((3..=4).contains(&failed), "fall 3 took {failed} failures");

    write_config(&config.0, 2, 1);
    let passed = count(&row(&topo, &daemon), "probes_passed");
    lb.signal("HUP");
    let (r, _) = until(
        &topo,
        &daemon,
        Duration::from_secs(5),
        "fall 1 applied",
        |r| r["check"]["fall"] == 1,
    );
    // The reload kept what is known of it.
    assert_eq!(health(&r), "up", "{r}");
    assert!(count(&r, "probes_passed") >= passed, "{r}");

    let (fast, failed) = time_to_down(&topo, &pages[0], &daemon);
    println!("fall 1 after the reload: down after {fast:?}, {failed} failed probe(s)");
    assert!((1..=2).contains(&failed), "fall 1 took {failed} failures");
    assert!(
        fast < slow,
        "fall 1 ({fast:?}) must take a daemon down sooner than fall 3 ({slow:?})"
    );

    // The check moved to a port with no HTTP server behind it: the echo
    // server answers the request with itself, not a status line. Both
    // daemons fail it and go down; dispatchd goes on.
    write_config_on(&config.0, 2, 1, 8080);
    lb.signal("HUP");
    for i in 0..2 {
        let (r, took) = until(
            &topo,
            &daemon_addr(i),
            Duration::from_secs(5),
            "down by a reply that is not HTTP",
            |r| health(r) == "down",
        );
        assert_eq!(r["check"]["target"], daemon_addr(i).as_str(), "{r}");
        println!(
            "check on the echo port: {} down after {took:?}",
            daemon_addr(i)
        );
    }
    let failed = count(&row(&topo, &daemon), "probes_failed");
    until(&topo, &daemon, Duration::from_secs(2), "probed on", |r| {
        count(r, "probes_failed") > failed
    });
    assert!(lb.exited().is_none(), "dispatchd stopped:\n{}", lb.output());
}

/// An HTTP server that answers 200 to `GET /health` with `Host: want` and
/// 421 (Misdirected Request) to anything else.
const HOST_CHECKING_SERVER: &str = r#"
import http.server, sys
want, ip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class Check(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" and self.headers.get("Host") == want
        self.send_response(200 if ok else 421)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer((ip, port), Check)
print("serving", flush=True)
server.serve_forever()
"#;

#[test]
fn the_host_header_is_the_configured_one_or_the_probed_address() {
    let topo = Topology::up(DISPATCHD, "hchost", 1, 1);
    let daemon = daemon_addr(0);
    let want = "app.example";
    let mut cmd = topo.cmd(&topo.daemons(), PYTHON);
    cmd.args(["-c", HOST_CHECKING_SERVER, want, ip_of(&daemon)])
        .arg(CHECK_PORT.to_string());
    let _server =
        Proc::start(cmd, "serving", Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e:#}"));
    let config = TempFile(std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix)));
    let named = format!("host = \"{want}\"");
    write_config_with(&config.0, 1, 2, CHECK_PORT, &named);
    let lb = topo.dispatchd(&["--config", config.0.to_str().unwrap()]);
    let (r, _) = until(&topo, &daemon, Duration::from_secs(5), "passing", |r| {
        health(r) == "up" && count(r, "probes_passed") >= 2
    });
    assert_eq!(count(&r, "probes_failed"), 0, "{r}");
    assert_eq!(r["check"]["host"], want, "{r}");

    // Without `host` the header names the probed address: 421, down.
    write_config_with(&config.0, 1, 2, CHECK_PORT, "");
    lb.signal("HUP");
    let (r, took) = until(&topo, &daemon, Duration::from_secs(5), "down", |r| {
        health(r) == "down"
    });
    assert!(r["check"].get("host").is_none(), "{r}");
    println!(
        "Host {daemon_ip}:{CHECK_PORT} refused: down after {took:?}",
        daemon_ip = ip_of(&daemon)
    );

    write_config_with(&config.0, 1, 2, CHECK_PORT, &named);
    lb.signal("HUP");
    let (_, took) = until(&topo, &daemon, Duration::from_secs(5), "up", |r| {
        health(r) == "up"
    });
    println!("Host {want} again: up after {took:?}");
}
