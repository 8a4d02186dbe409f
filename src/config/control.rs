//! The management loop's settings: control socket, metrics endpoint, connection
//! timeouts and health checks. The control plane reads these; it does not own them,
//! so that the config layer needs nothing above it.
use std::{ops::RangeInclusive, path::PathBuf, time::Duration};

use super::ConfigError;

/// Default path of the control socket (created 0600), in the directory a
/// systemd unit's `RuntimeDirectory=dispatchd` makes (dispatchd makes it
/// when missing).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/dispatchd/dispatchd.sock";
/// Default time a connection may stay half-open (SYN seen, no ACK) before removal.
pub const DEFAULT_SYN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time without packets after which an established connection is checked.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a UDP flow's record lives without a datagram from its client:
/// IPVS's UDP timeout (`ipvsadm --set`'s third value), so that a config moved
/// from IPVS keeps its flows as long.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time a connection is kept after both FINs (last ACK, retransmissions).
pub const DEFAULT_LINGER: Duration = Duration::from_secs(2);
/// Default time a connection is kept after an accepted reset: segments still in
/// flight pass (IPVS keeps its CLOSE state as long).
pub const DEFAULT_RST_LINGER: Duration = Duration::from_secs(10);
/// Default time between two probes of one backend.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Default time a probe may take before it counts as failed.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// Default number of consecutive successes that bring a Down backend Up.
pub const DEFAULT_RISE: u32 = 2;
/// Default number of consecutive failures that take an Up backend Down.
pub const DEFAULT_FALL: u32 = 3;
/// Default graceful stop: none, SIGTERM stops at once. Lingering pays only
/// where something acts on readiness (a BGP speaker withdrawing the VIP); a
/// single instance would only delay its stop, and supervisors and scripts
/// expect SIGTERM to stop dispatchd promptly.
pub const DEFAULT_STOP_GRACE: Duration = Duration::ZERO;
/// Longest accepted graceful stop: longer than any supervisor waits for a
/// stop (systemd's default is 90 s), so a larger value is a mistake.
pub const MAX_STOP_GRACE: Duration = Duration::from_secs(600);

/// What happens to a failed daemon's open connections.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// They keep being forwarded to it (they may recover, or end by themselves).
    #[default]
    Keep,
    /// Their records are removed at once: their further segments are dropped.
    Reset,
}

/// What happens to the connections of a daemon a reload removes.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum OnRemove {
    /// They go on to the end: the daemon takes no new connection and leaves
    /// once its last one has ended (as IPVS keeps a removed real server).
    #[default]
    Finish,
    /// Their records are removed at once: their further segments are dropped.
    Reset,
}

/// Connection timeouts. `Default`: syn 10 s, idle 300 s, linger 2 s, reset
/// linger 10 s, UDP idle 300 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn: Duration,
    pub idle: Duration,
    pub linger: Duration,
    pub rst_linger: Duration,
    /// A UDP flow's record is removed after this long without a datagram
    /// from its client (UDP has no end of its own).
    pub udp_idle: Duration,
}

impl Timeouts {
    /// How long a record may go without a packet before its worker removes it
    /// on its own: twice the longest of the timeouts, so that it never races the
    /// loop, which removes or probes every record well before.
    pub fn record_age_limit(&self) -> Duration {
        2 * self
            .syn
            .max(self.idle)
            .max(self.linger)
            .max(self.rst_linger)
            .max(self.udp_idle)
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: DEFAULT_SYN_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            linger: DEFAULT_LINGER,
            rst_linger: DEFAULT_RST_LINGER,
            udp_idle: DEFAULT_UDP_IDLE_TIMEOUT,
        }
    }
}

/// Probe schedule and thresholds. `Default` is 1 s interval, 500 ms timeout,
/// rise 2, fall 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
        }
    }
}

/// Longest accepted HTTP check `path`, in bytes: the request must fit in one
/// small buffer.
pub const MAX_HEALTH_PATH: usize = 1024;
/// Longest accepted HTTP check `host` (a DNS name's most).
pub const MAX_HEALTH_HOST: usize = 255;
/// Default HTTP check path.
pub const DEFAULT_HEALTH_PATH: &str = "/";
/// Default status an HTTP check expects.
pub const DEFAULT_HEALTH_STATUS: u16 = 200;

/// What a service's probes check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ProbeKind {
    /// The daemon accepts a TCP connection.
    #[default]
    Tcp,
    /// It accepts one and answers `GET path` with the expected status.
    Http(HttpProbe),
}

/// An HTTP check: `GET path HTTP/1.0` with a Host header; passes iff the
/// status line carries a code of `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    /// Starts with '/'; no spaces or control characters.
    pub path: String,
    /// The codes that pass: ranges (a code alone is a range of one), each
    /// within 100..=599 and not empty; at least one.
    pub status: Vec<RangeInclusive<u16>>,
    /// The Host header; `None`: the probed address (`ADDR` or `ADDR:PORT`).
    pub host: Option<String>,
}

impl HttpProbe {
    /// Whether a reply with status `code` passes.
    pub fn passes(&self, code: u16) -> bool {
        self.status.iter().any(|r| r.contains(&code))
    }
}

/// `status` as written: `200`, or `200,204,300-399`.
pub fn fmt_status(status: &[RangeInclusive<u16>]) -> String {
    status
        .iter()
        .map(|r| {
            if r.start() == r.end() {
                r.start().to_string()
            } else {
                format!("{}-{}", r.start(), r.end())
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl Default for HttpProbe {
    fn default() -> Self {
        Self {
            path: DEFAULT_HEALTH_PATH.to_owned(),
            status: vec![DEFAULT_HEALTH_STATUS..=DEFAULT_HEALTH_STATUS],
            host: None,
        }
    }
}

/// One service's health check: what is probed, on which port, how often.
/// `Default`: a TCP connect to the daemon's port on the [`HealthCheck`]
/// defaults (what a service without a `[service.health]` table gets from the
/// global `[health]` table).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    pub kind: ProbeKind,
    /// The port probed; `None`: the daemon's. Never `Some(0)`.
    pub port: Option<u16>,
    pub schedule: HealthCheck,
}

impl ServiceHealth {
    /// Whether a probe of `self` and one of `other` test the same thing (kind,
    /// port, request, expected status): when not, a daemon's streak of results
    /// says nothing about the new check.
    pub fn same_probe(&self, other: &ServiceHealth) -> bool {
        (&self.kind, self.port) == (&other.kind, other.port)
    }

    /// Checks the rules of each key; the error names `service` and the key.
    pub(super) fn validate(&self, service: std::net::SocketAddr) -> Result<(), ConfigError> {
        let bad = |key: &'static str, value: String, reason: String| {
            Err(ConfigError::BadServiceHealth {
                service,
                key,
                value,
                reason,
            })
        };
        let h = &self.schedule;
        for (key, value, zero) in [
            ("interval_ms", h.interval.as_millis(), h.interval.is_zero()),
            ("timeout_ms", h.timeout.as_millis(), h.timeout.is_zero()),
            ("rise", u128::from(h.rise), h.rise == 0),
            ("fall", u128::from(h.fall), h.fall == 0),
        ] {
            if zero {
                return bad(key, value.to_string(), "must be greater than zero".into());
            }
        }
        if h.timeout > h.interval {
            return bad(
                "timeout_ms",
                h.timeout.as_millis().to_string(),
                format!(
                    "longer than interval_ms = {}: a probe must end before the next one starts",
                    h.interval.as_millis()
                ),
            );
        }
        if self.port == Some(0) {
            return bad("port", "0".into(), "must be in 1..=65535".into());
        }
        let ProbeKind::Http(http) = &self.kind else {
            return Ok(());
        };
        // The path and Host go into the request line and a header as written.
        let request_text = |key, value: &str, max: usize| {
            if value.chars().any(|c| c == ' ' || c.is_control()) {
                return bad(
                    key,
                    format!("{value:?}"),
                    "must not contain spaces or control characters (CR, LF)".into(),
                );
            }
            if value.len() > max {
                return bad(
                    key,
                    format!("{} bytes", value.len()),
                    format!("longer than {max} bytes"),
                );
            }
            Ok(())
        };
        let path = &http.path;
        if !path.starts_with('/') {
            return bad("path", format!("{path:?}"), "must start with '/'".into());
        }
        request_text("path", path, MAX_HEALTH_PATH)?;
        if let Some(host) = &http.host {
            if host.is_empty() {
                return bad("host", "\"\"".into(), "must not be empty".into());
            }
            request_text("host", host, MAX_HEALTH_HOST)?;
        }
        if http.status.is_empty() {
            return bad("status", "[]".into(), "must name at least one code".into());
        }
        for r in &http.status {
            let value = fmt_status(std::slice::from_ref(r));
            if !(100..=599).contains(r.start()) || !(100..=599).contains(r.end()) {
                return bad(
                    "status",
                    value,
                    "must be an HTTP status code, 100..=599".into(),
                );
            }
            if r.start() > r.end() {
                return bad("status", value, "a range must go from low to high".into());
            }
        }
        Ok(())
    }
}

/// The management loop's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlConfig {
    pub control_socket: PathBuf,
    /// Loopback address for the Prometheus text endpoint; none = off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub timeouts: Timeouts,
    pub health: HealthCheck,
    pub on_failure: OnFailure,
    pub on_remove: OnRemove,
    /// On SIGTERM: how long to keep forwarding while unready (so a speaker
    /// withdraws the route first) before detaching; zero stops at once.
    pub stop_grace: Duration,
    /// Where the operator's drain and weight overrides (`ctl drain`,
    /// `ctl weight`) are kept across restarts: an absolute path with a file
    /// name, not the control socket's; none = they last until the process ends.
    pub state_file: Option<PathBuf>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            control_socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            metrics_listen: None,
            timeouts: Default::default(),
            health: Default::default(),
            on_failure: OnFailure::default(),
            on_remove: OnRemove::default(),
            stop_grace: DEFAULT_STOP_GRACE,
            state_file: None,
        }
    }
}

impl ControlConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(addr) = self.metrics_listen {
            if !addr.ip().is_loopback() {
                return Err(ConfigError::MetricsNotLoopback { addr });
            }
        }
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.syn_ms", t.syn),
            ("timeouts.idle_ms", t.idle),
            ("timeouts.linger_ms", t.linger),
            ("timeouts.rst_linger_ms", t.rst_linger),
            ("timeouts.udp_idle_ms", t.udp_idle),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { key });
            }
        }
        let h = &self.health;
        for (key, zero) in [
            ("health.interval_ms", h.interval.is_zero()),
            ("health.timeout_ms", h.timeout.is_zero()),
            ("health.rise", h.rise == 0),
            ("health.fall", h.fall == 0),
        ] {
            if zero {
                return Err(ConfigError::Zero { key });
            }
        }
        if h.timeout > h.interval {
            return Err(ConfigError::HealthTimeoutBeyondInterval {
                timeout_ms: h.timeout.as_millis(),
                interval_ms: h.interval.as_millis(),
            });
        }
        if let Some(path) = &self.state_file {
            let reason = if !path.is_absolute() {
                Some("not an absolute path (it would depend on where dispatchd was started)")
            } else if path.file_name().is_none()
                || path.as_os_str().as_encoded_bytes().ends_with(b"/")
            {
                Some("names a directory, not a file")
            } else if *path == self.control_socket {
                Some("is the control socket's path")
            } else {
                None
            };
            if let Some(reason) = reason {
                return Err(ConfigError::BadStateFile {
                    path: path.clone(),
                    reason,
                });
            }
        }
        if self.stop_grace > MAX_STOP_GRACE {
            return Err(ConfigError::StopGraceTooLong {
                ms: self.stop_grace.as_millis() as u64,
                max_ms: MAX_STOP_GRACE.as_millis() as u64,
            });
        }
        Ok(())
    }
}
