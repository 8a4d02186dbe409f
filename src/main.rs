use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use dispatchd::config::{Config, RunArgs};

/// Binds many server daemons to one service address.
#[derive(Parser)]
#[command(name = "dispatchd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the dispatcher (needs root, or CAP_NET_ADMIN + CAP_BPF + CAP_NET_RAW).
    Run(RunArgs),
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => args
            .resolve()
            .map_err(anyhow::Error::from)
            .and_then(|config| dispatchd::daemon::run(&config)),
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
