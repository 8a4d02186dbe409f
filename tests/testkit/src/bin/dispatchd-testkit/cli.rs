//! The command line: one subcommand per job, each handed to its module.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    clients::{self, Close},
    inject, server,
};

#[derive(Parser)]
#[command(name = "dispatchd-testkit")]
struct Cli {
    /// Clients connect from this local address (a host with several).
    #[arg(long, global = true)]
    bind: Option<Ipv4Addr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Serve {
        #[arg(long = "listen", required = true)]
        listen: Vec<SocketAddr>,
        /// After echoing the first read, abort the connection with a RST.
        #[arg(long)]
        reset: bool,
    },
    Connect {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// End each connection with a RST instead of a FIN.
        #[arg(long)]
        reset: bool,
        /// Expect the daemon to reset each connection after its echo.
        #[arg(long)]
        expect_reset: bool,
    },
    /// Short connections for a while, each failure reported as a `failure` JSON
    /// line (for attribution) rather than ending the run.
    Churn {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    Bulk {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: usize,
    },
    /// Opens many connections at once and holds them: counts the accepted and the
    /// refused (connect timed out), then checks every accepted one still echoes.
    Many {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        #[arg(long, default_value_t = 1500)]
        timeout_ms: u64,
    },
    /// Sends hand-made frames out of an interface through a raw AF_PACKET socket.
    Inject {
        #[arg(long)]
        iface: String,
        /// Destination MAC (the dispatcher's front interface).
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src_ip: Ipv4Addr,
        #[arg(long, default_value_t = 40_000)]
        src_port: u16,
        #[arg(long)]
        to: SocketAddrV4,
        /// `malformed`: one of each malformed kind per round; `syn-flood`: SYNs from
        /// spoofed sources in 198.18.128.0/17; `ack`: plain ACK segments.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    Rr {
        #[arg(long)]
        to: SocketAddr,
        /// Persistent connections, one thread each.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long)]
        seconds: f64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(addr) = cli.bind {
        crate::sockets::bind_clients_to(addr);
    }
    match cli.command {
        Command::Serve { listen, reset } => server::serve(&listen, reset),
        Command::Connect {
            to,
            connections,
            concurrency,
            payload,
            timeout_ms,
            reset,
            expect_reset,
        } => {
            let close = match (reset, expect_reset) {
                (true, _) => Close::Reset,
                (false, true) => Close::ExpectReset,
                (false, false) => Close::Fin,
            };
            let timeout = Duration::from_millis(timeout_ms);
            clients::connect_many(to, connections, concurrency, payload, timeout, close)
        }
        Command::Churn {
            to,
            seconds,
            concurrency,
            payload,
            timeout_ms,
        } => clients::churn(
            to,
            Duration::from_secs_f64(seconds),
            concurrency,
            payload,
            Duration::from_millis(timeout_ms),
        ),
        Command::Bulk { to, bytes } => clients::bulk(to, bytes),
        Command::Many {
            to,
            connections,
            concurrency,
            timeout_ms,
        } => clients::many(
            to,
            connections,
            concurrency,
            Duration::from_millis(timeout_ms),
        ),
        Command::Inject {
            iface,
            dst_mac,
            src_ip,
            src_port,
            to,
            kind,
            count,
        } => {
            let from = SocketAddrV4::new(src_ip, src_port);
            inject::run(&iface, &dst_mac, from, to, &kind, count)
        }
        Command::Hold {
            to,
            seconds,
            interval_ms,
        } => clients::hold(
            to,
            Duration::from_secs(seconds),
            Duration::from_millis(interval_ms),
        ),
        Command::Rr {
            to,
            connections,
            seconds,
            payload,
        } => clients::request_reply(to, connections, Duration::from_secs_f64(seconds), payload),
    }
}
