//! Builds `lockd-ebpf` for the BPF target and leaves the object at `$OUT_DIR/lockd`.
//!
//! bpf-linker must be on PATH. `cargo xtask bootstrap` builds one against the nightly
//! toolchain's LLVM into `target/toolchain/bin`; that directory is added to PATH here so a plain
//! `cargo build` works after the bootstrap.

use std::{env, path::PathBuf};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest.parent().context("workspace root")?.to_path_buf();
    println!("cargo:rerun-if-env-changed=LOCKD_TOOLCHAIN_DIR");
    let toolchain_bin = env::var_os("LOCKD_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/toolchain"))
        .join("bin");
    let mut paths: Vec<PathBuf> = vec![toolchain_bin.clone()];
    paths.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    if !paths.iter().any(|p| p.join("bpf-linker").is_file()) {
        bail!(
            "bpf-linker not found on PATH or in {}; run `cargo xtask bootstrap` first",
            toolchain_bin.display()
        );
    }
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", env::join_paths(paths)?) };
    let ebpf_dir = workspace.join("lockd-ebpf");
    // The programs also compile lockd-common (map types, limits); aya-build only watches the
    // eBPF crate itself.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lockd-common").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lockd-ebpf",
            root_dir: ebpf_dir.to_str().context("non-UTF-8 path")?,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
