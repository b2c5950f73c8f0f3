//! What lockd needs from the kernel, probed at start.
//!
//! Each feature is probed for real where a probe is cheap and harmless (creating a map with a
//! flag, loading a two-instruction program); link kinds, which would need a netdev to attach
//! to, are judged by the kernel version that brought them. A missing required feature stops
//! the daemon with one line naming it; a missing feature with a fallback is logged and the
//! fallback used. `lockd features` prints the table.

use std::{io, os::fd::FromRawFd as _, os::fd::OwnedFd};

use aya::util::KernelVersion;
use serde::Serialize;

/// Declares every kernel feature once: its key, what it is, the Linux version that brought it,
/// the first words of its row in the README's kernel table (a test holds the two together), and
/// what lockd does without it (`None`: it cannot run).
macro_rules! features {
    ($($v:ident {
        key: $key:literal,
        describe: $describe:literal,
        since: ($major:literal, $minor:literal),
        readme: $readme:literal,
        fallback: $fallback:expr $(,)?
    }),+ $(,)?) => {
        /// One kernel feature lockd uses.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Feature { $($v),+ }

        impl Feature {
            /// Every feature, in the order `lockd features` lists them.
            pub const ALL: &'static [Feature] = &[$(Feature::$v),+];

            /// The stable key (`lockd features --json`, `LOCKD_FEATURES_MISSING`).
            pub fn key(self) -> &'static str {
                match self { $(Feature::$v => $key),+ }
            }

            /// What it is, for an operator.
            pub fn describe(self) -> &'static str {
                match self { $(Feature::$v => $describe),+ }
            }

            /// The Linux version that brought it.
            pub fn since(self) -> (u32, u32) {
                match self { $(Feature::$v => ($major, $minor)),+ }
            }

            /// How its row in the README's kernel table begins.
            pub fn readme_row(self) -> &'static str {
                match self { $(Feature::$v => $readme),+ }
            }

            /// What lockd does without it: None when it cannot run.
            pub fn fallback(self) -> Option<&'static str> {
                match self { $(Feature::$v => $fallback),+ }
            }

            /// Whether this kernel is at least the version that brought it (for the features
            /// judged by version).
            pub fn by_version(self) -> bool {
                at_least(KernelVersion::current().ok(), self.since())
            }
        }
    };
}

features! {
    XdpProgram {
        key: "xdp_program",
        describe: "XDP programs",
        since: (4, 8),
        readme: "XDP programs",
        fallback: None,
    },
    LpmTrie {
        key: "lpm_trie",
        describe: "LPM trie maps (prefix lookups)",
        since: (4, 11),
        readme: "LPM trie maps",
        fallback: None,
    },
    MmapableArray {
        key: "mmapable_array",
        describe: "BPF_F_MMAPABLE array maps (atomic position flips)",
        since: (5, 5),
        readme: "`BPF_F_MMAPABLE` array maps",
        fallback: None,
    },
    XdpLink {
        key: "xdp_link",
        describe: "XDP BPF links and bpf_link_update (gapless restarts)",
        since: (5, 9),
        readme: "XDP BPF links",
        fallback: None,
    },
    Tcx {
        key: "tcx",
        describe: "TCX links for the TC programs (`--tc-mode tcx`)",
        since: (6, 6),
        readme: "TCX links",
        fallback: Some("the TC programs go on a clsact qdisc as cls_bpf filters (the default anyway)"),
    },
    Clsact {
        key: "clsact",
        describe: "clsact qdiscs (module sch_ingress), the TC programs' parent",
        since: (4, 5),
        readme: "clsact qdiscs",
        // Not fatal: the daemon runs and holds every VIF it cannot attach.
        fallback: Some(
            "no VIF can be attached at TC with `--tc-mode clsact` (the default): each is held (off its bridge and down); load sch_ingress, or use `--tc-mode tcx` (6.6+)",
        ),
    },
    ClsBpf {
        key: "cls_bpf",
        describe: "cls_bpf direct-action filters (module cls_bpf)",
        since: (4, 4),
        readme: "`cls_bpf` direct-action filters",
        fallback: Some(
            "no VIF can be attached at TC with `--tc-mode clsact` (the default): each is held (off its bridge and down); load cls_bpf, or use `--tc-mode tcx` (6.6+)",
        ),
    },
    IfbRedirect {
        key: "ifb_redirect",
        describe: "bpf_redirect into an ifb (the rate limit's shaper hand-off)",
        since: (6, 4),
        readme: "`bpf_redirect` from TC ingress into an ifb",
        fallback: Some(
            "a rate-limited VIF's passing frames reach its shaper through a u32 filter with a mirred action (modules cls_u32, act_mirred)",
        ),
    },
}


/// A probe result.
#[derive(Clone, Debug, Serialize)]
pub struct Probed {
    pub feature: Feature,
    pub present: bool,
    /// How it was decided: "probe" or "kernel version".
    pub how: &'static str,
    /// Why a probe found it missing (the kernel's answer), when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

// Raw bpf(2) for two probes only. aya lacks both calls: its `sys::is_map_supported` takes a
// map type but no flags (BPF_F_MMAPABLE is a flag), and it loads programs only from an ELF
// object, where the clsact probe needs a program fd from two instructions of its own.
const BPF_MAP_CREATE: i64 = 0;
const BPF_PROG_LOAD: i64 = 5;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// One raw bpf(2) call (aya lacks the two it is used for: see above).
fn bpf(cmd: i64, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: attr is a zero-padded bpf_attr of 128 bytes, as the kernel expects.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor the kernel just returned.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

fn map_create(ty: u32, key: u32, value: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = [0u64; 16];
    a[0] = u64::from(ty) | u64::from(key) << 32;
    a[1] = u64::from(value) | u64::from(entries) << 32;
    a[2] = u64::from(flags);
    bpf(BPF_MAP_CREATE, &mut a)
}

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Loads a program of type `ty` and `insns` (each `code, regs, off, imm` packed as the
/// kernel's `struct bpf_insn`).
fn prog_load(ty: u32, insns: &[u64]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut a = [0u64; 16];
    a[0] = u64::from(ty) | (insns.len() as u64) << 32;
    a[1] = insns.as_ptr() as u64;
    a[2] = license.as_ptr() as u64;
    bpf(BPF_PROG_LOAD, &mut a)
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf) << 8
        | u64::from(src & 0xf) << 12
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// `r0 = 0; exit`.
fn trivial() -> Vec<u64> {
    vec![insn(0xb7, 0, 0, 0, 0), insn(0x95, 0, 0, 0, 0)]
}

/// Attaches as lockd does by default, where nothing else can see it: in a network namespace
/// of its own (a thread's, gone with the thread), a clsact qdisc on its loopback, then a
/// cls_bpf direct-action filter running `r0 = 0; exit`. The kernel loads sch_ingress and
/// cls_bpf on demand where they are modules; a missing one is refused here, as it would be
/// on a VIF. (clsact, cls_bpf), each Err with the kernel's answer.
fn probe_tc() -> (Result<(), String>, Result<(), String>) {
    let probe = || {
        // SAFETY: unshare only changes this (short-lived) thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = format!(
                "a private network namespace: {}",
                io::Error::last_os_error()
            );
            return (Err(e.clone()), Err(e));
        }
        if let Err(e) = crate::netlink::add_clsact(1) {
            return (
                Err(format!(
                    "clsact qdisc refused ({e}): is module sch_ingress there?"
                )),
                Err("untested: no clsact qdisc to put a filter on".into()),
            );
        }
        let filter = prog_load(BPF_PROG_TYPE_SCHED_CLS, &trivial())
            .map_err(|e| format!("loading a TC program: {e}"))
            .and_then(|fd| {
                use std::os::fd::AsFd as _;
                crate::netlink::add_bpf_filter(1, fd.as_fd())
                    .map_err(|e| format!("cls_bpf filter refused ({e}): is module cls_bpf there?"))
            });
        (Ok(()), filter)
    };
    std::thread::spawn(probe).join().unwrap_or_else(|_| {
        (
            Err("probe thread panicked".into()),
            Err("probe thread panicked".into()),
        )
    })
}

fn at_least(v: Option<KernelVersion>, (major, minor): (u32, u32)) -> bool {
    v.is_some_and(|v| v >= KernelVersion::new(major as u8, minor as u8, 0))
}

/// Probes every feature on this kernel. With the `test-hooks` feature, `LOCKD_FEATURES_MISSING`
/// (comma-separated keys) reports features missing that are there: for tests of what an older
/// kernel sees.
pub fn probe() -> Vec<Probed> {
    let version = KernelVersion::current().ok();
    #[cfg(feature = "test-hooks")]
    let pretend: Vec<String> = std::env::var("LOCKD_FEATURES_MISSING")
        .map(|s| s.split(',').map(|k| k.trim().to_string()).collect())
        .unwrap_or_default();
    #[cfg(not(feature = "test-hooks"))]
    let pretend: Vec<String> = Vec::new();
    let (clsact, cls_bpf) = probe_tc();
    Feature::ALL
        .iter()
        .map(|&feature| {
            let mut why = None;
            let mut probed = |r: &Result<(), String>| {
                why = r.as_ref().err().cloned();
                (r.is_ok(), "probe")
            };
            let (present, how) = match feature {
                Feature::Clsact => probed(&clsact),
                Feature::ClsBpf => probed(&cls_bpf),
                Feature::XdpProgram => probed(
                    &aya::sys::is_program_supported(aya::programs::ProgramType::Xdp)
                        .map_err(|e| e.to_string())
                        .and_then(|ok| ok.then_some(()).ok_or_else(|| "refused".into())),
                ),
                Feature::LpmTrie => probed(
                    &aya::sys::is_map_supported(aya::maps::MapType::LpmTrie)
                        .map_err(|e| e.to_string())
                        .and_then(|ok| ok.then_some(()).ok_or_else(|| "refused".into())),
                ),
                Feature::MmapableArray => (
                    map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1, BPF_F_MMAPABLE).is_ok(),
                    "probe",
                ),
                Feature::XdpLink | Feature::Tcx | Feature::IfbRedirect => {
                    (at_least(version, feature.since()), "kernel version")
                }
            };
            let pretended = pretend.iter().any(|k| k == feature.key());
            if pretended {
                why = Some("LOCKD_FEATURES_MISSING".into());
            }
            Probed {
                feature,
                present: present && !pretended,
                how,
                why,
            }
        })
        .collect()
}

/// A feature lockd cannot run without is missing: one line naming it.
#[derive(Debug, thiserror::Error)]
#[error(
    "this kernel ({release}) lacks {} ({}, Linux {}.{}+): lockd cannot run on it",
    feature.describe(),
    feature.key(),
    feature.since().0,
    feature.since().1
)]
pub struct Missing {
    /// The running kernel's release.
    pub release: String,
    /// The first missing feature.
    pub feature: Feature,
}

/// The start-up verdict: Err with one line naming the first missing required feature, or the
/// fallbacks in use (to log).
pub fn check(probed: &[Probed]) -> Result<Vec<String>, Missing> {
    let release = KernelVersion::current()
        .map(|v| v.to_string())
        .unwrap_or_else(|_| "unknown".into());
    let mut fallbacks = Vec::new();
    for p in probed.iter().filter(|p| !p.present) {
        let (major, minor) = p.feature.since();
        match p.feature.fallback() {
            None => {
                return Err(Missing {
                    release,
                    feature: p.feature,
                });
            }
            Some(f) => fallbacks.push(format!(
                "no {} (Linux {major}.{minor}+{}): {f}",
                p.feature.describe(),
                p.why.as_ref().map(|w| format!("; {w}")).unwrap_or_default()
            )),
        }
    }
    Ok(fallbacks)
}


/// `lockd features --json`'s `programs`: name → verified instructions, or an `error`.
pub fn programs_json(p: &Result<Vec<(&'static str, Option<u32>)>, String>) -> serde_json::Value {
    match p {
        Ok(v) => v
            .iter()
            .map(|(name, n)| serde_json::json!({"program": name, "verified_insns": n}))
            .collect(),
        Err(e) => serde_json::json!({"error": e}),
    }
}

/// The programs' lines of `lockd features`.
pub fn programs_table(p: &Result<Vec<(&'static str, Option<u32>)>, String>) -> String {
    match p {
        Ok(v) => v
            .iter()
            .map(|(name, n)| {
                let n = n.map_or("loaded (count not reported)".into(), |n| {
                    format!("loaded, {n} of 1000000 instructions verified")
                });
                format!("program {name:<16} {n}\n")
            })
            .collect(),
        Err(e) => format!("programs: REFUSED — {e}\n"),
    }
}

/// The table `lockd features` prints.
pub fn table(probed: &[Probed]) -> String {
    let mut s = format!(
        "kernel {}\n",
        KernelVersion::current()
            .map(|v| v.to_string())
            .unwrap_or_else(|_| "unknown".into())
    );
    for p in probed {
        let (major, minor) = p.feature.since();
        let state = match (p.present, p.feature.fallback()) {
            (true, _) => "yes".to_string(),
            (false, Some(f)) => format!(
                "no — {f}{}",
                p.why
                    .as_ref()
                    .map(|w| format!(" ({w})"))
                    .unwrap_or_default()
            ),
            (false, None) => "NO — required".to_string(),
        };
        s += &format!(
            "{:<15} {:<58} {major}.{minor}+  ({})  {state}\n",
            p.feature.key(),
            p.feature.describe(),
            p.how
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_present() -> Vec<Probed> {
        Feature::ALL
            .iter()
            .map(|&feature| Probed {
                feature,
                present: true,
                how: "test",
                why: None,
            })
            .collect()
    }

    #[test]
    fn a_missing_required_feature_is_one_line_naming_it() {
        let mut p = all_present();
        let m = Feature::ALL
            .iter()
            .position(|f| *f == Feature::MmapableArray)
            .unwrap();
        p[m].present = false;
        let e = check(&p).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("BPF_F_MMAPABLE") && e.contains("5.5+"), "{e}");
    }

    #[test]
    fn a_missing_feature_with_a_fallback_is_logged_not_fatal() {
        let mut p = all_present();
        let tcx = Feature::ALL
            .iter()
            .position(|f| *f == Feature::Tcx)
            .unwrap();
        p[tcx].present = false;
        let f = check(&p).unwrap();
        assert_eq!(f.len(), 1);
        assert!(f[0].contains("clsact"), "{f:?}");
        assert_eq!(check(&all_present()).unwrap(), Vec::<String>::new());
    }
}
