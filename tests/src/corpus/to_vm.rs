//! The to-VM rules: frames the host sends toward the guest.
use std::net::Ipv4Addr;

use lockd_common::{
    Reason::*,
    policy::{EffectiveMode, solicited_node},
};
use lockd_kit::frames::{self, BROADCAST, ethernet, ll_option, multicast_mac, nd_body};

use super::*;

/// Frames the host sends toward the guest, with the reason POLICY.md's to-VM rules give.
pub fn cases() -> Vec<Case> {
    let l = locked_policy();
    let ll = ll();
    let to4 = |dst_mac, dst| frames::udp4(OTHER, dst_mac, PEER4, dst, 53, 5000, b"reply");
    let to6 = |dst_mac, dst| frames::udp6(OTHER, dst_mac, PEER6, dst, 53, 5000, b"reply");
    let v: Vec<Row> = vec![
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
    into_cases(v)
}
