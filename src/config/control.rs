//! The management loop's settings: control socket, metrics endpoint, connection
//! timeouts and health checks. The control plane reads these; it does not own them,
//! so that the config layer needs nothing above it.
use std::{path::PathBuf, time::Duration};

use super::ConfigError;

/// Default path of the control socket (created 0600), in the directory a
/// systemd unit's `RuntimeDirectory=dispatchd` makes (dispatchd makes it
/// when missing).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/dispatchd/dispatchd.sock";
/// Default time a connection may stay half-open (SYN seen, no ACK) before removal.
pub const DEFAULT_SYN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time without packets after which an established connection is checked.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
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
/// linger 10 s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub syn: Duration,
    pub idle: Duration,
    pub linger: Duration,
    pub rst_linger: Duration,
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
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            syn: DEFAULT_SYN_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            linger: DEFAULT_LINGER,
            rst_linger: DEFAULT_RST_LINGER,
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
        if self.stop_grace > MAX_STOP_GRACE {
            return Err(ConfigError::StopGraceTooLong {
                ms: self.stop_grace.as_millis() as u64,
                max_ms: MAX_STOP_GRACE.as_millis() as u64,
            });
        }
        Ok(())
    }
}
