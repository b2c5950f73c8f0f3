//! Where things live on bpffs: the layout (the paths of maps and links, and what a pin's file
//! name says), unpinning, and mounting bpffs. What is pinned there is attached by `attach.rs`,
//! adopted from a previous daemon by `adopt.rs` and removed by `cleanup.rs`.
//!
//! The layout carries a version ([`LAYOUT_VERSION`]): layout N lives in `<dir>/vN/`, and the
//! releases before versioning (layout 1) used `<dir>/` itself. A daemon finding an older
//! layout takes it over without a gap (see `Dataplane::take_over_older`).
//!
//! Layout under a layout directory (default `/sys/fs/bpf/lockd/v3`):
//! - `maps/<NAME>`: every map of the object, reused by the next load;
//! - `links/xdp-<ifindex>-<native|generic>`: one XDP link per attached VIF;
//! - `links/tc-<ifindex>`: one TC egress (TCX) link per attached VIF (to the VM);
//! - `links/tci-<ifindex>`: one TC ingress (TCX) link per attached VIF (from the VM);
//! - `links/tc[i]-<ifindex>-clsact-<priority>-<handle>`: on a kernel without TCX, the
//!   record of a clsact `cls_bpf` filter, which is not a link and stays attached by itself.
//!   bpffs holds only BPF objects, so the record is the filter's program pinned under a name
//!   that carries the filter's priority and handle.
//!
//! A VIF judged at TC has no XDP link. A rate-limited VIF's shaper is a netdev
//! (`lockdq<ifindex>`, see `shaper.rs`), not a BPF object; it outlives the daemon like links do.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use lockd_common::{
    MAP_CONFIGS, MAP_COUNTERS, MAP_PREFIX4, MAP_PREFIX6, MAP_TABLE4, MAP_TABLE6, MAP_VIF_CONFIG,
    MAP_VIF_SLOTS,
};

use super::{AttachMode, DataplaneError, Result, side::Tc};

/// Where `lockd` pins by default (the daemon's `--bpffs`).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/lockd";

/// Every pinned map.
pub(super) const MAPS: [&str; 8] = [
    MAP_VIF_CONFIG,
    MAP_VIF_SLOTS,
    MAP_CONFIGS,
    MAP_TABLE4,
    MAP_TABLE6,
    MAP_PREFIX4,
    MAP_PREFIX6,
    MAP_COUNTERS,
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug)]
pub(super) struct PinDirs {
    pub(super) maps: PathBuf,
    pub(super) links: PathBuf,
    /// Roots of older layouts found at start, to take over and then remove.
    pub(super) older: Vec<PathBuf>,
}

/// The pinned layout this release writes. Bump it when a map changes shape: the next daemon
/// then builds the new layout beside the old one and moves every link over atomically.
pub const LAYOUT_VERSION: u32 = 3;

/// The layout version to write: [`LAYOUT_VERSION`], or with the `test-hooks` feature
/// `LOCKD_LAYOUT_VERSION` (the upgrade test plays an older release with it).
fn layout_version() -> u32 {
    #[cfg(feature = "test-hooks")]
    if let Some(v) = std::env::var("LOCKD_LAYOUT_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    LAYOUT_VERSION
}

/// The root of layout `version` under `dir`.
fn layout_root(dir: &Path, version: u32) -> PathBuf {
    if version <= 1 {
        dir.to_path_buf()
    } else {
        dir.join(format!("v{version}"))
    }
}

pub(super) fn pin_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
    move |source| pin_error(path, source)
}

pub(super) fn pin_error(path: &Path, source: io::Error) -> DataplaneError {
    DataplaneError::Pin {
        path: path.to_path_buf(),
        source,
    }
}

/// Is `path` on a bpffs mount?
fn on_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; c is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts a new bpffs (mode 0700) on the existing directory `at`.
pub fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target =
        std::ffi::CString::new(at.as_os_str().as_encoded_bytes()).map_err(io::Error::other)?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let r = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Makes sure `dir`'s parent is on bpffs, then creates `dir`. A fresh machine has no bpffs
/// at /sys/fs/bpf, so the parent gets one mounted — but only if it is an empty directory (or
/// does not exist yet): mounting over a directory with contents would hide them (once, a
/// test mounted bpffs over /sys/fs and hid the cgroup filesystem).
pub fn ensure_bpffs(dir: &Path) -> Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    if !on_bpffs(parent) {
        fs::create_dir_all(parent).map_err(pin_err(parent))?;
        let empty = fs::read_dir(parent)
            .map_err(pin_err(parent))?
            .next()
            .is_none();
        if !empty {
            return Err(pin_err(parent)(io::Error::other(
                "not on bpffs and not empty: refusing to mount bpffs over it (mount bpffs \
                 there yourself, or choose a pin directory whose parent is bpffs or empty)",
            )));
        }
        mount_bpffs(parent).map_err(pin_err(parent))?;
        tracing::info!(path = %parent.display(), "mounted bpffs");
    }
    fs::create_dir_all(dir).map_err(pin_err(dir))
}

impl PinDirs {
    pub(super) fn create(dir: &Path) -> Result<Self> {
        ensure_bpffs(dir)?;
        let version = layout_version();
        let root = layout_root(dir, version);
        let older = (1..version)
            .map(|v| layout_root(dir, v))
            .filter(|r| r.join("links").is_dir() || r.join("maps").is_dir())
            .collect();
        let d = PinDirs {
            maps: root.join("maps"),
            links: root.join("links"),
            older,
        };
        fs::create_dir_all(&d.maps).map_err(pin_err(&d.maps))?;
        fs::create_dir_all(&d.links).map_err(pin_err(&d.links))?;
        // A map an earlier release pinned under a name this one no longer uses (COUNTERS,
        // before the reason table grew) would only sit there.
        for e in fs::read_dir(&d.maps).map_err(pin_err(&d.maps))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !MAPS.contains(&name.as_str()) {
                tracing::info!(map = %name, "removing a pinned map this release does not use");
                unpin(&e.path())?;
            }
        }
        Ok(d)
    }

    pub(super) fn link_path(&self, ifindex: u32, mode: AttachMode) -> PathBuf {
        let m = match mode {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
            AttachMode::Tc => unreachable!("no XDP link at the TC hook"),
        };
        self.links.join(format!("xdp-{ifindex}-{m}"))
    }

    pub(super) fn tc_link_path(&self, ifindex: u32, side: Tc) -> PathBuf {
        self.links.join(format!("{}-{ifindex}", side.pin_prefix()))
    }
}

/// The name of a clsact filter's record under `links/`.
pub(super) fn clsact_name(ifindex: u32, side: Tc, priority: u16, handle: u32) -> String {
    format!("{}-{ifindex}-clsact-{priority}-{handle}", side.pin_prefix())
}

/// A pinned link's file name: XDP with its mode, or TC.
pub(super) enum LinkName {
    Xdp(u32, AttachMode),
    Tc(u32, Tc),
    /// ifindex, side, priority, handle.
    Clsact(u32, Tc, u16, u32),
}

pub(super) fn parse_link_name(name: &str) -> Option<LinkName> {
    for side in Tc::ALL {
        if let Some(ifx) = name
            .strip_prefix(side.pin_prefix())
            .and_then(|r| r.strip_prefix('-'))
        {
            if let Some((ifx, rest)) = ifx.split_once("-clsact-") {
                let (priority, handle) = rest.split_once('-')?;
                return Some(LinkName::Clsact(
                    ifx.parse().ok()?,
                    side,
                    priority.parse().ok()?,
                    handle.parse().ok()?,
                ));
            }
            return Some(LinkName::Tc(ifx.parse().ok()?, side));
        }
    }
    let rest = name.strip_prefix("xdp-")?;
    let (ifx, mode) = rest.split_once('-')?;
    let mode = match mode {
        "native" => AttachMode::Native,
        "generic" => AttachMode::Generic,
        _ => return None,
    };
    Some(LinkName::Xdp(ifx.parse().ok()?, mode))
}

/// The errno behind an aya pin error (aya keeps it as the error's source).
pub(super) fn pin_io(e: aya::pin::PinError) -> io::Error {
    match e {
        aya::pin::PinError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

pub(super) fn unpin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(pin_err(path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on a thread with a private mount namespace, so nothing it mounts reaches the
    /// host whatever happens.
    fn in_private_mounts<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: plain syscalls on this thread's own fs and mount namespace.
                unsafe {
                    assert_eq!(
                        libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS),
                        0,
                        "unshare"
                    );
                    let none = std::ptr::null();
                    assert_eq!(
                        libc::mount(
                            none,
                            c"/".as_ptr(),
                            none,
                            libc::MS_REC | libc::MS_PRIVATE,
                            none.cast()
                        ),
                        0,
                        "make mounts private"
                    );
                }
                f()
            })
            .join()
            .expect("thread")
        })
    }

    #[test]
    fn bpffs_is_mounted_only_on_an_empty_directory() {
        let base = std::env::temp_dir().join(format!("lockd-bpffs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let full = base.join("full");
        fs::create_dir_all(&full).unwrap();
        fs::write(full.join("keep-me"), b"x").unwrap();
        in_private_mounts(|| {
            let e = ensure_bpffs(&full.join("lockd")).unwrap_err();
            assert!(e.to_string().contains("refusing"), "{e}");
            assert!(!on_bpffs(&full));
            assert!(full.join("keep-me").exists());
            let empty = base.join("empty");
            ensure_bpffs(&empty.join("lockd")).expect("mount on an empty directory");
            assert!(on_bpffs(&empty) && empty.join("lockd").is_dir());
            // Already bpffs: nothing more is mounted.
            ensure_bpffs(&empty.join("other")).expect("reuse");
        });
        // The mounts died with the thread's namespace; the host never saw them.
        assert!(!on_bpffs(&base.join("empty")));
        fs::remove_dir_all(&base).unwrap();
    }
}
