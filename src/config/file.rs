//! The TOML file as written: every key optional except where noted, defaults as the
//! named constants, unknown keys rejected at every level. This layer is raw; the
//! flags are merged onto it and then it becomes a validated [`Config`].

use std::{fmt, net::SocketAddr, path::Path};

use serde::{
    de::{self, value::MapAccessDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer, Serialize, Serializer,
};

use super::{
    parse_addr, parse_backend, split_family, BindMode, Config, ConfigError, ControlConfig,
    FamilyService, HealthCheck, HttpProbe, OnFailure, OnRemove, PollMode, ProbeKind, Protocol,
    ReplyMode, ServiceConfig, ServiceHealth, Timeouts, XdpMode, DEFAULT_BATCH,
    DEFAULT_CONTROL_SOCKET, DEFAULT_EVENT_RING, DEFAULT_FLOW_CAPACITY, DEFAULT_FRAMES_PER_QUEUE,
    DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_STATUS, DEFAULT_STOP_GRACE, DEFAULT_WEIGHT,
};
use crate::balance::{BackendSpec, PolicyKind};
use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

/// Top level of the file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileConfig {
    /// Front interface (clients, VIPs). Required unless given with `--front`.
    pub front: Option<String>,
    /// Back interface (daemons). Required unless given with `--back`.
    pub back: Option<String>,
    /// The RX queue count both interfaces must have; absent = serve whatever
    /// they have.
    pub queues: Option<u32>,
    /// One core per worker; empty = automatic.
    pub cores: Vec<usize>,
    /// The management loop's core; absent = wherever the scheduler puts it.
    pub control_core: Option<usize>,
    /// AF_XDP bind mode.
    pub bind_mode: BindMode,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Worker wait strategy.
    pub poll: PollMode,
    /// The workers' SCHED_FIFO priority; absent = the ordinary scheduler.
    pub worker_priority: Option<u8>,
    /// Flow-table capacity per worker.
    pub flow_capacity: usize,
    /// UMEM frames per queue pair.
    pub frames_per_queue: u32,
    /// Descriptors per ring operation.
    pub batch: usize,
    /// Slots of each worker's event ring.
    pub event_ring: usize,
    /// Largest MSS client SYNs may announce; none by default.
    pub mss_clamp: Option<u16>,
    /// Which daemon frames are rewritten as replies.
    pub reply_mode: ReplyMode,
    /// `[[service]]` tables.
    #[serde(rename = "service")]
    pub services: Vec<FileService>,
    /// Path of the control socket.
    pub control_socket: PathBuf,
    /// Loopback ADDR:PORT for the Prometheus endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// What happens to the connections of daemons a reload removes.
    pub on_remove: OnRemove,
    /// On SIGTERM, how long to forward while unready before stopping.
    pub stop_grace_ms: u64,
    /// Where `ctl drain`/`ctl weight` overrides are kept across restarts.
    pub state_file: Option<PathBuf>,
    /// `[timeouts]` table.
    pub timeouts: FileTimeouts,
    /// `[health]` table.
    pub health: FileHealth,
}

/// `[timeouts]`: how long records live in each phase, in milliseconds.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileTimeouts {
    pub syn_ms: u64,
    pub idle_ms: u64,
    pub linger_ms: u64,
    pub rst_linger_ms: u64,
    pub udp_idle_ms: u64,
}

impl Default for FileTimeouts {
    fn default() -> Self {
        let t = Timeouts::default();
        Self {
            syn_ms: t.syn.as_millis() as u64,
            idle_ms: t.idle.as_millis() as u64,
            linger_ms: t.linger.as_millis() as u64,
            rst_linger_ms: t.rst_linger.as_millis() as u64,
            udp_idle_ms: t.udp_idle.as_millis() as u64,
        }
    }
}

/// `[health]`: TCP connect probes to every daemon.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileHealth {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    pub on_failure: OnFailure,
}

impl Default for FileHealth {
    fn default() -> Self {
        let h = HealthCheck::default();
        Self {
            interval_ms: h.interval.as_millis() as u64,
            timeout_ms: h.timeout.as_millis() as u64,
            rise: h.rise,
            fall: h.fall,
            on_failure: OnFailure::default(),
        }
    }
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            front: None,
            back: None,
            queues: None,
            cores: Vec::new(),
            control_core: None,
            bind_mode: BindMode::default(),
            xdp_mode: XdpMode::default(),
            poll: PollMode::default(),
            worker_priority: None,
            flow_capacity: DEFAULT_FLOW_CAPACITY,
            frames_per_queue: DEFAULT_FRAMES_PER_QUEUE,
            event_ring: DEFAULT_EVENT_RING,
            batch: DEFAULT_BATCH,
            mss_clamp: None,
            reply_mode: ReplyMode::default(),
            services: Vec::new(),
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics_listen: None,
            on_remove: OnRemove::default(),
            stop_grace_ms: DEFAULT_STOP_GRACE.as_millis() as u64,
            state_file: None,
            timeouts: FileTimeouts::default(),
            health: FileHealth::default(),
        }
    }
}

/// One `[[service]]` table.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileService {
    /// VIP:port clients connect to. Required.
    #[serde(deserialize_with = "de_addr")]
    pub address: SocketAddr,
    /// The transport it balances; default tcp.
    #[serde(default)]
    pub protocol: Protocol,
    /// Selection policy; default round_robin.
    #[serde(default)]
    pub policy: PolicyKind,
    /// The daemons: `"ADDR:PORT"` (weight 1), `"ADDR:PORT@W"` or `{ address, weight }`.
    #[serde(default)]
    pub backends: Vec<FileBackend>,
    /// `[service.health]`: how its daemons are probed; absent = TCP connects
    /// on the `[health]` values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<FileServiceHealth>,
}

/// The word of `[service.health] kind`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FileProbeKind {
    #[default]
    Tcp,
    Http,
}

/// `[service.health]`: every key optional; the schedule's default to the
/// `[health]` table's. Numbers are read wide so that an out-of-range one gets
/// the error naming its service and key, not a type error.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileServiceHealth {
    pub kind: FileProbeKind,
    /// HTTP only: the request's path; default "/".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// HTTP only: the status codes that pass; default 200.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<FileStatus>,
    /// HTTP only: the Host header; default the probed ADDR[:PORT].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The port probed; default the daemon's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    /// Default: `[health] timeout_ms`, at most this table's `interval_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rise: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fall: Option<u32>,
}

/// `status` as written: a code, a `"LOW-HIGH"` range, or a list of both.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum FileStatus {
    One(FileStatusItem),
    Many(Vec<FileStatusItem>),
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum FileStatusItem {
    Code(i64),
    Range(String),
}

impl FileStatus {
    fn from_ranges(status: &[RangeInclusive<u16>]) -> FileStatus {
        let item = |r: &RangeInclusive<u16>| {
            if r.start() == r.end() {
                FileStatusItem::Code(i64::from(*r.start()))
            } else {
                FileStatusItem::Range(format!("{}-{}", r.start(), r.end()))
            }
        };
        match status {
            [one] => FileStatus::One(item(one)),
            many => FileStatus::Many(many.iter().map(item).collect()),
        }
    }

    /// The ranges, or what is wrong with an item (its text, the reason);
    /// the bounds' own rules are [`ServiceHealth`]'s.
    fn ranges(&self) -> Result<Vec<RangeInclusive<u16>>, (String, &'static str)> {
        const CODE: &str = "must be an HTTP status code, 100..=599";
        let item = |i: &FileStatusItem| match i {
            FileStatusItem::Code(c) => u16::try_from(*c)
                .map(|c| c..=c)
                .map_err(|_| (c.to_string(), CODE)),
            FileStatusItem::Range(s) => {
                let bad = || {
                    (
                        format!("{s:?}"),
                        "must be a code or a range \"LOW-HIGH\" such as \"200-299\"",
                    )
                };
                let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
                let bound = |b: &str| b.trim().parse::<u16>().map_err(|_| bad());
                Ok(bound(lo)?..=bound(hi)?)
            }
        };
        match self {
            FileStatus::One(i) => Ok(vec![item(i)?]),
            FileStatus::Many(list) => list.iter().map(item).collect(),
        }
    }

    fn written(&self) -> String {
        let item = |i: &FileStatusItem| match i {
            FileStatusItem::Code(c) => c.to_string(),
            FileStatusItem::Range(s) => format!("{s:?}"),
        };
        match self {
            FileStatus::One(i) => item(i),
            FileStatus::Many(l) => {
                format!("[{}]", l.iter().map(item).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

impl FileServiceHealth {
    /// Every key written: what `check-config --print` shows of a service.
    fn from_health(h: &ServiceHealth) -> FileServiceHealth {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (kind, path, status, host) = match &h.kind {
            ProbeKind::Tcp => (FileProbeKind::Tcp, None, None, None),
            ProbeKind::Http(http) => (
                FileProbeKind::Http,
                Some(http.path.clone()),
                Some(FileStatus::from_ranges(&http.status)),
                http.host.clone(),
            ),
        };
        FileServiceHealth {
            kind,
            path,
            status,
            host,
            port: h.port.map(i64::from),
            interval_ms: Some(ms(h.schedule.interval)),
            timeout_ms: Some(ms(h.schedule.timeout)),
            rise: Some(h.schedule.rise),
            fall: Some(h.schedule.fall),
        }
    }

    /// The service's check, keys left out taken from `defaults` (`[health]`).
    /// The rules on values are [`ServiceHealth`]'s; here only what its types
    /// cannot hold: HTTP keys on a TCP check, numbers beyond a port's or a
    /// status code's type.
    fn resolve(
        &self,
        service: SocketAddr,
        defaults: &HealthCheck,
    ) -> Result<ServiceHealth, ConfigError> {
        let bad = |key: &'static str, value: String, reason: &str| ConfigError::BadServiceHealth {
            service,
            key,
            value,
            reason: reason.to_owned(),
        };
        let kind = match self.kind {
            FileProbeKind::Tcp => {
                for (key, set) in [
                    ("path", self.path.as_ref().map(|p| format!("{p:?}"))),
                    ("status", self.status.as_ref().map(FileStatus::written)),
                    ("host", self.host.as_ref().map(|h| format!("{h:?}"))),
                ] {
                    if let Some(value) = set {
                        return Err(bad(
                            key,
                            value,
                            "only an HTTP check has it (kind = \"http\")",
                        ));
                    }
                }
                ProbeKind::Tcp
            }
            FileProbeKind::Http => ProbeKind::Http(HttpProbe {
                path: self
                    .path
                    .clone()
                    .unwrap_or_else(|| DEFAULT_HEALTH_PATH.to_owned()),
                status: match &self.status {
                    None => vec![DEFAULT_HEALTH_STATUS..=DEFAULT_HEALTH_STATUS],
                    Some(s) => s
                        .ranges()
                        .map_err(|(value, reason)| bad("status", value, reason))?,
                },
                host: self.host.clone(),
            }),
        };
        let port = match self.port {
            None => None,
            Some(p) => Some(
                u16::try_from(p).map_err(|_| bad("port", p.to_string(), "must be in 1..=65535"))?,
            ),
        };
        let interval = self
            .interval_ms
            .map_or(defaults.interval, Duration::from_millis);
        Ok(ServiceHealth {
            kind,
            port,
            schedule: HealthCheck {
                interval,
                // An inherited timeout fits the service's own interval, as the
                // --health-interval-ms flag shortens the global one.
                timeout: self
                    .timeout_ms
                    .map_or(defaults.timeout.min(interval), Duration::from_millis),
                rise: self.rise.unwrap_or(defaults.rise),
                fall: self.fall.unwrap_or(defaults.fall),
            },
        })
    }
}

/// A backend entry: a string or an inline table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct FileBackend(pub BackendSpec<SocketAddr>);

/// The table form of a backend.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    /// Daemon ADDR:PORT. Required.
    #[serde(deserialize_with = "de_addr")]
    address: SocketAddr,
    /// Relative share for weighted policies; default 1.
    #[serde(default = "default_weight")]
    weight: u32,
}

fn default_weight() -> u32 {
    DEFAULT_WEIGHT
}

fn de_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_addr(&s).map_err(de::Error::custom)
}

/// Always `"ADDR:PORT@WEIGHT"`: the effective configuration says every weight.
impl Serialize for FileBackend {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}@{}", self.0.addr, self.0.weight))
    }
}

impl<'de> Deserialize<'de> for FileBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BackendSpec<SocketAddr>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a backend "ADDR:PORT", "ADDR:PORT@WEIGHT" or { address = "ADDR:PORT", weight = N }"#)
            }

            fn visit_str<E: de::Error>(self, s: &str) -> Result<BackendSpec<SocketAddr>, E> {
                parse_backend(s).map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<BackendSpec<SocketAddr>, A::Error> {
                let t = BackendTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(BackendSpec {
                    addr: t.address,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V).map(FileBackend)
    }
}

impl FileConfig {
    /// Reads and parses (does not validate) the file at `path`.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        FileConfig::parse(&text, Some(path))
    }

    /// Parses (does not validate) a TOML document; `path` only labels errors.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<FileConfig, ConfigError> {
        let origin = match path {
            Some(p) => format!("config {}", p.display()),
            None => "config".to_owned(),
        };
        // Syntax first, so that a syntax error is never reported as a schema error.
        if let Err(e) = text.parse::<toml::Table>() {
            return Err(ConfigError::Syntax {
                origin,
                line: line_of(text, e.span()),
                message: one_line(e.message()),
            });
        }
        toml::from_str(text).map_err(|e| schema_error(text, origin, &e))
    }

    /// The file that loads as `config`: every key written, defaults included.
    pub fn from_config(config: &Config) -> FileConfig {
        let c = &config.control;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        FileConfig {
            front: Some(config.front.clone()),
            back: Some(config.back.clone()),
            queues: config.queues,
            cores: config.cores.clone(),
            control_core: config.control_core,
            bind_mode: config.bind_mode,
            xdp_mode: config.xdp_mode,
            poll: config.poll,
            worker_priority: config.worker_priority,
            flow_capacity: config.flow_capacity,
            frames_per_queue: config.frames_per_queue,
            batch: config.batch,
            event_ring: config.event_ring,
            mss_clamp: config.mss_clamp,
            reply_mode: config.reply_mode,
            services: (config
                .services
                .iter()
                .map(|s| file_service(s, s.address.into())))
            .chain((config.services6.iter()).map(|s| file_service(s, s.address.into())))
            .collect(),
            control_socket: c.control_socket.clone(),
            metrics_listen: c.metrics_listen,
            on_remove: c.on_remove,
            stop_grace_ms: ms(c.stop_grace),
            state_file: c.state_file.clone(),
            timeouts: FileTimeouts {
                syn_ms: ms(c.timeouts.syn),
                idle_ms: ms(c.timeouts.idle),
                linger_ms: ms(c.timeouts.linger),
                rst_linger_ms: ms(c.timeouts.rst_linger),
                udp_idle_ms: ms(c.timeouts.udp_idle),
            },
            health: FileHealth {
                interval_ms: ms(c.health.interval),
                timeout_ms: ms(c.health.timeout),
                rise: c.health.rise,
                fall: c.health.fall,
                on_failure: c.on_failure,
            },
        }
    }

    /// Validates and converts to the final form.
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let front = self.front.ok_or(ConfigError::Unset {
            key: "front",
            flag: "--front",
        })?;
        let back = self.back.ok_or(ConfigError::Unset {
            key: "back",
            flag: "--back",
        })?;
        let defaults = HealthCheck {
            interval: Duration::from_millis(self.health.interval_ms),
            timeout: Duration::from_millis(self.health.timeout_ms),
            rise: self.health.rise,
            fall: self.health.fall,
        };
        let mut services = Vec::new();
        let mut services6 = Vec::new();
        for s in self.services {
            let health = match &s.health {
                Some(_) if s.protocol == Protocol::Udp => {
                    return Err(ConfigError::UdpHealth { service: s.address })
                }
                Some(h) => h.resolve(s.address, &defaults)?,
                // Never probed: no schedule of its own to carry.
                None if s.protocol == Protocol::Udp => ServiceHealth::default(),
                None => ServiceHealth {
                    schedule: defaults,
                    ..ServiceHealth::default()
                },
            };
            let backends: Vec<_> = s.backends.iter().map(|b| b.0).collect();
            match split_family(s.address, s.protocol, s.policy, &backends, health)? {
                FamilyService::V4(s) => services.push(s),
                FamilyService::V6(s) => services6.push(s),
            }
        }
        let config = Config {
            front,
            back,
            queues: self.queues,
            cores: self.cores,
            control_core: self.control_core,
            bind_mode: self.bind_mode,
            xdp_mode: self.xdp_mode,
            poll: self.poll,
            worker_priority: self.worker_priority,
            flow_capacity: self.flow_capacity,
            frames_per_queue: self.frames_per_queue,
            event_ring: self.event_ring,
            batch: self.batch,
            mss_clamp: self.mss_clamp,
            reply_mode: self.reply_mode,
            services,
            services6,
            control: ControlConfig {
                control_socket: self.control_socket,
                metrics_listen: self.metrics_listen,
                timeouts: Timeouts {
                    syn: Duration::from_millis(self.timeouts.syn_ms),
                    idle: Duration::from_millis(self.timeouts.idle_ms),
                    linger: Duration::from_millis(self.timeouts.linger_ms),
                    rst_linger: Duration::from_millis(self.timeouts.rst_linger_ms),
                    udp_idle: Duration::from_millis(self.timeouts.udp_idle_ms),
                },
                health: defaults,
                on_failure: self.health.on_failure,
                on_remove: self.on_remove,
                stop_grace: Duration::from_millis(self.stop_grace_ms),
                state_file: self.state_file,
            },
        };
        config.validate()?;
        Ok(config)
    }
}

/// The `[[service]]` table of `s`, at `address` (its family's, widened).
fn file_service<A: Copy + Into<SocketAddr>>(
    s: &ServiceConfig<A>,
    address: SocketAddr,
) -> FileService {
    FileService {
        address,
        protocol: s.protocol,
        policy: s.policy,
        backends: (s.backends.iter())
            .map(|b| {
                FileBackend(BackendSpec {
                    addr: b.addr.into(),
                    weight: b.weight,
                })
            })
            .collect(),
        // A UDP service's daemons are not probed: it has no check.
        health: (s.protocol == Protocol::Tcp).then(|| FileServiceHealth::from_health(&s.health)),
    }
}

/// Classifies a deserialization error (the text is known to be valid TOML).
fn schema_error(text: &str, origin: String, e: &toml::de::Error) -> ConfigError {
    let line = line_of(text, e.span());
    let message = one_line(e.message());
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, tail)) = rest.split_once('`') {
            let expected = tail
                .trim_start_matches(", expected ")
                .trim_start_matches("one of ")
                .to_owned();
            return ConfigError::UnknownKey {
                origin,
                key: key.to_owned(),
                line,
                expected,
            };
        }
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        if let Some((key, _)) = rest.split_once('`') {
            return ConfigError::MissingKey {
                origin,
                key: key.to_owned(),
                line,
            };
        }
    }
    let snippet = snippet(text, line);
    let message = if snippet.starts_with("[service]") {
        format!("{message}; write [[service]] (one table per service)")
    } else {
        message
    };
    ConfigError::BadValue {
        origin,
        line,
        snippet,
        message,
    }
}

/// 1-based line of the start of `span` (1 if unknown).
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let start = span.map_or(0, |s| s.start.min(text.len()));
    text.get(..start).map_or(0, |t| t.matches('\n').count()) + 1
}

/// The trimmed source line, shortened to fit in an error message.
fn snippet(text: &str, line: usize) -> String {
    const MAX: usize = 60;
    let l = text.lines().nth(line - 1).unwrap_or("").trim();
    if l.chars().count() > MAX {
        format!("{}...", l.chars().take(MAX).collect::<String>())
    } else {
        l.to_owned()
    }
}

/// Folds a possibly multi-line parser message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
pub(super) fn line_of_for_tests(text: &str, at: usize) -> usize {
    line_of(text, Some(at..at))
}
