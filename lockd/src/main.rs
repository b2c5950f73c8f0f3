//! The `lockd` command: the daemon, its `xe`-style client, the toolstack hook.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use lockd::{
    daemon::{self, Config},
    dataplane::{XdpModeRequest, cleanup},
    hook, protocol, xe, xenopsd,
};

#[derive(Parser)]
#[command(
    name = "lockd",
    version,
    about = "Switch-port locking for hypervisor VIFs in XDP"
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(
        long,
        global = true,
        env = "LOCKD_SOCKET",
        default_value = "/run/lockd/lockd.sock"
    )]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the daemon keeps its state.
#[derive(clap::Args)]
struct StoreArgs {
    /// `sqlite:DIR` (the state directory, by default) or, for policy shared by a pool of
    /// hosts, `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
    #[arg(long = "store", env = "LOCKD_STORE", default_value = "sqlite:")]
    url: lockd::store::StoreUrl,
    /// etcd: the CA certificate (PEM) that signed the members' certificates (TLS).
    #[arg(long, env = "LOCKD_ETCD_CACERT")]
    etcd_cacert: Option<PathBuf>,
    /// etcd: this host's client certificate (PEM), with --etcd-key.
    #[arg(long, env = "LOCKD_ETCD_CERT")]
    etcd_cert: Option<PathBuf>,
    /// etcd: the client certificate's key (PEM).
    #[arg(long, env = "LOCKD_ETCD_KEY")]
    etcd_key: Option<PathBuf>,
    /// etcd: the user to authenticate as, with --etcd-password.
    #[arg(long, env = "LOCKD_ETCD_USER")]
    etcd_user: Option<String>,
    /// etcd: the user's password (better given as LOCKD_ETCD_PASSWORD).
    #[arg(long, env = "LOCKD_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
}

impl StoreArgs {
    fn url(self) -> Result<lockd::store::StoreUrl> {
        use lockd::store::StoreUrl;
        let etcd_flags = self.etcd_cacert.is_some()
            || self.etcd_cert.is_some()
            || self.etcd_key.is_some()
            || self.etcd_user.is_some()
            || self.etcd_password.is_some();
        match self.url {
            StoreUrl::Etcd(mut c) => {
                c.cacert = self.etcd_cacert;
                c.cert = self.etcd_cert;
                c.key = self.etcd_key;
                c.user = self.etcd_user;
                c.password = self.etcd_password;
                Ok(StoreUrl::Etcd(c))
            }
            StoreUrl::Sqlite(_) if etcd_flags => {
                anyhow::bail!("the --etcd-* settings need --store etcd://…")
            }
            sqlite => Ok(sqlite),
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the controller daemon (a dom0 system service).
    Daemon {
        #[arg(long, env = "LOCKD_STATE_DIR", default_value = "/var/lib/lockd")]
        state_dir: PathBuf,
        #[arg(long, env = "LOCKD_BPFFS", default_value = lockd::dataplane::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
        #[arg(long, default_value = "auto", value_parser = mode_words::<XdpModeRequest>(XdpModeRequest::HELP))]
        xdp_mode: XdpModeRequest,
        /// How the TC programs are attached: clsact filters (fast to add) or TCX links (6.6+).
        #[arg(long, env = "LOCKD_TC_MODE", default_value = "clsact", value_parser = mode_words::<lockd::dataplane::TcMode>(lockd::dataplane::TcMode::HELP))]
        tc_mode: lockd::dataplane::TcMode,
        /// xenopsd's per-VIF records, re-read at start for changes made while lockd was down.
        #[arg(long, env = "LOCKD_XENOPSD_DIR", default_value = xenopsd::DEFAULT_XENOPSD_DIR)]
        xenopsd_dir: PathBuf,
        /// `lockd monitor`: at most this many drop events a second per VIF (the rest are
        /// counted and reported as suppressed).
        #[arg(long, env = "LOCKD_MONITOR_CAP", default_value_t = lockd_common::DEFAULT_MONITOR_CAP)]
        monitor_cap: u32,
        /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default).
        #[arg(long, env = "LOCKD_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        #[command(flatten)]
        store: Box<StoreArgs>,
    },
    /// Print each frame lockd drops, as it happens (Ctrl-C ends it).
    Monitor {
        /// Only this VIF's drops.
        #[arg(long)]
        vif: Option<String>,
        /// Only this netdev's drops.
        #[arg(long)]
        device: Option<String>,
        /// Only drops for this reason (`lockd vif-stats` names them).
        #[arg(long)]
        reason: Option<String>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Run every frame of a capture through lockd's kernel program under a policy (nothing
    /// attached, no traffic sent) and print each verdict, with the reference model's beside it.
    Explain {
        /// A pcap or pcapng file of Ethernet frames (tcpdump -i vifN.M -w FILE).
        #[arg(long)]
        pcap: PathBuf,
        /// Which way the frames went: sent by the VM (from-vm) or to it (to-vm).
        #[arg(long, value_enum, default_value_t = ExplainDirection::FromVm)]
        direction: ExplainDirection,
        /// One JSON object per frame.
        #[arg(long)]
        json: bool,
        /// The policy in force for this VIF (asks the daemon).
        #[arg(long, conflicts_with = "mac", required_unless_present = "mac")]
        vif: Option<String>,
        /// The guest MAC of a policy given here, with `locking-mode=`, `ipv4-allowed=` and
        /// `ipv6-allowed=` words as `vif-param-set` takes them (`locking-mode` defaults to
        /// locked).
        #[arg(long)]
        mac: Option<String>,
        /// `key=value` words for `--mac`.
        #[arg(requires = "mac")]
        params: Vec<String>,
    },
    /// Remove every pinned program, link and map (stops enforcement). The daemon must be stopped.
    Cleanup {
        #[arg(long, env = "LOCKD_BPFFS", default_value = lockd::dataplane::DEFAULT_PIN_DIR)]
        bpffs: PathBuf,
    },
    /// Checks what lockd keeps: every stored VIF row valid, and (if the daemon runs) no
    /// netdev held. Exit 0 when all is well, 1 naming each bad row or held netdev, 2 when the
    /// store cannot be read at all.
    Doctor {
        #[arg(long, env = "LOCKD_STATE_DIR", default_value = "/var/lib/lockd")]
        state_dir: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What lockd needs from this kernel, and whether it has it.
    Features {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Toolstack entry point, called by the vif scripts.
    Hook {
        #[command(subcommand)]
        hook: HookCmd,
    },
    #[command(external_subcommand)]
    Xe(Vec<String>),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExplainDirection {
    FromVm,
    ToVm,
}

#[derive(Subcommand)]
enum HookCmd {
    /// setup-vif-rules <backend> <vif-name> <vm-uuid> <devid> filter|clear
    SetupVifRules {
        backend: String,
        vif_name: String,
        vm_uuid: String,
        devid: String,
        action: String,
        /// Base directory of xenopsd's per-VIF files.
        #[arg(long, env = "LOCKD_XENOPSD_DIR", default_value = xenopsd::DEFAULT_XENOPSD_DIR)]
        xenopsd_dir: PathBuf,
    },
}

/// Sends a command to the daemon and relays its output; returns the exit code.
fn relay(socket: &std::path::Path, argv: &[String]) -> Result<u8> {
    let r = protocol::call(socket, argv)?;
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    Ok(r.code.clamp(0, 255) as u8)
}

fn run(cli: Cli) -> Result<u8> {
    match cli.cmd {
        Cmd::Daemon {
            state_dir,
            bpffs,
            xdp_mode,
            tc_mode,
            xenopsd_dir,
            monitor_cap,
            metrics_listen,
            store,
        } => {
            let store = (*store).url()?;
            // A panic on any thread ends the process: enforcement stays pinned and systemd
            // restarts the daemon, instead of a daemon that is up but cannot serve.
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                default(info);
                eprintln!("lockd: a daemon thread panicked; exiting so the service restarts");
                std::process::abort();
            }));
            daemon::run(Config {
                state_dir,
                socket: cli.socket,
                bpffs,
                xdp_mode,
                tc_mode,
                xenopsd_dir,
                monitor_cap,
                metrics_listen,
                store,
            })?;
            Ok(0)
        }
        Cmd::Cleanup { bpffs } => {
            if protocol::call(&cli.socket, &["network-list".into()]).is_ok() {
                anyhow::bail!(
                    "the daemon is running on {}: stop it first",
                    cli.socket.display()
                );
            }
            let n = cleanup(&bpffs)?;
            println!("removed {n} pins under {}", bpffs.display());
            Ok(0)
        }
        Cmd::Hook {
            hook:
                HookCmd::SetupVifRules {
                    backend,
                    vif_name,
                    vm_uuid,
                    devid,
                    action,
                    xenopsd_dir,
                },
        } => {
            let ovs = hook::openvswitch();
            let req =
                match hook::command(&xenopsd_dir, &backend, &vif_name, &vm_uuid, &devid, &action) {
                    // On an Open vSwitch host the original script does the port plumbing.
                    Ok(req) if ovs.is_some() => hook::without_plumbing(req),
                    Ok(req) => req,
                    // A record lockd cannot read leaves no VIF unfiltered: the daemon keeps the
                    // VIF's policy, or holds the netdev disabled.
                    Err(e) if action == "filter" => protocol::Request::Fence {
                        device: vif_name.clone(),
                        reason: format!("VIF {vif_name}: {e:#}"),
                        vm_uuid: Some(vm_uuid.clone()),
                    },
                    Err(e) => return Err(e.into()),
                };
            // A daemon that is restarting gets a moment (bounded) rather than a failed plug.
            let r =
                protocol::request_patiently(&cli.socket, &req, std::time::Duration::from_secs(10))?;
            print!("{}", r.stdout);
            eprint!("{}", r.stderr);
            if r.code != 0 {
                return Ok(r.code.clamp(1, 255) as u8);
            }
            match ovs {
                // lockd enforces; the toolstack's own script adds (or removes) the OVS port.
                Some(original) => {
                    let status = std::process::Command::new(&original)
                        .args([&backend, &vif_name, &vm_uuid, &devid, &action])
                        .status()
                        .map_err(|e| anyhow::anyhow!("running {}: {e}", original.display()))?;
                    Ok(status.code().unwrap_or(1).clamp(0, 255) as u8)
                }
                None => Ok(0),
            }
        }
        Cmd::Doctor { state_dir, json } => {
            use lockd::store::Store as _;
            let state = match lockd::store::SqliteStore::open_read_only(&state_dir)
                .and_then(|mut s| s.load())
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("lockd: {e}");
                    return Ok(2);
                }
            };
            let bad: Vec<serde_json::Value> = state
                .bad_vifs()
                .map(|b| serde_json::json!({"vif": b.uuid, "devices": b.devices, "reason": b.reason}))
                .collect();
            // The daemon's view, when it runs: netdevs it holds.
            let held: Vec<serde_json::Value> =
                protocol::call(&cli.socket, &["vif-list".into(), "--json".into()])
                    .ok()
                    .filter(|r| r.code == 0)
                    .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.stdout).ok())
                    .and_then(|v| v.as_array().cloned())
                    .unwrap_or_default()
                    .into_iter()
                    // Bad rows are reported above, from the store.
                    .filter(|v| v["held"].is_string() && v["bad_row"].is_null())
                    .map(|v| serde_json::json!({"vif": v["uuid"], "held": v["held"]}))
                    .collect();
            if json {
                println!("{}", serde_json::json!({"bad_rows": bad, "held": held}));
            } else {
                for b in &bad {
                    println!(
                        "bad stored row: VIF {} ({}): {}; its netdevs are held disabled",
                        b["vif"].as_str().unwrap_or_default(),
                        b["devices"]
                            .as_array()
                            .map(|d| d
                                .iter()
                                .filter_map(|x| x.as_str())
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_default(),
                        b["reason"].as_str().unwrap_or_default()
                    );
                }
                for h in &held {
                    println!(
                        "held: VIF {}: {}",
                        h["vif"].as_str().unwrap_or_default(),
                        h["held"].as_str().unwrap_or_default()
                    );
                }
                if bad.is_empty() && held.is_empty() {
                    println!("lockd: every stored VIF row is valid; no netdev is held");
                }
            }
            Ok(if bad.is_empty() && held.is_empty() {
                0
            } else {
                1
            })
        }
        Cmd::Features { json } => {
            let probed = lockd::features::probe();
            let checked = lockd::features::check(&probed);
            // Loading the programs is the verifier's verdict on this kernel (needs root).
            let programs = match &checked {
                Ok(_) => lockd::dataplane::load_programs(),
                Err(_) => Err("not tried: a required feature is missing".into()),
            };
            if json {
                let v = serde_json::json!({
                    "features": probed,
                    "programs": lockd::features::programs_json(&programs),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", lockd::features::table(&probed));
                print!("{}", lockd::features::programs_table(&programs));
            }
            match (checked, programs) {
                (Err(line), _) => {
                    eprintln!("lockd: {line}");
                    Ok(1)
                }
                (Ok(_), Err(e)) => {
                    eprintln!("lockd: this kernel does not accept lockd's programs: {e}");
                    Ok(1)
                }
                (Ok(_), Ok(_)) => {
                    // lockd runs, but its default TC attach cannot: every VIF would be held.
                    let tc: Vec<_> = probed
                        .iter()
                        .filter(|p| {
                            !p.present
                                && matches!(
                                    p.feature,
                                    lockd::features::Feature::Clsact
                                        | lockd::features::Feature::ClsBpf
                                )
                        })
                        .map(|p| p.feature.key())
                        .collect();
                    if tc.is_empty() {
                        Ok(0)
                    } else {
                        eprintln!(
                            "lockd: this kernel lacks {}: VIFs cannot be attached at TC (`--tc-mode clsact`) and would be held",
                            tc.join(" and ")
                        );
                        Ok(1)
                    }
                }
            }
        }
        Cmd::Monitor {
            vif,
            device,
            reason,
            json,
        } => daemon::monitor(
            &cli.socket,
            &protocol::Request::Monitor {
                vif,
                device,
                reason,
            },
            json,
        ),
        Cmd::Explain {
            pcap,
            direction,
            json,
            vif,
            mac,
            params,
        } => {
            use lockd::explain;
            let policy = match (vif, mac) {
                (Some(uuid), _) => {
                    let r = protocol::request(&cli.socket, &protocol::Request::Policy { vif: uuid })?;
                    if r.code != 0 {
                        eprint!("{}", r.stderr);
                        return Ok(r.code.clamp(1, 255) as u8);
                    }
                    explain::policy_from_daemon(&r.stdout)?
                }
                (None, Some(mac)) => explain::policy_from_words(&mac, &params)?,
                (None, None) => {
                    anyhow::bail!("give --vif UUID, or --mac MAC and the policy's words")
                }
            };
            let dir = match direction {
                ExplainDirection::FromVm => lockd_common::Direction::FromVm,
                ExplainDirection::ToVm => lockd_common::Direction::ToVm,
            };
            let frames = explain::read_capture(&pcap)?;
            let lines = explain::explain(&policy, &frames, dir)?;
            let mut disagree = 0;
            for l in &lines {
                if json {
                    println!("{}", serde_json::to_string(l)?);
                } else {
                    println!("{}", l.text());
                }
                if let Some(p) = &l.problem {
                    disagree += 1;
                    eprintln!(
                        "lockd: !!! frame {}: the kernel disagrees with itself: {p}: please report this",
                        l.index
                    );
                }
                if l.disagrees() {
                    disagree += 1;
                    eprintln!(
                        "lockd: !!! frame {}: the kernel says {} ({}), the model says {} ({}): please report this",
                        l.index, l.verdict, l.reason, l.model_verdict, l.model_reason
                    );
                }
                if let explain::Run::ModelOnly { why } = l.run {
                    eprintln!("lockd: frame {}: {why}", l.index);
                }
            }
            if !json {
                let dropped = lines.iter().filter(|l| l.verdict == "drop").count();
                eprintln!(
                    "lockd: {} frames, {} would pass, {dropped} would be dropped ({} policy, MAC {})",
                    lines.len(),
                    lines.len() - dropped,
                    policy.mode.name(),
                    lockd_common::policy::format_mac(policy.mac)
                );
            }
            Ok(if disagree > 0 { 3 } else { 0 })
        }
        Cmd::Xe(argv) => {
            if xe::Verb::parse(&argv[0]).is_none() {
                anyhow::bail!("unknown command '{}'; see `lockd --help`", argv[0]);
            }
            relay(&cli.socket, &argv)
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // The verbs and parameters are listed from the parameter tables.
    let matches = Cli::command().after_help(xe::params::help()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("lockd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A clap parser for a dataplane mode: its words (with what each does) shown in `--help`,
/// parsed by its `FromStr`.
fn mode_words<T>(
    words: &'static [(&'static str, &'static str)],
) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    use clap::builder::{PossibleValue, TypedValueParser as _};
    let values = words.iter().map(|&(w, help)| {
        let v = PossibleValue::new(w);
        if help.is_empty() { v } else { v.help(help) }
    });
    clap::builder::PossibleValuesParser::new(values).try_map(|s| s.parse::<T>())
}
