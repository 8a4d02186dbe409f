use std::{net::SocketAddrV4, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dispatchd::{
    config::{Config, RunArgs, DEFAULT_CONTROL_SOCKET},
    control::ctl::{self, ClientFilter, ConnFilter, Format, Request, DEFAULT_CONNS_LIMIT},
};

/// Binds many server daemons to one service address.
#[derive(Parser)]
#[command(name = "dispatchd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the dispatcher (needs root, or CAP_NET_ADMIN, CAP_BPF, CAP_PERFMON, CAP_NET_RAW, CAP_IPC_LOCK).
    Run(Box<RunArgs>),
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Ask a running dispatchd through its control socket.
    Ctl {
        /// The daemon's control socket.
        #[arg(long, global = true, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Answer in JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        verb: CtlVerb,
    },
}

#[derive(Subcommand)]
enum CtlVerb {
    /// Per-worker counters, drops by reason, per-packet time, the XDP program's
    /// verdicts, tracked connections.
    Stats,
    /// Tracked connections: client, service, daemon, owning worker, phase, age.
    Conns {
        /// Only connections to this daemon (ADDR:PORT).
        #[arg(long)]
        daemon: Option<SocketAddrV4>,
        /// Only connections from this client (ADDR or ADDR:PORT).
        #[arg(long)]
        client: Option<ClientFilter>,
        /// Show at most this many (the total matching is counted anyway).
        #[arg(long, default_value_t = DEFAULT_CONNS_LIMIT)]
        limit: usize,
    },
    /// Each daemon's health, drain flag, state, active and inactive connections.
    Backends,
    /// Give a daemon no new connections; its open ones finish.
    Drain {
        /// The daemon (ADDR:PORT).
        daemon: SocketAddrV4,
    },
    /// Give a drained daemon new connections again.
    Undrain {
        /// The daemon (ADDR:PORT).
        daemon: SocketAddrV4,
    },
}

impl CtlVerb {
    fn request(self, json: bool) -> Request {
        let format = if json { Format::Json } else { Format::Text };
        match self {
            CtlVerb::Stats => Request::Stats(format),
            CtlVerb::Conns {
                daemon,
                client,
                limit,
            } => Request::Conns(
                ConnFilter {
                    daemon,
                    client,
                    limit,
                },
                format,
            ),
            CtlVerb::Backends => Request::Backends(format),
            CtlVerb::Drain { daemon } => Request::Drain(daemon),
            CtlVerb::Undrain { daemon } => Request::Undrain(daemon),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => args
            .resolve()
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let (bare, takeover) = (args.bare_forwarder, args.takeover);
                let reload = Box::new(move || args.resolve().map_err(anyhow::Error::from));
                dispatchd::daemon::run_with(config, reload, bare, takeover)
            }),
        Command::Ctl { socket, json, verb } => {
            let line = verb.request(json).line();
            ctl::request(&socket, &line).and_then(|reply| {
                print!("{reply}");
                if reply.starts_with("error:") {
                    anyhow::bail!("{}", reply.trim_start_matches("error:").trim());
                }
                Ok(())
            })
        }
        Command::CheckConfig { file } => {
            Config::load(&file)
                .map_err(anyhow::Error::from)
                .map(|config| {
                    println!(
                        "{}: ok ({} service(s), {} daemon(s))",
                        file.display(),
                        config.services.len(),
                        config
                            .services
                            .iter()
                            .map(|s| s.backends.len())
                            .sum::<usize>()
                    );
                })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, as the user needs to act on it.
            eprintln!("dispatchd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
