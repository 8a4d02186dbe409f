//! Rendering the numbers: `ctl stats|conns|backends` as text or JSON, and the
//! Prometheus text format. Values are numbers and addresses only, so the JSON is
//! written by hand without escaping concerns.
use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::{
    packet::DropReason,
    stats::{WorkerDrop, WorkerStats},
    xdp::COUNTER_NAMES,
};

/// Percentiles reported everywhere, as (label, quantile).
pub const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

/// Everything `ctl stats` shows, gathered at one moment.
pub struct StatsSnapshot<'a> {
    pub workers: &'a [std::sync::Arc<WorkerStats>],
    pub xdp: Option<[u64; COUNTER_NAMES.len()]>,
    pub connections: usize,
    pub ignored_events: u64,
}

fn merged(
    workers: &[std::sync::Arc<WorkerStats>],
    pick: impl Fn(&WorkerStats) -> &crate::stats::AtomicHistogram,
) -> Histogram<u64> {
    let mut h = Histogram::new(3).expect("3 significant figures is valid");
    for w in workers {
        pick(w).merge_into(&mut h);
    }
    h
}

fn worker_fields(s: &WorkerStats) -> [(&'static str, u64); 18] {
    [
        ("rx_front", s.rx_front.get()),
        ("rx_back", s.rx_back.get()),
        ("tx_back", s.tx_back.get()),
        ("tx_front", s.tx_front.get()),
        ("new_flows", s.new_flows.get()),
        ("flows", s.flows.get()),
        ("invalid", s.invalid_total()),
        ("dropped", s.dropped_total()),
        (
            "table_full",
            s.dropped[WorkerDrop::TableFull as usize].get(),
        ),
        ("events_dropped", s.events_dropped.get()),
        ("commands", s.commands.get()),
        ("batches", s.batches.get()),
        ("wakeups", s.wakeups.get()),
        ("sleeps", s.sleeps.get()),
        ("xsk_rx_ring_full", s.xsk_rx_ring_full.get()),
        ("xsk_fill_ring_empty", s.xsk_fill_ring_empty.get()),
        ("xsk_rx_dropped", s.xsk_rx_dropped.get()),
        ("xsk_invalid_descs", s.xsk_invalid_descs.get()),
    ]
}

fn percentile_values(h: &Histogram<u64>) -> Vec<(&'static str, u64)> {
    let mut v: Vec<(&str, u64)> = PERCENTILES
        .iter()
        .map(|&(l, q)| (l, h.value_at_quantile(q)))
        .collect();
    v.push(("max", h.max()));
    v.push(("count", h.len()));
    v
}

pub fn stats_text(s: &StatsSnapshot<'_>) -> String {
    let mut out = String::new();
    for (q, w) in s.workers.iter().enumerate() {
        let fields: Vec<String> = worker_fields(w)
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "worker {q}: {}", fields.join(" "));
        for r in DropReason::ALL {
            let n = w.invalid[r.index()].get();
            if n > 0 {
                let _ = writeln!(out, "  invalid {}: {n}", r.as_str());
            }
        }
        for d in WorkerDrop::ALL {
            let n = w.dropped[d as usize].get();
            if n > 0 {
                let _ = writeln!(out, "  dropped {}: {n}", d.as_str());
            }
        }
    }
    let line = |h: &Histogram<u64>| {
        percentile_values(h)
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let _ = writeln!(
        out,
        "per-packet ns: {}",
        line(&merged(s.workers, |w| &w.latency_ns))
    );
    let _ = writeln!(
        out,
        "batch size: {}",
        line(&merged(s.workers, |w| &w.batch_sizes))
    );
    if let Some(c) = s.xdp {
        let parts: Vec<String> = COUNTER_NAMES
            .iter()
            .zip(c)
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let _ = writeln!(out, "xdp: {}", parts.join(" "));
    }
    let _ = writeln!(
        out,
        "connections {} ignored_events {}",
        s.connections, s.ignored_events
    );
    out
}

fn json_object(pairs: &[(&str, u64)]) -> String {
    let body: Vec<String> = pairs.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    format!("{{{}}}", body.join(","))
}

pub fn stats_json(s: &StatsSnapshot<'_>) -> String {
    let workers: Vec<String> = s
        .workers
        .iter()
        .enumerate()
        .map(|(q, w)| {
            let mut fields = vec![("queue", q as u64)];
            fields.extend(worker_fields(w));
            let base = json_object(&fields);
            let invalid: Vec<(&str, u64)> = DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), w.invalid[r.index()].get()))
                .collect();
            let dropped: Vec<(&str, u64)> = WorkerDrop::ALL
                .iter()
                .map(|d| (d.as_str(), w.dropped[*d as usize].get()))
                .collect();
            format!(
                "{},\"invalid_by_reason\":{},\"dropped_by_reason\":{}}}",
                base.trim_end_matches('}'),
                json_object(&invalid),
                json_object(&dropped)
            )
        })
        .collect();
    let xdp = s
        .xdp
        .map(|c| json_object(&COUNTER_NAMES.iter().copied().zip(c).collect::<Vec<_>>()))
        .unwrap_or_else(|| "null".into());
    format!(
        "{{\"workers\":[{}],\"per_packet_ns\":{},\"batch_size\":{},\"xdp\":{},\"connections\":{},\"ignored_events\":{}}}\n",
        workers.join(","),
        json_object(&percentile_values(&merged(s.workers, |w| &w.latency_ns))),
        json_object(&percentile_values(&merged(s.workers, |w| &w.batch_sizes))),
        xdp,
        s.connections,
        s.ignored_events
    )
}

pub fn prometheus(s: &StatsSnapshot<'_>) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(
            out,
            "# HELP dispatchd_{name} {help}\n# TYPE dispatchd_{name} counter"
        );
        for (labels, v) in rows {
            let _ = writeln!(out, "dispatchd_{name}{{{labels}}} {v}");
        }
    };
    let per_worker = |f: &dyn Fn(&WorkerStats) -> u64| -> Vec<(String, u64)> {
        s.workers
            .iter()
            .enumerate()
            .map(|(q, w)| (format!("worker=\"{q}\""), f(w)))
            .collect()
    };
    counter(
        "rx_front_packets_total",
        "Frames received on the front socket.",
        per_worker(&|w| w.rx_front.get()),
    );
    counter(
        "rx_back_packets_total",
        "Frames received on the back socket.",
        per_worker(&|w| w.rx_back.get()),
    );
    counter(
        "tx_back_packets_total",
        "Frames sent to daemons.",
        per_worker(&|w| w.tx_back.get()),
    );
    counter(
        "tx_front_packets_total",
        "Frames sent to clients.",
        per_worker(&|w| w.tx_front.get()),
    );
    counter(
        "new_flows_total",
        "Connections accepted.",
        per_worker(&|w| w.new_flows.get()),
    );
    counter(
        "events_dropped_total",
        "Worker events lost to a full queue.",
        per_worker(&|w| w.events_dropped.get()),
    );
    let mut rows = Vec::new();
    for (q, w) in s.workers.iter().enumerate() {
        for r in DropReason::ALL {
            rows.push((
                format!("worker=\"{q}\",reason=\"{}\"", r.as_str()),
                w.invalid[r.index()].get(),
            ));
        }
        for d in WorkerDrop::ALL {
            rows.push((
                format!("worker=\"{q}\",reason=\"{}\"", d.as_str()),
                w.dropped[d as usize].get(),
            ));
        }
    }
    counter("dropped_packets_total", "Frames dropped, by reason.", rows);
    let mut rows = Vec::new();
    for (q, w) in s.workers.iter().enumerate() {
        for (reason, c) in [
            ("rx_ring_full", &w.xsk_rx_ring_full),
            ("fill_ring_empty", &w.xsk_fill_ring_empty),
            ("rx_dropped", &w.xsk_rx_dropped),
            ("invalid_descs", &w.xsk_invalid_descs),
        ] {
            rows.push((format!("worker=\"{q}\",reason=\"{reason}\""), c.get()));
        }
    }
    counter(
        "xsk_kernel_drops_total",
        "Frames the kernel's AF_XDP sockets dropped before a worker saw them (refreshed each second).",
        rows,
    );
    if let Some(c) = s.xdp {
        let rows = COUNTER_NAMES
            .iter()
            .zip(c)
            .map(|(n, v)| (format!("verdict=\"{n}\""), v))
            .collect();
        counter("xdp_verdicts_total", "Verdicts of the XDP program.", rows);
    }
    let _ = writeln!(
        out,
        "# HELP dispatchd_connections Connections tracked.\n# TYPE dispatchd_connections gauge"
    );
    let _ = writeln!(out, "dispatchd_connections {}", s.connections);
    let h = merged(s.workers, |w| &w.latency_ns);
    let _ = writeln!(
        out,
        "# HELP dispatchd_packet_processing_ns Per-packet processing time.\n# TYPE dispatchd_packet_processing_ns summary"
    );
    for (label, q) in PERCENTILES {
        let _ = writeln!(
            out,
            "dispatchd_packet_processing_ns{{quantile=\"{q}\",label=\"{label}\"}} {}",
            h.value_at_quantile(q)
        );
    }
    let _ = writeln!(out, "dispatchd_packet_processing_ns_count {}", h.len());
    out
}
