//! Rules 4–5: ARP and IPv4.
use std::net::Ipv4Addr;

use lockd_common::Reason::*;
use lockd_kit::frames::{self, BROADCAST, ethernet};

use super::*;

pub(super) fn rows() -> Vec<Row> {
    let l = locked_policy();
    let good4 = udp4_from(GUEST, OWN4, 5000, 53);
    vec![
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
    ]
}
