//! The kernels lockd is tested on: Debian's own generic `linux-image-*-amd64-unsigned` package
//! for each series, fetched with `apt-get download` and unpacked with `dpkg-deb -x` under
//! `target/kernels/` (nothing goes into the host's /boot or /lib/modules), and the module
//! chains a guest loads from it.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{status, workspace};

/// A kernel series lockd is tested on, and the Debian package name pattern that carries it.
struct Series {
    name: &'static str,
    /// `apt-cache search --names-only` regex for the unsigned generic flavour.
    pattern: &'static str,
}

const SERIES: &[Series] = &[
    Series {
        name: "6.1",
        pattern: r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
    },
    Series {
        name: "6.12",
        pattern: r"^linux-image-6\.12\.[0-9.]+\+deb12-amd64-unsigned$",
    },
];

pub(crate) struct Kernel {
    /// The unpacked package.
    pub(crate) root: PathBuf,
    pub(crate) version: String,
    vmlinuz: PathBuf,
}

impl Kernel {
    pub(crate) fn vmlinuz(&self) -> &Path {
        &self.vmlinuz
    }

    pub(crate) fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.version)
    }
}

/// The unpacked Debian kernel of `series`, fetched and unpacked the first time.
pub(crate) fn fetch(series: &str) -> Result<Kernel> {
    let s = SERIES
        .iter()
        .find(|s| s.name == series)
        .with_context(|| {
            format!(
                "unknown kernel series {series}: choose one of {}",
                SERIES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            )
        })?;
    let base = workspace().join("target/kernels");
    fs::create_dir_all(&base)?;
    let search = |update: bool| -> Result<Option<String>> {
        if update {
            status(Command::new("apt-get").args(["update", "-qq"]))?;
        }
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", s.pattern])
            .output()
            .context("apt-cache search")?;
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        names.sort_by_key(|n| version_key(n));
        Ok(names.pop())
    };
    let pkg = match search(false)? {
        Some(p) => p,
        None => search(true)?.with_context(|| {
            format!(
                "no Debian package matches {} (is the bookworm archive in apt's sources?)",
                s.pattern
            )
        })?,
    };
    let dir = base.join(&pkg);
    let root = dir.join("root");
    if !root.join("boot").is_dir() {
        eprintln!("xtask: fetching {pkg}");
        fs::create_dir_all(&dir)?;
        status(
            Command::new("apt-get")
                .args(["download", "-qq", &pkg])
                .current_dir(&dir),
        )?;
        let deb = fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("apt-get download left no .deb")?;
        let tmp = dir.join("root.partial");
        let _ = fs::remove_dir_all(&tmp);
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        let _ = fs::remove_file(&deb);
        fs::rename(&tmp, &root)?;
    }
    let vmlinuz = fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("the package has no vmlinuz")?;
    let version = vmlinuz
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let k = Kernel {
        root,
        version,
        vmlinuz,
    };
    if !k.modules().join("modules.dep").is_file() {
        status(
            Command::new("depmod")
                .arg("-b")
                .arg(&k.root)
                .arg(&k.version),
        )?;
    }
    Ok(k)
}

/// Sorts package names by the numbers in them (6.1.0-9 before 6.1.0-10).
fn version_key(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The modules `name` needs, in load order, as `modprobe --show-depends` lists them.
pub(crate) fn module_chain(k: &Kernel, name: &str) -> Result<Vec<PathBuf>> {
    let out = Command::new("modprobe")
        .arg("-d")
        .arg(&k.root)
        .args(["-S", &k.version, "--show-depends", name])
        .output()
        .context("modprobe --show-depends")?;
    if !out.status.success() {
        bail!(
            "module {name} of {}: {}",
            k.version,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("insmod "))
        .map(|p| PathBuf::from(p.trim()))
        .collect())
}

