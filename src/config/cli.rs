//! The `run` flags and the one place they are merged over the file.

use std::{net::SocketAddr, path::PathBuf};

use super::{file::FileBackend, OnFailure, OnRemove, PollMode, Protocol, ReplyMode, XdpMode};
use super::{file::FileConfig, file::FileService, parse_backend, BindMode, Config, ConfigError};
use crate::balance::{BackendSpec, PolicyKind};

/// Flags of `dispatchd run`.
///
/// Merge rules, applied by [`RunArgs::resolve`] (file first, flags on top, then
/// validation):
///
/// * Scalar flags (`--front`, `--back`, `--queues`, `--cores`, `--bind-mode`,
///   `--xdp-mode`, `--poll`, `--flow-capacity`, `--frames-per-queue`, `--batch`,
///   `--mss-clamp`, `--reply-mode`, `--stop-grace-ms`, `--state-file` and the control flags)
///   replace the file's value. `--cores` replaces the
///   whole list.
/// * `--service` with one or more `--backend` defines a single service that replaces
///   all of the file's services.
/// * `--backend` without `--service` is allowed only if the file has exactly one
///   service; the flags replace that service's backends (its address and policy stay).
/// * `--service` without `--backend` is an error.
/// * `--policy` applies to every service (a `--service` without `--policy` uses
///   round_robin).
/// * Without `--config`, `--front`, `--back`, `--service` and `--backend` are required.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// TOML config file; flags override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Front interface (clients reach the service VIPs here).
    #[arg(long, value_name = "IFNAME")]
    pub front: Option<String>,
    /// Back interface (the daemons are reached through it).
    #[arg(long, value_name = "IFNAME")]
    pub back: Option<String>,
    /// Service VIP:port (IPv6 in brackets, `[2001:db8::1]:80`); with
    /// --backend, replaces the file's services.
    #[arg(long, value_name = "ADDR:PORT")]
    pub service: Option<SocketAddr>,
    /// A daemon of the service, weight 1 unless `@WEIGHT` is given; repeatable.
    #[arg(long = "backend", value_name = "ADDR:PORT[@WEIGHT]", value_parser = parse_backend)]
    pub backends: Vec<BackendSpec<SocketAddr>>,
    /// The RX queue count both interfaces must have, 1..=64 (start is refused
    /// otherwise); without it every queue they have is served.
    #[arg(long)]
    pub queues: Option<u32>,
    /// Worker cores, one worker each, comma-separated (e.g. 2,3,4,5).
    #[arg(long, value_delimiter = ',', value_name = "CORE,...")]
    pub cores: Vec<usize>,
    /// The management loop's core (its thread is pinned there); default: not
    /// pinned.
    #[arg(long, value_name = "CORE")]
    pub control_core: Option<usize>,
    /// Selection policy for every service: round_robin, weighted_round_robin,
    /// least_connections or maglev.
    #[arg(long, value_name = "POLICY")]
    pub policy: Option<PolicyKind>,
    /// AF_XDP bind mode.
    #[arg(long, value_enum)]
    pub bind_mode: Option<BindMode>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
    /// How workers wait for packets.
    #[arg(long, value_enum)]
    pub poll: Option<PollMode>,
    /// The workers' SCHED_FIFO priority, 1..=99 (with --poll wakeup).
    #[arg(long, value_name = "PRIORITY")]
    pub worker_priority: Option<u8>,
    /// Flow-table capacity per worker.
    #[arg(long, value_name = "N")]
    pub flow_capacity: Option<usize>,
    /// UMEM frames per queue pair, a front and a back queue (power of two, >= 2 * batch).
    #[arg(long, value_name = "N")]
    pub frames_per_queue: Option<u32>,
    /// Descriptors per ring operation, 1..=256.
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Slots of each worker's event ring to the management loop (power of two).
    #[arg(long, value_name = "N")]
    pub event_ring: Option<usize>,
    /// Lower the MSS option of client SYNs to at most N bytes (536..=65495), for
    /// paths whose ICMP "fragmentation needed" is filtered.
    #[arg(long, value_name = "N")]
    pub mss_clamp: Option<u16>,
    /// Which daemon frames are rewritten as replies: every one from a daemon's
    /// address and port (stateless), or those of tracked connections only.
    #[arg(long, value_enum)]
    pub reply_mode: Option<ReplyMode>,
    /// Path of the control socket (`dispatchd ctl` talks to it).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Loopback ADDR:PORT serving Prometheus text metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Idle established connections are forgotten after this long.
    #[arg(long, value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Half-open (SYN only) connections are forgotten after this long.
    #[arg(long, value_name = "MS")]
    pub syn_timeout_ms: Option<u64>,
    /// How long a closed connection's record lingers after both FINs.
    #[arg(long, value_name = "MS")]
    pub linger_ms: Option<u64>,
    /// How long a reset connection's record lingers after an accepted RST.
    #[arg(long, value_name = "MS")]
    pub rst_linger_ms: Option<u64>,
    /// Interval of the TCP connect probes to every daemon.
    #[arg(long, value_name = "MS")]
    pub health_interval_ms: Option<u64>,
    /// What happens to a failed daemon's connections.
    #[arg(long, value_enum)]
    pub on_failure: Option<OnFailure>,
    /// What happens to the connections of a daemon a reload removes.
    #[arg(long, value_enum)]
    pub on_remove: Option<OnRemove>,
    /// On SIGTERM, keep forwarding this long while reporting not ready (so a
    /// BGP speaker withdraws the VIP first), then stop; 0 stops at once. SIGINT
    /// or a second SIGTERM stops at once.
    #[arg(long, value_name = "MS")]
    pub stop_grace_ms: Option<u64>,
    /// Keep the operator's drain and weight overrides (`ctl drain`, `ctl
    /// weight`) in this JSON file, written on every change and read at start,
    /// so that they survive a restart; in a directory uid 0 owns (systemd's
    /// StateDirectory=).
    #[arg(long, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// Benchmark only: workers move frames between the sockets untouched (no
    /// parsing, no rewriting), the ceiling of the AF_XDP substrate.
    #[arg(long, hide = true)]
    pub bare_forwarder: bool,
    /// Benchmark only: the XDP program redirects the frames it would steer to
    /// the other interface, untouched, and no worker sees them: the ceiling of
    /// forwarding in XDP. The interfaces' peers need NAPI (veth: GRO on).
    #[arg(long, hide = true, conflicts_with = "bare_forwarder")]
    pub bare_xdp_redirect: bool,
    /// Take over from the dispatchd running on the same control socket (an
    /// upgrade or restart without a broken connection): its XDP links are
    /// re-pointed at this process's program and its flow records handed
    /// over, then it exits. Both must serve the same interfaces and queues.
    #[arg(long)]
    pub takeover: bool,
}

impl RunArgs {
    /// Loads the file (if any), applies the flags on top per the rules above, and
    /// validates the result.
    pub fn resolve(&self) -> Result<Config, ConfigError> {
        if let (Some(service), true) = (self.service, self.backends.is_empty()) {
            return Err(ConfigError::ServiceWithoutBackend { service });
        }
        let mut file = match &self.config {
            Some(path) => FileConfig::load(path)?,
            None => {
                let missing = [
                    (self.front.is_none(), "--front"),
                    (self.back.is_none(), "--back"),
                    (self.service.is_none(), "--service"),
                    (self.backends.is_empty(), "--backend"),
                ];
                if let Some((_, flag)) = missing.iter().find(|(m, _)| *m) {
                    return Err(ConfigError::MissingFlag { flag });
                }
                FileConfig::default()
            }
        };

        if let Some(v) = &self.front {
            file.front = Some(v.clone());
        }
        if let Some(v) = &self.back {
            file.back = Some(v.clone());
        }
        if let Some(v) = self.queues {
            file.queues = Some(v);
        }
        if !self.cores.is_empty() {
            file.cores = self.cores.clone();
        }
        if let Some(v) = self.control_core {
            file.control_core = Some(v);
        }
        if let Some(v) = self.bind_mode {
            file.bind_mode = v;
        }
        if let Some(v) = self.xdp_mode {
            file.xdp_mode = v;
        }
        if let Some(v) = self.poll {
            file.poll = v;
        }
        if let Some(v) = self.worker_priority {
            file.worker_priority = Some(v);
        }
        if let Some(v) = self.flow_capacity {
            file.flow_capacity = v;
        }
        if let Some(v) = self.frames_per_queue {
            file.frames_per_queue = v;
        }
        if let Some(v) = self.event_ring {
            file.event_ring = v;
        }
        if let Some(v) = self.batch {
            file.batch = v;
        }
        if let Some(v) = self.mss_clamp {
            file.mss_clamp = Some(v);
        }
        if let Some(v) = self.reply_mode {
            file.reply_mode = v;
        }
        if let Some(v) = &self.control_socket {
            file.control_socket = v.clone();
        }
        if let Some(v) = self.metrics_listen {
            file.metrics_listen = Some(v);
        }
        if let Some(v) = self.idle_timeout_ms {
            file.timeouts.idle_ms = v;
        }
        if let Some(v) = self.syn_timeout_ms {
            file.timeouts.syn_ms = v;
        }
        if let Some(v) = self.linger_ms {
            file.timeouts.linger_ms = v;
        }
        if let Some(v) = self.rst_linger_ms {
            file.timeouts.rst_linger_ms = v;
        }
        if let Some(v) = self.health_interval_ms {
            file.health.interval_ms = v;
            file.health.timeout_ms = file.health.timeout_ms.min(v);
        }
        if let Some(v) = self.on_failure {
            file.health.on_failure = v;
        }
        if let Some(v) = self.on_remove {
            file.on_remove = v;
        }
        if let Some(v) = self.stop_grace_ms {
            file.stop_grace_ms = v;
        }
        if let Some(v) = &self.state_file {
            file.state_file = Some(v.clone());
        }

        let backends: Vec<FileBackend> = self.backends.iter().copied().map(FileBackend).collect();
        match self.service {
            Some(address) => {
                file.services = vec![FileService {
                    address,
                    protocol: Protocol::Tcp,
                    policy: PolicyKind::default(),
                    backends,
                    health: None,
                }]
            }
            None if !backends.is_empty() => match file.services.as_mut_slice() {
                [only] => only.backends = backends,
                other => {
                    return Err(ConfigError::BackendsWithoutService {
                        services: other.len(),
                    })
                }
            },
            None => {}
        }
        if let Some(policy) = self.policy {
            for s in &mut file.services {
                s.policy = policy;
            }
        }

        file.into_config()
    }
}
