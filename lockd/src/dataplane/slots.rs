//! Where the programs find a VIF's config without a hash lookup.
//!
//! `VIF_SLOTS[ifindex % POSITIONS]` holds `ifindex << 32 | copy` (or 0), naming the `CONFIGS`
//! element in force for that VIF. An update writes the new config into a free copy, then flips
//! the slot to it with one atomic store through a shared mapping of the map (a map update
//! may copy bytewise, and a packet must see the old slot or the new one, never a mix). The
//! replaced copy is retired and becomes free again after an RCU grace period, when no packet
//! can still be reading it. A VIF whose position another VIF holds is read from the
//! `VIF_CONFIG` hash instead, which also keeps every VIF's config for adoption.

use std::{
    io,
    os::fd::AsFd as _,
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};
use lockd_common::POSITIONS;

use super::{DataplaneError, Result};

/// The slot array, mapped into this process.
pub(super) struct Slots {
    base: NonNull<AtomicU64>,
    len: usize,
    /// Keeps the map (and so the mapping's backing) alive.
    _map: Array<MapData, u64>,
}

// SAFETY: the mapping is shared memory accessed only through atomics; the pointer stays valid
// until Drop.
unsafe impl Send for Slots {}
// SAFETY: as above; every access is an atomic load or store.
unsafe impl Sync for Slots {}

impl Slots {
    pub(super) fn new(map: Array<MapData, u64>) -> Result<Self> {
        let len = POSITIONS as usize * size_of::<u64>();
        let fd = map.map().fd().as_fd();
        use std::os::fd::AsRawFd as _;
        // SAFETY: a fresh shared mapping of an mmapable array map of exactly this size (u64
        // values have an 8-byte stride); checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap(io::Error::last_os_error()));
        }
        Ok(Self {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null address"),
            len: POSITIONS as usize,
            _map: map,
        })
    }

    fn at(&self, pos: u32) -> &AtomicU64 {
        assert!((pos as usize) < self.len, "slot position out of range");
        // SAFETY: in bounds (checked), 8-byte aligned (page-aligned base), valid until Drop.
        unsafe { self.base.add(pos as usize).as_ref() }
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

impl Drop for Slots {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, not used after this.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.len * size_of::<u64>());
        }
    }
}

/// Splits a slot value into (ifindex, copy); None for an empty slot.
pub(super) fn split(v: u64) -> Option<(u32, u32)> {
    (v != 0).then_some(((v >> 32) as u32, v as u32))
}
