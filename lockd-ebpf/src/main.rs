//! lockd's kernel programs.
//!
//! `vif_ingress` judges frames the VM transmits (XDP on the VIF netdev). Its checks run in the
//! same order as `lockd_common::model`, which the differential tests hold it to, frame by frame.
#![no_std]
#![no_main]
// The rate limiter's compare-and-swap (see rate.rs).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics for BPF_CMPXCHG")]

mod rate;
mod to_vm;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    programs::XdpContext,
};
use lockd_common::{
    CONFIG_COPIES, Counter, DIRECTIONS, Direction, FLAG_HAS_A4, FLAG_HAS_S6, FLAG_INLINE_P4,
    FLAG_INLINE_P6, FLAG_INLINE4, FLAG_INLINE6, FLAG_PREFIX4, FLAG_PREFIX6, INLINE_P4, INLINE_P6,
    INLINE4, INLINE6, LPM_HEADER_BITS, Lpm4Data, Lpm6Data, MAX_EXT_HEADERS, MAX_ND_OPTIONS,
    MAX_PREFIX_ENTRIES, MAX_PROBES, MAX_VIFS, MODE_DISABLED, MODE_UNLOCKED, POSITIONS,
    REASON_SLOTS, RateState, Reason, Slot4, Slot6, TABLE_SLOTS, VifConfig, counter_index, position,
    table_home4, table_home6,
};

/// `BPF_F_NO_PREALLOC`: updates allocate a fresh element and free the old one after an RCU
/// grace period, so a program holding a pointer to a config never sees it rewritten in place.
const NO_PREALLOC: u32 = 1;

/// `BPF_F_MMAPABLE`: userspace flips a slot with one atomic store through a shared mapping
/// (a map update may copy bytewise).
const MMAPABLE: u32 = 1 << 10;

#[map]
static VIF_CONFIG: HashMap<u32, VifConfig> = HashMap::with_max_entries(MAX_VIFS, NO_PREALLOC);
#[map]
static VIF_SLOTS: Array<u64> = Array::with_max_entries(POSITIONS, MMAPABLE);
#[map]
static CONFIGS: Array<VifConfig> = Array::with_max_entries(CONFIG_COPIES, 0);
#[map]
static TABLE4: Array<Slot4> = Array::with_max_entries(TABLE_SLOTS, MMAPABLE);
#[map]
static TABLE6: Array<Slot6> = Array::with_max_entries(TABLE_SLOTS, MMAPABLE);
#[map]
static PREFIX4: LpmTrie<Lpm4Data, u8> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static PREFIX6: LpmTrie<Lpm6Data, u8> = LpmTrie::with_max_entries(MAX_PREFIX_ENTRIES, 0);
#[map]
static COUNTERS: PerCpuArray<Counter> =
    PerCpuArray::with_max_entries(MAX_VIFS * DIRECTIONS * REASON_SLOTS, 0);
#[map]
pub(crate) static RATE: Array<RateState> = Array::with_max_entries(MAX_VIFS, 0);

const ETH_HLEN: usize = 14;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_FRAGMENT: u8 = 44;
/// Largest offset the parser reads at; keeps every variable offset bounded for the verifier.
const MAX_OFF: usize = 4096;

/// The from-VM program. Frames on an interface lockd does not manage pass untouched; a managed
/// VIF's frame is counted under exactly one reason and passed only for `Reason::Pass`.
#[xdp]
pub fn vif_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(cfg) = config(ifindex) else {
        return XDP_PASS;
    };
    let mut reason = match cfg.mode {
        MODE_UNLOCKED => Reason::Pass,
        MODE_DISABLED => Reason::Disabled,
        // MODE_LOCKED and anything unknown: fail closed.
        _ => match locked(&ctx, cfg, ifindex) {
            Ok(()) => Reason::Pass,
            Err(r) => r,
        },
    };
    let len = (ctx.data_end() - ctx.data()) as u64;
    // The limiter only spends budget on frames the policy lets through.
    if matches!(reason, Reason::Pass) && !rate::admit(cfg, len) {
        reason = Reason::Ratelimit;
    }
    count(cfg.slot, Direction::FromVm, reason, len);
    if matches!(reason, Reason::Pass) {
        XDP_PASS
    } else {
        XDP_DROP
    }
}

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
pub(crate) fn count(slot: u32, dir: Direction, reason: Reason, bytes: u64) {
    let idx = counter_index(slot, dir as u32, reason as u32);
    if let Some(c) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no other writer on this CPU while we run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
        }
    }
}

/// Bounds-checked read of `N` bytes at `off` from the start of the frame.
#[inline(always)]
fn bytes<const N: usize>(ctx: &XdpContext, off: usize) -> Result<[u8; N], Reason> {
    if off > MAX_OFF {
        return Err(Reason::Malformed);
    }
    let start = ctx.data() + off;
    // A volatile load of data_end: otherwise LLVM proves this check redundant from the
    // parser's own length checks and drops it, and the verifier (which cannot follow that
    // proof) rejects the access.
    // SAFETY: ctx.ctx is the program's context pointer.
    let data_end = unsafe { core::ptr::read_volatile(&(*ctx.ctx).data_end) } as usize;
    if start + N > data_end {
        return Err(Reason::Malformed);
    }
    // SAFETY: [start, start + N) lies inside the packet, checked just above.
    Ok(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Result<u16, Reason> {
    Ok(u16::from_be_bytes(bytes::<2>(ctx, off)?))
}

#[inline(always)]
fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])
        == 0
}

#[inline(always)]
fn is_zero16(a: &[u8; 16]) -> bool {
    let mut acc = 0u8;
    for b in a {
        acc |= *b;
    }
    acc == 0
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

#[inline(always)]
fn locked(ctx: &XdpContext, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let src = bytes::<6>(ctx, 6)?;
    let ethertype = be16(ctx, 12)?;
    if !mac_eq(&src, &cfg.mac) {
        return Err(Reason::MacSpoof);
    }
    match ethertype {
        ETH_P_ARP => arp(ctx, cfg, ifindex),
        ETH_P_IP => ipv4(ctx, cfg, ifindex),
        ETH_P_IPV6 => ipv6(ctx, cfg, ifindex),
        _ => Err(Reason::BadEthertype),
    }
}

#[inline(always)]
fn arp(ctx: &XdpContext, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let h = bytes::<8>(ctx, ETH_HLEN)?;
    let htype = u16::from_be_bytes([h[0], h[1]]);
    let ptype = u16::from_be_bytes([h[2], h[3]]);
    let op = u16::from_be_bytes([h[6], h[7]]);
    if htype != 1 || ptype != ETH_P_IP || h[4] != 6 || h[5] != 4 || !(op == 1 || op == 2) {
        return Err(Reason::ArpSpoof);
    }
    // sender MAC, sender IP, target MAC, target IP: the whole body must be present.
    let body = bytes::<20>(ctx, ETH_HLEN + 8)?;
    let sha = [body[0], body[1], body[2], body[3], body[4], body[5]];
    let spa = [body[6], body[7], body[8], body[9]];
    if !mac_eq(&sha, &cfg.mac) {
        return Err(Reason::ArpSpoof);
    }
    // RFC 5227 probe: sender IP 0.0.0.0 in a request, only where IPv4 is allowed at all.
    let probe = spa == [0; 4] && op == 1 && cfg.flags & FLAG_HAS_A4 != 0;
    if probe || allowed4(cfg, ifindex, spa) {
        Ok(())
    } else {
        Err(Reason::ArpSpoof)
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let l3 = ETH_HLEN;
    let h = bytes::<20>(ctx, l3)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([h[2], h[3]]) as usize;
    let len = ctx.data_end() - ctx.data();
    if ihl < 20 || tot < ihl || l3 + tot > len {
        return Err(Reason::Malformed);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let more_frags = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let src = [h[12], h[13], h[14], h[15]];
    let mut dhcp_ports = false;
    if h[9] == IPPROTO_UDP && offset == 0 {
        if ihl + 8 > tot {
            return Err(Reason::Malformed);
        }
        let udp = bytes::<4>(ctx, l3 + ihl)?;
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        if sport == 67 {
            return Err(Reason::DhcpServer);
        }
        dhcp_ports = sport == 68 && dport == 67;
    }
    if allowed4(cfg, ifindex, src) {
        return Ok(());
    }
    // DHCP client: 0.0.0.0, unfragmented UDP 68 → 67, and the VIF has some IPv4 to claim.
    let dhcp_client =
        src == [0; 4] && !more_frags && offset == 0 && dhcp_ports && cfg.flags & FLAG_HAS_A4 != 0;
    if dhcp_client {
        Ok(())
    } else {
        Err(Reason::Ipv4Spoof)
    }
}

#[inline(always)]
fn is_ext(proto: u8) -> bool {
    // hop-by-hop, routing, fragment, destination options
    proto == 0 || proto == 43 || proto == IPPROTO_FRAGMENT || proto == 60
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let l3 = ETH_HLEN;
    let h = bytes::<8>(ctx, l3)?;
    let src = bytes::<16>(ctx, l3 + 8)?;
    let dst = bytes::<16>(ctx, l3 + 24)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let end = l3 + 40 + u16::from_be_bytes([h[4], h[5]]) as usize;
    if end > ctx.data_end() - ctx.data() {
        return Err(Reason::Malformed);
    }

    // Extension-header walk, at most MAX_EXT_HEADERS deep.
    let mut proto = h[6];
    let mut off = l3 + 40;
    let mut fragmented = false;
    let mut later_fragment = false;
    let mut seen = 0;
    while is_ext(proto) {
        if seen == MAX_EXT_HEADERS {
            return Err(Reason::Malformed);
        }
        seen += 1;
        if off + 8 > end {
            return Err(Reason::Malformed);
        }
        let e = bytes::<4>(ctx, off)?;
        let len = if proto == IPPROTO_FRAGMENT {
            fragmented = true;
            if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                later_fragment = true;
            }
            8
        } else {
            (e[1] as usize + 1) * 8
        };
        if off + len > end {
            return Err(Reason::Malformed);
        }
        off += len;
        proto = e[0];
        if later_fragment {
            break;
        }
    }

    if !later_fragment {
        if proto == IPPROTO_ICMPV6 {
            if off + 4 > end {
                return Err(Reason::Malformed);
            }
            // Two bytes, not one: LLVM turns a one-byte bound check into `>=`, which the
            // verifier does not narrow. The ICMPv6 header is known to be ≥ 4 bytes here.
            let ty = bytes::<2>(ctx, off)?[0];
            if ty == 134 || ty == 137 || ty == 146 || ty == 147 || (151..=153).contains(&ty) {
                return Err(Reason::NdRouter);
            }
            if (133..=137).contains(&ty) && fragmented {
                return Err(Reason::NdFragment);
            }
            if ty == 135 || ty == 136 {
                return ns_na(ctx, cfg, ifindex, off, end, ty, &src, &dst);
            }
            if ty == 133 || ty == 131 || ty == 132 || ty == 143 {
                return rs_mld(ctx, cfg, ifindex, off, end, ty, &src);
            }
        } else if proto == IPPROTO_UDP {
            if off + 8 > end {
                return Err(Reason::Malformed);
            }
            if be16(ctx, off)? == 547 {
                return Err(Reason::DhcpServer);
            }
        }
    }
    if allowed6(cfg, ifindex, src) {
        Ok(())
    } else {
        Err(Reason::Ipv6Spoof)
    }
}

/// Link-layer options of an NDP message: (source option seen, every LL option = guest MAC).
#[inline(always)]
fn nd_options(
    ctx: &XdpContext,
    cfg: &VifConfig,
    mut off: usize,
    end: usize,
) -> Result<(bool, bool), Reason> {
    let mut source = false;
    let mut all_guest = true;
    let mut n = 0;
    while off < end {
        if n == MAX_ND_OPTIONS || off + 8 > end {
            return Err(Reason::Malformed);
        }
        n += 1;
        let o = bytes::<8>(ctx, off)?;
        let len = o[1] as usize * 8;
        // RFC 4861 4.6: a zero-length option invalidates the message.
        if len == 0 || off + len > end {
            return Err(Reason::Malformed);
        }
        if o[0] == 1 || o[0] == 2 {
            if o[0] == 1 {
                source = true;
            }
            let mac = [o[2], o[3], o[4], o[5], o[6], o[7]];
            if !mac_eq(&mac, &cfg.mac) {
                all_guest = false;
            }
        }
        off += len;
    }
    Ok((source, all_guest))
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "verifier-friendly flat helper")]
fn ns_na(
    ctx: &XdpContext,
    cfg: &VifConfig,
    ifindex: u32,
    off: usize,
    end: usize,
    ty: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Result<(), Reason> {
    if off + 24 > end {
        return Err(Reason::Malformed);
    }
    let target = bytes::<16>(ctx, off + 8)?;
    let (source_opt, all_guest) = nd_options(ctx, cfg, off + 24, end)?;
    let ok = if ty == 135 && is_zero16(src) {
        // RFC 4862 5.4.2 DAD: to the target's solicited-node group, no source LL option.
        let sn = dst[0] == 0xff
            && dst[1] == 0x02
            && (dst[2] | dst[3] | dst[4] | dst[5] | dst[6] | dst[7] | dst[8] | dst[9] | dst[10])
                == 0
            && dst[11] == 0x01
            && dst[12] == 0xff
            && dst[13] == target[13]
            && dst[14] == target[14]
            && dst[15] == target[15];
        sn && !source_opt && allowed6(cfg, ifindex, target)
    } else if ty == 135 {
        all_guest && allowed6(cfg, ifindex, *src)
    } else {
        all_guest && allowed6(cfg, ifindex, *src) && allowed6(cfg, ifindex, target)
    };
    if ok { Ok(()) } else { Err(Reason::NdSpoof) }
}

#[inline(always)]
fn rs_mld(
    ctx: &XdpContext,
    cfg: &VifConfig,
    ifindex: u32,
    off: usize,
    end: usize,
    ty: u8,
    src: &[u8; 16],
) -> Result<(), Reason> {
    let src_ok = if is_zero16(src) {
        cfg.flags & FLAG_HAS_S6 != 0
    } else {
        allowed6(cfg, ifindex, *src)
    };
    if !src_ok {
        return Err(Reason::NdSpoof);
    }
    if ty == 133 {
        if off + 8 > end {
            return Err(Reason::Malformed);
        }
        let (_, all_guest) = nd_options(ctx, cfg, off + 8, end)?;
        if !all_guest {
            return Err(Reason::NdSpoof);
        }
    }
    Ok(())
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
