use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use dispatchd::{
    config::{RunArgs, DEFAULT_CONTROL_SOCKET},
    control::ctl::{self, ClientFilter, ConnFilter, Format, Request, DEFAULT_CONNS_LIMIT},
    daemon::Bare,
    log::{LogFormat, LogLevel},
};
use std::io::Write;

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
    Run {
        #[command(flatten)]
        args: Box<RunArgs>,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a configuration (a file, and `run` flags merged over it as `run`
    /// merges them) and exit.
    CheckConfig {
        /// The TOML file to check (the same as --config).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// Print the effective configuration, file and flags merged, as TOML
        /// with every key (defaults included); it loads as the same configuration.
        #[arg(long)]
        print: bool,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
    /// Write the manual page or shell completions, generated from this command
    /// line's own definition (for packaging; README: Installing).
    Generate {
        #[command(subcommand)]
        what: Generate,
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

/// How `run` logs (process settings, not configuration: a reload keeps them).
#[derive(clap::Args)]
struct LogArgs {
    /// Log line format on stdout.
    #[arg(long, value_enum, default_value_t)]
    log_format: LogFormat,
    /// The least severe level logged.
    #[arg(long, value_enum, default_value_t)]
    log_level: LogLevel,
}

#[derive(Subcommand)]
enum Generate {
    /// The manual page (roff): dispatchd(1) on stdout, or with DIR one page per
    /// command (dispatchd.1, dispatchd-run.1, dispatchd-ctl-stats.1, ...) written there.
    Man {
        /// Directory to write every page to (it must exist).
        dir: Option<PathBuf>,
    },
    /// The completion script for SHELL, on stdout.
    Completions { shell: clap_complete::Shell },
}

impl Generate {
    fn write(self) -> anyhow::Result<()> {
        let cmd = Cli::command();
        match self {
            Generate::Man { dir: None } => {
                let mut out = std::io::stdout().lock();
                clap_mangen::Man::new(cmd).render(&mut out)?;
                out.flush()?;
            }
            Generate::Man { dir: Some(dir) } => {
                clap_mangen::generate_to(cmd, &dir)
                    .with_context(|| format!("writing manual pages to {}", dir.display()))?;
                println!("manual pages written to {}", dir.display());
            }
            Generate::Completions { shell } => {
                // Into memory first: clap_complete panics when its writer
                // fails, and stdout may be a closed pipe.
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut cmd.clone(), "dispatchd", &mut script);
                let mut out = std::io::stdout().lock();
                out.write_all(&script)?;
                out.flush()?;
            }
        }
        Ok(())
    }
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
        daemon: Option<SocketAddr>,
        /// Only connections from this client (ADDR or ADDR:PORT).
        #[arg(long)]
        client: Option<ClientFilter>,
        /// Show at most this many (the total matching is counted anyway).
        #[arg(long, default_value_t = DEFAULT_CONNS_LIMIT)]
        limit: usize,
    },
    /// Each daemon's health, drain flag, state, active and inactive connections,
    /// next hop, weight and the operator's override of it (ctl drain/weight).
    Backends,
    /// Give a daemon no new connections; its open ones finish. Kept across
    /// reloads (and restarts with a state_file) until undrained.
    Drain {
        /// The daemon (ADDR:PORT; [ADDR]:PORT for IPv6): every daemon at that
        /// ADDR:PORT, the TCP and the UDP service's if it serves both.
        daemon: SocketAddr,
    },
    /// Give a drained daemon new connections again.
    Undrain {
        /// The daemon (ADDR:PORT; [ADDR]:PORT for IPv6): every daemon at that
        /// ADDR:PORT, the TCP and the UDP service's if it serves both.
        daemon: SocketAddr,
    },
    /// Set a daemon's weight (its share of new connections under the weighted
    /// policies) over the config's, across reloads (and restarts with a
    /// state_file) until --reset; 0 drains it, and a weight above 0 undrains it.
    Weight {
        /// The daemon (ADDR:PORT; [ADDR]:PORT for IPv6): every daemon at that
        /// ADDR:PORT, the TCP and the UDP service's if it serves both.
        daemon: SocketAddr,
        /// The new weight.
        #[arg(required_unless_present = "reset")]
        weight: Option<u32>,
        /// Back to the config's weight and undrained: clears the daemon's
        /// overrides.
        #[arg(long, conflicts_with = "weight")]
        reset: bool,
    },
    /// Whether this instance should get traffic: exit 0 when ready; otherwise
    /// exit 1 and one line saying why (stopping, a worker not running, a
    /// service without a healthy daemon, or dispatchd not answering). For a
    /// BGP speaker's check.
    Ready,
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
            CtlVerb::Weight {
                daemon,
                weight: Some(weight),
                ..
            } => Request::Weight(daemon, weight),
            CtlVerb::Weight { daemon, .. } => Request::WeightReset(daemon),
            CtlVerb::Ready => Request::Ready(format),
        }
    }
}

/// `dispatchd check-config`: resolves as `run` would, says what it found, and
/// with `print` writes the effective configuration to stdout.
fn check_config(run: &RunArgs, print: bool) -> anyhow::Result<()> {
    let config = run.resolve()?;
    let origin = match &run.config {
        Some(path) => path.display().to_string(),
        None => "flags".to_owned(),
    };
    let summary = format!(
        "{origin}: ok ({} service(s), {} daemon(s))",
        config.services.len() + config.services6.len(),
        config.daemons().count() + config.daemons6().count()
    );
    // Written, not print!ed: print! panics when stdout is a closed pipe
    // (`check-config --print | head`).
    let mut out = std::io::stdout().lock();
    if print {
        // The summary as a comment keeps stdout a file `--config` can load.
        let toml = config
            .to_toml()
            .map_err(|e| anyhow::anyhow!("printing the configuration: {e}"))?;
        write!(
            out,
            "# {summary}; effective configuration (file and flags merged, defaults included)\n{toml}"
        )?;
    } else {
        writeln!(out, "{summary}")?;
    }
    out.flush()?;
    Ok(())
}

/// Whether a `ready` reply, text or JSON, says ready.
fn ready_reply(reply: &str) -> bool {
    reply == "ready\n" || reply.starts_with("{\"ready\":true")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { args, log } => {
            dispatchd::log::init(log.log_format, log.log_level);
            let result = args
                .resolve()
                .map_err(anyhow::Error::from)
                .and_then(|config| {
                    let bare = match (args.bare_forwarder, args.bare_xdp_redirect) {
                        (true, _) => Bare::Sockets,
                        (_, true) => Bare::XdpRedirect,
                        _ => Bare::Off,
                    };
                    let takeover = args.takeover;
                    let reload = Box::new(move || args.resolve().map_err(anyhow::Error::from));
                    dispatchd::daemon::run_with(config, reload, bare, takeover)
                });
            if let (Err(e), LogFormat::Json) = (&result, log.log_format) {
                // Log pipelines read the cause from the log too; the line on
                // stderr below stays the process's last word for people.
                tracing::error!(error = %format!("{e:#}"), "stopped on an error");
            }
            result
        }
        Command::Ctl { socket, json, verb } => {
            let request = verb.request(json);
            let line = request.line();
            match ctl::request(&socket, &line) {
                Ok(reply) => {
                    print!("{reply}");
                    if reply.starts_with("error:") {
                        Err(anyhow::anyhow!(
                            "{}",
                            reply.trim_start_matches("error:").trim()
                        ))
                    } else if matches!(request, Request::Ready(_)) && !ready_reply(&reply) {
                        // The reason is the reply already printed.
                        return ExitCode::FAILURE;
                    } else {
                        Ok(())
                    }
                }
                Err(e) => Err(e),
            }
        }
        Command::Generate { what } => what.write(),
        Command::CheckConfig {
            file,
            print,
            mut run,
        } => {
            run.config = file.or(run.config.take());
            check_config(&run, print)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the context chain joined, as the user needs to act on it.
            eprintln!("{}", dispatchd::log::fatal_line(&e));
            ExitCode::FAILURE
        }
    }
}
