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

mod attach;
mod counters;
mod pinning;
mod slots;
mod tables;

pub use counters::VifCounters;

pub use pinning::{cleanup, ensure_bpffs};

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, lpm_trie::Key},
    programs::{
        ProgramError, SchedClassifier, Xdp, links::FdLink, tc::SchedClassifierLinkId,
        xdp::XdpLinkId,
    },
};
use lockd_common::{
    CONFIG_COPIES, Counter, FLAG_HAS_A4, FLAG_HAS_S6, FLAG_INLINE_P4, FLAG_INLINE_P6, FLAG_INLINE4,
    FLAG_INLINE6, FLAG_PREFIX4, FLAG_PREFIX6, INLINE_P4, INLINE_P6, INLINE4, INLINE6,
    LPM_HEADER_BITS, Lpm4Data, Lpm6Data, MAP_CONFIGS, MAP_COUNTERS, MAP_PREFIX4, MAP_PREFIX6,
    MAP_RATE, MAP_TABLE4, MAP_TABLE6, MAP_VIF_CONFIG, MAP_VIF_SLOTS, MAX_VIFS, PROG_VIF_EGRESS,
    PROG_VIF_INGRESS, Prefix4, Prefix6, RateState, VifConfig,
    policy::{EffectiveMode, VifPolicy, link_local},
    position, rate_params,
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

/// Errors of the dataplane loader.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object did not load (verifier rejection, missing privileges, no BTF ...).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded, attached, detached or run.
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A pinned link is not of the expected kind.
    #[error("pinned link: {0}")]
    Link(#[source] aya::programs::links::LinkError),
    /// A map is missing from the object or has the wrong type.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// Every counter slot is taken.
    #[error("no free VIF slot: lockd enforces at most {MAX_VIFS} VIFs")]
    NoSlot,
    /// The VIF has no policy in the dataplane.
    #[error("ifindex {0} has no policy")]
    UnknownIfindex(u32),
    /// The VIF already has the program attached.
    #[error("ifindex {0} is already attached")]
    AlreadyAttached(u32),
    /// The RCU barrier syscall failed.
    #[error("waiting for an RCU grace period failed: {0}")]
    Barrier(#[source] std::io::Error),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] std::io::Error),
    /// A pin on bpffs could not be made, read or removed.
    #[error("bpffs pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The address table arrays have no free region big enough.
    #[error(
        "the {MAP_TABLE4}/{MAP_TABLE6} address tables are full (too many allowed addresses across all VIFs)"
    )]
    TableFull,
    /// A map could not be mapped into this process.
    #[error("mapping {name} into memory failed: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading the number of CPUs failed.
    #[error("reading the possible CPUs failed: {0}")]
    Cpus(#[source] std::io::Error),
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

/// How XDP ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// Driver (native) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
}

/// What the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeRequest {
    /// Native, falling back to generic with a log line.
    #[default]
    Auto,
    Native,
    Generic,
}

/// The address entries of one generation of a VIF's policy.
#[derive(Debug, Default, Clone)]
struct Entries {
    v4: Vec<[u8; 4]>,
    p4: Vec<(u32, [u8; 4])>,
    v6: Vec<[u8; 16]>,
    p6: Vec<(u32, [u8; 16])>,
    /// Where `v4` / `v6` are, when they do not fit inline (set by `insert_entries`).
    r4: Option<tables::Region>,
    r6: Option<tables::Region>,
}

impl Entries {
    /// The kernel's view of a policy: exact addresses in hashes, shorter prefixes in tries, and
    /// the derived link-local address as one more exact IPv6 entry when S6 is non-empty.
    fn of(policy: &VifPolicy) -> Self {
        let mut e = Entries::default();
        if policy.mode != EffectiveMode::Locked {
            return e;
        }
        for n in &policy.ipv4 {
            if n.prefix() == 32 {
                e.v4.push(n.ip().octets());
            } else {
                e.p4.push((u32::from(n.prefix()), n.network().octets()));
            }
        }
        for n in &policy.ipv6 {
            if n.prefix() == 128 {
                e.v6.push(n.ip().octets());
            } else {
                e.p6.push((u32::from(n.prefix()), n.network().octets()));
            }
        }
        if policy.has_s6() {
            let ll = link_local(policy.mac).octets();
            if !e.v6.contains(&ll) {
                e.v6.push(ll);
            }
        }
        e
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.p4.len() + self.p6.len()
    }

    /// Exact IPv4 addresses that live in the config rather than the map.
    fn inline4(&self) -> bool {
        self.v4.len() <= INLINE4
    }

    fn inline6(&self) -> bool {
        self.v6.len() <= INLINE6
    }

    /// Names the table regions in a config about to be published.
    fn place(&self, cfg: &mut VifConfig) {
        if let Some(r) = self.r4 {
            (cfg.t4_base, cfg.t4_mask) = (r.base, r.mask());
        }
        if let Some(r) = self.r6 {
            (cfg.t6_base, cfg.t6_mask) = (r.base, r.mask());
        }
    }

    /// Prefixes that live in the config rather than the trie.
    fn inline_p4(&self) -> bool {
        self.p4.len() <= INLINE_P4
    }

    fn inline_p6(&self) -> bool {
        self.p6.len() <= INLINE_P6
    }

    /// The prefixes that go into the tries (none when they fit inline).
    fn trie4(&self) -> &[(u32, [u8; 4])] {
        if self.inline_p4() { &[] } else { &self.p4 }
    }

    fn trie6(&self) -> &[(u32, [u8; 16])] {
        if self.inline_p6() { &[] } else { &self.p6 }
    }

    /// Same entries, in any order.
    fn same_as(&self, other: &Entries) -> bool {
        fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
            let mut v = v.to_vec();
            v.sort();
            v
        }
        sorted(&self.v4) == sorted(&other.v4)
            && sorted(&self.v6) == sorted(&other.v6)
            && sorted(&self.p4) == sorted(&other.p4)
            && sorted(&self.p6) == sorted(&other.p6)
    }
}

#[derive(Debug)]
struct VifState {
    slot: u32,
    generation: u32,
    entries: Entries,
    /// The config last written, generation aside (to skip no-op updates).
    config: VifConfig,
    /// The from-VM XDP attachment and how it was made.
    xdp: Option<(AttachMode, LinkHandle<XdpLinkId>)>,
    /// The to-VM TC egress attachment.
    tc: Option<LinkHandle<SchedClassifierLinkId>>,
}

#[derive(Debug)]
enum LinkHandle<Id> {
    /// Owned by the program object; detached when the dataplane is dropped (tests, the demo).
    Owned(Id),
    /// Pinned on bpffs; stays attached when the daemon exits, until the pin is removed.
    Pinned { link: FdLink, path: PathBuf },
}

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;

/// The loaded object and every VIF lockd manages.
pub struct Dataplane {
    ebpf: Ebpf,
    config: HashMap<MapData, u32, VifConfig>,
    slots: slots::Slots,
    configs: Array<MapData, VifConfig>,
    /// `CONFIGS` copies nothing names and no packet can still read.
    free_copies: Vec<u32>,
    /// Copies replaced since the last grace period.
    retired_copies: Vec<u32>,
    table4: tables::Table<[u8; 4]>,
    table6: tables::Table<[u8; 16]>,
    prefix4: LpmTrie<MapData, Lpm4Data, u8>,
    prefix6: LpmTrie<MapData, Lpm6Data, u8>,
    counters: PerCpuArray<MapData, Counter>,
    rate: Array<MapData, RateState>,
    barrier: RcuBarrier,
    vifs: BTreeMap<u32, VifState>,
    free_slots: Vec<u32>,
    /// The generation the next update writes.
    next_generation: u32,
    /// Entries of replaced generations, deleted after a grace period.
    retired: Vec<(u32, u32, Entries)>,
    retired_count: usize,
    ncpus: usize,
    pins: Option<pinning::PinDirs>,
    /// The from-VM program's descriptor for [`Dataplane::judge`], made on first use.
    judge_runner: std::sync::OnceLock<Runner>,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
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
        program::<SchedClassifier>(&mut ebpf, PROG_VIF_EGRESS)?
            .load()
            .map_err(prog_err(PROG_VIF_EGRESS))?;
        program::<Xdp>(&mut ebpf, PROG_VIF_INGRESS)?
            .load()
            .map_err(prog_err(PROG_VIF_INGRESS))?;
        let ncpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        Ok(Self {
            config: take(&mut ebpf, MAP_VIF_CONFIG)?,
            slots: slots::Slots::new(take(&mut ebpf, MAP_VIF_SLOTS)?)?,
            configs: take(&mut ebpf, MAP_CONFIGS)?,
            // Reused pinned maps may have copies a previous daemon replaced just now: none is
            // free before a grace period (adoption takes out the ones in force).
            free_copies: if pins.is_some() {
                Vec::new()
            } else {
                (0..CONFIG_COPIES).rev().collect()
            },
            retired_copies: if pins.is_some() {
                (0..CONFIG_COPIES).collect()
            } else {
                Vec::new()
            },
            table4: tables::Table::new(take(&mut ebpf, MAP_TABLE4)?)?,
            table6: tables::Table::new(take(&mut ebpf, MAP_TABLE6)?)?,
            prefix4: take(&mut ebpf, MAP_PREFIX4)?,
            prefix6: take(&mut ebpf, MAP_PREFIX6)?,
            counters: take(&mut ebpf, MAP_COUNTERS)?,
            rate: take(&mut ebpf, MAP_RATE)?,
            barrier: RcuBarrier::new().map_err(DataplaneError::Barrier)?,
            ebpf,
            vifs: BTreeMap::new(),
            free_slots: (0..MAX_VIFS).rev().collect(),
            next_generation: 1,
            retired: Vec::new(),
            retired_count: 0,
            ncpus,
            pins,
            judge_runner: std::sync::OnceLock::new(),
        })
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
    /// its counter slot (zeroed) on its first policy.
    pub fn set_policy(&mut self, ifindex: u32, policy: &VifPolicy) -> Result<()> {
        if !self.vifs.contains_key(&ifindex) {
            let slot = self.free_slots.pop().ok_or(DataplaneError::NoSlot)?;
            if let Err(e) = self.zero_counters(slot) {
                self.free_slots.push(slot);
                return Err(e);
            }
            self.vifs.insert(
                ifindex,
                VifState {
                    slot,
                    // The first update writes generation 1; generation 0 never has entries.
                    generation: 0,
                    entries: Entries::default(),
                    config: VifConfig::default(),
                    xdp: None,
                    tc: None,
                },
            );
        }
        let state = &self.vifs[&ifindex];
        let (slot, old_gen) = (state.slot, state.generation);
        // Generations are unique across all VIFs and never 0, so retired entries of a removed
        // VIF can never be mistaken for a later VIF's on the same ifindex.
        let new_gen = self.next_generation;
        let mut entries = Entries::of(policy);
        let cfg = config_of(policy, &entries, slot);
        if old_gen != 0 && cfg == state.config && entries.same_as(&state.entries) {
            return Ok(()); // Nothing changes; keep the running generation.
        }
        if let Err(e) = self.insert_entries(ifindex, new_gen, &mut entries) {
            self.remove_entries(ifindex, new_gen, &entries);
            return Err(e);
        }
        let mut live = VifConfig {
            generation: new_gen,
            ..cfg
        };
        entries.place(&mut live);
        if let Err(e) = self.publish(ifindex, &live) {
            self.remove_entries(ifindex, new_gen, &entries);
            return Err(e);
        }
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        let state = self.vifs.get_mut(&ifindex).expect("inserted above");
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
        let held = slots::split(self.slots.get(pos));
        let direct = held.is_none_or(|(ifx, _)| ifx == ifindex);
        let copy = if direct {
            let copy = self.take_copy()?;
            if let Err(e) = self.configs.set(copy, cfg, 0) {
                self.free_copies.push(copy);
                return Err(map_err(MAP_CONFIGS)(e));
            }
            Some(copy)
        } else {
            None
        };
        if let Err(e) = self.config.insert(ifindex, cfg, 0) {
            self.free_copies.extend(copy);
            return Err(map_err(MAP_VIF_CONFIG)(e));
        }
        if let Some(copy) = copy {
            self.slots.set(pos, Some((ifindex, copy)));
            self.retired_copies.extend(held.map(|(_, old)| old));
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
        if let Some((ifx, copy)) = slots::split(self.slots.get(pos))
            && ifx == ifindex
        {
            self.slots.set(pos, None);
            self.retired_copies.push(copy);
        }
        let _gone = self.config.remove(&ifindex);
    }

    /// Whether packets of `ifindex` find its config through its slot (two array lookups)
    /// rather than the hash (another VIF holds the position).
    pub fn is_slotted(&self, ifindex: u32) -> bool {
        slots::split(self.slots.get(position(ifindex))).is_some_and(|(ifx, _)| ifx == ifindex)
    }

    fn retire(&mut self, ifindex: u32, generation: u32, entries: Entries) -> Result<()> {
        self.retired_count += entries.len();
        self.retired.push((ifindex, generation, entries));
        if self.retired_count > RETIRED_LIMIT {
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
        for (ifindex, generation, entries) in std::mem::take(&mut self.retired) {
            self.remove_entries(ifindex, generation, &entries);
        }
        self.retired_count = 0;
        self.free_copies.append(&mut self.retired_copies);
        Ok(())
    }

    /// Whether retired entries or copies wait for [`Dataplane::collect_garbage`].
    pub fn has_garbage(&self) -> bool {
        !self.retired.is_empty() || !self.retired_copies.is_empty()
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

    /// Removes the policy of `ifindex` (detaching first if attached) and frees its slot.
    pub fn remove_policy(&mut self, ifindex: u32) -> Result<()> {
        if !self.vifs.contains_key(&ifindex) {
            return Err(DataplaneError::UnknownIfindex(ifindex));
        }
        self.detach(ifindex)?;
        self.unpublish(ifindex);
        let state = self.vifs.remove(&ifindex).expect("checked above");
        self.free_slots.push(state.slot);
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

    /// A descriptor of the TC egress program for `BPF_PROG_TEST_RUN`.
    pub fn tc_runner(&mut self) -> Result<Runner> {
        let fd = self
            .tc()?
            .fd()
            .map_err(prog_err(PROG_VIF_EGRESS))?
            .as_fd()
            .try_clone_to_owned()
            .map_err(DataplaneError::TestRun)?;
        Ok(Runner::new(fd))
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

/// The kernel config for a policy (generation 0; the caller sets it).
fn config_of(policy: &VifPolicy, entries: &Entries, slot: u32) -> VifConfig {
    let mut flags = 0;
    if !policy.ipv4.is_empty() {
        flags |= FLAG_HAS_A4;
    }
    if policy.has_s6() {
        flags |= FLAG_HAS_S6;
    }
    let mut inline4 = [[0u8; 4]; INLINE4];
    let mut inline6 = [[0u8; 16]; INLINE6];
    if entries.inline4() {
        flags |= FLAG_INLINE4;
        inline4[..entries.v4.len()].copy_from_slice(&entries.v4);
    }
    if entries.inline6() {
        flags |= FLAG_INLINE6;
        inline6[..entries.v6.len()].copy_from_slice(&entries.v6);
    }
    let (pfx4, np4, f4) =
        prefixes::<4, INLINE_P4, _>(&entries.p4, |net, mask| Prefix4 { net, mask });
    let (pfx6, np6, f6) =
        prefixes::<16, INLINE_P6, _>(&entries.p6, |net, mask| Prefix6 { net, mask });
    flags |= if f4 { FLAG_INLINE_P4 } else { 0 } | if f6 { FLAG_INLINE_P6 } else { 0 };
    flags |= if !f4 && !entries.p4.is_empty() {
        FLAG_PREFIX4
    } else {
        0
    };
    flags |= if !f6 && !entries.p6.is_empty() {
        FLAG_PREFIX6
    } else {
        0
    };
    let (rate_ns_per_byte_q16, burst_ns) = policy
        .rate
        .map(|r| rate_params(r.kbps, r.timeslice_us))
        .unwrap_or((0, 0));
    VifConfig {
        mode: policy.mode.kernel(),
        generation: 0,
        slot,
        flags,
        mac: policy.mac,
        n4: if entries.inline4() {
            entries.v4.len() as u8
        } else {
            0
        },
        n6: if entries.inline6() {
            entries.v6.len() as u8
        } else {
            0
        },
        rate_ns_per_byte_q16,
        burst_ns,
        inline4,
        inline6,
        np4,
        np6,
        _pad: [0; 6],
        pfx4,
        pfx6,
        t4_base: 0,
        t4_mask: 0,
        t6_base: 0,
        t6_mask: 0,
    }
}

/// A family's prefixes as inline (network, mask) pairs, their count, and whether they fit
/// (else they go to the trie and the inline slots stay empty).
fn prefixes<const N: usize, const K: usize, P: Copy + Default>(
    p: &[(u32, [u8; N])],
    make: impl Fn([u8; N], [u8; N]) -> P,
) -> ([P; K], u8, bool) {
    let mut out = [P::default(); K];
    if p.is_empty() || p.len() > K {
        return (out, 0, false);
    }
    for (o, &(plen, net)) in out.iter_mut().zip(p) {
        *o = make(net, mask::<N>(plen));
    }
    (out, p.len() as u8, true)
}

/// The network-order mask of a `plen`-bit prefix of an `N`-byte address.
fn mask<const N: usize>(plen: u32) -> [u8; N] {
    let mut m = [0u8; N];
    for (i, b) in m.iter_mut().enumerate() {
        let bits = plen.saturating_sub(8 * i as u32).min(8);
        *b = (0xff_u16 << (8 - bits)) as u8;
    }
    m
}

fn lpm4(ifindex: u32, generation: u32, plen: u32, addr: [u8; 4]) -> Key<Lpm4Data> {
    Key::new(
        LPM_HEADER_BITS + plen,
        Lpm4Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: generation.to_be_bytes(),
            addr,
        },
    )
}

fn lpm6(ifindex: u32, generation: u32, plen: u32, addr: [u8; 16]) -> Key<Lpm6Data> {
    Key::new(
        LPM_HEADER_BITS + plen,
        Lpm6Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: generation.to_be_bytes(),
            addr,
        },
    )
}
