//! Modes, then rules 1–3 (MAC, EtherType, malformed frames).

use lockd_common::{Reason::*, policy::EffectiveMode};
use lockd_kit::frames::{BROADCAST, ethernet};

use super::*;

pub(super) fn rows() -> Vec<Row> {
    let l = locked_policy();
    let good4 = udp4_from(GUEST, OWN4, 5000, 53);
    vec![
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
    ]
}
