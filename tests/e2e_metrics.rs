//! GET /metrics end to end, read by the Prometheus project's own exposition
//! parser (Python's `prometheus_client.parser`, Debian's python3-prometheus-client,
//! run with /usr/bin/python3), on the real topology with real traffic: every
//! family parses with its type, the per-daemon series follow the traffic, a
//! drain, a weight and a stopped daemon, the flow tables' use matches the
//! tracked connections, and SIGHUP reloads report what needs a restart.
//! Needs root.
use std::{collections::BTreeMap, io::Write, process::Stdio, time::Duration};

use dispatchd_testkit::{daemon_addr, json::u64_at, text, wait_until, Proc, Topology, VIP};
use serde_json::Value;

const DISPATCHD: &str = env!("CARGO_BIN_EXE_dispatchd");

/// Prints the families as JSON: {name: {"type": T, "samples": [[name, labels, value]]}}.
const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    assert f.name not in out, "family twice: " + f.name
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;

/// One parsed scrape.
struct Page(BTreeMap<String, Value>);

impl Page {
    fn kind(&self, family: &str) -> &str {
        self.0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"))["type"]
            .as_str()
            .expect("a type")
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    fn values(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        self.0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"))["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .filter(|s| s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v))
            .map(|s| s[2].as_f64().expect("a number"))
            .collect()
    }

    /// The one sample of `name` with `labels`.
    fn one(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        let v = self.values(family, name, labels);
        assert_eq!(v.len(), 1, "{name} {labels:?}: {v:?}");
        v[0]
    }

    fn sum(&self, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.values(family, name, labels).iter().sum()
    }
}

/// GET /metrics from the listener on `port`, parsed by the reference parser.
fn scrape(topo: &Topology, port: u16) -> Page {
    let get = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = topo.run(&topo.dispatcher(), "bash", &["-c", &get]);
    let reply = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {}", text(&out)));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let mut python = std::process::Command::new("/usr/bin/python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (scripts/install-deps.sh installs python3-prometheus-client)");
    python
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("writing the page");
    let parsed = python.wait_with_output().expect("the parser");
    assert!(
        parsed.status.success(),
        "the reference parser refused the page: {}\n{body}",
        text(&parsed)
    );
    let families: BTreeMap<String, Value> =
        serde_json::from_slice(&parsed.stdout).expect("the parser's JSON");
    for (name, f) in &families {
        assert_ne!(
            f["type"], "unknown",
            "{name}: a sample outside its family's names, or no TYPE"
        );
    }
    Page(families)
}

/// The configuration file: `daemons` (indexes) behind the VIP, and `extra`
/// top-level lines.
fn write_config(file: &std::path::Path, port: u16, daemons: &[usize], extra: &str) {
    let list: Vec<String> = daemons
        .iter()
        .map(|&i| format!("\"{}\"", daemon_addr(i)))
        .collect();
    let body = format!(
        "front = \"l0\"\nback = \"l1\"\nmetrics_listen = \"127.0.0.1:{port}\"\n{extra}\n\
         [timeouts]\nlinger_ms = 300\n\
         [health]\ninterval_ms = 200\ntimeout_ms = 100\nrise = 1\nfall = 2\n\
         [[service]]\naddress = \"{VIP}\"\nbackends = [{}]\n",
        list.join(", ")
    );
    std::fs::write(file, body).expect("writing the config");
}

/// Waits until every daemon takes new connections (probed, its next hop
/// resolved), so that round robin splits them evenly.
fn wait_all_up(topo: &Topology) {
    wait_until(Duration::from_secs(5), "every daemon up", || {
        let list: Value =
            serde_json::from_str(&topo.ctl(&["backends", "--json"])).expect("backends JSON");
        list.as_array()
            .expect("a list")
            .iter()
            .all(|b| b["state"] == "up")
    });
}

fn connect(topo: &Topology, n: usize) {
    let out = topo.client_run(&[
        "connect",
        "--to",
        VIP,
        "--connections",
        &n.to_string(),
        "--concurrency",
        "4",
    ]);
    assert!(out.status.success(), "connect: {}", text(&out));
}

fn backend(addr: &str) -> [(&'static str, &str); 2] {
    [("service", VIP), ("backend", addr)]
}

const FLOW_CAPACITY: u64 = 4096;

#[test]
fn metrics_parse_and_follow_traffic_drain_weight_and_health() {
    let port = 9141;
    let topo = Topology::up(DISPATCHD, "mtscrape", 3, 1);
    let servers: Vec<Proc> = (0..3).map(|i| topo.serve_one(i, &[])).collect();
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    write_config(
        &file,
        port,
        &[0, 1, 2],
        &format!("flow_capacity = {FLOW_CAPACITY}"),
    );
    let _lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let daemons: Vec<String> = (0..3).map(daemon_addr).collect();

    let page = scrape(&topo, port);
    for (family, kind) in [
        ("dispatchd_rx_front_packets", "counter"),
        ("dispatchd_dropped_packets", "counter"),
        ("dispatchd_connections", "gauge"),
        ("dispatchd_ready", "gauge"),
        ("dispatchd_packet_processing_seconds", "histogram"),
        ("dispatchd_batch_frames", "histogram"),
        ("dispatchd_worker_round_max_seconds", "gauge"),
        ("dispatchd_loop_round_max_seconds", "gauge"),
        ("dispatchd_service_daemons_up", "gauge"),
        ("dispatchd_service_new_connections", "counter"),
        ("dispatchd_service_connections", "gauge"),
        ("dispatchd_backend_up", "gauge"),
        ("dispatchd_backend_weight", "gauge"),
        ("dispatchd_backend_drained", "gauge"),
        ("dispatchd_backend_connections", "gauge"),
        ("dispatchd_backend_new_connections", "counter"),
        ("dispatchd_backend_packets", "counter"),
        ("dispatchd_backend_bytes", "counter"),
        ("dispatchd_flow_table_records", "gauge"),
        ("dispatchd_flow_table_capacity", "gauge"),
        // Prometheus' text format has no info type: an info metric is a
        // gauge named `_info` whose value is 1.
        ("dispatchd_build_info", "gauge"),
        ("process_start_time_seconds", "gauge"),
        ("dispatchd_reloads", "counter"),
        ("dispatchd_last_reload_success_timestamp_seconds", "gauge"),
        ("dispatchd_reload_pending_restart", "gauge"),
    ] {
        assert_eq!(page.kind(family), kind, "{family}");
    }
    let build = page.values("dispatchd_build_info", "dispatchd_build_info", &[]);
    assert_eq!(build, [1.0]);
    assert_eq!(
        page.0["dispatchd_build_info"]["samples"][0][1]["version"],
        env!("CARGO_PKG_VERSION")
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = page.one(
        "process_start_time_seconds",
        "process_start_time_seconds",
        &[],
    );
    assert!(started > now - 120.0 && started <= now + 1.0, "{started}");
    for outcome in ["success", "failure"] {
        assert_eq!(
            page.one(
                "dispatchd_reloads",
                "dispatchd_reloads_total",
                &[("outcome", outcome)]
            ),
            0.0
        );
    }
    for d in &daemons {
        assert_eq!(
            page.one(
                "dispatchd_backend_weight",
                "dispatchd_backend_weight",
                &backend(d)
            ),
            1.0
        );
    }

    // New connections, split over the daemons, add up to what the client made.
    const CONNECTIONS: usize = 60;
    wait_all_up(&topo);
    connect(&topo, CONNECTIONS);
    let mut page = scrape(&topo, port);
    wait_until(Duration::from_secs(5), "every Opened event counted", || {
        page = scrape(&topo, port);
        page.sum(
            "dispatchd_backend_new_connections",
            "dispatchd_backend_new_connections_total",
            &[],
        ) == CONNECTIONS as f64
    });
    assert_eq!(
        page.one(
            "dispatchd_service_new_connections",
            "dispatchd_service_new_connections_total",
            &[("service", VIP)]
        ),
        CONNECTIONS as f64
    );
    assert_eq!(
        page.sum("dispatchd_new_flows", "dispatchd_new_flows_total", &[]),
        CONNECTIONS as f64
    );
    for d in &daemons {
        let labels = backend(d);
        let opened = page.one(
            "dispatchd_backend_new_connections",
            "dispatchd_backend_new_connections_total",
            &labels,
        );
        assert_eq!(opened, 20.0, "round robin: a third each ({d})");
        for direction in ["to_backend", "from_backend"] {
            let mut l = labels.to_vec();
            l.push(("direction", direction));
            let packets = page.one(
                "dispatchd_backend_packets",
                "dispatchd_backend_packets_total",
                &l,
            );
            let bytes = page.one(
                "dispatchd_backend_bytes",
                "dispatchd_backend_bytes_total",
                &l,
            );
            // SYN, ACK, data, FIN and ACK at least, each a whole frame of 54
            // bytes or more.
            assert!(packets >= 4.0 * opened, "{d} {direction}: {packets}");
            assert!(bytes >= 54.0 * packets, "{d} {direction}: {bytes} bytes");
        }
        assert_eq!(
            page.one("dispatchd_backend_up", "dispatchd_backend_up", &labels),
            1.0
        );
    }
    let count = page.one(
        "dispatchd_packet_processing_seconds",
        "dispatchd_packet_processing_seconds_count",
        &[],
    );
    let sum = page.one(
        "dispatchd_packet_processing_seconds",
        "dispatchd_packet_processing_seconds_sum",
        &[],
    );
    assert!(
        count > 0.0 && sum > 0.0 && sum / count < 1e-3,
        "{sum} / {count}"
    );

    // Open connections: the tables hold what the loop tracks.
    let holds: Vec<Proc> = (0..2)
        .map(|_| {
            topo.client_start(
                &[
                    "hold",
                    "--to",
                    VIP,
                    "--seconds",
                    "20",
                    "--interval-ms",
                    "100",
                ],
                "opened",
            )
        })
        .collect();
    let mut agreed = (0.0, 0);
    wait_until(
        Duration::from_secs(5),
        "the closed connections' records gone",
        || {
            let page = scrape(&topo, port);
            let records = page.sum(
                "dispatchd_flow_table_records",
                "dispatchd_flow_table_records",
                &[],
            );
            let conns: Value =
                serde_json::from_str(&topo.ctl(&["conns", "--json"])).expect("conns JSON");
            agreed = (records, u64_at(&conns, "/tracked"));
            agreed == (2.0, 2)
        },
    );
    let page = scrape(&topo, port);
    assert_eq!(
        page.one(
            "dispatchd_flow_table_capacity",
            "dispatchd_flow_table_capacity",
            &[("worker", "0")]
        ),
        FLOW_CAPACITY as f64
    );
    assert_eq!(
        page.one(
            "dispatchd_service_connections",
            "dispatchd_service_connections",
            &[("service", VIP), ("state", "active")]
        ),
        2.0
    );
    assert_eq!(
        page.sum(
            "dispatchd_backend_connections",
            "dispatchd_backend_connections",
            &[("state", "active")]
        ),
        2.0
    );

    // A drain, a weight.
    topo.ctl(&["drain", &daemons[0]]);
    topo.ctl(&["weight", &daemons[1], "3"]);
    let page = scrape(&topo, port);
    let drained = |page: &Page, d: &str| {
        page.one(
            "dispatchd_backend_drained",
            "dispatchd_backend_drained",
            &backend(d),
        )
    };
    assert_eq!(drained(&page, &daemons[0]), 1.0);
    assert_eq!(drained(&page, &daemons[1]), 0.0);
    assert_eq!(
        page.one(
            "dispatchd_backend_weight",
            "dispatchd_backend_weight",
            &backend(&daemons[1])
        ),
        3.0
    );

    // A daemon whose server stops is down after `fall` failed probes.
    let mut servers = servers;
    drop(servers.pop());
    let mut page = scrape(&topo, port);
    wait_until(Duration::from_secs(5), "the stopped daemon down", || {
        page = scrape(&topo, port);
        page.one(
            "dispatchd_backend_up",
            "dispatchd_backend_up",
            &backend(&daemons[2]),
        ) == 0.0
    });
    assert_eq!(
        page.one(
            "dispatchd_service_daemons_up",
            "dispatchd_service_daemons_up",
            &[("service", VIP)]
        ),
        2.0
    );
    drop(holds);
}

#[test]
fn reloads_report_what_needs_a_restart_and_counters_follow_the_daemons() {
    let port = 9142;
    let topo = Topology::up(DISPATCHD, "mtreload", 3, 1);
    let _servers = topo.serve(3);
    let file = std::env::temp_dir().join(format!("dispatchd-{}.toml", topo.prefix));
    let running = "poll = \"adaptive\"\nbatch = 64\non_remove = \"reset\"";
    write_config(&file, port, &[0, 1], running);
    let lb = topo.dispatchd(&["--config", file.to_str().expect("utf-8 path")]);
    let daemons: Vec<String> = (0..3).map(daemon_addr).collect();
    let reloads = |page: &Page, outcome: &str| {
        page.one(
            "dispatchd_reloads",
            "dispatchd_reloads_total",
            &[("outcome", outcome)],
        )
    };
    let packets = |page: &Page, d: &str| {
        let mut l = backend(d).to_vec();
        l.push(("direction", "to_backend"));
        page.values(
            "dispatchd_backend_packets",
            "dispatchd_backend_packets_total",
            &l,
        )
    };
    let pending = |page: &Page| -> Vec<String> {
        page.0["dispatchd_reload_pending_restart"]["samples"]
            .as_array()
            .expect("samples")
            .iter()
            .filter(|s| s[2].as_f64() == Some(1.0))
            .map(|s| s[1]["key"].as_str().expect("key").to_owned())
            .collect()
    };

    // An odd number: round robin gives one daemon a connection more, so
    // the two daemons' counts differ and a mix-up would show.
    wait_all_up(&topo);
    connect(&topo, 21);
    let mut page = scrape(&topo, port);
    wait_until(Duration::from_secs(5), "the connections counted", || {
        page = scrape(&topo, port);
        page.sum(
            "dispatchd_backend_new_connections",
            "dispatchd_backend_new_connections_total",
            &[],
        ) == 21.0
    });
    // Every connection closed and lingered out: no frame of theirs is still
    // on its way, so the counts stand still.
    wait_until(Duration::from_secs(5), "the connections gone", || {
        page = scrape(&topo, port);
        page.one("dispatchd_connections", "dispatchd_connections", &[]) == 0.0
    });
    let before = packets(&page, &daemons[1]);
    assert_eq!(before.len(), 1);
    assert!(before[0] > 0.0);
    assert_ne!(packets(&page, &daemons[0]), before, "10 and 11 connections");
    let opened = |page: &Page, d: &str| {
        page.one(
            "dispatchd_backend_new_connections",
            "dispatchd_backend_new_connections_total",
            &backend(d),
        )
    };
    let opened_before = opened(&page, &daemons[1]);
    let commands = u64_at(&topo.stats(), "/workers/0/commands");
    let first_success = page.one(
        "dispatchd_last_reload_success_timestamp_seconds",
        "dispatchd_last_reload_success_timestamp_seconds",
        &[],
    );

    // poll and batch change (restart only), and the daemons: 0 leaves, 1
    // moves from the second place (id 1) to the first (id 0), 2 comes and
    // takes id 1, where daemon 1's counts were.
    write_config(
        &file,
        port,
        &[1, 2],
        "poll = \"busy\"\nbatch = 32\non_remove = \"reset\"",
    );
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the reload counted", || {
        page = scrape(&topo, port);
        reloads(&page, "success") == 1.0
    });
    // The worker has taken the new plane (the first command of the reload)
    // and let go of the old one, whose counts the loop folds by address.
    wait_until(Duration::from_secs(5), "the new plane taken", || {
        u64_at(&topo.stats(), "/workers/0/commands") > commands
    });
    page = scrape(&topo, port);
    assert_eq!(pending(&page), ["poll", "batch"]);
    assert!(
        page.one(
            "dispatchd_last_reload_success_timestamp_seconds",
            "dispatchd_last_reload_success_timestamp_seconds",
            &[],
        ) >= first_success
    );
    assert_eq!(
        packets(&page, &daemons[1]),
        before,
        "daemon 1's counts follow its address to its new place"
    );
    assert_eq!(
        packets(&page, &daemons[2]),
        [0.0],
        "daemon 2 starts at zero"
    );
    assert!(
        packets(&page, &daemons[0]).is_empty(),
        "a daemon that left has no series"
    );
    let stats = topo.ctl(&["stats"]);
    assert!(
        stats.contains(
            "pending restart: poll (running adaptive, file busy), batch (running 64, file 32)"
        ),
        "{stats}"
    );
    assert!(stats.contains("reloads: success 1 failure 0"), "{stats}");
    let json = topo.stats();
    let keys: Vec<&str> = json["pending_restart"]
        .as_array()
        .expect("pending_restart")
        .iter()
        .map(|p| p["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["poll", "batch"], "{json}");
    assert_eq!(json["pending_restart"][0]["running"], "adaptive");
    assert_eq!(json["pending_restart"][0]["file"], "busy");

    // The new daemons take the traffic, the new one once it is up (probed,
    // its next hop resolved); the old one none.
    let backends = topo.ctl(&["backends"]);
    assert!(!backends.contains(&daemons[0]), "{backends}");
    wait_all_up(&topo);
    connect(&topo, 20);
    wait_until(
        Duration::from_secs(5),
        "the new connections counted",
        || {
            page = scrape(&topo, port);
            page.sum(
                "dispatchd_backend_new_connections",
                "dispatchd_backend_new_connections_total",
                &[],
            ) == opened_before + 20.0
        },
    );
    // Daemon 0's are gone with it; 20 more split over 1 and 2.
    assert_eq!(opened(&page, &daemons[1]), opened_before + 10.0);
    assert_eq!(opened(&page, &daemons[2]), 10.0);
    assert!(packets(&page, &daemons[2])[0] > 0.0);
    assert!(packets(&page, &daemons[1])[0] > before[0]);

    // Back to the running values: nothing waits for a restart.
    write_config(&file, port, &[1, 2], running);
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the second reload counted", || {
        page = scrape(&topo, port);
        reloads(&page, "success") == 2.0
    });
    assert!(pending(&page).is_empty(), "{:?}", pending(&page));
    assert!(topo.ctl(&["stats"]).contains("pending restart: none"));
    assert_eq!(topo.stats()["pending_restart"], serde_json::json!([]));

    // A broken file is a failure; the running configuration stays.
    std::fs::write(&file, "front = [\n").expect("writing the config");
    lb.signal("HUP");
    wait_until(Duration::from_secs(5), "the failed reload counted", || {
        page = scrape(&topo, port);
        reloads(&page, "failure") == 1.0
    });
    assert_eq!(reloads(&page, "success"), 2.0);
    assert!(pending(&page).is_empty());
    connect(&topo, 4);
}
