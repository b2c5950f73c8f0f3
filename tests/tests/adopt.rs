//! A dataplane loaded on pinned maps adopts what a previous one left: the config copies its
//! slots name and the address tables its configs name, so that later updates neither reuse
//! space still in force nor lose entries.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use lockd::dataplane::{Dataplane, XDP_DROP, XDP_PASS, XdpModeRequest, cleanup, ensure_bpffs};
use lockd_common::policy::VifPolicy;
use lockd_kit::netlab::{NetNs, veth};
use lockd_tests::{GUEST, locked_policy, udp4_from};

fn member(k: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + k * 0x1_0000 + i)
}

/// 300 exact addresses (a table, not inline) of set `k`.
fn policy(k: u32) -> VifPolicy {
    VifPolicy {
        ipv4: (0..300)
            .map(|i| Ipv4Network::new(member(k, i), 32).unwrap())
            .collect(),
        ..locked_policy()
    }
}

fn verdict(dp: &Dataplane, ifindex: u32, src: Ipv4Addr) -> u32 {
    dp.judge(ifindex, &udp4_from(GUEST, src, 1, 2))
        .expect("judge")
}

#[test]
fn a_new_dataplane_adopts_slots_and_tables() {
    let host = NetNs::new("ph").expect("namespace");
    let vm = NetNs::new("pv").expect("namespace");
    veth(&host, "v0", &vm, "e0", "02:00:00:00:00:0b", None).expect("veth");
    veth(&host, "v1", &vm, "e1", "02:00:00:00:00:0c", None).expect("veth");
    let a = host.ifindex("v0").expect("ifindex");
    let b = host.ifindex("v1").expect("ifindex");
    let mount = lockd_tests::bpffs::PrivateBpffs::mount(
        &std::env::temp_dir().join(format!("lockd-adopt-{}", std::process::id())),
    );
    let dir = mount.dir("lockd");
    ensure_bpffs(&dir).expect("bpffs");
    let _pins = Pins(dir.clone());
    host.run(|| {
        {
            let mut dp = Dataplane::load_with(Some(&dir)).expect("load");
            dp.set_policy(a, &policy(1)).expect("policy a");
            dp.set_policy(b, &policy(2)).expect("policy b");
            dp.attach(a, XdpModeRequest::Auto).expect("attach");
            assert_eq!(verdict(&dp, a, member(1, 7)), XDP_PASS);
        } // The first dataplane goes; pinned maps and links stay.
        let mut dp = Dataplane::load_with(Some(&dir)).expect("reload");
        let adopted = dp.adopt().expect("adopt");
        assert_eq!(adopted, vec![a]);
        let mut ifxs = dp.ifindexes();
        ifxs.sort_unstable();
        assert_eq!(ifxs, vec![a.min(b), a.max(b)]);
        assert!(dp.has_position(a) && dp.has_position(b));
        // The adopted tables are intact and in force.
        for i in 0..300 {
            assert_eq!(verdict(&dp, a, member(1, i)), XDP_PASS, "member {i} of a");
            assert_eq!(verdict(&dp, b, member(2, i)), XDP_PASS, "member {i} of b");
        }
        assert_eq!(verdict(&dp, a, member(2, 0)), XDP_DROP);
        // New tables for a (several, no grace period between: none is freed) must not land
        // on b's, which is still in force.
        for k in 3..=8 {
            dp.set_policy(a, &policy(k)).expect("replace a");
        }
        for i in 0..300 {
            assert_eq!(verdict(&dp, a, member(8, i)), XDP_PASS);
            assert_eq!(
                verdict(&dp, b, member(2, i)),
                XDP_PASS,
                "b's table was overwritten"
            );
        }
        assert_eq!(verdict(&dp, a, member(1, 0)), XDP_DROP);
        dp.collect_garbage().expect("collect");
    })
    .expect("enter namespace");
}

/// Removes the test's pins however the test ends.
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = cleanup(&self.0) {
            eprintln!("removing {}: {e}", self.0.display());
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Replacing the largest allowed set again and again finds room: regions of replaced
/// generations are collected when the tables would otherwise be full.
#[test]
fn repeated_large_updates_find_room() {
    let host = NetNs::new("ph").expect("namespace");
    let vm = NetNs::new("pv").expect("namespace");
    veth(&host, "v0", &vm, "e0", "02:00:00:00:00:0b", None).expect("veth");
    let a = host.ifindex("v0").expect("ifindex");
    let big = |k: u32| VifPolicy {
        ipv4: (0..65_535)
            .map(|i| Ipv4Network::new(Ipv4Addr::from((k << 24) + i), 32).unwrap())
            .collect(),
        ..locked_policy()
    };
    host.run(|| {
        let mut dp = Dataplane::load().expect("load");
        for k in 1..=6 {
            dp.set_policy(a, &big(k))
                .expect("a table for the largest set");
            assert_eq!(
                verdict(&dp, a, Ipv4Addr::from((k << 24) + 65_534)),
                XDP_PASS
            );
            assert_eq!(
                verdict(&dp, a, Ipv4Addr::from(((k - 1) << 24) + 7)),
                XDP_DROP
            );
        }
    })
    .expect("enter namespace");
}
