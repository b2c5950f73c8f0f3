//! Publishing a VIF's policy: its address entries under a new generation, its config copy,
//! the flip of its position (see the module docs of `dataplane`), and removing it; what a
//! change replaced is retired to the grace-period queue and deleted when the core is idle.

use lockd_common::{
    FLAG_TC_CHECKS, MAP_CONFIGS, MAP_PREFIX4, MAP_PREFIX6, MAP_VIF_CONFIG, VifConfig,
    policy::VifPolicy, position,
};

use super::{
    Dataplane, DataplaneError, RETIRED_LIMIT, Result, VifState,
    encode::{Entries, config_of, lpm4, lpm6},
    error::map_err,
    garbage::Retired,
    positions, shaper,
};

impl Dataplane {
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
    pub(super) fn publish(&mut self, ifindex: u32, cfg: &VifConfig) -> Result<()> {
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

}
