//! The command line and the run's options.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::pktgen::PktgenArgs;

/// Every workload, in the order a variant runs them (`--workloads` picks a
/// subset).
pub const WORKLOADS: [&str; 7] = [
    "connections",
    "rr",
    "rr4",
    "bulk",
    "stream",
    "pps",
    "frames1500",
];

/// Connections of the `rr4` workload, whose p99.9 the shared-core tail target
/// is about (README, the bench section); `rr` uses `--rr-connections`. The
/// report's row labels say 4.
pub const RR4_CONNECTIONS: usize = 4;

#[derive(Parser)]
#[command(name = "dispatchd-bench")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Bring up the topology, run every variant and workload, write the results.
    Run(RunOpts),
    /// The AF_XDP packet generator (run inside the client namespace).
    Pktgen(PktgenArgs),
    /// Draw the latency SVG of a results JSON again (to stdout).
    #[command(hide = true)]
    Svg { json: PathBuf },
}

/// Where the run places its processes and the kernel's forwarding.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// As deployed: one forwarding core (1) for each variant, clients and
    /// daemons on core 0.
    Dedicated,
    /// Everything shares both cores (only dispatchd's worker and the packet
    /// generator pinned).
    Shared,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Dedicated => "dedicated",
            Mode::Shared => "shared",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Warm-up seconds before each measured workload.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Smoke test: 3 s per workload, 1 s warm-up (about a minute in all).
    #[arg(long)]
    pub quick: bool,
    /// The modes to run, each a table of its own (dedicated first).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dedicated,shared"
    )]
    pub modes: Vec<Mode>,
    /// Rounds of every variant in turn (variants alternate within a round);
    /// each value reported is the median of the rounds. Default 3 (a median
    /// of three is what a result needs), 1 with --quick.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// In dedicated mode, the core of dispatchd's management thread
    /// (`--control-core`); the worker is on core 1.
    #[arg(long, default_value_t = 1)]
    pub control_core: usize,
    /// In dedicated mode, leave the dispatcher's veth NAPI unthreaded: XDP and
    /// dispatchd's copy-mode receive then run in the sender's softirq (core 0).
    #[arg(long)]
    pub no_threaded_napi: bool,
    /// In dedicated mode, run the threaded NAPI kthreads at SCHED_FIFO 50 (as
    /// threaded IRQ handlers run) instead of SCHED_OTHER.
    #[arg(long)]
    pub napi_fifo: bool,
    /// Leave `vm.nr_hugepages` alone, so dispatchd's UMEM goes on ordinary
    /// pages. Otherwise the bench reserves huge pages for its workers' UMEMs
    /// while dispatchd runs and gives the count back after (README, "Huge
    /// pages for the UMEM").
    #[arg(long)]
    pub umem_small_pages: bool,
    /// In dedicated mode, dispatchd's `--poll` (unless --dispatchd-args names
    /// one): `wakeup` by default, the best of the three on this placement, where
    /// veth's NAPI kthreads share the worker's core (README, "poll").
    #[arg(long, default_value = "wakeup")]
    pub dedicated_poll: String,
    /// More arguments for dispatchd's command line (whitespace-separated), e.g.
    /// "--poll busy".
    #[arg(long, allow_hyphen_values = true)]
    pub dispatchd_args: Option<String>,
    /// Client threads of the new-connections workload.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Persistent connections of the requests-per-second workload.
    #[arg(long, default_value_t = 16)]
    pub rr_connections: usize,
    /// 5-tuples of the packet generator.
    #[arg(long, default_value_t = 1024)]
    pub tuples: u16,
    /// Variants to run (comma-separated subset of
    /// direct,nftables,dispatchd,dispatchd2,bare,bare-xdp; dispatchd2 is
    /// dispatchd with two workers, one per core: the scaling rows, shared mode
    /// only; bare-xdp is the XDP program redirecting the generator's frames
    /// itself, untouched: the ceiling of forwarding in XDP, packet rate only).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nftables,dispatchd,bare"
    )]
    pub variants: Vec<String>,
    /// Workloads to run (comma-separated subset of
    /// connections,rr,rr4,bulk,stream,pps,frames1500).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "connections,rr,rr4,bulk,stream,pps,frames1500"
    )]
    pub workloads: Vec<String>,
    /// Receive and transmit queues of every veth of the topology (more than
    /// one for the dispatchd2 variant's second worker to have a queue of its
    /// own; every variant then runs on that topology).
    #[arg(long, default_value_t = 1)]
    pub queues: usize,
    /// Rates each generator workload's zero-loss search tries (after its
    /// overload window, per variant and round; a failed rate takes a second
    /// trial, a push-back excepted); 0 skips the search.
    #[arg(long, alias = "lossless-trials", default_value_t = 8)]
    pub lossless_rates: usize,
    /// Seconds of each zero-loss trial.
    #[arg(long, default_value_t = 0.5)]
    pub lossless_seconds: f64,
    /// The rate (frames per second) of each generator workload's fixed-rate
    /// window, after its overload window (dedicated mode, dispatchd's `--poll
    /// wakeup`): every variant gets the same offered load, meant to be below
    /// what any of them carries, and the bench reports core 1's busy time per
    /// frame received. 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    pub cost_rate: u32,
    /// Seconds of the fixed-rate window (0 skips it).
    #[arg(long, default_value_t = 3.0)]
    pub cost_seconds: f64,
    /// Record `perf record -a -e cpu-clock` during the connections, rr, rr4 and generator workloads of
    /// nftables, dispatchd and the bare forwarder, and write the top symbols next to the results.
    #[arg(long)]
    pub perf: bool,
    /// Where the results go.
    #[arg(long, default_value = "bench/results")]
    pub out_dir: PathBuf,
    /// dispatchd's `--reply-mode` (stateless or tracked); dispatchd's default
    /// when not given (so that an older dispatchd runs too).
    #[arg(long)]
    pub reply_mode: Option<String>,
    /// Directory holding dispatchd and dispatchd-testkit (default: this binary's).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Namespace prefix (default: db<pid>).
    #[arg(long)]
    pub prefix: Option<String>,
}

impl RunOpts {
    /// The rounds to run: `--rounds`, or its default.
    pub fn rounds(&self) -> usize {
        self.rounds.unwrap_or(if self.quick { 1 } else { 3 }).max(1)
    }

    /// Whether the generator workloads get their fixed-rate window: only
    /// where dispatchd's worker sleeps when idle (dedicated mode, `--poll
    /// wakeup`), as a polling worker keeps its core busy whatever the rate.
    pub fn fixed_rate_window(&self, mode: Mode) -> bool {
        self.cost_rate > 0
            && self.cost_seconds > 0.0
            && mode == Mode::Dedicated
            && self.dedicated_poll() == Some("wakeup")
    }

    /// The `--poll` dispatchd gets in dedicated mode: none when
    /// --dispatchd-args names its own.
    pub fn dedicated_poll(&self) -> Option<&str> {
        let named = self
            .dispatchd_args
            .as_deref()
            .is_some_and(|a| a.split_whitespace().any(|w| w.starts_with("--poll")));
        (!named).then_some(self.dedicated_poll.as_str())
    }
}
