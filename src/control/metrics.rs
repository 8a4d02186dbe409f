//! GET /metrics: the Prometheus text format (0.0.4), written by the
//! `prometheus-client` crate's encoder from what the loop knows at the scrape.
//!
//! Values are taken, not kept: the workers count in their own atomics and the
//! loop in its state, so a scrape registers one collector over a copy of them
//! in a fresh registry and encodes it. Names follow Prometheus' conventions:
//! base units (seconds, bytes), counters end in `_total` (the encoder adds
//! it), histograms have `_bucket`, `_sum` and `_count`.
use std::{net::SocketAddr, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::Registry,
};

use super::{
    nexthops::HopStats,
    report::{ReloadCounts, StatsSnapshot},
    traffic::Totals,
};
use crate::{
    config::{service_name, Protocol},
    packet::DropReason,
    stats::{AtomicHistogram, SocketStats, WorkerDrop, WorkerStats},
    xdp::{COUNTER_NAMES, PASS_REASONS},
};

/// `Content-Type` of the page.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The metrics endpoint's answer: `body` in the Prometheus text format.
pub fn http_metrics(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        CONTENT_TYPE,
        body.len()
    )
}

/// One daemon as /metrics shows it.
#[derive(Debug)]
pub struct BackendMetric {
    pub service: SocketAddr,
    /// Its service's protocol.
    pub protocol: Protocol,
    pub daemon: SocketAddr,
    /// Its health check passes.
    pub up: bool,
    pub weight: u32,
    /// Drained by the operator, or retired by a reload.
    pub drained: bool,
    /// Removed by a reload, its connections going on: not one of its
    /// service's daemons any more.
    pub retired: bool,
    pub active: u32,
    pub inactive: u32,
    pub traffic: Totals,
}

/// One service as /metrics shows it.
#[derive(Debug)]
pub struct ServiceMetric {
    pub address: SocketAddr,
    pub protocol: Protocol,
    /// Its daemons whose health check passes.
    pub daemons_up: u32,
    pub new_connections: u64,
    pub active: u64,
    pub inactive: u64,
}

/// Everything a scrape shows that `ctl stats` does not.
#[derive(Debug)]
pub struct ScrapeExtra {
    pub services: Vec<ServiceMetric>,
    pub backends: Vec<BackendMetric>,
    /// Each worker's flow-table capacity (records).
    pub table_capacity: u64,
    pub started_unix: f64,
    pub reloads: ReloadCounts,
    /// Every key a reload cannot apply, with whether the file differs from
    /// the running value.
    pub restart_keys: Vec<(&'static str, bool)>,
}

/// Per-packet processing time buckets, in ns (the histogram's unit).
const PROCESSING_BOUNDS_NS: [u64; 12] = [
    50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 50_000, 1_000_000,
];
/// Frames per batch buckets.
const BATCH_BOUNDS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// A copy of the loop's numbers, encoded when the registry asks.
#[derive(Debug)]
struct Scrape {
    workers: Vec<Arc<WorkerStats>>,
    xdp: Option<[u64; COUNTER_NAMES.len()]>,
    connections: u64,
    udp_flows: u64,
    ready: bool,
    recovery: [(&'static str, u64); 2],
    icmp: Vec<(&'static str, u64)>,
    links: Vec<(String, String, u32, u32)>,
    link_changes: u64,
    next_hops: [(&'static str, u64); 3],
    daemon_next_hops: [(&'static str, u64); 3],
    netlink: Vec<(&'static str, u64)>,
    loop_round_max_ns: u64,
    loop_round_max_1s_ns: u64,
    extra: ScrapeExtra,
}

/// The page for `s` and `extra`.
pub fn render(s: &StatsSnapshot<'_>, extra: ScrapeExtra) -> String {
    let by_result = |h: HopStats| {
        [
            ("sent", h.probes_sent),
            ("suppressed", h.probes_suppressed),
            ("error", h.probe_errors),
        ]
    };
    let scrape = Scrape {
        workers: s.workers.to_vec(),
        xdp: s.xdp,
        connections: s.connections as u64,
        udp_flows: s.udp_flows as u64,
        ready: s.ready,
        recovery: [
            ("confirmed", s.recovery.confirmed),
            ("expired", s.recovery.expired),
        ],
        icmp: s.icmp.fields().to_vec(),
        links: s
            .links
            .iter()
            .map(|l| {
                (
                    l.facts.role.to_string(),
                    l.facts.name.clone(),
                    l.facts.rx_queues,
                    l.served,
                )
            })
            .collect(),
        link_changes: s.link_changes,
        next_hops: by_result(s.next_hops),
        daemon_next_hops: by_result(s.daemon_next_hops),
        netlink: s.netlink.fields().to_vec(),
        loop_round_max_ns: s.loop_round_max_ns,
        loop_round_max_1s_ns: s.loop_round_max_1s_ns,
        extra,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        .expect("writing to a String does not fail");
    out
}

fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One family being written: its descriptor is out, a sample per row follows.
struct Family<'e>(prometheus_client::encoding::MetricEncoder<'e>);

fn family<'e>(
    encoder: &'e mut DescriptorEncoder<'_>,
    name: &'e str,
    help: &str,
    kind: MetricType,
) -> Result<Family<'e>, std::fmt::Error> {
    Ok(Family(encoder.encode_descriptor(name, help, None, kind)?))
}

impl Family<'_> {
    fn counter(&mut self, labels: &impl EncodeLabelSet, v: u64) -> Result<(), std::fmt::Error> {
        ConstCounter::new(v).encode(self.0.encode_family(labels)?)
    }

    fn gauge<N>(&mut self, labels: &impl EncodeLabelSet, v: N) -> Result<(), std::fmt::Error>
    where
        ConstGauge<N>: EncodeMetric,
    {
        ConstGauge::new(v).encode(self.0.encode_family(labels)?)
    }
}

/// A daemon's value in a gauge family.
type BackendGauge = fn(&BackendMetric) -> i64;

/// No labels.
const NONE: [(&str, &str); 0] = [];

impl Scrape {
    /// A counter family with a row per worker.
    fn per_worker(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        f: impl Fn(&WorkerStats) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut fam = family(encoder, name, help, MetricType::Counter)?;
        for (q, w) in self.workers.iter().enumerate() {
            fam.counter(&[("worker", q)], f(w))?;
        }
        Ok(())
    }

    fn per_worker_gauge(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        f: impl Fn(&WorkerStats) -> f64,
    ) -> Result<(), std::fmt::Error> {
        let mut fam = family(encoder, name, help, MetricType::Gauge)?;
        for (q, w) in self.workers.iter().enumerate() {
            fam.gauge(&[("worker", q)], f(w))?;
        }
        Ok(())
    }

    fn per_socket(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        f: impl Fn(&SocketStats) -> u64,
    ) -> Result<(), std::fmt::Error> {
        let mut fam = family(encoder, name, help, MetricType::Counter)?;
        for (q, w) in self.workers.iter().enumerate() {
            for sock in w.sockets.iter() {
                let side = if sock.front { "front" } else { "back" };
                let labels = (
                    [("worker", q)],
                    [("side", side.to_owned()), ("queue", sock.queue.to_string())],
                );
                fam.counter(&labels, f(sock))?;
            }
        }
        Ok(())
    }

    /// A histogram over every worker's `pick`, its bounds in the histogram's
    /// unit, which `per_unit` of make the exposed unit (divided, so that
    /// bounds print short: 5e-07, not 5.000000000000001e-07).
    fn histogram(
        &self,
        encoder: &mut DescriptorEncoder<'_>,
        name: &str,
        help: &str,
        bounds: &[u64],
        per_unit: f64,
        pick: impl Fn(&WorkerStats) -> &AtomicHistogram,
    ) -> Result<(), std::fmt::Error> {
        let mut cumulative = vec![0u64; bounds.len()];
        let (mut sum, mut count) = (0u64, 0u64);
        for w in &self.workers {
            let h = pick(w);
            h.add_cumulative(bounds, &mut cumulative);
            sum = sum.wrapping_add(h.sum());
            count += h.count();
        }
        // The encoder takes each bucket's own count and accumulates.
        let mut before = 0;
        let buckets: Vec<(f64, u64)> = bounds
            .iter()
            .zip(&cumulative)
            .map(|(&b, &c)| {
                let own = c - before;
                before = c;
                (b as f64 / per_unit, own)
            })
            .collect();
        let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<[(&str, &str); 0]>(sum as f64 / per_unit, count, &buckets, None)
    }

    fn workers_and_sockets(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.per_worker(
            e,
            "dispatchd_rx_front_packets",
            "Frames received on the front socket.",
            |w| w.rx_front.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_rx_back_packets",
            "Frames received on the back socket.",
            |w| w.rx_back.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_tx_back_packets",
            "Frames sent to daemons.",
            |w| w.tx_back.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_tx_front_packets",
            "Frames sent to clients.",
            |w| w.tx_front.get(),
        )?;
        self.per_worker(e, "dispatchd_new_flows", "Connections accepted.", |w| {
            w.new_flows.get()
        })?;
        self.per_worker(
            e,
            "dispatchd_recovered_flows",
            "Records made for mid-connection segments without one (maglev recovery).",
            |w| w.recovered.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_events_deferred",
            "Worker events kept back because the ring to the loop was full.",
            |w| w.events_deferred.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_held_back_rounds",
            "Worker rounds that took no frame because the loop was behind with events.",
            |w| w.held_back.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_events_dropped",
            "Worker events lost (never, unless a round emits more events than it may).",
            |w| w.events_dropped.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_aged_out",
            "Records a worker removed on its own, idle beyond the age limit (a lost message).",
            |w| w.aged_out.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_rst_ignored",
            "Resets that did not end their connection (sequence number out of the window).",
            |w| w.rst_ignored.get(),
        )?;
        self.per_worker(
            e,
            "dispatchd_mss_clamped",
            "Client SYNs whose MSS option was lowered to mss_clamp.",
            |w| w.mss_clamped.get(),
        )?;
        let mut fam = family(
            e,
            "dispatchd_icmp_errors",
            "ICMP errors about connections: from the front to the loop, translated to daemons, \
             translated to clients.",
            MetricType::Counter,
        )?;
        for (q, w) in self.workers.iter().enumerate() {
            for (what, c) in [
                ("to_loop", &w.icmp_to_loop),
                ("to_daemon", &w.icmp_to_daemon),
                ("to_client", &w.icmp_to_client),
            ] {
                fam.counter(&([("worker", q)], [("what", what)]), c.get())?;
            }
        }
        let mut fam = family(
            e,
            "dispatchd_dropped_packets",
            "Frames dropped, by reason.",
            MetricType::Counter,
        )?;
        for (q, w) in self.workers.iter().enumerate() {
            let reasons = DropReason::ALL
                .iter()
                .map(|r| (r.as_str(), w.invalid[r.index()].get()))
                .chain(
                    WorkerDrop::ALL
                        .iter()
                        .map(|d| (d.as_str(), w.dropped[*d as usize].get())),
                )
                .chain(w.icmp_invalid_by_reason());
            for (reason, v) in reasons {
                fam.counter(&([("worker", q)], [("reason", reason)]), v)?;
            }
        }
        let mut fam = family(
            e,
            "dispatchd_xsk_kernel_drops",
            "Frames the kernel's AF_XDP sockets dropped before a worker saw them (refreshed each second).",
            MetricType::Counter,
        )?;
        for (q, w) in self.workers.iter().enumerate() {
            for (reason, c) in [
                ("rx_ring_full", &w.xsk_rx_ring_full),
                ("fill_ring_empty", &w.xsk_fill_ring_empty),
                ("rx_dropped", &w.xsk_rx_dropped),
                ("invalid_descs", &w.xsk_invalid_descs),
            ] {
                fam.counter(&([("worker", q)], [("reason", reason)]), c.get())?;
            }
        }
        self.per_socket(
            e,
            "dispatchd_socket_rx_packets",
            "Frames received, per AF_XDP socket.",
            |s| s.rx.get(),
        )?;
        self.per_socket(
            e,
            "dispatchd_socket_tx_packets",
            "Frames sent, per AF_XDP socket.",
            |s| s.tx.get(),
        )?;
        let mut fam = family(
            e,
            "dispatchd_tracked_connections",
            "reply_mode tracked: connections written to and removed from the kernel's map, and keys it refused.",
            MetricType::Counter,
        )?;
        for (q, w) in self.workers.iter().enumerate() {
            for (op, c) in [
                ("inserted", &w.tracked_inserted),
                ("removed", &w.tracked_removed),
                ("failed", &w.tracked_failed),
            ] {
                fam.counter(&([("worker", q)], [("op", op)]), c.get())?;
            }
        }
        self.per_worker_gauge(
            e,
            "dispatchd_worker_round_max_seconds",
            "Longest worker round since start (what a frame may wait behind).",
            |w| secs(w.round_max_ns.get()),
        )?;
        self.per_worker_gauge(
            e,
            "dispatchd_worker_round_max_1s_seconds",
            "Longest worker round in the last second.",
            |w| secs(w.round_max_1s_ns.get()),
        )?;
        self.per_worker_gauge(
            e,
            "dispatchd_flow_table_records",
            "Records in a worker's flow table.",
            |w| w.flows.get() as f64,
        )?;
        let capacity = self.extra.table_capacity as f64;
        self.per_worker_gauge(
            e,
            "dispatchd_flow_table_capacity",
            "Records a worker's flow table holds at most (new connections beyond are refused).",
            |_| capacity,
        )?;
        self.per_worker_gauge(
            e,
            "dispatchd_flow_table6_capacity",
            "Records a worker's IPv6 flow table holds at most (0 until the first IPv6 service).",
            |w| w.table6_capacity.get() as f64,
        )?;
        self.per_worker_gauge(
            e,
            "dispatchd_umem_huge_page_bytes",
            "Size of the huge pages a worker's UMEM is on (0: ordinary pages, a TLB miss per frame).",
            |w| w.umem_huge_page_bytes.get() as f64,
        )?;
        self.histogram(
            e,
            "dispatchd_packet_processing_seconds",
            "Per-packet processing time (a batch's time over its frames), without the kernel's send.",
            &PROCESSING_BOUNDS_NS,
            1e9,
            |w| &w.latency_ns,
        )?;
        self.histogram(
            e,
            "dispatchd_batch_frames",
            "Frames per non-empty batch.",
            &BATCH_BOUNDS,
            1.0,
            |w| &w.batch_sizes,
        )
    }

    fn the_loop(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut fam = family(
            e,
            "dispatchd_recovered_records",
            "Records made by recovery that the client proved real, or that expired unproven.",
            MetricType::Counter,
        )?;
        for (result, v) in self.recovery {
            fam.counter(&[("result", result)], v)?;
        }
        let mut fam = family(
            e,
            "dispatchd_icmp_loop",
            "ICMP errors from the front as the management loop handled them.",
            MetricType::Counter,
        )?;
        for &(result, v) in &self.icmp {
            fam.counter(&[("result", result)], v)?;
        }
        family(
            e,
            "dispatchd_rx_queue_changes",
            "Changes of an interface's RX queue count or MTU seen while running.",
            MetricType::Counter,
        )?
        .counter(&NONE, self.link_changes)?;
        if let Some(c) = self.xdp {
            let counted = || COUNTER_NAMES.iter().zip(c);
            let mut fam = family(
                e,
                "dispatchd_xdp_verdicts",
                "Verdicts of the XDP program, one per frame.",
                MetricType::Counter,
            )?;
            for (verdict, v) in counted().filter(|(n, _)| !PASS_REASONS.contains(n)) {
                fam.counter(&[("verdict", *verdict)], v)?;
            }
            let mut fam = family(
                e,
                "dispatchd_xdp_pass_reasons",
                "Why the XDP program passed frames to the host (each is also in \
                 dispatchd_xdp_verdicts_total{verdict=\"passed\"}); other passed frames are \
                 not the dispatcher's.",
                MetricType::Counter,
            )?;
            for (reason, v) in counted().filter(|(n, _)| PASS_REASONS.contains(n)) {
                fam.counter(&[("reason", *reason)], v)?;
            }
        }
        let mut fam = family(
            e,
            "dispatchd_next_hop_probes",
            "Probes making the kernel resolve clients' next hops, by outcome.",
            MetricType::Counter,
        )?;
        for (result, v) in self.next_hops {
            fam.counter(&[("result", result)], v)?;
        }
        let mut fam = family(
            e,
            "dispatchd_daemon_hop_probes",
            "Probes through the back making the kernel resolve daemons' next hops that no health \
             probe resolves, by outcome.",
            MetricType::Counter,
        )?;
        for (result, v) in self.daemon_next_hops {
            fam.counter(&[("result", result)], v)?;
        }
        let mut fam = family(
            e,
            "dispatchd_netlink",
            "rtnetlink for the daemons' routes and next hops: notifications handled, route requests, \
             resynchronisations after lost notifications, malformed messages, failed reads and requests.",
            MetricType::Counter,
        )?;
        for &(what, v) in &self.netlink {
            fam.counter(&[("what", what)], v)?;
        }
        family(
            e,
            "dispatchd_connections",
            "Connections tracked.",
            MetricType::Gauge,
        )?
        .gauge(&NONE, self.connections as i64)?;
        family(
            e,
            "dispatchd_udp_flows",
            "UDP flows tracked (of dispatchd_connections).",
            MetricType::Gauge,
        )?
        .gauge(&NONE, self.udp_flows as i64)?;
        family(
            e,
            "dispatchd_ready",
            "1 while every worker runs, every service has a healthy daemon and no stop is under way \
             (GET /ready says why not).",
            MetricType::Gauge,
        )?
        .gauge(&NONE, i64::from(self.ready))?;
        family(
            e,
            "dispatchd_loop_round_max_seconds",
            "Longest management-loop round since start.",
            MetricType::Gauge,
        )?
        .gauge(&NONE, secs(self.loop_round_max_ns))?;
        family(
            e,
            "dispatchd_loop_round_max_1s_seconds",
            "Longest management-loop round in the last second.",
            MetricType::Gauge,
        )?
        .gauge(&NONE, secs(self.loop_round_max_1s_ns))?;
        let mut fam = family(
            e,
            "dispatchd_rx_queues",
            "RX queues an interface has now (seen) and has a socket for (served); a change needs a restart.",
            MetricType::Gauge,
        )?;
        for (side, interface, seen, served) in &self.links {
            for (state, v) in [("seen", seen), ("served", served)] {
                let labels = [
                    ("side", side.as_str()),
                    ("interface", interface.as_str()),
                    ("state", state),
                ];
                fam.gauge(&labels, i64::from(*v))?;
            }
        }
        Ok(())
    }

    fn services_and_backends(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let services: Vec<(String, &ServiceMetric)> = self
            .extra
            .services
            .iter()
            .map(|s| (service_name(s.address, s.protocol), s))
            .collect();
        let mut fam = family(
            e,
            "dispatchd_service_daemons_up",
            "A service's daemons whose health check passes.",
            MetricType::Gauge,
        )?;
        for (name, s) in &services {
            fam.gauge(&[("service", name.as_str())], i64::from(s.daemons_up))?;
        }
        let mut fam = family(
            e,
            "dispatchd_service_new_connections",
            "Connections opened to a service since it was configured.",
            MetricType::Counter,
        )?;
        for (name, s) in &services {
            fam.counter(&[("service", name.as_str())], s.new_connections)?;
        }
        let mut fam = family(
            e,
            "dispatchd_service_connections",
            "A service's tracked connections: active (established, half-closed) and inactive \
             (half-open, closing), as IPVS counts them.",
            MetricType::Gauge,
        )?;
        for (name, s) in &services {
            for (state, v) in [("active", s.active), ("inactive", s.inactive)] {
                fam.gauge(&[("service", name.as_str()), ("state", state)], v as i64)?;
            }
        }
        let backends: Vec<([(&str, String); 2], &BackendMetric)> = self
            .extra
            .backends
            .iter()
            .map(|b| {
                (
                    [
                        ("service", service_name(b.service, b.protocol)),
                        ("backend", b.daemon.to_string()),
                    ],
                    b,
                )
            })
            .collect();
        let gauges: [(&str, &str, BackendGauge); 3] = [
            (
                "dispatchd_backend_up",
                "1 while a daemon's health check passes.",
                |b| i64::from(b.up),
            ),
            (
                "dispatchd_backend_weight",
                "A daemon's weight (its share of new connections under weighted policies).",
                |b| i64::from(b.weight),
            ),
            (
                "dispatchd_backend_drained",
                "1 while a daemon takes no new connection by the operator's drain, or as retired by a reload.",
                |b| i64::from(b.drained),
            ),
        ];
        for (name, help, f) in gauges {
            let mut fam = family(e, name, help, MetricType::Gauge)?;
            for (labels, b) in &backends {
                fam.gauge(labels, f(b))?;
            }
        }
        let mut fam = family(
            e,
            "dispatchd_backend_connections",
            "A daemon's tracked connections: active (established, half-closed) and inactive \
             (half-open, closing).",
            MetricType::Gauge,
        )?;
        for (labels, b) in &backends {
            for (state, v) in [("active", b.active), ("inactive", b.inactive)] {
                fam.gauge(&(labels.as_slice(), [("state", state)]), i64::from(v))?;
            }
        }
        let mut fam = family(
            e,
            "dispatchd_backend_new_connections",
            "Connections opened to a daemon since it was configured.",
            MetricType::Counter,
        )?;
        for (labels, b) in &backends {
            fam.counter(labels, b.traffic.new_connections)?;
        }
        for (name, help, to, from) in [
            (
                "dispatchd_backend_packets",
                "Frames forwarded to a daemon (to_backend) and of its replies to clients (from_backend).",
                (|t: &Totals| t.to_packets) as fn(&Totals) -> u64,
                (|t: &Totals| t.from_packets) as fn(&Totals) -> u64,
            ),
            (
                "dispatchd_backend_bytes",
                "Bytes (whole frames) forwarded to a daemon (to_backend) and of its replies to clients \
                 (from_backend).",
                |t: &Totals| t.to_bytes,
                |t: &Totals| t.from_bytes,
            ),
        ] {
            let mut fam = family(e, name, help, MetricType::Counter)?;
            for (labels, b) in &backends {
                fam.counter(
                    &(labels.as_slice(), [("direction", "to_backend")]),
                    to(&b.traffic),
                )?;
                fam.counter(
                    &(labels.as_slice(), [("direction", "from_backend")]),
                    from(&b.traffic),
                )?;
            }
        }
        Ok(())
    }

    fn process(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut build = e.encode_descriptor(
            "dispatchd_build",
            "The running binary: version and package.",
            None,
            MetricType::Info,
        )?;
        build.encode_info(&[
            ("version", env!("CARGO_PKG_VERSION")),
            ("package", env!("CARGO_PKG_NAME")),
        ])?;
        family(
            e,
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            MetricType::Gauge,
        )?
        .gauge(&NONE, self.extra.started_unix)?;
        let r = self.extra.reloads;
        let mut fam = family(
            e,
            "dispatchd_reloads",
            "SIGHUP reloads, by outcome (failure: the file or its application was refused; the \
             running configuration stays).",
            MetricType::Counter,
        )?;
        fam.counter(&[("outcome", "success")], r.success)?;
        fam.counter(&[("outcome", "failure")], r.failure)?;
        family(
            e,
            "dispatchd_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up counts).",
            MetricType::Gauge,
        )?
        .gauge(&NONE, r.last_success_unix)?;
        let mut fam = family(
            e,
            "dispatchd_reload_pending_restart",
            "1 while the configuration file asks for another value of a setting than the running \
             one and only a restart applies it; 0 once a reload brings back the running value.",
            MetricType::Gauge,
        )?;
        for &(key, pending) in &self.extra.restart_keys {
            fam.gauge(&[("key", key)], i64::from(pending))?;
        }
        Ok(())
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.workers_and_sockets(&mut encoder)?;
        self.the_loop(&mut encoder)?;
        self.services_and_backends(&mut encoder)?;
        self.process(&mut encoder)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, SocketAddrV4},
        time::Instant,
    };

    use super::*;
    use crate::control::{conntrack::RecoveryCounts, icmp::IcmpStats};
    use crate::packet::{icmp::IcmpDrop, icmpv6::Icmpv6Drop};

    fn snapshot(workers: &[Arc<WorkerStats>]) -> StatsSnapshot<'_> {
        StatsSnapshot {
            workers,
            xdp: Some([7; COUNTER_NAMES.len()]),
            connections: 3,
            udp_flows: 1,
            ignored_events: 0,
            recovery: RecoveryCounts::default(),
            timer_entries: 0,
            loop_round_max_ns: 1_500,
            loop_round_max_1s_ns: 900,
            icmp: IcmpStats::default(),
            links: &[],
            link_changes: 0,
            next_hops: HopStats::default(),
            daemon_next_hops: HopStats {
                probes_sent: 2,
                ..HopStats::default()
            },
            netlink: crate::neigh::NetlinkStats::default(),
            ready: true,
            pending_restart: &[],
            reloads: ReloadCounts::default(),
        }
    }

    fn extra(daemons: u16) -> ScrapeExtra {
        let vip = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 100), 80).into();
        ScrapeExtra {
            services: vec![ServiceMetric {
                address: vip,
                protocol: Protocol::Tcp,
                daemons_up: u32::from(daemons),
                new_connections: 10,
                active: 1,
                inactive: 2,
            }],
            backends: (0..daemons)
                .map(|i| BackendMetric {
                    service: vip,
                    protocol: Protocol::Tcp,
                    daemon: SocketAddrV4::new(
                        Ipv4Addr::new(198, 19, (i >> 8) as u8, i as u8),
                        8080,
                    )
                    .into(),
                    up: true,
                    weight: 1,
                    drained: false,
                    retired: false,
                    active: 1,
                    inactive: 0,
                    traffic: Totals {
                        to_packets: 5,
                        to_bytes: 500,
                        ..Totals::default()
                    },
                })
                .collect(),
            table_capacity: 1 << 20,
            started_unix: 1.7e9,
            reloads: ReloadCounts::default(),
            restart_keys: vec![("poll", true), ("batch", false)],
        }
    }

    /// Sample lines of `family` (its name and labels, and its value).
    fn samples<'p>(page: &'p str, family: &str) -> Vec<&'p str> {
        page.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(family))
            .collect()
    }

    #[test]
    fn the_page_follows_the_conventions() {
        let workers = vec![Arc::new(WorkerStats::default())];
        workers[0].latency_ns.record_n(400, 3);
        workers[0].latency_ns.record_n(20_000, 1);
        let page = render(&snapshot(&workers), extra(2));
        assert!(page.contains("# TYPE dispatchd_packet_processing_seconds histogram\n"));
        assert!(
            page.contains("dispatchd_packet_processing_seconds_count 4\n"),
            "{page}"
        );
        // 3 x 400 ns + 20 us.
        assert!(
            page.contains("dispatchd_packet_processing_seconds_sum 0.0000212\n"),
            "{page}"
        );
        assert!(
            page.contains("dispatchd_packet_processing_seconds_bucket{le=\"5e-07\"} 3\n"),
            "{page}"
        );
        assert!(page.contains("dispatchd_packet_processing_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(page.contains("# TYPE dispatchd_rx_front_packets_total counter\n"));
        assert!(
            page.contains("dispatchd_loop_round_max_seconds 0.0000015\n"),
            "{page}"
        );
        assert!(page.contains("dispatchd_build_info{version=\""));
        assert!(page.contains("dispatchd_udp_flows 1\n"), "{page}");
        assert!(
            page.contains("dispatchd_daemon_hop_probes_total{result=\"sent\"} 2\n"),
            "{page}"
        );
        assert!(page.contains("dispatchd_next_hop_probes_total{result=\"sent\"} 0\n"));
        assert!(page.contains("dispatchd_reload_pending_restart{key=\"poll\"} 1\n"));
        assert!(page.contains("dispatchd_reload_pending_restart{key=\"batch\"} 0\n"));
        assert_eq!(
            samples(&page, "dispatchd_backend_packets_total").len(),
            4,
            "two daemons, two directions"
        );
        assert!(page.contains(
            "dispatchd_backend_packets_total{service=\"198.18.0.100:80\",backend=\"198.19.0.1:8080\",direction=\"to_backend\"} 5\n"
        ));
        for line in page.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(!name.ends_with("_ns"), "a base unit: {name}");
        }
    }

    #[test]
    fn xdp_pass_reasons_are_a_family_of_their_own_so_verdicts_sum_to_frames() {
        let workers = vec![Arc::new(WorkerStats::default())];
        let mut snap = snapshot(&workers);
        let mut xdp = [0; COUNTER_NAMES.len()];
        let at = |name: &str| COUNTER_NAMES.iter().position(|n| *n == name).unwrap();
        // 10 frames: 4 steered, 6 passed, of which 2 back_to_host and 1 vlan.
        xdp[at("front_steered")] = 4;
        xdp[at("passed")] = 6;
        xdp[at("back_to_host")] = 2;
        xdp[at("vlan")] = 1;
        snap.xdp = Some(xdp);
        let page = render(&snap, extra(1));
        let sum = |family: &str| -> u64 {
            samples(&page, family)
                .iter()
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
                .sum()
        };
        assert_eq!(sum("dispatchd_xdp_verdicts_total"), 10, "{page}");
        assert_eq!(sum("dispatchd_xdp_pass_reasons_total"), 3, "{page}");
        assert!(page.contains("dispatchd_xdp_pass_reasons_total{reason=\"back_to_host\"} 2\n"));
        assert!(!page.contains("verdict=\"back_to_host\""), "{page}");
        for name in PASS_REASONS {
            assert!(COUNTER_NAMES.contains(&name), "{name} is a counter");
        }
    }

    #[test]
    fn icmpv6_errors_not_translated_are_counted_by_reason() {
        let workers = vec![Arc::new(WorkerStats::default())];
        workers[0].icmpv6_invalid[Icmpv6Drop::BadChecksum.index()].add(2);
        workers[0].icmp_invalid[IcmpDrop::Truncated.index()].add(1);
        let page = render(&snapshot(&workers), extra(1));
        let invalid: Vec<_> = samples(&page, "dispatchd_")
            .into_iter()
            .filter(|l| l.contains("icmp") && l.contains("reason=") && !l.ends_with(" 0"))
            .collect();
        assert_eq!(
            invalid.len(),
            2,
            "one series per reason and family: {invalid:?}"
        );
        assert!(
            invalid
                .iter()
                .any(|l| l.contains("reason=\"icmpv6_bad_checksum\"") && l.ends_with(" 2")),
            "{invalid:?}"
        );
        let text = crate::control::report::stats_text(&snapshot(&workers));
        assert!(
            text.contains("  invalid icmpv6_bad_checksum: 2\n"),
            "{text}"
        );
        let json = crate::control::report::stats_json(&snapshot(&workers));
        assert!(json.contains("\"icmpv6_bad_checksum\":2"), "{json}");
        assert!(json.contains("\"icmp_invalid\":3"), "both families: {json}");
    }

    #[test]
    fn a_tcp_and_a_udp_service_on_one_vip_port_are_two_series() {
        let workers = vec![Arc::new(WorkerStats::default())];
        let mut e = extra(1);
        let mut udp = ServiceMetric {
            protocol: Protocol::Udp,
            new_connections: 7,
            ..e.services.remove(0)
        };
        let tcp = ServiceMetric {
            protocol: Protocol::Tcp,
            new_connections: 3,
            ..udp
        };
        udp.active = 5;
        e.services = vec![tcp, udp];
        let page = render(&snapshot(&workers), e);
        assert_eq!(
            samples(&page, "dispatchd_service_new_connections"),
            [
                "dispatchd_service_new_connections_total{service=\"198.18.0.100:80\"} 3",
                "dispatchd_service_new_connections_total{service=\"198.18.0.100:80/udp\"} 7",
            ],
            "{page}"
        );
    }

    #[test]
    fn ipv6_services_and_daemons_are_labelled_in_brackets() {
        let workers = vec![Arc::new(WorkerStats::default())];
        let mut e = extra(1);
        let vip6: SocketAddr = "[2001:2:0:1::100]:80".parse().unwrap();
        e.services.push(ServiceMetric {
            address: vip6,
            protocol: Protocol::Udp,
            daemons_up: 1,
            new_connections: 4,
            active: 0,
            inactive: 0,
        });
        e.backends.push(BackendMetric {
            service: vip6,
            protocol: Protocol::Udp,
            daemon: "[2001:2:0:2::11]:8080".parse().unwrap(),
            up: true,
            weight: 3,
            drained: false,
            retired: false,
            active: 0,
            inactive: 0,
            traffic: Totals::default(),
        });
        let page = render(&snapshot(&workers), e);
        assert_eq!(
            samples(&page, "dispatchd_service_new_connections"),
            [
                "dispatchd_service_new_connections_total{service=\"198.18.0.100:80\"} 10",
                "dispatchd_service_new_connections_total{service=\"[2001:2:0:1::100]:80/udp\"} 4",
            ],
            "{page}"
        );
        assert!(
            page.contains(
                "dispatchd_backend_weight{service=\"[2001:2:0:1::100]:80/udp\",backend=\"[2001:2:0:2::11]:8080\"} 3\n"
            ),
            "{page}"
        );
    }

    /// A scrape with a thousand daemons, on the loop's thread: it must stay
    /// small beside the loop's rounds.
    #[test]
    fn a_scrape_of_a_thousand_daemons_is_quick() {
        let workers: Vec<_> = (0..2).map(|_| Arc::new(WorkerStats::default())).collect();
        let rounds = 20;
        let start = Instant::now();
        let mut bytes = 0;
        for _ in 0..rounds {
            bytes = render(&snapshot(&workers), extra(1000)).len();
        }
        let each = start.elapsed() / rounds;
        println!("scrape of 1000 daemons: {each:?}, {bytes} bytes");
        assert!(
            each < std::time::Duration::from_millis(50),
            "a scrape took {each:?}"
        );
    }
}
