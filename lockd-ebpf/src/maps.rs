//! Every map of the object, and the two reads every program makes of them: the config in force
//! for a VIF, and its counters.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray},
};
use lockd_common::{
    CONFIG_COPIES, Counter, DIRECTIONS, Direction, Lpm4Data, Lpm6Data, MAX_PREFIX_ENTRIES,
    MAX_VIFS, POSITIONS, REASON_SLOTS, Reason, Slot4, Slot6, TABLE_SLOTS, VifConfig, counter_index,
    position,
};

/// `BPF_F_NO_PREALLOC`: updates allocate a fresh element and free the old one after an RCU
/// grace period, so a program holding a pointer to a config never sees it rewritten in place.
const NO_PREALLOC: u32 = 1;

/// `BPF_F_MMAPABLE`: userspace flips a slot with one atomic store through a shared mapping
/// (a map update may copy bytewise).
const MMAPABLE: u32 = 1 << 10;

#[map]
pub(crate) static VIF_CONFIG: HashMap<u32, VifConfig> =
    HashMap::with_max_entries(MAX_VIFS, NO_PREALLOC);
#[map]
pub(crate) static VIF_SLOTS: Array<u64> = Array::with_max_entries(POSITIONS, MMAPABLE);
#[map]
pub(crate) static CONFIGS: Array<VifConfig> = Array::with_max_entries(CONFIG_COPIES, 0);
#[map]
pub(crate) static TABLE4: Array<Slot4> = Array::with_max_entries(TABLE_SLOTS, MMAPABLE);
#[map]
pub(crate) static TABLE6: Array<Slot6> = Array::with_max_entries(TABLE_SLOTS, MMAPABLE);
#[map]
pub(crate) static PREFIX4: LpmTrie<Lpm4Data, u8> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
pub(crate) static PREFIX6: LpmTrie<Lpm6Data, u8> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
pub(crate) static COUNTERS_V2: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(MAX_VIFS * DIRECTIONS * REASON_SLOTS, 0);

/// The policy in force for `ifindex`, or None if lockd does not manage it. Neither place is
/// ever written while a packet can read it (see `lockd_common::VifConfig`), so every field
/// read through the reference belongs to one policy.
#[inline(always)]
pub(crate) fn config(ifindex: u32) -> Option<&'static VifConfig> {
    if let Some(slot) = VIF_SLOTS.get_ptr(position(ifindex)) {
        // An aligned 8-byte load is single-copy atomic; userspace stores the slot likewise.
        // SAFETY: points into the map element, valid for this program run.
        let slot = unsafe { core::ptr::read_volatile(slot) };
        if slot >> 32 == u64::from(ifindex) {
            // SAFETY: a CONFIGS element, valid for this program run (RCU read side).
            return CONFIGS.get_ptr(slot as u32).map(|c| unsafe { &*c });
        }
    }
    // SAFETY: a NO_PREALLOC element: replaced, never rewritten; valid for this RCU section.
    VIF_CONFIG.get_ptr(ifindex).map(|c| unsafe { &*c })
}

#[inline(always)]
pub(crate) fn count(counter: u32, dir: Direction, reason: Reason, bytes: u64) {
    count_slot(counter, dir, reason as u32, bytes);
}

/// Counts one frame of `bytes` in counter slot `slot` (a reason, or a slot past them).
#[inline(always)]
pub(crate) fn count_slot(counter: u32, dir: Direction, slot: u32, bytes: u64) {
    let idx = counter_index(counter, dir as u32, slot);
    if let Some(c) = COUNTERS_V2.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Moves one frame of `bytes` from reason `from` to reason `to` (a later program overruling an
/// earlier one's verdict on the same CPU).
#[inline(always)]
pub(crate) fn recount(counter: u32, dir: Direction, from: Reason, to: Reason, bytes: u64) {
    let idx = counter_index(counter, dir as u32, from as u32);
    if let Some(c) = COUNTERS_V2.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe {
            (*c).packets = (*c).packets.wrapping_sub(1);
            (*c).bytes = (*c).bytes.wrapping_sub(bytes);
        }
    }
    count(counter, dir, to, bytes);
}
