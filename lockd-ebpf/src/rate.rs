//! The from-VM rate limiter: GCRA (a token bucket in time units) on one shared state per VIF.
//!
//! `tat` is the theoretical arrival time of the next byte at the configured rate. A frame
//! conforms if `tat` is no more than the bucket depth ahead of now; it then moves `tat` by its
//! cost. The update is a compare-and-swap, so two CPUs sending on one VIF share one budget:
//! a lost race retries with the fresh value instead of letting both frames spend the same
//! tokens (which a plain per-CPU or read-modify-write bucket would, up to 2× the rate).

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use lockd_common::{RATE_SHIFT, VifConfig};

use crate::maps::RATE;

/// Compare-and-swap attempts before a frame is refused; each loss means another CPU just
/// spent budget, so giving up errs on the side of the limit.
const CAS_TRIES: usize = 4;

/// Is there budget for a frame of `len` bytes? Always true without a limit.
#[inline(always)]
pub fn admit(cfg: &VifConfig, len: u64) -> bool {
    if cfg.rate_ns_per_byte_q16 == 0 {
        return true;
    }
    let Some(state) = RATE.get_ptr_mut(cfg.counter) else {
        return false;
    };
    let cost = (len * cfg.rate_ns_per_byte_q16) >> RATE_SHIFT;
    // bpf_ktime_get_ns: monotonic, ns resolution. The coarse clock is cheaper but ticks in
    // jiffies, which would let whole ticks' worth of frames through at once.
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    for _ in 0..CAS_TRIES {
        // An aligned 8-byte load is single-copy atomic on BPF; LLVM's BPF backend cannot
        // select an `atomic` load, so it is written as a volatile one. A stale value only
        // makes the swap below fail and retry.
        // SAFETY: `state` points into the map element, which lives as long as the map.
        let old = unsafe { core::ptr::read_volatile(&raw const (*state).tat_ns) };
        let base = if old > now { old } else { now };
        if base - now > cfg.burst_ns {
            return false;
        }
        // The BPF target has no stable compare_exchange (`atomic-cas: false` in its spec,
        // for old CPUs); the intrinsic lowers to BPF_CMPXCHG (cpu v3, kernel 5.12+).
        // SAFETY: `state` points into the map element; every access to it is atomic.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*state).tat_ns,
                old,
                base + cost,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}
