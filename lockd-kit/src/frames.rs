//! Frame builders (pnet) for the demo, the tests and the benchmark. Checksums are always valid:
//! bridged IPv4 may pass through netfilter, which silently eats bad ones.

use std::net::{Ipv4Addr, Ipv6Addr};

use pnet::packet::{
    MutablePacket as _,
    arp::{ArpHardwareTypes, ArpOperation, MutableArpPacket},
    ethernet::{EtherType, EtherTypes, MutableEthernetPacket},
    icmpv6::{self, Icmpv6Packet},
    ip::{IpNextHeaderProtocol, IpNextHeaderProtocols},
    ipv4::{self, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    udp::{self, MutableUdpPacket},
};

pub type Mac = [u8; 6];
pub const BROADCAST: Mac = [0xff; 6];

/// An Ethernet frame with the given EtherType and payload.
pub fn ethernet(src: Mac, dst: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 14 + payload.len()];
    let mut eth = MutableEthernetPacket::new(&mut buf).expect("sized above");
    eth.set_source(src.into());
    eth.set_destination(dst.into());
    eth.set_ethertype(EtherType(ethertype));
    eth.payload_mut().copy_from_slice(payload);
    buf
}

/// An Ethernet/IPv4 ARP packet.
pub fn arp(
    src: Mac,
    dst: Mac,
    op: u16,
    sha: Mac,
    spa: Ipv4Addr,
    tha: Mac,
    tpa: Ipv4Addr,
) -> Vec<u8> {
    let mut body = [0u8; 28];
    let mut a = MutableArpPacket::new(&mut body).expect("28 bytes");
    a.set_hardware_type(ArpHardwareTypes::Ethernet);
    a.set_protocol_type(EtherTypes::Ipv4);
    a.set_hw_addr_len(6);
    a.set_proto_addr_len(4);
    a.set_operation(ArpOperation(op));
    a.set_sender_hw_addr(sha.into());
    a.set_sender_proto_addr(spa);
    a.set_target_hw_addr(tha.into());
    a.set_target_proto_addr(tpa);
    ethernet(src, dst, 0x0806, &body)
}

/// An IPv4 packet around `payload` (protocol `proto`), checksummed.
pub fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 20 + payload.len()];
    let mut ip = MutableIpv4Packet::new(&mut buf).expect("sized above");
    ip.set_version(4);
    ip.set_header_length(5);
    ip.set_total_length((20 + payload.len()) as u16);
    ip.set_ttl(64);
    ip.set_next_level_protocol(IpNextHeaderProtocol(proto));
    ip.set_source(src);
    ip.set_destination(dst);
    ip.set_payload(payload);
    let c = ipv4::checksum(&ip.to_immutable());
    ip.set_checksum(c);
    buf
}

/// A UDP datagram in IPv4 in Ethernet.
pub fn udp4(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    let mut p = MutableUdpPacket::new(&mut u).expect("sized above");
    p.set_source(sport);
    p.set_destination(dport);
    p.set_length((8 + payload.len()) as u16);
    p.set_payload(payload);
    let c = udp::ipv4_checksum(&p.to_immutable(), &src, &dst);
    p.set_checksum(c);
    ethernet(src_mac, dst_mac, 0x0800, &ipv4(src, dst, 17, &u))
}

/// An IPv6 packet with `next_header` and raw payload (extension headers included).
pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 40 + payload.len()];
    let mut ip = MutableIpv6Packet::new(&mut buf).expect("sized above");
    ip.set_version(6);
    ip.set_payload_length(payload.len() as u16);
    ip.set_next_header(IpNextHeaderProtocol(next_header));
    ip.set_hop_limit(255);
    ip.set_source(src);
    ip.set_destination(dst);
    ip.set_payload(payload);
    buf
}

/// An ICMPv6 message (type, code, body after the checksum) with its checksum filled in.
pub fn icmpv6_msg(src: Ipv6Addr, dst: Ipv6Addr, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    let c = icmpv6::checksum(&Icmpv6Packet::new(&m).expect("≥ 4 bytes"), &src, &dst);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

/// ICMPv6 in IPv6 in Ethernet.
pub fn icmp6(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ty: u8,
    body: &[u8],
) -> Vec<u8> {
    let m = icmpv6_msg(src, dst, ty, 0, body);
    ethernet(
        src_mac,
        dst_mac,
        0x86dd,
        &ipv6(src, dst, IpNextHeaderProtocols::Icmpv6.0, &m),
    )
}

/// A UDP datagram in IPv6 in Ethernet.
pub fn udp6(
    src_mac: Mac,
    dst_mac: Mac,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut u = vec![0u8; 8 + payload.len()];
    let mut p = MutableUdpPacket::new(&mut u).expect("sized above");
    p.set_source(sport);
    p.set_destination(dport);
    p.set_length((8 + payload.len()) as u16);
    p.set_payload(payload);
    let c = udp::ipv6_checksum(&p.to_immutable(), &src, &dst);
    p.set_checksum(c);
    ethernet(src_mac, dst_mac, 0x86dd, &ipv6(src, dst, 17, &u))
}

/// A link-layer address option (RFC 4861 4.6.1): type 1 source, 2 target.
pub fn ll_option(ty: u8, mac: Mac) -> Vec<u8> {
    let mut o = vec![ty, 1];
    o.extend_from_slice(&mac);
    o
}

/// The body of an NS or NA after the checksum: 4 flag/reserved bytes, the target, options.
pub fn nd_body(flags: u32, target: Ipv6Addr, options: &[Vec<u8>]) -> Vec<u8> {
    let mut b = flags.to_be_bytes().to_vec();
    b.extend_from_slice(&target.octets());
    for o in options {
        b.extend_from_slice(o);
    }
    b
}

/// The IPv6 multicast MAC for a group (RFC 2464 7): 33:33 + last four bytes.
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}
