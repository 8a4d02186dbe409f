//! The command line and the run's options.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::pktgen::PktgenArgs;

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

#[derive(clap::Args, Debug, Clone)]
pub struct RunOpts {
    /// Measured seconds per workload.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Warm-up seconds before each measured workload.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Smoke test: 3 s per workload, 1 s warm-up (about a minute in all).
    #[arg(long)]
    pub quick: bool,
    /// Client threads of the new-connections workload.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Persistent connections of the requests-per-second workload.
    #[arg(long, default_value_t = 16)]
    pub rr_connections: usize,
    /// 5-tuples of the packet generator.
    #[arg(long, default_value_t = 1024)]
    pub tuples: u16,
    /// Variants to run (comma-separated subset of direct,nftables,dispatchd,bare).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,nftables,dispatchd,bare"
    )]
    pub variants: Vec<String>,
    /// Record `perf record -a -e cpu-clock` during the rr and pps workloads of
    /// nftables and dispatchd and write the top symbols next to the results.
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
