//! dispatchd-bench: the end-to-end benchmark. Compares, in one run on the DESIGN.md
//! topology, four ways to get a client's TCP to the daemons:
//!
//! * direct:    the client talks to one daemon's own address, routed by the
//!   dispatcher namespace's kernel (no NAT): the floor of the topology;
//! * nftables:  the kernel's own load balancer, `dnat to numgen inc mod 4 map`;
//! * dispatchd: XDP steering + one AF_XDP worker pinned to core 1;
//! * bare:      dispatchd's sockets and rings with no parsing or rewriting
//!   (`--bare-forwarder`): the ceiling of the substrate (packet rate only).
//!
//! Workloads: new connections per second, requests per second on persistent
//! connections, bulk throughput, forwarded packets per second from an AF_XDP
//! packet generator (`dispatchd-bench pktgen`), and its 1500-byte packets.
//! Two modes, each a table (see `placement.rs`): dedicated (one forwarding core
//! per variant, as deployed) and shared. Writes `bench/results/e2e-<ts>.md`,
//! each mode's `.json` and `-latency.svg`, and `latest.md`.
//!
//! Needs root. Run through `scripts/bench.sh`.
#![deny(unsafe_code)]

mod cli;
mod cpu;
mod load;
mod lossless;
mod perf;
mod pktgen;
mod placement;
mod report;
mod run;
mod setup;
mod svg;
mod workloads;

use std::{fs, process::ExitCode};

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Cmd};
use report::Results;

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run(opts) => run::run(opts),
        Cmd::Pktgen(args) => pktgen::run(args),
        Cmd::Svg { json } => fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))
            .and_then(|text| Results::from_json(&text))
            .map(|r| print!("{}", r.svg())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatchd-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
