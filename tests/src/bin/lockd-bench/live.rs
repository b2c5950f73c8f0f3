//! Live updates under load (latency, leaked frames) and the rate limiter with live senders.

use std::time::Instant;

use lockd::dataplane::{Dataplane, XDP_PASS, XdpModeRequest};
use lockd_common::{
    Direction, Reason,
    policy::{RateLimit, VifPolicy},
};
use lockd_kit::netlab::NetNs;
use serde_json::{Value, json};

use crate::{
    Opts, step,
    throughput::{bench_policy, spoofed_frame},
    topo::{topo, wait_ready},
    traffic::{Helpers, send},
};

/// The spoofed frame's source: the address the update pairs allow or deny.
const PROBE_SRC: &str = "10.0.0.99";

/// Pairs of policies in one storage form (lockd keeps up to four exact addresses or prefixes
/// inline in the VIF's config, more exact addresses in a table region, more prefixes in the
/// trie): the first allows the generator's frames (source 10.0.0.99), the second drops them.
fn update_pairs() -> [(&'static str, VifPolicy, VifPolicy); 3] {
    let with = |v4: &str| {
        let mut p = bench_policy();
        p.ipv4 = lockd_common::policy::parse_ipv4_list(v4).expect("v4");
        p
    };
    let table: Vec<String> = (2..=9).map(|i| format!("10.0.0.{i}")).collect();
    let table = table.join(", ");
    let tries = "10.1.0.0/16, 10.2.0.0/16, 10.3.0.0/16, 10.4.0.0/16";
    [
        (
            "inline",
            with(&format!("10.0.0.2, {PROBE_SRC}")),
            with("10.0.0.2, 10.0.0.98"),
        ),
        (
            "table",
            with(&format!("{table}, {PROBE_SRC}")),
            with(&format!("{table}, 10.0.0.98")),
        ),
        (
            "trie",
            with(&format!("10.0.0.2, {tries}, 10.0.0.96/29")),
            with(&format!("10.0.0.2, {tries}, 10.0.0.104/29")),
        ),
    ]
}

/// Section 4: update latency and leaks under load. The generator floods frames from 10.0.0.99 while
/// the VIF's policy alternates between one that allows that source and one that drops it, in
/// each storage form, with the garbage queue collected as it goes. After each update returns
/// (and one RCU grace period, so that every program run that began before the return has
/// counted), every frame until the next update must get the verdict of the policy in force: a
/// frame counted with the other verdict is a leak (a frame the new policy drops but that
/// passed) or a wrong drop.
pub(crate) fn updates(opts: &Opts, helpers: &mut Helpers) -> Value {
    step("policy updates (API call to enforcement; verdicts under load)");
    let t = topo(false);
    if let Err(why) = wait_ready(&t, false) {
        return json!({"unavailable": why});
    }
    let ifx = t.host_ifx;
    let changes = if opts.quick { 200 } else { 1000 };
    let pairs = update_pairs();
    let first = pairs[0].2.clone();
    let mut dp = t
        .host
        .run(move || {
            let mut dp = Dataplane::load().expect("load");
            dp.set_policy(ifx, &first).expect("policy");
            dp.attach(ifx, XdpModeRequest::Native).expect("attach");
            dp
        })
        .expect("ns");
    let barrier = lockd::rcu::RcuBarrier::new().expect("RCU barrier");
    helpers.set_target(t.vm_ifx);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        let mut h = Helpers::load();
        let vm_ifx = t.vm_ifx;
        h.set_target(vm_ifx);
        let ns_name_file =
            std::fs::File::open(format!("/run/netns/{}", t.vm.name())).expect("ns file");
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd as _;
            // SAFETY: setns on this private thread.
            unsafe { libc::setns(ns_name_file.as_raw_fd(), libc::CLONE_NEWNET) };
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sent += h.send_here(vm_ifx, &spoofed_frame(), 100_000);
            }
            sent
        })
    };
    let probe = spoofed_frame();
    let mut lat = Vec::new();
    let mut forms = serde_json::Map::new();
    let (mut leaked, mut wrong_drops, mut judged_total) = (0u64, 0u64, 0u64);
    let mut not_enforced = 0u64;
    for (form, allow, deny) in &pairs {
        let (mut f_leaked, mut f_wrong, mut f_judged) = (0u64, 0u64, 0u64);
        for i in 0..changes {
            let allows = i % 2 == 0;
            let p = if allows { allow } else { deny };
            let start = Instant::now();
            dp.set_policy(ifx, p).expect("update");
            lat.push(start.elapsed());
            barrier.wait().expect("RCU grace period");
            let from = dp.counters(ifx).expect("counters");
            // The same frame through the real program right after the call returned.
            let verdict = t
                .host
                .run(|| dp.judge(ifx, &probe).expect("judge"))
                .expect("ns");
            if (verdict == XDP_PASS) != allows {
                not_enforced += 1;
            }
            if i % 4 == 3 {
                dp.collect_garbage().expect("gc");
            }
            // Let the generator's frames meet this policy.
            std::thread::sleep(std::time::Duration::from_micros(500));
            let d = dp.counters(ifx).expect("counters").delta(&from);
            let passed = d.get(Direction::FromVm, Reason::Pass).packets;
            let dropped = d.get(Direction::FromVm, Reason::Ipv4Spoof).packets;
            f_judged += passed + dropped;
            if allows {
                f_wrong += dropped;
            } else {
                f_leaked += passed;
            }
        }
        eprintln!(
            "  {form:6}: {changes} updates, {f_judged} frames judged between them, {f_leaked} leaked, {f_wrong} wrongly dropped"
        );
        forms.insert(
            (*form).into(),
            json!({"judged": f_judged, "leaked": f_leaked, "wrongly_dropped": f_wrong}),
        );
        leaked += f_leaked;
        wrong_drops += f_wrong;
        judged_total += f_judged;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = generator.join().expect("generator");
    dp.collect_garbage().expect("gc");
    lat.sort();
    let us = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let (p50, p99) = (us(0.50), us(0.99));
    eprintln!(
        "  {} updates: p50 {p50:.1} µs, p99 {p99:.1} µs; {sent} frames sent, {judged_total} judged between updates, {leaked} leaked, {wrong_drops} wrongly dropped, {not_enforced} not enforced on return",
        lat.len()
    );
    // Too few frames between updates and the check says nothing.
    let invalid = (judged_total < 1000 * pairs.len() as u64).then(|| {
        format!("invalid run: only {judged_total} frames met the policies between updates")
    });
    json!({"changes": lat.len(), "p50_us": p50, "p99_us": p99, "sent": sent,
           "judged": judged_total, "leaked": leaked, "wrongly_dropped": wrong_drops,
           "not_enforced_on_return": not_enforced, "forms": forms, "invalid": invalid})
}

/// Section 5: the rate limit's shaper under the live-frames generator at full speed (1 and 2
/// senders of 1000-byte genuine frames): the rate the frames arrive at on the bridge's other
/// port, against the rate set.
pub(crate) fn ratelimit(opts: &Opts, helpers: &mut Helpers) -> Value {
    step("rate limit (live frames at full speed into a shaped VIF)");
    let mut out = Vec::new();
    for senders in [1usize, 2] {
        // A bridge with a second port: the shaped frames are flooded to it and counted where
        // they arrive (sink1), not by the shaper's own counter.
        let t = topo(true);
        if let Err(why) = wait_ready(&t, true) {
            out.push(json!({"senders": senders, "unavailable": why}));
            continue;
        }
        let ifx = t.host_ifx;
        let kbps = 10 * 1024; // 10 MiB/s
        let mut p = bench_policy();
        p.rate = Some(RateLimit {
            kbps,
            timeslice_us: 50_000,
        });
        let dp = t
            .host
            .run(move || {
                let mut dp = Dataplane::load().expect("load");
                dp.set_policy(ifx, &p).expect("policy");
                dp.attach(ifx, XdpModeRequest::Native).expect("attach");
                dp
            })
            .expect("ns");
        helpers.set_target(t.vm_ifx);
        // 1000-byte genuine frames (a 958-byte datagram) to a MAC the bridge floods.
        let good = lockd_kit::frames::udp4(
            crate::topo::GUEST,
            [0x02, 0, 0, 0, 0, 0x0a],
            std::net::Ipv4Addr::new(10, 0, 0, 2),
            std::net::Ipv4Addr::new(10, 0, 0, 1),
            1,
            2,
            &[0; 958],
        );
        assert_eq!(good.len(), 1000);
        let secs = if opts.quick { 2.0 } else { 5.0 };
        // Bytes received on sink1, and when: the middle of the read (each read runs `ip`,
        // milliseconds that would otherwise count as part of the window).
        let received = || {
            let t0 = Instant::now();
            let b = lockd_tests::wire::rx_bytes(&t.host, "sink1");
            (b, t0 + t0.elapsed() / 2)
        };
        let shaper_dropped = |dp: &Dataplane| {
            dp.shaper_stats(ifx)
                .expect("shaper stats")
                .expect("a shaper")
                .1
        };
        // Fill the bucket's burst first, so the window sees the rate alone.
        let warm = Instant::now();
        while warm.elapsed().as_secs_f64() < 0.3 {
            send(helpers, &t.vm, t.vm_ifx, &good, senders, 50_000);
        }
        let (st0, (before, t0)) = (shaper_dropped(&dp), received());
        let mut sent = 0;
        while t0.elapsed().as_secs_f64() < secs {
            sent += send(helpers, &t.vm, t.vm_ifx, &good, senders, 50_000).0;
        }
        let ((after, t1), st1) = (received(), shaper_dropped(&dp));
        let achieved = (after - before) as f64 / (t1 - t0).as_secs_f64();
        let configured = (kbps * 1024) as f64;
        let ratio = achieved / configured;
        let backlog_peak = st1.backlog_bytes.max(st0.backlog_bytes);
        eprintln!(
            "  {senders} sender(s): {sent} frames offered, received at {achieved:.0} B/s of {configured:.0} B/s ({ratio:.4}); backlog {backlog_peak} B; {} dropped (backlog full)",
            st1.dropped - st0.dropped
        );
        out.push(
            json!({"senders": senders, "achieved_bps": achieved, "configured_bps": configured,
            "ratio": ratio, "measured_at": "receiver (sink1 rx bytes)",
            "backlog_bytes": backlog_peak, "dropped": st1.dropped - st0.dropped}),
        );
        t.host.run(move || drop(dp)).expect("ns");
    }
    Value::Array(out)
}

/// 5b. One TCP flow (iperf3) from a rate-limited VM, to a VM on the same bridge and to a host
/// 20 ms away (a delay line stands for the network): its goodput, as frame bytes, over the rate.
pub(crate) fn tcp_ratios(opts: &Opts) -> Value {
    use lockd_kit::netlab::{bridge, veth};
    use lockd_tests::wire::{FAR_IP, FarHost, tcp_frame_rate};
    step("one TCP flow through the rate limit (iperf3; same bridge, and 20 ms away)");
    let secs = if opts.quick { 5 } else { 10 };
    let kbps = 1024u64; // 1 MiB/s
    let host = NetNs::new("th").expect("ns");
    bridge(&host, "br0").expect("bridge");
    let vm = NetNs::new("ta").expect("ns");
    let peer = NetNs::new("tb").expect("ns");
    let guest = "02:00:00:00:00:0b";
    veth(&host, "vif0", &vm, "eth0", guest, Some("br0")).expect("veth");
    veth(
        &host,
        "vif1",
        &peer,
        "eth0",
        "02:00:00:00:00:0a",
        Some("br0"),
    )
    .expect("veth");
    for (ns, ip) in [(&vm, "10.0.0.2"), (&peer, "10.0.0.1")] {
        ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"])
            .expect("addr");
    }
    let far = FarHost::start(&host, "br0", &vm);
    let ifx = host.ifindex("vif0").expect("ifindex");
    let mut p = bench_policy();
    p.rate = Some(RateLimit {
        kbps,
        timeslice_us: 50_000,
    });
    let dp = host
        .run(move || {
            let mut dp = Dataplane::load().expect("load");
            dp.set_policy(ifx, &p).expect("policy");
            dp.attach(ifx, XdpModeRequest::Auto).expect("attach");
            dp
        })
        .expect("ns");
    let configured = (kbps * 1024) as f64;
    let ratio = |server_ns: &NetNs, dst: &str| -> Value {
        let mut server = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                server_ns.name(),
                "iperf3",
                "-s",
                "-1",
                "-p",
                "5601",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(server) = server.as_mut() else {
            return json!({"unavailable": "iperf3 could not start"});
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                vm.name(),
                "iperf3",
                "-J",
                "-c",
                dst,
                "-p",
                "5601",
                "-t",
            ])
            .arg(secs.to_string())
            .output();
        let _ = server.wait();
        let v: Option<Value> = out
            .ok()
            .and_then(|o| serde_json::from_slice(&o.stdout).ok());
        let Some(frame_bps) = v.as_ref().and_then(tcp_frame_rate) else {
            return json!({"unavailable": "iperf3 gave no report"});
        };
        let r = frame_bps / configured;
        eprintln!("  to {dst}: goodput {frame_bps:.0} B/s as frames, {r:.4} of the rate");
        json!({"ratio": r, "goodput_frame_bps": frame_bps})
    };
    let lan = ratio(&peer, "10.0.0.1");
    let wan_r = ratio(&far.far, FAR_IP);
    drop(far);
    host.run(move || drop(dp)).expect("ns");
    json!({"configured_bps": configured, "lan": lan, "wan_20ms": wan_r})
}
