//! `lockd monitor`'s events: one per dropped frame, written to a ring buffer only while a
//! monitor is attached (the daemon sets `MONITOR.enabled`), at most `MONITOR.cap` a second per
//! VIF. Drops over the cap, or with the ring full, are counted per VIF instead, so a flood of
//! spoofed frames costs a counter increment per frame, never a ring write.

#[cfg(target_arch = "bpf")]
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_ktime_get_ns,
    macros::map,
    maps::{Array, RingBuf},
};
use lockd_common::{
    Direction, DropEvent, EVENT_FRAME_BYTES, EVENTS_BYTES, MAX_VIFS, MonitorBudget, MonitorCtl,
    Reason,
};

use crate::frame::Frame;

#[map]
pub(crate) static MONITOR: Array<MonitorCtl> = Array::with_max_entries(1, 0);
#[map]
pub(crate) static MONITOR_BUDGET: Array<MonitorBudget> = Array::with_max_entries(MAX_VIFS, 0);
#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Reports a dropped frame, if a monitor is attached. With none, this is one array read.
#[inline(always)]
pub(crate) fn report<F: Frame>(
    ctx: &F,
    counter: u32,
    ifindex: u32,
    dir: Direction,
    reason: Reason,
) {
    let Some(ctl) = MONITOR.get_ptr(0) else {
        return;
    };
    // SAFETY: the single element of an array map, valid for this program run.
    let ctl = unsafe { core::ptr::read_volatile(ctl) };
    if ctl.enabled == 0 {
        return;
    }
    // Five arguments at most in a BPF call: direction and reason share one.
    emit(
        ctx,
        ctl.cap,
        counter,
        ifindex,
        (dir as u32) << 8 | reason as u32,
    );
}

#[inline(never)]
fn emit<F: Frame>(ctx: &F, cap: u32, counter: u32, ifindex: u32, dir_reason: u32) {
    let Some(b) = MONITOR_BUDGET.get_ptr_mut(counter) else {
        return;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let second = now / 1_000_000_000;
    // SAFETY: an element of an array map, valid for this program run. Other CPUs update it
    // too: the counts with atomic adds (BPF_XADD; the BPF target has no fetch_add), the window
    // and the cap test racily (a few events over the cap at worst, never a lost count).
    unsafe {
        if core::ptr::read_volatile(&(*b).second) != second {
            (*b).second = second;
            (*b).emitted = 0;
        }
        if core::ptr::read_volatile(&(*b).emitted) >= u64::from(cap) {
            add(&raw mut (*b).suppressed);
            return;
        }
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        // SAFETY: as above.
        unsafe { add(&raw mut (*b).suppressed) };
        return;
    };
    // SAFETY: as above.
    unsafe { add(&raw mut (*b).emitted) };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, ours until submitted.
    unsafe {
        (*ev).time_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).len = ctx.frame_len() as u32;
        (*ev).reason = dir_reason as u8;
        (*ev).direction = (dir_reason >> 8) as u8;
        (*ev)._pad = 0;
        (*ev).frame = [0; EVENT_FRAME_BYTES];
        (*ev).caplen = ctx.copy_head(&mut (*ev).frame);
    }
    entry.submit(0);
}

/// One atomic increment, its result unused (so a plain BPF_XADD).
///
/// # Safety
/// `p` points into a map value valid for this program run.
#[inline(always)]
#[cfg(target_arch = "bpf")]
unsafe fn add(p: *mut u64) {
    // SAFETY: the caller's.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1);
    }
}

/// One atomic increment, its result unused (so a plain BPF_XADD).
///
/// # Safety
/// `p` points into a map value valid for this program run.
#[inline(always)]
#[cfg(not(target_arch = "bpf"))]
unsafe fn add(p: *mut u64) {
    // SAFETY: the caller's (an aligned u64 of a map value, shared only through atomics).
    unsafe { core::sync::atomic::AtomicU64::from_ptr(p) }
        .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
}
