//! The toolstack hook as xenopsd drives it (`../shared/TOOLSTACK.md`): records in its
//! encoder's exact shape under `<dir>/classic/VM/<vm>/vif.<devid>`, the real call sequences,
//! real frames through real netdevs that the hook itself puts on the bridge.

use std::{net::Ipv4Addr, path::Path};

use lockd_common::policy::format_mac;
use lockd_kit::{
    frames::{self, BROADCAST, Mac},
    netlab::{NetNs, bridge, veth},
};
use lockd_tests::{
    daemon::{Instance, Out},
    wire::{Capture, delivered, send},
};

const MAC_A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B: Mac = [0x02, 0, 0, 0, 0, 0x0b];
const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const IP_PREFIX: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 9);
const IP_SPOOF: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
const VM: &str = "a1b2c3d4-0000-4000-8000-000000000007";
const VM_TARGET: &str = "a1b2c3d4-0000-4000-8000-000000000008";
const VIF: &str = "6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a07";

/// xenbr0 with VM-a (receiver) on it; VM-b's netdevs exist but are on no bridge, as netback
/// and qemu create them: `vif7.0` (its eth0) and `tap7.0` (its eth1).
struct Host {
    ns: NetNs,
    a: NetNs,
    b: NetNs,
    d: Instance,
    dir: std::path::PathBuf,
}

impl Host {
    fn new() -> Host {
        let ns = NetNs::new("hh").expect("ns");
        bridge(&ns, "xenbr0").expect("bridge");
        let a = NetNs::new("ha").expect("ns");
        veth(&ns, "vifa", &a, "eth0", &format_mac(MAC_A), Some("xenbr0")).expect("veth a");
        let b = NetNs::new("hb").expect("ns");
        for (dev, peer) in [("vif7.0", "eth0"), ("tap7.0", "eth1"), ("vif8.0", "eth2")] {
            veth(&ns, dev, &b, peer, &format_mac(MAC_B), None).expect("veth b");
            ns.exec(&["ip", "link", "set", dev, "down"]).expect("down");
        }
        let mut d = Instance::new(&ns);
        let dir = d.state_dir.with_file_name("xenopsd");
        d.env
            .push(("LOCKD_XENOPSD_DIR".into(), dir.display().to_string()));
        d.env
            .push(("LOCKD_METRICS_LISTEN".into(), "127.0.0.1:9464".into()));
        d.start();
        Host { ns, a, b, d, dir }
    }

    /// Writes `fixture` (with `edit` applied) as VM `vm`'s record for devid 0.
    fn record(&self, vm: &str, fixture: &str, edit: impl Fn(String) -> String) {
        let target = self.dir.join("classic/VM").join(vm);
        std::fs::create_dir_all(&target).expect("record dir");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("fixtures/xenopsd")
                .join(fixture),
        )
        .expect("fixture");
        std::fs::write(target.join("vif.0"), edit(text)).expect("record");
    }

    fn hook(&self, dev: &str, vm: &str, action: &str) -> Out {
        self.d.cli(&[
            "hook",
            "setup-vif-rules",
            "classic",
            dev,
            vm,
            "0",
            action,
            "--xenopsd-dir",
            self.dir.to_str().expect("utf-8"),
        ])
    }

    /// (bridge, up) of a host netdev.
    fn plumbing(&self, dev: &str) -> (String, bool) {
        lockd_tests::scene::plumbing(&self.ns, dev)
    }

    /// From VM-b's `peer`: (spoofed frames delivered to VM-a, genuine ones delivered).
    fn burst(&self, peer: &str, base: u16) -> (usize, usize) {
        let udp = |src: Ipv4Addr, i: u16| {
            frames::udp4(
                MAC_B,
                BROADCAST,
                src,
                IP_A,
                7000 + base + i,
                9,
                b"lockd hook",
            )
        };
        let spoof: Vec<_> = (0..5).map(|i| udp(IP_SPOOF, i)).collect();
        let good: Vec<_> = (0..5)
            .map(|i| udp(if i % 2 == 0 { IP_B } else { IP_PREFIX }, i))
            .collect();
        let cap = Capture::start(&self.a, "eth0");
        let mut all = spoof.clone();
        all.extend(good.clone());
        send(&self.b, peer, &all);
        let got = cap.finish();
        (delivered(&got, &spoof), delivered(&got, &good))
    }

    fn vifs(&self) -> serde_json::Value {
        self.d.cli(&["vif-list", "--json"]).json()
    }
}

/// The hook as xenopsd runs it: its own process, talking to the daemon at `sock`.
fn hook_process(
    sock: &Path,
    dir: &Path,
    dev: &str,
    vm: &str,
    action: &str,
) -> std::process::Command {
    let mut c = std::process::Command::new(lockd_tests::daemon::lockd_bin());
    c.args(["hook", "setup-vif-rules", "classic", dev, vm, "0", action])
        .env("LOCKD_SOCKET", sock)
        .env("LOCKD_XENOPSD_DIR", dir);
    c
}

/// An HVM guest: `vif7.0` and `tap7.0` for one VIF uuid; both filtered, a live locking-mode
/// change re-filters both, the tap is cleared when PV drivers load and the vif stays enforced.
#[test]
fn hvm_vif_and_tap_share_one_vif() {
    let h = Host::new();
    h.record(VM, "vif-locked.json", |t| t);
    let r = h.hook("vif7.0", VM, "filter");
    assert_eq!(r.code, 0, "{}", r.stderr);
    // The record's host-bit prefix is accepted and stored as its network.
    let v = &h.vifs()[0];
    assert_eq!(v["uuid"], VIF);
    assert_eq!(
        v["ipv4_allowed"],
        serde_json::json!(["10.0.0.2", "10.0.2.0/24"])
    );
    // rate [1024, 0]: 1024 kB/s with the default timeslice.
    assert_eq!(v["qos_algorithm_params"]["kbps"], 1024);
    assert_eq!(
        h.plumbing("vif7.0"),
        ("xenbr0".into(), true),
        "on its bridge and up"
    );
    assert_eq!(h.burst("eth0", 0), (0, 5));

    h.hook("tap7.0", VM, "filter").ok();
    assert_eq!(h.plumbing("tap7.0"), ("xenbr0".into(), true));
    assert_eq!(h.burst("eth1", 10), (0, 5), "the tap is enforced too");
    // Both netdevs are shown and counted, each on its own and summed for the VIF; /metrics
    // has the same per netdev.
    let stats = h.d.cli(&["vif-stats", "--json"]).json();
    let netdevs = stats[0]["netdevs"].as_array().expect("netdevs").clone();
    let names: Vec<&str> = netdevs
        .iter()
        .filter_map(|n| n["device"].as_str())
        .collect();
    assert_eq!(names, ["vif7.0", "tap7.0"], "{stats}");
    let spoofed = |c: &serde_json::Value| {
        c["from_vm"]["ipv4_spoof"]["packets"]
            .as_u64()
            .expect("count")
    };
    assert_eq!(spoofed(&netdevs[0]["counters"]), 5, "{stats}");
    assert_eq!(spoofed(&netdevs[1]["counters"]), 5, "{stats}");
    assert_eq!(spoofed(&stats[0]["counters"]), 10, "the VIF's sum: {stats}");
    let listed = &h.vifs()[0]["netdevs"];
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    assert!(
        listed
            .as_array()
            .expect("netdevs")
            .iter()
            .all(|n| n["attach"] != "absent"),
        "{listed}"
    );
    // The scrape is taken between two vif-stats reads that agree (the bridge's own IGMP
    // reports flooded to the VM may land at any moment).
    let (netdevs, metrics) = (0..50)
        .find_map(|_| {
            let first = h.d.cli(&["vif-stats", "--json"]).json();
            let body =
                h.ns.exec(&["curl", "-sf", "http://127.0.0.1:9464/metrics"])
                    .expect("curl /metrics");
            (h.d.cli(&["vif-stats", "--json"]).json() == first).then(|| {
                (
                    first[0]["netdevs"].as_array().cloned().unwrap_or_default(),
                    body,
                )
            })
        })
        .expect("vif-stats never stood still for a scrape");
    for n in &netdevs {
        for (dir, reasons) in n["counters"].as_object().expect("dirs") {
            for (reason, c) in reasons.as_object().expect("reasons") {
                let labels = format!(
                    "lockd_frames_total{{vif=\"{VIF}\",device=\"{}\",direction=\"{dir}\",reason=\"{reason}\"}} ",
                    n["device"].as_str().expect("device")
                );
                let got = metrics
                    .lines()
                    .find_map(|l| l.strip_prefix(labels.as_str()))
                    .unwrap_or_else(|| panic!("no {labels} in /metrics"));
                assert_eq!(got.trim(), c["packets"].to_string(), "{labels}");
            }
        }
    }
    assert_eq!(
        h.burst("eth0", 20),
        (0, 5),
        "filtering the tap left the vif enforced"
    );
    assert_eq!(
        h.vifs().as_array().map(Vec::len),
        Some(1),
        "one VIF uuid, two netdevs"
    );

    // Live locking-mode change: xenopsd re-filters both names.
    h.record(VM, "vif-disabled.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    h.hook("tap7.0", VM, "filter").ok();
    assert_eq!(
        h.plumbing("vif7.0"),
        (String::new(), true),
        "a disabled VIF is on no bridge"
    );
    assert_eq!(h.plumbing("tap7.0"), (String::new(), true));
    assert_eq!(h.burst("eth0", 30), (0, 0));
    h.record(VM, "vif-locked.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    h.hook("tap7.0", VM, "filter").ok();
    assert_eq!(h.burst("eth0", 40), (0, 5));

    // PV drivers take over: the tap goes, the vif stays enforced.
    h.hook("tap7.0", VM, "clear").ok();
    assert_eq!(
        h.plumbing("tap7.0"),
        (String::new(), true),
        "clear takes it off the bridge"
    );
    assert_eq!(
        h.burst("eth0", 50),
        (0, 5),
        "clearing the tap left the vif unenforced"
    );
    assert_eq!(h.vifs()[0]["device"], "vif7.0");
    // Re-filtering a netdev already up on the right bridge does not flap it.
    let flaps = |h: &Host| {
        h.ns.exec(&["cat", "/sys/class/net/vif7.0/carrier_changes"])
            .expect("carrier")
    };
    let before = flaps(&h);
    h.hook("vif7.0", VM, "filter").ok();
    assert_eq!(flaps(&h), before, "the link was flapped");
    h.hook("vif7.0", VM, "clear").ok();
    assert_eq!(h.vifs(), serde_json::json!([]));
    // A second clear changes nothing and succeeds.
    h.hook("vif7.0", VM, "clear").ok();
}

/// Localhost migration: source and target domains at once, two records, two netdevs, one VIF
/// uuid; each clear concerns its own netdev only.
#[test]
fn localhost_migration_keeps_both_sides_enforced() {
    let h = Host::new();
    h.record(VM, "vif-locked.json", |t| t);
    h.record(VM_TARGET, "vif-locked.json", |t| t.replace(VM, VM_TARGET));
    h.hook("vif7.0", VM, "filter").ok();
    h.hook("vif8.0", VM_TARGET, "filter").ok();
    assert_eq!(h.burst("eth0", 0), (0, 5));
    assert_eq!(h.burst("eth2", 10), (0, 5));
    // The source goes away first.
    h.hook("vif7.0", VM, "clear").ok();
    assert_eq!(
        h.burst("eth2", 20),
        (0, 5),
        "the source's clear removed the target's policy"
    );
    assert_eq!(h.vifs()[0]["device"], "vif8.0");
    h.hook("vif8.0", VM_TARGET, "clear").ok();
    assert_eq!(h.vifs(), serde_json::json!([]));
}

/// Unlocked with `rate [0, 0]` (no limit), a Remote backend, and a record that cannot be read
/// after a valid one: each as POLICY.md v2 and netback say.
#[test]
fn records_lockd_cannot_use_fail_closed() {
    let h = Host::new();
    h.record(VM, "vif-unlocked.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    let v = &h.vifs()[0];
    assert_eq!(v["locking_mode"], "unlocked");
    assert_eq!(v["qos_algorithm_type"], "", "kbps 0 is no limit");
    assert_eq!(h.burst("eth0", 0), (5, 5));

    h.record(VM, "vif-locked.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    assert_eq!(h.burst("eth0", 10), (0, 5));
    // Unreadable after valid: the VIF keeps its policy, the hook fails naming it.
    h.record(VM, "vif-locked.json", |t| t[..t.len() / 2].to_string());
    let r = h.hook("vif7.0", VM, "filter");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("vif7.0") && r.stderr.contains("keeps the policy"),
        "{}",
        r.stderr
    );
    assert_eq!(h.burst("eth0", 20), (0, 5));
    // A rate the kernel cannot hold: refused, the policy stays.
    h.record(VM, "vif-locked.json", |t| {
        t.replace("[1024,0]", "[18446744073709551615,0]")
    });
    let r = h.hook("vif7.0", VM, "filter");
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("18446744073709551615"), "{}", r.stderr);
    assert_eq!(h.vifs()[0]["qos_algorithm_params"]["kbps"], 1024);

    // A Remote backend on a fresh netdev: a clear error, and the netdev is held disabled.
    h.record(VM_TARGET, "vif-remote.json", |t| {
        t.replace(VM, VM_TARGET).replace("7a07", "7a08")
    });
    h.ns.exec(&["ip", "link", "set", "vif8.0", "master", "xenbr0", "up"])
        .expect("plug");
    assert_eq!(
        h.burst("eth2", 30),
        (5, 5),
        "before lockd, the netdev passes everything"
    );
    let r = h.hook("vif8.0", VM_TARGET, "filter");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("Remote") && r.stderr.contains("enforced as disabled"),
        "{}",
        r.stderr
    );
    assert_eq!(h.burst("eth2", 40), (0, 0));
}

/// A daemon that was down, or is restarting: a hook call waits for it (bounded) instead of
/// failing the plug, and a change the toolstack recorded while it was down is applied when it
/// starts.
#[test]
fn a_restarting_daemon_loses_nothing() {
    let mut h = Host::new();
    h.record(VM, "vif-locked.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    assert_eq!(h.burst("eth0", 0), (0, 5));

    h.d.stop(libc::SIGTERM);
    // A live locking-mode change while lockd is down: the record changes, the hook cannot run.
    h.record(VM, "vif-disabled.json", |t| t);
    assert_eq!(
        h.burst("eth0", 10),
        (0, 5),
        "the pinned policy kept enforcing"
    );
    h.d.start();
    assert_eq!(
        h.vifs()[0]["locking_mode"],
        "disabled",
        "the record was re-read at start"
    );
    assert_eq!(h.plumbing("vif7.0"), (String::new(), true));
    assert_eq!(h.burst("eth0", 20), (0, 0));

    // A hook call while the daemon restarts waits for it.
    h.record(VM, "vif-locked.json", |t| t);
    h.d.stop(libc::SIGTERM);
    let started = std::time::Instant::now();
    let (sock, dir) = (h.d.socket.clone(), h.dir.clone());
    let call = std::thread::spawn(move || {
        hook_process(&sock, &dir, "vif7.0", VM, "filter")
            .output()
            .expect("hook")
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    h.d.start();
    let out = call.join().expect("hook thread");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(1500));
    assert_eq!(h.burst("eth0", 30), (0, 5));
}

/// On an Open vSwitch host lockd enforces and chains to the toolstack's own script for the
/// port plumbing (played here by a script that records its arguments and plugs the netdev).
#[test]
fn openvswitch_hosts_chain_to_the_original_script() {
    let h = Host::new();
    h.record(VM, "vif-locked.json", |t| t);
    let log = h.dir.with_file_name("original.log");
    let script = h.dir.with_file_name("original-setup-vif-rules");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$@\" >> {log}\nif [ \"$5\" = filter ]; then ip -n {ns} link set \"$2\" master xenbr0 up; else ip -n {ns} link set \"$2\" nomaster; fi\n",
            log = log.display(),
            ns = h.ns.name()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let hook = |action: &str| {
        hook_process(&h.d.socket, &h.dir, "vif7.0", VM, action)
            .env("LOCKD_NETWORK_BACKEND", "openvswitch")
            .env("LOCKD_ORIGINAL_SETUP_VIF_RULES", &script)
            .output()
            .expect("hook")
    };
    let out = hook("filter");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.burst("eth0", 0),
        (0, 5),
        "enforced by lockd, plugged by the original"
    );
    let out = hook("clear");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log).expect("log");
    assert_eq!(
        calls,
        format!("classic vif7.0 {VM} 0 filter\nclassic vif7.0 {VM} 0 clear\n")
    );
    assert_eq!(h.vifs(), serde_json::json!([]));
}

/// A netdev name reused by a new VM (its domid recycled) whose record lockd cannot read: the
/// fence follows the VM that plugs it, so the earlier VM's VIF never lends the new guest its
/// policy; the new VM's valid record lifts the fence.
#[test]
fn a_reused_netdev_name_never_keeps_an_earlier_vms_policy() {
    let mut h = Host::new();
    h.record(VM, "vif-unlocked.json", |t| t);
    h.hook("vif7.0", VM, "filter").ok();
    assert_eq!(h.burst("eth0", 0), (5, 5), "the earlier VM is unlocked");
    // The earlier VM is gone without a clear; a new one gets the same netdev name and a
    // record lockd cannot read.
    h.record(VM_TARGET, "vif-locked.json", |t| {
        t.replace(VM, VM_TARGET)[..t.len() / 2].to_string()
    });
    let r = h.hook("vif7.0", VM_TARGET, "filter");
    assert_ne!(r.code, 0);
    assert!(
        r.stderr.contains("enforced as disabled") && !r.stderr.contains("keeps the policy"),
        "{}",
        r.stderr
    );
    assert_eq!(
        h.burst("eth0", 10),
        (0, 0),
        "the new VM got the earlier VM's unlocked policy"
    );
    let listed = h.vifs();
    let held = listed
        .as_array()
        .and_then(|a| {
            a.iter()
                .find_map(|v| v["held"].as_str().map(str::to_string))
        })
        .unwrap_or_else(|| panic!("nothing held in {listed}"));
    assert!(held.contains("record"), "{held}");
    // The fence is stored: a restarted daemon (which also reads the records on disk) keeps
    // the netdev held and does not hand it back to the earlier VM's VIF.
    h.d.stop(libc::SIGTERM);
    h.d.start();
    assert_eq!(
        h.burst("eth0", 15),
        (0, 0),
        "after a restart the new VM got the earlier VM's policy: {} {}",
        h.vifs(),
        h.d.log()
    );
    // The new VM's record, readable now: its own VIF, enforced; the fence is lifted.
    h.record(VM_TARGET, "vif-locked.json", |t| {
        t.replace(VM, VM_TARGET).replace("7a07", "7a08")
    });
    let r = h.hook("vif7.0", VM_TARGET, "filter");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        h.burst("eth0", 20),
        (0, 5),
        "{r:?} {} {:?} {}",
        h.vifs(),
        h.plumbing("vif7.0"),
        h.d.log()
    );
}
