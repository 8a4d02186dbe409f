//! The results: a Markdown table, the same numbers as JSON, and a hand-written SVG
//! of the latency percentiles.
use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use super::RunOpts;

pub const VARIANTS: [&str; 4] = ["direct", "nftables", "dispatchd", "bare"];

/// (id, workload, metric, unit, higher is better)
const ROWS: [(&str, &str, &str, &str, bool); 13] = [
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
        "bulk_mbit",
        "bulk echo",
        "throughput (both ways)",
        "Mbit/s",
        true,
    ),
    ("pps_sent", "forwarded packets", "sent", "pps", true),
    (
        "pps_received",
        "forwarded packets",
        "received at s0",
        "pps",
        true,
    ),
    (
        "pps_ratio",
        "forwarded packets",
        "received / sent",
        "",
        true,
    ),
    (
        "outside_cpu",
        "(machine)",
        "CPU used outside the benchmark, whole variant",
        "cores",
        false,
    ),
];

const PCTS: [&str; 5] = ["p50", "p90", "p99", "p99.9", "max"];

pub struct Results {
    header: Vec<(String, String)>,
    values: BTreeMap<(String, String), f64>,
    latencies: BTreeMap<(String, String), [f64; 5]>,
    per_packet: BTreeMap<String, String>,
    ctl_stats: BTreeMap<String, String>,
    notes: Vec<String>,
}

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The value of `"key":` in a JSON document, as text (brackets balanced).
fn json_value<'a>(doc: &'a str, key: &str) -> Option<&'a str> {
    let at = doc.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = doc[at..].trim_start();
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    for (i, c) in rest.char_indices() {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, '\\') => esc = true,
                (false, '"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_str = true,
            '{' | '[' => depth += 1,
            '}' | ']' if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    return Some(&rest[..=i]);
                }
            }
            ',' | '}' | ']' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    Some(rest.trim())
}

/// A top-level number of a JSON document (the last `"key":` in it).
pub fn json_number(doc: &str, key: &str) -> Option<f64> {
    let at = doc.rfind(&format!("\"{key}\":"))?;
    json_value(&doc[at..], key)?.parse().ok()
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

impl Results {
    pub fn new(opts: &RunOpts, stamp: &str) -> Results {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown CPU".into());
        let header = vec![
            ("date".into(), cmd("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])),
            ("run".into(), stamp.to_owned()),
            ("machine".into(), format!("{cpu}, {} cores (nproc), {}", cmd("nproc", &[]), cmd("uname", &["-m"]))),
            ("kernel".into(), cmd("uname", &["-r"])),
            (
                "durations".into(),
                format!(
                    "{} s measured per workload after {} s warm-up{}",
                    opts.seconds,
                    opts.warmup,
                    if opts.quick { " (--quick)" } else { "" }
                ),
            ),
            (
                "load".into(),
                format!(
                    "connections: 64 B echo, {} client threads; rr: {} persistent connections, 64 B request/reply; \
                     bulk: one connection, echo both ways; pps: AF_XDP copy-mode generator on c0, {} tuples, 64 B ACK frames, counted at s0",
                    opts.concurrency, opts.rr_connections, opts.tuples
                ),
            ),
            (
                "cores".into(),
                "2 cores: dispatchd's one worker pinned to core 1 (--cores 1); the packet generator pinned to core 0; \
                 clients, servers, softirqs and dispatchd's management thread share both cores. The kernel variants \
                 forward in the softirq of whichever core sent the frame."
                    .into(),
            ),
        ];
        Results {
            header,
            values: BTreeMap::new(),
            latencies: BTreeMap::new(),
            per_packet: BTreeMap::new(),
            ctl_stats: BTreeMap::new(),
            notes: Vec::new(),
        }
    }

    pub fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    pub fn set(&mut self, id: &str, variant: &str, v: f64) {
        self.values.insert((id.into(), variant.into()), v);
        if id == "pps_received" {
            if let Some(&sent) = self.values.get(&("pps_sent".into(), variant.into())) {
                if sent > 0.0 {
                    self.set("pps_ratio", variant, v / sent);
                }
            }
        }
    }

    pub fn latency(&mut self, workload: &str, variant: &str, l: [f64; 5]) {
        let id = if workload == "rr" { "rr" } else { "conn" };
        self.set(&format!("{id}_p50"), variant, l[0]);
        self.set(&format!("{id}_p99"), variant, l[2]);
        self.set(&format!("{id}_p99.9"), variant, l[3]);
        self.latencies.insert((workload.into(), variant.into()), l);
    }

    pub fn stats_json(&mut self, variant: &str, json: &str) {
        self.ctl_stats
            .insert(variant.into(), json.trim().to_owned());
        if let Some(v) = json_value(json, "per_packet_ns") {
            self.per_packet.insert(variant.into(), v.to_owned());
        } else {
            self.note(format!("{variant}: ctl stats had no per_packet_ns"));
        }
    }

    /// The latency percentiles of a results JSON this harness wrote, enough to
    /// draw its SVG again (`dispatchd-bench svg`).
    pub fn from_json_latencies(json: &str) -> Option<Results> {
        let section = json_value(json, "latency_us")?;
        let mut r = Results {
            header: Vec::new(),
            values: BTreeMap::new(),
            latencies: BTreeMap::new(),
            per_packet: BTreeMap::new(),
            ctl_stats: BTreeMap::new(),
            notes: Vec::new(),
        };
        let body = section.trim().strip_prefix('{')?.strip_suffix('}')?;
        for entry in body.split('}').filter(|e| e.contains(':')) {
            let (name, pcts) = entry.split_once('{')?;
            let name =
                name.trim_matches(|c: char| c == ',' || c == ':' || c.is_whitespace() || c == '"');
            let (workload, variant) = name.split_once('/')?;
            let mut l = [0f64; 5];
            for (i, k) in PCTS.iter().enumerate() {
                l[i] = json_value(&format!("{{{pcts}}}"), k)?.parse().ok()?;
            }
            r.latencies.insert((workload.into(), variant.into()), l);
        }
        Some(r)
    }

    fn get(&self, id: &str, variant: &str) -> Option<f64> {
        self.values.get(&(id.into(), variant.into())).copied()
    }

    pub fn markdown(&self) -> String {
        let mut md = String::from("# dispatchd end-to-end benchmark\n\n");
        for (k, v) in &self.header {
            let _ = writeln!(md, "- **{k}**: {v}");
        }
        md.push_str(
            "\nVariants: **direct** = client to one daemon's own address (198.19.0.11:8080), \
             routed by the dispatcher namespace's kernel, no NAT; **nftables** = `dnat ip to numgen inc mod 4 map` \
             in the dispatcher namespace's prerouting; **dispatchd** = XDP + AF_XDP (copy mode on veth), one worker; \
             **bare** = dispatchd's sockets and rings with no parsing or rewriting (`--bare-forwarder`), \
             packet rate only. Ratios are dispatchd ÷ other: above 1 is better for rates, worse for latencies.\n\n",
        );
        md.push_str(
            "| workload | metric | unit | direct | nftables | dispatchd | bare | dispatchd/direct | dispatchd/nftables |\n\
             | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        );
        for (id, workload, metric, unit, _) in ROWS {
            let cells: Vec<String> = VARIANTS
                .iter()
                .map(|v| self.get(id, v).map_or("–".into(), fmt_num))
                .collect();
            let d = self.get(id, "dispatchd");
            let ratio = |other: &str| match (d, self.get(id, other)) {
                (Some(d), Some(o)) if o > 0.0 && id != "outside_cpu" => format!("{:.2}", d / o),
                _ => "–".into(),
            };
            let _ = writeln!(
                md,
                "| {workload} | {metric} | {unit} | {} | {} | {} |",
                cells.join(" | "),
                ratio("direct"),
                ratio("nftables")
            );
        }
        if !self.per_packet.is_empty() {
            md.push_str("\ndispatchd's own per-packet processing time (ns, `ctl stats --json` → `per_packet_ns`, whole run of the variant):\n\n");
            for (v, h) in &self.per_packet {
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

    pub fn json(&self) -> String {
        let mut j = String::from("{\n  \"header\": {");
        let h: Vec<String> = self
            .header
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
            .collect();
        j.push_str(&h.join(", "));
        j.push_str("},\n  \"rows\": [\n");
        let mut rows = Vec::new();
        for (id, workload, metric, unit, higher) in ROWS {
            let vals: Vec<String> = VARIANTS
                .iter()
                .map(|v| {
                    format!(
                        "{}: {}",
                        json_str(v),
                        self.get(id, v).map_or("null".into(), |x| format!("{x}"))
                    )
                })
                .collect();
            rows.push(format!(
                "    {{\"id\": {}, \"workload\": {}, \"metric\": {}, \"unit\": {}, \"higher_is_better\": {higher}, \"values\": {{{}}}}}",
                json_str(id),
                json_str(workload),
                json_str(metric),
                json_str(unit),
                vals.join(", ")
            ));
        }
        j.push_str(&rows.join(",\n"));
        j.push_str("\n  ],\n  \"latency_us\": {");
        let lat: Vec<String> = self
            .latencies
            .iter()
            .map(|((w, v), l)| {
                let p: Vec<String> = PCTS
                    .iter()
                    .zip(l)
                    .map(|(k, x)| format!("{}: {x}", json_str(k)))
                    .collect();
                format!("{}: {{{}}}", json_str(&format!("{w}/{v}")), p.join(", "))
            })
            .collect();
        j.push_str(&lat.join(", "));
        j.push_str("},\n  \"per_packet_ns\": {");
        let pp: Vec<String> = self
            .per_packet
            .iter()
            .map(|(v, h)| format!("{}: {h}", json_str(v)))
            .collect();
        j.push_str(&pp.join(", "));
        j.push_str("},\n  \"ctl_stats\": {");
        let cs: Vec<String> = self
            .ctl_stats
            .iter()
            .map(|(v, h)| format!("{}: {h}", json_str(v)))
            .collect();
        j.push_str(&cs.join(", "));
        j.push_str("},\n  \"notes\": [");
        let n: Vec<String> = self.notes.iter().map(|n| json_str(n)).collect();
        j.push_str(&n.join(", "));
        j.push_str("]\n}\n");
        j
    }

    /// Grouped bars on a log scale: one panel per workload, one group per
    /// percentile, one bar per variant.
    pub fn svg(&self) -> String {
        const COLORS: [&str; 3] = ["#4477aa", "#ee6677", "#228833"];
        let variants = &VARIANTS[..3];
        let pcts = [0usize, 1, 2, 3];
        let panels = [
            ("connections", "new connections (connect, 64 B echo, close)"),
            ("rr", "requests on persistent connections (64 B)"),
        ];
        let all: Vec<f64> = self
            .latencies
            .values()
            .flat_map(|l| pcts.iter().map(move |&i| l[i]))
            .filter(|&x| x > 0.0)
            .collect();
        let lo = all.iter().copied().fold(f64::MAX, f64::min).max(1.0);
        let hi = all.iter().copied().fold(1.0, f64::max);
        let (lo_exp, hi_exp) = (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        );
        let (w, ph, top, left) = (760.0, 260.0, 50.0, 70.0);
        let pw = w - left - 20.0;
        let height = top + panels.len() as f64 * (ph + 60.0) + 30.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">"
        );
        let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">Client-side latency (µs, log scale) — lower is better</text>",
            w / 2.0
        );
        for (i, v) in variants.iter().enumerate() {
            let x = left + i as f64 * 130.0;
            let _ = writeln!(
                s,
                "<rect x=\"{x}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"42\">{v}</text>",
                COLORS[i],
                x + 16.0
            );
        }
        for (pi, (key, title)) in panels.iter().enumerate() {
            let y0 = top + 20.0 + pi as f64 * (ph + 60.0);
            let ybase = y0 + ph;
            let ypos = |v: f64| {
                let f = (v.max(10f64.powf(lo_exp)).log10() - lo_exp) / (hi_exp - lo_exp);
                ybase - f * ph
            };
            let _ = writeln!(
                s,
                "<text x=\"{left}\" y=\"{}\" font-weight=\"bold\">{title}</text>",
                y0 - 6.0
            );
            let mut e = lo_exp;
            while e <= hi_exp {
                let v = 10f64.powf(e);
                let y = ypos(v);
                let _ = writeln!(
                    s,
                    "<line x1=\"{left}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                    left + pw,
                    left - 6.0,
                    y + 4.0,
                    fmt_num(v)
                );
                e += 1.0;
            }
            let group_w = pw / pcts.len() as f64;
            let bar_w = group_w * 0.8 / variants.len() as f64;
            for (gi, &p) in pcts.iter().enumerate() {
                let gx = left + gi as f64 * group_w + group_w * 0.1;
                for (vi, v) in variants.iter().enumerate() {
                    let Some(l) = self.latencies.get(&(key.to_string(), v.to_string())) else {
                        continue;
                    };
                    let x = gx + vi as f64 * bar_w;
                    let y = ypos(l[p]);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{}\"><title>{v} {} {} µs</title></rect>",
                        bar_w - 2.0,
                        ybase - y,
                        COLORS[vi],
                        PCTS[p],
                        l[p]
                    );
                    let _ = writeln!(
                        s,
                        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
                        x + (bar_w - 2.0) / 2.0,
                        y - 3.0,
                        fmt_num(l[p])
                    );
                }
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
                    gx + group_w * 0.4,
                    ybase + 16.0,
                    PCTS[p]
                );
            }
            let _ = writeln!(
                s,
                "<line x1=\"{left}\" y1=\"{ybase}\" x2=\"{}\" y2=\"{ybase}\" stroke=\"black\"/>",
                left + pw
            );
        }
        s.push_str("</svg>\n");
        s
    }
}
