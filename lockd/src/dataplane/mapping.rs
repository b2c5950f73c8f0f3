//! A shared mapping of an mmapable array map's values into this process.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
};

use aya::maps::MapData;

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
