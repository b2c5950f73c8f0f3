//! The encoder from a VIF's policy to what the kernel reads — a [`VifConfig`] and the address
//! entries of one generation — and its inverse, which adoption uses to take over what a
//! previous daemon left. Both are pure (no kernel), so their round trip is a unit test.
//!
//! Where entries go: exact addresses inline in the config while they fit (`INLINE4`/`INLINE6`),
//! else in a table region; prefixes inline while they fit (`INLINE_P4`/`INLINE_P6`), else in
//! the trie, keyed by ifindex and generation.

use aya::maps::lpm_trie::Key;
use lockd_common::{
    FLAG_HAS_A4, FLAG_HAS_S6, FLAG_INLINE_P4, FLAG_INLINE_P6, FLAG_INLINE4, FLAG_INLINE6,
    FLAG_PREFIX4, FLAG_PREFIX6, INLINE_P4, INLINE_P6, INLINE4, INLINE6, LPM_HEADER_BITS, Lpm4Data,
    Lpm6Data, Prefix4, Prefix6, VifConfig,
    policy::{EffectiveMode, VifPolicy, link_local},
};

use super::tables::{self, Region};

/// The address entries of one generation of a VIF's policy.
#[derive(Debug, Default, Clone)]
pub(super) struct Entries {
    pub(super) v4: Vec<[u8; 4]>,
    pub(super) p4: Vec<(u32, [u8; 4])>,
    pub(super) v6: Vec<[u8; 16]>,
    pub(super) p6: Vec<(u32, [u8; 16])>,
    /// Where `v4` / `v6` are, when they do not fit inline (set by `insert_entries`).
    pub(super) r4: Option<tables::Region>,
    pub(super) r6: Option<tables::Region>,
}

impl Entries {
    /// The kernel's view of a policy: exact addresses in hashes, shorter prefixes in tries, and
    /// the derived link-local address as one more exact IPv6 entry when S6 is non-empty.
    pub(super) fn of(policy: &VifPolicy) -> Self {
        let mut e = Entries::default();
        if policy.mode != EffectiveMode::Locked {
            return e;
        }
        for n in &policy.ipv4 {
            if n.prefix() == 32 {
                e.v4.push(n.ip().octets());
            } else {
                e.p4.push((u32::from(n.prefix()), n.network().octets()));
            }
        }
        for n in &policy.ipv6 {
            if n.prefix() == 128 {
                e.v6.push(n.ip().octets());
            } else {
                e.p6.push((u32::from(n.prefix()), n.network().octets()));
            }
        }
        if policy.has_s6() {
            let ll = link_local(policy.mac).octets();
            if !e.v6.contains(&ll) {
                e.v6.push(ll);
            }
        }
        e
    }

    pub(super) fn len(&self) -> usize {
        self.v4.len() + self.v6.len() + self.p4.len() + self.p6.len()
    }

    /// Exact IPv4 addresses that live in the config rather than the map.
    pub(super) fn inline4(&self) -> bool {
        self.v4.len() <= INLINE4
    }

    pub(super) fn inline6(&self) -> bool {
        self.v6.len() <= INLINE6
    }

    /// Names the table regions in a config about to be published.
    pub(super) fn place(&self, cfg: &mut VifConfig) {
        if let Some(r) = self.r4 {
            (cfg.t4_base, cfg.t4_mask) = (r.base, r.mask());
        }
        if let Some(r) = self.r6 {
            (cfg.t6_base, cfg.t6_mask) = (r.base, r.mask());
        }
    }

    /// Prefixes that live in the config rather than the trie.
    pub(super) fn inline_p4(&self) -> bool {
        self.p4.len() <= INLINE_P4
    }

    pub(super) fn inline_p6(&self) -> bool {
        self.p6.len() <= INLINE_P6
    }

    /// The prefixes that go into the tries (none when they fit inline).
    pub(super) fn trie4(&self) -> &[(u32, [u8; 4])] {
        if self.inline_p4() { &[] } else { &self.p4 }
    }

    pub(super) fn trie6(&self) -> &[(u32, [u8; 16])] {
        if self.inline_p6() { &[] } else { &self.p6 }
    }

    /// Same entries, in any order.
    pub(super) fn same_as(&self, other: &Entries) -> bool {
        pub(super) fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
            let mut v = v.to_vec();
            v.sort();
            v
        }
        sorted(&self.v4) == sorted(&other.v4)
            && sorted(&self.v6) == sorted(&other.v6)
            && sorted(&self.p4) == sorted(&other.p4)
            && sorted(&self.p6) == sorted(&other.p6)
    }
}

/// The kernel config for a policy (generation 0; the caller sets it).
pub(super) fn config_of(policy: &VifPolicy, entries: &Entries, counter: u32) -> VifConfig {
    let mut flags = 0;
    if !policy.ipv4.is_empty() {
        flags |= FLAG_HAS_A4;
    }
    if policy.has_s6() {
        flags |= FLAG_HAS_S6;
    }
    let mut inline4 = [[0u8; 4]; INLINE4];
    let mut inline6 = [[0u8; 16]; INLINE6];
    if entries.inline4() {
        flags |= FLAG_INLINE4;
        inline4[..entries.v4.len()].copy_from_slice(&entries.v4);
    }
    if entries.inline6() {
        flags |= FLAG_INLINE6;
        inline6[..entries.v6.len()].copy_from_slice(&entries.v6);
    }
    let (pfx4, np4, f4) =
        prefixes::<4, INLINE_P4, _>(&entries.p4, |net, mask| Prefix4 { net, mask });
    let (pfx6, np6, f6) =
        prefixes::<16, INLINE_P6, _>(&entries.p6, |net, mask| Prefix6 { net, mask });
    flags |= if f4 { FLAG_INLINE_P4 } else { 0 } | if f6 { FLAG_INLINE_P6 } else { 0 };
    flags |= if !f4 && !entries.p4.is_empty() {
        FLAG_PREFIX4
    } else {
        0
    };
    flags |= if !f6 && !entries.p6.is_empty() {
        FLAG_PREFIX6
    } else {
        0
    };
    VifConfig {
        mode: policy.mode.kernel(),
        generation: 0,
        counter,
        flags,
        mac: policy.mac,
        n4: if entries.inline4() {
            entries.v4.len() as u8
        } else {
            0
        },
        n6: if entries.inline6() {
            entries.v6.len() as u8
        } else {
            0
        },
        // The dataplane names the shaper once it exists (see `Dataplane::set_policy`).
        shaper: 0,
        _rsv0: 0,
        _rsv1: 0,
        inline4,
        inline6,
        np4,
        np6,
        _pad: [0; 6],
        pfx4,
        pfx6,
        t4_base: 0,
        t4_mask: 0,
        t6_base: 0,
        t6_mask: 0,
    }
}

/// A family's prefixes as inline (network, mask) pairs, their count, and whether they fit
/// (else they go to the trie and the inline slots stay empty).
fn prefixes<const N: usize, const K: usize, P: Copy + Default>(
    p: &[(u32, [u8; N])],
    make: impl Fn([u8; N], [u8; N]) -> P,
) -> ([P; K], u8, bool) {
    let mut out = [P::default(); K];
    if p.is_empty() || p.len() > K {
        return (out, 0, false);
    }
    for (o, &(plen, net)) in out.iter_mut().zip(p) {
        *o = make(net, mask::<N>(plen));
    }
    (out, p.len() as u8, true)
}

/// The network-order mask of a `plen`-bit prefix of an `N`-byte address.
fn mask<const N: usize>(plen: u32) -> [u8; N] {
    let mut m = [0u8; N];
    for (i, b) in m.iter_mut().enumerate() {
        let bits = plen.saturating_sub(8 * i as u32).min(8);
        *b = (0xff_u16 << (8 - bits)) as u8;
    }
    m
}

pub(super) fn lpm4(ifindex: u32, generation: u32, plen: u32, addr: [u8; 4]) -> Key<Lpm4Data> {
    Key::new(
        LPM_HEADER_BITS + plen,
        Lpm4Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: generation.to_be_bytes(),
            addr,
        },
    )
}

pub(super) fn lpm6(ifindex: u32, generation: u32, plen: u32, addr: [u8; 16]) -> Key<Lpm6Data> {
    Key::new(
        LPM_HEADER_BITS + plen,
        Lpm6Data {
            ifindex_be: ifindex.to_be_bytes(),
            generation_be: generation.to_be_bytes(),
            addr,
        },
    )
}

/// The length of the prefix a network-order mask stands for.
fn prefix_len(mask: &[u8]) -> u32 {
    mask.iter().map(|b| b.count_ones()).sum()
}

/// The inverse of [`config_of`] as far as the config alone goes: the entries it holds inline
/// and the table regions it names. Exact sets in a region and prefixes in a trie are read from
/// the kernel by the caller (adoption). The config as [`config_of`] makes it (no generation,
/// no regions) comes back too, to spot no-op updates after adoption. None if a region is
/// invalid.
pub(super) fn decode(cfg: &VifConfig) -> Option<(Entries, VifConfig)> {
    let inline_prefixes = |n: u8, cap: usize, flag: u32| {
        if cfg.flags & flag != 0 {
            usize::from(n).min(cap)
        } else {
            0
        }
    };
    let mut e = Entries {
        p4: cfg.pfx4[..inline_prefixes(cfg.np4, INLINE_P4, FLAG_INLINE_P4)]
            .iter()
            .map(|p| (prefix_len(&p.mask), p.net))
            .collect(),
        p6: cfg.pfx6[..inline_prefixes(cfg.np6, INLINE_P6, FLAG_INLINE_P6)]
            .iter()
            .map(|p| (prefix_len(&p.mask), p.net))
            .collect(),
        ..Entries::default()
    };
    if cfg.flags & FLAG_INLINE4 != 0 {
        e.v4 = cfg.inline4[..usize::from(cfg.n4).min(INLINE4)].to_vec();
    } else {
        e.r4 = Some(Region::of(cfg.t4_base, cfg.t4_mask)?);
    }
    if cfg.flags & FLAG_INLINE6 != 0 {
        e.v6 = cfg.inline6[..usize::from(cfg.n6).min(INLINE6)].to_vec();
    } else {
        e.r6 = Some(Region::of(cfg.t6_base, cfg.t6_mask)?);
    }
    let bare = VifConfig {
        generation: 0,
        t4_base: 0,
        t4_mask: 0,
        t6_base: 0,
        t6_mask: 0,
        ..*cfg
    };
    Some((e, bare))
}

#[cfg(test)]
mod tests {
    use lockd_common::policy::RateLimit;

    use super::*;

    /// Policies across every placement: nothing, inline sets, sets in tables, prefixes inline
    /// and in tries, with and without a rate.
    fn policies() -> Vec<VifPolicy> {
        let v4 = |n: usize, plen: u8| -> Vec<ipnetwork::Ipv4Network> {
            let first = if plen == 32 { 10 } else { 172 };
            (0..n)
                .map(|i| {
                    format!("{first}.{}.{}.0/{plen}", i / 250, i % 250)
                        .parse()
                        .unwrap()
                })
                .collect()
        };
        let v6 = |n: usize, plen: u8| -> Vec<ipnetwork::Ipv6Network> {
            (0..n)
                .map(|i| format!("2001:db8:{i:x}::/{plen}").parse().unwrap())
                .collect()
        };
        let mut out = Vec::new();
        for (n4, p4, n6, p6) in [
            (0, 0, 0, 0),
            (1, 1, 1, 1),
            (4, 4, 3, 2),
            (5, 1, 9, 2),
            (1, 5, 1, 3),
            (5, 5, 4, 3),
            (300, 40, 70, 9),
        ] {
            for mode in [
                EffectiveMode::Locked,
                EffectiveMode::Unlocked,
                EffectiveMode::Disabled,
            ] {
                let mut ipv4 = v4(n4, 32);
                ipv4.extend(v4(p4, 24));
                let mut ipv6 = v6(n6, 128);
                ipv6.extend(v6(p6, 64));
                out.push(VifPolicy {
                    mode,
                    mac: [2, 0, 0, 0, n4 as u8, p6 as u8],
                    ipv4,
                    ipv6,
                    rate: (n4 % 2 == 1).then_some(RateLimit {
                        kbps: 1000,
                        timeslice_us: 20_000,
                    }),
                });
            }
        }
        out
    }

    /// Stands in for the kernel: the regions a config names, as `insert_entries` would place.
    fn placed(e: &Entries) -> Entries {
        let mut e = e.clone();
        if !e.inline4() {
            e.r4 = Region::of(64, 63);
        }
        if !e.inline6() {
            e.r6 = Region::of(128, 127);
        }
        e
    }

    #[test]
    fn decode_inverts_encode() {
        for policy in policies() {
            let entries = placed(&Entries::of(&policy));
            let bare = config_of(&policy, &entries, 7);
            let mut live = VifConfig {
                generation: 9,
                ..bare
            };
            entries.place(&mut live);
            let (mut back, back_bare) = decode(&live).expect("valid regions");
            assert_eq!(back_bare, bare, "{policy:?}");
            assert_eq!(back.r4, entries.r4);
            assert_eq!(back.r6, entries.r6);
            // What the kernel holds beyond the config: table contents and trie entries.
            if back.r4.is_some() {
                back.v4 = entries.v4.clone();
            }
            if back.r6.is_some() {
                back.v6 = entries.v6.clone();
            }
            back.p4.extend_from_slice(entries.trie4());
            back.p6.extend_from_slice(entries.trie6());
            assert!(back.same_as(&entries), "{policy:?}\n{back:?}\n{entries:?}");
            // And encoding what was decoded gives the same config.
            assert_eq!(config_of(&policy, &back, 7), bare);
        }
    }

    #[test]
    fn decode_refuses_a_bad_region() {
        let policy = &policies()[18];
        let entries = Entries::of(policy);
        let mut cfg = config_of(policy, &entries, 0);
        assert_eq!(cfg.flags & FLAG_INLINE4, 0, "a table-sized set");
        (cfg.t4_base, cfg.t4_mask) = (3, 5);
        assert!(decode(&cfg).is_none());
    }
}
