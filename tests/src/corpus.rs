//! The hand-written corpus: every rule and every reason of POLICY.md, in both directions.
//! One long table on purpose: a case per row, read top to bottom like the policy.

use std::net::{Ipv4Addr, Ipv6Addr};

use lockd_common::{
    Reason::{self, *},
    policy::{EffectiveMode, VifPolicy, solicited_node},
};
use lockd_kit::frames::{self, BROADCAST, ethernet, icmpv6_msg, ll_option, multicast_mac, nd_body};

use crate::*;

/// A destination-options extension header (8 bytes, PadN) followed by `next`.
pub fn dest_opts(next: u8) -> Vec<u8> {
    vec![next, 0, 1, 4, 0, 0, 0, 0]
}

/// A hop-by-hop header carrying a Router Alert (as MLD uses, RFC 2711).
pub fn hop_by_hop_ra(next: u8) -> Vec<u8> {
    vec![next, 0, 5, 2, 0, 0, 1, 0]
}

/// A fragment header: `offset` in 8-byte units, `more` fragments flag.
pub fn fragment(next: u8, offset: u16, more: bool) -> Vec<u8> {
    let fo = (offset << 3) | u16::from(more);
    let [a, b] = fo.to_be_bytes();
    vec![next, 0, a, b, 0, 0, 0x12, 0x34]
}

/// An IPv6 frame from the guest: `exts` (already chained), then `upper` with protocol `proto`.
pub fn ipv6_chain(src: Ipv6Addr, dst: Ipv6Addr, first: u8, exts: &[u8], upper: &[u8]) -> Vec<u8> {
    let mut payload = exts.to_vec();
    payload.extend_from_slice(upper);
    ethernet(
        GUEST,
        multicast_mac(dst),
        0x86dd,
        &frames::ipv6(src, dst, first, &payload),
    )
}

/// `n` destination-options headers ending in ICMPv6 echo.
pub fn ext_chain(n: usize) -> Vec<u8> {
    let mut exts = Vec::new();
    for i in 0..n {
        exts.extend(dest_opts(if i + 1 == n { 58 } else { 60 }));
    }
    let echo = icmpv6_msg(OWN6, PEER6, 128, 0, &[0, 1, 0, 1]);
    ipv6_chain(OWN6, PEER6, if n == 0 { 58 } else { 60 }, &exts, &echo)
}

fn with(mode: EffectiveMode) -> VifPolicy {
    VifPolicy {
        mode,
        ..locked_policy()
    }
}

fn only_v6() -> VifPolicy {
    VifPolicy {
        ipv4: vec![],
        ..locked_policy()
    }
}

fn only_v4() -> VifPolicy {
    VifPolicy {
        ipv6: vec![],
        ..locked_policy()
    }
}

fn empty_lists() -> VifPolicy {
    VifPolicy {
        ipv4: vec![],
        ipv6: vec![],
        ..locked_policy()
    }
}

fn patch(mut f: Vec<u8>, at: usize, bytes: &[u8]) -> Vec<u8> {
    f[at..at + bytes.len()].copy_from_slice(bytes);
    f
}

fn arp(op: u16, sha: frames::Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    frames::arp(GUEST, BROADCAST, op, sha, spa, [0; 6], tpa)
}

fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, body: &[u8]) -> Vec<u8> {
    frames::icmp6(GUEST, multicast_mac(dst), src, dst, ty, body)
}

/// Every case. Names are unique.
pub fn cases() -> Vec<Case> {
    let l = locked_policy();
    let ll = ll();
    let good4 = udp4_from(GUEST, OWN4, 5000, 53);
    let mut v: Vec<(&'static str, VifPolicy, Vec<u8>, Reason)> = vec![
        // Modes.
        (
            "unlocked passes a spoofed MAC",
            with(EffectiveMode::Unlocked),
            udp4_from(FOREIGN, FOREIGN4, 1, 2),
            Pass,
        ),
        (
            "disabled drops a genuine frame",
            with(EffectiveMode::Disabled),
            good4.clone(),
            Disabled,
        ),
        // 1. MAC.
        (
            "foreign source MAC",
            l.clone(),
            udp4_from(FOREIGN, OWN4, 5000, 53),
            MacSpoof,
        ),
        (
            "VM-c sends with VM-a's IP and MAC",
            l.clone(),
            udp4_from(OTHER, PEER4, 5000, 53),
            MacSpoof,
        ),
        // 2. EtherType.
        (
            "802.1Q tagged",
            l.clone(),
            ethernet(GUEST, BROADCAST, 0x8100, &[0, 5, 0x08, 0x00, 0x45]),
            BadEthertype,
        ),
        (
            "802.1ad tagged",
            l.clone(),
            ethernet(GUEST, BROADCAST, 0x88a8, &[0, 5, 0x81, 0x00, 0, 5, 0x08, 0]),
            BadEthertype,
        ),
        (
            "802.3 length frame",
            l.clone(),
            ethernet(GUEST, BROADCAST, 0x0026, &[0x42, 0x42, 0x03, 0, 0]),
            BadEthertype,
        ),
        (
            "LLDP",
            l.clone(),
            ethernet(GUEST, [0x01, 0x80, 0xc2, 0, 0, 0x0e], 0x88cc, &[0; 20]),
            BadEthertype,
        ),
        // 3. Malformed.
        ("13-byte runt", l.clone(), good4[..13].to_vec(), Malformed),
        (
            "IPv4 IHL 4",
            l.clone(),
            patch(good4.clone(), 14, &[0x44]),
            Malformed,
        ),
        (
            "IPv4 version 6 in an IPv4 EtherType",
            l.clone(),
            patch(good4.clone(), 14, &[0x65]),
            Malformed,
        ),
        (
            "IPv4 total length below IHL",
            l.clone(),
            patch(good4.clone(), 16, &[0, 19]),
            Malformed,
        ),
        (
            "IPv4 total length past the frame",
            l.clone(),
            patch(good4.clone(), 16, &[0x05, 0xdc]),
            Malformed,
        ),
        (
            "IPv4 header cut",
            l.clone(),
            good4[..30].to_vec(),
            Malformed,
        ),
        (
            "ARP body cut",
            l.clone(),
            arp(1, GUEST, OWN4, PEER4)[..30].to_vec(),
            Malformed,
        ),
        (
            "IPv6 version 4 in an IPv6 EtherType",
            l.clone(),
            patch(udp6_from(GUEST, OWN6, 1, 2), 14, &[0x45]),
            Malformed,
        ),
        (
            "IPv6 payload length past the frame",
            l.clone(),
            patch(udp6_from(GUEST, OWN6, 1, 2), 18, &[0x01, 0]),
            Malformed,
        ),
        // 4. ARP.
        (
            "ARP request from own IP",
            l.clone(),
            arp(1, GUEST, OWN4, PEER4),
            Pass,
        ),
        (
            "ARP reply from own IP",
            l.clone(),
            arp(2, GUEST, OWN4, PEER4),
            Pass,
        ),
        (
            "ARP from an IP inside an allowed prefix",
            l.clone(),
            arp(1, GUEST, Ipv4Addr::new(10, 0, 1, 77), PEER4),
            Pass,
        ),
        (
            "ARP probe (RFC 5227)",
            l.clone(),
            arp(1, GUEST, Ipv4Addr::UNSPECIFIED, OWN4),
            Pass,
        ),
        (
            "ARP probe as a reply",
            l.clone(),
            arp(2, GUEST, Ipv4Addr::UNSPECIFIED, OWN4),
            ArpSpoof,
        ),
        (
            "ARP probe with no IPv4 allowed",
            only_v6(),
            arp(1, GUEST, Ipv4Addr::UNSPECIFIED, OWN4),
            ArpSpoof,
        ),
        (
            "gratuitous ARP for own IP",
            l.clone(),
            arp(1, GUEST, OWN4, OWN4),
            Pass,
        ),
        (
            "gratuitous ARP for a foreign IP",
            l.clone(),
            arp(1, GUEST, FOREIGN4, FOREIGN4),
            ArpSpoof,
        ),
        (
            "ARP reply binding own MAC to a foreign IP",
            l.clone(),
            arp(2, GUEST, FOREIGN4, PEER4),
            ArpSpoof,
        ),
        (
            "ARP with a foreign sender MAC",
            l.clone(),
            arp(2, FOREIGN, OWN4, PEER4),
            ArpSpoof,
        ),
        (
            "ARP htype 6",
            l.clone(),
            patch(arp(1, GUEST, OWN4, PEER4), 14, &[0, 6]),
            ArpSpoof,
        ),
        (
            "ARP ptype IPv6",
            l.clone(),
            patch(arp(1, GUEST, OWN4, PEER4), 16, &[0x86, 0xdd]),
            ArpSpoof,
        ),
        (
            "ARP hlen 8",
            l.clone(),
            patch(arp(1, GUEST, OWN4, PEER4), 18, &[8]),
            ArpSpoof,
        ),
        (
            "ARP opcode 3 (RARP)",
            l.clone(),
            patch(arp(1, GUEST, OWN4, PEER4), 20, &[0, 3]),
            ArpSpoof,
        ),
        (
            "ARP header cut before opcode",
            l.clone(),
            arp(1, GUEST, OWN4, PEER4)[..20].to_vec(),
            Malformed,
        ),
        (
            "ARP from a VIF with empty lists",
            empty_lists(),
            arp(1, GUEST, OWN4, PEER4),
            ArpSpoof,
        ),
        // 5. IPv4.
        ("UDP from own IP", l.clone(), good4.clone(), Pass),
        (
            "UDP from an IP inside an allowed prefix",
            l.clone(),
            udp4_from(GUEST, Ipv4Addr::new(10, 0, 1, 200), 1, 2),
            Pass,
        ),
        (
            "UDP from a foreign IP",
            l.clone(),
            udp4_from(GUEST, FOREIGN4, 5000, 53),
            Ipv4Spoof,
        ),
        (
            "VM-c sends with VM-a's IP and its own MAC",
            l.clone(),
            udp4_from(GUEST, PEER4, 5000, 53),
            Ipv4Spoof,
        ),
        (
            "DHCP discover from 0.0.0.0",
            l.clone(),
            frames::udp4(
                GUEST,
                BROADCAST,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68,
                67,
                &[1; 32],
            ),
            Pass,
        ),
        (
            "DHCP discover with no IPv4 allowed",
            only_v6(),
            frames::udp4(
                GUEST,
                BROADCAST,
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                68,
                67,
                &[1; 32],
            ),
            Ipv4Spoof,
        ),
        (
            "DHCP offer sent by the VM",
            l.clone(),
            frames::udp4(
                GUEST,
                BROADCAST,
                OWN4,
                Ipv4Addr::BROADCAST,
                67,
                68,
                &[2; 32],
            ),
            DhcpServer,
        ),
        (
            "DHCP offer from a foreign IP",
            l.clone(),
            frames::udp4(
                GUEST,
                BROADCAST,
                FOREIGN4,
                Ipv4Addr::BROADCAST,
                67,
                68,
                &[2; 32],
            ),
            DhcpServer,
        ),
        (
            "UDP 0.0.0.0 to port 53",
            l.clone(),
            udp4_from(GUEST, Ipv4Addr::UNSPECIFIED, 68, 53),
            Ipv4Spoof,
        ),
        (
            "TCP from 0.0.0.0",
            l.clone(),
            frames::ethernet(
                GUEST,
                BROADCAST,
                0x0800,
                &frames::ipv4(Ipv4Addr::UNSPECIFIED, PEER4, 6, &[0; 20]),
            ),
            Ipv4Spoof,
        ),
        (
            "fragmented DHCP discover",
            l.clone(),
            patch(
                frames::udp4(
                    GUEST,
                    BROADCAST,
                    Ipv4Addr::UNSPECIFIED,
                    Ipv4Addr::BROADCAST,
                    68,
                    67,
                    &[1; 32],
                ),
                20,
                &[0x20, 0],
            ),
            Ipv4Spoof,
        ),
        (
            "later IPv4 fragment from own IP",
            l.clone(),
            patch(good4.clone(), 20, &[0, 8]),
            Pass,
        ),
        (
            "later IPv4 fragment from a foreign IP",
            l.clone(),
            patch(udp4_from(GUEST, FOREIGN4, 67, 68), 20, &[0, 8]),
            Ipv4Spoof,
        ),
        (
            "IPv4 with options from own IP",
            l.clone(),
            ethernet(GUEST, BROADCAST, 0x0800, &ipv4_with_options(OWN4)),
            Pass,
        ),
        (
            "UDP header cut in a first fragment",
            l.clone(),
            ethernet(
                GUEST,
                BROADCAST,
                0x0800,
                &frames::ipv4(OWN4, PEER4, 17, &[0, 67, 0]),
            ),
            Malformed,
        ),
        (
            "IPv4 from a VIF with empty lists",
            empty_lists(),
            good4.clone(),
            Ipv4Spoof,
        ),
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
    ];
    let mut out: Vec<Case> = v
        .drain(..)
        .map(|(name, policy, frame, expect)| Case {
            name,
            policy,
            frame,
            expect,
        })
        .collect();
    out.sort_by_key(|c| c.name);
    out
}

fn ipv4_with_options(src: Ipv4Addr) -> Vec<u8> {
    // IHL 6: one 4-byte option word (NOP NOP NOP EOL), then 8 bytes of UDP.
    let mut h = vec![0x46, 0, 0, 32, 0, 0, 0, 0, 64, 17, 0, 0];
    h.extend_from_slice(&src.octets());
    h.extend_from_slice(&PEER4.octets());
    h.extend_from_slice(&[1, 1, 1, 0]);
    let c = pnet::packet::util::checksum(&h, 5);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&[0x13, 0x88, 0, 53, 0, 8, 0, 0]);
    h
}

/// Frames the host sends toward the guest, with the reason POLICY.md's to-VM rules give.
pub fn to_vm_cases() -> Vec<Case> {
    let l = locked_policy();
    let ll = ll();
    let to4 = |dst_mac, dst| frames::udp4(OTHER, dst_mac, PEER4, dst, 53, 5000, b"reply");
    let to6 = |dst_mac, dst| frames::udp6(OTHER, dst_mac, PEER6, dst, 53, 5000, b"reply");
    let v: Vec<(&'static str, VifPolicy, Vec<u8>, Reason)> = vec![
        (
            "to-VM: unlocked passes foreign unicast",
            with(EffectiveMode::Unlocked),
            to4(FOREIGN, FOREIGN4),
            Pass,
        ),
        (
            "to-VM: disabled drops genuine unicast",
            with(EffectiveMode::Disabled),
            to4(GUEST, OWN4),
            Disabled,
        ),
        (
            "to-VM: disabled drops broadcast",
            with(EffectiveMode::Disabled),
            frames::arp(OTHER, BROADCAST, 1, OTHER, PEER4, [0; 6], OWN4),
            Disabled,
        ),
        (
            "to-VM: broadcast ARP",
            l.clone(),
            frames::arp(OTHER, BROADCAST, 1, OTHER, PEER4, [0; 6], OWN4),
            Pass,
        ),
        (
            "to-VM: ARP reply to the guest",
            l.clone(),
            frames::arp(OTHER, GUEST, 2, OTHER, PEER4, GUEST, OWN4),
            Pass,
        ),
        (
            "to-VM: multicast NS",
            l.clone(),
            frames::icmp6(
                OTHER,
                multicast_mac(solicited_node(OWN6)),
                PEER6,
                solicited_node(OWN6),
                135,
                &nd_body(0, OWN6, &[ll_option(1, OTHER)]),
            ),
            Pass,
        ),
        (
            "to-VM: LLDP multicast",
            l.clone(),
            ethernet(OTHER, [0x01, 0x80, 0xc2, 0, 0, 0x0e], 0x88cc, &[0; 20]),
            Pass,
        ),
        (
            "to-VM: flooded unicast for another VM",
            l.clone(),
            to4(FOREIGN, FOREIGN4),
            RxForeignMac,
        ),
        (
            "to-VM: flooded unicast IPv6 for another VM",
            l.clone(),
            to6(FOREIGN, FOREIGN6),
            RxForeignMac,
        ),
        (
            "to-VM: unicast to own IPv4",
            l.clone(),
            to4(GUEST, OWN4),
            Pass,
        ),
        (
            "to-VM: unicast into an allowed prefix",
            l.clone(),
            to4(GUEST, Ipv4Addr::new(10, 0, 1, 5)),
            Pass,
        ),
        (
            "to-VM: guest MAC but a foreign IPv4",
            l.clone(),
            to4(GUEST, FOREIGN4),
            RxForeignIp,
        ),
        (
            "to-VM: limited broadcast IP to the guest MAC",
            l.clone(),
            to4(GUEST, Ipv4Addr::BROADCAST),
            Pass,
        ),
        (
            "to-VM: IPv4 multicast to the guest MAC",
            l.clone(),
            to4(GUEST, Ipv4Addr::new(224, 0, 0, 251)),
            Pass,
        ),
        (
            "to-VM: unicast to own IPv6",
            l.clone(),
            to6(GUEST, OWN6),
            Pass,
        ),
        (
            "to-VM: unicast to the link-local address",
            l.clone(),
            to6(GUEST, ll),
            Pass,
        ),
        (
            "to-VM: guest MAC but a foreign IPv6",
            l.clone(),
            to6(GUEST, FOREIGN6),
            RxForeignIp,
        ),
        (
            "to-VM: IPv6 multicast to the guest MAC",
            l.clone(),
            to6(GUEST, ALL_NODES),
            Pass,
        ),
        (
            "to-VM: unicast NS to a foreign target address",
            l.clone(),
            frames::icmp6(
                OTHER,
                GUEST,
                PEER6,
                FOREIGN6,
                135,
                &nd_body(0, FOREIGN6, &[]),
            ),
            Pass,
        ),
        (
            "to-VM: IPv6 to the link-local with no IPv6 allowed",
            only_v4(),
            to6(GUEST, ll),
            RxForeignIp,
        ),
        (
            "to-VM: IPv4 with no IPv4 allowed",
            only_v6(),
            to4(GUEST, OWN4),
            RxForeignIp,
        ),
        (
            "to-VM: IPv4 header cut",
            l.clone(),
            to4(GUEST, OWN4)[..30].to_vec(),
            Malformed,
        ),
        (
            "to-VM: IPv6 header cut",
            l.clone(),
            to6(GUEST, OWN6)[..50].to_vec(),
            Malformed,
        ),
        (
            "to-VM: 13-byte runt",
            l.clone(),
            to4(GUEST, OWN4)[..13].to_vec(),
            Malformed,
        ),
        (
            "to-VM: unknown EtherType to the guest",
            l.clone(),
            ethernet(OTHER, GUEST, 0x88b5, &[0; 30]),
            Pass,
        ),
    ];
    v.into_iter()
        .map(|(name, policy, frame, expect)| Case {
            name,
            policy,
            frame,
            expect,
        })
        .collect()
}
