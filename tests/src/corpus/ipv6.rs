//! Rule 6: IPv6, its extension headers, NDP and MLD.
use std::net::Ipv6Addr;

use lockd_common::{Reason::*, policy::solicited_node};
use lockd_kit::frames::{self, icmpv6_msg, ll_option, nd_body};

use super::*;

pub(super) fn rows() -> Vec<Row> {
    let l = locked_policy();
    let ll = ll();
    vec![
        // 6. IPv6.
        (
            "UDP6 from own address",
            l.clone(),
            udp6_from(GUEST, OWN6, 5000, 53),
            Pass,
        ),
        (
            "UDP6 from the link-local address",
            l.clone(),
            udp6_from(GUEST, ll, 5000, 53),
            Pass,
        ),
        (
            "UDP6 from inside an allowed prefix",
            l.clone(),
            udp6_from(GUEST, Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 1, 2, 3, 4), 1, 2),
            Pass,
        ),
        (
            "UDP6 from a foreign address",
            l.clone(),
            udp6_from(GUEST, FOREIGN6, 5000, 53),
            Ipv6Spoof,
        ),
        (
            "UDP6 from link-local with no IPv6 allowed",
            only_v4(),
            udp6_from(GUEST, ll, 5000, 53),
            Ipv6Spoof,
        ),
        (
            "SCTP6 from own address",
            l.clone(),
            ipv6_chain(OWN6, PEER6, 132, &[], &[0; 12]),
            Pass,
        ),
        (
            "ICMPv6 echo from a foreign address",
            l.clone(),
            icmp6(FOREIGN6, PEER6, 128, &[0, 1, 0, 1]),
            Ipv6Spoof,
        ),
        ("8 extension headers", l.clone(), ext_chain(8), Pass),
        ("9 extension headers", l.clone(), ext_chain(9), Malformed),
        (
            "extension header cut",
            l.clone(),
            ipv6_chain(OWN6, PEER6, 60, &[58, 0, 1, 4], &[]),
            Malformed,
        ),
        (
            "ICMPv6 header cut",
            l.clone(),
            ipv6_chain(OWN6, PEER6, 58, &[], &[128, 0]),
            Malformed,
        ),
        (
            "RA",
            l.clone(),
            icmp6(ll, ALL_NODES, 134, &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            NdRouter,
        ),
        (
            "redirect",
            l.clone(),
            icmp6(
                ll,
                PEER6,
                137,
                &nd_body(0, PEER6, &[])
                    .into_iter()
                    .chain(OWN6.octets())
                    .collect::<Vec<_>>(),
            ),
            NdRouter,
        ),
        (
            "mobile prefix advertisement (147)",
            l.clone(),
            icmp6(OWN6, PEER6, 147, &[0; 4]),
            NdRouter,
        ),
        (
            "multicast router advertisement (151)",
            l.clone(),
            icmp6(ll, ALL_NODES, 151, &[0; 4]),
            NdRouter,
        ),
        (
            "RA in a fragment",
            l.clone(),
            ipv6_chain(
                ll,
                ALL_NODES,
                44,
                &fragment(58, 0, true),
                &icmpv6_msg(ll, ALL_NODES, 134, 0, &[0; 12]),
            ),
            NdRouter,
        ),
        (
            "NS in a fragment",
            l.clone(),
            ipv6_chain(
                ll,
                PEER6,
                44,
                &fragment(58, 0, true),
                &icmpv6_msg(
                    ll,
                    PEER6,
                    135,
                    0,
                    &nd_body(0, PEER6, &[ll_option(1, GUEST)]),
                ),
            ),
            NdFragment,
        ),
        (
            "NA behind a destination header in a fragment",
            l.clone(),
            ipv6_chain(
                ll,
                PEER6,
                60,
                &[dest_opts(44), fragment(58, 0, false)].concat(),
                &icmpv6_msg(ll, PEER6, 136, 0, &nd_body(0, OWN6, &[])),
            ),
            NdFragment,
        ),
        (
            "later fragment from own address",
            l.clone(),
            ipv6_chain(OWN6, PEER6, 44, &fragment(58, 1, false), &[135, 0, 0, 0]),
            Pass,
        ),
        (
            "later fragment from a foreign address",
            l.clone(),
            ipv6_chain(
                FOREIGN6,
                PEER6,
                44,
                &fragment(58, 1, false),
                &[135, 0, 0, 0],
            ),
            Ipv6Spoof,
        ),
        ("DAD NS", l.clone(), dad_ns(OWN6), Pass),
        (
            "DAD NS for the link-local address",
            l.clone(),
            dad_ns(ll),
            Pass,
        ),
        (
            "DAD NS for a foreign target",
            l.clone(),
            dad_ns(FOREIGN6),
            NdSpoof,
        ),
        (
            "DAD NS to the wrong group",
            l.clone(),
            icmp6(
                Ipv6Addr::UNSPECIFIED,
                ALL_NODES,
                135,
                &nd_body(0, OWN6, &[]),
            ),
            NdSpoof,
        ),
        (
            "DAD NS with a source link-layer option",
            l.clone(),
            icmp6(
                Ipv6Addr::UNSPECIFIED,
                solicited_node(OWN6),
                135,
                &nd_body(0, OWN6, &[ll_option(1, GUEST)]),
            ),
            NdSpoof,
        ),
        (
            "NS from own link-local with own SLLA",
            l.clone(),
            icmp6(
                ll,
                solicited_node(PEER6),
                135,
                &nd_body(0, PEER6, &[ll_option(1, GUEST)]),
            ),
            Pass,
        ),
        (
            "NS without options",
            l.clone(),
            icmp6(OWN6, PEER6, 135, &nd_body(0, PEER6, &[])),
            Pass,
        ),
        (
            "NS with a foreign source link-layer option",
            l.clone(),
            icmp6(
                ll,
                solicited_node(PEER6),
                135,
                &nd_body(0, PEER6, &[ll_option(1, FOREIGN)]),
            ),
            NdSpoof,
        ),
        (
            "NS from a foreign address",
            l.clone(),
            icmp6(
                FOREIGN6,
                solicited_node(PEER6),
                135,
                &nd_body(0, PEER6, &[ll_option(1, GUEST)]),
            ),
            NdSpoof,
        ),
        (
            "NS with a zero-length option",
            l.clone(),
            icmp6(
                ll,
                PEER6,
                135,
                &nd_body(0, PEER6, &[vec![1, 0, 0, 0, 0, 0, 0, 0]]),
            ),
            Malformed,
        ),
        (
            "NS option past the end",
            l.clone(),
            icmp6(
                ll,
                PEER6,
                135,
                &nd_body(0, PEER6, &[vec![1, 2, 0, 0, 0, 0, 0, 0]]),
            ),
            Malformed,
        ),
        (
            "NS cut before the target",
            l.clone(),
            icmp6(ll, PEER6, 135, &[0; 8]),
            Malformed,
        ),
        (
            "NA for own address with own TLLA",
            l.clone(),
            icmp6(
                OWN6,
                ALL_NODES,
                136,
                &nd_body(0x2000_0000, OWN6, &[ll_option(2, GUEST)]),
            ),
            Pass,
        ),
        (
            "unsolicited NA for the link-local address",
            l.clone(),
            icmp6(ll, ALL_NODES, 136, &nd_body(0x2000_0000, ll, &[])),
            Pass,
        ),
        (
            "NA for a foreign target",
            l.clone(),
            icmp6(
                ll,
                ALL_NODES,
                136,
                &nd_body(0x2000_0000, FOREIGN6, &[ll_option(2, GUEST)]),
            ),
            NdSpoof,
        ),
        (
            "NA with a foreign TLLA",
            l.clone(),
            icmp6(
                OWN6,
                ALL_NODES,
                136,
                &nd_body(0x2000_0000, OWN6, &[ll_option(2, FOREIGN)]),
            ),
            NdSpoof,
        ),
        (
            "NA from a foreign source",
            l.clone(),
            icmp6(FOREIGN6, ALL_NODES, 136, &nd_body(0x2000_0000, OWN6, &[])),
            NdSpoof,
        ),
        (
            "RS from ::",
            l.clone(),
            icmp6(Ipv6Addr::UNSPECIFIED, ALL_ROUTERS, 133, &[0; 4]),
            Pass,
        ),
        (
            "RS from link-local with own SLLA",
            l.clone(),
            icmp6(
                ll,
                ALL_ROUTERS,
                133,
                &[vec![0; 4], ll_option(1, GUEST)].concat(),
            ),
            Pass,
        ),
        (
            "RS with a foreign SLLA",
            l.clone(),
            icmp6(
                ll,
                ALL_ROUTERS,
                133,
                &[vec![0; 4], ll_option(1, FOREIGN)].concat(),
            ),
            NdSpoof,
        ),
        (
            "RS from a foreign address",
            l.clone(),
            icmp6(FOREIGN6, ALL_ROUTERS, 133, &[0; 4]),
            NdSpoof,
        ),
        (
            "RS from :: with no IPv6 allowed",
            only_v4(),
            icmp6(Ipv6Addr::UNSPECIFIED, ALL_ROUTERS, 133, &[0; 4]),
            NdSpoof,
        ),
        (
            "MLDv2 report from :: with router alert",
            l.clone(),
            ipv6_chain(
                Ipv6Addr::UNSPECIFIED,
                MLDV2_ROUTERS,
                0,
                &hop_by_hop_ra(58),
                &icmpv6_msg(Ipv6Addr::UNSPECIFIED, MLDV2_ROUTERS, 143, 0, &[0; 4]),
            ),
            Pass,
        ),
        (
            "MLDv1 report from link-local",
            l.clone(),
            icmp6(ll, ALL_NODES, 131, &[0; 20]),
            Pass,
        ),
        (
            "MLDv1 done from a foreign address",
            l.clone(),
            icmp6(FOREIGN6, ALL_ROUTERS, 132, &[0; 20]),
            NdSpoof,
        ),
        (
            "MLD report from :: with no IPv6 allowed",
            only_v4(),
            icmp6(Ipv6Addr::UNSPECIFIED, MLDV2_ROUTERS, 143, &[0; 4]),
            NdSpoof,
        ),
        (
            "DHCPv6 reply to port 546 from port 5000",
            l.clone(),
            udp6_from(GUEST, ll, 5000, 546),
            DhcpServer,
        ),
        (
            "MLD query from link-local",
            l.clone(),
            icmp6(ll, ALL_NODES, 130, &[0; 20]),
            McQuerier,
        ),
        (
            "ICMPv6 router renumbering",
            l.clone(),
            icmp6(OWN6, ALL_ROUTERS, 138, &[0; 20]),
            NdRouter,
        ),
        (
            "DHCPv6 advertise sent by the VM",
            l.clone(),
            udp6_from(GUEST, ll, 547, 546),
            DhcpServer,
        ),
        (
            "DHCPv6 solicit from link-local",
            l.clone(),
            frames::udp6(
                GUEST,
                [0x33, 0x33, 0, 1, 0, 2],
                ll,
                "ff02::1:2".parse().unwrap(),
                546,
                547,
                &[1; 16],
            ),
            Pass,
        ),
        (
            "UDP6 header cut",
            l.clone(),
            ipv6_chain(OWN6, PEER6, 17, &[], &[0, 1, 0]),
            Malformed,
        ),
        (
            "IPv6 from a VIF with empty lists",
            empty_lists(),
            udp6_from(GUEST, ll, 1, 2),
            Ipv6Spoof,
        ),
    ]
}
