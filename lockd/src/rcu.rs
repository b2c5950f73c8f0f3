//! An RCU grace-period barrier callable from userspace.
//!
//! The kernel runs XDP programs inside RCU read-side sections. Updating an element of a
//! map-in-map (`BPF_MAP_TYPE_ARRAY_OF_MAPS`) makes the `bpf(2)` call wait in `synchronize_rcu()`
//! before returning (`maybe_wait_bpf_programs()` in kernel/bpf/syscall.c, since 5.0; the kernel's
//! own selftests use it the same way). After [`RcuBarrier::wait`] returns, no program run that
//! started before the call is still running, so entries only such a run could read may go.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    /// Rest of `union bpf_attr`'s map-create arm, zeroed.
    _rest: [u64; 12],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// One raw bpf(2) call. aya lacks the map this needs: a standalone `BPF_MAP_TYPE_ARRAY_OF_MAPS`
/// (0.14 creates one only from an ELF object; `MapData::create_with_inner_map_fd` is
/// crate-private), and so its update too.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: attr is a live, correctly laid out bpf_attr prefix of the given size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn create_map(map_type: u32, inner_map_fd: u32) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        inner_map_fd,
        ..Default::default()
    };
    let fd = bpf(BPF_MAP_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Two tiny maps whose only purpose is to make the kernel wait for a grace period.
#[derive(Debug)]
pub struct RcuBarrier {
    inner: OwnedFd,
    outer: OwnedFd,
}

impl RcuBarrier {
    pub fn new() -> io::Result<Self> {
        let inner = create_map(BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create_map(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
        Ok(Self { inner, outer })
    }

    /// Returns after an RCU grace period: every XDP/TC program run that began before is done.
    pub fn wait(&self) -> io::Result<()> {
        let key = 0u32;
        let value = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}
