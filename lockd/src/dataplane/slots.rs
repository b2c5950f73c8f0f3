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
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, IterableMap as _, MapData};
use lockd_common::{MAP_VIF_SLOTS, POSITIONS};

use super::{DataplaneError, Result};

/// A shared mapping of an mmapable array map, unmapped on drop.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: plain shared memory; the users (`Slots`, `Table`) decide how it is accessed.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the map's values from byte `offset` (page-aligned; the kernel
    /// refuses a range outside the values).
    pub(super) fn new(
        map: &MapData,
        name: &'static str,
        offset: usize,
        len: usize,
    ) -> Result<Self> {
        // SAFETY: a fresh shared mapping of an mmapable array map's values (the callers' value
        // sizes are multiples of 8, so values are contiguous); checked for failure below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap {
                name,
                source: io::Error::last_os_error(),
            });
        }
        let ptr = NonNull::new(ptr.cast()).expect("mmap returned a non-null address");
        Ok(Mapping { ptr, len })
    }

    pub(super) fn ptr<T>(&self) -> NonNull<T> {
        self.ptr.cast()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping made in `new`, not used after this.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The slot array, mapped into this process.
pub(super) struct Slots {
    mapping: Mapping,
    /// Keeps the map alive as long as the mapping.
    _map: Array<MapData, u64>,
}

impl Slots {
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
        assert!(pos < POSITIONS, "slot position out of range");
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

/// Splits a slot value into (ifindex, copy); None for an empty slot.
pub(super) fn split(v: u64) -> Option<(u32, u32)> {
    (v != 0).then_some(((v >> 32) as u32, v as u32))
}
