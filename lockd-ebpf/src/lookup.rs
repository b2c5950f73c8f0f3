//! Address-set membership: the VIF's inline sets, its table regions and its tries.

use aya_ebpf::maps::lpm_trie::Key;
use lockd_common::{
    FLAG_HAS_A4, FLAG_HAS_S6, FLAG_INLINE_P4, FLAG_INLINE_P6, FLAG_INLINE4, FLAG_INLINE6,
    FLAG_PREFIX4, FLAG_PREFIX6, INLINE_P4, INLINE_P6, INLINE4, INLINE6, LPM_HEADER_BITS, Lpm4Data,
    Lpm6Data, MAX_PROBES, VifConfig, table_home4, table_home6,
};

use crate::maps::{PREFIX4, PREFIX6, TABLE4, TABLE6};

// The address fields read as words below lie aligned in their map values (a config is 8-aligned
// by its u64 field; a table slot 4-aligned by its u32 one), which LLVM cannot see through a byte
// array: it would load them byte by byte.
const _: () = {
    use core::mem::{align_of, offset_of};
    assert!(align_of::<VifConfig>() >= 8);
    assert!(offset_of!(VifConfig, mac).is_multiple_of(4));
    assert!(offset_of!(VifConfig, inline4).is_multiple_of(4));
    assert!(offset_of!(VifConfig, pfx4).is_multiple_of(4));
    assert!(offset_of!(VifConfig, inline6).is_multiple_of(8));
    assert!(offset_of!(VifConfig, pfx6).is_multiple_of(8));
    assert!(size_of::<lockd_common::Prefix6>().is_multiple_of(8));
    assert!(align_of::<lockd_common::Slot4>() >= 4 && offset_of!(lockd_common::Slot4, addr) == 0);
    assert!(align_of::<lockd_common::Slot6>() >= 4 && offset_of!(lockd_common::Slot6, addr) == 0);
};

/// A 4-aligned IPv4 field of a map value as one word.
///
/// SAFETY (for the caller): `a` lies 4-aligned (see the assertions above).
#[inline(always)]
unsafe fn word4(a: &[u8; 4]) -> u32 {
    // SAFETY: aligned, per the caller; four readable bytes.
    unsafe { core::ptr::read(a.as_ptr().cast::<u32>()) }
}

/// An 8-aligned IPv6 field of a config as two words, in memory order.
///
/// SAFETY (for the caller): `a` lies 8-aligned.
#[inline(always)]
unsafe fn words16(a: &[u8; 16]) -> (u64, u64) {
    let p = a.as_ptr().cast::<u64>();
    // SAFETY: aligned, per the caller; sixteen readable bytes.
    unsafe { (core::ptr::read(p), core::ptr::read(p.add(1))) }
}

/// A 4-aligned IPv6 field (a table slot's) as two words, from four 4-byte loads.
///
/// SAFETY (for the caller): `a` lies 4-aligned.
#[inline(always)]
unsafe fn words16_4(a: &[u8; 16]) -> (u64, u64) {
    let p = a.as_ptr().cast::<u32>();
    // SAFETY: aligned, per the caller; sixteen readable bytes.
    let w = unsafe { [p.read(), p.add(1).read(), p.add(2).read(), p.add(3).read()] };
    let (w0, w1, w2, w3) = (u64::from(w[0]), u64::from(w[1]), u64::from(w[2]), u64::from(w[3]));
    (w0 | w1 << 32, w2 | w3 << 32)
}

/// The guest MAC of a config as (its first four bytes, its last two), for [`crate::from_vm`]'s
/// comparisons.
#[inline(always)]
pub(crate) fn mac_words(cfg: &VifConfig) -> (u32, u16) {
    let p = cfg.mac.as_ptr();
    // SAFETY: `mac` lies 4-aligned in the 8-aligned config (asserted above), so its first four
    // bytes are one aligned word and its last two an aligned half-word.
    unsafe { (p.cast::<u32>().read(), p.add(4).cast::<u16>().read()) }
}

/// Membership in A4. Inline sets (exact and prefix) are checked in place, a larger exact set
/// by probing its table (inlined array lookups); only prefixes beyond the inline ones pay a
/// call and a trie lookup (each call and return is dear on a kernel with return thunks).
#[inline(always)]
pub(crate) fn allowed4(cfg: &VifConfig, ifindex: u32, addr: [u8; 4]) -> bool {
    if cfg.flags & FLAG_HAS_A4 == 0 {
        return false;
    }
    let a = u32::from_ne_bytes(addr);
    if cfg.flags & FLAG_INLINE4 != 0 {
        for i in 0..INLINE4 {
            // SAFETY: a config field (4-aligned).
            if i < cfg.n4 as usize && unsafe { word4(&cfg.inline4[i]) } == a {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE_P4 != 0 {
        for i in 0..INLINE_P4 {
            let p = &cfg.pfx4[i];
            // SAFETY: config fields (4-aligned).
            if i < cfg.np4 as usize && a & unsafe { word4(&p.mask) } == unsafe { word4(&p.net) } {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE4 == 0 && in_table4(cfg, addr) {
        return true;
    }
    cfg.flags & FLAG_PREFIX4 != 0 && in_trie4(cfg, ifindex, addr)
}

/// Linear probing from the address's home slot; an empty slot or [`MAX_PROBES`] slots end it
/// (userspace builds every table so that each entry lies within that many of its home).
#[inline(always)]
fn in_table4(cfg: &VifConfig, addr: [u8; 4]) -> bool {
    let a = u32::from_ne_bytes(addr);
    let mut i = table_home4(addr);
    for _ in 0..MAX_PROBES {
        let Some(s) = TABLE4.get(cfg.t4_base + (i & cfg.t4_mask)) else {
            return false;
        };
        if s.used == 0 {
            return false;
        }
        // SAFETY: a table slot's field (4-aligned).
        if unsafe { word4(&s.addr) } == a {
            return true;
        }
        i = i.wrapping_add(1);
    }
    false
}

/// The IPv4 prefixes that do not fit inline: one LPM trie lookup, out of line (its key is
/// stack the callers cannot spare).
#[inline(never)]
fn in_trie4(cfg: &VifConfig, ifindex: u32, addr: [u8; 4]) -> bool {
    let key = Key::new(
        LPM_HEADER_BITS + 32,
        Lpm4Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: cfg.generation.to_be_bytes(),
            addr,
        },
    );
    PREFIX4.get(&key).is_some()
}

#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&a[..8]);
    hi.copy_from_slice(&a[8..]);
    (u64::from_ne_bytes(lo), u64::from_ne_bytes(hi))
}

/// Membership in S6 (the derived link-local address is an ordinary exact entry); inline sets
/// in place, maps in a call, as for [`allowed4`].
#[inline(always)]
pub(crate) fn allowed6(cfg: &VifConfig, ifindex: u32, addr: [u8; 16]) -> bool {
    if cfg.flags & FLAG_HAS_S6 == 0 {
        return false;
    }
    let (lo, hi) = halves(&addr);
    if cfg.flags & FLAG_INLINE6 != 0 {
        for i in 0..INLINE6 {
            // SAFETY: a config field (8-aligned).
            if i < cfg.n6 as usize && unsafe { words16(&cfg.inline6[i]) } == (lo, hi) {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE_P6 != 0 {
        for i in 0..INLINE_P6 {
            let p = &cfg.pfx6[i];
            // SAFETY: config fields (8-aligned).
            let (mlo, mhi) = unsafe { words16(&p.mask) };
            if i < cfg.np6 as usize && (lo & mlo, hi & mhi) == unsafe { words16(&p.net) } {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE6 == 0 && in_table6(cfg, addr) {
        return true;
    }
    cfg.flags & FLAG_PREFIX6 != 0 && in_trie6(cfg, ifindex, addr)
}

/// As [`in_table4`]; out of line, as the IPv6 probe is long and NDP checks up to three
/// addresses.
#[inline(never)]
fn in_table6(cfg: &VifConfig, addr: [u8; 16]) -> bool {
    let a = halves(&addr);
    let mut i = table_home6(addr);
    for _ in 0..MAX_PROBES {
        let Some(s) = TABLE6.get(cfg.t6_base + (i & cfg.t6_mask)) else {
            return false;
        };
        if s.used == 0 {
            return false;
        }
        // SAFETY: a table slot's field (4-aligned).
        if unsafe { words16_4(&s.addr) } == a {
            return true;
        }
        i = i.wrapping_add(1);
    }
    false
}

/// As [`in_trie4`].
#[inline(never)]
fn in_trie6(cfg: &VifConfig, ifindex: u32, addr: [u8; 16]) -> bool {
    let key = Key::new(
        LPM_HEADER_BITS + 128,
        Lpm6Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: cfg.generation.to_be_bytes(),
            addr,
        },
    );
    PREFIX6.get(&key).is_some()
}
