//! The reference model: POLICY.md as a pure function over raw frame bytes.
//!
//! The kernel program follows the same order of checks; the differential tests run both on the
//! same frames and policies and demand the same verdict. Where POLICY.md leaves a choice, the
//! choice is made here and written in `docs/policy-choices.md`.

use std::net::{Ipv4Addr, Ipv6Addr};

pub use crate::proto::*;
use crate::{
    MAX_EXT_HEADERS, MAX_ND_OPTIONS, Reason,
    policy::{EffectiveMode, VifPolicy, solicited_node},
};

/// The verdict on a frame from the VM.
pub fn verdict_from_vm(policy: &VifPolicy, frame: &[u8]) -> Reason {
    match policy.mode {
        EffectiveMode::Unlocked => Reason::Pass,
        EffectiveMode::Disabled => Reason::Disabled,
        EffectiveMode::Locked => locked_from_vm(policy, frame),
    }
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn arr<const N: usize>(b: &[u8], off: usize) -> Option<[u8; N]> {
    b.get(off..off + N)?.try_into().ok()
}

fn locked_from_vm(p: &VifPolicy, f: &[u8]) -> Reason {
    // The Ethernet header itself must be there before rule 1 can be asked.
    let Some(src) = arr::<6>(f, 6) else {
        return Reason::Malformed;
    };
    let Some(ethertype) = be16(f, 12) else {
        return Reason::Malformed;
    };
    if src != p.mac {
        return Reason::MacSpoof;
    }
    match ethertype {
        ETH_P_ARP => arp(p, f),
        ETH_P_IP => ipv4(p, f),
        ETH_P_IPV6 => ipv6(p, f),
        _ => Reason::BadEthertype,
    }
}

fn arp(p: &VifPolicy, f: &[u8]) -> Reason {
    let a = ETH_HLEN;
    let (Some(htype), Some(ptype), Some(hlen), Some(plen), Some(op)) = (
        be16(f, a),
        be16(f, a + 2),
        f.get(a + 4),
        f.get(a + 5),
        be16(f, a + 6),
    ) else {
        return Reason::Malformed;
    };
    if htype != ARPHRD_ETHER
        || ptype != ETH_P_IP
        || *hlen != ETH_ALEN
        || *plen != IPV4_ALEN
        || !(op == ARPOP_REQUEST || op == ARPOP_REPLY)
    {
        return Reason::ArpSpoof;
    }
    // Fixed part (8) + sender MAC (6) + sender IP (4) + target MAC (6) + target IP (4).
    let (Some(sha), Some(spa), Some(tpa)) =
        (arr::<6>(f, a + 8), arr::<4>(f, a + 14), arr::<4>(f, a + 24))
    else {
        return Reason::Malformed;
    };
    if f.len() < a + 28 {
        return Reason::Malformed;
    }
    if sha != p.mac {
        return Reason::ArpSpoof;
    }
    let spa = Ipv4Addr::from(spa);
    // RFC 5227 probe: sender IP 0.0.0.0 in a request, for an address the VM may use (a probe
    // for anyone else's address would make its owner give it up).
    let probe = spa.is_unspecified() && op == ARPOP_REQUEST && p.allows4(Ipv4Addr::from(tpa));
    if p.allows4(spa) || probe {
        Reason::Pass
    } else {
        Reason::ArpSpoof
    }
}

fn ipv4(p: &VifPolicy, f: &[u8]) -> Reason {
    let l3 = ETH_HLEN;
    let Some(vihl) = f.get(l3).copied() else {
        return Reason::Malformed;
    };
    if f.len() < l3 + 20 || vihl >> 4 != 4 {
        return Reason::Malformed;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    let tot = usize::from(be16(f, l3 + 2).unwrap_or(0));
    if ihl < 20 || tot < ihl || l3 + ihl > f.len() || l3 + tot > f.len() {
        return Reason::Malformed;
    }
    let frag = be16(f, l3 + 6).unwrap_or(0);
    let more_frags = frag & 0x2000 != 0;
    let offset = frag & 0x1fff;
    let proto = f[l3 + 9];
    let src = Ipv4Addr::from(arr::<4>(f, l3 + 12).unwrap_or_default());
    let l4 = l3 + ihl;
    let end = l3 + tot;
    let mut dhcp_client = false;
    if proto == IPPROTO_UDP && offset == 0 {
        // The UDP header must lie inside the IP packet.
        if l4 + 8 > end {
            return Reason::Malformed;
        }
        let (Some(sport), Some(dport)) = (be16(f, l4), be16(f, l4 + 2)) else {
            return Reason::Malformed;
        };
        if sport == DHCP_SERVER_PORT || dport == DHCP_CLIENT_PORT {
            return Reason::DhcpServer;
        }
        dhcp_client = sport == DHCP_CLIENT_PORT && dport == DHCP_SERVER_PORT;
    }
    if proto == IPPROTO_IGMP && offset == 0 {
        if l4 + IGMP_MIN_LEN > end {
            return Reason::Malformed;
        }
        if f[l4] == IGMP_MEMBERSHIP_QUERY {
            return Reason::McQuerier;
        }
    }
    let src_ok = p.allows4(src)
        || (src.is_unspecified() && dhcp_client && !more_frags && !p.ipv4.is_empty());
    if !src_ok {
        return Reason::Ipv4Spoof;
    }
    if dhcp_client {
        // A BOOTREQUEST for the guest's own hardware address, nothing else.
        let bootp = l4 + 8;
        if bootp + BOOTP_FIXED_LEN > end {
            return Reason::Malformed;
        }
        let ok = f[bootp] == BOOTREQUEST
            && f[bootp + 1] == 1
            && f[bootp + 2] == 6
            && arr::<6>(f, bootp + BOOTP_CHADDR) == Some(p.mac);
        if !ok {
            return Reason::DhcpSpoof;
        }
    }
    Reason::Pass
}

/// Where the upper-layer header starts after the extension-header walk.
struct Upper {
    proto: u8,
    off: usize,
    /// A fragment header was seen.
    fragmented: bool,
    /// ... and it was not the first fragment, so no upper header is in this frame.
    later_fragment: bool,
}

fn walk_ext(f: &[u8], end: usize, first: u8) -> Result<Upper, Reason> {
    let mut proto = first;
    let mut off = ETH_HLEN + 40;
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
        let next = f[off];
        let len = if proto == IPPROTO_FRAGMENT {
            fragmented = true;
            let fo = be16(f, off + 2).unwrap_or(0);
            if fo & 0xfff8 != 0 {
                later_fragment = true;
            }
            8
        } else {
            (usize::from(f[off + 1]) + 1) * 8
        };
        if off + len > end {
            return Err(Reason::Malformed);
        }
        off += len;
        proto = next;
        if later_fragment {
            break;
        }
    }
    Ok(Upper {
        proto,
        off,
        fragmented,
        later_fragment,
    })
}

fn ipv6(p: &VifPolicy, f: &[u8]) -> Reason {
    let l3 = ETH_HLEN;
    if f.len() < l3 + 40 || f[l3] >> 4 != 6 {
        return Reason::Malformed;
    }
    let plen = usize::from(be16(f, l3 + 4).unwrap_or(0));
    let end = l3 + 40 + plen;
    if end > f.len() {
        return Reason::Malformed;
    }
    let src = Ipv6Addr::from(arr::<16>(f, l3 + 8).unwrap_or_default());
    let dst = Ipv6Addr::from(arr::<16>(f, l3 + 24).unwrap_or_default());
    let up = match walk_ext(f, end, f[l3 + 6]) {
        Ok(u) => u,
        Err(r) => return r,
    };
    if !up.later_fragment {
        if up.proto == IPPROTO_ICMPV6 {
            if up.off + 4 > end {
                return Reason::Malformed;
            }
            let ty = f[up.off];
            if is_router_type(ty) {
                return Reason::NdRouter;
            }
            if ty == ICMPV6_MLD_QUERY {
                return Reason::McQuerier;
            }
            if is_ndp(ty) && up.fragmented {
                return Reason::NdFragment;
            }
            match ty {
                ICMPV6_NEIGHBOUR_SOLICIT | ICMPV6_NEIGHBOUR_ADVERT => {
                    return ns_na(p, f, end, up.off, ty, src, dst);
                }
                t if is_rs_or_mld(t) => return rs_mld(p, f, end, up.off, ty, src),
                _ => {}
            }
        } else if up.proto == IPPROTO_UDP {
            if up.off + 8 > end {
                return Reason::Malformed;
            }
            if be16(f, up.off) == Some(DHCPV6_SERVER_PORT)
                || be16(f, up.off + 2) == Some(DHCPV6_CLIENT_PORT)
            {
                return Reason::DhcpServer;
            }
        }
    }
    if p.allows6(src) {
        Reason::Pass
    } else {
        Reason::Ipv6Spoof
    }
}

/// Link-layer address options found in an NDP message.
#[derive(Default)]
struct LlOpts {
    /// A source link-layer address option (type 1) was present.
    source: bool,
    /// A target link-layer address option (type 2) was present.
    target: bool,
    /// Every link-layer option present carried the guest MAC.
    all_guest: bool,
}

/// Walks NDP options (RFC 4861 4.6) from `off` to `end`.
fn nd_options(p: &VifPolicy, f: &[u8], mut off: usize, end: usize) -> Result<LlOpts, Reason> {
    let mut o = LlOpts {
        all_guest: true,
        ..LlOpts::default()
    };
    let mut n = 0;
    while off < end {
        if n == MAX_ND_OPTIONS || off + 8 > end {
            return Err(Reason::Malformed);
        }
        n += 1;
        let ty = f[off];
        let len = usize::from(f[off + 1]) * 8;
        // RFC 4861 4.6: a zero length option makes the whole message invalid.
        if len == 0 || off + len > end {
            return Err(Reason::Malformed);
        }
        if ty == ND_OPT_SOURCE_LL_ADDR || ty == ND_OPT_TARGET_LL_ADDR {
            if ty == ND_OPT_SOURCE_LL_ADDR {
                o.source = true;
            } else {
                o.target = true;
            }
            if arr::<6>(f, off + 2) != Some(p.mac) {
                o.all_guest = false;
            }
        }
        off += len;
    }
    Ok(o)
}

fn ns_na(
    p: &VifPolicy,
    f: &[u8],
    end: usize,
    off: usize,
    ty: u8,
    src: Ipv6Addr,
    dst: Ipv6Addr,
) -> Reason {
    // type, code, checksum, flags/reserved, target address.
    if off + 24 > end {
        return Reason::Malformed;
    }
    let target = Ipv6Addr::from(arr::<16>(f, off + 8).unwrap_or_default());
    let opts = match nd_options(p, f, off + 24, end) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let ok = if ty == ICMPV6_NEIGHBOUR_SOLICIT && src.is_unspecified() {
        // RFC 4862 5.4.2: a DAD probe goes to the solicited-node group of its target and must
        // not carry a source link-layer option.
        dst == solicited_node(target) && !opts.source && p.allows6(target)
    } else if ty == ICMPV6_NEIGHBOUR_SOLICIT {
        p.allows6(src) && opts.all_guest
    } else {
        p.allows6(src) && p.allows6(target) && opts.all_guest
    };
    if ok { Reason::Pass } else { Reason::NdSpoof }
}

fn rs_mld(p: &VifPolicy, f: &[u8], end: usize, off: usize, ty: u8, src: Ipv6Addr) -> Reason {
    let src_ok = p.allows6(src) || (src.is_unspecified() && p.has_s6());
    if !src_ok {
        return Reason::NdSpoof;
    }
    if ty == ICMPV6_ROUTER_SOLICIT {
        // An RS may carry a source link-layer option (RFC 4861 4.1); it must be the guest's,
        // or the VM could poison the router's neighbour cache.
        if off + 8 > end {
            return Reason::Malformed;
        }
        match nd_options(p, f, off + 8, end) {
            Ok(o) if o.all_guest => {}
            Ok(_) => return Reason::NdSpoof,
            Err(r) => return r,
        }
    }
    Reason::Pass
}

/// The verdict on a frame the host sends to the VM (TC egress on the VIF). The rate limit
/// does not apply in this direction.
pub fn verdict_to_vm(policy: &VifPolicy, frame: &[u8]) -> Reason {
    match policy.mode {
        EffectiveMode::Unlocked => Reason::Pass,
        EffectiveMode::Disabled => Reason::Disabled,
        EffectiveMode::Locked => locked_to_vm(policy, frame),
    }
}

fn locked_to_vm(p: &VifPolicy, f: &[u8]) -> Reason {
    let (Some(dst), Some(ethertype)) = (arr::<6>(f, 0), be16(f, 12)) else {
        return Reason::Malformed;
    };
    // Broadcast and multicast (group bit set) reach every port, and pass.
    if dst[0] & 1 != 0 {
        return Reason::Pass;
    }
    if dst != p.mac {
        return Reason::RxForeignMac;
    }
    match ethertype {
        ETH_P_IP => {
            let Some(d) = arr::<4>(f, ETH_HLEN + 16) else {
                return Reason::Malformed;
            };
            if f.len() < ETH_HLEN + 20 {
                return Reason::Malformed;
            }
            let d = Ipv4Addr::from(d);
            if d.is_multicast() || d.is_broadcast() || p.allows4(d) {
                Reason::Pass
            } else {
                Reason::RxForeignIp
            }
        }
        ETH_P_IPV6 => {
            if f.len() < ETH_HLEN + 40 {
                return Reason::Malformed;
            }
            let d = Ipv6Addr::from(arr::<16>(f, ETH_HLEN + 24).unwrap_or_default());
            // NDP directly after the IPv6 header passes (RFC 4861 messages carry no extension
            // headers in practice; the from-VM side drops fragmented NDP).
            let ndp = f[ETH_HLEN + 6] == IPPROTO_ICMPV6
                && f.get(ETH_HLEN + 40).is_some_and(|t| is_ndp(*t));
            if ndp || d.is_multicast() || p.allows6(d) {
                Reason::Pass
            } else {
                Reason::RxForeignIp
            }
        }
        // ARP and anything else unicast to the guest's own MAC.
        _ => Reason::Pass,
    }
}
