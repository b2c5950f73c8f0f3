//! `lockd-demo` (`cargo xtask run -- demo`): builds a bridge and three VMs in network
//! namespaces, locks every VIF, sends genuine and spoofed traffic and prints the counters.

use std::process::ExitCode;

use clap::Parser;
use lockd::dataplane::XdpModeRequest;

#[derive(Parser)]
#[command(
    name = "lockd-demo",
    about = "Show lockd's from-VM locking on a namespace topology"
)]
struct Cli {
    /// Print the counters as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "auto", value_parser = xdp_mode())]
    xdp_mode: XdpModeRequest,
}

/// `--xdp-mode`: the dataplane's own words for its modes.
fn xdp_mode() -> impl clap::builder::TypedValueParser<Value = XdpModeRequest> {
    use clap::builder::TypedValueParser as _;
    use clap::builder::PossibleValue;
    let values = XdpModeRequest::HELP.iter().map(|&(w, help)| {
        let v = PossibleValue::new(w);
        if help.is_empty() { v } else { v.help(help) }
    });
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<XdpModeRequest>())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match lockd_kit::demo::run(cli.json, cli.xdp_mode) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockd-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
