//! The results: one document, written as Markdown and as JSON (serde), and
//! read back from JSON to draw its latency SVG again (see `svg.rs`).
use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    cli::{Mode, RunOpts, RR4_CONNECTIONS, WORKLOADS},
    cpu::CoreCpu,
    lossless::{
        Search, CEILING_FACTOR, DRAIN, FLUSH, FLUSH_RATE, GENERATOR_SHARE, MAX_LOSS, MIN_ACHIEVED,
        PAUSE, PRECISION,
    },
    placement,
};

pub const VARIANTS: [&str; 6] = [
    "direct",
    "nftables",
    "dispatchd",
    "dispatchd2",
    "bare",
    "bare-xdp",
];

const _: () = assert!(RR4_CONNECTIONS == 4, "the rr4 rows' labels say 4");

/// (id, workload, metric, unit, higher is better)
const ROWS: [(&str, &str, &str, &str, bool); 28] = [
    ("conn_rate", "new connections", "rate", "conn/s", true),
    ("conn_p50", "new connections", "latency p50", "µs", false),
    ("conn_p99", "new connections", "latency p99", "µs", false),
    (
        "conn_p99.9",
        "new connections",
        "latency p99.9",
        "µs",
        false,
    ),
    (
        "conn_cpu1_us",
        "new connections",
        "core 1 busy per connection",
        "µs",
        false,
    ),
    (
        "conn_cpu0_us",
        "new connections",
        "core 0 busy per connection",
        "µs",
        false,
    ),
    ("rr_rate", "requests (persistent)", "rate", "req/s", true),
    (
        "rr_p50",
        "requests (persistent)",
        "latency p50",
        "µs",
        false,
    ),
    (
        "rr_p99",
        "requests (persistent)",
        "latency p99",
        "µs",
        false,
    ),
    (
        "rr_p99.9",
        "requests (persistent)",
        "latency p99.9",
        "µs",
        false,
    ),
    (
        "rr_cpu1_us",
        "requests (persistent)",
        "core 1 busy per request",
        "µs",
        false,
    ),
    (
        "rr4_rate",
        "requests (persistent, 4 connections)",
        "rate",
        "req/s",
        true,
    ),
    (
        "rr4_p50",
        "requests (persistent, 4 connections)",
        "latency p50",
        "µs",
        false,
    ),
    (
        "rr4_p99",
        "requests (persistent, 4 connections)",
        "latency p99",
        "µs",
        false,
    ),
    (
        "rr4_p99.9",
        "requests (persistent, 4 connections)",
        "latency p99.9",
        "µs",
        false,
    ),
    (
        "rr4_cpu1_us",
        "requests (persistent, 4 connections)",
        "core 1 busy per request",
        "µs",
        false,
    ),
    (
        "bulk_mbit",
        "bulk echo",
        "throughput (both ways)",
        "Mbit/s",
        true,
    ),
    (
        "stream_mbit",
        "bulk stream (iperf3, one connection, one way)",
        "throughput",
        "Mbit/s",
        true,
    ),
    (
        "stream_retransmits",
        "bulk stream (iperf3, one connection, one way)",
        "retransmits",
        "segments",
        false,
    ),
    ("pps_sent", "forwarded packets", "sent", "pps", true),
    (
        "pps_received",
        "forwarded packets",
        "received at s0 under overload",
        "pps",
        true,
    ),
    (
        "pps_ratio",
        "forwarded packets",
        "received / sent under overload",
        "",
        true,
    ),
    (
        "pps_lossless",
        "forwarded packets",
        "highest rate with ≤ 0.1 % loss (best of 2 trials)",
        "pps",
        true,
    ),
    (
        "pps_cpu1_ns",
        "forwarded packets",
        "core 1 busy per packet at the fixed rate",
        "ns",
        false,
    ),
    (
        "big_mbit",
        "1500-byte packets (generator, one way)",
        "received at s0 under overload",
        "Mbit/s",
        true,
    ),
    (
        "big_lossless_mbit",
        "1500-byte packets (generator, one way)",
        "highest rate with ≤ 0.1 % loss (best of 2 trials)",
        "Mbit/s",
        true,
    ),
    (
        "big_cpu1_ns",
        "1500-byte packets (generator, one way)",
        "core 1 busy per packet at the fixed rate",
        "ns",
        false,
    ),
    (
        "outside_cpu",
        "(machine)",
        "CPU used outside the benchmark, whole variant",
        "cores",
        false,
    ),
];

/// The generator's rows whose dispatchd ÷ bare ratio the document states.
const GENERATOR_ROWS: [(&str, &str); 4] = [
    ("pps_received", "64 B, received under overload"),
    ("pps_lossless", "64 B, zero-loss"),
    ("big_mbit", "1500 B, received under overload"),
    ("big_lossless_mbit", "1500 B, zero-loss"),
];

/// The generator's cost rows whose dispatchd − bare difference the document states.
const COST_ROWS: [(&str, &str); 2] = [("pps_cpu1_ns", "64 B"), ("big_cpu1_ns", "1500 B")];

/// Appended to a generator workload's name, the key of its fixed-rate
/// window's per-core CPU.
pub const FIXED_RATE: &str = " at the fixed rate";

/// Where and how the run was made, as sentences.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Header {
    pub date: String,
    pub run: String,
    pub machine: String,
    pub kernel: String,
    pub durations: String,
    pub load: String,
    pub cores: String,
    /// How the zero-loss rows were searched; empty in earlier results and
    /// when the search was skipped.
    #[serde(default)]
    pub lossless: String,
}

/// One metric of one workload, per variant (null where it was not measured).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Row {
    pub id: String,
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub values: BTreeMap<String, Option<f64>>,
}

/// Client-side latency percentiles of one workload, µs.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

impl Latency {
    pub fn percentiles(&self) -> [(&'static str, f64); 5] {
        [
            ("p50", self.p50),
            ("p90", self.p90),
            ("p99", self.p99),
            ("p99.9", self.p99_9),
            ("max", self.max),
        ]
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Results {
    pub header: Header,
    pub rows: Vec<Row>,
    /// By `workload/variant`.
    pub latency_us: BTreeMap<String, Latency>,
    /// dispatchd's own per-packet processing time by variant, as its
    /// `ctl stats --json` gives it.
    pub per_packet_ns: BTreeMap<String, Value>,
    /// dispatchd's whole `ctl stats --json` by variant.
    pub ctl_stats: BTreeMap<String, Value>,
    pub notes: Vec<String>,
    /// "dedicated" or "shared"; empty in results from before the modes.
    #[serde(default)]
    pub mode: String,
    /// Per-core CPU over each measured window, by `workload/variant`.
    #[serde(default)]
    pub cpu: BTreeMap<String, Vec<CoreCpu>>,
    /// Each round's zero-loss search (every trial) by `workload/variant`.
    #[serde(default)]
    pub lossless: BTreeMap<String, Vec<Search>>,
    /// Every round's value by key, whose median the document shows.
    #[serde(skip)]
    rounds: Rounds,
}

/// The rounds' raw values: not part of the document (a document read back
/// has only the medians), so equal whatever they hold.
#[derive(Debug, Clone, Default)]
struct Rounds(BTreeMap<String, Vec<f64>>);

impl PartialEq for Rounds {
    fn eq(&self, _: &Rounds) -> bool {
        true
    }
}

impl Rounds {
    /// Adds one round's value of `key`; the median of its rounds so far.
    fn add(&mut self, key: String, v: f64) -> f64 {
        let all = self.0.entry(key).or_default();
        all.push(v);
        median(all)
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Results {
    pub fn new(opts: &RunOpts, stamp: &str, mode: Mode) -> Results {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let header = Header {
            date: cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            run: stamp.to_owned(),
            machine: format!(
                "{cpu}, {} cores (nproc), {}",
                cmd("nproc", &[]),
                cmd("uname", &["-m"])
            ),
            kernel: cmd("uname", &["-r"]),
            durations: format!(
                    "{} s measured per workload after {} s warm-up{}; {} round(s), variants alternating within each, \
                     every value the median of the rounds",
                    opts.seconds,
                    opts.warmup,
                    if opts.quick { " (--quick)" } else { "" },
                    opts.rounds()
                ),
            load: format!(
                    "connections: 64 B echo, {} client threads; rr: {} persistent connections, 64 B request/reply; rr4: the same on {} connections; \
                     bulk: one connection, echo both ways; stream: iperf3, one connection, client to one daemon \
                     (198.19.0.11:5201, a service of its own on the VIP); pps: AF_XDP copy-mode generator on c0, {} tuples, 64 B ACK frames, counted at s0{}",
                    opts.concurrency, opts.rr_connections, RR4_CONNECTIONS, opts.tuples,
                    if opts.fixed_rate_window(mode) {
                        format!(
                            "; after each generator workload's overload window, a fixed-rate window: {} frames/s for \
                             {} s (paced, the same for every variant), core 1's busy time (/proc/stat) over it per \
                             frame received at s0 (core 0's is the generator's spin)",
                            opts.cost_rate, opts.cost_seconds
                        )
                    } else {
                        String::new()
                    }
                ),
            cores: match mode {
                Mode::Shared => "shared: dispatchd's one worker pinned to core 1 (--cores 1); the packet generator pinned to core 0; \
                 clients, servers, softirqs and dispatchd's management thread share both cores. The kernel variants \
                 forward in the softirq of whichever core sent the frame."
                    .to_owned()
                    + umem_pages(opts),
                Mode::Dedicated => format!(
                    "dedicated: one forwarding core (core {f}) per variant, clients, daemons and the packet generator \
                     on core {c} (taskset). dispatchd: worker --cores {f}{poll}, management thread --control-core {m}{napi}. \
                     nftables and direct: RPS on the dispatcher's l0 and l1 (rps_cpus = core {f}). Every variant: RPS \
                     on the client's c0 and the daemons' s0 to core {c}, so their own receive stays on their core.{umem}",
                    umem = umem_pages(opts),
                    f = placement::FORWARDING_CORE,
                    c = placement::CLIENT_CORE,
                    m = opts.control_core,
                    poll = opts
                        .dedicated_poll()
                        .map(|p| format!(" --poll {p}"))
                        .unwrap_or_default(),
                    napi = if opts.no_threaded_napi {
                        "; veth NAPI not threaded (--no-threaded-napi): XDP and the copy-mode receive run in the \
                         sender's softirq, on the clients' core"
                    } else {
                        "; threaded NAPI on l0 and l1, its kthreads pinned to the forwarding core (XDP and the \
                         copy-mode receive run there, not in the sender's softirq)"
                    }
                ),
            },
            lossless: if opts.lossless_rates > 0 {
                format!(
                    "after each generator workload's overload window, in the same generator process: a binary search \
                     on the offered rate (paced by the generator) for the highest one at which at most {} % of the \
                     frames are lost (RFC 2544 §26.1) and the generator achieved at least {} % of it (counted until its last frame \
                     left its TX ring: a forwarder that slows its sender down is not keeping up): trials of {} s, the first at the overload window's received \
                     rate, the top of the bracket {CEILING_FACTOR} × that (raised as much \
                     when it passes, up to {} % of the rate the generator sent unpaced), stopping when \
                     the bracket is within {} % or after {} rates, a rate that lost frames failing only when a second trial \
                     at it loses them too (a one-off scheduling hiccup on the forwarding core overflows veth's 256-frame \
                     ring; a trial short of its rate is not repeated); received counted by s0's ingress rule (the \
                     generator's frames only) from {} ms after a flush ({} ms at {FLUSH_RATE} frames/s, uncounted: \
                     it pushes out what a forwarder still held) to {} ms after the trial's last frame left; the value is the rate \
                     the generator achieved in the highest passing trial",
                    MAX_LOSS * 100.0,
                    MIN_ACHIEVED * 100.0,
                    opts.lossless_seconds,
                    GENERATOR_SHARE * 100.0,
                    PRECISION * 100.0,
                    opts.lossless_rates,
                    PAUSE.as_millis(),
                    FLUSH.as_millis(),
                    DRAIN.as_millis(),
                )
            } else {
                String::new()
            },
        };
        let mut r = Results::with_header(header);
        r.mode = mode.name().into();
        r
    }

    /// Every row, no value yet.
    fn with_header(header: Header) -> Results {
        let rows = ROWS
            .iter()
            .map(|&(id, workload, metric, unit, higher_is_better)| Row {
                id: id.into(),
                workload: workload.into(),
                metric: metric.into(),
                unit: unit.into(),
                higher_is_better,
                values: VARIANTS.iter().map(|v| (v.to_string(), None)).collect(),
            })
            .collect();
        Results {
            header,
            rows,
            latency_us: BTreeMap::new(),
            per_packet_ns: BTreeMap::new(),
            ctl_stats: BTreeMap::new(),
            notes: Vec::new(),
            mode: String::new(),
            cpu: BTreeMap::new(),
            lossless: BTreeMap::new(),
            rounds: Rounds::default(),
        }
    }

    /// One round's zero-loss search of a generator workload.
    pub fn lossless(&mut self, workload: &str, variant: &str, s: Search) {
        self.lossless
            .entry(format!("{workload}/{variant}"))
            .or_default()
            .push(s);
    }

    /// Adds a note once (each round makes the same ones).
    pub fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// One round's value of row `id`: the row shows the median of the rounds.
    pub fn set(&mut self, id: &str, variant: &str, v: f64) {
        let v = if id == "pps_ratio" {
            v
        } else {
            self.rounds.add(format!("{id}/{variant}"), v)
        };
        self.put(id, variant, v);
        if id == "pps_received" {
            if let Some(sent) = self.get("pps_sent", variant) {
                if sent > 0.0 {
                    self.set("pps_ratio", variant, v / sent);
                }
            }
        }
    }

    /// Writes a row's value as it is: a median already, or a value of its own.
    fn put(&mut self, id: &str, variant: &str, v: f64) {
        if let Some(row) = self.rows.iter_mut().find(|r| r.id == id) {
            row.values.insert(variant.into(), Some(v));
        }
    }

    /// Whether any row has a value for `variant`.
    fn measured(&self, variant: &str) -> bool {
        self.rows
            .iter()
            .any(|r| r.values.get(variant).copied().flatten().is_some())
    }

    /// `rows`' dispatchd and bare values as `compare` gives them, each named,
    /// where both were measured and the result is finite.
    fn to_bare<'a>(
        &self,
        rows: &[(&str, &'a str)],
        compare: impl Fn(f64, f64) -> f64,
    ) -> Vec<(&'a str, f64)> {
        rows.iter()
            .filter_map(|&(id, what)| {
                let r = compare(self.get(id, "dispatchd")?, self.get(id, "bare")?);
                r.is_finite().then_some((what, r))
            })
            .collect()
    }

    fn get(&self, id: &str, variant: &str) -> Option<f64> {
        let row = self.rows.iter().find(|r| r.id == id)?;
        row.values.get(variant).copied().flatten()
    }

    /// One round's latencies: each percentile the median of the rounds.
    pub fn latency(&mut self, workload: &str, variant: &str, l: Latency) {
        let mut m = |k: &str, v: f64| self.rounds.add(format!("lat/{workload}/{variant}/{k}"), v);
        let l = Latency {
            p50: m("p50", l.p50),
            p90: m("p90", l.p90),
            p99: m("p99", l.p99),
            p99_9: m("p99.9", l.p99_9),
            max: m("max", l.max),
        };
        let id = match workload {
            "rr" | "rr4" => workload,
            _ => "conn",
        };
        // Each percentile is the median of the rounds already: `set` would
        // take a median of these running medians.
        self.put(&format!("{id}_p50"), variant, l.p50);
        self.put(&format!("{id}_p99"), variant, l.p99);
        self.put(&format!("{id}_p99.9"), variant, l.p99_9);
        self.latency_us.insert(format!("{workload}/{variant}"), l);
    }

    /// One round's per-core CPU of a workload: each figure the median of the rounds.
    pub fn cpu(&mut self, workload: &str, variant: &str, cores: Vec<CoreCpu>) {
        let key = format!("{workload}/{variant}");
        let cores = cores
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let mut m = |k: &str, v: f64| self.rounds.add(format!("cpu/{key}/{i}/{k}"), v);
                CoreCpu {
                    user: m("user", c.user),
                    system: m("system", c.system),
                    softirq: m("softirq", c.softirq),
                    steal: m("steal", c.steal),
                }
            })
            .collect();
        self.cpu.insert(key, cores);
    }

    pub fn latency_of(&self, workload: &str, variant: &str) -> Option<&Latency> {
        self.latency_us.get(&format!("{workload}/{variant}"))
    }

    pub fn ctl_stats(&mut self, variant: &str, stats: Value) {
        match stats.get("per_packet_ns") {
            Some(p) => {
                self.per_packet_ns.insert(variant.into(), p.clone());
            }
            None => self.note(format!("{variant}: ctl stats had no per_packet_ns")),
        }
        self.ctl_stats.insert(variant.into(), stats);
    }

    pub fn json(&self) -> Result<String> {
        Ok(serde_json::to_string_pretty(self)? + "\n")
    }

    /// A results JSON this harness wrote, now or in an earlier version.
    pub fn from_json(json: &str) -> Result<Results> {
        serde_json::from_str(json).context("reading a results JSON")
    }

    pub fn markdown(&self) -> String {
        let mut md = match self.mode.as_str() {
            "dedicated" => {
                "# dispatchd end-to-end benchmark: dedicated forwarding core (as deployed)\n\n"
                    .to_owned()
            }
            "shared" => {
                "# dispatchd end-to-end benchmark: everything shares both cores\n\n".to_owned()
            }
            _ => String::from("# dispatchd end-to-end benchmark\n\n"),
        };
        // The header's fields in their declared order (serde_json keeps it).
        if let Ok(serde_json::Value::Object(header)) = serde_json::to_value(&self.header) {
            for (k, v) in header {
                let v = v.as_str().unwrap_or_default();
                if !v.is_empty() {
                    let _ = writeln!(md, "- **{k}**: {v}");
                }
            }
        }
        md.push_str(
            "\nVariants: **direct** = client to one daemon's own address (198.19.0.11:8080), \
             routed by the dispatcher namespace's kernel, no NAT; **nftables** = `dnat ip to numgen inc mod 4 map` \
             in the dispatcher namespace's prerouting; **dispatchd** = XDP + AF_XDP (copy mode on veth), one worker; \
             **bare** = dispatchd's sockets and rings with no parsing or rewriting (`--bare-forwarder`), \
             packet rate only. Ratios are dispatchd ÷ other: above 1 is better for rates, worse for latencies.\n\n",
        );
        if self.measured("dispatchd2") {
            md.push_str(
                "**dispatchd2** = dispatchd with two workers, one per core (`--cores 0,1`), on the same \
                 topology: the scaling rows (informational on two cores); its ratio is dispatchd2 ÷ dispatchd.\n\n",
            );
        }
        if self.measured("bare-xdp") {
            md.push_str(
                "**bare-xdp** = the XDP program redirects the frames it would steer to the other interface, \
                 untouched (`--bare-xdp-redirect`; GRO on the client's c0 and the daemons' s0, which veth needs \
                 to take a redirected frame): no worker, no copy into a UMEM, the ceiling of forwarding in XDP \
                 itself; packet rate only.\n\n",
            );
        }
        // The four classic columns always; dispatchd2 and its ratio when measured.
        let columns: Vec<&str> = VARIANTS
            .into_iter()
            .filter(|&v| !matches!(v, "dispatchd2" | "bare-xdp") || self.measured(v))
            .collect();
        let scaling = self.measured("dispatchd2");
        let _ = writeln!(
            md,
            "| workload | metric | unit | {} | dispatchd/direct | dispatchd/nftables |{}",
            columns.join(" | "),
            if scaling {
                " dispatchd2/dispatchd |"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "| --- | --- | --- |{}{}",
            " ---: |".repeat(columns.len() + 2),
            if scaling { " ---: |" } else { "" }
        );
        for Row {
            id,
            workload,
            metric,
            unit,
            ..
        } in &self.rows
        {
            let cells: Vec<String> = columns
                .iter()
                .map(|v| self.get(id, v).map_or("–".into(), fmt_num))
                .collect();
            let ratio = |of: &str, to: &str| match (self.get(id, of), self.get(id, to)) {
                (Some(d), Some(o)) if o > 0.0 && id != "outside_cpu" => format!("{:.2}", d / o),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {workload} | {metric} | {unit} | {} | {} | {} |{}",
                cells.join(" | "),
                ratio("dispatchd", "direct"),
                ratio("dispatchd", "nftables"),
                if scaling {
                    format!(" {} |", ratio("dispatchd2", "dispatchd"))
                } else {
                    String::new()
                }
            );
        }
        if self.mode == "shared" {
            if let (Some(d), Some(n)) = (
                self.get("rr4_p99.9", "dispatchd"),
                self.get("rr4_p99.9", "nftables"),
            ) {
                let _ = writeln!(
                    md,
                    "\nShared-core tail: dispatchd's p99.9 ÷ nftables' on {RR4_CONNECTIONS} persistent connections \
                     (the target: at most 2): **{}** ({} against {} µs).",
                    if n > 0.0 {
                        format!("{:.2}", d / n)
                    } else {
                        "–".into()
                    },
                    fmt_num(d),
                    fmt_num(n)
                );
            }
        }
        let to_bare: Vec<String> = self
            .to_bare(&GENERATOR_ROWS, |d, b| d / b)
            .iter()
            .map(|(what, r)| format!("{what} **{r:.3}**"))
            .collect();
        if !to_bare.is_empty() {
            let _ = writeln!(
                md,
                "\ndispatchd ÷ bare forwarder on the generator rows (the target: at least 0.95): {}.",
                to_bare.join("; ")
            );
        }
        let cost_to_bare: Vec<String> = self
            .to_bare(&COST_ROWS, |d, b| d - b)
            .iter()
            .map(|(what, r)| format!("{what} **{r:+.0}**"))
            .collect();
        if !cost_to_bare.is_empty() {
            let _ = writeln!(
                md,
                "\nCore 1's busy time per packet at the fixed rate, dispatchd − bare forwarder, ns: {}. At this rate \
                 a packet mostly comes alone and costs either forwarder microseconds of wake-ups (the NAPI kthread's, \
                 the worker's) against tens of ns of dispatchd's own parsing, lookup and rewriting (`per_packet_ns` \
                 below), so the difference bounds dispatchd's extra cost from above within the noise; it does not \
                 resolve it.",
                cost_to_bare.join("; ")
            );
        }
        if !self.lossless.is_empty() {
            md.push_str(
                "\nZero-loss searches, each round: trials, then the highest passing rate (achieved) and the \
                 lowest failing one, pps:\n\n",
            );
            for (key, searches) in &self.lossless {
                let rounds: Vec<String> = searches
                    .iter()
                    .map(|s| {
                        format!(
                            "{} trials, {} passed, failed: {}",
                            s.trials.len(),
                            s.best.map_or("none".into(), |t| fmt_num(t.achieved())),
                            s.lowest_failure.map_or_else(
                                || "none (the generator's own limit: a lower bound)".into(),
                                fmt_num
                            )
                        )
                    })
                    .collect();
                let _ = writeln!(md, "- {key}: {}", rounds.join("; "));
            }
        }
        if !self.cpu.is_empty() {
            md.push_str(
                "\nPer-core CPU over each measured window, % of one core as user / system / softirq+irq, \
                 then in parentheses the hypervisor's steal when there was any (/proc/stat; whole machine, so \
                 the harness's own work counts too; steal is time the vCPU wanted and the host core ran \
                 something else, the VM's own noise):\n\n",
            );
            let cores = self.cpu.values().map(Vec::len).max().unwrap_or(0);
            md.push_str("| workload | variant |");
            for c in 0..cores {
                let _ = write!(md, " core {c} |");
            }
            md.push_str("\n| --- | --- |");
            md.push_str(&" ---: |".repeat(cores));
            md.push('\n');
            let workloads = WORKLOADS
                .map(String::from)
                .into_iter()
                .chain(["pps", "frames1500"].map(|w| format!("{w}{FIXED_RATE}")));
            for workload in workloads {
                for v in VARIANTS {
                    let Some(c) = self.cpu.get(&format!("{workload}/{v}")) else {
                        continue;
                    };
                    let _ = write!(md, "| {workload} | {v} |");
                    for core in c {
                        let pct = |x: f64| format!("{:.0}", x * 100.0);
                        let _ = write!(
                            md,
                            " {} / {} / {}",
                            pct(core.user),
                            pct(core.system),
                            pct(core.softirq)
                        );
                        let steal = pct(core.steal);
                        if steal != "0" {
                            let _ = write!(md, " ({steal})");
                        }
                        md.push_str(" |");
                    }
                    md.push('\n');
                }
            }
        }
        if !self.per_packet_ns.is_empty() {
            md.push_str("\ndispatchd's own per-packet processing time (ns, `ctl stats --json` → `per_packet_ns`, whole run of the variant):\n\n");
            for (v, h) in &self.per_packet_ns {
                let _ = writeln!(md, "- {v}: `{h}`");
            }
        }
        if !self.notes.is_empty() {
            md.push_str("\nNotes:\n\n");
            for n in &self.notes {
                let _ = writeln!(md, "- {n}");
            }
        }
        md
    }
}

/// The header's words on what dispatchd's UMEM is on.
fn umem_pages(opts: &RunOpts) -> &'static str {
    if opts.umem_small_pages {
        " dispatchd's UMEM on ordinary 4 KiB pages (--umem-small-pages)."
    } else {
        " dispatchd's UMEM on 2 MiB huge pages: the bench reserves them (vm.nr_hugepages) while dispatchd runs."
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sample() -> Results {
        let mut r = Results::with_header(Header {
            date: "2026-11-27 10:16:48 UTC".into(),
            run: "20261127T101648Z".into(),
            machine: "a \"quoted\" machine\nwith a newline".into(),
            kernel: "6.18".into(),
            durations: "3 s".into(),
            load: "some".into(),
            cores: "2".into(),
            lossless: String::new(),
        });
        r.set("pps_sent", "dispatchd", 1000.0);
        r.set("pps_received", "dispatchd", 250.5);
        let l = Latency {
            p50: 1.0,
            p90: 2.5,
            p99: 3.0,
            p99_9: 4.0,
            max: 5.0,
        };
        r.latency("rr", "dispatchd", l);
        r.ctl_stats(
            "dispatchd",
            serde_json::from_str(
                r#"{"per_packet_ns":{"p50":103,"max":9,"count":2},"connections":0}"#,
            )
            .unwrap(),
        );
        r.cpu(
            "pps",
            "dispatchd",
            vec![
                CoreCpu {
                    user: 0.5,
                    system: 0.25,
                    softirq: 0.13,
                    steal: 0.04,
                },
                CoreCpu::default(),
            ],
        );
        r.note("a note".into());
        r
    }

    #[test]
    fn rounds_report_their_median() {
        let mut r = sample();
        for v in [300.0, 100.0, 200.0] {
            r.set("conn_rate", "nftables", v);
        }
        assert_eq!(r.get("conn_rate", "nftables"), Some(200.0));
        r.set("conn_rate", "nftables", 1000.0);
        assert_eq!(r.get("conn_rate", "nftables"), Some(250.0));
        let l = |p99: f64| Latency {
            p50: 1.0,
            p90: 2.0,
            p99,
            p99_9: 4.0,
            max: 5.0,
        };
        // sample() gave dispatchd's rr one round with p99 = 3.
        r.latency("rr", "dispatchd", l(9.0));
        r.latency("rr", "dispatchd", l(1.0));
        assert_eq!(r.latency_of("rr", "dispatchd").unwrap().p99, 3.0);
        assert_eq!(r.get("rr_p99", "dispatchd"), Some(3.0));
        let one = |user| CoreCpu {
            user,
            ..CoreCpu::default()
        };
        r.cpu("pps", "dispatchd", vec![one(0.1), one(0.9)]);
        r.cpu("pps", "dispatchd", vec![one(0.2), one(0.0)]);
        let c = &r.cpu["pps/dispatchd"];
        assert_eq!((c[0].user, c[1].user), (0.2, 0.0));
        assert!((median(&[4.0, 1.0]) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        assert_eq!(r.get("pps_ratio", "dispatchd"), Some(0.2505));
        assert_eq!(r.get("rr_p99.9", "dispatchd"), Some(4.0));
        let back = Results::from_json(&r.json().unwrap()).unwrap();
        assert_eq!(back, r);
        let md = r.markdown();
        assert!(
            md.contains("- **date**: 2026-11-27 10:16:48 UTC\n- **run**:"),
            "{md}"
        );
        assert!(
            md.contains(r#"- dispatchd: `{"p50":103,"max":9,"count":2}`"#),
            "{md}"
        );
        assert!(
            md.contains("| workload | variant | core 0 | core 1 |\n| --- | --- | ---: | ---: |\n| pps | dispatchd | 50 / 25 / 13 (4) | 0 / 0 / 0 |"),
            "{md}"
        );
    }

    /// A latency whose p99.9 is `p99_9`, the rest fixed.
    fn tail(p99_9: f64) -> Latency {
        Latency {
            p50: 1.0,
            p90: 2.0,
            p99: 3.0,
            p99_9,
            max: 99.0,
        }
    }

    #[test]
    fn the_shared_tail_target_reads_the_four_connection_rows() {
        let mut r = sample();
        r.latency("rr4", "dispatchd", tail(300.0));
        r.latency("rr4", "nftables", tail(200.0));
        // The 16-connection rows are not the target's: they stay as they were.
        assert_eq!(r.get("rr_p99.9", "dispatchd"), Some(4.0));
        assert_eq!(r.get("rr4_p99.9", "dispatchd"), Some(300.0));
        let line = "Shared-core tail: dispatchd's p99.9 ÷ nftables' on 4 persistent connections \
                    (the target: at most 2): **1.50** (300 against 200 µs).";
        r.mode = "dedicated".into();
        assert!(
            !r.markdown().contains("Shared-core tail"),
            "only the shared table has the target"
        );
        r.mode = "shared".into();
        let md = r.markdown();
        assert!(md.contains(line), "{md}");
        assert!(
            md.contains("| requests (persistent, 4 connections) | latency p99.9 | µs | – | 200 | 300 | – | – | 1.50 |\n"),
            "{md}"
        );
        // Its panel is drawn only once it has values.
        assert!(r.svg().contains("requests on 4 persistent connections"));
        assert!(!sample()
            .svg()
            .contains("requests on 4 persistent connections"));
    }

    #[test]
    fn a_latency_row_is_the_median_of_the_rounds() {
        let mut r = sample();
        // Running medians 10, 5.5, 2: their median (5.5) is not the rounds'.
        for v in [10.0, 1.0, 2.0] {
            r.latency("rr4", "dispatchd", tail(v));
        }
        assert_eq!(r.latency_of("rr4", "dispatchd").unwrap().p99_9, 2.0);
        assert_eq!(r.get("rr4_p99.9", "dispatchd"), Some(2.0));
    }

    #[test]
    fn the_scaling_column_shows_only_when_two_workers_were_measured() {
        let mut r = sample();
        r.set("rr_rate", "dispatchd", 100.0);
        r.set("rr_rate", "nftables", 80.0);
        let md = r.markdown();
        assert!(!md.contains("dispatchd2"), "{md}");
        assert!(
            md.contains("| direct | nftables | dispatchd | bare | dispatchd/direct | dispatchd/nftables |\n"),
            "{md}"
        );
        assert!(
            md.contains("| req/s | – | 80.0 | 100 | – | – | 1.25 |\n"),
            "{md}"
        );
        r.set("rr_rate", "dispatchd2", 150.0);
        let md = r.markdown();
        assert!(
            md.contains("| dispatchd | dispatchd2 | bare | dispatchd/direct | dispatchd/nftables | dispatchd2/dispatchd |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"),
            "{md}"
        );
        assert!(
            md.contains("| req/s | – | 80.0 | 100 | 150 | – | – | 1.25 | 1.50 |\n"),
            "{md}"
        );
    }

    #[test]
    fn generator_rows_show_dispatchd_over_bare_and_each_search() {
        use crate::lossless::Trial;
        let mut r = sample();
        let md = r.markdown();
        assert!(!md.contains("dispatchd ÷ bare"), "{md}");
        assert!(!md.contains("Zero-loss searches"), "{md}");
        assert!(!md.contains("**lossless**"), "{md}");
        r.set("pps_received", "bare", 300.0);
        r.set("big_lossless_mbit", "dispatchd", 1900.0);
        r.set("big_lossless_mbit", "bare", 2000.0);
        let trial = |rate: f64, received| Trial {
            rate,
            sent: rate as u64,
            received,
            seconds: 1.0,
        };
        r.lossless(
            "frames1500",
            "dispatchd",
            Search {
                trials: vec![trial(170_000.0, 160_000), trial(158_334.0, 158_334)],
                best: Some(trial(158_334.0, 158_334)),
                lowest_failure: Some(170_000.0),
            },
        );
        let md = r.markdown();
        assert!(
            md.contains("(the target: at least 0.95): 64 B, received under overload **0.835**; 1500 B, zero-loss **0.950**.\n"),
            "{md}"
        );
        assert!(
            md.contains("- frames1500/dispatchd: 2 trials, 158334 passed, failed: 170000\n"),
            "{md}"
        );
        assert!(
            md.contains(
                "| forwarded packets | highest rate with ≤ 0.1 % loss (best of 2 trials) | pps |"
            ),
            "{md}"
        );
        assert!(
            !md.contains("at the fixed rate, dispatchd − bare"),
            "no cost line without cost rows: {md}"
        );
        r.set("pps_cpu1_ns", "dispatchd", 8000.0);
        r.set("pps_cpu1_ns", "bare", 7900.0);
        r.set("big_cpu1_ns", "dispatchd", 8000.0);
        let md = r.markdown();
        assert!(
            md.contains(
                "at the fixed rate, dispatchd − bare forwarder, ns: 64 B **+100**. At this rate"
            ),
            "{md}"
        );
        let back = Results::from_json(&r.json().unwrap()).unwrap();
        assert_eq!(back.lossless, r.lossless);
    }

    #[test]
    fn earlier_results_are_still_readable() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
        let mut read = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let r = Results::from_json(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(
                    r.latency_of("connections", "direct").is_some(),
                    "{}",
                    path.display()
                );
                assert!(r.svg().contains("<rect x="), "{}", path.display());
                read += 1;
            }
        }
        assert!(read > 0, "no results JSON in {}", dir.display());
    }
}
