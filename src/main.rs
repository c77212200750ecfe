//! `vswitch`: a userspace poll-mode virtual switch for vhost-user guests.
//!
//! `vswitch run --config FILE` runs the service in the foreground until SIGINT or
//! SIGTERM; `vswitch check --config FILE` validates a configuration; `vswitch ctl`
//! queries a running switch.

mod capture;
mod control;
mod evpn;
mod metrics;
mod ports;
mod service;

use vswitch::config;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "A userspace poll-mode virtual switch for vhost-user guests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the switch in the foreground until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a configuration file without starting anything.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Query or change a running switch: show, stats, fdb, fdb-flush,
    /// add-port NAME key=value..., del-port NAME, reload, rebalance,
    /// capture PORT [--direction rx|tx|both] [--count N] [--snaplen N] [--vlan N] -w FILE|-.
    Ctl {
        /// The switch's control socket (config key switch.control_socket).
        #[arg(long, short, default_value = config::DEFAULT_CONTROL_SOCKET)]
        socket: PathBuf,
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(control::COMMANDS))]
        command: String,
        /// Print JSON instead of text (show, stats, fdb).
        #[arg(long)]
        json: bool,
        /// The command's arguments (add-port: NAME key=value...; del-port: NAME;
        /// capture: PORT [options] -w FILE, `-w -` for stdout).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VSWITCH_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check { config } => match config::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} ports, PMD cores {:?})",
                    config.display(),
                    c.ports.len(),
                    c.pmd_cores
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Run { config } => match config::Config::load(&config) {
            Ok(c) => service::run(c),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Ctl {
            socket,
            command,
            args,
            ..
        } if command == "capture" => capture::client(&socket, &args),
        Cmd::Ctl {
            socket,
            command,
            json,
            args,
        } => match control::request(
            &socket,
            &[command]
                .into_iter()
                .chain(args)
                .chain(json.then(|| "--json".to_string()))
                .collect::<Vec<_>>()
                .join(" "),
        ) {
            Ok(out) => {
                print!("{out}");
                if out.starts_with("error:") {
                    ExitCode::from(2)
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) => {
                eprintln!(
                    "error: cannot reach the switch at {}: {e}",
                    socket.display()
                );
                ExitCode::from(1)
            }
        },
    }
}
