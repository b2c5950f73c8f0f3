//! Per-packet cost under BPF_PROG_TEST_RUN (lockd against the empty program) and how it
//! scales with VIFs and entries.

use lockd::{dataplane::Dataplane, testrun::Runner};
use lockd_common::{PROG_VIF_INGRESS, policy::RateLimit};
use lockd_kit::{netlab::NetNs, programs::PROG_EMPTY};
use lockd_tests::corpus::cases;
use serde_json::{Map, Value, json};

use crate::{Opts, step, traffic::Helpers};

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

const CLASSES: [(&str, &str); 12] = [
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
    ("dhcp_discover", "DHCP discover from 0.0.0.0"),
    ("dhcp_spoofed", "DHCP discover with another VM's chaddr"),
];

/// The TC ingress program's ns per run (median of 5).
fn tc_cost(r: &Runner, ifindex: u32, frame: &[u8], repeat: u32) -> f64 {
    median(
        (0..5)
            .map(|_| {
                r.run_skb(ifindex, frame, repeat)
                    .expect("test_run")
                    .ns_per_run
            })
            .collect(),
    )
}

fn median_f(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Section 1: per-packet cost under BPF_PROG_TEST_RUN, lockd vs the empty program, and what a
/// rate limit adds per frame (median over the classes).
pub(crate) fn per_packet(
    opts: &Opts,
    dev: (&NetNs, u32),
    helpers: &Helpers,
) -> (Value, Value, f64, Value) {
    step("per-packet cost (BPF_PROG_TEST_RUN, median of 5, kernel-reported)");
    let repeat = if opts.quick { 1_000_000 } else { 4_000_000 };
    let cs = cases();
    let (ns, ifx) = dev;
    let floor = helpers.runner(PROG_EMPTY);
    ns.run(|| {
        let mut dp = Dataplane::load().expect("load");
        let lockd = dp.runner(PROG_VIF_INGRESS).expect("runner");
        let tc = dp.tc_ingress_runner().expect("runner");
        let mut rows = Vec::new();
        let mut overhead = Map::new();
        let mut limiter = Vec::new();
        for (key, name) in CLASSES {
            let c = cs.iter().find(|c| c.name == name).expect("corpus case");
            let mut p = c.policy.clone();
            dp.set_policy(ifx, &p).expect("policy");
            let empty = cost(&floor, ifx, &c.frame, repeat);
            let plain = cost(&lockd, ifx, &c.frame, repeat);
            // What a rate limit still costs per frame: the TC ingress program's hand-off to
            // the shaper, against the same program without a limit.
            let tc_plain = tc_cost(&tc, ifx, &c.frame, repeat);
            p.rate = Some(RateLimit { kbps: 1 << 30, timeslice_us: 50_000 });
            dp.set_policy(ifx, &p).expect("policy");
            let limited = cost(&lockd, ifx, &c.frame, repeat);
            let tc_limited = tc_cost(&tc, ifx, &c.frame, repeat);
            p.rate = None;
            dp.set_policy(ifx, &p).expect("policy");
            eprintln!(
                "  {key:14} empty {empty:5.1} ns  lockd {plain:5.1} ns  (+{:5.1}); rate limit: XDP +{:4.1}, TC hand-off +{:4.1}",
                plain - empty,
                limited - plain,
                tc_limited - tc_plain
            );
            overhead.insert(key.into(), json!(plain - empty));
            limiter.push(tc_limited - tc_plain + (limited - plain));
            rows.push(json!({"class": key, "empty_ns": empty, "lockd_ns": plain, "lockd_ratelimit_ns": limited,
                "tc_ingress_ns": tc_plain, "tc_ingress_ratelimit_ns": tc_limited}));
        }
        // The drop path with no monitor attached and with one (a spoofed frame, over and over:
        // after the first `cap` events of each second, the suppressed count).
        let c = cs
            .iter()
            .find(|c| c.name == "UDP from a foreign IP")
            .expect("corpus case");
        dp.set_policy(ifx, &c.policy).expect("policy");
        let mut mon = dp.take_monitor().expect("the monitor's maps");
        let off = cost(&lockd, ifx, &c.frame, repeat);
        mon.set(true, lockd_common::DEFAULT_MONITOR_CAP).expect("monitor on");
        let on = cost(&lockd, ifx, &c.frame, repeat);
        mon.set(false, 0).expect("monitor off");
        eprintln!(
            "  drop path ({}): monitor off {off:5.1} ns, on (over the cap) {on:5.1} ns",
            c.name
        );
        let monitor = json!({"class": c.name, "off_ns": off, "on_ns": on});
        (
            Value::Array(rows),
            Value::Object(overhead),
            median_f(limiter),
            monitor,
        )
    })
    .expect("ns")
}

/// 3. Scaling: many VIFs configured, many entries on one VIF.
pub(crate) fn scaling(opts: &Opts, dev: (&NetNs, u32)) -> (Value, Value) {
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
