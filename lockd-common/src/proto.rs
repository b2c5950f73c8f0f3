//! Protocol numbers both judges use: the reference model (`model.rs`) and the kernel programs
//! (`lockd-ebpf`). Written once here so the two cannot disagree on a constant.

/// Length of an Ethernet header without a VLAN tag.
pub const ETH_HLEN: usize = 14;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q and 802.1ad (QinQ) VLAN tags.
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// A MAC address's length, and ARP's (and BOOTP's) hardware type for Ethernet.
pub const ETH_ALEN: u8 = 6;
pub const ARPHRD_ETHER: u16 = 1;
/// ARP operations.
pub const ARPOP_REQUEST: u16 = 1;
pub const ARPOP_REPLY: u16 = 2;
/// An IPv4 address's length (ARP's protocol address length).
pub const IPV4_ALEN: u8 = 4;

pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_IGMP: u8 = 2;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_ICMPV6: u8 = 58;
pub const IPPROTO_DSTOPTS: u8 = 60;

/// UDP ports of DHCPv4.
pub const DHCP_SERVER_PORT: u16 = 67;
pub const DHCP_CLIENT_PORT: u16 = 68;
/// UDP ports of DHCPv6 (RFC 8415): clients listen on 546, servers and relays on 547.
pub const DHCPV6_CLIENT_PORT: u16 = 546;
pub const DHCPV6_SERVER_PORT: u16 = 547;

/// BOOTP (RFC 951): the fixed header up to and including `chaddr` (op, htype, hlen, hops,
/// xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr[16]); `chaddr` is at 28.
pub const BOOTP_FIXED_LEN: usize = 44;
pub const BOOTP_CHADDR: usize = 28;
pub const BOOTREQUEST: u8 = 1;

/// IGMP membership query (RFC 2236, 3376): type 0x11.
pub const IGMP_MEMBERSHIP_QUERY: u8 = 0x11;
/// Bytes of an IGMP header (v1/v2; a v3 query is longer).
pub const IGMP_MIN_LEN: usize = 8;

/// ICMPv6 types lockd reads (RFC 4443, 4861, 2710, 3810).
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_MLD_QUERY: u8 = 130;
pub const ICMPV6_ROUTER_RENUMBERING: u8 = 138;
pub const ICMPV6_MLD_REPORT: u8 = 131;
pub const ICMPV6_MLD_DONE: u8 = 132;
pub const ICMPV6_ROUTER_SOLICIT: u8 = 133;
pub const ICMPV6_ROUTER_ADVERT: u8 = 134;
pub const ICMPV6_NEIGHBOUR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOUR_ADVERT: u8 = 136;
pub const ICMPV6_REDIRECT: u8 = 137;
pub const ICMPV6_MLD2_REPORT: u8 = 143;
/// NDP options carrying a link-layer address (RFC 4861 4.6.1).
pub const ND_OPT_SOURCE_LL_ADDR: u8 = 1;
pub const ND_OPT_TARGET_LL_ADDR: u8 = 2;

/// ICMPv6 types a VM may never send: RA 134, redirect 137, router renumbering 138, and the
/// router-side messages of mobile IPv6 / multicast router discovery (146, 147, 151, 152, 153).
pub const ND_ROUTER_TYPES: [u8; 8] = [134, 137, 138, 146, 147, 151, 152, 153];

/// Whether a VM may never send ICMPv6 type `ty` (one of [`ND_ROUTER_TYPES`]).
#[inline(always)]
pub const fn is_router_type(ty: u8) -> bool {
    ty == 134 || ty == 137 || ty == 138 || ty == 146 || ty == 147 || (ty >= 151 && ty <= 153)
}

/// Whether ICMPv6 type `ty` is NDP proper (RS, RA, NS, NA, redirect: 133 ..= 137).
#[inline(always)]
pub const fn is_ndp(ty: u8) -> bool {
    ty >= ICMPV6_ROUTER_SOLICIT && ty <= ICMPV6_REDIRECT
}

/// Whether ICMPv6 type `ty` is checked like a router solicitation or MLD report (its source
/// must be the VIF's, or unspecified).
#[inline(always)]
pub const fn is_rs_or_mld(ty: u8) -> bool {
    ty == ICMPV6_ROUTER_SOLICIT
        || ty == ICMPV6_MLD_REPORT
        || ty == ICMPV6_MLD_DONE
        || ty == ICMPV6_MLD2_REPORT
}

/// The IPv6 extension headers walked to find the upper layer: hop-by-hop, routing, fragment
/// and destination options.
pub const EXT_HEADERS: [u8; 4] = [
    IPPROTO_HOPOPTS,
    IPPROTO_ROUTING,
    IPPROTO_FRAGMENT,
    IPPROTO_DSTOPTS,
];

/// Whether `proto` is one of [`EXT_HEADERS`].
#[inline(always)]
pub const fn is_ext_header(proto: u8) -> bool {
    proto == IPPROTO_HOPOPTS
        || proto == IPPROTO_ROUTING
        || proto == IPPROTO_FRAGMENT
        || proto == IPPROTO_DSTOPTS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_match_their_lists() {
        for ty in 0..=255u8 {
            assert_eq!(is_router_type(ty), ND_ROUTER_TYPES.contains(&ty), "{ty}");
            assert_eq!(is_ext_header(ty), EXT_HEADERS.contains(&ty), "{ty}");
        }
    }
}
