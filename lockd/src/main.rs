//! The `lockd` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lockd::{dataplane::XdpModeRequest, demo};

#[derive(Parser)]
#[command(name = "lockd", version, about = "Switch-port locking for hypervisor VIFs in XDP")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a namespace topology, lock its VIFs, send genuine and spoofed traffic, show counters.
    Demo {
        /// Print the counters as JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum, default_value_t = XdpModeRequest::Auto)]
        xdp_mode: XdpModeRequest,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Demo { json, xdp_mode } => demo::run(json, xdp_mode),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
