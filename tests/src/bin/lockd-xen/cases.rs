//! The tier's cases, each with real frames from a domU's netfront through a real netback vif.

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use lockd_common::{
    Reason,
    model::{verdict_from_vm, verdict_to_vm},
    policy::{EffectiveMode, VifPolicy},
};
use lockd_kit::frames::{self, BROADCAST, Mac};
use lockd_tests::{Case, corpus};

use crate::{
    FRAMES_BOUND,
    agent::{Agent, Capture, fnv},
    counters, delta, domu, lockd, sh, vif_uuid,
};

/// The bridge the domUs' locked vifs are on.
pub(crate) const BRIDGE: &str = "xenbr0";

/// Gives VIF `uuid` the policy (its MAC is the domU's already).
pub(crate) fn apply(uuid: &str, p: &VifPolicy) -> Result<(), String> {
    let join = |v: Vec<String>| v.join(",");
    lockd(&[
        "vif-param-set",
        &format!("uuid={uuid}"),
        &format!("locking-mode={}", EffectiveMode::name(p.mode)),
        &format!("ipv4-allowed={}", join(p.ipv4.iter().map(|n| n.to_string()).collect())),
        &format!("ipv6-allowed={}", join(p.ipv6.iter().map(|n| n.to_string()).collect())),
    ])
    .map(|_| ())
}

/// Puts a domU's VIF back to what vif-lockd gave it (locked to its xl `ip=`).
pub(crate) fn restore(uuid: &str, ip4: Ipv4Addr, ip6: Ipv6Addr) -> Result<(), String> {
    lockd(&[
        "vif-param-set",
        &format!("uuid={uuid}"),
        "locking-mode=locked",
        &format!("ipv4-allowed={ip4}"),
        &format!("ipv6-allowed={ip6}"),
    ])
    .map(|_| ())
}

/// Whether a frame lockd passes reaches the bridge device as sent: the Linux bridge itself
/// drops a frame whose source MAC is not a unicast address, keeps link-local
/// (01:80:c2:00:00:0x) frames off the bridge, and hands an 802.1Q frame up untagged.
pub(crate) fn bridge_shows(f: &[u8]) -> bool {
    f.len() >= 14
        && f[6] & 1 == 0
        && f[6..12] != [0; 6]
        && f[..5] != [0x01, 0x80, 0xc2, 0, 0]
        && !matches!(u16::from_be_bytes([f[12], f[13]]), 0x8100 | 0x88a8)
}

/// Whether dom0's kernel frees the frame before any hook sees it: an 802.1Q/802.1ad tag with
/// fewer than the 6 bytes `skb_vlan_untag` pulls (tag and inner EtherType) behind the
/// Ethernet header. On XDP lockd sees it first; on netback's TC path it never arrives.
pub(crate) fn kernel_drops(f: &[u8]) -> bool {
    f.len() >= 14 && matches!(u16::from_be_bytes([f[12], f[13]]), 0x8100 | 0x88a8) && f.len() < 20
}

/// Whether the Linux bridge forwards the frame between ports at all: it keeps the IEEE 802.1D
/// link-local group (01:80:c2:00:00:00–0f) to itself by default.
pub(crate) fn bridge_forwards(f: &[u8]) -> bool {
    !(f.len() >= 6 && f[..5] == [0x01, 0x80, 0xc2, 0, 0] && f[5] <= 0x0f)
}

/// `frame` with zero bytes after it up to `len` (an Ethernet trailer: the IP layer ignores it),
/// so netback puts its first 128 bytes in the skb's head and the rest in a page fragment.
pub(crate) fn padded(frame: &[u8], len: usize) -> Vec<u8> {
    let mut f = frame.to_vec();
    if f.len() < len {
        f.resize(len, 0);
    }
    f
}

/// The corpus's cases grouped by policy, in the order the policies first appear.
pub(crate) fn by_policy(cases: Vec<Case>) -> Vec<(VifPolicy, Vec<Case>)> {
    let mut groups: Vec<(VifPolicy, Vec<Case>)> = Vec::new();
    for c in cases {
        match groups.iter_mut().find(|(p, _)| *p == c.policy) {
            Some((_, v)) => v.push(c),
            None => groups.push((c.policy.clone(), vec![c])),
        }
    }
    groups
}

/// Waits (bounded) until the counters of `uuid` in `dir` have grown by `n` since `before`.
pub(crate) fn wait_counted(
    uuid: &str,
    dir: &str,
    before: &BTreeMap<String, u64>,
    n: u64,
) -> Result<BTreeMap<String, u64>, String> {
    let end = Instant::now() + FRAMES_BOUND;
    loop {
        let d = delta(before, &counters(uuid, dir)?);
        if d.values().sum::<u64>() >= n || Instant::now() > end {
            return Ok(d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn tally(reasons: impl Iterator<Item = Reason>) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in reasons {
        *m.entry(r.name().to_string()).or_default() += 1;
    }
    m
}

pub(crate) fn show(m: &BTreeMap<String, u64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One frame the tier sends, with the verdict the model gives it.
pub(crate) struct Sent {
    name: String,
    frame: Vec<u8>,
    expect: Reason,
}

/// A genuine UDP frame numbered `i`, for the end of a batch: once it is counted and seen,
/// every frame before it on the same vif has been too (netback keeps a queue's order).
pub(crate) fn sentinel(src: Mac, dst: Mac, from: Ipv4Addr, to: Ipv4Addr, i: u32) -> Vec<u8> {
    let mut p = b"lockd-xen sentinel ".to_vec();
    p.extend_from_slice(&i.to_be_bytes());
    frames::udp4(src, dst, from, to, 7777, 9, &p)
}

/// Genuine traffic between the two domUs, both ways, inside netback's head and past it.
pub fn genuine() -> Result<String, String> {
    let (a, b) = (domu("a").expect("a"), domu("b").expect("b"));
    let (mut aa, mut ab) = (a.agent()?, b.agent()?);
    let ab_line = one_way(&a, &mut aa, &b, &mut ab)?;
    let ba_line = one_way(&b, &mut ab, &a, &mut aa)?;
    Ok(format!("genuine traffic delivered both ways: {ab_line}, {ba_line}"))
}

/// UDP/IPv4 and UDP/IPv6 frames of 64 and 1414 bytes and ARP from `x` to `y`: all delivered
/// to `y`'s netfront, all counted `pass` at both vifs.
pub(crate) fn one_way(x: &crate::Domu, ax: &mut Agent, y: &crate::Domu, ay: &mut Agent) -> Result<String, String> {
    let (vx, vy) = (x.vif()?, y.vif()?);
    let (ux, uy) = (vif_uuid(&vx)?, vif_uuid(&vy)?);
    let mut sent = Vec::new();
    for (i, size) in (0..10u16).map(|i| (i, if i < 5 { 18 } else { 1372 })) {
        let mut p = vec![0xa5u8; size];
        p[..2].copy_from_slice(&i.to_be_bytes());
        sent.push(frames::udp4(x.mac, y.mac, x.ip4, y.ip4, 40000 + i, 9, &p));
        sent.push(frames::udp6(x.mac, y.mac, x.ip6, y.ip6, 40000 + i, 9, &p));
    }
    sent.push(frames::arp(x.mac, BROADCAST, 1, x.mac, x.ip4, [0; 6], y.ip4));
    sent.push(frames::arp(x.mac, y.mac, 2, x.mac, x.ip4, y.mac, y.ip4));
    ay.received("eth0").map_err(|e| e.to_string())?;
    let (fb, tb) = (counters(&ux, "from_vm")?, counters(&uy, "to_vm")?);
    for f in &sent {
        ax.send("eth0", f).map_err(|e| format!("{} sending: {e}", x.name))?;
    }
    let n = sent.len() as u64;
    let from = wait_counted(&ux, "from_vm", &fb, n)?;
    let to = wait_counted(&uy, "to_vm", &tb, n)?;
    let want: HashSet<u64> = sent.iter().map(|f| fnv(f)).collect();
    let mut got = HashSet::new();
    let end = Instant::now() + FRAMES_BOUND;
    while !want.is_subset(&got) && Instant::now() < end {
        got.extend(ay.received("eth0").map_err(|e| e.to_string())?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let arrived = want.intersection(&got).count() as u64;
    let (all, _) = ay.report("eth0").map_err(|e| e.to_string())?;
    let line = format!(
        "{} ({vx}) → {} ({vy}): {arrived}/{n} delivered (UDP/IPv4 and UDP/IPv6 of 64 and 1414 bytes, ARP); {vx} from-VM: {}; {vy} to-VM: {}",
        x.name,
        y.name,
        show(&from),
        show(&to)
    );
    println!("{line}");
    let pass_only = |d: &BTreeMap<String, u64>| d.len() == 1 && d.get("pass") == Some(&n);
    if arrived != n || !pass_only(&from) || !pass_only(&to) {
        println!("{}'s eth0 received {all} frames since its agent started; {}", y.name, ay.info("eth0"));
        for dev in [&vx, &vy] {
            print!("{}", sh("ip", &["-s", "link", "show", "dev", dev]).unwrap_or_else(|e| e));
            print!("{}", sh("tc", &["-s", "filter", "show", "dev", dev, "egress"]).unwrap_or_else(|e| e));
        }
        return Err(line);
    }
    Ok(format!("{} ({vx}) → {} ({vy}) {arrived}/{n}", x.name, y.name))
}

/// Every from-VM case of the corpus sent by domU a through its netback vif: lockd counts each
/// with the model's reason and only the frames it passes reach the bridge. `big`: each frame
/// padded to 300 and 1400 bytes, so netback's skb has page fragments past its 128-byte head.
pub fn corpus(big: bool) -> Result<String, String> {
    let a = domu("a").expect("a");
    let va = a.vif()?;
    let ua = vif_uuid(&va)?;
    let mut agent = a.agent()?;
    let cap = Capture::start(BRIDGE).map_err(|e| format!("capture on {BRIDGE}: {e}"))?;
    let mut failures = Vec::new();
    let mut unsendable = Vec::new();
    let mut by_kernel = Vec::new();
    let mut all = BTreeMap::new();
    let (mut total, mut dropped, mut seen_pass) = (0u64, 0u64, 0u64);
    let mut k = 0u32;
    for (policy, cases) in by_policy(corpus::cases()) {
        apply(&ua, &policy)?;
        let mut sent: Vec<Sent> = Vec::new();
        for c in &cases {
            let variants = if big {
                vec![padded(&c.frame, 300), padded(&c.frame, 1400)]
            } else {
                vec![c.frame.clone()]
            };
            for f in variants {
                let expect = verdict_from_vm(&policy, &f);
                if !big && expect != c.expect {
                    failures.push(format!("{}: the model says {}, the corpus {}", c.name, expect.name(), c.expect.name()));
                }
                sent.push(Sent { name: format!("{} ({} bytes)", c.name, f.len()), frame: f, expect });
            }
        }
        if policy.mode != EffectiveMode::Disabled {
            k += 1;
            let f = sentinel(a.mac, BROADCAST, a.ip4, lockd_tests::PEER4, k);
            sent.push(Sent { name: "sentinel".into(), expect: verdict_from_vm(&policy, &f), frame: f });
        }
        let before = counters(&ua, "from_vm")?;
        cap.clear();
        let mut went = Vec::new();
        let mut gone = Vec::new();
        for s in sent {
            match agent.send("eth0", &s.frame) {
                Ok(()) if kernel_drops(&s.frame) => gone.push(s),
                Ok(()) => went.push(s),
                Err(e) => unsendable.push(format!("{} ({e})", s.name)),
            }
        }
        let got = wait_counted(&ua, "from_vm", &before, went.len() as u64)?;
        let want = tally(went.iter().map(|s| s.expect));
        let must_see: Vec<u64> = went
            .iter()
            .filter(|s| s.expect == Reason::Pass && bridge_shows(&s.frame))
            .map(|s| fnv(&s.frame))
            .collect();
        let missing = cap.wait_for(&must_see, FRAMES_BOUND);
        for s in &gone {
            if cap.count(fnv(&s.frame)) > 0 {
                failures.push(format!("{}: reached {BRIDGE}, though dom0's kernel drops it", s.name));
            }
            by_kernel.push(s.name.clone());
        }
        for s in &went {
            let seen = cap.count(fnv(&s.frame));
            if s.expect != Reason::Pass && seen > 0 {
                failures.push(format!("{}: dropped by the model ({}), yet reached {BRIDGE}", s.name, s.expect.name()));
            }
            if s.expect == Reason::Pass && missing.contains(&fnv(&s.frame)) {
                failures.push(format!("{}: passed by the model, never reached {BRIDGE}", s.name));
            }
        }
        if got != want {
            failures.push(format!(
                "policy {} ({} frames): counted {} — the model says {}",
                EffectiveMode::name(policy.mode),
                went.len(),
                show(&got),
                show(&want)
            ));
        }
        println!(
            "policy {} v4 {:?} v6 {:?}: {} frames, counted {}",
            EffectiveMode::name(policy.mode),
            policy.ipv4.len(),
            policy.ipv6.len(),
            went.len(),
            show(&got)
        );
        for s in &went {
            total += 1;
            if s.expect == Reason::Pass {
                seen_pass += u64::from(cap.count(fnv(&s.frame)) > 0);
            } else {
                dropped += 1;
                *all.entry(s.expect.name().to_string()).or_insert(0u64) += 1;
            }
        }
    }
    restore(&ua, a.ip4, a.ip6)?;
    for u in &unsendable {
        println!("not sendable through netfront: {u}");
    }
    for k in &by_kernel {
        println!("dropped by dom0's kernel before TC (a truncated VLAN tag), never on {BRIDGE}: {k}");
    }
    for f in &failures {
        println!("MISMATCH {f}");
    }
    let summary = format!(
        "domu-a ({va}): {total} frames{} sent through netfront, {dropped} dropped at dom0 with the model's reason ({}), 0 of them on {BRIDGE}; {seen_pass} passed and seen on {BRIDGE}; {} dropped by dom0's kernel before TC; {} frames netfront cannot send",
        if big { " of 300 and 1400 bytes (128-byte head + page fragment)" } else { "" },
        show(&all),
        by_kernel.len(),
        unsendable.len()
    );
    if failures.is_empty() { Ok(summary) } else { Err(format!("{} mismatches; {summary}", failures.len())) }
}

/// The corpus's to-VM cases sent by domU b (unlocked, the sender) to domU a: lockd at a's
/// vif egress counts each with the model's reason and a's netfront receives only what passes.
pub fn to_vm() -> Result<String, String> {
    let (a, b) = (domu("a").expect("a"), domu("b").expect("b"));
    let (va, vb) = (a.vif()?, b.vif()?);
    let (ua, ub) = (vif_uuid(&va)?, vif_uuid(&vb)?);
    let (mut aa, mut ab) = (a.agent()?, b.agent()?);
    lockd(&["vif-param-set", &format!("uuid={ub}"), "locking-mode=unlocked"])?;
    // A hub for this case: every frame reaches every port, whatever the bridge learned.
    sh("ip", &["link", "set", "dev", BRIDGE, "type", "bridge", "ageing_time", "0"])?;
    let r = to_vm_cases(&a, &ua, &va, &mut aa, &mut ab);
    sh("ip", &["link", "set", "dev", BRIDGE, "type", "bridge", "ageing_time", "30000"])?;
    restore(&ub, b.ip4, b.ip6)?;
    restore(&ua, a.ip4, a.ip6)?;
    let _ = vb;
    r
}

pub(crate) fn to_vm_cases(a: &crate::Domu, ua: &str, va: &str, aa: &mut Agent, ab: &mut Agent) -> Result<String, String> {
    let mut failures = Vec::new();
    let (mut unsendable, mut gone, mut kept) = (Vec::new(), Vec::new(), Vec::new());
    let (mut total, mut delivered) = (0u64, 0u64);
    let mut all = BTreeMap::new();
    let mut k = 0u32;
    for (policy, cases) in by_policy(corpus::to_vm_cases()) {
        apply(ua, &policy)?;
        let mut sent: Vec<Sent> = cases
            .iter()
            .map(|c| Sent { name: c.name.to_string(), frame: c.frame.clone(), expect: verdict_to_vm(&policy, &c.frame) })
            .collect();
        if policy.mode != EffectiveMode::Disabled {
            k += 1;
            let f = sentinel(lockd_tests::OTHER, a.mac, lockd_tests::PEER4, a.ip4, k);
            sent.push(Sent { name: "sentinel".into(), expect: verdict_to_vm(&policy, &f), frame: f });
        }
        aa.received("eth0").map_err(|e| e.to_string())?;
        let before = counters(ua, "to_vm")?;
        let mut went = Vec::new();
        for s in sent {
            match ab.send("eth0", &s.frame) {
                Ok(()) if kernel_drops(&s.frame) => gone.push(s.name),
                Ok(()) if !bridge_forwards(&s.frame) => kept.push(s.name),
                Ok(()) => went.push(s),
                Err(e) => unsendable.push(format!("{} ({e})", s.name)),
            }
        }
        let sent = went;
        let got = wait_counted(ua, "to_vm", &before, sent.len() as u64)?;
        let want = tally(sent.iter().map(|s| s.expect));
        let must: HashSet<u64> = sent.iter().filter(|s| s.expect == Reason::Pass).map(|s| fnv(&s.frame)).collect();
        let mut rx: HashSet<u64> = HashSet::new();
        let end = Instant::now() + FRAMES_BOUND;
        loop {
            rx.extend(aa.received("eth0").map_err(|e| e.to_string())?);
            if must.is_subset(&rx) || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for s in &sent {
            let h = fnv(&s.frame);
            total += 1;
            match (s.expect == Reason::Pass, rx.contains(&h)) {
                (true, true) => delivered += 1,
                (true, false) => failures.push(format!("{}: passed by the model, never reached domu-a", s.name)),
                (false, true) => failures.push(format!("{}: dropped by the model ({}), yet domu-a received it", s.name, s.expect.name())),
                (false, false) => *all.entry(s.expect.name().to_string()).or_insert(0u64) += 1,
            }
        }
        if got != want {
            failures.push(format!("policy {}: counted {} — the model says {}", EffectiveMode::name(policy.mode), show(&got), show(&want)));
        }
        println!("to-VM policy {}: {} frames, counted {}", EffectiveMode::name(policy.mode), sent.len(), show(&got));
    }
    for u in &unsendable {
        println!("not sendable through netfront: {u}");
    }
    for k in &gone {
        println!("dropped by dom0's kernel before TC (a truncated VLAN tag): {k}");
    }
    for k in &kept {
        println!("not forwarded by the Linux bridge (802.1D link-local group), so never at domu-a's vif: {k}");
    }
    for f in &failures {
        println!("MISMATCH {f}");
    }
    let summary = format!(
        "domu-b → domu-a ({va}): {total} frames, {delivered} delivered as the model passes them, {} dropped at {va}'s egress with its reason ({}); {} dropped by dom0's kernel at domu-b's vif, {} kept by the bridge; {} netfront cannot send",
        all.values().sum::<u64>(),
        show(&all),
        gone.len(),
        kept.len(),
        unsendable.len()
    );
    if failures.is_empty() { Ok(summary) } else { Err(format!("{} mismatches; {summary}", failures.len())) }
}

