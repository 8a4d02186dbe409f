//! Real TCP servers and clients for the demo, the end-to-end tests and the
//! benchmarks, and a raw frame injector. Run inside the topology's namespaces
//! with `ip netns exec`.
//!
//! serve:   echo servers; each connection first gets one line,
//!          `hello daemon=<listen addr> peer=<client addr as the daemon sees it>`,
//!          then everything it sends echoed back.
//! connect: many short connections (connect, hello, payload echo, close).
//! churn:   short connections for a while; failures reported one by one.
//! bulk:    one connection carrying N bytes each way, verified byte for byte.
//! hold:    one long-lived connection exchanging a message every interval.
//! rr:      K persistent connections, each doing request/reply exchanges back to
//!          back for D seconds (requests per second and per-request latency).
//! many:    many connections opened at once and held.
//! inject:  hand-made frames (malformed ones, SYN floods, stray ACKs, resets)
//!          sent through a raw socket.
//! sniff:   the sequence numbers of one segment of a live connection.
//! udp-serve, udp-query: UDP echo servers and a query client (see `udp.rs`).
//!
//! Every client prints `key=value` lines that tests parse, and exits non-zero if
//! any connection failed or any echo differed. `--bind ADDR` (before the
//! subcommand) makes the clients connect from that local address.
#![deny(unsafe_code)]

mod cli;
mod clients;
mod inject;
mod server;
mod sockets;
mod udp;

use std::process::ExitCode;

fn main() -> ExitCode {
    match cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dispatchd-testkit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
