//! Exact address sets too large to sit in the config: one open-addressing table per VIF,
//! family and generation, in a region of a big mmapped array.
//!
//! A region is a power-of-two run of slots handed out by a buddy allocator. A table is built in
//! memory with linear probing from each address's home slot (`table_home4/6`), grown until
//! every entry lies within `MAX_PROBES` slots of its home, and copied into a fresh region
//! before any config names it; the program probes with inlined array lookups. A replaced
//! generation's region returns to the allocator after a grace period, like its config copy.

use std::{collections::BTreeSet, ptr::NonNull};

use aya::maps::{Array, IterableMap as _, MapData};
use lockd_common::{MAX_PROBES, Slot4, Slot6, TABLE_SLOTS, table_home4, table_home6};

use super::{DataplaneError, Result, slots::Mapping};

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
    fn home(&self) -> u32;
    fn slot(self) -> Self::Slot;
    fn of_slot(s: &Self::Slot) -> Option<Self>;
}

impl TableAddr for [u8; 4] {
    type Slot = Slot4;
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

/// One family's slot array, mapped into this process, and its allocator.
pub(super) struct Table<A: TableAddr> {
    base: NonNull<A::Slot>,
    buddy: Buddy,
    _mapping: Mapping,
    _map: Array<MapData, A::Slot>,
}

// SAFETY: the mapping is written only by the owner (`&mut self`) and read by the kernel.
unsafe impl<A: TableAddr> Send for Table<A> {}
// SAFETY: `&self` methods only read.
unsafe impl<A: TableAddr> Sync for Table<A> {}

impl<A: TableAddr> Table<A> {
    pub(super) fn new(map: Array<MapData, A::Slot>) -> Result<Self> {
        let mapping = Mapping::new(map.map(), TABLE_SLOTS as usize * size_of::<A::Slot>())?;
        Ok(Table {
            base: mapping.ptr(),
            buddy: Buddy::new(),
            _mapping: mapping,
            _map: map,
        })
    }

    fn region(&self, r: Region) -> &[A::Slot] {
        // SAFETY: `Region` stays inside 0..TABLE_SLOTS (built by the allocator or checked by
        // `Region::of`); the mapping lives as long as self.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(r.base as usize), 1 << r.order) }
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
            // SAFETY: the region is ours alone (just allocated) and inside the mapping.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    self.base.as_ptr().add(r.base as usize),
                    1 << r.order,
                )
            };
            dst.copy_from_slice(&slots);
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
        self.buddy
            .reserve(r)
            .then(|| self.region(r).iter().filter_map(A::of_slot).collect())
    }
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
