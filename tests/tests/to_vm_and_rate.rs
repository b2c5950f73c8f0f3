//! To-VM locking and the rate limit, end to end in namespaces: a flooding bridge no longer
//! leaks other VMs' unicast into a locked VM, a disabled VIF is dead both ways and comes back
//! without a link flap, iperf3 UDP at twice the configured rate is shaped to it, one TCP flow
//! gets the rate near and 20 ms away, and a flood on one VIF does not reach another's.

use std::{
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use lockd::dataplane::{Dataplane, XdpModeRequest};
use lockd_common::{
    Direction, Reason,
    policy::{
        EffectiveMode, RateLimit, VifPolicy, format_mac, parse_ipv4_list, parse_ipv6_list,
        solicited_node,
    },
};
use lockd_kit::{
    frames::{self, BROADCAST, Mac, multicast_mac, nd_body},
    netlab::{NetNs, bridge, veth},
};
use lockd_tests::wire::{Capture, FAR_IP, FarHost, delivered, send, tcp_frame_rate};

const MAC: [Mac; 3] = [
    [0x02, 0, 0, 0, 0, 0x0a],
    [0x02, 0, 0, 0, 0, 0x0b],
    [0x02, 0, 0, 0, 0, 0x0c],
];
const IPS: [&str; 3] = ["10.0.0.1", "10.0.0.2", "10.0.0.3"];

struct Lab {
    dp: Dataplane,
    host: NetNs,
    vms: Vec<(NetNs, u32)>,
}

fn policy(i: usize, mode: EffectiveMode, rate: Option<RateLimit>) -> VifPolicy {
    VifPolicy {
        mode,
        mac: MAC[i],
        ipv4: parse_ipv4_list(IPS[i]).expect("v4"),
        ipv6: parse_ipv6_list(&format!("2001:db8::{}", i + 1)).expect("v6"),
        rate,
    }
}

impl Lab {
    /// Three VMs on a bridge, all locked; with `addresses`, the VMs get their IPv4 addresses.
    fn new(addresses: bool) -> Lab {
        let host = NetNs::new("rh").expect("ns");
        bridge(&host, "br0").expect("bridge");
        let mut vms = Vec::new();
        for i in 0..3 {
            let ns = NetNs::new(&format!("r{i}")).expect("ns");
            let vif = format!("vif{i}");
            veth(&host, &vif, &ns, "eth0", &format_mac(MAC[i]), Some("br0")).expect("veth");
            if addresses {
                ns.exec(&[
                    "ip",
                    "addr",
                    "add",
                    &format!("{}/24", IPS[i]),
                    "dev",
                    "eth0",
                ])
                .expect("addr");
            }
            let ifx = host.ifindex(&vif).expect("ifindex");
            vms.push((ns, ifx));
        }
        let ifxs: Vec<u32> = vms.iter().map(|(_, i)| *i).collect();
        let dp = host
            .run(move || {
                let mut dp = Dataplane::load().expect("load");
                for (i, ifx) in ifxs.iter().enumerate() {
                    dp.set_policy(*ifx, &policy(i, EffectiveMode::Locked, None))
                        .expect("policy");
                    dp.attach(*ifx, XdpModeRequest::Auto).expect("attach");
                }
                dp
            })
            .expect("host ns");
        Lab { dp, host, vms }
    }

    fn ns(&self, i: usize) -> &NetNs {
        &self.vms[i].0
    }

    fn ifx(&self, i: usize) -> u32 {
        self.vms[i].1
    }

    fn to_vm(&self, i: usize, reason: Reason) -> u64 {
        self.dp
            .counter(self.ifx(i), Direction::ToVm, reason)
            .expect("counter")
            .packets
    }

    /// Sends `frames` from VM `from`; returns how many arrived at each other VM (the sender's
    /// own slot stays 0: its capture would only see its own transmissions).
    fn flood(&self, from: usize, frames: &[Vec<u8>]) -> [usize; 3] {
        let caps: Vec<(usize, Capture)> = (0..3)
            .filter(|i| *i != from)
            .map(|i| (i, Capture::start(self.ns(i), "eth0")))
            .collect();
        send(self.ns(from), "eth0", frames);
        let mut out = [0; 3];
        for (i, c) in caps {
            out[i] = delivered(&c.finish(), frames);
        }
        out
    }
}

/// `n` UDP datagrams from VM `from` to VM `to` (their MACs and addresses), source ports from
/// `port`.
fn udp_between(from: usize, to: usize, n: u16, port: u16, payload: &[u8]) -> Vec<Vec<u8>> {
    let ip = |i: usize| IPS[i].parse::<Ipv4Addr>().expect("VM address");
    (0..n)
        .map(|i| frames::udp4(MAC[from], MAC[to], ip(from), ip(to), port + i, 9, payload))
        .collect()
}

#[test]
fn flooded_unicast_does_not_reach_a_locked_vm() {
    let mut lab = Lab::new(false);
    // The bridge has learnt no MAC yet: unicast from VM-0 to VM-1 floods to every port.
    let to_b = udp_between(0, 1, 10, 4000, b"for b");
    let foreign_before = lab.to_vm(2, Reason::RxForeignMac);
    let got = lab.flood(0, &to_b);
    assert_eq!(got[1], 10, "VM-1 must receive its own unicast");
    assert_eq!(got[2], 0, "locked VM-2 read unicast meant for VM-1");
    assert_eq!(lab.to_vm(2, Reason::RxForeignMac) - foreign_before, 10);
    // Never-learnt destination: flooded everywhere, delivered nowhere locked.
    let unknown: Vec<_> = (0..5)
        .map(|i| {
            frames::udp4(
                MAC[0],
                [0x02, 0, 0, 0, 0, 0x99],
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 9),
                5000 + i,
                9,
                b"x",
            )
        })
        .collect();
    assert_eq!(lab.flood(0, &unknown), [0, 0, 0]);
    // Broadcast ARP and multicast NDP still reach the locked VMs.
    let arp = frames::arp(
        MAC[0],
        BROADCAST,
        1,
        MAC[0],
        Ipv4Addr::new(10, 0, 0, 1),
        [0; 6],
        Ipv4Addr::new(10, 0, 0, 3),
    );
    let target: std::net::Ipv6Addr = "2001:db8::3".parse().expect("addr");
    let sn = solicited_node(target);
    let ns = frames::icmp6(
        MAC[0],
        multicast_mac(sn),
        "2001:db8::1".parse().expect("addr"),
        sn,
        135,
        &nd_body(0, target, &[frames::ll_option(1, MAC[0])]),
    );
    assert_eq!(lab.flood(0, &[arp, ns]), [0, 2, 2]);
    // Unlock VM-2: now it sees the flood, as with xapi.
    let ifx2 = lab.ifx(2);
    lab.dp
        .set_policy(ifx2, &policy(2, EffectiveMode::Unlocked, None))
        .expect("unlock");
    let got = lab.flood(0, &to_b);
    assert_eq!(got[2], 10, "unlocked VM-2 should see flooded unicast");
}

#[test]
fn disabled_vif_is_dead_both_ways_and_recovers_without_a_flap() {
    let mut lab = Lab::new(false);
    let flaps = |lab: &Lab| {
        lab.host
            .exec(&["cat", "/sys/class/net/vif1/carrier_changes"])
            .expect("carrier")
    };
    let before = flaps(&lab);
    let ifx1 = lab.ifx(1);
    lab.dp
        .set_policy(ifx1, &policy(1, EffectiveMode::Disabled, None))
        .expect("disable");
    let to_b = udp_between(0, 1, 5, 100, b"in");
    let bcast = vec![frames::arp(
        MAC[0],
        BROADCAST,
        1,
        MAC[0],
        Ipv4Addr::new(10, 0, 0, 1),
        [0; 6],
        Ipv4Addr::new(10, 0, 0, 2),
    )];
    let from_b = udp_between(1, 0, 5, 200, b"out");
    assert_eq!(lab.flood(0, &to_b)[1], 0, "disabled VIF received unicast");
    assert_eq!(
        lab.flood(0, &bcast)[1],
        0,
        "disabled VIF received broadcast"
    );
    assert_eq!(lab.flood(1, &from_b)[0], 0, "disabled VIF sent");
    assert!(
        lab.to_vm(1, Reason::Disabled) >= 6,
        "drops toward the VM not counted"
    );
    assert_eq!(
        lab.dp
            .counter(ifx1, Direction::FromVm, Reason::Disabled)
            .expect("c")
            .packets,
        5
    );
    lab.dp
        .set_policy(ifx1, &policy(1, EffectiveMode::Locked, None))
        .expect("re-lock");
    assert_eq!(lab.flood(0, &to_b)[1], 5);
    assert_eq!(lab.flood(1, &from_b)[0], 5);
    assert_eq!(flaps(&lab), before, "the link was flapped");
}

/// What the iperf3 clients send, at how many bits per second each.
#[derive(Clone, Copy)]
enum Load {
    Udp(u64),
    Tcp(u64),
}

/// An iperf3 server in `ns` on `port`, serving one test.
fn server(ns: &NetNs, port: u16) -> Child {
    let c = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns.name(),
            "iperf3",
            "-s",
            "-1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("iperf3 server (is iperf3 installed? `cargo xtask test` installs it)");
    std::thread::sleep(Duration::from_millis(300));
    c
}

/// Runs iperf3 clients in `ns` (one per CPU given) toward `dst` for `secs`; each must succeed.
/// Returns each client's JSON report.
fn clients(ns: &str, dst: &str, cpus: &[u32], load: Load, secs: u32) -> Vec<serde_json::Value> {
    clients_on(ns, dst, 5201, cpus, load, secs)
}

/// The same, the first client on `first_port`. `ns` is a namespace's name.
fn clients_on(
    ns: &str,
    dst: &str,
    first_port: u16,
    cpus: &[u32],
    load: Load,
    secs: u32,
) -> Vec<serde_json::Value> {
    let procs: Vec<Child> = cpus
        .iter()
        .enumerate()
        .map(|(k, cpu)| {
            let mut args: Vec<String> = [
                "netns",
                "exec",
                ns,
                "taskset",
                "-c",
                &cpu.to_string(),
                "iperf3",
                "-J",
                "-c",
                dst,
                "-p",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            args.push((first_port as usize + k).to_string());
            args.extend(["-t".to_string(), secs.to_string()]);
            match load {
                Load::Udp(bps) => args.extend([
                    "-u".into(),
                    "-b".into(),
                    bps.to_string(),
                    "-l".into(),
                    "1200".into(),
                ]),
                Load::Tcp(bps) => args.extend(["-b".into(), bps.to_string()]),
            }
            Command::new("ip")
                .args(&args[..])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("iperf3 client")
        })
        .collect();
    procs
        .into_iter()
        .map(|p| {
            let out = p.wait_with_output().expect("iperf3");
            assert!(
                out.status.success(),
                "iperf3 client failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice(&out.stdout).expect("iperf3 -J output")
        })
        .collect()
}

/// Where VM-1's iperf3 traffic goes: a namespace running the servers and its address.
type Peer<'a> = (&'a NetNs, &'a str);

/// Frame bytes the peer's interface has received so far: the rate is measured where the
/// frames arrive, not by the shaper's own counter.
fn received(peer: Peer<'_>) -> u64 {
    lockd_tests::wire::rx_bytes(peer.0, "eth0")
}

/// One run of VM-1's clients: the rate its frames arrive at the peer in the steady state
/// (frame bytes per second received, sampled from 1 s in to 1 s before the end), how many frames were dropped as
/// `ratelimit` (its backlog full), and the clients' reports.
fn measure(
    lab: &Lab,
    peer: Peer<'_>,
    cpus: &[u32],
    load: Load,
    secs: u32,
) -> (f64, u64, Vec<serde_json::Value>) {
    let servers: Vec<Child> = (0..cpus.len())
        .map(|k| server(peer.0, 5201 + k as u16))
        .collect();
    let limited = |lab: &Lab| {
        lab.dp
            .counter(lab.ifx(1), Direction::FromVm, Reason::Ratelimit)
            .expect("counter")
            .packets
    };
    let r0 = limited(lab);
    let (rate, reports) = std::thread::scope(|sc| {
        let vm = lab.ns(1).name().to_string();
        let run = sc.spawn(move || clients(&vm, peer.1, cpus, load, secs));
        std::thread::sleep(Duration::from_secs(1));
        let (t0, b0) = (std::time::Instant::now(), received(peer));
        std::thread::sleep(Duration::from_secs(u64::from(secs) - 2));
        let (t1, b1) = (std::time::Instant::now(), received(peer));
        let reports = run.join().expect("clients");
        ((b1 - b0) as f64 / (t1 - t0).as_secs_f64(), reports)
    });
    for mut s in servers {
        let _ = s.wait();
    }
    (rate, limited(lab) - r0, reports)
}

const KBPS: u64 = 1024; // 1 MiB/s

fn limited(i: usize) -> VifPolicy {
    policy(
        i,
        EffectiveMode::Locked,
        Some(RateLimit {
            kbps: KBPS,
            timeslice_us: 50_000,
        }),
    )
}

impl Lab {
    /// Sets VM `i`'s policy from inside the host namespace, where its shaper must live.
    fn set(&mut self, i: usize, p: &VifPolicy) {
        let ifx = self.ifx(i);
        let dp = &mut self.dp;
        self.host
            .run(move || dp.set_policy(ifx, p))
            .expect("host ns")
            .expect("set policy");
    }
}

/// The rate limit shapes: over-rate frames wait in a bounded backlog, so UDP holds the rate
/// within 2 % and one TCP flow gets at least 90 % of it, to a VM on the same bridge and to a
/// host 20 ms away; clearing the limit removes the shaper device and lifts the limit.
#[test]
fn rate_limit_shapes_to_the_configured_rate() {
    let mut lab = Lab::new(true);
    let configured = (KBPS * 1024) as f64;
    lab.set(1, &limited(1));
    let shaper = lockd::dataplane::shaper::name(lab.ifx(1));
    lab.host
        .exec(&["ip", "link", "show", &shaper])
        .expect("the shaper device exists");
    let far_host = FarHost::start(&lab.host, "br0", lab.ns(1));
    let far = &far_host.far;
    let near: Peer<'_> = (lab.ns(0), IPS[0]);
    let remote: Peer<'_> = (far, FAR_IP);
    let twice_bits = (2.0 * configured * 8.0) as u64;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let two: Vec<u32> = (0..ncpu.min(2)).collect();
    for (name, peer, cpus, load) in [
        ("UDP, 1 sender", near, vec![0], Load::Udp(twice_bits)),
        (
            "UDP, 2 senders on 2 CPUs",
            near,
            two.clone(),
            Load::Udp(twice_bits / 2),
        ),
        (
            "UDP, 2 senders, to a host 20 ms away",
            remote,
            two,
            Load::Udp(twice_bits / 2),
        ),
    ] {
        let (achieved, dropped, _) = measure(&lab, peer, &cpus, load, 8);
        let ratio = achieved / configured;
        eprintln!(
            "{name}: {achieved:.0} B/s of {configured:.0}, ratio {ratio:.4}, {dropped} dropped (backlog full)"
        );
        assert!(
            (0.98..=1.02).contains(&ratio),
            "{name}: achieved/configured = {ratio:.4}"
        );
        assert!(
            dropped > 0,
            "{name}: twice the rate never filled the backlog"
        );
    }
    for (name, peer) in [
        ("TCP, 1 flow, same bridge", near),
        ("TCP, 1 flow, 20 ms away", remote),
    ] {
        let (_, _, reports) = measure(&lab, peer, &[0], Load::Tcp(twice_bits), 8);
        let ratio = tcp_frame_rate(&reports[0]).expect("a TCP report") / configured;
        eprintln!("{name}: ratio {ratio:.4}");
        assert!(
            ratio >= 0.9,
            "{name}: one TCP flow got {ratio:.4} of the rate"
        );
    }
    // Clearing the QoS: no shaper device is left, and the limit is gone.
    lab.set(1, &policy(1, EffectiveMode::Locked, None));
    assert!(
        lab.host.exec(&["ip", "link", "show", &shaper]).is_err(),
        "the shaper device outlived its rate limit"
    );
    let links = lab.host.exec(&["ip", "-o", "link"]).expect("links");
    assert!(!links.contains("lockdq"), "a shaper is left: {links}");
    let servers = server(lab.ns(0), 5201);
    let before = lab.dp.counters(lab.ifx(1)).expect("counters");
    clients(lab.ns(1).name(), IPS[0], &[0], Load::Udp(twice_bits), 3);
    let after = lab.dp.counters(lab.ifx(1)).expect("counters");
    drop(servers);
    let delta = after.delta(&before);
    let passed = delta.get(Direction::FromVm, Reason::Pass).bytes as f64 / 3.0;
    eprintln!(
        "cleared: {passed:.0} B/s passed ({:.2}× the old limit)",
        passed / configured
    );
    assert_eq!(delta.get(Direction::FromVm, Reason::Ratelimit).packets, 0);
    assert!(
        passed > 1.5 * configured,
        "clearing the rate did not lift it"
    );
}

/// Each rate-limited VIF has its own backlog: a flood at ten times the rate from VM-1 fills
/// VM-1's (which stays within its bound) while VM-2, under its own limit, loses nothing and
/// its round trips stay far below what a shared queue would add.
#[test]
fn a_flood_on_one_vif_leaves_another_vif_unharmed() {
    let mut lab = Lab::new(true);
    let configured = (KBPS * 1024) as f64;
    lab.set(1, &limited(1));
    lab.set(2, &limited(2));
    let (_, burst, backlog_limit) = lockd::dataplane::shaper::params(&RateLimit {
        kbps: KBPS,
        timeslice_us: 50_000,
    });
    eprintln!("burst {burst} B, backlog bound {backlog_limit} B");
    let flood_srv = server(lab.ns(0), 5301);
    let calm_srv = server(lab.ns(0), 5401);
    let ten_times = (10.0 * configured * 8.0) as u64;
    let half = (0.5 * configured * 8.0) as u64;
    let ping = |lab: &Lab| -> f64 {
        let out = lab
            .ns(2)
            .exec(&["ping", "-q", "-c", "20", "-i", "0.05", IPS[0]])
            .expect("ping");
        // rtt min/avg/max/mdev = a/b/c/d ms
        let stats = out.rsplit('=').next().expect("ping summary");
        stats
            .trim()
            .split('/')
            .nth(2)
            .expect("max")
            .parse()
            .expect("ms")
    };
    let quiet_max = ping(&lab);
    let (calm, flood_max, peak_backlog) = std::thread::scope(|sc| {
        let (vm1, vm2) = (lab.ns(1).name().to_string(), lab.ns(2).name().to_string());
        let flood = sc.spawn(move || clients_on(&vm1, IPS[0], 5301, &[0], Load::Udp(ten_times), 6));
        std::thread::sleep(Duration::from_millis(500));
        let calm = sc.spawn(move || {
            clients_on(
                &vm2,
                IPS[0],
                5401,
                &[1.min(std::thread::available_parallelism().map_or(1, |n| n.get()) as u32 - 1)],
                Load::Udp(half),
                4,
            )
        });
        let mut peak = 0;
        let mut flood_max = 0.0f64;
        for _ in 0..3 {
            let (_, st) = lab
                .dp
                .shaper_stats(lab.ifx(1))
                .expect("stats")
                .expect("shaper");
            peak = peak.max(st.backlog_bytes);
            flood_max = flood_max.max(ping(&lab));
        }
        let calm = calm.join().expect("calm client");
        flood.join().expect("flood client");
        (calm, flood_max, peak)
    });
    drop((flood_srv, calm_srv));
    let recv = &calm[0]["end"]["sum_received"];
    let lost = recv["lost_packets"]
        .as_u64()
        .unwrap_or_else(|| panic!("no lost_packets in iperf3's report: {recv}"));
    let sent = calm[0]["end"]["sum_sent"]["packets"]
        .as_u64()
        .expect("packets");
    let dropped = lab
        .dp
        .counter(lab.ifx(1), Direction::FromVm, Reason::Ratelimit)
        .expect("counter")
        .packets;
    eprintln!(
        "VM-2 under VM-1's flood: {lost} of {sent} datagrams lost; ping max {quiet_max:.2} ms quiet, {flood_max:.2} ms during the flood; VM-1's backlog peaked at {peak_backlog} B, {dropped} of its frames dropped"
    );
    assert!(dropped > 0, "the flood never filled VM-1's backlog");
    assert!(
        peak_backlog <= backlog_limit,
        "VM-1's backlog {peak_backlog} B passed its bound"
    );
    assert!(lost * 1000 <= sent, "VM-2 lost {lost} of {sent} datagrams");
    // A queue shared with VM-1's full backlog would add its length at the rate: ~100 ms.
    assert!(
        flood_max < 20.0,
        "VM-2's round trips reached {flood_max:.2} ms"
    );
}
