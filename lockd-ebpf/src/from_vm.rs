//! `vif_ingress`: frames the VM transmits (XDP on the VIF netdev). Its checks run in the same
//! order as `lockd_common::model::verdict_from_vm`, which the differential tests hold it to,
//! frame by frame.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use lockd_common::{
    Direction, FLAG_HAS_A4, FLAG_HAS_S6, MAX_EXT_HEADERS, MAX_ND_OPTIONS, MODE_DISABLED,
    MODE_UNLOCKED, Reason, VifConfig, proto::*,
};

use crate::{
    frame::Frame,
    lookup::{allowed4, allowed6, mac_words},
    maps::{config, count},
    monitor::report,
};

/// The from-VM program. Frames on an interface lockd does not manage pass untouched; a managed
/// VIF's frame is counted under exactly one reason and passed only for `Reason::Pass`. A
/// rate-limited VIF's passing frames go on to its shaper from the TC ingress program.
#[xdp]
pub fn vif_ingress(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some(cfg) = config(ifindex) else {
        return XDP_PASS;
    };
    let reason = judge(&ctx, cfg, ifindex);
    count(
        cfg.counter,
        Direction::FromVm,
        reason,
        ctx.frame_len() as u64,
    );
    if matches!(reason, Reason::Pass) {
        XDP_PASS
    } else {
        report(&ctx, cfg.counter, ifindex, Direction::FromVm, reason);
        XDP_DROP
    }
}

/// The reason for a frame from the VM under `cfg`, at either hook.
#[inline(always)]
pub fn judge<F: Frame>(ctx: &F, cfg: &VifConfig, ifindex: u32) -> Reason {
    match cfg.mode {
        MODE_UNLOCKED => Reason::Pass,
        MODE_DISABLED => Reason::Disabled,
        // MODE_LOCKED and anything unknown: fail closed.
        _ => match locked(ctx, cfg, ifindex) {
            Ok(()) => Reason::Pass,
            Err(r) => r,
        },
    }
}

#[inline(always)]
fn be16<F: Frame>(ctx: &F, off: usize) -> Result<u16, Reason> {
    Ok(u16::from_be_bytes(ctx.load::<2>(off)?))
}

/// Whether `a` (read from the frame) is the guest's MAC: two word compares.
#[inline(always)]
fn mac_eq(a: &[u8; 6], cfg: &VifConfig) -> bool {
    let (hi, lo) = mac_words(cfg);
    u32::from_ne_bytes([a[0], a[1], a[2], a[3]]) == hi && u16::from_ne_bytes([a[4], a[5]]) == lo
}

#[inline(always)]
fn is_zero16(a: &[u8; 16]) -> bool {
    let mut acc = 0u8;
    for b in a {
        acc |= *b;
    }
    acc == 0
}
#[inline(always)]
fn locked<F: Frame>(ctx: &F, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let src = ctx.load::<6>(6)?;
    let ethertype = be16(ctx, 12)?;
    if !mac_eq(&src, cfg) {
        return Err(Reason::MacSpoof);
    }
    if ctx.tagged_beside() {
        return Err(Reason::BadEthertype);
    }
    match ethertype {
        ETH_P_ARP => arp(ctx, cfg, ifindex),
        ETH_P_IP => ipv4(ctx, cfg, ifindex),
        ETH_P_IPV6 => ipv6(ctx, cfg, ifindex),
        _ => Err(Reason::BadEthertype),
    }
}

#[inline(always)]
fn arp<F: Frame>(ctx: &F, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let h = ctx.load::<8>(ETH_HLEN)?;
    let htype = u16::from_be_bytes([h[0], h[1]]);
    let ptype = u16::from_be_bytes([h[2], h[3]]);
    let op = u16::from_be_bytes([h[6], h[7]]);
    if htype != ARPHRD_ETHER
        || ptype != ETH_P_IP
        || h[4] != ETH_ALEN
        || h[5] != IPV4_ALEN
        || !(op == ARPOP_REQUEST || op == ARPOP_REPLY)
    {
        return Err(Reason::ArpSpoof);
    }
    // sender MAC, sender IP, target MAC, target IP: the whole body must be present.
    let body = ctx.load::<20>(ETH_HLEN + 8)?;
    let sha = [body[0], body[1], body[2], body[3], body[4], body[5]];
    let spa = [body[6], body[7], body[8], body[9]];
    let tpa = [body[16], body[17], body[18], body[19]];
    if !mac_eq(&sha, cfg) {
        return Err(Reason::ArpSpoof);
    }
    // RFC 5227 probe: sender IP 0.0.0.0 in a request, for an address the VM may use.
    let ok = if spa == [0; 4] && op == ARPOP_REQUEST {
        allowed4(cfg, ifindex, tpa)
    } else {
        allowed4(cfg, ifindex, spa)
    };
    if ok { Ok(()) } else { Err(Reason::ArpSpoof) }
}

#[inline(always)]
fn ipv4<F: Frame>(ctx: &F, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let l3 = ETH_HLEN;
    let h = ctx.load::<20>(l3)?;
    if h[0] >> 4 != 4 {
        return Err(Reason::Malformed);
    }
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let tot = u16::from_be_bytes([h[2], h[3]]) as usize;
    let len = ctx.frame_len();
    if ihl < 20 || tot < ihl || l3 + tot > len {
        return Err(Reason::Malformed);
    }
    let frag = u16::from_be_bytes([h[6], h[7]]);
    let more_frags = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let src = [h[12], h[13], h[14], h[15]];
    let l4 = l3 + ihl;
    let end = l3 + tot;
    let mut dhcp_client = false;
    if h[9] == IPPROTO_UDP && offset == 0 {
        if l4 + 8 > end {
            return Err(Reason::Malformed);
        }
        let udp = ctx.load::<4>(l4)?;
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        if sport == DHCP_SERVER_PORT || dport == DHCP_CLIENT_PORT {
            return Err(Reason::DhcpServer);
        }
        dhcp_client = sport == DHCP_CLIENT_PORT && dport == DHCP_SERVER_PORT;
    }
    if h[9] == IPPROTO_IGMP && offset == 0 {
        if l4 + IGMP_MIN_LEN > end {
            return Err(Reason::Malformed);
        }
        if ctx.load::<2>(l4)?[0] == IGMP_MEMBERSHIP_QUERY {
            return Err(Reason::McQuerier);
        }
    }
    // Source: an allowed one, or 0.0.0.0 from an unfragmented DHCP client of a VIF with some
    // IPv4 to claim.
    let src_ok = allowed4(cfg, ifindex, src)
        || (src == [0; 4] && dhcp_client && !more_frags && cfg.flags & FLAG_HAS_A4 != 0);
    if !src_ok {
        return Err(Reason::Ipv4Spoof);
    }
    if dhcp_client {
        dhcp_request(ctx, cfg, l4 + 8, end)?;
    }
    Ok(())
}

/// A DHCP client message must be a BOOTREQUEST (htype 1, hlen 6) for the guest's own MAC.
#[inline(never)]
fn dhcp_request<F: Frame>(
    ctx: &F,
    cfg: &VifConfig,
    bootp: usize,
    end: usize,
) -> Result<(), Reason> {
    if bootp + BOOTP_FIXED_LEN > end {
        return Err(Reason::Malformed);
    }
    let head = ctx.load::<4>(bootp)?;
    let chaddr = ctx.load::<6>(bootp + BOOTP_CHADDR)?;
    if head[0] == BOOTREQUEST
        && u16::from(head[1]) == ARPHRD_ETHER
        && head[2] == ETH_ALEN
        && mac_eq(&chaddr, cfg)
    {
        Ok(())
    } else {
        Err(Reason::DhcpSpoof)
    }
}

#[inline(always)]
fn ipv6<F: Frame>(ctx: &F, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let l3 = ETH_HLEN;
    let h = ctx.load::<8>(l3)?;
    let src = ctx.load::<16>(l3 + 8)?;
    let dst = ctx.load::<16>(l3 + 24)?;
    if h[0] >> 4 != 6 {
        return Err(Reason::Malformed);
    }
    let end = l3 + 40 + u16::from_be_bytes([h[4], h[5]]) as usize;
    if end > ctx.frame_len() {
        return Err(Reason::Malformed);
    }

    // Extension-header walk, at most MAX_EXT_HEADERS deep.
    let mut proto = h[6];
    let mut off = l3 + 40;
    let mut fragmented = false;
    let mut later_fragment = false;
    let mut seen = 0;
    while is_ext_header(proto) {
        if seen == MAX_EXT_HEADERS {
            return Err(Reason::Malformed);
        }
        seen += 1;
        if off + 8 > end {
            return Err(Reason::Malformed);
        }
        let e = ctx.load::<4>(off)?;
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
            let ty = ctx.load::<2>(off)?[0];
            if is_router_type(ty) {
                return Err(Reason::NdRouter);
            }
            if ty == ICMPV6_MLD_QUERY {
                return Err(Reason::McQuerier);
            }
            if is_ndp(ty) && fragmented {
                return Err(Reason::NdFragment);
            }
            if ty == ICMPV6_NEIGHBOUR_SOLICIT || ty == ICMPV6_NEIGHBOUR_ADVERT {
                return ns_na(ctx, cfg, ifindex, off, end, ty, &src, &dst);
            }
            if is_rs_or_mld(ty) {
                return rs_mld(ctx, cfg, ifindex, off, end, ty, &src);
            }
        } else if proto == IPPROTO_UDP {
            if off + 8 > end {
                return Err(Reason::Malformed);
            }
            let udp = ctx.load::<4>(off)?;
            if u16::from_be_bytes([udp[0], udp[1]]) == DHCPV6_SERVER_PORT
                || u16::from_be_bytes([udp[2], udp[3]]) == DHCPV6_CLIENT_PORT
            {
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
fn nd_options<F: Frame>(
    ctx: &F,
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
        let o = ctx.load::<8>(off)?;
        let len = o[1] as usize * 8;
        // RFC 4861 4.6: a zero-length option invalidates the message.
        if len == 0 || off + len > end {
            return Err(Reason::Malformed);
        }
        if o[0] == ND_OPT_SOURCE_LL_ADDR || o[0] == ND_OPT_TARGET_LL_ADDR {
            if o[0] == ND_OPT_SOURCE_LL_ADDR {
                source = true;
            }
            let mac = [o[2], o[3], o[4], o[5], o[6], o[7]];
            if !mac_eq(&mac, cfg) {
                all_guest = false;
            }
        }
        off += len;
    }
    Ok((source, all_guest))
}

#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "verifier-friendly flat helper")]
fn ns_na<F: Frame>(
    ctx: &F,
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
    let target = ctx.load::<16>(off + 8)?;
    let (source_opt, all_guest) = nd_options(ctx, cfg, off + 24, end)?;
    let ok = if ty == ICMPV6_NEIGHBOUR_SOLICIT && is_zero16(src) {
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
    } else if ty == ICMPV6_NEIGHBOUR_SOLICIT {
        all_guest && allowed6(cfg, ifindex, *src)
    } else {
        all_guest && allowed6(cfg, ifindex, *src) && allowed6(cfg, ifindex, target)
    };
    if ok { Ok(()) } else { Err(Reason::NdSpoof) }
}

#[inline(always)]
fn rs_mld<F: Frame>(
    ctx: &F,
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
    if ty == ICMPV6_ROUTER_SOLICIT {
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
