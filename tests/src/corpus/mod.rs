//! The hand-written corpus: every rule and every reason of POLICY.md, in both directions, a
//! file per rule family (`l2`, `ipv4`, `ipv6`, `to_vm`), each a table read top to bottom like
//! the policy.

mod ipv4;
mod ipv6;
mod l2;
mod to_vm;

use std::net::{Ipv4Addr, Ipv6Addr};

use lockd_common::{
    Reason,
    policy::{EffectiveMode, VifPolicy},
};
use lockd_kit::frames::{self, ethernet, icmpv6_msg};

use crate::*;

pub use to_vm::cases as to_vm_cases;

/// One case as a family writes it: name, policy, frame, expected reason.
type Row = (&'static str, VifPolicy, Vec<u8>, Reason);

fn into_cases(rows: Vec<Row>) -> Vec<Case> {
    let mut out: Vec<Case> = rows
        .into_iter()
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

/// Every from-VM case. Names are unique.
pub fn cases() -> Vec<Case> {
    let mut rows = l2::rows();
    rows.extend(ipv4::rows());
    rows.extend(ipv6::rows());
    into_cases(rows)
}

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
