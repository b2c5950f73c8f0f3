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
    throughput::{bench_policy, spoofed_frame, topo},
    traffic::{Helpers, send},
};

/// 4. Update latency and leaks under load.
pub(crate) fn updates(opts: &Opts, helpers: &mut Helpers) -> Value {
    step("policy updates (API call to enforcement; leaks under load)");
    let t = topo(false);
    let ifx = t.host_ifx;
    let changes = if opts.quick { 200 } else { 1000 };
    let mut dp = t
        .host
        .run(move || {
            let mut dp = Dataplane::load().expect("load");
            dp.set_policy(ifx, &bench_policy()).expect("policy");
            dp.attach(ifx, XdpModeRequest::Native).expect("attach");
            dp
        })
        .expect("ns");
    helpers.set_target(t.vm_ifx);
    // Policies alternate between two address lists, neither allowing the spoofed source.
    let a = bench_policy();
    let mut b = bench_policy();
    b.ipv4 = lockd_common::policy::parse_ipv4_list("10.0.0.2, 10.0.0.3, 10.1.0.0/16").expect("v4");
    let before = dp.counters(ifx).expect("counters");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let generator = {
        let stop = stop.clone();
        let runner_helpers = Helpers::load();
        let vm_ifx = t.vm_ifx;
        let mut h = runner_helpers;
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
    let mut lat = Vec::new();
    let (mut probe_passed, mut probe_dropped) = (0u64, 0u64);
    let probe_ok = lockd_tests::udp4_from(
        crate::throughput::GUEST,
        std::net::Ipv4Addr::new(10, 0, 0, 3),
        1,
        2,
    );
    for i in 0..changes {
        let p: &VifPolicy = if i % 2 == 0 { &b } else { &a };
        let start = Instant::now();
        dp.set_policy(ifx, p).expect("update");
        let took = start.elapsed();
        // Enforcement check right after the call returned: 10.0.0.3 passes only under `b`.
        let verdict = t
            .host
            .run(|| dp.judge(ifx, &probe_ok).expect("judge"))
            .expect("ns");
        assert_eq!(
            verdict == XDP_PASS,
            i % 2 == 0,
            "update {i} not enforced on return"
        );
        if verdict == XDP_PASS {
            probe_passed += 1;
        } else {
            probe_dropped += 1;
        }
        lat.push(took);
        if i % 16 == 15 {
            dp.collect_garbage().expect("gc");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = generator.join().expect("generator");
    let d = dp.counters(ifx).expect("counters").delta(&before);
    // The enforcement probes are counted too; only the generator's spoofed frames matter here.
    let leaked = d.get(Direction::FromVm, Reason::Pass).packets - probe_passed;
    let spoofed = d.get(Direction::FromVm, Reason::Ipv4Spoof).packets - probe_dropped;
    lat.sort();
    let us = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    let (p50, p99) = (us(0.50), us(0.99));
    eprintln!(
        "  {changes} updates: p50 {p50:.1} µs, p99 {p99:.1} µs; {sent} spoofed frames sent, {spoofed} dropped, {leaked} leaked"
    );
    json!({"changes": changes, "p50_us": p50, "p99_us": p99, "sent": sent, "dropped": spoofed, "leaked": leaked})
}

/// Section 5: the rate limit's shaper under the live-frames generator at full speed (1 and 2
/// senders of 1000-byte genuine frames): the rate its shaper sends at, against the rate set.
pub(crate) fn ratelimit(opts: &Opts, helpers: &mut Helpers) -> Value {
    step("rate limit (live frames at full speed into a shaped VIF)");
    let mut out = Vec::new();
    for senders in [1usize, 2] {
        let t = topo(false);
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
        // 1000-byte frames: a genuine datagram plus Ethernet padding (allowed after the packet).
        let mut good = lockd_tests::udp4_from(
            crate::throughput::GUEST,
            std::net::Ipv4Addr::new(10, 0, 0, 2),
            1,
            2,
        );
        good.resize(1000, 0);
        let secs = if opts.quick { 2.0 } else { 5.0 };
        let shaped = |dp: &Dataplane| {
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
        let before = shaped(&dp);
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed().as_secs_f64() < secs {
            sent += send(helpers, &t.vm, t.vm_ifx, &good, senders, 50_000).0;
        }
        let after = shaped(&dp);
        let el = start.elapsed().as_secs_f64();
        let achieved = (after.sent_bytes - before.sent_bytes) as f64 / el;
        let configured = (kbps * 1024) as f64;
        let ratio = achieved / configured;
        let backlog_peak = after.backlog_bytes.max(before.backlog_bytes);
        eprintln!(
            "  {senders} sender(s): {sent} frames offered, shaped to {achieved:.0} B/s of {configured:.0} B/s ({ratio:.4}); backlog {backlog_peak} B; {} dropped (backlog full)",
            after.dropped - before.dropped
        );
        out.push(json!({"senders": senders, "achieved_bps": achieved, "configured_bps": configured,
            "ratio": ratio, "backlog_bytes": backlog_peak, "dropped": after.dropped - before.dropped}));
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
