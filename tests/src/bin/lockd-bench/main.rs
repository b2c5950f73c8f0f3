//! `cargo xtask bench`: lockd side by side with the empty-XDP floor, nftables and ebtables.
//! Sets up its own namespaces (removed on exit), prints progress, writes JSON, a Markdown
//! table and SVG plots.

mod report;
mod throughput;
mod traffic;

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use lockd::{
    dataplane::{Dataplane, XDP_PASS, XdpModeRequest},
    testrun::Runner,
};
use lockd_common::{
    Direction, PROG_VIF_INGRESS, Reason,
    policy::{RateLimit, VifPolicy},
};
use lockd_kit::{netlab::NetNs, programs::PROG_EMPTY};
use lockd_tests::corpus::cases;
use serde_json::{Map, Value, json};

use crate::{
    throughput::{Path, bench_policy, measure, sample_json, spoofed_frame, topo},
    traffic::{Helpers, send},
};

struct Opts {
    /// Only the daemon API section (`--api`).
    api_only: bool,
    quick: bool,
    json: PathBuf,
    out_dir: PathBuf,
}

fn parse_opts() -> Opts {
    let mut quick = false;
    let mut api_only = false;
    let mut json = None;
    let mut out_dir = PathBuf::from("target/bench");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--api" => api_only = true,
            "--json" => json = Some(PathBuf::from(args.next().expect("--json PATH"))),
            "--out-dir" => out_dir = PathBuf::from(args.next().expect("--out-dir DIR")),
            other => panic!(
                "unknown argument {other}; usage: lockd-bench [--quick] [--api] [--json PATH] [--out-dir DIR]"
            ),
        }
    }
    Opts {
        api_only,
        quick,
        json: json.unwrap_or_else(|| out_dir.join("bench.json")),
        out_dir,
    }
}

fn step(what: &str) {
    eprintln!("\n== {what}");
}

fn median(mut v: Vec<u32>) -> f64 {
    v.sort_unstable();
    f64::from(v[v.len() / 2])
}

/// Kernel-reported ns per run of the program behind `r` on `frame`: median of 5 runs of `repeat`.
fn cost(r: &Runner, ifindex: u32, frame: &[u8], repeat: u32) -> f64 {
    median(
        (0..5)
            .map(|_| {
                r.run(ifindex, frame, repeat, 0, 0)
                    .expect("test_run")
                    .ns_per_run
            })
            .collect(),
    )
}

const CLASSES: [(&str, &str); 10] = [
    ("arp_allowed", "ARP request from own IP"),
    ("arp_spoofed", "ARP reply binding own MAC to a foreign IP"),
    ("ipv4_allowed", "UDP from own IP"),
    ("ipv4_prefix", "UDP from an IP inside an allowed prefix"),
    ("ipv4_spoofed", "UDP from a foreign IP"),
    ("ipv6_allowed", "UDP6 from own address"),
    ("ipv6_spoofed", "UDP6 from a foreign address"),
    ("ns_allowed", "NS from own link-local with own SLLA"),
    ("na_allowed", "NA for own address with own TLLA"),
    ("na_spoofed", "NA for a foreign target"),
];

/// 1. Per-packet cost under BPF_PROG_TEST_RUN, lockd vs the empty program.
fn per_packet(opts: &Opts, dev: (&NetNs, u32), helpers: &Helpers) -> (Value, Value) {
    step("per-packet cost (BPF_PROG_TEST_RUN, median of 5, kernel-reported)");
    let repeat = if opts.quick { 1_000_000 } else { 4_000_000 };
    let cs = cases();
    let (ns, ifx) = dev;
    let floor = helpers.runner(PROG_EMPTY);
    ns.run(|| {
        let mut dp = Dataplane::load().expect("load");
        let lockd = dp.runner(PROG_VIF_INGRESS).expect("runner");
        let mut rows = Vec::new();
        let mut overhead = Map::new();
        for (key, name) in CLASSES {
            let c = cs.iter().find(|c| c.name == name).expect("corpus case");
            let mut p = c.policy.clone();
            dp.set_policy(ifx, &p).expect("policy");
            let empty = cost(&floor, ifx, &c.frame, repeat);
            let plain = cost(&lockd, ifx, &c.frame, repeat);
            p.rate = Some(RateLimit { kbps: 1 << 30, timeslice_us: 50_000 });
            dp.set_policy(ifx, &p).expect("policy");
            let limited = cost(&lockd, ifx, &c.frame, repeat);
            eprintln!("  {key:14} empty {empty:5.1} ns  lockd {plain:5.1} ns  (+{:5.1})  with rate limit {limited:5.1} ns (+{:5.1})", plain - empty, limited - empty);
            overhead.insert(key.into(), json!(plain - empty));
            overhead.insert(format!("{key}_ratelimit"), json!(limited - empty));
            rows.push(json!({"class": key, "empty_ns": empty, "lockd_ns": plain, "lockd_ratelimit_ns": limited}));
        }
        (Value::Array(rows), Value::Object(overhead))
    })
    .expect("ns")
}

/// 3. Scaling: many VIFs configured, many entries on one VIF.
fn scaling(opts: &Opts, dev: (&NetNs, u32)) -> (Value, Value) {
    step("scaling (test_run on one VIF while others are configured)");
    let repeat = if opts.quick { 500_000 } else { 2_000_000 };
    let (ns, ifx) = dev;
    let frame = lockd_tests::udp4_from(lockd_tests::GUEST, lockd_tests::OWN4, 5000, 53);
    ns.run(|| {
        let mut dp = Dataplane::load().expect("load");
        dp.set_policy(ifx, &lockd_tests::locked_policy())
            .expect("policy");
        let mut vifs = Vec::new();
        let mut configured = 1usize;
        for n in [1usize, 16, 256, 1024, 4096] {
            // Other VIFs on ifindexes no device has: only their map entries matter.
            while configured < n {
                let fake = 100_000 + configured as u32;
                let mut p = lockd_tests::locked_policy();
                p.mac = [0x02, 1, 0, 0, (configured >> 8) as u8, configured as u8];
                dp.set_policy(fake, &p).expect("policy");
                configured += 1;
            }
            dp.collect_garbage().expect("gc");
            let ns_pkt = cost(
                &dp.runner(PROG_VIF_INGRESS).expect("runner"),
                ifx,
                &frame,
                repeat,
            );
            eprintln!("  {n:5} VIFs: {ns_pkt:5.1} ns");
            vifs.push(json!({"n": n, "ns_per_pkt": ns_pkt}));
        }
        let mut allowed = Vec::new();
        let sizes: &[usize] = if opts.quick {
            &[1, 64, 1024, 16_384]
        } else {
            &[1, 16, 256, 1024, 4096, 16_384, 65_535]
        };
        for &n in sizes {
            let mut p = lockd_tests::locked_policy();
            p.ipv4 = (0..n as u32)
                .map(|i| {
                    ipnetwork::Ipv4Network::new(std::net::Ipv4Addr::from(0x0a10_0000 + i), 32)
                        .expect("net")
                })
                .collect();
            p.ipv6.clear();
            dp.set_policy(ifx, &p).expect("policy");
            dp.collect_garbage().expect("gc");
            // A cold key: the last address inserted, not the first.
            let src = std::net::Ipv4Addr::from(0x0a10_0000 + (n as u32 - 1));
            let f = lockd_tests::udp4_from(lockd_tests::GUEST, src, 5000, 53);
            let ns_pkt = cost(
                &dp.runner(PROG_VIF_INGRESS).expect("runner"),
                ifx,
                &f,
                repeat,
            );
            eprintln!("  {n:5} allowed entries: {ns_pkt:5.1} ns");
            allowed.push(json!({"n": n, "ns_per_pkt": ns_pkt}));
        }
        (Value::Array(vifs), Value::Array(allowed))
    })
    .expect("ns")
}

/// 4. Update latency and leaks under load.
fn updates(opts: &Opts, helpers: &mut Helpers) -> Value {
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
        throughput::GUEST,
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

/// 5. Rate limiter with the live-frames generator, 1 and 2 senders.
fn ratelimit(opts: &Opts, helpers: &mut Helpers) -> Value {
    step("rate limiter (live frames at full speed into a limited VIF)");
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
            throughput::GUEST,
            std::net::Ipv4Addr::new(10, 0, 0, 2),
            1,
            2,
        );
        good.resize(1000, 0);
        let secs = if opts.quick { 2.0 } else { 5.0 };
        let before = dp.counters(ifx).expect("c");
        let start = Instant::now();
        let mut sent = 0;
        while start.elapsed().as_secs_f64() < secs {
            sent += send(helpers, &t.vm, t.vm_ifx, &good, senders, 50_000).0;
        }
        let el = start.elapsed().as_secs_f64();
        let d = dp.counters(ifx).expect("c").delta(&before);
        let achieved = d.get(Direction::FromVm, Reason::Pass).bytes as f64 / el;
        let configured = (kbps * 1024) as f64;
        let ratio = achieved / configured;
        eprintln!(
            "  {senders} sender(s): {sent} frames offered, achieved {achieved:.0} B/s of {configured:.0} B/s ({ratio:.4})"
        );
        out.push(json!({"senders": senders, "achieved_bps": achieved, "configured_bps": configured, "ratio": ratio}));
    }
    Value::Array(out)
}

/// p-th percentile (0..=100) of `v`, in milliseconds.
fn pct_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// The daemon's API cost and memory with 4096 VIFs: each request timed on the daemon's
/// socket, from the request the CLI sends to the reply, which comes after the store's
/// durable commit (process start excluded). 64 of the VIFs have real netdevs, so their
/// updates reach the kernel too; half the updates go to them.
fn daemon_api_and_rss() -> Value {
    step("daemon API latency and memory with 4096 VIFs (durable SQLite store)");
    const VIFS: u32 = 4096;
    const WITH_NETDEV: u32 = 64;
    let ns = NetNs::new("bd").expect("ns");
    for i in 0..WITH_NETDEV {
        ns.exec(&[
            "ip",
            "link",
            "add",
            &format!("bv{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("bp{i}"),
        ])
        .expect("veth");
        ns.exec(&["ip", "link", "set", &format!("bv{i}"), "up"])
            .expect("up");
    }
    let base = std::env::temp_dir().join(format!("lockd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let bin = lockd_tests::daemon::lockd_bin();
    let bpffs = format!("/sys/fs/bpf/lockd-bench-{}", std::process::id());
    let sock = base.join("s.sock");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .arg(&bin)
        .arg("daemon")
        .env("LOCKD_STATE_DIR", base.join("state"))
        .env("LOCKD_SOCKET", &sock)
        .env("LOCKD_BPFFS", &bpffs)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("daemon");
    let call = |args: &[String]| {
        let t = Instant::now();
        let r = lockd::daemon::call(&sock, args);
        (t.elapsed(), r)
    };
    let start = Instant::now();
    while call(&["network-list".into()]).1.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, net) = call(&["network-create".into(), "name-label=bench".into()]);
    let net = net.expect("network-create").stdout.trim().to_string();
    let mut creates = Vec::new();
    let mut uuids = Vec::new();
    for i in 0..VIFS {
        let (t, r) = call(&[
            "vif-create".into(),
            format!("network-uuid={net}"),
            format!("device=bv{i}"),
            format!("mac=02:01:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
        ]);
        let r = r.expect("vif-create");
        assert_eq!(r.code, 0, "vif-create {i}: {}", r.stderr);
        creates.push(t);
        uuids.push(r.stdout.trim().to_string());
        let (_, r) = call(&[
            "vif-param-set".into(),
            format!("uuid={}", uuids[i as usize]),
            "locking-mode=locked".into(),
            format!("ipv4-allowed=10.{}.{}.1", i >> 8, i & 0xff),
        ]);
        assert_eq!(r.expect("vif-param-set").code, 0, "vif-param-set {i}");
        if i % 1024 == 1023 {
            eprintln!("  {} VIFs configured", i + 1);
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    // nsenter execs the daemon, so the child pid is the daemon's.
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let mut updates = Vec::new();
    let mut rng = 0x9e37_79b9_u32;
    for k in 0..2000u32 {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let i = if k % 2 == 0 {
            rng % WITH_NETDEV
        } else {
            rng % VIFS
        };
        let (t, r) = call(&[
            "vif-param-set".into(),
            format!("uuid={}", uuids[i as usize]),
            format!(
                "ipv4-allowed=10.{}.{}.1,10.99.{}.{}",
                i >> 8,
                i & 0xff,
                k >> 8,
                k & 0xff
            ),
        ]);
        assert_eq!(r.expect("vif-param-set").code, 0, "update {k}");
        updates.push(t);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = Command::new(&bin)
        .args(["cleanup", "--bpffs", &bpffs])
        .env("LOCKD_SOCKET", &sock)
        .output();
    let _ = std::fs::remove_dir_all(&base);
    let mb = kb / 1024.0;
    let r = json!({
        "vifs": VIFS,
        "vifs_with_netdev": WITH_NETDEV,
        "rss_mb": mb,
        "api_create_p50_ms": pct_ms(&mut creates, 50.0),
        "api_create_p99_ms": pct_ms(&mut creates, 99.0),
        "api_update_p50_ms": pct_ms(&mut updates, 50.0),
        "api_update_p99_ms": pct_ms(&mut updates, 99.0),
    });
    eprintln!(
        "  RSS {mb:.1} MB; vif-create p50 {:.3} ms p99 {:.3} ms; vif-param-set p50 {:.3} ms p99 {:.3} ms",
        r["api_create_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_create_p99_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_update_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_update_p99_ms"].as_f64().unwrap_or(f64::NAN)
    );
    r
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "vcpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": kernel.trim(),
        "pktgen": traffic::has_pktgen(),
    })
}

fn main() {
    let opts = parse_opts();
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out_dir).expect("out dir");
    if opts.api_only {
        let api = daemon_api_and_rss();
        std::fs::write(
            &opts.json,
            serde_json::to_string_pretty(&json!({
                "machine": machine(),
                "api_create_p99_ms": api["api_create_p99_ms"],
                "api_update_p99_ms": api["api_update_p99_ms"],
                "api": api,
            }))
            .expect("json"),
        )
        .expect("write json");
        return;
    }
    let mut helpers = Helpers::load();

    // A device for test_run's ingress ifindex.
    let host = NetNs::new("bt").expect("ns");
    let vm = NetNs::new("bu").expect("ns");
    lockd_kit::netlab::veth(&host, "v0", &vm, "e0", "02:00:00:00:00:0b", None).expect("veth");
    let ifx = host.ifindex("v0").expect("ifindex");
    let (classes, overhead) = per_packet(&opts, (&host, ifx), &helpers);
    let (vifs_scaling, allowed_scaling) = scaling(&opts, (&host, ifx));
    drop((host, vm));

    step("throughput through one VIF (64-byte spoofed frames, built-in live-frames generator)");
    let per_thread = if opts.quick { 2_000_000 } else { 10_000_000 };
    let mut samples = Vec::new();
    for vcpus in [1usize, 2] {
        for path in Path::ALL {
            let s = measure(path, vcpus, per_thread, &mut helpers);
            eprintln!(
                "  {:30} {vcpus} vCPU: {:10.0} pps {:7.1} ns/pkt  sent {} dropped {}",
                path.name(),
                s.pps,
                s.ns_per_pkt,
                s.sent,
                s.counted.map_or("n/a".into(), |c| c.to_string())
            );
            samples.push(s);
        }
    }
    let upd = updates(&opts, &mut helpers);
    let rl = ratelimit(&opts, &mut helpers);
    let api = daemon_api_and_rss();

    let one = |p: Path| {
        samples
            .iter()
            .find(|s| s.path == p && s.vcpus == 1)
            .map(|s| s.ns_per_pkt)
            .unwrap_or(f64::NAN)
    };
    let floor = one(Path::Floor);
    let lockd = one(Path::LockdNative);
    let nft = one(Path::NftNetdev);
    let eb = one(Path::Ebtables { nf_call: false });
    let two = samples
        .iter()
        .find(|s| s.path == Path::LockdNative && s.vcpus == 2)
        .map(|s| s.pps)
        .unwrap_or(f64::NAN);
    let one_pps = samples
        .iter()
        .find(|s| s.path == Path::LockdNative && s.vcpus == 1)
        .map(|s| s.pps)
        .unwrap_or(f64::NAN);
    let rl_acc = rl
        .as_array()
        .and_then(|a| a.first())
        .and_then(|r| r["ratio"].as_f64())
        .unwrap_or(f64::NAN);
    let result = json!({
        "machine": machine(),
        "quick": opts.quick,
        "seconds": start.elapsed().as_secs_f64(),
        "floor_ns_per_pkt": floor,
        "lockd_native_ns_per_pkt": lockd,
        "ratio_lockd_vs_floor": lockd / floor,
        "nft_netdev_ns_per_pkt": nft,
        "speedup_vs_nft_netdev": nft / lockd,
        "ebtables_ns_per_pkt": eb,
        "speedup_vs_ebtables": eb / lockd,
        "lockd_2vcpu_vs_1vcpu": two / one_pps,
        "test_run_overhead_ns": overhead,
        "test_run_classes": classes,
        "update_p50_us": upd["p50_us"],
        "update_p99_us": upd["p99_us"],
        "update_leaked_frames": upd["leaked"],
        "updates": upd,
        "ratelimit_accuracy": rl_acc,
        "ratelimit": rl,
        "rss_mb_4096_vifs": api["rss_mb"],
        "api_create_p99_ms": api["api_create_p99_ms"],
        "api_update_p99_ms": api["api_update_p99_ms"],
        "api": api,
        "vifs_scaling": vifs_scaling,
        "allowed_scaling": allowed_scaling,
        "throughput": samples.iter().map(sample_json).collect::<Vec<_>>(),
    });
    std::fs::write(
        &opts.json,
        serde_json::to_string_pretty(&result).expect("json"),
    )
    .expect("write json");
    let md = report::markdown(&result);
    std::fs::write(opts.out_dir.join("bench.md"), &md).expect("write md");
    report::svgs(&result, &opts.out_dir);
    eprintln!(
        "\nwrote {}, {}/bench.md and SVG plots in {} ({:.0} s)",
        opts.json.display(),
        opts.out_dir.display(),
        opts.out_dir.display(),
        start.elapsed().as_secs_f64()
    );
    println!("{md}");
}
