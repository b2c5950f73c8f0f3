//! The loader: one copy of the eBPF object, attached to any number of VIFs, with per-VIF policy
//! that is replaced atomically.
//!
//! ## How a policy update stays atomic
//! A packet reads the VIF's [`VifConfig`] (mode, MAC, flags, generation) whole — a `CONFIGS`
//! copy its slot names, or else its `VIF_CONFIG` hash element (see [`slots`]) — and then looks
//! up only address entries tagged with that generation. An update
//! 1. inserts the new entries under generation `g + 1` (invisible: nothing points at it yet),
//! 2. writes the new config into a free copy and the hash (a `BPF_F_NO_PREALLOC` element is
//!    swapped, not rewritten), then flips the VIF's slot to the copy with one atomic store,
//! 3. after one RCU grace period ([`RcuBarrier`]), when no packet can hold generation `g` or the
//!    old copy, deletes the generation-`g` entries and frees the copy — later, when idle.
//!
//! A failure in step 1 or 2 removes what step 1 added and leaves the old policy in force.

mod adopt;
mod attach;
mod cleanup;
mod counters;
mod encode;
mod error;
mod garbage;
mod mapping;
mod monitor_maps;
mod pinning;
mod policy;
mod positions;
pub mod shaper;
mod side;
mod tables;

pub use counters::VifCounters;
pub use error::DataplaneError;
pub use monitor_maps::MonitorMaps;
pub use cleanup::cleanup;
pub use pinning::{DEFAULT_PIN_DIR, LAYOUT_VERSION, ensure_bpffs, mount_bpffs};

use encode::Entries;
use error::{Result, map_err, prog_err};
use garbage::{Garbage, Retired};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray},
    programs::{
        ProgramError, SchedClassifier, Xdp, links::FdLink, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use lockd_common::{
    CONFIG_COPIES, Counter, Lpm4Data, Lpm6Data, MAP_CONFIGS, MAP_COUNTERS,
    MAP_PREFIX4, MAP_PREFIX6, MAP_TABLE4, MAP_TABLE6, MAP_VIF_CONFIG, MAP_VIF_SLOTS, MAX_VIFS,
    PROG_VIF_EGRESS, PROG_VIF_INGRESS, PROG_VIF_INGRESS_TC, VifConfig,
    policy::RateLimit,
    position,
};
use serde::Serialize;


use crate::{rcu::RcuBarrier, testrun::Runner};

/// The eBPF object built from `lockd-ebpf`.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lockd"));

/// The test kit's helper programs (`lockd-ebpf/src/kit.rs`): the benchmark floor and traffic
/// generator. A separate object that nothing in the daemon references or loads; it is built
/// here only because this crate's build script builds the eBPF crate.
#[doc(hidden)]
pub static KIT_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lockd-kit"));

/// Retired entries allowed to wait for a grace period before `set_policy` collects them itself
/// (it also does when a table region or config copy is wanted and only garbage holds one).
const RETIRED_LIMIT: usize = 65_536;

/// Where the from-VM checks ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Driver (native) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// The TC ingress program (no XDP program on the VIF).
    Tc,
}

/// How the TC programs are attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcMode {
    /// A clsact qdisc with `cls_bpf` filters (every kernel). The default: adding a filter costs
    /// about 0.05 ms, where creating a TCX link waits for an RCU grace period under the RTNL
    /// lock (8–16 ms measured), which a boot storm of VIF plugs pays per program.
    #[default]
    Clsact,
    /// TCX links (6.6+; clsact on older kernels).
    Tcx,
}

/// What the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeRequest {
    /// Native XDP; where the netdev has none (xen-netback, tun), the TC ingress hook, which
    /// costs less per frame than generic XDP (`cargo xtask bench`: `skb_hooks`).
    #[default]
    Auto,
    Native,
    Generic,
    /// The TC ingress hook (no XDP program).
    Tc,
}

/// An operator's word for a mode (`--xdp-mode`, `--tc-mode`): each mode's word, declared once.
macro_rules! words {
    ($t:ty { $($v:ident => $w:literal : $help:literal),+ $(,)? }) => {
        impl $t {
            /// Every mode's word, in declaration order.
            pub const WORDS: &'static [&'static str] = &[$($w),+];
            /// Every mode's word with what it does (`--help`; empty: the word says it).
            pub const HELP: &'static [(&'static str, &'static str)] = &[$(($w, $help)),+];

            /// This mode's word.
            pub fn word(self) -> &'static str {
                match self { $(Self::$v => $w),+ }
            }
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($w => Ok(Self::$v),)+
                    _ => Err(format!("'{s}' is not one of {}", Self::WORDS.join(", "))),
                }
            }
        }
    };
}

words!(TcMode {
    Clsact => "clsact": "A clsact qdisc with `cls_bpf` filters (every kernel)",
    Tcx => "tcx": "TCX links (6.6+; clsact on older kernels)",
});
words!(XdpModeRequest {
    Auto => "auto": "Native XDP; where the netdev has none (xen-netback, tun), the TC ingress hook, which costs less per frame than generic XDP (`cargo xtask bench`: `skb_hooks`)",
    Native => "native": "",
    Generic => "generic": "",
    Tc => "tc": "The TC ingress hook (no XDP program)",
});

#[derive(Debug)]
struct VifState {
    /// Index of the VIF's counters and rate state (`0..MAX_VIFS`).
    counter: u32,
    generation: u32,
    entries: Entries,
    /// The config last written, generation aside (to skip no-op updates).
    config: VifConfig,
    /// The config in force, as published.
    live: VifConfig,
    /// Whether the TC ingress program makes the from-VM checks (no XDP program).
    tc_checks: bool,
    /// The shaper (its ifindex) and the rate it holds, for a rate-limited VIF.
    shaper: Option<(u32, RateLimit)>,
    /// Drops of shapers this VIF had before (removed when its rate was cleared), so its
    /// counters never go back.
    shaper_folded: (u64, u64),
    /// The from-VM XDP attachment and how it was made.
    xdp: Option<(AttachMode, LinkHandle<XdpLinkId>)>,
    /// The to-VM TC egress attachment.
    tc: Option<LinkHandle<SchedClassifierLinkId>>,
    /// The from-VM TC ingress attachment.
    tc_from_vm: Option<LinkHandle<SchedClassifierLinkId>>,
}

impl VifState {
    fn tc(&self, side: side::Tc) -> &Option<LinkHandle<SchedClassifierLinkId>> {
        match side {
            side::Tc::ToVm => &self.tc,
            side::Tc::FromVm => &self.tc_from_vm,
        }
    }

    fn tc_mut(&mut self, side: side::Tc) -> &mut Option<LinkHandle<SchedClassifierLinkId>> {
        match side {
            side::Tc::ToVm => &mut self.tc,
            side::Tc::FromVm => &mut self.tc_from_vm,
        }
    }
}

#[derive(Debug)]
enum LinkHandle<Id> {
    /// Owned by the program object; detached when the dataplane is dropped (tests, the demo).
    Owned(Id),
    /// Pinned on bpffs; stays attached when the daemon exits, until the pin is removed.
    Pinned { link: FdLink, path: PathBuf },
    /// A clsact `cls_bpf` filter (kernels without TCX): not a BPF link, so nothing can be
    /// pinned; it stays attached on its own, and a record on bpffs (`path`) holds its
    /// priority and handle so the next daemon can replace its program or remove it.
    Clsact {
        priority: u16,
        handle: u32,
        path: PathBuf,
    },
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The loaded object and every VIF lockd manages.
pub struct Dataplane {
    ebpf: Ebpf,
    /// `VIF_CONFIG`: every VIF's config by ifindex.
    by_ifindex: HashMap<MapData, u32, VifConfig>,
    /// `VIF_SLOTS`: which copy is in force at each position.
    positions: positions::Positions,
    /// `CONFIGS`: the config copies positions name.
    copies: Array<MapData, VifConfig>,
    /// `CONFIGS` copies nothing names and no packet can still read.
    free_copies: Vec<u32>,
    table4: tables::Table<[u8; 4]>,
    table6: tables::Table<[u8; 16]>,
    prefix4: LpmTrie<MapData, Lpm4Data, u8>,
    prefix6: LpmTrie<MapData, Lpm6Data, u8>,
    counters: PerCpuArray<MapData, Counter>,
    barrier: RcuBarrier,
    vifs: BTreeMap<u32, VifState>,
    /// Counter indexes no VIF holds.
    free_counters: Vec<u32>,
    /// The generation the next update writes.
    next_generation: u32,
    /// Entries and copies replaced, freed after a grace period.
    garbage: Garbage,
    ncpus: usize,
    pins: Option<pinning::PinDirs>,
    /// How TC programs are attached from now on (attached ones keep their kind).
    tc_mode: TcMode,
    /// Where shapers are made and read (the namespace this dataplane was loaded in).
    netns: shaper::Netns,
    /// The from-VM program's descriptor for [`Dataplane::judge`], made on first use.
    judge_runner: std::sync::OnceLock<Runner>,
}

/// An unpinned dataplane (tests, the demo) takes its programs with it when dropped; its
/// shapers go too. A pinned one (the daemon) leaves both for the next daemon to adopt.
impl Drop for Dataplane {
    fn drop(&mut self) {
        if self.pins.is_none() {
            for (ifindex, s) in &self.vifs {
                if s.shaper.is_some() {
                    let _ = self.netns.run(|| shaper::remove(*ifindex));
                }
            }
        }
    }
}

/// The program `name` of the object, as its kind `T`.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DataplaneError::Program {
            name,
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(prog_err(name))
}

fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    })?;
    T::try_from(map).map_err(map_err(name))
}

impl Dataplane {
    /// Loads the object and both programs into the kernel (nothing is attached yet), with
    /// private maps and unpinned links (tests, the demo).
    pub fn load() -> Result<Self> {
        Self::load_with(None)
    }

    /// Loads the object; with `pin_dir`, maps are pinned there (an existing pin is reused, so
    /// a restarted daemon shares the running policy) and attachments are pinned links.
    pub fn load_with(pin_dir: Option<&Path>) -> Result<Self> {
        let pins = pin_dir.map(pinning::PinDirs::create).transpose()?;
        let mut loader = EbpfLoader::new();
        if let Some(p) = &pins {
            for name in pinning::MAPS {
                loader.map_pin_path(name, p.maps.join(name));
            }
        }
        let mut ebpf = loader.load(EBPF_OBJECT)?;
        for name in [PROG_VIF_EGRESS, PROG_VIF_INGRESS_TC] {
            program::<SchedClassifier>(&mut ebpf, name)?
                .load()
                .map_err(prog_err(name))?;
        }
        program::<Xdp>(&mut ebpf, PROG_VIF_INGRESS)?
            .load()
            .map_err(prog_err(PROG_VIF_INGRESS))?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        // Reused pinned maps may have copies a previous daemon replaced just now: none is free
        // before a grace period (adoption takes out the ones in force).
        let mut garbage = Garbage::default();
        let free_copies = if pins.is_some() {
            (0..CONFIG_COPIES).for_each(|c| garbage.push(Retired::Copy(c)));
            Vec::new()
        } else {
            (0..CONFIG_COPIES).rev().collect()
        };
        Ok(Self {
            by_ifindex: take(&mut ebpf, MAP_VIF_CONFIG)?,
            positions: positions::Positions::new(take(&mut ebpf, MAP_VIF_SLOTS)?)?,
            copies: take(&mut ebpf, MAP_CONFIGS)?,
            free_copies,
            table4: tables::Table::new(take(&mut ebpf, MAP_TABLE4)?)?,
            table6: tables::Table::new(take(&mut ebpf, MAP_TABLE6)?)?,
            prefix4: take(&mut ebpf, MAP_PREFIX4)?,
            prefix6: take(&mut ebpf, MAP_PREFIX6)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            barrier: RcuBarrier::new().map_err(DataplaneError::Barrier)?,
            ebpf,
            vifs: BTreeMap::new(),
            free_counters: (0..MAX_VIFS).rev().collect(),
            next_generation: 1,
            garbage,
            ncpus,
            pins,
            tc_mode: TcMode::default(),
            netns: shaper::Netns::current().map_err(DataplaneError::Shaper)?,
            judge_runner: std::sync::OnceLock::new(),
        })
    }

    /// The instructions the verifier processed to accept each program (Linux 5.16+ reports
    /// it; None before): how far each is from the verifier's limit of one million.
    pub fn verified_insns(&self) -> Vec<(&'static str, Option<u32>)> {
        [PROG_VIF_INGRESS, PROG_VIF_INGRESS_TC, PROG_VIF_EGRESS]
            .into_iter()
            .map(|name| {
                let n = self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|i| i.verified_instruction_count());
                (name, n)
            })
            .collect()
    }

    /// What the kernel reports of one of the object's programs (its run statistics among
    /// it, counted while `BPF_ENABLE_STATS` is held); None for a name it does not have.
    pub fn program_info(&self, name: &str) -> Option<aya::programs::ProgramInfo> {
        self.ebpf.program(name)?.info().ok()
    }

    fn xdp(&mut self, name: &'static str) -> Result<&mut Xdp> {
        program(&mut self.ebpf, name)
    }

    fn xdp_ref(&self, name: &'static str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or(DataplaneError::Program {
                name,
                source: ProgramError::NotLoaded,
            })?
            .try_into()
            .map_err(prog_err(name))
    }

    /// Chooses how TC programs are attached from now on.
    pub fn set_tc_mode(&mut self, mode: TcMode) {
        if mode == TcMode::Tcx && !crate::features::Feature::Tcx.by_version() {
            tracing::warn!("TCX needs Linux 6.6; TC programs go on a clsact qdisc");
        }
        self.tc_mode = mode;
    }

    /// Every ifindex with a policy.
    pub fn ifindexes(&self) -> Vec<u32> {
        self.vifs.keys().copied().collect()
    }

    /// Whether `ifindex` has a policy.
    pub fn has_policy(&self, ifindex: u32) -> bool {
        self.vifs.contains_key(&ifindex)
    }

    /// Whether packets of `ifindex` find its config through its position (two array lookups)
    /// rather than the hash (another VIF holds the position).
    pub fn has_position(&self, ifindex: u32) -> bool {
        positions::split(self.positions.get(position(ifindex)))
            .is_some_and(|(ifx, _)| ifx == ifindex)
    }

    /// Hands out the monitor's maps (once; None after). Writing stays off until `set`.
    pub fn take_monitor(&mut self) -> Option<MonitorMaps> {
        MonitorMaps::take(&mut self.ebpf)
    }

    /// A handle of XDP program `prog` for `BPF_PROG_TEST_RUN` from any thread.
    pub fn runner(&self, prog: &'static str) -> Result<Runner> {
        Runner::xdp(self.xdp_ref(prog)?, prog).map_err(prog_err(prog))
    }

    /// A handle of the TC egress program (to the VM) for `BPF_PROG_TEST_RUN`.
    pub fn tc_runner(&mut self) -> Result<Runner> {
        self.tc_side_runner(side::Tc::ToVm)
    }

    /// A handle of the TC ingress program (from the VM) for `BPF_PROG_TEST_RUN`. It makes
    /// the from-VM checks on a VIF attached at the TC hook (`XdpModeRequest::Tc`).
    pub fn tc_ingress_runner(&mut self) -> Result<Runner> {
        self.tc_side_runner(side::Tc::FromVm)
    }

    fn tc_side_runner(&mut self, side: side::Tc) -> Result<Runner> {
        let name = side.program();
        let p: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        Runner::tc(p, name).map_err(prog_err(name))
    }

    /// The verdict the kernel gives `frame` arriving on `ifindex` (XDP_PASS or XDP_DROP).
    pub fn judge(&self, ifindex: u32, frame: &[u8]) -> Result<u32> {
        let runner = match self.judge_runner.get() {
            Some(r) => r,
            None => {
                let r = self.runner(PROG_VIF_INGRESS)?;
                self.judge_runner.get_or_init(|| r)
            }
        };
        let r = runner
            .run(ifindex, frame, 1, 0, 0)
            .map_err(DataplaneError::TestRun)?;
        Ok(r.action)
    }
}

/// Loads lockd's programs (nothing attached, nothing pinned): the verifier's instruction
/// count for each, or the reason this kernel refuses one (the verifier's log, last lines).
pub fn load_programs() -> Result<Vec<(&'static str, Option<u32>)>, String> {
    let dp = Dataplane::load().map_err(|e| {
        let full = format!("{e:#}");
        let lines: Vec<&str> = full.lines().collect();
        lines[lines.len().saturating_sub(6)..].join("\n")
    })?;
    let counts = dp.verified_insns();
    drop(dp);
    Ok(counts)
}
