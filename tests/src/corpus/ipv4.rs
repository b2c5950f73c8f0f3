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
            "ARP probe for another tenant's address",
            l.clone(),
            arp(1, GUEST, Ipv4Addr::UNSPECIFIED, FOREIGN4),
            ArpSpoof,
        ),
        (
            "ARP probe for an address in an allowed prefix",
            l.clone(),
            arp(1, GUEST, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(10, 0, 1, 9)),
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
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(1, 1, 6, GUEST)),
            Pass,
        ),
        // v2: a DHCP client message is a BOOTREQUEST for the guest's own MAC.
        (
            "DHCP request from own address",
            l.clone(),
            dhcp_client(OWN4, &bootp(1, 1, 6, GUEST)),
            Pass,
        ),
        (
            "DHCP discover with another VM's chaddr",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(1, 1, 6, OTHER)),
            DhcpSpoof,
        ),
        (
            "DHCP discover with a random chaddr",
            l.clone(),
            dhcp_client(
                Ipv4Addr::UNSPECIFIED,
                &bootp(1, 1, 6, [0x5e, 0x1f, 0x33, 0x02, 0x91, 0x7c]),
            ),
            DhcpSpoof,
        ),
        (
            "DHCPRELEASE from own address on another VM's behalf",
            l.clone(),
            dhcp_client(OWN4, &bootp(1, 1, 6, OTHER)),
            DhcpSpoof,
        ),
        (
            "BOOTREPLY from the client port",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(2, 1, 6, GUEST)),
            DhcpSpoof,
        ),
        (
            "DHCP discover with htype 6",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(1, 6, 6, GUEST)),
            DhcpSpoof,
        ),
        (
            "DHCP discover with hlen 16",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(1, 1, 16, GUEST)),
            DhcpSpoof,
        ),
        (
            "DHCP discover with its BOOTP header cut at chaddr",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &bootp(1, 1, 6, GUEST)[..43]),
            Malformed,
        ),
        (
            "DHCP discover with no BOOTP header",
            l.clone(),
            dhcp_client(Ipv4Addr::UNSPECIFIED, &[]),
            Malformed,
        ),
        (
            "DHCP discover from a foreign address",
            l.clone(),
            dhcp_client(FOREIGN4, &bootp(1, 1, 6, GUEST)),
            Ipv4Spoof,
        ),
        // v2: a DHCP server or relay answers on any source port; clients check only port 68.
        (
            "DHCP offer to port 68 from port 1067",
            l.clone(),
            frames::udp4(
                GUEST,
                BROADCAST,
                OWN4,
                Ipv4Addr::BROADCAST,
                1067,
                68,
                &bootp(2, 1, 6, OTHER),
            ),
            DhcpServer,
        ),
        (
            "UDP to port 68 from own address",
            l.clone(),
            udp4_from(GUEST, OWN4, 40000, 68),
            DhcpServer,
        ),
        // v2: IGMP queries win the querier election.
        (
            "IGMPv2 membership query",
            l.clone(),
            igmp(OWN4, Ipv4Addr::UNSPECIFIED, 0x11),
            McQuerier,
        ),
        (
            "IGMP query from a foreign address",
            l.clone(),
            igmp(FOREIGN4, Ipv4Addr::UNSPECIFIED, 0x11),
            McQuerier,
        ),
        (
            "IGMPv2 report from own address",
            l.clone(),
            igmp(OWN4, Ipv4Addr::new(239, 1, 1, 1), 0x16),
            Pass,
        ),
        (
            "IGMPv3 report from a foreign address",
            l.clone(),
            igmp(FOREIGN4, Ipv4Addr::new(239, 1, 1, 1), 0x22),
            Ipv4Spoof,
        ),
        (
            "IGMP header cut short",
            l.clone(),
            frames::ethernet(
                GUEST,
                BROADCAST,
                0x0800,
                &frames::ipv4(OWN4, Ipv4Addr::new(224, 0, 0, 1), 2, &[0x11, 100, 0, 0]),
            ),
            Malformed,
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
