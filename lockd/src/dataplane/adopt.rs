//! Adoption: a starting daemon takes over what a previous one left pinned, without ever
//! detaching. Per-VIF counters and generations come from the config map (decoded by
//! [`decode`]), the current generation's address entries from the tables and tries (stale
//! generations are deleted), and every pinned link's program is atomically replaced by this
//! daemon's (`bpf_link_update`) — enforcement never stops.

use std::{fs, io, path::Path};

use aya::programs::{
    Xdp,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use lockd_common::{
    CONFIG_COPIES, FLAG_TC_CHECKS, LPM_HEADER_BITS, MAP_CONFIGS, MAP_VIF_CONFIG, MAX_VIFS,
    POSITIONS, PROG_VIF_INGRESS, VifConfig, position,
};

use super::{
    Dataplane, DataplaneError, LinkHandle, Result, VifState,
    encode::{Entries, decode},
    error::{map_err, prog_err},
    pinning::{LinkName, parse_link_name, pin_err, unpin},
    positions,
};

impl Dataplane {
    /// Adopts what a previous daemon left pinned (see the module docs). Links of ifindexes
    /// without a config are removed. Returns the adopted ifindexes.
    pub fn adopt(&mut self) -> Result<Vec<u32>> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let links_dir = pins.links.clone();
        let configs: Vec<(u32, VifConfig)> = self
            .by_ifindex
            .iter()
            .collect::<std::result::Result<_, _>>()
            .map_err(map_err(MAP_VIF_CONFIG))?;
        // A previous daemon may have released regions and copies just now.
        self.barrier.wait().map_err(DataplaneError::Barrier)?;
        for (ifindex, cfg) in &configs {
            let taken =
                cfg.counter >= MAX_VIFS || self.vifs.values().any(|v| v.counter == cfg.counter);
            let decoded = if taken { None } else { self.adopt_tables(cfg) };
            let Some((entries, config)) = decoded else {
                // Not ours to trust; drop it rather than share counters or table space.
                let _ = self.by_ifindex.remove(ifindex);
                continue;
            };
            self.free_counters.retain(|c| *c != cfg.counter);
            self.vifs.insert(
                *ifindex,
                VifState {
                    counter: cfg.counter,
                    generation: cfg.generation,
                    // Trie entries are added in `adopt_tries`.
                    entries,
                    config,
                    live: *cfg,
                    tc_checks: cfg.flags & FLAG_TC_CHECKS != 0,
                    // A shaper the config names must still be there under the VIF's name; its
                    // rate is not known here, so the next policy sets it again.
                    shaper: (cfg.shaper != 0
                        && super::shaper::ifindex_of(&super::shaper::name(*ifindex))
                            == Some(cfg.shaper))
                    .then_some((
                        cfg.shaper,
                        lockd_common::policy::RateLimit {
                            kbps: 0,
                            timeslice_us: 0,
                        },
                    )),
                    shaper_folded: (0, 0),
                    xdp: None,
                    tc: None,
                    tc_from_vm: None,
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
        self.adopt_tries()?;
        self.adopt_positions(&configs)?;
        // Shapers of VIFs without a policy here hold nothing anyone wants.
        let vifs: Vec<u32> = self.vifs.keys().copied().collect();
        if let Err(e) = self
            .netns
            .run(|| super::shaper::remove_all_but(|v| vifs.contains(&v)))
        {
            tracing::warn!(error = %e, "removing shapers with no policy");
        }
        self.adopt_links(&links_dir)
    }

    /// Takes over every link pinned in `from` (this layout's links directory, or an older
    /// layout's): a link of a VIF with a policy here gets this object's program with one
    /// `bpf_link_update` (a clsact filter: one netlink replace) and is pinned in this layout
    /// under the same name; any other is removed (which detaches it). A pin left in another
    /// directory is removed once its link is pinned here. Returns the ifindexes whose XDP
    /// link was taken over.
    fn adopt_links(&mut self, from: &Path) -> Result<Vec<u32>> {
        let to = self.pins.as_ref().expect("pinned").links.clone();
        let mut adopted = Vec::new();
        let rd = fs::read_dir(from).map_err(pin_err(from))?;
        for e in rd.flatten() {
            let path = e.path();
            let new_path = to.join(e.file_name());
            let parsed = parse_link_name(&e.file_name().to_string_lossy());
            let known = |dp: &Self, ifx: u32| dp.vifs.contains_key(&ifx);
            match parsed {
                Some(LinkName::Xdp(ifindex, mode)) if known(self, ifindex) => {
                    let pinned = PinnedLink::from_pin(&path)
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    let link = XdpLink::try_from(FdLink::from(pinned))
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    let prog: &mut Xdp = self.xdp(PROG_VIF_INGRESS)?;
                    let id = prog
                        .attach_to_link(link)
                        .map_err(prog_err(PROG_VIF_INGRESS))?;
                    let link = self.pin_link(id, &new_path)?;
                    self.vifs.get_mut(&ifindex).expect("known").xdp = Some((
                        mode,
                        LinkHandle::Pinned {
                            link,
                            path: new_path.clone(),
                        },
                    ));
                    adopted.push(ifindex);
                }
                Some(LinkName::Tc(ifindex, side)) if known(self, ifindex) => {
                    let pinned = PinnedLink::from_pin(&path)
                        .map_err(|err| pin_err(&path)(io::Error::other(err)))?;
                    // bpf_link_update swaps the program in place; the link stays.
                    let mut link = self.tc_adopt(side, FdLink::from(pinned))?;
                    if new_path != path {
                        let _stale = fs::remove_file(&new_path);
                        link = link
                            .pin(&new_path)
                            .map_err(|err| pin_err(&new_path)(super::pinning::pin_io(err)))?
                            .into();
                    }
                    *self.vifs.get_mut(&ifindex).expect("known").tc_mut(side) =
                        Some(LinkHandle::Pinned {
                            link,
                            path: new_path.clone(),
                        });
                }
                Some(LinkName::Clsact(ifindex, side, priority, handle)) if known(self, ifindex) => {
                    if let Err(e) = self.clsact_adopt(ifindex, side, priority, handle) {
                        // The netdev went away with its filter; reconciliation attaches anew
                        // if it comes back.
                        tracing::info!(path = %path.display(), error = %e, "clsact filter gone");
                        unpin(&path)?;
                        continue;
                    }
                    if new_path != path {
                        self.pin_tc_program(side, &new_path)?;
                    }
                    *self.vifs.get_mut(&ifindex).expect("known").tc_mut(side) =
                        Some(LinkHandle::Clsact {
                            priority,
                            handle,
                            path: new_path.clone(),
                        });
                }
                Some(LinkName::Clsact(ifindex, side, priority, handle)) => {
                    tracing::info!(path = %path.display(), "removing a clsact filter with no policy");
                    super::attach::clsact_detach(ifindex, side, priority, handle);
                    unpin(&path)?;
                }
                _ => {
                    tracing::info!(path = %path.display(), "removing a pinned link with no policy");
                    unpin(&path)?;
                }
            }
            if new_path != path {
                // The link lives on under its pin here.
                unpin(&path)?;
            }
        }
        Ok(adopted)
    }

    /// A config decoded, with its exact sets read from the table regions it names (which are
    /// then reserved). None if a region is invalid or overlaps one already taken.
    fn adopt_tables(&mut self, cfg: &VifConfig) -> Option<(Entries, VifConfig)> {
        let (mut e, config) = decode(cfg)?;
        if let Some(r) = e.r4 {
            e.v4 = self.table4.adopt(r)?;
        }
        if let Some(r) = e.r6 {
            match self.table6.adopt(r) {
                Some(v6) => e.v6 = v6,
                None => {
                    if let Some(r) = e.r4 {
                        self.table4.release(r);
                    }
                    return None;
                }
            }
        }
        Some((e, config))
    }

    /// Takes over the positions: one naming an adopted VIF keeps its copy (rewritten through a
    /// fresh copy if it differs from the hash, which a daemon killed between the two writes
    /// leaves); any other is emptied. Every other copy waits a grace period before reuse.
    fn adopt_positions(&mut self, configs: &[(u32, VifConfig)]) -> Result<()> {
        let mut stale = Vec::new();
        let mut in_use = vec![false; CONFIG_COPIES as usize];
        for pos in 0..POSITIONS {
            let Some((ifx, copy)) = positions::split(self.positions.get(pos)) else {
                continue;
            };
            let cfg = configs.iter().find(|(i, _)| *i == ifx).map(|(_, c)| *c);
            match (cfg, in_use.get_mut(copy as usize)) {
                (Some(cfg), Some(used))
                    if !*used && position(ifx) == pos && self.vifs.contains_key(&ifx) =>
                {
                    *used = true;
                    if self.copies.get(&copy, 0).map_err(map_err(MAP_CONFIGS))? != cfg {
                        stale.push((ifx, cfg));
                    }
                }
                _ => self.positions.set(pos, None),
            }
        }
        // Copies in force leave the queue (all of them were put there at load).
        for (copy, used) in in_use.iter().enumerate() {
            if *used {
                self.garbage.reclaim_copy(copy as u32);
            }
        }
        for (ifx, cfg) in stale {
            self.publish(ifx, &cfg)?;
        }
        Ok(())
    }

    /// Adds each VIF's current trie entries and deletes any other generation's.
    fn adopt_tries(&mut self) -> Result<()> {
        // For each trie: read every key, split it into (ifindex, generation, entry); keep the
        // entry if it belongs to its VIF's current generation, else delete the key.
        macro_rules! sweep {
            ($map:ident, $field:ident) => {
                let keys: Vec<_> = self.$map.keys().filter_map(|k| k.ok()).collect();
                for k in keys {
                    let d = k.data();
                    let ifx = u32::from_be_bytes(d.ifindex_be);
                    let generation = u32::from_be_bytes(d.generation_be);
                    let plen = k.prefix_len().saturating_sub(LPM_HEADER_BITS);
                    match self.vifs.get_mut(&ifx) {
                        Some(v) if v.generation == generation => {
                            v.entries.$field.push((plen, d.addr))
                        }
                        _ => {
                            let _gone = self.$map.remove(&k);
                        }
                    }
                }
            };
        }
        sweep!(prefix4, p4);
        sweep!(prefix6, p6);
        Ok(())
    }

    /// The ifindexes an older pinned layout still enforces (their programs must not be
    /// attached anew: an XDP link would be refused beside the old one).
    pub fn older_layout_ifindexes(&self) -> Vec<u32> {
        let Some(pins) = &self.pins else {
            return Vec::new();
        };
        let mut out: Vec<u32> = pins
            .older
            .iter()
            .filter_map(|root| fs::read_dir(root.join("links")).ok())
            .flatten()
            .flatten()
            .filter_map(
                |e| match parse_link_name(&e.file_name().to_string_lossy())? {
                    LinkName::Xdp(i, _) | LinkName::Tc(i, _) | LinkName::Clsact(i, _, _, _) => {
                        Some(i)
                    }
                },
            )
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Takes over from an older pinned layout (an earlier release's), without a gap. The
    /// policies must already be in this layout's maps (the daemon sets them first): then
    /// every old link gets this release's program with one `bpf_link_update` (a clsact
    /// filter, one netlink replace) and is pinned here, and the old layout is removed. A link
    /// for a VIF without a policy here goes with it. Returns how many VIFs' XDP links moved.
    pub fn take_over_older(&mut self) -> Result<usize> {
        let Some(pins) = &self.pins else {
            return Ok(0);
        };
        let older = pins.older.clone();
        let mut moved = 0;
        for root in &older {
            let old_links = root.join("links");
            if old_links.is_dir() {
                moved += self.adopt_links(&old_links)?.len();
            }
            super::cleanup::remove_layout(root)?;
            tracing::info!(layout = %root.display(), moved, "took over an older pinned layout");
        }
        if let Some(p) = self.pins.as_mut() {
            p.older.clear();
        }
        Ok(moved)
    }
}
