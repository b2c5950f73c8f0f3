//! Atomic policy replacement: while one thread flips a VIF between two policies as fast as it
//! can, two threads (one per CPU) keep running frames that *each* policy drops, but that any
//! mix of the two (one policy's MAC or mode with the other's address list) would pass.

use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use ipnetwork::Ipv4Network;
use lockd::dataplane::{Dataplane, XDP_PASS};
use lockd_common::{
    POSITIONS, PROG_VIF_INGRESS, Reason,
    model::verdict_from_vm,
    policy::{EffectiveMode, VifPolicy},
};
use lockd_kit::netlab::{NetNs, veth};
use lockd_tests::{FOREIGN, GUEST, udp4_from};

const FLIPS: usize = 400;

#[test]
fn readers_never_see_a_mixed_policy() {
    flip_under_load(false);
}

/// The same with the VIF's slot position taken by another VIF, so packets read its policy from
/// the hash — until, halfway, that VIF goes and the flips continue through the slot.
#[test]
fn readers_never_see_a_mixed_policy_when_displaced() {
    flip_under_load(true);
}

fn flip_under_load(displaced: bool) {
    let host = NetNs::new("ah").expect("namespace");
    let vm = NetNs::new("av").expect("namespace");
    veth(&host, "v0", &vm, "e0", "02:00:00:00:00:0b", None).expect("veth");
    let ifindex = host.ifindex("v0").expect("ifindex");
    let ip_a = Ipv4Addr::new(192, 0, 2, 1);
    let ip_b = Ipv4Addr::new(198, 51, 100, 1);
    let a = VifPolicy {
        mode: EffectiveMode::Locked,
        mac: GUEST,
        ipv4: vec![Ipv4Network::new(ip_a, 32).unwrap()],
        ipv6: vec![],
        rate: None,
    };
    let b = VifPolicy {
        mode: EffectiveMode::Locked,
        mac: FOREIGN,
        ipv4: vec![Ipv4Network::new(ip_b, 32).unwrap()],
        ipv6: vec![],
        rate: None,
    };
    // A's MAC with B's address, and B's MAC with A's address.
    let probes = [
        udp4_from(GUEST, ip_b, 1000, 2000),
        udp4_from(FOREIGN, ip_a, 1000, 2000),
    ];
    for p in &probes {
        assert_ne!(verdict_from_vm(&a, p), Reason::Pass);
        assert_ne!(verdict_from_vm(&b, p), Reason::Pass);
    }
    // ... while each policy passes its own genuine frame, so the program is really judging.
    assert_eq!(
        verdict_from_vm(&a, &udp4_from(GUEST, ip_a, 1, 2)),
        Reason::Pass
    );

    host.run(|| {
        let mut dp = Dataplane::load().expect("load");
        let squatter = ifindex + POSITIONS;
        if displaced {
            dp.set_policy(squatter, &b).expect("squatter");
        }
        dp.set_policy(ifindex, &a).expect("policy a");
        assert_eq!(dp.has_position(ifindex), !displaced);
        let runner = dp.runner(PROG_VIF_INGRESS).expect("runner");
        let done = AtomicBool::new(false);
        let runs = AtomicU64::new(0);
        let leaks = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        for p in &probes {
                            let r = runner.run(ifindex, p, 1, 0, 0).expect("test_run");
                            runs.fetch_add(1, Ordering::Relaxed);
                            if r.action == XDP_PASS {
                                leaks.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
            let start = std::time::Instant::now();
            for i in 0..FLIPS {
                let p = if i % 2 == 0 { &b } else { &a };
                dp.set_policy(ifindex, p).expect("flip");
                if displaced && i == FLIPS / 2 {
                    assert!(!dp.has_position(ifindex));
                    dp.remove_policy(squatter).expect("the squatter goes");
                }
                // Retired generations are deleted while readers run, too.
                if i % 3 == 0 {
                    dp.collect_garbage().expect("collect");
                }
            }
            let took = start.elapsed();
            done.store(true, Ordering::Relaxed);
            eprintln!(
                "{FLIPS} policy flips in {took:?} ({:?} each) under {} concurrent runs",
                took / FLIPS as u32,
                runs.load(Ordering::Relaxed)
            );
        });
        assert!(runs.load(Ordering::Relaxed) > 1000, "readers barely ran");
        assert_eq!(
            leaks.load(Ordering::Relaxed),
            0,
            "a frame saw a mixed policy"
        );
        assert!(dp.has_position(ifindex));
        // The genuine frame of the final policy still passes.
        let genuine = udp4_from(GUEST, ip_a, 1, 2);
        assert_eq!(dp.judge(ifindex, &genuine).expect("judge"), XDP_PASS);
    })
    .expect("enter namespace");
}
