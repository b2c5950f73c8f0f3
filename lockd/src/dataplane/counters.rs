//! Per-VIF counters: packets and bytes per direction and reason, per CPU in the kernel.

use aya::maps::PerCpuValues;
use lockd_common::{Counter, Direction, MAP_COUNTERS, Reason, SLOT_SHAPED, counter_index};

use super::{Dataplane, DataplaneError, Result, map_err};

/// Packets and bytes per direction and reason for one VIF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VifCounters(pub [[Counter; Reason::COUNT]; 2]);

impl VifCounters {
    pub fn get(&self, dir: Direction, reason: Reason) -> Counter {
        self.0[dir as usize][reason as usize]
    }

    /// `self - earlier`, per cell.
    pub fn delta(&self, earlier: &VifCounters) -> VifCounters {
        let mut out = VifCounters::default();
        for d in 0..2 {
            for r in 0..Reason::COUNT {
                out.0[d][r] = Counter {
                    packets: self.0[d][r].packets - earlier.0[d][r].packets,
                    bytes: self.0[d][r].bytes - earlier.0[d][r].bytes,
                };
            }
        }
        out
    }

    /// `self + other`, per cell (a VIF's netdevs summed).
    pub fn plus(&self, other: &VifCounters) -> VifCounters {
        let mut out = VifCounters::default();
        for d in 0..2 {
            for r in 0..Reason::COUNT {
                out.0[d][r] = Counter {
                    packets: self.0[d][r].packets + other.0[d][r].packets,
                    bytes: self.0[d][r].bytes + other.0[d][r].bytes,
                };
            }
        }
        out
    }

    /// The non-zero cells as (direction, reason, counter).
    pub fn nonzero(&self) -> Vec<(Direction, Reason, Counter)> {
        let mut out = Vec::new();
        for (d, dir) in [Direction::FromVm, Direction::ToVm].into_iter().enumerate() {
            for r in Reason::ALL {
                let c = self.0[d][r as usize];
                if c.packets != 0 {
                    out.push((dir, r, c));
                }
            }
        }
        out
    }
}

impl Dataplane {
    /// The counter index of `ifindex` (its row in the counters and the monitor's budgets).
    pub fn counter_index(&self, ifindex: u32) -> Option<u32> {
        self.vifs.get(&ifindex).map(|v| v.counter)
    }

    /// Zeroes the counters at `counter` before a new VIF uses them.
    pub(super) fn zero_counters(&mut self, counter: u32) -> Result<()> {
        for dir in 0..2 {
            for r in (0..Reason::COUNT as u32).chain([SLOT_SHAPED]) {
                let zeros = PerCpuValues::try_from(vec![Counter::default(); self.ncpus])
                    .map_err(|e| DataplaneError::Cpus(std::io::Error::other(e)))?;
                self.counters
                    .set(counter_index(counter, dir, r), zeros, 0)
                    .map_err(map_err(MAP_COUNTERS))?;
            }
        }
        Ok(())
    }

    /// The VIF's counters summed over CPUs.
    pub fn counters(&self, ifindex: u32) -> Result<VifCounters> {
        let mut out = VifCounters::default();
        for (d, dir) in [Direction::FromVm, Direction::ToVm].into_iter().enumerate() {
            for r in Reason::ALL {
                out.0[d][r as usize] = self.counter(ifindex, dir, r)?;
            }
        }
        Ok(out)
    }

    /// One counter of a VIF, summed over CPUs. A rate-limited VIF's frames that passed the
    /// policy but found its shaper's backlog full count as `ratelimit`, not `pass`.
    pub fn counter(&self, ifindex: u32, dir: Direction, reason: Reason) -> Result<Counter> {
        let mut c = self.slot(ifindex, dir, reason as u32)?;
        if dir == Direction::FromVm && matches!(reason, Reason::Pass | Reason::Ratelimit) {
            let (frames, bytes) = self.shaper_drops(ifindex)?.unwrap_or_default();
            let folded = self.vifs[&ifindex].shaper_folded;
            let (frames, bytes) = (frames + folded.0, bytes + folded.1);
            if reason == Reason::Pass {
                c.packets = c.packets.saturating_sub(frames);
                c.bytes = c.bytes.saturating_sub(bytes);
            } else {
                c.packets += frames;
                c.bytes += bytes;
            }
        }
        Ok(c)
    }

    /// Frames the VIF's current shaper dropped (its backlog full), and their bytes. tbf
    /// counts dropped frames but not their bytes: those are the frames times the mean size of
    /// the frames handed to the shaper. None without a shaper.
    pub(super) fn shaper_drops(&self, ifindex: u32) -> Result<Option<(u64, u64)>> {
        Ok(self.shaper_stats(ifindex)?.map(|(shaped, st)| {
            let bytes = st.dropped * shaped.bytes / shaped.packets.max(1);
            (st.dropped, bytes)
        }))
    }

    /// What the VIF's shaper did: frames handed to it (counted by the TC program) and its
    /// qdisc's counters. None without a shaper.
    pub fn shaper_stats(
        &self,
        ifindex: u32,
    ) -> Result<Option<(Counter, super::shaper::ShaperStats)>> {
        let Some((shaper_ifx, _)) = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?
            .shaper
        else {
            return Ok(None);
        };
        let st = self
            .netns
            .run(|| super::shaper::stats(shaper_ifx))
            .map_err(DataplaneError::Shaper)?;
        Ok(Some((
            self.slot(ifindex, Direction::FromVm, SLOT_SHAPED)?,
            st,
        )))
    }

    /// One counter slot of a VIF as the kernel holds it, summed over CPUs.
    fn slot(&self, ifindex: u32, dir: Direction, slot: u32) -> Result<Counter> {
        let counter = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?
            .counter;
        let values = self
            .counters
            .get(&counter_index(counter, dir as u32, slot), 0)
            .map_err(map_err(MAP_COUNTERS))?;
        let mut sum = Counter::default();
        for v in values.iter() {
            sum.packets = sum.packets.wrapping_add(v.packets);
            sum.bytes = sum.bytes.wrapping_add(v.bytes);
        }
        Ok(sum)
    }
}
