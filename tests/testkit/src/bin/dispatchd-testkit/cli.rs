//! The command line: one subcommand per job, each handed to its module.
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    time::Duration,
};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    clients::{self, Close},
    inject, server, udp,
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
        /// Instead of echoing, send as many bytes as the client asks for (see
        /// `download`).
        #[arg(long, conflicts_with = "reset")]
        download: bool,
        /// Paces each download to this many bytes a second (SO_MAX_PACING_RATE):
        /// the daemon sends on its own timer, not only as acknowledgments come.
        #[arg(long, requires = "download", default_value_t = 0)]
        pace_bytes_per_s: u64,
    },
    /// UDP echo servers (see `udp`).
    UdpServe {
        #[arg(long = "listen", required = true)]
        listen: Vec<SocketAddr>,
    },
    /// UDP queries from many connected sockets (see `udp`).
    UdpQuery {
        #[arg(long)]
        to: SocketAddr,
        /// Sockets, each its own source port.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Queries per socket, in rounds over every socket.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// The first socket's source port, the next one's port + 1, ...;
        /// default: ports the kernel picks.
        #[arg(long)]
        src_port: Option<u16>,
        /// Pause between two rounds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// How long a query waits for its answer before it counts as lost.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Bytes of each query, at least its header.
        #[arg(long, default_value_t = 0)]
        payload: usize,
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
        /// Connect from this local port (SO_REUSEADDR: a connection of it in
        /// TIME_WAIT does not refuse it): a chosen 4-tuple, one connection.
        #[arg(long)]
        src_port: Option<u16>,
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
    /// Downloads: asks a `serve --download` daemon for BYTES, checks them byte
    /// for byte; a read that waits longer than the timeout fails the download.
    Download {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: usize,
        /// Downloads, one after another, each on a new connection.
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
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
        /// spoofed sources in 198.18.128.0/17; `ack-flood`: ACKs from spoofed
        /// clients at hosts 128-255 of `--src-ip`'s /24, random ports and numbers;
        /// `ack`: plain ACK segments; `rst`: resets with sequence number `--seq`.
        #[arg(long)]
        kind: String,
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// The TCP sequence number of the frames.
        #[arg(long, default_value_t = 1)]
        seq: u32,
        /// For the floods: frames per second (0: as fast as the socket takes them).
        #[arg(long, default_value_t = 0)]
        rate: u64,
    },
    /// Waits for one TCP segment from `--from` on `--iface` and prints its
    /// sequence and acknowledgment numbers.
    Sniff {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        from: SocketAddrV4,
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    Hold {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        interval_ms: u64,
    },
    /// A TCP connection and a UDP flow from one local port (see
    /// `clients::two_protocols`).
    TwoProtocols {
        #[arg(long)]
        to: SocketAddr,
        /// The flow ended first; the other must go on.
        #[arg(long, value_enum)]
        close: clients::Protocol,
        /// How long the other goes on after the close.
        #[arg(long, default_value_t = 3000)]
        after_ms: u64,
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
        /// How long a request may wait for its echo before its connection
        /// counts as broken.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Some(addr) = cli.bind {
        crate::sockets::bind_clients_to(addr);
    }
    match cli.command {
        Command::Serve {
            listen,
            reset,
            download,
            pace_bytes_per_s,
        } => {
            let mode = match (reset, download) {
                (_, true) => server::Mode::Download {
                    pace: pace_bytes_per_s,
                },
                (true, false) => server::Mode::EchoThenReset,
                (false, false) => server::Mode::Echo,
            };
            server::serve(&listen, mode)
        }
        Command::UdpServe { listen } => udp::serve(&listen),
        Command::UdpQuery {
            to,
            clients,
            count,
            src_port,
            interval_ms,
            timeout_ms,
            payload,
        } => udp::query(udp::Query {
            to,
            clients,
            count,
            src_port,
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(timeout_ms),
            payload,
        }),
        Command::Connect {
            to,
            connections,
            concurrency,
            payload,
            timeout_ms,
            reset,
            expect_reset,
            src_port,
        } => {
            if let Some(port) = src_port {
                anyhow::ensure!(connections == 1, "--src-port makes one connection");
                crate::sockets::connect_from_port(port);
            }
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
        Command::Download {
            to,
            bytes,
            count,
            timeout_ms,
        } => clients::download(to, bytes, count, Duration::from_millis(timeout_ms)),
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
            seq,
            rate,
        } => {
            let from = SocketAddrV4::new(src_ip, src_port);
            let what = inject::Injection {
                kind: &kind,
                count,
                seq,
                rate,
            };
            inject::run(&iface, &dst_mac, from, to, what)
        }
        Command::Sniff {
            iface,
            from,
            timeout_ms,
        } => inject::sniff(&iface, from, Duration::from_millis(timeout_ms)),
        Command::Hold {
            to,
            seconds,
            interval_ms,
        } => clients::hold(
            to,
            Duration::from_secs(seconds),
            Duration::from_millis(interval_ms),
        ),
        Command::TwoProtocols {
            to,
            close,
            after_ms,
            interval_ms,
        } => clients::two_protocols(
            to,
            close,
            Duration::from_millis(after_ms),
            Duration::from_millis(interval_ms),
        ),
        Command::Rr {
            to,
            connections,
            seconds,
            payload,
            timeout_ms,
        } => clients::request_reply(
            to,
            connections,
            Duration::from_secs_f64(seconds),
            payload,
            Duration::from_millis(timeout_ms),
        ),
    }
}
