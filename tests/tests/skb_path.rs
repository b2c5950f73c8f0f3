//! The skb path, where Xen runs: xen-netback's skbs carry all but the first bytes of a frame
//! in page fragments. A VIF judged at the TC ingress hook must read every header wherever it
//! lies, so here every corpus frame is padded past a page and sent live as an skb whose head
//! holds only its first few bytes (split at several points, from the Ethernet header alone to
//! past the IP header), and each gets exactly the reason the reference model gives it.

use std::time::{Duration, Instant};

use aya::programs::TcAttachType;
use lockd::dataplane::{AttachMode, Dataplane, VifCounters, XdpModeRequest};
use lockd_common::{Direction, model::verdict_from_vm};
use lockd_kit::{
    netlab::{NetNs, veth},
    programs::{Helpers, PROG_TC_HEAD},
};
use lockd_tests::{Case, corpus::cases, hex, wire::send_split};

/// Every frame is padded to this length (past a page, so the sender builds it in fragments).
const LEN: usize = 4400;
/// Bytes of the skb head: the Ethernet header alone, into the IP header, past it.
const HEADS: [u16; 5] = [14, 20, 34, 54, 90];

fn pad(f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    v.resize(LEN, 0);
    v
}

/// Host and VM namespaces with IPv6 off (so neither side's own NDP or MLD frames count) and
/// pairs `v<i>`/`e<i>` with room for the padded frames.
fn topology(pairs: usize) -> (NetNs, NetNs) {
    let host = NetNs::new("kh").expect("ns");
    let vm = NetNs::new("kv").expect("ns");
    for ns in [&host, &vm] {
        for k in ["all", "default"] {
            ns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ])
            .expect("sysctl");
        }
    }
    for i in 0..pairs {
        let (v, e) = (format!("v{i}"), format!("e{i}"));
        veth(&host, &v, &vm, &e, "02:00:00:00:01:01", None).expect("veth");
        host.exec(&["ip", "link", "set", &v, "mtu", "9000"])
            .expect("mtu");
        vm.exec(&["ip", "link", "set", &e, "mtu", "9000"])
            .expect("mtu");
    }
    (host, vm)
}

/// The sender really builds fragmented skbs: a probe on the receiving side sees a head of the
/// size asked for and the whole frame beyond it.
#[test]
fn the_sender_builds_skbs_with_the_frame_in_fragments() {
    let (host, vm) = topology(1);
    let frame = pad(&lockd_tests::udp4_from(
        lockd_tests::GUEST,
        lockd_tests::OWN4,
        5000,
        53,
    ));
    let kit = host
        .run(|| {
            let mut kit = Helpers::load();
            let _exists = aya::programs::tc::qdisc_add_clsact("v0");
            kit.tc_program(PROG_TC_HEAD)
                .attach("v0", TcAttachType::Ingress)
                .expect("attach the probe");
            kit
        })
        .expect("host ns");
    {
        send_split(&vm, "e0", &[(frame.clone(), 14)]);
        let deadline = Instant::now() + Duration::from_secs(2);
        let (head, len) = loop {
            let (head, len) = kit.head();
            if len != 0 || Instant::now() > deadline {
                break (head, len);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        eprintln!("  skb head {head} bytes of a {len}-byte frame");
        assert_eq!(len as usize, LEN, "the frame did not arrive whole");
        assert!(head < 128, "the skb is linear ({head} bytes in its head)");
    }
    drop(kit);
}

/// The from-VM counter cells that moved since `before`, once something has moved.
fn moved_from_vm(
    dp: &Dataplane,
    ifindex: u32,
    before: &VifCounters,
) -> Vec<(lockd_common::Reason, u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = dp.counters(ifindex).expect("counters");
        let moved: Vec<_> = now
            .delta(before)
            .nonzero()
            .into_iter()
            .filter(|(d, _, _)| *d == Direction::FromVm)
            .map(|(_, r, c)| (r, c.packets, c.bytes))
            .collect();
        if !moved.is_empty() || Instant::now() > deadline {
            // Anything else in flight would land within a few ms.
            std::thread::sleep(Duration::from_millis(10));
            let again: Vec<_> = dp
                .counters(ifindex)
                .expect("counters")
                .delta(before)
                .nonzero()
                .into_iter()
                .filter(|(d, _, _)| *d == Direction::FromVm)
                .map(|(_, r, c)| (r, c.packets, c.bytes))
                .collect();
            return again;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn fragmented_frames_get_the_models_verdict_at_the_tc_hook() {
    let (host, vm) = topology(1);
    let v0 = host.ifindex("v0").expect("ifindex");
    let mut dp = host
        .run(move || {
            let mut dp = Dataplane::load().expect("load");
            dp.set_policy(v0, &lockd_tests::locked_policy())
                .expect("policy");
            assert_eq!(
                dp.attach(v0, XdpModeRequest::Tc).expect("attach at TC"),
                AttachMode::Tc
            );
            dp
        })
        .expect("host ns");
    {
        let mut ran = 0;
        let mut reasons = std::collections::BTreeSet::new();
        for Case {
            name,
            policy,
            frame,
            ..
        } in cases()
        {
            if frame.len() < 14 {
                continue;
            }
            dp.set_policy(v0, &policy).expect("policy");
            let f = pad(&frame);
            let want = verdict_from_vm(&policy, &f);
            for head in HEADS {
                let before = dp.counters(v0).expect("counters");
                send_split(&vm, "e0", &[(f.clone(), head)]);
                let moved = moved_from_vm(&dp, v0, &before);
                // The receive path moves an 802.1Q tag out of the bytes before TC sees them.
                let tagged = matches!(frame[12..14], [0x81, 0x00] | [0x88, 0xa8]);
                let len = if tagged { LEN - 4 } else { LEN } as u64;
                assert_eq!(
                    moved,
                    vec![(want, 1, len)],
                    "{name}, head {head}: the model says {}; frame {}",
                    want.name(),
                    hex(&frame)
                );
                ran += 1;
                reasons.insert(want.name());
            }
        }
        eprintln!(
            "  {ran} fragmented frames agree with the model at TC; reasons seen: {}",
            reasons.into_iter().collect::<Vec<_>>().join(" ")
        );
        assert!(ran > 400, "only {ran} frames ran");
    }
    // Detach in the namespace that holds the device.
    host.run(move || drop(dp)).expect("host ns");
}
