//! Rendering the numbers: `ctl stats|conns|backends` as text or JSON (GET
//! /metrics is [`super::metrics`]).
use std::{fmt::Write, net::SocketAddr};

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

use super::{
    backends::Backend,
    conntrack::{BackendConns, ConnInfo, Phase, RecoveryCounts},
    ctl::Format,
    health::Health,
    icmp::IcmpStats,
    nexthops::HopStats,
    state::Override,
};
use crate::{
    config::{fmt_status, ProbeKind},
    flow::KeyFamily,
    ids::WorkerId,
    neigh::{fmt_mac, DaemonHop, NetlinkStats},
    packet::DropReason,
    queues::LinkWatch,
    stats::{SocketStats, WorkerDrop, WorkerStats},
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

/// A setting the file changed that only a restart applies.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PendingKey {
    pub key: &'static str,
    pub running: String,
    pub file: String,
}

/// What became of the SIGHUP reloads.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct ReloadCounts {
    pub success: u64,
    pub failure: u64,
    /// Unix time of the last successful load (start-up counts as one).
    pub last_success_unix: f64,
}

/// Everything `ctl stats` shows, gathered at one moment.
pub struct StatsSnapshot<'a> {
    pub workers: &'a [std::sync::Arc<WorkerStats>],
    pub xdp: Option<[u64; COUNTER_NAMES.len()]>,
    pub connections: usize,
    /// Of `connections`, the UDP flows.
    pub udp_flows: usize,
    pub ignored_events: u64,
    /// What became of the records made by recovery (confirmed, expired).
    pub recovery: RecoveryCounts,
    /// The connection tracker's timer entries, live and stale.
    pub timer_entries: usize,
    /// The management loop's longest round so far (ns): handling what one
    /// wake-up brought.
    pub loop_round_max_ns: u64,
    /// The same over the last second.
    pub loop_round_max_1s_ns: u64,
    /// ICMP errors the loop translated for daemons, or not.
    pub icmp: IcmpStats,
    /// The front and back interfaces: RX queues seen now and served, MTU.
    pub links: &'a [LinkWatch],
    /// Changes of a queue count or MTU seen since start.
    pub link_changes: u64,
    /// Probes that made the kernel resolve clients' next hops.
    pub next_hops: HopStats,
    /// Probes through the back that made the kernel resolve daemons' next
    /// hops (those no health probe resolves).
    pub daemon_next_hops: HopStats,
    /// What the loop did with rtnetlink (the daemons' routes and hops).
    pub netlink: NetlinkStats,
    /// Whether the instance is ready for traffic (see [`super::ready`]).
    pub ready: bool,
    /// Settings the file changed that wait for a restart.
    pub pending_restart: &'a [PendingKey],
    pub reloads: ReloadCounts,
}

fn side(s: &SocketStats) -> &'static str {
    if s.front {
        "front"
    } else {
        "back"
    }
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

const WORKER_FIELDS: usize = 38;

fn worker_fields(s: &WorkerStats) -> [(&'static str, u64); WORKER_FIELDS] {
    [
        ("rx_front", s.rx_front.get()),
        ("rx_back", s.rx_back.get()),
        ("tx_back", s.tx_back.get()),
        ("tx_front", s.tx_front.get()),
        ("new_flows", s.new_flows.get()),
        ("recovered", s.recovered.get()),
        ("flows", s.flows.get()),
        ("table6_capacity", s.table6_capacity.get()),
        ("umem_huge_page_bytes", s.umem_huge_page_bytes.get()),
        ("invalid", s.invalid_total()),
        ("dropped", s.dropped_total()),
        (
            "table_full",
            s.dropped[WorkerDrop::TableFull as usize].get(),
        ),
        ("events_deferred", s.events_deferred.get()),
        ("held_back", s.held_back.get()),
        ("events_dropped", s.events_dropped.get()),
        ("aged_out", s.aged_out.get()),
        ("round_max_ns", s.round_max_ns.get()),
        ("round_max_1s_ns", s.round_max_1s_ns.get()),
        ("rst_ignored", s.rst_ignored.get()),
        ("commands", s.commands.get()),
        ("batches", s.batches.get()),
        ("wakeups", s.wakeups.get()),
        ("sleeps", s.sleeps.get()),
        ("loop_wakes", s.loop_wakes.get()),
        ("command_wakes", s.command_wakes.get()),
        ("tx_resent_kicks", s.tx_resent_kicks.get()),
        ("xsk_rx_ring_full", s.xsk_rx_ring_full.get()),
        ("xsk_fill_ring_empty", s.xsk_fill_ring_empty.get()),
        ("xsk_rx_dropped", s.xsk_rx_dropped.get()),
        ("xsk_invalid_descs", s.xsk_invalid_descs.get()),
        ("icmp_to_loop", s.icmp_to_loop.get()),
        ("icmp_to_daemon", s.icmp_to_daemon.get()),
        ("icmp_to_client", s.icmp_to_client.get()),
        ("icmp_invalid", s.icmp_invalid_total()),
        ("mss_clamped", s.mss_clamped.get()),
        ("tracked_inserted", s.tracked_inserted.get()),
        ("tracked_removed", s.tracked_removed.get()),
        ("tracked_failed", s.tracked_failed.get()),
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
        for sock in w.sockets.iter() {
            let _ = writeln!(
                out,
                "  {} queue {}: rx {} tx {} kernel_drops {}",
                side(sock),
                sock.queue,
                sock.rx.get(),
                sock.tx.get(),
                sock.kernel_drops.get()
            );
        }
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
        for (reason, n) in w.icmp_invalid_by_reason() {
            if n > 0 {
                let _ = writeln!(out, "  invalid {reason}: {n}");
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
    let icmp: Vec<String> = s
        .icmp
        .fields()
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "icmp to daemons: {}", icmp.join(" "));
    let links: Vec<String> = s
        .links
        .iter()
        .map(|l| {
            format!(
                "{} {} seen {} served {} mtu {}",
                l.facts.role, l.facts.name, l.facts.rx_queues, l.served, l.facts.mtu
            )
        })
        .collect();
    for (what, h) in [
        ("next hops", s.next_hops),
        ("daemon next hops", s.daemon_next_hops),
    ] {
        let _ = writeln!(
            out,
            "{what}: probes_sent {} probes_suppressed {} probe_errors {}",
            h.probes_sent, h.probes_suppressed, h.probe_errors
        );
    }
    let netlink: Vec<String> = s
        .netlink
        .fields()
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(out, "netlink: {}", netlink.join(" "));
    let _ = writeln!(
        out,
        "rx queues: {}; changes {}{}",
        links.join(", "),
        s.link_changes,
        if s.links.iter().any(LinkWatch::unserved) {
            " (QUEUES WITHOUT A SOCKET: restart to serve them)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "connections {} udp_flows {} ignored_events {} timer_entries {} loop_round_max_ns {} loop_round_max_1s_ns {}",
        s.connections, s.udp_flows, s.ignored_events, s.timer_entries, s.loop_round_max_ns, s.loop_round_max_1s_ns
    );
    let _ = writeln!(
        out,
        "recovered records: confirmed {} expired {}",
        s.recovery.confirmed, s.recovery.expired
    );
    let _ = writeln!(
        out,
        "reloads: success {} failure {}",
        s.reloads.success, s.reloads.failure
    );
    let pending: Vec<String> = s
        .pending_restart
        .iter()
        .map(|p| format!("{} (running {}, file {})", p.key, p.running, p.file))
        .collect();
    let _ = writeln!(
        out,
        "pending restart: {}",
        if pending.is_empty() {
            "none".to_owned()
        } else {
            pending.join(", ")
        }
    );
    out
}

/// Named numbers as a JSON object, in the order given.
struct Fields<'a>(&'a [(&'a str, u64)]);

impl Serialize for Fields<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// One socket of a worker. Its keys differ from the worker's, so that summing
/// a worker key over the document does not count a socket's share twice.
#[derive(Serialize)]
struct SocketJson {
    side: &'static str,
    queue: u32,
    rx: u64,
    tx: u64,
    kernel_drops: u64,
}

#[derive(Serialize)]
struct WorkerJson<'a> {
    worker: usize,
    #[serde(flatten)]
    fields: Fields<'a>,
    invalid_by_reason: Fields<'a>,
    dropped_by_reason: Fields<'a>,
    icmp_invalid_by_reason: Fields<'a>,
    sockets: Vec<SocketJson>,
}

/// An interface's RX queues: seen now, served since start.
#[derive(Serialize)]
struct LinkJson<'a> {
    interface: &'a str,
    seen: u32,
    served: u32,
    unserved: u32,
    mtu: u32,
}

#[derive(Serialize)]
struct QueuesJson<'a> {
    front: Option<LinkJson<'a>>,
    back: Option<LinkJson<'a>>,
    changes: u64,
}

fn link_json(l: &LinkWatch) -> LinkJson<'_> {
    LinkJson {
        interface: &l.facts.name,
        seen: l.facts.rx_queues,
        served: l.served,
        unserved: l.facts.rx_queues.saturating_sub(l.served),
        mtu: l.facts.mtu,
    }
}

#[derive(Serialize)]
struct StatsJson<'a> {
    workers: Vec<WorkerJson<'a>>,
    queues: QueuesJson<'a>,
    per_packet_ns: Fields<'a>,
    batch_size: Fields<'a>,
    xdp: Option<Fields<'a>>,
    /// ICMP errors from the front, as the loop handled them.
    icmp: IcmpStats,
    next_hops: HopStats,
    daemon_next_hops: HopStats,
    /// rtnetlink: notifications handled, route requests, resyncs, faults.
    netlink: NetlinkStats,
    connections: usize,
    /// Of `connections`, the UDP flows.
    udp_flows: usize,
    ignored_events: u64,
    /// Records made by recovery: proven by the client, or expired unproven.
    recovery: RecoveryCounts,
    timer_entries: usize,
    loop_round_max_ns: u64,
    loop_round_max_1s_ns: u64,
    reloads: ReloadCounts,
    /// Settings the file changed that only a restart applies.
    pending_restart: &'a [PendingKey],
}

/// One JSON document and a newline.
fn json_line(value: &impl Serialize) -> String {
    let mut text = serde_json::to_string(value).expect("plain data serializes");
    text.push('\n');
    text
}

pub fn stats_json(s: &StatsSnapshot<'_>) -> String {
    struct PerWorker<'w> {
        fields: [(&'static str, u64); WORKER_FIELDS],
        invalid: Vec<(&'static str, u64)>,
        dropped: Vec<(&'static str, u64)>,
        icmp_invalid: Vec<(&'static str, u64)>,
        sockets: &'w [SocketStats],
    }
    let per_worker: Vec<PerWorker> = s
        .workers
        .iter()
        .map(|w| PerWorker {
            fields: worker_fields(w),
            invalid: DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), w.invalid[r.index()].get()))
                .collect(),
            dropped: WorkerDrop::ALL
                .iter()
                .map(|d| (d.as_str(), w.dropped[*d as usize].get()))
                .collect(),
            icmp_invalid: w.icmp_invalid_by_reason().collect(),
            sockets: &w.sockets,
        })
        .collect();
    let link = |front: bool| {
        s.links
            .iter()
            .find(|l| (l.facts.role == crate::xdp::Side::Front) == front)
            .map(link_json)
    };
    let latency = percentile_values(&merged(s.workers, |w| &w.latency_ns));
    let batches = percentile_values(&merged(s.workers, |w| &w.batch_sizes));
    let xdp: Option<Vec<(&str, u64)>> = s
        .xdp
        .map(|c| COUNTER_NAMES.iter().copied().zip(c).collect());
    json_line(&StatsJson {
        workers: per_worker
            .iter()
            .enumerate()
            .map(|(worker, w)| WorkerJson {
                worker,
                fields: Fields(&w.fields),
                invalid_by_reason: Fields(&w.invalid),
                dropped_by_reason: Fields(&w.dropped),
                icmp_invalid_by_reason: Fields(&w.icmp_invalid),
                sockets: w
                    .sockets
                    .iter()
                    .map(|sock| SocketJson {
                        side: side(sock),
                        queue: sock.queue,
                        rx: sock.rx.get(),
                        tx: sock.tx.get(),
                        kernel_drops: sock.kernel_drops.get(),
                    })
                    .collect(),
            })
            .collect(),
        queues: QueuesJson {
            front: link(true),
            back: link(false),
            changes: s.link_changes,
        },
        per_packet_ns: Fields(&latency),
        batch_size: Fields(&batches),
        xdp: xdp.as_deref().map(Fields),
        icmp: s.icmp,
        next_hops: s.next_hops,
        daemon_next_hops: s.daemon_next_hops,
        netlink: s.netlink,
        connections: s.connections,
        udp_flows: s.udp_flows,
        ignored_events: s.ignored_events,
        recovery: s.recovery,
        timer_entries: s.timer_entries,
        loop_round_max_ns: s.loop_round_max_ns,
        loop_round_max_1s_ns: s.loop_round_max_1s_ns,
        reloads: s.reloads,
        pending_restart: s.pending_restart,
    })
}

/// One tracked connection of either family, as `ctl conns` lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listed {
    pub client: SocketAddr,
    pub service: SocketAddr,
    pub protocol: u8,
    pub daemon: SocketAddr,
    pub worker: WorkerId,
    pub phase: Phase,
    pub opened_ns: u64,
}

impl<K: KeyFamily> From<ConnInfo<K>> for Listed {
    fn from(c: ConnInfo<K>) -> Self {
        Listed {
            client: c.key.client_addr(),
            service: c.key.service_addr(),
            protocol: c.key.protocol(),
            daemon: c.daemon.into(),
            worker: c.worker,
            phase: c.phase,
            opened_ns: c.opened_ns,
        }
    }
}

/// One row of `ctl conns`.
#[derive(Serialize)]
struct ConnRow {
    client: SocketAddr,
    service: SocketAddr,
    /// "tcp" or "udp".
    protocol: &'static str,
    daemon: SocketAddr,
    worker: WorkerId,
    state: String,
    age_ms: u64,
}

fn conn_row(c: &Listed, now_ns: u64) -> ConnRow {
    ConnRow {
        client: c.client,
        service: c.service,
        protocol: if c.protocol == crate::config::Protocol::Udp.number() {
            "udp"
        } else {
            "tcp"
        },
        daemon: c.daemon,
        worker: c.worker,
        state: format!("{:?}", c.phase),
        age_ms: now_ns.saturating_sub(c.opened_ns) / 1_000_000,
    }
}

/// `ctl conns` in JSON: the first rows, and how many there are.
#[derive(Serialize)]
struct ConnsJson {
    connections: Vec<ConnRow>,
    /// Connections that match the request's filters.
    matched: usize,
    tracked: usize,
}

/// The first `limit` of `conns`, and how many there are.
pub fn first_of(conns: impl Iterator<Item = Listed>, limit: usize) -> (Vec<Listed>, usize) {
    let mut first = Vec::new();
    let mut n = 0;
    for c in conns {
        if first.len() < limit {
            first.push(c);
        }
        n += 1;
    }
    (first, n)
}

/// `ctl conns`: at most `limit` of `conns` (which `matched` of the `tracked`
/// connections match the request), each with its daemon, owner, phase and age.
/// Only the rows shown are rendered, so a large table costs no string per
/// record.
pub fn conns(
    conns: impl Iterator<Item = Listed>,
    matched: usize,
    tracked: usize,
    limit: usize,
    now_ns: u64,
    format: Format,
) -> String {
    let rows: Vec<ConnRow> = conns.take(limit).map(|c| conn_row(&c, now_ns)).collect();
    if format == Format::Json {
        return json_line(&ConnsJson {
            connections: rows,
            matched,
            tracked,
        });
    }
    let mut out = String::new();
    for r in &rows {
        let _ = writeln!(
            out,
            "{} -> {}{} -> {} worker {} {} age {} ms",
            r.client,
            r.service,
            if r.protocol == "udp" { "/udp" } else { "" },
            r.daemon,
            r.worker,
            r.state,
            r.age_ms
        );
    }
    let _ = writeln!(
        out,
        "{} shown of {matched} matching of {tracked} tracked connections",
        rows.len()
    );
    out
}

/// One row of `ctl backends`.
#[derive(Serialize)]
struct BackendRow {
    daemon: SocketAddr,
    service: SocketAddr,
    /// Its service's protocol: "tcp" or "udp".
    protocol: &'static str,
    health: &'static str,
    draining: bool,
    state: String,
    /// Established and half-closed connections, as IPVS counts them.
    active: u32,
    /// Half-open and closing connections.
    inactive: u32,
    /// The MAC its frames go to; none while unresolved or not routed out of
    /// the back.
    next_hop: Option<String>,
    /// The hop the kernel routes it to out of the back: the daemon itself, or
    /// a gateway.
    via: Option<std::net::IpAddr>,
    /// Why its route is no way to it (not out of the back, none at all).
    route_problem: Option<String>,
    /// The weight it runs with (the override's, else the config's); none
    /// for a daemon a reload removed.
    weight: Option<u32>,
    /// What the operator changed (`ctl drain`, `ctl weight`), kept over the
    /// config until cleared; none if nothing.
    #[serde(rename = "override")]
    overridden: Option<OverrideRow>,
    /// Its service's health check, as it runs now.
    check: CheckRow,
    /// Probes that passed and failed since it was first configured.
    probes_passed: u64,
    probes_failed: u64,
}

/// A daemon's health check in `ctl backends --json`.
#[derive(Serialize)]
struct CheckRow {
    kind: &'static str,
    /// The address probed (its own, or on the service's check port).
    target: SocketAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    /// The codes that pass, as written in the file (`200`, `200,300-399`).
    status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    interval_ms: u128,
    timeout_ms: u128,
    rise: u32,
    fall: u32,
}

fn check_row(b: &Backend) -> CheckRow {
    let (kind, path, status, host) = match &b.check.kind {
        ProbeKind::Tcp => ("tcp", None, None, None),
        ProbeKind::Http(h) => (
            "http",
            Some(h.path.clone()),
            Some(fmt_status(&h.status)),
            h.host.clone(),
        ),
    };
    let s = &b.check.schedule;
    CheckRow {
        kind,
        target: b.probe_target(),
        path,
        status,
        host,
        interval_ms: s.interval.as_millis(),
        timeout_ms: s.timeout.as_millis(),
        rise: s.rise,
        fall: s.fall,
    }
}

#[derive(Serialize)]
struct OverrideRow {
    drained: bool,
    weight: Option<u32>,
}

/// What `ctl backends` shows of a daemon's settings besides its state.
#[derive(Clone, Copy, Debug, Default)]
pub struct BackendSetting {
    /// The weight it runs with; none for a retired daemon.
    pub weight: Option<u32>,
    pub overridden: Override,
}

impl BackendSetting {
    /// `none`, `drained`, `weight=3` or `drained,weight=3`.
    fn override_text(&self) -> String {
        let o = &self.overridden;
        let words: Vec<String> = o
            .drained
            .then(|| "drained".to_owned())
            .into_iter()
            .chain(o.weight.map(|w| format!("weight={w}")))
            .collect();
        if words.is_empty() {
            "none".to_owned()
        } else {
            words.join(",")
        }
    }
}

fn backend_row(
    b: &Backend,
    hop: Option<&DaemonHop>,
    back: &str,
    conns: BackendConns,
    setting: BackendSetting,
) -> BackendRow {
    BackendRow {
        daemon: b.addr,
        service: b.service,
        protocol: b.protocol.as_str(),
        health: if b.health.health() == Health::Up {
            "up"
        } else {
            "down"
        },
        draining: b.draining,
        state: if b.retired {
            "retired".to_owned()
        } else {
            format!("{:?}", b.effective()).to_lowercase()
        },
        active: conns.active,
        inactive: conns.inactive,
        next_hop: hop.and_then(DaemonHop::usable).map(fmt_mac),
        via: hop.and_then(DaemonHop::hop),
        route_problem: hop.and_then(|h| h.reach.why_not(back)),
        check: check_row(b),
        probes_passed: b.probes.passed,
        probes_failed: b.probes.failed,
        weight: setting.weight,
        overridden: (!setting.overridden.is_none()).then_some(OverrideRow {
            drained: setting.overridden.drained,
            weight: setting.overridden.weight,
        }),
    }
}

/// `ctl backends`: each daemon's health, drain flag, effective state,
/// connection counts and next hop (its MAC and the hop it is routed to, or
/// why its route is no way to it), weight and override; `conns` gives the
/// counts of a daemon, `settings` its weight and override, `back` names the
/// back interface.
pub fn backends_text<'a>(
    backends: impl Iterator<Item = (&'a Backend, Option<&'a DaemonHop>)>,
    back: &str,
    conns: impl Fn(&Backend) -> BackendConns,
    settings: impl Fn(&Backend) -> BackendSetting,
) -> String {
    let mut out = String::new();
    for (b, hop) in backends {
        let setting = settings(b);
        let r = backend_row(b, hop, back, conns(b), setting);
        let next_hop = match (&r.next_hop, r.via, &r.route_problem) {
            (Some(mac), Some(via), _) => format!("{mac} via {via}"),
            (None, Some(via), _) => format!("unresolved via {via}"),
            (_, None, Some(problem)) => format!("none ({problem})"),
            _ => "unknown".to_owned(),
        };
        let weight = r.weight.map_or("-".to_owned(), |w| w.to_string());
        let _ = writeln!(
            out,
            "{} service {} health {} state {} active {} inactive {} weight {weight} override {} next_hop {next_hop}",
            r.daemon,
            crate::config::service_name(r.service, b.protocol),
            r.health,
            r.state,
            r.active,
            r.inactive,
            setting.override_text()
        );
    }
    if out.is_empty() {
        out.push('\n');
    }
    out
}

pub fn backends_json<'a>(
    backends: impl Iterator<Item = (&'a Backend, Option<&'a DaemonHop>)>,
    back: &str,
    conns: impl Fn(&Backend) -> BackendConns,
    settings: impl Fn(&Backend) -> BackendSetting,
) -> String {
    json_line(
        &backends
            .map(|(b, hop)| backend_row(b, hop, back, conns(b), settings(b)))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::{
        config::Config,
        control::backends::Backends,
        neigh::{DaemonHop, Reach},
    };

    /// `ctl backends` of a dual-stack configuration: IPv6 daemons, services,
    /// hops and probe targets in brackets where a port follows.
    #[test]
    fn ipv6_daemons_are_shown_in_brackets() {
        let config = Config::from_toml_str(
            "front = \"l0\"\nback = \"l1\"\n\
             [[service]]\naddress = \"198.18.0.100:80\"\nbackends = [\"198.19.0.11:8080\"]\n\
             [[service]]\naddress = \"[2001:2:0:1::100]:53\"\nprotocol = \"udp\"\n\
             backends = [\"[2001:2:0:2::11]:5353@2\"]\n\
             [[service]]\naddress = \"[2001:2:0:1::100]:80\"\n\
             backends = [\"[2001:2:0:3::11]:8080\"]\n\
             [service.health]\nport = 9000\n",
        )
        .unwrap();
        let backends = Backends::new(&config, &[], &Backends::default(), |_| true, 0);
        let router: IpAddr = "fe80::1".parse().unwrap();
        let hops = [
            DaemonHop {
                addr: "198.19.0.11".parse().unwrap(),
                reach: Reach::Back {
                    hop: "198.19.0.11".parse().unwrap(),
                },
                mac: Some([2, 0, 0, 0, 0, 1]),
            },
            DaemonHop {
                addr: "2001:2:0:2::11".parse().unwrap(),
                reach: Reach::Back {
                    hop: "2001:2:0:2::11".parse().unwrap(),
                },
                mac: None,
            },
            DaemonHop {
                addr: "2001:2:0:3::11".parse().unwrap(),
                reach: Reach::Back { hop: router },
                mac: Some([2, 0, 0, 0, 0, 2]),
            },
        ];
        let rows = || backends.iter().zip(hops.iter().map(Some));
        let weights: Vec<(SocketAddr, u32)> = config
            .all_daemons()
            .map(|(_, _, b)| (b.addr, b.weight))
            .collect();
        let settings = |b: &Backend| BackendSetting {
            weight: weights.iter().find(|(a, _)| *a == b.addr).map(|(_, w)| *w),
            overridden: Override::default(),
        };
        let text = backends_text(rows(), "l1", |_| BackendConns::default(), settings);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "198.19.0.11:8080 service 198.18.0.100:80 health up state up active 0 inactive 0 \
                 weight 1 override none next_hop 02:00:00:00:00:01 via 198.19.0.11",
                "[2001:2:0:2::11]:5353 service [2001:2:0:1::100]:53/udp health up state up \
                 active 0 inactive 0 weight 2 override none next_hop unresolved via 2001:2:0:2::11",
                "[2001:2:0:3::11]:8080 service [2001:2:0:1::100]:80 health up state up active 0 \
                 inactive 0 weight 1 override none next_hop 02:00:00:00:00:02 via fe80::1",
            ]
        );
        let json: serde_json::Value = serde_json::from_str(&backends_json(
            rows(),
            "l1",
            |_| BackendConns::default(),
            settings,
        ))
        .unwrap();
        let last = &json[2];
        assert_eq!(last["daemon"], "[2001:2:0:3::11]:8080");
        assert_eq!(last["service"], "[2001:2:0:1::100]:80");
        assert_eq!(last["via"], "fe80::1");
        assert_eq!(last["check"]["target"], "[2001:2:0:3::11]:9000");
    }
}
