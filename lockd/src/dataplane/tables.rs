//! Exact address sets too large to sit in the config: one open-addressing table per VIF,
//! family and generation, in a region of a big mmapped array.
//!
//! A region is a power-of-two run of slots handed out by a buddy allocator. A table is built in
//! memory with linear probing from each address's home slot (`table_home4/6`), grown until
//! every entry lies within `MAX_PROBES` slots of its home, and copied into a fresh region
//! before any config names it; the program probes with inlined array lookups. A replaced
//! generation's region returns to the allocator after a grace period, like its config copy.

use std::collections::BTreeSet;

use aya::maps::{Array, IterableMap as _, MapData};
use lockd_common::{
    MAP_TABLE4, MAP_TABLE6, MAX_PROBES, Slot4, Slot6, TABLE_SLOTS, table_home4, table_home6,
};

use super::{DataplaneError, Result, mapping::Mapping};

/// A run of `1 << order` slots starting at `base`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    pub(super) base: u32,
    pub(super) order: u8,
}

impl Region {
    pub(super) fn mask(self) -> u32 {
        (1u32 << self.order) - 1
    }

    /// The region a config's `base` and `mask` name.
    pub(super) fn of(base: u32, mask: u32) -> Option<Region> {
        let size = mask.checked_add(1)?;
        (size.is_power_of_two()
            && base.is_multiple_of(size)
            && base.checked_add(size)? <= TABLE_SLOTS)
            .then_some(Region {
                base,
                order: size.trailing_zeros() as u8,
            })
    }
}

const TOP: u8 = TABLE_SLOTS.trailing_zeros() as u8;
/// Smallest region: 8 slots.
const MIN_ORDER: u8 = 3;

/// Buddy allocator over `0..TABLE_SLOTS`.
#[derive(Debug)]
pub(super) struct Buddy {
    free: Vec<BTreeSet<u32>>,
}

impl Buddy {
    pub(super) fn new() -> Self {
        let mut free = vec![BTreeSet::new(); usize::from(TOP) + 1];
        free[usize::from(TOP)].insert(0);
        Buddy { free }
    }

    fn alloc(&mut self, order: u8) -> Option<Region> {
        let from = (order..=TOP).find(|o| !self.free[usize::from(*o)].is_empty())?;
        let base = self.free[usize::from(from)].pop_first()?;
        for o in (order..from).rev() {
            self.free[usize::from(o)].insert(base + (1 << o));
        }
        Some(Region { base, order })
    }

    pub(super) fn release(&mut self, r: Region) {
        let (mut base, mut o) = (r.base, r.order);
        while o < TOP && self.free[usize::from(o)].remove(&(base ^ (1 << o))) {
            base &= !(1 << o);
            o += 1;
        }
        self.free[usize::from(o)].insert(base);
    }

    /// Marks `r` taken (adoption); false if any of it is not free.
    pub(super) fn reserve(&mut self, r: Region) -> bool {
        for o in r.order..=TOP {
            let block = r.base & !((1u32 << o) - 1);
            if self.free[usize::from(o)].remove(&block) {
                let mut cur = block;
                for half in (r.order..o).rev() {
                    let size = 1 << half;
                    if r.base >= cur + size {
                        self.free[usize::from(half)].insert(cur);
                        cur += size;
                    } else {
                        self.free[usize::from(half)].insert(cur + size);
                    }
                }
                return true;
            }
        }
        false
    }
}

/// An address that can live in a table.
pub(super) trait TableAddr: Copy + PartialEq {
    type Slot: Copy + Default + aya::Pod;
    /// The map holding this family's tables.
    const MAP: &'static str;
    fn home(&self) -> u32;
    fn slot(self) -> Self::Slot;
    fn of_slot(s: &Self::Slot) -> Option<Self>;
}

impl TableAddr for [u8; 4] {
    type Slot = Slot4;
    const MAP: &'static str = MAP_TABLE4;
    fn home(&self) -> u32 {
        table_home4(*self)
    }
    fn slot(self) -> Slot4 {
        Slot4 {
            addr: self,
            used: 1,
        }
    }
    fn of_slot(s: &Slot4) -> Option<Self> {
        (s.used != 0).then_some(s.addr)
    }
}

impl TableAddr for [u8; 16] {
    type Slot = Slot6;
    const MAP: &'static str = MAP_TABLE6;
    fn home(&self) -> u32 {
        table_home6(*self)
    }
    fn slot(self) -> Slot6 {
        Slot6 {
            addr: self,
            used: 1,
            _pad: 0,
        }
    }
    fn of_slot(s: &Slot6) -> Option<Self> {
        (s.used != 0).then_some(s.addr)
    }
}

/// One family's slot array and its allocator. A region is mapped into this process only
/// while it is written or read, so the daemon does not carry the whole array in its memory.
pub(super) struct Table<A: TableAddr> {
    buddy: Buddy,
    map: Array<MapData, A::Slot>,
}

impl<A: TableAddr> Table<A> {
    pub(super) fn new(map: Array<MapData, A::Slot>) -> Result<Self> {
        Ok(Table {
            buddy: Buddy::new(),
            map,
        })
    }

    /// Runs `f` on the slots of `r`, mapped for the call.
    fn with_region<T>(&self, r: Region, f: impl FnOnce(&mut [A::Slot]) -> T) -> Result<T> {
        let page = page_size();
        let start = r.base as usize * size_of::<A::Slot>();
        let len = (1usize << r.order) * size_of::<A::Slot>();
        let first = start / page * page;
        let span = (start + len).div_ceil(page) * page - first;
        let mapping = Mapping::new(self.map.map(), A::MAP, first, span)?;
        // SAFETY: `r` lies inside the array (built by the allocator or checked by
        // `Region::of`), so [start, start + len) lies inside the mapped pages; slot sizes
        // are multiples of 8 and pages are aligned, so the slots are aligned. The mapping
        // lives until the end of this call, and no one else writes this region: a region
        // being built is ours alone, and one in force is only read.
        let slots = unsafe {
            std::slice::from_raw_parts_mut(
                mapping
                    .ptr::<u8>()
                    .as_ptr()
                    .add(start - first)
                    .cast::<A::Slot>(),
                1 << r.order,
            )
        };
        Ok(f(slots))
    }

    /// Builds a table of `addrs` in a fresh region. No packet reads the region until a config
    /// names it, and the config is published after this returns.
    pub(super) fn build(&mut self, addrs: &[A]) -> Result<Region> {
        let need = (2 * addrs.len()).next_power_of_two().trailing_zeros() as u8;
        for order in need.max(MIN_ORDER)..=TOP {
            let Some(slots) = layout(addrs, order) else {
                continue;
            };
            let r = self.buddy.alloc(order).ok_or(DataplaneError::TableFull)?;
            if let Err(e) = self.with_region(r, |dst| dst.copy_from_slice(&slots)) {
                self.buddy.release(r);
                return Err(e);
            }
            return Ok(r);
        }
        Err(DataplaneError::TableFull)
    }

    /// Gives back a region no packet can still read.
    pub(super) fn release(&mut self, r: Region) {
        self.buddy.release(r);
    }

    /// Takes over a region a config in force names (adoption) and returns its addresses;
    /// None if the region overlaps another.
    pub(super) fn adopt(&mut self, r: Region) -> Option<Vec<A>> {
        if !self.buddy.reserve(r) {
            return None;
        }
        let addrs = self
            .with_region(r, |slots| slots.iter().filter_map(A::of_slot).collect())
            .ok();
        if addrs.is_none() {
            self.buddy.release(r);
        }
        addrs
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// `addrs` placed by linear probing in `1 << order` slots, or None if some entry would land
/// more than `MAX_PROBES - 1` slots past its home.
fn layout<A: TableAddr>(addrs: &[A], order: u8) -> Option<Vec<A::Slot>> {
    let mask = (1u32 << order) - 1;
    let mut slots = vec![A::Slot::default(); 1 << order];
    let mut used = vec![false; 1 << order];
    for a in addrs {
        let home = a.home();
        let free = (0..MAX_PROBES)
            .map(|k| (home.wrapping_add(k) & mask) as usize)
            .find(|i| !used[*i])?;
        used[free] = true;
        slots[free] = a.slot();
    }
    Some(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buddy_splits_merges_and_reserves() {
        let mut b = Buddy::new();
        let x = b.alloc(3).unwrap();
        let y = b.alloc(3).unwrap();
        assert_ne!(x.base, y.base);
        b.release(x);
        b.release(y);
        // Everything merged back: the whole array is one block again.
        assert_eq!(b.alloc(TOP).map(|r| r.base), Some(0));
        let mut b = Buddy::new();
        let r = Region::of(1 << 10, 255).unwrap();
        assert!(b.reserve(r));
        assert!(!b.reserve(r), "reserved twice");
        for _ in 0..(TABLE_SLOTS >> 8) - 1 {
            let got = b.alloc(8).unwrap();
            assert_ne!(got.base, r.base);
        }
        assert!(b.alloc(3).is_none());
    }

    /// The largest set a VIF may have fits at a load of one half (a quarter of the array).
    #[test]
    fn the_largest_set_fits_at_half_load() {
        let addrs: Vec<[u8; 4]> = (0..65_535u32)
            .map(|i| (0x0a10_0000 + i).to_be_bytes())
            .collect();
        assert!(layout(&addrs, 17).is_some());
        let addrs: Vec<[u8; 16]> = (0..65_535u128)
            .map(|i| (0x2001_0db8_u128 << 96 | i).to_be_bytes())
            .collect();
        assert!(layout(&addrs, 17).is_some());
    }

    #[test]
    fn layout_keeps_every_entry_near_its_home() {
        let addrs: Vec<[u8; 4]> = (0..1000u32)
            .map(|i| (0x0a00_0000 + i).to_be_bytes())
            .collect();
        let order = (2 * addrs.len()).next_power_of_two().trailing_zeros() as u8;
        let slots = (order..=TOP).find_map(|o| layout(&addrs, o)).unwrap();
        let mask = slots.len() as u32 - 1;
        for a in &addrs {
            let home = a.home();
            assert!(
                (0..MAX_PROBES).any(|k| slots[(home.wrapping_add(k) & mask) as usize].addr == *a)
            );
        }
        assert_eq!(slots.iter().filter(|s| s.used != 0).count(), addrs.len());
    }
}
