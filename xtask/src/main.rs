//! `cargo xtask`: bootstrap the toolchain on a fresh machine, then build, run, test or fuzz.
//!
//! Every command bootstraps first. The bootstrap is idempotent and takes well under a second
//! when everything is already in place:
//! - Debian packages the tests and the demo use (apt-get, only if a tool is missing);
//! - the nightly toolchain with rust-src (for `-Z build-std=core` on the BPF target);
//! - bpf-linker 0.13 built against the nightly toolchain's own LLVM (no prebuilt binary
//!   matches it), installed under `target/toolchain`.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

mod guest;
mod initramfs;
mod kernel;
mod xen;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "lockd developer tasks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing lockd needs (idempotent).
    Bootstrap,
    /// Bootstrap, build lockd (release) and run it with the given arguments (`demo`: the demo).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bootstrap and run every test tier on this kernel, then the guest tier on Debian 12's
    /// 6.1 kernel under qemu, then the Xen tier (needs root: BPF and network namespaces).
    Test {
        /// Only the guest tier, on this kernel series (6.1 or 6.12); with `--xen`, the Xen
        /// tier with this kernel as dom0 (and domUs).
        #[arg(long)]
        kernel: Option<String>,
        /// Only the tiers on this machine's kernel.
        #[arg(long, conflicts_with = "kernel")]
        host_only: bool,
        /// Only the Xen tier: Xen 4.17 under qemu with Debian's 6.1 and then 6.12 as PV dom0
        /// (or the `--kernel` given), domUs created by xl, lockd on their netback vifs (the
        /// default run ends with it).
        #[arg(long, conflicts_with = "host_only")]
        xen: bool,
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmark lockd against the empty-XDP floor, nftables and ebtables (needs root).
    /// Writes JSON, a Markdown table and SVG plots (full runs: into docs/bench/).
    Bench {
        /// A shorter run (under 10 minutes).
        #[arg(long)]
        quick: bool,
        /// Where to write the JSON results.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Only the daemon API latency and memory section.
        #[arg(long)]
        api: bool,
        /// Only the kernel pktgen section (says `unavailable` where the kernel has none).
        #[arg(long)]
        pktgen: bool,
        /// Only the toolstack hook section (500 plugs, 200 live re-filters).
        #[arg(long)]
        hook: bool,
        /// Only the netback sections: lockd's TC program by skb shape (the kernel's own run
        /// statistics), and lockd, nftables and ebtables on netback-shaped skbs.
        #[arg(long)]
        netback: bool,
        /// Only the etcd section: a write on one host enforced on two others, the CLI's
        /// round trip against etcd, a daemon's start with 4096 VIFs in etcd.
        #[arg(long)]
        etcd: bool,
    },
    /// Run the kernel-vs-model differential test on many random frames.
    Fuzz {
        /// Number of random frames.
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed (random when omitted; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Packages and one binary each that proves the package is there.
const APT: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("ebtables", "ebtables"),
    // ebtables-nft (the bench's ebtables where the kernel has no ebtables-legacy filter table)
    // comes only with Debian's iptables package.
    ("iptables", "ebtables-nft"),
    // xdp-filter, the benchmark's XDP peer.
    ("xdp-tools", "xdp-filter"),
    ("bridge-utils", "brctl"),
    ("iperf3", "iperf3"),
    ("tcpdump", "tcpdump"),
    ("bpftool", "bpftool"),
    ("iputils-ping", "ping"),
    ("procps", "sysctl"),
    ("ethtool", "ethtool"),
    ("util-linux", "nsenter"),
    // `promtool check metrics` on lockd's /metrics; curl scrapes it.
    ("prometheus", "promtool"),
    ("curl", "curl"),
    // The fail-closed tests edit a stored row with sqlite3 while the daemon is stopped.
    ("sqlite3", "sqlite3"),
    // etcd-client (etcd's v3 API over gRPC) builds its protocol with protoc.
    ("protobuf-compiler", "protoc"),
    // The pool tests start their own etcd members and read them with etcdctl.
    ("etcd-server", "etcd"),
    ("etcd-client", "etcdctl"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The kernel series `cargo xtask test` also runs the guest tier on (Debian 12's).
const DEFAULT_GUEST_KERNEL: &str = "6.1";

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub(crate) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn toolchain_dir() -> PathBuf {
    env::var_os("LOCKD_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/toolchain"))
}

fn run(cli: Cli) -> Result<()> {
    bootstrap()?;
    match cli.cmd {
        Cmd::Bootstrap => Ok(()),
        Cmd::Run { args } => {
            // The demo is the test kit's binary (it links pnet, which the product does not).
            let (package, bin, args) = match args.split_first() {
                Some((first, rest)) if first == "demo" => ("lockd-kit", "lockd-demo", rest),
                _ => ("lockd", "lockd", &args[..]),
            };
            cargo(&["build", "--release", "-p", package, "--bin", bin], &[])?;
            let bin = workspace().join("target/release").join(bin);
            status(Command::new(bin).args(args))
        }
        Cmd::Test {
            kernel,
            host_only,
            xen,
            args,
        } => {
            require_root()?;
            if xen {
                return match kernel.as_deref() {
                    Some(series) => xen::run(series),
                    None => xen::run_all(),
                };
            }
            if let Some(series) = kernel {
                return guest::run(&series);
            }
            // The house rules first: every crate, every target, no warning (lockd-ebpf too; on
            // the host it builds as an empty program so that it type-checks).
            eprintln!("xtask: cargo clippy --workspace --all-targets -- -D warnings");
            cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
            // The daemon tests run the real binary; `cargo test` builds binaries only for the
            // package that owns them.
            cargo(&["build", "-p", "lockd", "--bin", "lockd", "--features", "test-hooks"], &[])?;
            let mut a = vec!["test", "--workspace", "--exclude", "lockd-ebpf"];
            a.extend(args.iter().map(String::as_str));
            cargo(&a, &[])?;
            if host_only {
                return Ok(());
            }
            guest::run(DEFAULT_GUEST_KERNEL)?;
            xen::run_all()
        }
        Cmd::Bench {
            quick,
            json,
            api,
            pktgen,
            hook,
            netback,
            etcd,
        } => {
            require_root()?;
            cargo(
                &[
                    "build",
                    "--release",
                    "-p",
                    "lockd",
                    "-p",
                    "lockd-tests",
                    "--bin",
                    "lockd",
                    "--bin",
                    "lockd-bench",
                ],
                &[],
            )?;
            let out = if quick { "target/bench" } else { "docs/bench" };
            let mut cmd = Command::new(workspace().join("target/release/lockd-bench"));
            cmd.current_dir(workspace()).args(["--out-dir", out]);
            if quick {
                cmd.arg("--quick");
            }
            if api {
                cmd.arg("--api");
            }
            if pktgen {
                cmd.arg("--pktgen");
            }
            if hook {
                cmd.arg("--hook");
            }
            if netback {
                cmd.arg("--netback");
            }
            if etcd {
                cmd.arg("--etcd");
            }
            if let Some(j) = json {
                cmd.arg("--json").arg(j);
            }
            status(&mut cmd)
        }
        Cmd::Fuzz { frames, seed } => {
            require_root()?;
            let mut envs = vec![("LOCKD_DIFF_FRAMES", frames.to_string())];
            if let Some(s) = seed {
                envs.push(("LOCKD_SEED", s.to_string()));
            }
            cargo(
                &[
                    "test",
                    "--release",
                    "-p",
                    "lockd-tests",
                    "--test",
                    "differential",
                    "random_frames_match_model",
                    "--",
                    "--nocapture",
                ],
                &envs,
            )
        }
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { geteuid() } != 0 {
        bail!(
            "the tests load BPF programs and create network namespaces: run them as root \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        );
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}

pub(crate) fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?} failed: {s}");
    }
    Ok(())
}

fn cargo_command(args: &[&str]) -> Command {
    let mut c = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace())
        .args(args)
        .env("LOCKD_TOOLCHAIN_DIR", toolchain_dir());
    c
}

pub(crate) fn cargo(args: &[&str], envs: &[(&str, String)]) -> Result<()> {
    let mut c = cargo_command(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    status(&mut c)
}

/// Runs cargo and returns its standard output (errors still reach the terminal).
pub(crate) fn cargo_output(args: &[&str]) -> Result<String> {
    let mut c = cargo_command(args);
    c.stderr(std::process::Stdio::inherit());
    let out = c.output().with_context(|| format!("starting {c:?}"))?;
    if !out.status.success() {
        bail!("{c:?} failed: {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn on_path(bin: &str) -> bool {
    env::split_paths(&env::var_os("PATH").unwrap_or_default())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .any(|d| d.join(bin).is_file())
}

fn bootstrap() -> Result<()> {
    ensure_packages(APT)?;
    nightly()?;
    musl_target()?;
    clippy()?;
    bpf_linker()
}

/// `cargo xtask test` starts with `cargo clippy`; the toolchain's minimal profile lacks it.
fn clippy() -> Result<()> {
    if !rustup(&["component", "list", "--installed"])?
        .lines()
        .any(|l| l.starts_with("clippy"))
    {
        eprintln!("xtask: adding the clippy component");
        rustup(&["component", "add", "clippy"])?;
    }
    Ok(())
}

/// The Xen tier's domU agent is linked statically against musl (Rust's own, no C toolchain).
fn musl_target() -> Result<()> {
    if !rustup(&["target", "list", "--installed"])?
        .lines()
        .any(|l| l.trim() == xen::MUSL)
    {
        eprintln!("xtask: adding the {} target", xen::MUSL);
        rustup(&["target", "add", xen::MUSL])?;
    }
    Ok(())
}

/// Installs the packages of `list` whose proving binary is missing.
pub(crate) fn ensure_packages(list: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = list
        .iter()
        .filter(|(_, bin)| !on_path(bin))
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    require_root().context("installing packages")?;
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rustup(args: &[&str]) -> Result<String> {
    let out = Command::new("rustup")
        .args(args)
        .output()
        .context("running rustup (is rustup installed?)")?;
    if !out.status.success() {
        bail!(
            "rustup {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly() -> Result<()> {
    if !rustup(&["toolchain", "list"])?
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("xtask: installing the nightly toolchain");
        rustup(&["toolchain", "install", "nightly", "--profile", "minimal"])?;
    }
    if !rustup(&["component", "list", "--toolchain", "nightly", "--installed"])?
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        eprintln!("xtask: adding rust-src to nightly");
        rustup(&["component", "add", "rust-src", "--toolchain", "nightly"])?;
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let prefix = toolchain_dir();
    let linker = prefix.join("bin/bpf-linker");
    let works = Command::new(&linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return Ok(());
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM (about a minute)"
    );
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .context("rustc +nightly --print sysroot")?;
    let lib = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("lib");
    let so = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let llvm_lib = prefix.join("llvm/lib");
    std::fs::create_dir_all(&llvm_lib)?;
    for name in ["libLLVM.so", so.as_str()] {
        let link = llvm_lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(lib.join(&so), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    status(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--root",
            ])
            .arg(&prefix)
            .env("LLVM_PREFIX", prefix.join("llvm")),
    )
}
