//! Everything on bpffs, in one place: where maps and links are pinned, how a starting daemon
//! adopts what a previous one left (without ever detaching), and `lockd cleanup`.
//!
//! Layout under the bpffs directory (default `/sys/fs/bpf/lockd`):
//! - `maps/<NAME>`: every map of the object, reused by the next load;
//! - `links/xdp-<ifindex>-<native|generic>`: one XDP link per attached VIF;
//! - `links/tc-<ifindex>`: one TC egress (TCX) link per attached VIF.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{Xdp, links::FdLink, links::PinnedLink, xdp::XdpLink, xdp::XdpLinkId};
use lockd_common::{
    CONFIG_COPIES, FLAG_INLINE_P4, FLAG_INLINE_P6, FLAG_INLINE4, FLAG_INLINE6, INLINE_P4,
    INLINE_P6, INLINE4, INLINE6, MAP_CONFIGS, MAP_COUNTERS, MAP_PREFIX4, MAP_PREFIX6, MAP_RATE,
    MAP_TABLE4, MAP_TABLE6, MAP_VIF_CONFIG, MAP_VIF_SLOTS, MAX_VIFS, POSITIONS, PROG_VIF_INGRESS,
    position,
};

use super::{
    AttachMode, Dataplane, DataplaneError, Entries, LinkHandle, Result, VifConfig, VifState,
    map_err, prog_err, slots, tables::Region,
};

/// The length of the prefix a network-order mask stands for.
fn prefix_len(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

/// Every pinned map.
pub(super) const MAPS: [&str; 9] = [
    MAP_VIF_CONFIG,
    MAP_VIF_SLOTS,
    MAP_CONFIGS,
    MAP_TABLE4,
    MAP_TABLE6,
    MAP_PREFIX4,
    MAP_PREFIX6,
    MAP_COUNTERS,
    MAP_RATE,
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug)]
pub(super) struct PinDirs {
    pub(super) maps: PathBuf,
    pub(super) links: PathBuf,
}

fn pin_err(path: &Path) -> impl FnOnce(io::Error) -> DataplaneError + '_ {
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
        let target = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes())
            .map_err(|e| pin_err(parent)(io::Error::other(e)))?;
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
        if r != 0 {
            return Err(pin_err(parent)(io::Error::last_os_error()));
        }
        tracing::info!(path = %parent.display(), "mounted bpffs");
    }
    fs::create_dir_all(dir).map_err(pin_err(dir))
}

impl PinDirs {
    pub(super) fn create(dir: &Path) -> Result<Self> {
        ensure_bpffs(dir)?;
        let d = PinDirs {
            maps: dir.join("maps"),
            links: dir.join("links"),
        };
        fs::create_dir_all(&d.maps).map_err(pin_err(&d.maps))?;
        fs::create_dir_all(&d.links).map_err(pin_err(&d.links))?;
        Ok(d)
    }

    pub(super) fn link_path(&self, ifindex: u32, mode: AttachMode) -> PathBuf {
        let m = match mode {
            AttachMode::Native => "native",
            AttachMode::Generic => "generic",
        };
        self.links.join(format!("xdp-{ifindex}-{m}"))
    }

    pub(super) fn tc_link_path(&self, ifindex: u32) -> PathBuf {
        self.links.join(format!("tc-{ifindex}"))
    }
}

/// A pinned link's file name: XDP with its mode, or TC.
enum LinkName {
    Xdp(u32, AttachMode),
    Tc(u32),
}

fn parse_link_name(name: &str) -> Option<LinkName> {
    if let Some(ifx) = name.strip_prefix("tc-") {
        return Some(LinkName::Tc(ifx.parse().ok()?));
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

pub(super) fn unpin(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(pin_err(path)(e)),
        _ => Ok(()),
    }
}

/// Removes every pin under `dir` (links first, which detaches the programs) and the directory.
pub fn cleanup(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            unpin(&e.path())?;
            removed += 1;
        }
        let _ = fs::remove_dir(&d);
    }
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

impl Dataplane {
    /// Pins the link behind `id` at `path`; the program object gives up ownership.
    pub(super) fn pin_link(&mut self, id: XdpLinkId, path: &Path) -> Result<FdLink> {
        let prog = self.xdp(PROG_VIF_INGRESS)?;
        let link = prog.take_link(id).map_err(prog_err(PROG_VIF_INGRESS))?;
        let fd = FdLink::try_from(link).map_err(|e| pin_err(path)(io::Error::other(e)))?;
        let _stale = fs::remove_file(path);
        let pinned = fd
            .pin(path)
            .map_err(|e| pin_err(path)(io::Error::other(e)))?;
        Ok(pinned.into())
    }

    /// Adopts what a previous daemon left pinned: per-VIF slots and generations from the
    /// config map, the current generation's address entries (stale ones are deleted), and
    /// every pinned link, whose program is atomically replaced by this one's
    /// (`bpf_link_update`) — enforcement never stops. Links of ifindexes without a config are
    /// removed. Returns the adopted ifindexes.
    pub fn adopt(&mut self) -> Result<Vec<u32>> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let links_dir = pins.links.clone();
        let configs: Vec<(u32, VifConfig)> = self
            .config
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(MAP_VIF_CONFIG))?;
        // A previous daemon may have released regions and copies just now.
        self.barrier.wait().map_err(DataplaneError::Barrier)?;
        for (ifindex, cfg) in &configs {
            let tables = if cfg.slot >= MAX_VIFS || self.vifs.values().any(|v| v.slot == cfg.slot) {
                None
            } else {
                self.adopt_tables(cfg)
            };
            let Some((r4, v4, r6, v6)) = tables else {
                // Not ours to trust; drop it rather than share counters or table space.
                let _ = self.config.remove(ifindex);
                continue;
            };
            self.free_slots.retain(|s| *s != cfg.slot);
            let inline_prefixes = |n: u8, cap: usize, flag: u32| {
                if cfg.flags & flag != 0 {
                    usize::from(n).min(cap)
                } else {
                    0
                }
            };
            self.vifs.insert(
                *ifindex,
                VifState {
                    slot: cfg.slot,
                    generation: cfg.generation,
                    // Inline sets and tables are read here; trie entries in `adopt_entries`.
                    entries: Entries {
                        v4,
                        v6,
                        p4: cfg.pfx4[..inline_prefixes(cfg.np4, INLINE_P4, FLAG_INLINE_P4)]
                            .iter()
                            .map(|p| (prefix_len(&p.mask), p.net))
                            .collect(),
                        p6: cfg.pfx6[..inline_prefixes(cfg.np6, INLINE_P6, FLAG_INLINE_P6)]
                            .iter()
                            .map(|p| (prefix_len(&p.mask), p.net))
                            .collect(),
                        r4,
                        r6,
                    },
                    // As `config_of` makes it: no generation, no regions.
                    config: VifConfig {
                        generation: 0,
                        t4_base: 0,
                        t4_mask: 0,
                        t6_base: 0,
                        t6_mask: 0,
                        ..*cfg
                    },
                    xdp: None,
                    tc: None,
                },
            );
        }
        self.next_generation = configs
            .iter()
            .map(|(_, c)| c.generation)
            .max()
            .unwrap_or(0)
            .wrapping_add(1)
            .max(1);
        self.adopt_entries()?;
        self.adopt_slots(&configs)?;
        let mut adopted = Vec::new();
        let rd = fs::read_dir(&links_dir).map_err(pin_err(&links_dir))?;
        for e in rd.flatten() {
            let path = e.path();
            let parsed = parse_link_name(&e.file_name().to_string_lossy());
            let known = |ifx: &u32| self.vifs.contains_key(ifx);
            match parsed {
                Some(LinkName::Xdp(ifindex, mode)) if known(&ifindex) => {
                    let pinned = PinnedLink::from_pin(&path)
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    let link = XdpLink::try_from(FdLink::from(pinned))
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    let prog: &mut Xdp = self.xdp(PROG_VIF_INGRESS)?;
                    let id = prog
                        .attach_to_link(link)
                        .map_err(prog_err(PROG_VIF_INGRESS))?;
                    let link = self.pin_link(id, &path)?;
                    self.vifs.get_mut(&ifindex).expect("checked").xdp =
                        Some((mode, LinkHandle::Pinned { link, path }));
                    adopted.push(ifindex);
                }
                Some(LinkName::Tc(ifindex)) if known(&ifindex) => {
                    let pinned = PinnedLink::from_pin(&path)
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    // bpf_link_update swaps the program in place; the pin stays valid.
                    let link = self.tc_adopt(FdLink::from(pinned))?;
                    self.vifs.get_mut(&ifindex).expect("checked").tc =
                        Some(LinkHandle::Pinned { link, path });
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing a pinned link with no policy");
                    unpin(&path)?;
                }
            }
        }
        Ok(adopted)
    }

    /// A config's exact sets: inline, or read from the table regions it names (which are
    /// then reserved). None if a region is invalid or overlaps one already taken.
    #[expect(clippy::type_complexity, reason = "one use, destructured at once")]
    fn adopt_tables(
        &mut self,
        cfg: &VifConfig,
    ) -> Option<(Option<Region>, Vec<[u8; 4]>, Option<Region>, Vec<[u8; 16]>)> {
        let (r4, v4) = if cfg.flags & FLAG_INLINE4 != 0 {
            (
                None,
                cfg.inline4[..usize::from(cfg.n4).min(INLINE4)].to_vec(),
            )
        } else {
            let r = Region::of(cfg.t4_base, cfg.t4_mask)?;
            (Some(r), self.table4.adopt(r)?)
        };
        let (r6, v6) = if cfg.flags & FLAG_INLINE6 != 0 {
            (
                None,
                cfg.inline6[..usize::from(cfg.n6).min(INLINE6)].to_vec(),
            )
        } else {
            let adopted = Region::of(cfg.t6_base, cfg.t6_mask)
                .and_then(|r| Some((Some(r), self.table6.adopt(r)?)));
            if adopted.is_none()
                && let Some(r) = r4
            {
                self.table4.release(r);
            }
            adopted?
        };
        Some((r4, v4, r6, v6))
    }

    /// Takes over the slots: a slot naming an adopted VIF keeps its copy (rewritten through a
    /// fresh copy if it differs from the hash, which a daemon killed between the two writes
    /// leaves); any other slot is emptied. Every other copy waits a grace period before reuse.
    fn adopt_slots(&mut self, configs: &[(u32, VifConfig)]) -> Result<()> {
        let mut stale = Vec::new();
        let mut in_use = vec![false; CONFIG_COPIES as usize];
        for pos in 0..POSITIONS {
            let Some((ifx, copy)) = slots::split(self.slots.get(pos)) else {
                continue;
            };
            let cfg = configs.iter().find(|(i, _)| *i == ifx).map(|(_, c)| *c);
            match (cfg, in_use.get_mut(copy as usize)) {
                (Some(cfg), Some(used))
                    if !*used && position(ifx) == pos && self.vifs.contains_key(&ifx) =>
                {
                    *used = true;
                    if self.configs.get(&copy, 0).map_err(map_err(MAP_CONFIGS))? != cfg {
                        stale.push((ifx, cfg));
                    }
                }
                _ => self.slots.set(pos, None),
            }
        }
        // Copies in force stay out of the retired ones (all of them, since load).
        self.retired_copies.retain(|c| !in_use[*c as usize]);
        for (ifx, cfg) in stale {
            self.publish(ifx, &cfg)?;
        }
        Ok(())
    }

    /// Rebuilds each VIF's current entries from the maps and deletes any other generation's.
    fn adopt_entries(&mut self) -> Result<()> {
        // For each map: read every key, split it into (ifindex, generation, entry); keep the
        // entry if it belongs to its VIF's current generation, else delete the key.
        macro_rules! sweep {
            ($map:ident, $field:ident, |$k:ident| $split:expr) => {
                let keys: Vec<_> = self.$map.keys().filter_map(|k| k.ok()).collect();
                for $k in keys {
                    let (ifx, generation, entry) = $split;
                    match self.vifs.get_mut(&ifx) {
                        Some(v) if v.generation == generation => v.entries.$field.push(entry),
                        _ => {
                            let _gone = self.$map.remove(&$k);
                        }
                    }
                }
            };
        }
        let lpm_tag = |ifx: [u8; 4], g: [u8; 4], plen: u32| {
            (
                u32::from_be_bytes(ifx),
                u32::from_be_bytes(g),
                plen.saturating_sub(lockd_common::LPM_HEADER_BITS),
            )
        };
        sweep!(prefix4, p4, |k| {
            let d = k.data();
            let (ifx, g, plen) = lpm_tag(d.ifindex_be, d.generation_be, k.prefix_len());
            (ifx, g, (plen, d.addr))
        });
        sweep!(prefix6, p6, |k| {
            let d = k.data();
            let (ifx, g, plen) = lpm_tag(d.ifindex_be, d.generation_be, k.prefix_len());
            (ifx, g, (plen, d.addr))
        });
        Ok(())
    }

    /// Every ifindex with a policy.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.vifs.keys().copied().collect()
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
