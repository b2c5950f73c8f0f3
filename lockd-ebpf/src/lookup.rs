//! Address-set membership: the VIF's inline sets, its table regions and its tries.

use aya_ebpf::maps::lpm_trie::Key;
use lockd_common::{
    FLAG_HAS_A4, FLAG_HAS_S6, FLAG_INLINE_P4, FLAG_INLINE_P6, FLAG_INLINE4, FLAG_INLINE6,
    FLAG_PREFIX4, FLAG_PREFIX6, INLINE_P4, INLINE_P6, INLINE4, INLINE6, LPM_HEADER_BITS, Lpm4Data,
    Lpm6Data, MAX_PROBES, VifConfig, table_home4, table_home6,
};

use crate::maps::{PREFIX4, PREFIX6, TABLE4, TABLE6};

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
            if i < cfg.n4 as usize && u32::from_ne_bytes(cfg.inline4[i]) == a {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE_P4 != 0 {
        for i in 0..INLINE_P4 {
            let p = &cfg.pfx4[i];
            if i < cfg.np4 as usize && a & u32::from_ne_bytes(p.mask) == u32::from_ne_bytes(p.net) {
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
        if u32::from_ne_bytes(s.addr) == a {
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
            if i < cfg.n6 as usize && halves(&cfg.inline6[i]) == (lo, hi) {
                return true;
            }
        }
    }
    if cfg.flags & FLAG_INLINE_P6 != 0 {
        for i in 0..INLINE_P6 {
            let p = &cfg.pfx6[i];
            let (mlo, mhi) = halves(&p.mask);
            if i < cfg.np6 as usize && (lo & mlo, hi & mhi) == halves(&p.net) {
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
        if halves(&s.addr) == a {
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
