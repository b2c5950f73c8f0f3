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
mod counters;
mod encode;
mod error;
mod garbage;
mod mapping;
mod monitor_maps;
mod pinning;
mod positions;
pub mod shaper;
mod tables;

pub use counters::VifCounters;
pub use error::DataplaneError;
pub use monitor_maps::MonitorMaps;
pub use pinning::{DEFAULT_PIN_DIR, LAYOUT_VERSION, cleanup, ensure_bpffs, mount_bpffs};

use encode::{Entries, config_of, lpm4, lpm6};
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
    CONFIG_COPIES, Counter, FLAG_TC_CHECKS, Lpm4Data, Lpm6Data, MAP_CONFIGS, MAP_COUNTERS,
    MAP_PREFIX4, MAP_PREFIX6, MAP_TABLE4, MAP_TABLE6, MAP_VIF_CONFIG, MAP_VIF_SLOTS, MAX_VIFS,
    PROG_VIF_EGRESS, PROG_VIF_INGRESS, PROG_VIF_INGRESS_TC, VifConfig,
    policy::{RateLimit, VifPolicy},
    position,
};
use serde::Serialize;

use std::os::fd::AsFd as _;

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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
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
    fn tc(&self, side: attach::Tc) -> &Option<LinkHandle<SchedClassifierLinkId>> {
        match side {
            attach::Tc::ToVm => &self.tc,
            attach::Tc::FromVm => &self.tc_from_vm,
        }
    }

    fn tc_mut(&mut self, side: attach::Tc) -> &mut Option<LinkHandle<SchedClassifierLinkId>> {
        match side {
            attach::Tc::ToVm => &mut self.tc,
            attach::Tc::FromVm => &mut self.tc_from_vm,
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

    /// Sets or replaces the policy of `ifindex`, atomically (see the module docs). A VIF gets
    /// its counters (zeroed) on its first policy.
    pub fn set_policy(&mut self, ifindex: u32, policy: &VifPolicy) -> Result<()> {
        if !self.vifs.contains_key(&ifindex) {
            let counter = self.free_counters.pop().ok_or(DataplaneError::NoSlot)?;
            if let Err(e) = self.zero_counters(counter) {
                self.free_counters.push(counter);
                return Err(e);
            }
            self.vifs.insert(
                ifindex,
                VifState {
                    counter,
                    // The first update writes generation 1; generation 0 never has entries.
                    generation: 0,
                    entries: Entries::default(),
                    config: VifConfig::default(),
                    live: VifConfig::default(),
                    tc_checks: false,
                    shaper: None,
                    shaper_folded: (0, 0),
                    xdp: None,
                    tc: None,
                    tc_from_vm: None,
                },
            );
        }
        let state = &self.vifs[&ifindex];
        let (counter, old_gen, tc_checks, old_shaper) = (
            state.counter,
            state.generation,
            state.tc_checks,
            state.shaper,
        );
        // Generations are unique across all VIFs and never 0, so retired entries of a removed
        // VIF can never be mistaken for a later VIF's on the same ifindex.
        let new_gen = self.next_generation;
        let mut entries = Entries::of(policy);
        let mut cfg = config_of(policy, &entries, counter);
        // The shaper exists (at its new rate) before a config names it; on a failure below
        // a new one goes again and a changed one gets its old rate back.
        let shaper = match (policy.rate, old_shaper) {
            (None, _) => None,
            (Some(r), Some((ifx, old))) if old == r => Some((ifx, r)),
            (Some(r), Some((ifx, _))) => {
                self.netns
                    .run(|| shaper::set_rate(ifx, &r))
                    .map_err(DataplaneError::Shaper)?;
                Some((ifx, r))
            }
            (Some(r), None) => Some((
                self.netns
                    .run(|| shaper::ensure(ifindex, &r))
                    .map_err(DataplaneError::Shaper)?,
                r,
            )),
        };
        let undo_shaper = |netns: &shaper::Netns, ifindex: u32| match (shaper, old_shaper) {
            (Some(_), None) => {
                let _ = netns.run(|| shaper::remove(ifindex));
            }
            (Some((ifx, new)), Some((_, old))) if new != old => {
                let _ = netns.run(|| shaper::set_rate(ifx, &old));
            }
            _ => {}
        };
        cfg.shaper = shaper.map_or(0, |(ifx, _)| ifx);
        if cfg.shaper != 0 && !shaper::program_hands_over() {
            cfg.flags |= lockd_common::FLAG_SHAPE_BY_FILTER;
        }
        if tc_checks {
            cfg.flags |= FLAG_TC_CHECKS;
        }
        if old_gen != 0 && cfg == state.config && entries.same_as(&state.entries) {
            return Ok(()); // Nothing changes; keep the running generation.
        }
        if let Err(e) = self.insert_entries(ifindex, new_gen, &mut entries) {
            self.remove_entries(ifindex, new_gen, &entries);
            undo_shaper(&self.netns, ifindex);
            return Err(e);
        }
        let mut live = VifConfig {
            generation: new_gen,
            ..cfg
        };
        entries.place(&mut live);
        if let Err(e) = self.publish(ifindex, &live) {
            self.remove_entries(ifindex, new_gen, &entries);
            undo_shaper(&self.netns, ifindex);
            return Err(e);
        }
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        if old_shaper.is_some() && shaper.is_none() {
            // No config names it now; frames still in its queue go with it.
            self.drop_shaper(ifindex);
        }
        let state = self.vifs.get_mut(&ifindex).expect("inserted above");
        state.shaper = shaper;
        state.live = live;
        let old = std::mem::replace(&mut state.entries, entries);
        state.generation = new_gen;
        // Kept without generation and regions, as `config_of` makes it, to spot no-op updates.
        state.config = cfg;
        // The new policy is in force now. The old generation's entries go after a grace
        // period, in `collect_garbage`, off the caller's latency path.
        self.retire(ifindex, old_gen, old)
    }

    /// Puts `cfg` in force for `ifindex`: into the hash, and — where the VIF's slot position
    /// is free or already its own — into a free copy that the slot is then flipped to. On an
    /// error nothing a packet reads has changed.
    fn publish(&mut self, ifindex: u32, cfg: &VifConfig) -> Result<()> {
        let pos = position(ifindex);
        let held = positions::split(self.positions.get(pos));
        let direct = held.is_none_or(|(ifx, _)| ifx == ifindex);
        let copy = if direct {
            let copy = self.take_copy()?;
            if let Err(e) = self.copies.set(copy, cfg, 0) {
                self.free_copies.push(copy);
                return Err(map_err(MAP_CONFIGS)(e));
            }
            Some(copy)
        } else {
            None
        };
        if let Err(e) = self.by_ifindex.insert(ifindex, cfg, 0) {
            self.free_copies.extend(copy);
            return Err(map_err(MAP_VIF_CONFIG)(e));
        }
        if let Some(copy) = copy {
            self.positions.set(pos, Some((ifindex, copy)));
            if let Some((_, old)) = held {
                self.garbage.push(Retired::Copy(old));
            }
        }
        Ok(())
    }

    /// A free `CONFIGS` copy, after a grace period if every one is waiting for one.
    fn take_copy(&mut self) -> Result<u32> {
        if self.free_copies.is_empty() {
            self.collect_garbage()?;
        }
        // At most MAX_VIFS copies are in force, so a grace period frees the rest.
        Ok(self.free_copies.pop().expect("copies outnumber VIFs"))
    }

    /// Takes `ifindex` out of the place packets read it from (slot and hash).
    fn unpublish(&mut self, ifindex: u32) {
        let pos = position(ifindex);
        if let Some((ifx, copy)) = positions::split(self.positions.get(pos))
            && ifx == ifindex
        {
            self.positions.set(pos, None);
            self.garbage.push(Retired::Copy(copy));
        }
        let _gone = self.by_ifindex.remove(&ifindex);
    }

    /// Chooses how TC programs are attached from now on.
    pub fn set_tc_mode(&mut self, mode: TcMode) {
        if mode == TcMode::Tcx && !attach::has_tcx() {
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

    fn retire(&mut self, ifindex: u32, generation: u32, entries: Entries) -> Result<()> {
        self.garbage.push(Retired::Entries {
            ifindex,
            generation,
            entries,
        });
        if self.garbage.entries() > RETIRED_LIMIT {
            self.collect_garbage()?;
        }
        Ok(())
    }

    /// Waits one RCU grace period (no packet can still hold a retired generation) and deletes
    /// every retired entry. The daemon calls this when idle; `set_policy` calls it itself if
    /// too many entries are waiting.
    pub fn collect_garbage(&mut self) -> Result<()> {
        if !self.has_garbage() {
            return Ok(());
        }
        self.barrier.wait().map_err(DataplaneError::Barrier)?;
        for r in self.garbage.take() {
            match r {
                Retired::Entries {
                    ifindex,
                    generation,
                    entries,
                } => self.remove_entries(ifindex, generation, &entries),
                Retired::Copy(c) => self.free_copies.push(c),
            }
        }
        Ok(())
    }

    /// Whether retired entries or copies wait for [`Dataplane::collect_garbage`].
    pub fn has_garbage(&self) -> bool {
        !self.garbage.is_empty()
    }

    /// Writes the entries of a new generation where packets will look for them: table
    /// regions for exact sets too large to sit inline, trie entries for prefixes that do not.
    /// On an error, what was written is recorded in `e` for `remove_entries`.
    fn insert_entries(&mut self, ifindex: u32, generation: u32, e: &mut Entries) -> Result<()> {
        if !e.inline4() {
            e.r4 = Some(self.with_room(|dp| dp.table4.build(&e.v4))?);
        }
        if !e.inline6() {
            e.r6 = Some(self.with_room(|dp| dp.table6.build(&e.v6))?);
        }
        for &(plen, addr) in e.trie4() {
            let key = lpm4(ifindex, generation, plen, addr);
            self.prefix4
                .insert(&key, 1, 0)
                .map_err(map_err(MAP_PREFIX4))?;
        }
        for &(plen, addr) in e.trie6() {
            let key = lpm6(ifindex, generation, plen, addr);
            self.prefix6
                .insert(&key, 1, 0)
                .map_err(map_err(MAP_PREFIX6))?;
        }
        Ok(())
    }

    /// Runs `build`; if the tables are full while retired regions wait for a grace period,
    /// collects them and runs it once more.
    fn with_room<T>(&mut self, build: impl Fn(&mut Self) -> Result<T>) -> Result<T> {
        match build(self) {
            Err(DataplaneError::TableFull) if self.has_garbage() => {
                self.collect_garbage()?;
                build(self)
            }
            r => r,
        }
    }

    /// Takes a generation's entries away; no packet may still read them. Best effort: an
    /// entry that is already gone is fine.
    fn remove_entries(&mut self, ifindex: u32, generation: u32, e: &Entries) {
        if let Some(r) = e.r4 {
            self.table4.release(r);
        }
        if let Some(r) = e.r6 {
            self.table6.release(r);
        }
        for &(plen, addr) in e.trie4() {
            let _gone = self.prefix4.remove(&lpm4(ifindex, generation, plen, addr));
        }
        for &(plen, addr) in e.trie6() {
            let _gone = self.prefix6.remove(&lpm6(ifindex, generation, plen, addr));
        }
    }

    /// Sets whether the TC ingress program makes `ifindex`'s from-VM checks, republishing its
    /// config with the flag.
    pub(super) fn set_tc_checks(&mut self, ifindex: u32, on: bool) -> Result<()> {
        let state = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?;
        if state.tc_checks == on {
            return Ok(());
        }
        let flip = |c: &mut VifConfig| {
            if on {
                c.flags |= FLAG_TC_CHECKS;
            } else {
                c.flags &= !FLAG_TC_CHECKS;
            }
        };
        let mut live = state.live;
        flip(&mut live);
        self.publish(ifindex, &live)?;
        let state = self.vifs.get_mut(&ifindex).expect("checked");
        state.live = live;
        flip(&mut state.config);
        state.tc_checks = on;
        Ok(())
    }

    /// Removes the shaper of `ifindex`, keeping what it dropped in the VIF's counters.
    fn drop_shaper(&mut self, ifindex: u32) {
        if let Ok(Some((frames, bytes))) = self.shaper_drops(ifindex)
            && let Some(s) = self.vifs.get_mut(&ifindex)
        {
            s.shaper_folded.0 += frames;
            s.shaper_folded.1 += bytes;
        }
        if let Err(e) = self.netns.run(|| shaper::remove(ifindex)) {
            tracing::warn!(ifindex, error = %e, "removing a shaper");
        }
    }

    /// Removes the policy of `ifindex` (detaching first if attached) and frees its slot.
    pub fn remove_policy(&mut self, ifindex: u32) -> Result<()> {
        if !self.vifs.contains_key(&ifindex) {
            return Err(DataplaneError::UnknownIfindex(ifindex));
        }
        self.detach(ifindex)?;
        self.unpublish(ifindex);
        if self.vifs[&ifindex].shaper.is_some() {
            let _ = self.netns.run(|| shaper::remove(ifindex));
        }
        let state = self.vifs.remove(&ifindex).expect("checked above");
        self.free_counters.push(state.counter);
        self.retire(ifindex, state.generation, state.entries)
    }

    /// A descriptor of `prog` for `BPF_PROG_TEST_RUN` from any thread.
    pub fn runner(&self, prog: &'static str) -> Result<Runner> {
        let fd = self
            .xdp_ref(prog)?
            .fd()
            .map_err(prog_err(prog))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(DataplaneError::TestRun)?;
        Ok(Runner::new(fd))
    }

    /// A descriptor of the TC egress program (to the VM) for `BPF_PROG_TEST_RUN`.
    pub fn tc_runner(&mut self) -> Result<Runner> {
        self.tc_side_runner(attach::Tc::ToVm)
    }

    /// A descriptor of the TC ingress program (from the VM) for `BPF_PROG_TEST_RUN`. It makes
    /// the from-VM checks on a VIF attached at the TC hook (`XdpModeRequest::Tc`).
    pub fn tc_ingress_runner(&mut self) -> Result<Runner> {
        self.tc_side_runner(attach::Tc::FromVm)
    }

    fn tc_side_runner(&mut self, side: attach::Tc) -> Result<Runner> {
        self.tc_program_fd(side)
            .map(Runner::new)
            .map_err(|_| DataplaneError::Program {
                name: side.program(),
                source: ProgramError::NotLoaded,
            })
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
