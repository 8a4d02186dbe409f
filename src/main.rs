use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dispatchd::{
    config::{Config, RunArgs, DEFAULT_CONTROL_SOCKET},
    control::ctl,
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
    /// Ask a running dispatchd: stats | conns | backends | drain ADDR | undrain ADDR.
    Ctl {
        /// The daemon's control socket.
        #[arg(long, default_value = DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        /// Answer in JSON.
        #[arg(long)]
        json: bool,
        /// The request and its argument, if any.
        #[arg(required = true, num_args = 1..=2)]
        request: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => args
            .resolve()
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                let bare = args.bare_forwarder;
                let reload = Box::new(move || args.resolve().map_err(anyhow::Error::from));
                dispatchd::daemon::run_with(config, reload, bare)
            }),
        Command::Ctl {
            socket,
            json,
            request,
        } => {
            let mut line = request.join(" ");
            if json {
                line.push_str(" json");
            }
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
