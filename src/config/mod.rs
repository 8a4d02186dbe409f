//! Daemon configuration: the TOML file schema, the `run` command-line flags, how the
//! flags are merged over the file, and validation.
//!
//! The flow is `file (optional) → flags on top → validate`, and it happens in exactly
//! one place, [`RunArgs::resolve`]. [`Config::load`] and [`Config::from_toml_str`] are
//! the same path without flags. Whatever comes out is a [`Config`] that has passed
//! [`Config::validate`]; the daemon only checks what needs the kernel (interfaces
//! exist, cores exist, zero-copy is supported) at start-up.
//!
//! `examples/dispatchd.toml` is the documented reference for the file format.

mod changes;
mod cli;
mod control;
mod file;

use std::{
    collections::{HashMap, HashSet},
    net::{SocketAddr, SocketAddrV4, SocketAddrV6},
    path::{Path, PathBuf},
};

use crate::ids::BackendId;

use serde::{Deserialize, Serialize};

use crate::balance::{BackendSpec, PolicyKind};

pub use changes::changes;
pub use cli::RunArgs;
pub use control::{
    fmt_status, ControlConfig, HealthCheck, HttpProbe, OnFailure, OnRemove, ProbeKind,
    ServiceHealth, Timeouts, DEFAULT_CONTROL_SOCKET, DEFAULT_FALL, DEFAULT_HEALTH_INTERVAL,
    DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_STATUS, DEFAULT_HEALTH_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LINGER, DEFAULT_RISE, DEFAULT_RST_LINGER, DEFAULT_STOP_GRACE, DEFAULT_SYN_TIMEOUT,
    MAX_HEALTH_HOST, MAX_HEALTH_PATH, MAX_STOP_GRACE,
};

// MAX_QUEUES (the most RX queues an interface may have, and the largest accepted
// `queues`), MAX_SERVICES and MAX_DAEMONS: the sizes of the steering program's
// maps, from `bpf/steer.h`.
include!(concat!(env!("OUT_DIR"), "/steer_limits.rs"));
/// Cores a thread can be pinned to: sched_setaffinity's default set (CPU_SETSIZE).
pub const MAX_CORE: usize = 1024;
/// Default flow-table capacity, per worker.
pub const DEFAULT_FLOW_CAPACITY: usize = 1 << 20;
/// Default number of UMEM frames per queue pair (a front and a back queue).
pub const DEFAULT_FRAMES_PER_QUEUE: u32 = 16384;
/// Largest accepted `frames_per_queue`.
pub const MAX_FRAMES_PER_QUEUE: u32 = 1 << 20;
/// Default number of descriptors moved per ring operation.
pub const DEFAULT_BATCH: usize = 64;
/// Largest accepted `batch`.
pub const MAX_BATCH: usize = 256;
/// Default slots of each worker's event ring.
pub const DEFAULT_EVENT_RING: usize = 65_536;
/// Smallest accepted `event_ring` (tests use tiny rings to make the loop fall behind).
pub const MIN_EVENT_RING: usize = 2;
/// Largest accepted `event_ring`.
pub const MAX_EVENT_RING: usize = 1 << 22;
/// Weight of a backend given without one.
pub const DEFAULT_WEIGHT: u32 = 1;
/// Smallest accepted `mss_clamp`: the MSS every IPv4 host must accept (RFC 9293,
/// 576-byte datagrams less 40 bytes of headers); lower would only shrink segments
/// below what any path needs.
pub const MIN_MSS_CLAMP: u16 = 536;
/// Largest accepted `mss_clamp`: an IPv4 packet's most, less 40 bytes of headers.
pub const MAX_MSS_CLAMP: u16 = 65_495;
/// Longest interface name Linux accepts (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_LEN: usize = 15;

/// How the AF_XDP sockets bind to their queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BindMode {
    /// Try zero-copy, fall back to copy mode.
    #[default]
    Auto,
    /// Zero-copy only; fail if the driver cannot do it.
    Zerocopy,
    /// Copy mode only.
    Copy,
}

/// How the XDP steering program is attached to the front interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Try driver (native) mode, fall back to generic (skb) mode.
    #[default]
    Auto,
    /// Driver mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

/// How the workers wait for packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PollMode {
    /// Spin on the rings; lowest latency, one full core per worker.
    Busy,
    /// Sleep in poll(2) until the kernel wakes the socket.
    Wakeup,
    /// Poll while traffic flows, yielding the core after each empty round to
    /// anything else runnable on it; sleep when idle.
    #[default]
    Adaptive,
}

/// Which frames from a daemon's address and port are rewritten to its service
/// (always only those the kernel would route out of the front).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ReplyMode {
    /// All of them: no per-connection state on the reply path, so replies may
    /// come back through any instance (asymmetric return paths). A host that
    /// reaches a daemon directly through this one gets its replies from the VIP.
    #[default]
    Stateless,
    /// Only those of connections this instance tracks (a kernel map the workers
    /// fill); everything else from the daemon is the host's to forward.
    Tracked,
}

/// The transport a service balances. A VIP:port may have one service of each.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Deserialize, Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Connections: a record from the SYN to the close, health-checked daemons.
    #[default]
    Tcp,
    /// Datagrams: a record from a flow's first datagram until it is idle for
    /// `timeouts.udp_idle_ms`; daemons are not probed.
    Udp,
}

impl Protocol {
    /// The IPv4 protocol number, as the flow key and the XDP maps hold it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => crate::packet::L4Proto::Tcp.number(),
            Protocol::Udp => crate::packet::L4Proto::Udp.number(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A service as ctl and /metrics name it: its VIP:port, and `/udp` after it
/// for a UDP service, so that a TCP and a UDP service on one VIP:port are two
/// names and every TCP service keeps the name it always had.
pub fn service_name(address: impl Into<SocketAddr>, protocol: Protocol) -> String {
    let address = address.into();
    match protocol {
        Protocol::Tcp => address.to_string(),
        Protocol::Udp => format!("{address}/udp"),
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated configuration, ready to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Interface clients reach the service VIPs on.
    pub front: String,
    /// Interface the backend daemons are reached through.
    pub back: String,
    /// `None` (the default): serve every RX queue of both interfaces, as many as
    /// each has. `Some(n)`, 1..=[`MAX_QUEUES`]: the same, but start only if both
    /// interfaces have exactly `n` RX queues (an assertion of the expected count).
    pub queues: Option<u32>,
    /// The worker cores, one worker each, no repeats, at most [`MAX_QUEUES`];
    /// empty = every core but the first (at least one). Workers beyond the
    /// smaller interface's queue count are not started.
    pub cores: Vec<usize>,
    /// The core the management loop's thread is pinned to, below
    /// [`MAX_CORE`]; it may be a worker's (a busy-polling worker then shares
    /// its core). None: not pinned, the scheduler places it.
    pub control_core: Option<usize>,
    /// AF_XDP bind mode.
    pub bind_mode: BindMode,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
    /// Worker wait strategy.
    pub poll: PollMode,
    /// The workers' SCHED_FIFO priority, 1..=99 (`poll = "wakeup"` only);
    /// None: the ordinary scheduler. A worker that shares its core with the
    /// NAPI that fills its sockets (veth, any threaded NAPI) then runs
    /// whenever it has frames, so the kernel takes no more than the worker
    /// carries: under overload, frames wait or are refused at the device
    /// instead of being received and then dropped at a full RX ring.
    pub worker_priority: Option<u8>,
    /// Flow-table capacity per worker, >= 1.
    pub flow_capacity: usize,
    /// UMEM frames per queue pair (a front and a back queue; a worker with F
    /// front and B back queues has `frames_per_queue * (F + B) / 2`): a power of
    /// two, >= 2 * `batch`, <= [`MAX_FRAMES_PER_QUEUE`].
    pub frames_per_queue: u32,
    /// Descriptors per ring operation, 1..=[`MAX_BATCH`].
    pub batch: usize,
    /// Slots of each worker's event ring to the management loop: a power of two
    /// in [`MIN_EVENT_RING`]..=[`MAX_EVENT_RING`]. A burst of new connections in
    /// one loop round should fit; when it does not, the worker keeps its events
    /// and pauses rather than lose one.
    pub event_ring: usize,
    /// Client SYNs announcing a larger MSS are lowered to this, for paths that
    /// filter ICMP; [`MIN_MSS_CLAMP`]..=[`MAX_MSS_CLAMP`]. None: left alone.
    pub mss_clamp: Option<u16>,
    /// Which daemon frames are rewritten as replies; with `Tracked`,
    /// `flow_capacity * workers` <= [`MAX_TRACKED`] (checked here against the
    /// most workers `queues` and `cores` allow, at start against the real count).
    pub reply_mode: ReplyMode,
    /// The IPv4 services to balance; at least one service of either family.
    pub services: Vec<ServiceConfig>,
    /// The IPv6 services. Services of both families count against
    /// [`MAX_SERVICES`], their daemons against [`MAX_DAEMONS`].
    pub services6: Vec<Service6Config>,
    /// The management loop: control socket, metrics, timeouts, health checks.
    pub control: ControlConfig,
}

/// One service: a VIP:port on the front interface and the daemons behind it.
/// `A` is its family's address: the service and its daemons are of one family
/// (no translation between IPv4 and IPv6). IPv4 services are
/// `ServiceConfig` (the IPv4 paths keep their 6-byte addresses), IPv6 ones
/// [`Service6Config`].
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceConfig<A = SocketAddrV4> {
    /// The address clients connect to.
    pub address: A,
    /// TCP or UDP; (address, protocol) is unique.
    pub protocol: Protocol,
    /// How new connections are spread over `backends`.
    pub policy: PolicyKind,
    /// The daemons; at least one, no duplicates, weights >= 1.
    pub backends: Vec<BackendSpec<A>>,
    /// How its daemons are probed (`[service.health]`, on the `[health]`
    /// defaults).
    pub health: ServiceHealth,
}

/// An IPv6 service.
pub type Service6Config = ServiceConfig<SocketAddrV6>;

/// What validation needs of an address family's `ADDR:PORT`.
pub trait FamilyAddr: Copy + Eq + std::hash::Hash + Into<SocketAddr> {
    /// Why it cannot be one host's endpoint across a network, if it cannot.
    fn not_one_host(self) -> Option<&'static str>;
}

impl FamilyAddr for SocketAddrV4 {
    fn not_one_host(self) -> Option<&'static str> {
        not_one_host(self)
    }
}

impl FamilyAddr for SocketAddrV6 {
    fn not_one_host(self) -> Option<&'static str> {
        not_one_host6(self)
    }
}

/// Why a configuration was rejected. `Display` is one line naming the file, field or
/// value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("metrics_listen {addr} is not a loopback address")]
    MetricsNotLoopback { addr: std::net::SocketAddr },
    #[error("{key} = 0: must be greater than zero")]
    Zero { key: &'static str },
    #[error(
        "health.timeout_ms = {timeout_ms} is longer than health.interval_ms = {interval_ms}: \
         a probe must end before the next one starts"
    )]
    HealthTimeoutBeyondInterval { timeout_ms: u128, interval_ms: u128 },
    #[error("service {service}: health.{key} = {value}: {reason}")]
    BadServiceHealth {
        service: SocketAddr,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("state_file {}: {reason}", path.display())]
    BadStateFile { path: PathBuf, reason: &'static str },
    #[error("stop_grace_ms = {ms} is longer than {max_ms} ms (the most a graceful stop may take)")]
    StopGraceTooLong { ms: u64, max_ms: u64 },
    // The OS error is part of this line and deliberately not a `source`: the
    // caller prints the error chain, which would say it twice.
    #[error("config {}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{origin}: TOML syntax error at line {line}: {message}")]
    Syntax {
        origin: String,
        line: usize,
        message: String,
    },
    #[error("{origin}: unknown key `{key}` at line {line} (expected one of {expected})")]
    UnknownKey {
        origin: String,
        key: String,
        line: usize,
        expected: String,
    },
    #[error("{origin}: missing key `{key}` in the table at line {line}")]
    MissingKey {
        origin: String,
        key: String,
        line: usize,
    },
    #[error("{origin}: bad value at line {line} (`{snippet}`): {message}")]
    BadValue {
        origin: String,
        line: usize,
        snippet: String,
        message: String,
    },
    #[error("`{key}` is not set: put it in the config file or pass {flag}")]
    Unset {
        key: &'static str,
        flag: &'static str,
    },
    #[error("{flag} is required when no --config file is given")]
    MissingFlag { flag: &'static str },
    #[error("--service {service} needs at least one --backend")]
    ServiceWithoutBackend { service: SocketAddr },
    #[error(
        "--backend without --service needs a config file with exactly one service, \
         found {services}; pass --service to replace them all"
    )]
    BackendsWithoutService { services: usize },
    #[error("no services configured: add a [[service]] table or pass --service and --backend")]
    NoServices,
    #[error("{services} services configured; the steering program holds at most {MAX_SERVICES}")]
    TooManyServices { services: usize },
    #[error("{daemons} daemons configured; the steering program holds at most {MAX_DAEMONS}")]
    TooManyDaemons { daemons: usize },
    #[error("service {address}: {reason}")]
    BadServiceAddress {
        address: SocketAddr,
        reason: &'static str,
    },
    #[error("backend {backend} of service {service}: {reason}")]
    BadBackendAddress {
        service: SocketAddr,
        backend: SocketAddr,
        reason: &'static str,
    },
    #[error("service {address} ({protocol}) is listed twice")]
    DuplicateService {
        address: SocketAddr,
        protocol: Protocol,
    },
    #[error(
        "service {service} (udp): [service.health] is for TCP services; \
         a UDP service's daemons are not probed"
    )]
    UdpHealth { service: SocketAddr },
    #[error(
        "backend {backend} of service {service}: a service and its daemons are of one \
         family (IPv4 or IPv6); dispatchd does not translate between them"
    )]
    MixedFamily {
        service: SocketAddr,
        backend: SocketAddr,
    },
    #[error("service {service} has no backends")]
    NoBackends { service: SocketAddr },
    #[error("backend {backend} is listed twice in service {service}")]
    DuplicateBackend {
        service: SocketAddr,
        backend: SocketAddr,
    },
    #[error(
        "backend {backend} ({protocol}) is listed in services {first} and {second}; \
         a daemon ADDR:PORT serves one service of each protocol"
    )]
    BackendInTwoServices {
        backend: SocketAddr,
        protocol: Protocol,
        first: SocketAddr,
        second: SocketAddr,
    },
    #[error("backend {backend} of service {service} has weight 0; weights must be >= 1")]
    ZeroWeight {
        service: SocketAddr,
        backend: SocketAddr,
    },
    #[error("backend {backend} of service {service} is itself a service address")]
    BackendIsService {
        service: SocketAddr,
        backend: SocketAddr,
    },
    #[error("queues = {queues} is out of range 1..={MAX_QUEUES}")]
    QueuesOutOfRange { queues: u32 },
    #[error(
        "cores lists {cores} cores; at most {MAX_QUEUES} workers can run (one queue each at least)"
    )]
    TooManyCores { cores: usize },
    #[error("core {core} is listed twice in cores")]
    DuplicateCore { core: usize },
    #[error("control_core = {core} is out of range 0..{MAX_CORE}")]
    ControlCoreOutOfRange { core: usize },
    #[error("frames_per_queue = {frames} is not a power of two")]
    FramesNotPowerOfTwo { frames: u32 },
    #[error("frames_per_queue = {frames} is too small: must be >= 2 * batch = {min}")]
    FramesTooSmall { frames: u32, min: usize },
    #[error("frames_per_queue = {frames} is too large: must be <= {MAX_FRAMES_PER_QUEUE}")]
    FramesTooLarge { frames: u32 },
    #[error("batch = {batch} is out of range 1..={MAX_BATCH}")]
    BatchOutOfRange { batch: usize },
    #[error("worker_priority = {priority} is out of range 1..=99 (SCHED_FIFO)")]
    WorkerPriorityOutOfRange { priority: u8 },
    #[error(
        "worker_priority needs poll = \"wakeup\": a worker that polls at SCHED_FIFO never \
         leaves its core to the NAPI that fills its sockets"
    )]
    WorkerPriorityNeedsWakeup,
    #[error("event_ring = {slots} must be a power of two in {MIN_EVENT_RING}..={MAX_EVENT_RING}")]
    BadEventRing { slots: usize },
    #[error("mss_clamp = {mss} is out of range {MIN_MSS_CLAMP}..={MAX_MSS_CLAMP}")]
    MssClampOutOfRange { mss: u16 },
    #[error("flow_capacity = 0: must be >= 1")]
    ZeroFlowCapacity,
    #[error(
        "flow_capacity = {capacity} is too large: must be <= {}",
        crate::flow::MAX_CAPACITY
    )]
    FlowCapacityTooLarge { capacity: usize },
    #[error(
        "reply_mode = \"tracked\" needs room for flow_capacity * workers = {connections} \
         connections in the kernel; it holds at most {MAX_TRACKED}"
    )]
    TrackedTooLarge { connections: u64 },
    #[error("{field} = {name:?} is not a valid interface name: {reason}")]
    BadInterface {
        field: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("front and back are the same interface {name:?}")]
    SameInterface { name: String },
}

impl Config {
    /// The settings a reload cannot apply, by their file key, with their
    /// values as the file writes them: a running process keeps its own until
    /// a restart.
    pub fn restart_only(&self) -> Vec<(&'static str, String)> {
        fn show(v: impl Serialize) -> String {
            match serde_json::to_value(v) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(serde_json::Value::Null) => "unset".to_owned(),
                Ok(other) => other.to_string(),
                Err(e) => format!("({e})"),
            }
        }
        vec![
            ("front", show(&self.front)),
            ("back", show(&self.back)),
            ("queues", show(self.queues)),
            ("cores", show(&self.cores)),
            ("control_core", show(self.control_core)),
            ("bind_mode", show(self.bind_mode)),
            ("xdp_mode", show(self.xdp_mode)),
            ("poll", show(self.poll)),
            ("worker_priority", show(self.worker_priority)),
            ("flow_capacity", show(self.flow_capacity)),
            ("frames_per_queue", show(self.frames_per_queue)),
            ("batch", show(self.batch)),
            ("event_ring", show(self.event_ring)),
            ("reply_mode", show(self.reply_mode)),
            ("control_socket", show(&self.control.control_socket)),
            ("metrics_listen", show(self.control.metrics_listen)),
            ("state_file", show(&self.control.state_file)),
        ]
    }

    /// Parses a TOML document and validates it.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        file::FileConfig::parse(text, None)?.into_config()
    }

    /// Reads the file at `path`, parses and validates it.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        file::FileConfig::load(path)?.into_config()
    }

    /// This configuration as a TOML file that loads as it: every key written,
    /// defaults included (`check-config --print`).
    /// Fails only on what TOML cannot hold: a control socket path that is not
    /// UTF-8 (possible from the flag).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(&file::FileConfig::from_config(self))
    }

    /// Connections the flow tables of `workers` workers hold together: what the
    /// kernel's map of tracked connections must have room for in
    /// `reply_mode = "tracked"`.
    pub fn tracked_capacity(&self, workers: usize) -> u64 {
        self.flow_capacity as u64 * workers as u64
    }

    /// The most workers this configuration allows, as far as it says: one per
    /// core of `cores`, one per queue of `queues` (the host decides the rest at
    /// start).
    pub fn max_workers(&self) -> Option<usize> {
        let by_cores = (!self.cores.is_empty()).then_some(self.cores.len());
        let by_queues = self.queues.map(|q| q as usize);
        match (by_cores, by_queues) {
            (Some(c), Some(q)) => Some(c.min(q)),
            (c, q) => c.or(q),
        }
    }

    /// Checks that the tracked-connections map (reply_mode "tracked") has room
    /// for `workers` flow tables.
    pub fn check_tracked_room(&self, workers: usize) -> Result<(), ConfigError> {
        if self.reply_mode == ReplyMode::Tracked {
            let connections = self.tracked_capacity(workers);
            if connections > u64::from(MAX_TRACKED) {
                return Err(ConfigError::TrackedTooLarge { connections });
            }
        }
        Ok(())
    }

    /// Every daemon of every service in config order, with its [`BackendId`] (its
    /// position in this order) and its service's address. Validation guarantees
    /// that a daemon appears once and that the ids fit.
    pub fn daemons(&self) -> impl Iterator<Item = (BackendId, SocketAddrV4, BackendSpec)> + '_ {
        daemons_of(&self.services)
    }

    /// Every daemon of every IPv6 service in config order, with its
    /// [`BackendId`]: the ids continue after the IPv4 daemons', so that an id
    /// names one daemon whatever its family.
    pub fn daemons6(
        &self,
    ) -> impl Iterator<Item = (BackendId, SocketAddrV6, BackendSpec<SocketAddrV6>)> + '_ {
        let first: usize = self.services.iter().map(|s| s.backends.len()).sum();
        self.services6
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s.address, *b)))
            .enumerate()
            .map(move |(i, (service, b))| (BackendId((first + i) as u16), service, b))
    }

    /// Every service of both families, IPv4's first, by its address and
    /// protocol.
    pub fn all_services(&self) -> impl Iterator<Item = (SocketAddr, Protocol)> + '_ {
        (self.services.iter().map(|s| (s.address.into(), s.protocol))).chain(
            self.services6
                .iter()
                .map(|s| (s.address.into(), s.protocol)),
        )
    }

    /// Every daemon of both families, [`daemons`](Self::daemons) then
    /// [`daemons6`](Self::daemons6) (the order of their ids), with its
    /// service's address, both named as the control side names them.
    pub fn all_daemons(
        &self,
    ) -> impl Iterator<Item = (BackendId, SocketAddr, BackendSpec<SocketAddr>)> + '_ {
        fn named<A: Into<SocketAddr>>(
            (id, service, b): (BackendId, A, BackendSpec<A>),
        ) -> (BackendId, SocketAddr, BackendSpec<SocketAddr>) {
            let b = BackendSpec {
                addr: b.addr.into(),
                weight: b.weight,
            };
            (id, service.into(), b)
        }
        self.daemons().map(named).chain(self.daemons6().map(named))
    }

    /// Every daemon of both families in the order of
    /// [`all_daemons`](Self::all_daemons), as the control side keys one: its
    /// address and its service's protocol (an ADDR:PORT may serve a TCP and a
    /// UDP service), with its weight.
    pub fn all_daemon_keys(&self) -> impl Iterator<Item = ((SocketAddr, Protocol), u32)> + '_ {
        fn keys<A: Into<SocketAddr> + Copy>(
            s: &ServiceConfig<A>,
        ) -> impl Iterator<Item = ((SocketAddr, Protocol), u32)> + '_ {
            (s.backends.iter()).map(move |b| ((b.addr.into(), s.protocol), b.weight))
        }
        (self.services.iter().flat_map(keys)).chain(self.services6.iter().flat_map(keys))
    }

    /// Checks every rule documented on the fields. The constructors call this; call
    /// it again after changing a `Config` by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.control.validate()?;
        check_ifname("front", &self.front)?;
        check_ifname("back", &self.back)?;
        if self.front == self.back {
            return Err(ConfigError::SameInterface {
                name: self.front.clone(),
            });
        }
        if let Some(queues) = self.queues.filter(|q| !(1..=MAX_QUEUES).contains(q)) {
            return Err(ConfigError::QueuesOutOfRange { queues });
        }
        if self.cores.len() > MAX_QUEUES as usize {
            return Err(ConfigError::TooManyCores {
                cores: self.cores.len(),
            });
        }
        let mut seen = HashSet::new();
        if let Some(&core) = self.cores.iter().find(|c| !seen.insert(**c)) {
            return Err(ConfigError::DuplicateCore { core });
        }
        if let Some(core) = self.control_core.filter(|&c| c >= MAX_CORE) {
            return Err(ConfigError::ControlCoreOutOfRange { core });
        }
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(ConfigError::BatchOutOfRange { batch: self.batch });
        }
        if let Some(priority) = self.worker_priority {
            if !(1..=99).contains(&priority) {
                return Err(ConfigError::WorkerPriorityOutOfRange { priority });
            }
            if self.poll != PollMode::Wakeup {
                return Err(ConfigError::WorkerPriorityNeedsWakeup);
            }
        }
        let frames = self.frames_per_queue;
        if !frames.is_power_of_two() {
            return Err(ConfigError::FramesNotPowerOfTwo { frames });
        }
        if (frames as usize) < 2 * self.batch {
            return Err(ConfigError::FramesTooSmall {
                frames,
                min: 2 * self.batch,
            });
        }
        if frames > MAX_FRAMES_PER_QUEUE {
            return Err(ConfigError::FramesTooLarge { frames });
        }
        if !self.event_ring.is_power_of_two()
            || !(MIN_EVENT_RING..=MAX_EVENT_RING).contains(&self.event_ring)
        {
            return Err(ConfigError::BadEventRing {
                slots: self.event_ring,
            });
        }
        if self.flow_capacity == 0 {
            return Err(ConfigError::ZeroFlowCapacity);
        }
        if let Some(mss) = self.mss_clamp {
            if !(MIN_MSS_CLAMP..=MAX_MSS_CLAMP).contains(&mss) {
                return Err(ConfigError::MssClampOutOfRange { mss });
            }
        }
        if self.flow_capacity > crate::flow::MAX_CAPACITY {
            return Err(ConfigError::FlowCapacityTooLarge {
                capacity: self.flow_capacity,
            });
        }
        self.check_tracked_room(self.max_workers().unwrap_or(1))?;
        self.validate_services()
    }

    fn validate_services(&self) -> Result<(), ConfigError> {
        if self.services.is_empty() && self.services6.is_empty() {
            return Err(ConfigError::NoServices);
        }
        let services = self.services.len() + self.services6.len();
        if services > MAX_SERVICES as usize {
            return Err(ConfigError::TooManyServices { services });
        }
        let daemons: usize = (self.services.iter().map(|s| s.backends.len()))
            .chain(self.services6.iter().map(|s| s.backends.len()))
            .sum();
        if daemons > MAX_DAEMONS as usize {
            return Err(ConfigError::TooManyDaemons { daemons });
        }
        validate_family(&self.services)?;
        validate_family(&self.services6)
    }
}

/// The rules on the services of one family: the families never meet (a
/// daemon of the other family is rejected while reading, [`split_family`]).
fn validate_family<A: FamilyAddr>(services: &[ServiceConfig<A>]) -> Result<(), ConfigError> {
    let mut vips = HashSet::new();
    for s in services {
        if let Some(reason) = s.address.not_one_host() {
            return Err(ConfigError::BadServiceAddress {
                address: s.address.into(),
                reason,
            });
        }
        if !vips.insert((s.address, s.protocol)) {
            return Err(ConfigError::DuplicateService {
                address: s.address.into(),
                protocol: s.protocol,
            });
        }
        s.health.validate(s.address.into())?;
    }
    // (backend address, protocol) -> the service that first listed it: one
    // ADDR:PORT may answer a TCP and a UDP service (a DNS server on 53), two
    // daemons that the records, ids and trackers tell apart by protocol.
    let mut owner: HashMap<(A, Protocol), A> = HashMap::new();
    for s in services {
        let service: SocketAddr = s.address.into();
        if s.backends.is_empty() {
            return Err(ConfigError::NoBackends { service });
        }
        for b in &s.backends {
            let backend: SocketAddr = b.addr.into();
            if let Some(reason) = b.addr.not_one_host() {
                return Err(ConfigError::BadBackendAddress {
                    service,
                    backend,
                    reason,
                });
            }
            if b.weight == 0 {
                return Err(ConfigError::ZeroWeight { service, backend });
            }
            if vips.contains(&(b.addr, Protocol::Tcp)) || vips.contains(&(b.addr, Protocol::Udp)) {
                return Err(ConfigError::BackendIsService { service, backend });
            }
            match owner.insert((b.addr, s.protocol), s.address) {
                None => {}
                Some(first) if first == s.address => {
                    return Err(ConfigError::DuplicateBackend { service, backend })
                }
                Some(first) => {
                    return Err(ConfigError::BackendInTwoServices {
                        backend,
                        protocol: s.protocol,
                        first: first.into(),
                        second: service,
                    })
                }
            }
        }
    }
    Ok(())
}

/// One service as written (`--service` or `[[service]]`, either family)
/// sorted into its family, or the error naming it and the first daemon of
/// the other family.
pub(crate) enum FamilyService {
    V4(ServiceConfig),
    V6(Service6Config),
}

pub(crate) fn split_family(
    address: SocketAddr,
    protocol: Protocol,
    policy: PolicyKind,
    backends: &[BackendSpec<SocketAddr>],
    health: ServiceHealth,
) -> Result<FamilyService, ConfigError> {
    // The daemons in the service's family, or the error naming the first
    // that is not.
    fn same_family<A>(
        service: SocketAddr,
        backends: &[BackendSpec<SocketAddr>],
        of: fn(SocketAddr) -> Option<A>,
    ) -> Result<Vec<BackendSpec<A>>, ConfigError> {
        backends
            .iter()
            .map(|b| {
                of(b.addr)
                    .map(|addr| BackendSpec {
                        addr,
                        weight: b.weight,
                    })
                    .ok_or(ConfigError::MixedFamily {
                        service,
                        backend: b.addr,
                    })
            })
            .collect()
    }
    Ok(match address {
        SocketAddr::V4(vip) => FamilyService::V4(ServiceConfig {
            address: vip,
            protocol,
            policy,
            backends: same_family(address, backends, |a| match a {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            })?,
            health,
        }),
        SocketAddr::V6(vip) => FamilyService::V6(ServiceConfig {
            address: vip,
            protocol,
            policy,
            backends: same_family(address, backends, |a| match a {
                SocketAddr::V6(a) => Some(a),
                SocketAddr::V4(_) => None,
            })?,
            health,
        }),
    })
}

/// Why `addr` cannot be one host's TCP endpoint across a network, if it
/// cannot: a service's VIP:port clients connect to, or a daemon dispatchd
/// sends their segments to. The XDP program and the workers would take such
/// an address as given and rewrite frames to it.
fn not_one_host(addr: SocketAddrV4) -> Option<&'static str> {
    let ip = addr.ip();
    if ip.is_unspecified() {
        Some("0.0.0.0 is no host's address")
    } else if ip.octets()[0] == 0 {
        Some("0.0.0.0/8 means \"this network\", a source address only (RFC 1122)")
    } else if ip.is_broadcast() {
        Some("255.255.255.255 is the broadcast address, not one host's")
    } else if ip.is_multicast() {
        Some("224.0.0.0/4 is multicast, not one host's address")
    } else if ip.is_loopback() {
        Some("127.0.0.0/8 is loopback, never reached through an interface")
    } else if addr.port() == 0 {
        Some("port 0 is no port a TCP connection can use")
    } else {
        None
    }
}

/// [`not_one_host`] for IPv6: the addresses that name no single remote host.
/// Link-local addresses are refused too: they need a scope (an interface),
/// which neither the flow records nor the XDP maps carry.
fn not_one_host6(addr: SocketAddrV6) -> Option<&'static str> {
    let ip = addr.ip();
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some(":: is no host's address")
    } else if ip.is_loopback() {
        Some("::1 is loopback, never reached through an interface")
    } else if ip.is_multicast() {
        Some("ff00::/8 is multicast, not one host's address")
    } else if first & 0xffc0 == 0xfe80 {
        Some("fe80::/10 is link-local: it needs a scope the records do not carry")
    } else if ip.to_ipv4_mapped().is_some() {
        Some("::ffff:0:0/96 is an IPv4-mapped address; write the IPv4 address instead")
    } else if addr.port() == 0 {
        Some("port 0 is no port a TCP connection can use")
    } else if addr.scope_id() != 0 {
        Some("a scope (%N) means nothing for a global address, and the records do not carry one")
    } else {
        None
    }
}

/// [`Config::daemons`] of a list of services.
pub fn daemons_of(
    services: &[ServiceConfig],
) -> impl Iterator<Item = (BackendId, SocketAddrV4, BackendSpec)> + '_ {
    services
        .iter()
        .flat_map(|s| s.backends.iter().map(move |b| (s.address, *b)))
        .enumerate()
        .map(|(i, (service, b))| (BackendId(i as u16), service, b))
}

/// Parses `ADDR:PORT` or `ADDR:PORT@WEIGHT` (the `--backend` syntax and the string
/// form of a backend in the file), IPv6 addresses in brackets
/// (`[2001:2:0:2::11]:8080@2`). Weight defaults to [`DEFAULT_WEIGHT`]; a weight of 0
/// parses and is rejected by validation.
pub fn parse_backend(s: &str) -> Result<BackendSpec<SocketAddr>, String> {
    let (addr, weight) = match s.rsplit_once('@') {
        Some((addr, w)) => {
            let weight = w
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("backend {s:?}: weight {w:?} is not a whole number"))?;
            (addr, weight)
        }
        None => (s, DEFAULT_WEIGHT),
    };
    Ok(BackendSpec {
        addr: parse_addr(addr).map_err(|e| format!("backend {e}"))?,
        weight,
    })
}

/// Parses an `ADDR:PORT` of either family, with an error that names the input.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("{s:?} is not an ADDR:PORT such as \"198.18.0.100:80\" or \"[2001:2:0:1::100]:80\"")
    })
}

/// Linux's rules for an interface name (`dev_valid_name`).
fn check_ifname(field: &'static str, name: &str) -> Result<(), ConfigError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are reserved")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains(':') {
        Some("contains ':'")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("contains whitespace or a control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ConfigError::BadInterface {
            field,
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests;
