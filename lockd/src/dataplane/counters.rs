//! Per-VIF counters: packets and bytes per direction and reason, per CPU in the kernel.

use aya::maps::PerCpuValues;
use lockd_common::{Counter, Direction, MAP_COUNTERS, MAP_RATE, RateState, Reason, counter_index};

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
    /// Zeroes the counters and rate-limiter state at `counter` before a new VIF uses them.
    pub(super) fn zero_counters(&mut self, counter: u32) -> Result<()> {
        self.rate
            .set(counter, RateState::default(), 0)
            .map_err(map_err(MAP_RATE))?;
        for dir in 0..2 {
            for r in 0..Reason::COUNT as u32 {
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

    /// One counter of a VIF, summed over CPUs.
    pub fn counter(&self, ifindex: u32, dir: Direction, reason: Reason) -> Result<Counter> {
        let counter = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?
            .counter;
        let values = self
            .counters
            .get(&counter_index(counter, dir as u32, reason as u32), 0)
            .map_err(map_err(MAP_COUNTERS))?;
        let mut sum = Counter::default();
        for v in values.iter() {
            sum.packets = sum.packets.wrapping_add(v.packets);
            sum.bytes = sum.bytes.wrapping_add(v.bytes);
        }
        Ok(sum)
    }
}
