//! Positions: where the programs find a VIF's config without a hash lookup.
//!
//! The position array (the `VIF_SLOTS` map; its pinned name is kept) is indexed by
//! `ifindex % POSITIONS`; each position holds `ifindex << 32 | copy` (or 0), naming the
//! `CONFIGS` copy in force for that VIF. An update writes the new config into a free copy,
//! then flips the position to it with one atomic store through a shared mapping of the map (a
//! map update may copy bytewise, and a packet must see the old value or the new one, never a
//! mix). The
//! replaced copy is retired and becomes free again after an RCU grace period, when no packet
//! can still be reading it. A VIF whose position another VIF holds is read from the
//! `VIF_CONFIG` hash instead, which also keeps every VIF's config for adoption.

use std::sync::atomic::{AtomicU64, Ordering};

use aya::maps::{Array, IterableMap as _, MapData};
use lockd_common::{MAP_VIF_SLOTS, POSITIONS};

use super::{Result, mapping::Mapping};

/// The position array, mapped into this process.
pub(super) struct Positions {
    mapping: Mapping,
    /// Keeps the map alive as long as the mapping.
    _map: Array<MapData, u64>,
}

impl Positions {
    pub(super) fn new(map: Array<MapData, u64>) -> Result<Self> {
        let mapping = Mapping::new(
            map.map(),
            MAP_VIF_SLOTS,
            0,
            POSITIONS as usize * size_of::<u64>(),
        )?;
        Ok(Self { mapping, _map: map })
    }

    fn at(&self, pos: u32) -> &AtomicU64 {
        assert!(pos < POSITIONS, "position out of range");
        // SAFETY: in bounds (checked), 8-byte aligned (page-aligned base), valid while the
        // mapping lives; every access is atomic.
        unsafe { self.mapping.ptr::<AtomicU64>().add(pos as usize).as_ref() }
    }

    /// The value at `pos`: `ifindex << 32 | copy`, or 0.
    pub(super) fn get(&self, pos: u32) -> u64 {
        self.at(pos).load(Ordering::Acquire)
    }

    /// Points `pos` at `copy` for `ifindex` (`None`: empties it). Release: the copy's contents,
    /// written before, are visible to whoever sees the new value.
    pub(super) fn set(&self, pos: u32, entry: Option<(u32, u32)>) {
        let v = entry.map_or(0, |(ifindex, copy)| {
            u64::from(ifindex) << 32 | u64::from(copy)
        });
        self.at(pos).store(v, Ordering::Release);
    }
}

/// Splits a position's value into (ifindex, copy); None for an empty position.
pub(super) fn split(v: u64) -> Option<(u32, u32)> {
    (v != 0).then_some(((v >> 32) as u32, v as u32))
}
