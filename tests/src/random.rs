//! Seeded random policies and frames for the differential tests: corpus frames mutated where
//! the parser looks (header fields, lengths, option bytes), fresh frames built from address
//! pools, and plain random bytes.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use lockd_common::policy::{EffectiveMode, RateLimit, VifPolicy, solicited_node};
use lockd_kit::frames::{self, BROADCAST, ll_option, multicast_mac, nd_body};
use rand::{Rng, seq::SliceRandom};

use crate::{corpus, *};

fn v4_pool() -> Vec<Ipv4Network> {
    vec![
        Ipv4Network::new(OWN4, 32).unwrap(),
        Ipv4Network::new(NET4, 24).unwrap(),
        Ipv4Network::new(FOREIGN4, 32).unwrap(),
        Ipv4Network::new(Ipv4Addr::new(10, 0, 0, 0), 30).unwrap(),
        Ipv4Network::new(Ipv4Addr::new(0, 0, 0, 0), 0).unwrap(),
        Ipv4Network::new(Ipv4Addr::new(192, 168, 0, 0), 16).unwrap(),
    ]
}

fn v6_pool() -> Vec<Ipv6Network> {
    vec![
        Ipv6Network::new(OWN6, 128).unwrap(),
        Ipv6Network::new(NET6, 64).unwrap(),
        Ipv6Network::new(FOREIGN6, 128).unwrap(),
        Ipv6Network::new(PEER6, 127).unwrap(),
        Ipv6Network::new("fe80::".parse().unwrap(), 10).unwrap(),
        Ipv6Network::new(Ipv6Addr::UNSPECIFIED, 0).unwrap(),
    ]
}

/// A random policy over the corpus's addresses, mostly locked.
pub fn policy(rng: &mut impl Rng) -> VifPolicy {
    let mode = match rng.random_range(0..10) {
        0 => EffectiveMode::Unlocked,
        1 => EffectiveMode::Disabled,
        _ => EffectiveMode::Locked,
    };
    let mac = *pick(rng, &[GUEST, GUEST, GUEST, FOREIGN]);
    let mut v4 = v4_pool();
    v4.shuffle(rng);
    let n4 = rng.random_range(0..=3);
    let mut v6 = v6_pool();
    v6.shuffle(rng);
    let n6 = rng.random_range(0..=3);
    // A limit too high to bite: the limiter's code runs, and the verdict stays the model's.
    let rate = rng.random_bool(0.3).then_some(RateLimit {
        kbps: 1 << 30,
        timeslice_us: 50_000,
    });
    let mut ipv4: Vec<Ipv4Network> = v4.into_iter().take(n4).collect();
    let mut ipv6: Vec<Ipv6Network> = v6.into_iter().take(n6).collect();
    // Now and then more exact addresses than a config holds inline, so the hash maps are used.
    if rng.random_bool(0.25) {
        for i in 0..rng.random_range(4..8u8) {
            ipv4.push(Ipv4Network::new(Ipv4Addr::new(10, 9, 0, i), 32).unwrap());
            ipv6.push(
                Ipv6Network::new(
                    Ipv6Addr::new(0x2001, 0xdb8, 9, 0, 0, 0, 0, u16::from(i)),
                    128,
                )
                .unwrap(),
            );
        }
    }
    // Likewise prefixes: with the pool's, sometimes more than fit inline, so the tries are used.
    if rng.random_bool(0.25) {
        for i in 0..rng.random_range(2..6u8) {
            ipv4.push(Ipv4Network::new(Ipv4Addr::new(10, 8, i, 0), 24).unwrap());
            ipv6.push(
                Ipv6Network::new(
                    Ipv6Addr::new(0x2001, 0xdb8, 8, u16::from(i), 0, 0, 0, 0),
                    64,
                )
                .unwrap(),
            );
        }
    }
    VifPolicy {
        mode,
        mac,
        ipv4,
        ipv6,
        rate,
    }
}

fn addr4(rng: &mut impl Rng) -> Ipv4Addr {
    *pick(
        rng,
        &[
            OWN4,
            FOREIGN4,
            PEER4,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 1, 9),
        ],
    )
}

fn addr6(rng: &mut impl Rng) -> Ipv6Addr {
    *pick(
        rng,
        &[
            OWN6,
            FOREIGN6,
            PEER6,
            Ipv6Addr::UNSPECIFIED,
            ll(),
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 9),
        ],
    )
}

fn mac(rng: &mut impl Rng) -> frames::Mac {
    *pick(rng, &[GUEST, GUEST, GUEST, FOREIGN])
}

/// A well-formed frame of a random kind from the address pools.
fn fresh(rng: &mut impl Rng) -> Vec<u8> {
    let m = mac(rng);
    match rng.random_range(0..11) {
        8 => {
            // BOOTP with random op, htype, hlen and chaddr, sometimes cut, on DHCP ports
            // in either role.
            let chaddr = *pick(rng, &[GUEST, GUEST, FOREIGN, OTHER, [0x5e, 1, 2, 3, 4, 5]]);
            let mut b = crate::bootp(
                *pick(rng, &[1u8, 1, 2, 0, 3]),
                *pick(rng, &[1u8, 1, 6, 0]),
                *pick(rng, &[6u8, 6, 0, 16]),
                chaddr,
            );
            if rng.random_bool(0.2) {
                let n = rng.random_range(0..b.len());
                b.truncate(n);
            }
            frames::udp4(
                m,
                BROADCAST,
                *pick(rng, &[Ipv4Addr::UNSPECIFIED, OWN4, FOREIGN4]),
                Ipv4Addr::BROADCAST,
                *pick(rng, &[68, 68, 67, 1067]),
                *pick(rng, &[67, 67, 68, 53]),
                &b,
            )
        }
        9 => crate::igmp(
            addr4(rng),
            *pick(rng, &[Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(239, 1, 1, 1)]),
            *pick(rng, &[0x11, 0x16, 0x17, 0x22, 0x12]),
        ),
        10 => {
            // MLD queries, reports and done, and router renumbering.
            let ty = *pick(rng, &[130u8, 131, 132, 143, 138]);
            let (src, dst) = (addr6(rng), addr6(rng));
            frames::icmp6(m, multicast_mac(dst), src, dst, ty, &[0; 20])
        }
        0 => frames::arp(
            m,
            BROADCAST,
            rng.random_range(1..=2),
            mac(rng),
            addr4(rng),
            [0; 6],
            addr4(rng),
        ),
        1 => frames::udp4(
            m,
            BROADCAST,
            addr4(rng),
            addr4(rng),
            *pick(rng, &[67, 68, 53, 5000, 546, 547]),
            *pick(rng, &[67, 68, 53, 546, 547]),
            &[0; 8],
        ),
        2 => frames::udp6(
            m,
            BROADCAST,
            addr6(rng),
            addr6(rng),
            *pick(rng, &[546, 547, 53, 67, 68, 5000]),
            *pick(rng, &[546, 547, 53, 67, 68]),
            &[0; 8],
        ),
        3 | 4 => {
            let (src, target) = (addr6(rng), addr6(rng));
            let dst = if rng.random_bool(0.5) {
                solicited_node(target)
            } else {
                addr6(rng)
            };
            let mut opts = Vec::new();
            for _ in 0..rng.random_range(0..3) {
                opts.push(ll_option(rng.random_range(1..=3), mac(rng)));
            }
            let ty = *pick(rng, &[133, 134, 135, 136, 137, 131, 143, 128]);
            let body = if ty == 133 {
                [vec![0; 4], opts.concat()].concat()
            } else {
                nd_body(0, target, &opts)
            };
            frames::icmp6(m, multicast_mac(dst), src, dst, ty, &body)
        }
        5 => corpus::ext_chain(rng.random_range(0..11)),
        6 => {
            let next = *pick(rng, &[0u8, 43, 44, 60, 58, 17, 6]);
            let mut payload = Vec::new();
            for _ in 0..rng.random_range(0..12) {
                let len = rng.random_range(0..3usize);
                let mut h = vec![*pick(rng, &[0u8, 43, 44, 60, 58, 17]), len as u8];
                h.resize((len + 1) * 8, 0);
                rng.fill(&mut h[2..]);
                payload.extend(h);
            }
            payload.extend(frames::icmpv6_msg(
                OWN6,
                PEER6,
                rng.random_range(128..=160),
                0,
                &[0; 24],
            ));
            frames::ethernet(
                m,
                BROADCAST,
                0x86dd,
                &frames::ipv6(addr6(rng), addr6(rng), next, &payload),
            )
        }
        _ => {
            let len = rng.random_range(14..90);
            let mut f = vec![0u8; len];
            rng.fill(&mut f[..]);
            f[6..12].copy_from_slice(&m);
            let et: u16 = *pick(rng, &[0x0800, 0x0806, 0x86dd, 0x8100, 0x0042]);
            f[12..14].copy_from_slice(&et.to_be_bytes());
            f
        }
    }
}

/// A random frame of at least 14 bytes (the smallest input `BPF_PROG_TEST_RUN` accepts).
pub fn frame(rng: &mut impl Rng, corpus: &[Case]) -> Vec<u8> {
    let mut f = if rng.random_bool(0.4) {
        pick(rng, corpus).frame.clone()
    } else {
        fresh(rng)
    };
    // Mutations, mostly in the first 100 bytes where the headers are.
    for _ in 0..rng.random_range(0..4) {
        match rng.random_range(0..6) {
            0 if f.len() > 14 => {
                let n = rng.random_range(14..=f.len());
                f.truncate(n);
            }
            1 => {
                let extra = rng.random_range(1..40);
                f.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            2 => {
                let at = rng.random_range(0..f.len().min(100));
                f[at] = *pick(
                    rng,
                    &[
                        0, 1, 0xff, 0x40, 0x45, 0x60, 0x86, 0xdd, 0x3a, 0x2c, 135, 136,
                    ],
                );
            }
            _ => {
                let at = rng.random_range(0..f.len().min(100));
                f[at] ^= 1 << rng.random_range(0..8);
            }
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f
}

/// A random frame toward the guest: like [`frame`], with the destination MAC drawn from the
/// guest's, another VM's, broadcast and multicast.
pub fn to_vm_frame(rng: &mut impl Rng, corpus: &[Case]) -> Vec<u8> {
    let mut f = frame(rng, corpus);
    if rng.random_bool(0.85) {
        let dst = *pick(
            rng,
            &[
                GUEST,
                GUEST,
                GUEST,
                FOREIGN,
                BROADCAST,
                [0x33, 0x33, 0, 0, 0, 1],
                [0x01, 0, 0x5e, 0, 0, 0xfb],
            ],
        );
        f[0..6].copy_from_slice(&dst);
    }
    f
}
