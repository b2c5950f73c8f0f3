//! The demo (`lockd-demo`, `cargo xtask run -- demo`): a small namespace topology showing the from-VM locking at work.
//!
//! Three VMs share a bridge. Every VIF is locked to its VM's MAC and addresses. VM "good" sends
//! genuine traffic; VM "evil" poisons ARP for good's address, spoofs the victim's IP and MAC,
//! plays router and DHCP server. The counters show what lockd passed and dropped, per reason.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};
use lockd_common::{
    Direction, Reason,
    policy::{EffectiveMode, VifPolicy, format_mac, link_local, parse_ipv4_list, parse_ipv6_list},
};
use serde_json::json;

use lockd::dataplane::{Dataplane, XdpModeRequest};

use crate::{
    frames::{self, BROADCAST, Mac, multicast_mac},
    netlab::{NetNs, bridge, send_frames, veth},
};

struct DemoVm {
    name: &'static str,
    mac: Mac,
    v4: &'static str,
    v6: &'static str,
}

const VMS: [DemoVm; 3] = [
    DemoVm {
        name: "victim",
        mac: [0x02, 0, 0, 0, 0, 0x0a],
        v4: "10.0.0.1",
        v6: "2001:db8::1",
    },
    DemoVm {
        name: "good",
        mac: [0x02, 0, 0, 0, 0, 0x0b],
        v4: "10.0.0.2, 10.0.2.0/24",
        v6: "2001:db8::2",
    },
    DemoVm {
        name: "evil",
        mac: [0x02, 0, 0, 0, 0, 0x0c],
        v4: "10.0.0.3",
        v6: "2001:db8::3",
    },
];

fn traffic(vm: &DemoVm) -> Vec<Vec<u8>> {
    let victim_mac = VMS[0].mac;
    let victim_ip = Ipv4Addr::new(10, 0, 0, 1);
    let good_ip = Ipv4Addr::new(10, 0, 0, 2);
    let all_nodes: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let m = vm.mac;
    let mut out = Vec::new();
    match vm.name {
        "good" => {
            for i in 0..10 {
                out.push(frames::udp4(
                    m,
                    victim_mac,
                    good_ip,
                    victim_ip,
                    5000 + i,
                    53,
                    b"hi",
                ));
            }
            out.push(frames::arp(
                m, victim_mac, 2, m, good_ip, victim_mac, victim_ip,
            ));
            out.push(frames::udp4(
                m,
                victim_mac,
                Ipv4Addr::new(10, 0, 2, 9),
                victim_ip,
                1,
                2,
                b"cidr",
            ));
        }
        "evil" => {
            for _ in 0..10 {
                // "10.0.0.2 is at evil's MAC", toward the victim.
                out.push(frames::arp(
                    m, victim_mac, 2, m, good_ip, victim_mac, victim_ip,
                ));
            }
            for i in 0..5 {
                out.push(frames::udp4(
                    m,
                    BROADCAST,
                    victim_ip,
                    good_ip,
                    6000 + i,
                    53,
                    b"me too",
                ));
                out.push(frames::udp4(
                    victim_mac,
                    BROADCAST,
                    victim_ip,
                    good_ip,
                    6000 + i,
                    53,
                    b"me",
                ));
            }
            let ll = link_local(m);
            out.push(frames::icmp6(
                m,
                multicast_mac(all_nodes),
                ll,
                all_nodes,
                134,
                &[64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ));
            out.push(frames::udp4(
                m,
                BROADCAST,
                Ipv4Addr::new(10, 0, 0, 3),
                Ipv4Addr::BROADCAST,
                67,
                68,
                &[2; 32],
            ));
        }
        _ => {}
    }
    out
}

/// Runs the demo; prints a table, or JSON with `json`.
pub fn run(json: bool, mode: XdpModeRequest) -> Result<()> {
    let say = |s: &str| {
        if !json {
            println!("{s}");
        }
    };
    say("building a bridge and three VMs in network namespaces ...");
    let host = NetNs::new("host").context("creating the host namespace (are you root?)")?;
    bridge(&host, "br0")?;
    let mut vms = Vec::new();
    for vm in &VMS {
        let ns = NetNs::new(vm.name)?;
        let vif = format!("vif-{}", vm.name);
        veth(&host, &vif, &ns, "eth0", &format_mac(vm.mac), Some("br0"))?;
        let ifindex = host.ifindex(&vif)?;
        vms.push((vm, ns, ifindex));
    }
    let policies: Vec<(u32, VifPolicy)> = vms
        .iter()
        .map(|(vm, _, ifx)| {
            Ok((
                *ifx,
                VifPolicy {
                    mode: EffectiveMode::Locked,
                    mac: vm.mac,
                    ipv4: parse_ipv4_list(vm.v4)?,
                    ipv6: parse_ipv6_list(vm.v6)?,
                    rate: None,
                },
            ))
        })
        .collect::<Result<_>>()?;
    let (mut dp, modes) = host.run(move || -> Result<_> {
        let mut dp = Dataplane::load().context("loading the eBPF programs")?;
        let mut modes = Vec::new();
        for (ifx, p) in &policies {
            dp.set_policy(*ifx, p)?;
            modes.push(dp.attach(*ifx, mode)?);
        }
        Ok((dp, modes))
    })??;
    for ((vm, _, _), m) in vms.iter().zip(&modes) {
        say(&format!(
            "locked vif-{:<6} mac {} ipv4-allowed={} ipv6-allowed={} (XDP {m:?})",
            vm.name,
            format_mac(vm.mac),
            vm.v4,
            vm.v6
        ));
    }
    // What `lockd monitor` shows: the kernel writes an event per dropped frame while on.
    let mut monitor = dp.take_monitor().context("the monitor's maps")?;
    monitor.set(true, lockd_common::DEFAULT_MONITOR_CAP)?;
    for (vm, ns, _) in &vms {
        let f = traffic(vm);
        if !f.is_empty() {
            say(&format!("{} sends {} frames", vm.name, f.len()));
            send_frames(ns, "eth0", &f)?;
        }
    }
    monitor.set(false, 0)?;
    let evil_ifx = vms[2].2;
    let evil_name = lockd::daemon::monitor::VifName {
        uuid: "evil".into(),
        device: "vif-evil".into(),
        counter: dp.counter_index(evil_ifx),
    };
    let mut events = Vec::new();
    while let Some(item) = monitor.events.next() {
        if let Some(ev) = lockd::daemon::monitor::parse_event(&item)
            && ev.ifindex == evil_ifx
        {
            events.push(lockd::daemon::monitor::event_json(&ev, Some(&evil_name)));
        }
    }
    say("\nlockd monitor --device vif-evil (the first drop of each reason):");
    let mut seen = std::collections::BTreeSet::new();
    for e in &events {
        if seen.insert((e["direction"].to_string(), e["reason"].to_string())) {
            say(&format!("  {}", lockd::daemon::monitor::text(e)));
        }
    }
    let mut report = Vec::new();
    say("\nVIF          dir      reason           packets   bytes");
    for (vm, _, ifx) in &vms {
        let c = dp.counters(*ifx)?;
        for (dir, reason, cnt) in c.nonzero() {
            say(&format!(
                "vif-{:<8} {:<8} {:<16} {:>7} {:>7}",
                vm.name,
                dir.name(),
                reason.name(),
                cnt.packets,
                cnt.bytes
            ));
            report.push(json!({
                "vif": format!("vif-{}", vm.name),
                "direction": dir.name(),
                "reason": reason.name(),
                "packets": cnt.packets,
                "bytes": cnt.bytes,
            }));
        }
    }
    let evil = dp.counters(vms[2].2)?;
    let leaked = evil.get(Direction::FromVm, Reason::Pass).packets;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "counters": report, "evil_passed": leaked, "monitor": events })
            )?
        );
    } else {
        println!("\nevil got {leaked} frames through; namespaces are removed on exit.");
    }
    Ok(())
}
