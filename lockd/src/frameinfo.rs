//! What an operator wants to read off a frame: its addresses, its protocol and a one-line
//! summary (`lockd monitor`, `lockd explain`). Reads only what is there: a truncated or
//! garbage frame gets empty fields and a summary saying so, never a panic.

use std::net::{Ipv4Addr, Ipv6Addr};

use lockd_common::{policy::format_mac, proto::*};

/// The fields of one frame, as strings ready to print.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrameInfo {
    pub src_mac: String,
    pub dst_mac: String,
    /// IPv4/IPv6 source; for ARP, the sender's protocol address.
    pub src_ip: String,
    /// IPv4/IPv6 destination; for ARP, the target's protocol address.
    pub dst_ip: String,
    /// `arp`, `ipv4/udp`, `ipv6/icmpv6/135`, `ethertype 0x8100`, …
    pub proto: String,
    pub summary: String,
}

fn arr<const N: usize>(f: &[u8], off: usize) -> Option<[u8; N]> {
    f.get(off..off + N)?.try_into().ok()
}

fn be16(f: &[u8], off: usize) -> Option<u16> {
    arr::<2>(f, off).map(u16::from_be_bytes)
}

fn ip_proto_name(p: u8) -> String {
    match p {
        IPPROTO_ICMP => "icmp".into(),
        IPPROTO_IGMP => "igmp".into(),
        IPPROTO_TCP => "tcp".into(),
        IPPROTO_UDP => "udp".into(),
        IPPROTO_ICMPV6 => "icmpv6".into(),
        n => format!("proto {n}"),
    }
}

fn icmpv6_name(t: u8) -> &'static str {
    match t {
        ICMPV6_ECHO_REQUEST => "echo request",
        ICMPV6_ECHO_REPLY => "echo reply",
        ICMPV6_MLD_QUERY => "MLD query",
        ICMPV6_MLD_REPORT | ICMPV6_MLD2_REPORT => "MLD report",
        ICMPV6_ROUTER_SOLICIT => "router solicitation",
        ICMPV6_ROUTER_ADVERT => "router advertisement",
        ICMPV6_NEIGHBOUR_SOLICIT => "neighbour solicitation",
        ICMPV6_NEIGHBOUR_ADVERT => "neighbour advertisement",
        ICMPV6_REDIRECT => "redirect",
        _ => "",
    }
}

/// Ports of a TCP or UDP header at `l4`, as ` sport → dport`.
fn ports(f: &[u8], l4: usize) -> String {
    match (be16(f, l4), be16(f, l4 + 2)) {
        (Some(s), Some(d)) => format!(" {s} → {d}"),
        _ => String::new(),
    }
}

/// Reads `frame` (the first bytes of it are enough; `len` is its length on the wire).
pub fn describe(frame: &[u8], len: usize) -> FrameInfo {
    let mut i = FrameInfo::default();
    let (Some(dst), Some(src), Some(ethertype)) =
        (arr::<6>(frame, 0), arr::<6>(frame, 6), be16(frame, 12))
    else {
        i.proto = "truncated".into();
        i.summary = format!("{len} bytes: shorter than an Ethernet header");
        return i;
    };
    i.dst_mac = format_mac(dst);
    i.src_mac = format_mac(src);
    let l3 = ETH_HLEN;
    let what = match ethertype {
        ETH_P_ARP => {
            i.proto = "arp".into();
            match (
                be16(frame, l3 + 6),
                arr::<4>(frame, l3 + 14),
                arr::<4>(frame, l3 + 24),
            ) {
                (Some(op), Some(spa), Some(tpa)) => {
                    i.src_ip = Ipv4Addr::from(spa).to_string();
                    i.dst_ip = Ipv4Addr::from(tpa).to_string();
                    let sha = arr::<6>(frame, l3 + 8).map(format_mac).unwrap_or_default();
                    match op {
                        ARPOP_REQUEST => {
                            format!("ARP who-has {} tell {} ({sha})", i.dst_ip, i.src_ip)
                        }
                        ARPOP_REPLY => format!("ARP reply {} is-at {sha}", i.src_ip),
                        n => format!("ARP op {n}"),
                    }
                }
                _ => "ARP, truncated".into(),
            }
        }
        ETH_P_IP => match arr::<20>(frame, l3) {
            Some(h) => {
                let ihl = usize::from(h[0] & 0x0f) * 4;
                i.src_ip = Ipv4Addr::new(h[12], h[13], h[14], h[15]).to_string();
                i.dst_ip = Ipv4Addr::new(h[16], h[17], h[18], h[19]).to_string();
                i.proto = format!("ipv4/{}", ip_proto_name(h[9]));
                let first = u16::from_be_bytes([h[6], h[7]]) & 0x1fff == 0;
                let extra = if first && (h[9] == IPPROTO_TCP || h[9] == IPPROTO_UDP) {
                    ports(frame, l3 + ihl)
                } else if !first {
                    " (later fragment)".into()
                } else {
                    String::new()
                };
                format!(
                    "IPv4 {} → {} {}{extra}",
                    i.src_ip,
                    i.dst_ip,
                    ip_proto_name(h[9]).to_uppercase()
                )
            }
            None => {
                i.proto = "ipv4".into();
                "IPv4, truncated".into()
            }
        },
        ETH_P_IPV6 => match (
            arr::<8>(frame, l3),
            arr::<16>(frame, l3 + 8),
            arr::<16>(frame, l3 + 24),
        ) {
            (Some(h), Some(s), Some(d)) => {
                i.src_ip = Ipv6Addr::from(s).to_string();
                i.dst_ip = Ipv6Addr::from(d).to_string();
                let next = h[6];
                let extra = match next {
                    IPPROTO_ICMPV6 => match frame.get(l3 + 40) {
                        Some(&t) => {
                            i.proto = format!("ipv6/icmpv6/{t}");
                            let name = icmpv6_name(t);
                            let target = if t == ICMPV6_NEIGHBOUR_SOLICIT || t == ICMPV6_NEIGHBOUR_ADVERT {
                                arr::<16>(frame, l3 + 48)
                                    .map(|a| format!(" target {}", Ipv6Addr::from(a)))
                                    .unwrap_or_default()
                            } else {
                                String::new()
                            };
                            if name.is_empty() {
                                format!(" type {t}{target}")
                            } else {
                                format!(" {name}{target}")
                            }
                        }
                        None => {
                            i.proto = "ipv6/icmpv6".into();
                            String::new()
                        }
                    },
                    IPPROTO_TCP | IPPROTO_UDP => {
                        i.proto = format!("ipv6/{}", ip_proto_name(next));
                        ports(frame, l3 + 40)
                    }
                    n => {
                        i.proto = format!("ipv6/{}", ip_proto_name(n));
                        String::new()
                    }
                };
                format!(
                    "IPv6 {} → {} {}{extra}",
                    i.src_ip,
                    i.dst_ip,
                    ip_proto_name(next).to_uppercase()
                )
            }
            _ => {
                i.proto = "ipv6".into();
                "IPv6, truncated".into()
            }
        },
        t => {
            i.proto = format!("ethertype 0x{t:04x}");
            match t {
                ETH_P_8021Q | ETH_P_8021AD => "802.1Q-tagged frame".into(),
                _ => format!("EtherType 0x{t:04x}"),
            }
        }
    };
    i.summary = format!("{} → {} {what}, {len} bytes", i.src_mac, i.dst_mac);
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_truncations_never_panic() {
        let arp = [
            0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 2, 0, 0, 0, 0, 1, 8, 6, 0, 1, 8, 0, 6, 4, 0, 1,
            2, 0, 0, 0, 0, 1, 10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 10, 0, 0, 1,
        ];
        let i = describe(&arp, arp.len());
        assert_eq!(i.src_mac, "02:00:00:00:00:01");
        assert_eq!(i.src_ip, "10.0.0.9");
        assert_eq!(i.dst_ip, "10.0.0.1");
        assert_eq!(i.proto, "arp");
        assert!(
            i.summary.contains("who-has 10.0.0.1 tell 10.0.0.9"),
            "{}",
            i.summary
        );
        for n in 0..arp.len() {
            let _ = describe(&arp[..n], n);
        }
        let mut x = 0x12345678u32;
        for _ in 0..2000 {
            let v: Vec<u8> = (0..(x % 90) as usize)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = describe(&v, v.len());
        }
    }
}
