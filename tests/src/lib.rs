//! Shared pieces of lockd's test tiers: the hand-written frame corpus (one or more frames for
//! every rule and reason of POLICY.md) and the seeded random frame and policy generator.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use lockd_common::{
    Reason,
    policy::{EffectiveMode, VifPolicy, link_local, solicited_node},
};
use lockd_kit::frames::{self, BROADCAST, Mac, multicast_mac};
use rand::{Rng, RngCore, SeedableRng, rngs::SmallRng};

pub mod bpffs;
pub mod corpus;
pub mod daemon;
pub mod etcd;
pub mod random;
pub mod scene;
pub mod txring;
pub mod wire;

pub const GUEST: Mac = [0x02, 0, 0, 0, 0, 0x0b];
pub const FOREIGN: Mac = [0x02, 0, 0, 0, 0, 0x0c];
pub const OTHER: Mac = [0x02, 0, 0, 0, 0, 0x0a];
pub const OWN4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const NET4: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 0);
pub const FOREIGN4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub const PEER4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const OWN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
pub const NET6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0);
pub const FOREIGN6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
pub const PEER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
pub const MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);

/// The corpus's standard policy: locked, A4 = {10.0.0.2, 10.0.1.0/24},
/// A6 = {2001:db8::2, 2001:db8:1::/64}.
pub fn locked_policy() -> VifPolicy {
    VifPolicy {
        mode: EffectiveMode::Locked,
        mac: GUEST,
        ipv4: vec![
            Ipv4Network::new(OWN4, 32).unwrap(),
            Ipv4Network::new(NET4, 24).unwrap(),
        ],
        ipv6: vec![
            Ipv6Network::new(OWN6, 128).unwrap(),
            Ipv6Network::new(NET6, 64).unwrap(),
        ],
        rate: None,
    }
}

/// The guest's derived link-local address.
pub fn ll() -> Ipv6Addr {
    link_local(GUEST)
}

/// One hand-written case: a frame, the policy it meets, and the reason POLICY.md gives.
#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub policy: VifPolicy,
    pub frame: Vec<u8>,
    pub expect: Reason,
}

/// Formats bytes as hex for failure messages.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// DAD probe for `target` (RFC 4862 5.4.2).
pub fn dad_ns(target: Ipv6Addr) -> Vec<u8> {
    let sn = solicited_node(target);
    frames::icmp6(
        GUEST,
        multicast_mac(sn),
        Ipv6Addr::UNSPECIFIED,
        sn,
        135,
        &frames::nd_body(0, target, &[]),
    )
}

/// UDP/IPv4 from the guest.
pub fn udp4_from(src_mac: Mac, src: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::udp4(src_mac, BROADCAST, src, PEER4, sport, dport, b"lockd")
}

/// UDP/IPv6 from the guest.
pub fn udp6_from(src_mac: Mac, src: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::udp6(
        src_mac,
        multicast_mac(ALL_NODES),
        src,
        PEER6,
        sport,
        dport,
        b"lockd",
    )
}

/// A seeded RNG and the seed, printed so a failure can be replayed.
pub fn seeded_rng(name: &str) -> (SmallRng, u64) {
    let seed = std::env::var("LOCKD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().next_u64());
    eprintln!("{name}: seed {seed} (replay with LOCKD_SEED={seed})");
    (SmallRng::seed_from_u64(seed), seed)
}

/// A random element of a slice.
pub fn pick<'a, T>(rng: &mut impl Rng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A BOOTP message (RFC 951 fixed header, 236 bytes, then the DHCP magic cookie and an end
/// option): `op` 1 request / 2 reply, hardware type and length, client hardware address.
pub fn bootp(op: u8, htype: u8, hlen: u8, chaddr: Mac) -> Vec<u8> {
    let mut b = vec![0u8; 236];
    (b[0], b[1], b[2]) = (op, htype, hlen);
    b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    b[28..34].copy_from_slice(&chaddr);
    b.extend_from_slice(&[99, 130, 83, 99, 255]);
    b
}

/// A DHCP client message (UDP 68 → 67, to broadcast) from the guest MAC and `src`.
pub fn dhcp_client(src: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    frames::udp4(GUEST, BROADCAST, src, Ipv4Addr::BROADCAST, 68, 67, payload)
}

/// An IGMP message of `ty` (0x11 query, 0x16 v2 report, 0x22 v3 report) from the guest.
pub fn igmp(src: Ipv4Addr, group: Ipv4Addr, ty: u8) -> Vec<u8> {
    let mut m = vec![ty, 100, 0, 0];
    m.extend_from_slice(&group.octets());
    let c = pnet::packet::util::checksum(&m, 1);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    frames::ethernet(
        GUEST,
        BROADCAST,
        0x0800,
        &frames::ipv4(src, Ipv4Addr::new(224, 0, 0, 1), 2, &m),
    )
}
