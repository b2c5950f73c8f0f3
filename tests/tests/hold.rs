//! Failing closed on every path, with the real daemon on real netdevs: a netdev lockd cannot
//! attach is held (off its bridge and down) while the rest of its batch is enforced, and is
//! put back once the cause goes; a stored row that fails validation holds only its own VIF;
//! after lost rtnetlink events, netdevs that vanished leave the dataplane.

use std::time::{Duration, Instant};

use lockd_common::policy::format_mac;
use lockd_kit::{
    frames::{self, Mac},
    netlab::{NetNs, bridge, send_frames, veth},
    programs::{Helpers, PROG_EMPTY},
};
use lockd_tests::{
    daemon::Instance,
    scene::{IP_A, IP_B, IP_SPOOF, MAC_A, MAC_B, NET, VIF, configure, plumbing},
    wire::{Capture, delivered},
};

const MAC_C: Mac = [0x02, 0, 0, 0, 0, 0x0c];
const IP_C: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 0, 3);
const VIF_C: &str = "7a2d4e91-5b3c-4f60-8e1d-2c9b0a7f3e44";
/// VM c's host netdev: sorts before `vifb`, so a netdev that fails first in a batch must
/// not keep the ones after it unenforced.
const DEV_C: &str = "vif0";
const METRICS: &str = "127.0.0.1:9464";

struct Topo {
    host: NetNs,
    a: NetNs,
    b: NetNs,
    c: NetNs,
}

fn topo() -> Topo {
    let host = NetNs::new("fh").expect("ns");
    bridge(&host, "br0").expect("bridge");
    let a = NetNs::new("fa").expect("ns");
    veth(&host, "vifa", &a, "eth0", &format_mac(MAC_A), Some("br0")).expect("veth a");
    let b = NetNs::new("fb").expect("ns");
    let c = NetNs::new("fc").expect("ns");
    Topo { host, a, b, c }
}

fn plug_b(t: &Topo) {
    veth(
        &t.host,
        "vifb",
        &t.b,
        "eth0",
        &format_mac(MAC_B),
        Some("br0"),
    )
    .expect("veth b");
}

fn plug_c(t: &Topo) {
    veth(
        &t.host,
        DEV_C,
        &t.c,
        "eth0",
        &format_mac(MAC_C),
        Some("br0"),
    )
    .expect("veth c");
}

/// VIF c on `DEV_C`, locked to `IP_C`.
fn configure_c(d: &Instance) {
    d.cli(&[
        "vif-create",
        &format!("network-uuid={NET}"),
        &format!("device={DEV_C}"),
        &format!("mac={}", format_mac(MAC_C)),
        &format!("uuid={VIF_C}"),
    ])
    .ok();
    d.cli(&[
        "vif-param-set",
        &format!("uuid={VIF_C}"),
        "locking-mode=locked",
        &format!("ipv4-allowed={IP_C}"),
    ])
    .ok();
}

/// `n` spoofed and `n` genuine frames from a VM: (spoofed, genuine) delivered to VM a.
fn burst(t: &Topo, vm: &NetNs, mac: Mac, own: std::net::Ipv4Addr, base: u32) -> (usize, usize) {
    let f = |src, i: u32| {
        frames::udp4(
            mac,
            MAC_A,
            src,
            IP_A,
            30_000 + (i % 30_000) as u16,
            9,
            &i.to_be_bytes(),
        )
    };
    let spoof: Vec<_> = (0..5).map(|i| f(IP_SPOOF, base + i)).collect();
    let good: Vec<_> = (0..5).map(|i| f(own, base + i)).collect();
    let cap = Capture::start(&t.a, "eth0");
    let mut all = spoof.clone();
    all.extend(good.clone());
    // A held netdev may be down on the host side: the VM's sends then go nowhere.
    let _ = send_frames(vm, "eth0", &all);
    let got = cap.finish();
    (delivered(&got, &spoof), delivered(&got, &good))
}

fn vif(d: &Instance, uuid: &str) -> serde_json::Value {
    let all = d.cli(&["vif-list", "--json"]).json();
    all.as_array()
        .and_then(|a| a.iter().find(|v| v["uuid"] == uuid).cloned())
        .unwrap_or_else(|| panic!("no VIF {uuid} in {all}"))
}

fn scrape(t: &Topo) -> String {
    t.host
        .exec(&["curl", "-sf", &format!("http://{METRICS}/metrics")])
        .expect("curl /metrics")
}

fn gauge(body: &str, name_and_labels: &str) -> Option<i64> {
    body.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Waits (bounded, generously) until `f` holds; how long it took.
fn until(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{what}: not within 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A netdev that arrives with a foreign XDP program and an old-style `ingress` qdisc (no room
/// for clsact) in the same batch as a healthy one, at daemon start: the healthy one is
/// enforced, the other held off its bridge and down, named in the log, `vif-list` and
/// `/metrics`; once the cause is gone, the next command for it enforces it and puts it back.
#[test]
fn a_netdev_that_cannot_be_attached_is_held_and_its_batch_enforced() {
    let t = topo();
    let mut d = Instance::new(&t.host);
    d.env.push(("LOCKD_METRICS_LISTEN".into(), METRICS.into()));
    d.start();
    configure(&d, &["ipv4-allowed=10.0.0.2"]);
    configure_c(&d);
    d.stop(libc::SIGTERM);
    // Both netdevs appear while the daemon is down: the start reconciles them in one batch.
    plug_c(&t);
    t.host
        .exec(&["tc", "qdisc", "add", "dev", DEV_C, "ingress"])
        .expect("ingress qdisc");
    let mut foreign = Helpers::load();
    let xdp = t
        .host
        .run(|| {
            foreign
                .program(PROG_EMPTY)
                .attach(DEV_C, aya::programs::XdpMode::Skb)
        })
        .expect("ns")
        .expect("foreign XDP program");
    plug_b(&t);
    assert_eq!(
        burst(&t, &t.c, MAC_C, IP_C, 0).0,
        5,
        "before lockd, the foreign netdev forwards spoofed frames"
    );
    d.start();

    assert_eq!(
        burst(&t, &t.b, MAC_B, IP_B, 10),
        (0, 5),
        "the healthy netdev is enforced"
    );
    assert_ne!(vif(&d, VIF)["attach"], "absent");
    assert!(vif(&d, VIF)["held"].is_null());
    let c = vif(&d, VIF_C);
    let held = c["held"]
        .as_str()
        .unwrap_or_else(|| panic!("VIF c not held: {c}"));
    assert!(
        held.contains("attach")
            && held.contains("ingress qdisc")
            && held.contains("off its bridge"),
        "{held}"
    );
    assert_eq!(
        plumbing(&t.host, DEV_C),
        (String::new(), false),
        "held: off its bridge and down"
    );
    assert_eq!(
        burst(&t, &t.c, MAC_C, IP_C, 20),
        (0, 0),
        "a held netdev forwards nothing"
    );
    let log = d.log();
    assert!(
        log.lines()
            .any(|l| l.contains(VIF_C) && l.contains(DEV_C) && l.contains("attach")),
        "one log line naming the VIF, netdev and cause: {log}"
    );
    let m = scrape(&t);
    assert_eq!(
        gauge(&m, "lockd_vifs_held{cause=\"attach\"}"),
        Some(1),
        "{m}"
    );
    assert_eq!(gauge(&m, "lockd_vifs_held{cause=\"bad_row\"}"), Some(0));
    let doctor = d.cli(&[
        "doctor",
        "--state-dir",
        d.state_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(doctor.code, 1, "doctor reports the held netdev: {doctor:?}");

    // The cause goes away; the next command for the VIF enforces it and puts it back.
    t.host
        .exec(&["tc", "qdisc", "del", "dev", DEV_C, "ingress"])
        .expect("remove ingress qdisc");
    t.host
        .run(|| foreign.program(PROG_EMPTY).detach(xdp))
        .expect("ns")
        .expect("detach foreign XDP");
    d.cli(&[
        "vif-param-set",
        &format!("uuid={VIF_C}"),
        "locking-mode=locked",
    ])
    .ok();
    let c = vif(&d, VIF_C);
    assert!(c["held"].is_null(), "{c}");
    assert_ne!(c["attach"], "absent", "{c}");
    assert_eq!(
        plumbing(&t.host, DEV_C),
        ("br0".into(), true),
        "put back: {}",
        d.log()
    );
    let took = until("VM c reachable again", || {
        burst(&t, &t.c, MAC_C, IP_C, 30).1 == 5
    });
    eprintln!("VM c delivered again after {took:?}");
    assert_eq!(
        burst(&t, &t.c, MAC_C, IP_C, 40),
        (0, 5),
        "enforced normally"
    );
    assert_eq!(
        gauge(&scrape(&t), "lockd_vifs_held{cause=\"attach\"}"),
        Some(0)
    );
}

/// A VIF row edited with sqlite3 while the daemon is stopped: the daemon starts, enforces the
/// other VIF, holds that one disabled and says which row is bad and why (log, `vif-list`,
/// `lockd doctor`). A valid VIF of the same uuid replaces the bad row.
#[test]
fn a_bad_stored_row_holds_only_its_vif() {
    let t = topo();
    plug_b(&t);
    plug_c(&t);
    let mut d = Instance::new(&t.host);
    d.start();
    configure(&d, &["ipv4-allowed=10.0.0.2"]);
    configure_c(&d);
    assert_eq!(burst(&t, &t.c, MAC_C, IP_C, 0), (0, 5));
    d.stop(libc::SIGTERM);
    let db = d.state_dir.join("lockd.db");
    let edit = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg(format!(
            "UPDATE vif SET ipv4_allowed = '10.0.0.3, 10.0.0.300' WHERE uuid = '{VIF_C}'"
        ))
        .output()
        .expect("sqlite3");
    assert!(edit.status.success(), "{edit:?}");
    let doctor = d.cli(&[
        "doctor",
        "--state-dir",
        d.state_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(doctor.code, 1, "{doctor:?}");
    assert!(
        doctor.stdout.contains(VIF_C) && doctor.stdout.contains("ipv4_allowed"),
        "{}",
        doctor.stdout
    );
    d.start();
    assert_eq!(
        burst(&t, &t.b, MAC_B, IP_B, 10),
        (0, 5),
        "the other VIF is enforced"
    );
    assert_eq!(
        burst(&t, &t.c, MAC_C, IP_C, 20),
        (0, 0),
        "the bad row's VIF is held disabled"
    );
    let c = vif(&d, VIF_C);
    assert!(
        c["bad_row"]
            .as_str()
            .is_some_and(|r| r.contains("ipv4_allowed")),
        "{c}"
    );
    assert!(
        c["held"]
            .as_str()
            .is_some_and(|h| h.contains("bad_row") && h.contains("disabled")),
        "{c}"
    );
    assert!(
        d.log()
            .lines()
            .any(|l| l.contains(VIF_C) && l.contains("ipv4_allowed")),
        "{}",
        d.log()
    );
    // The operator gives the VIF again: the bad row is replaced, the VIF enforced.
    configure_c(&d);
    let c = vif(&d, VIF_C);
    assert!(c["held"].is_null() && c["bad_row"].is_null(), "{c}");
    assert_eq!(burst(&t, &t.c, MAC_C, IP_C, 30), (0, 5));
    let doctor = d.cli(&[
        "doctor",
        "--state-dir",
        d.state_dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(doctor.code, 0, "{doctor:?}");
}

/// Events lost (ENOBUFS, provoked for real: the daemon is stopped while hundreds of links come
/// and go) and a VIF's netdev deleted meanwhile: after the resync its policy and pins are gone,
/// and a new netdev of that name is enforced afresh.
#[test]
fn after_lost_events_vanished_links_leave_the_dataplane() {
    let t = topo();
    plug_b(&t);
    let mut d = Instance::new(&t.host);
    d.start();
    configure(&d, &["ipv4-allowed=10.0.0.2"]);
    assert_eq!(burst(&t, &t.b, MAC_B, IP_B, 0), (0, 5));
    let old = t.host.ifindex("vifb").expect("ifindex");
    let pins = |ifx: u32| -> Vec<String> {
        let dir = d
            .bpffs
            .join(format!("v{}", lockd::dataplane::LAYOUT_VERSION))
            .join("links");
        std::fs::read_dir(&dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| {
                        n.split(|c: char| !c.is_ascii_digit())
                            .any(|p| p == ifx.to_string())
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(!pins(old).is_empty(), "vifb's links are pinned");
    let pid = d.pid().expect("daemon running");
    // SAFETY: signalling the test's own daemon.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let batch: String = (0..400)
        .map(|i| format!("link add lk{i} type veth peer name lp{i}\nlink del lk{i}\n"))
        .collect();
    let file = d.state_dir.with_file_name("links.batch");
    std::fs::write(&file, batch).expect("batch");
    t.host
        .exec(&["ip", "-batch", file.to_str().expect("utf-8")])
        .expect("ip -batch");
    // After the flood filled the socket: this deletion's event is among the ones lost.
    t.host
        .exec(&["ip", "link", "del", "vifb"])
        .expect("del vifb");
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    let took = until("the daemon resynchronises", || {
        d.log().contains("resynchronised with rtnetlink")
    });
    eprintln!("resync after {took:?}");
    assert!(
        d.log().contains("resynchronising"),
        "the flood did not overflow the daemon's rtnetlink socket: {}",
        d.log()
    );
    until("vifb's pins removed", || pins(old).is_empty());
    let v = vif(&d, VIF);
    assert!(v["ifindex"].is_null() && v["attach"] == "absent", "{v}");
    plug_b(&t);
    until("the new vifb enforced", || {
        vif(&d, VIF)["attach"] != "absent"
    });
    assert_eq!(burst(&t, &t.b, MAC_B, IP_B, 10), (0, 5));
}

/// What a Xen dom0 without `sch_ingress` and `cls_bpf` saw (the qdisc refused, the VIF not
/// stored, its vif forwarding): `lockd features` names both modules and exits 1, and a VIF
/// created on a netdev that cannot be attached is stored and held, never left forwarding.
/// The modules are built into this machine's kernel; the 6.1 guest tier removes them (and
/// turns off module autoloading) and sets `LOCKD_TC_MODULES_REMOVED=1` for this test. Here,
/// with them present, the same probe must find both.
#[test]
fn a_kernel_without_the_tc_modules_holds_its_vifs() {
    let features = std::process::Command::new(lockd_tests::daemon::lockd_bin())
        .args(["features", "--json"])
        .output()
        .expect("lockd features");
    let json: serde_json::Value =
        serde_json::from_slice(&features.stdout).expect("features --json");
    let row = |key: &str| {
        json["features"]
            .as_array()
            .and_then(|a| a.iter().find(|f| f["feature"] == key).cloned())
            .unwrap_or_else(|| panic!("no {key} in {json}"))
    };
    let stderr = String::from_utf8_lossy(&features.stderr);
    if std::env::var_os("LOCKD_TC_MODULES_REMOVED").is_none() {
        assert_eq!(row("clsact")["present"], true, "{json}");
        assert_eq!(row("cls_bpf")["present"], true, "{json}");
        assert!(features.status.success(), "{stderr}");
        eprintln!("clsact and cls_bpf are here; the 6.1 guest tier runs this test without them");
        return;
    }
    assert_eq!(features.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("clsact") && stderr.contains("cls_bpf"),
        "{stderr}"
    );
    assert_eq!(row("clsact")["present"], false, "{json}");
    assert!(
        row("clsact")["why"]
            .as_str()
            .is_some_and(|w| w.contains("sch_ingress")),
        "{json}"
    );

    let t = topo();
    plug_b(&t);
    assert_eq!(burst(&t, &t.b, MAC_B, IP_B, 0).0, 5, "before lockd");
    let mut d = Instance::new(&t.host);
    d.start();
    d.cli(&["network-create", "name-label=br0", &format!("uuid={NET}")])
        .ok();
    let created = d.cli(&[
        "vif-create",
        &format!("network-uuid={NET}"),
        "device=vifb",
        &format!("mac={}", format_mac(MAC_B)),
        &format!("uuid={VIF}"),
    ]);
    assert_eq!(created.code, 0, "the VIF is stored: {created:?}");
    assert!(
        created.stderr.contains("warning") && created.stderr.contains("held"),
        "{}",
        created.stderr
    );
    let v = vif(&d, VIF);
    assert!(
        v["held"].as_str().is_some_and(|h| h.contains("clsact")),
        "{v}"
    );
    assert_eq!(plumbing(&t.host, "vifb"), (String::new(), false), "{v}");
    assert_eq!(
        burst(&t, &t.b, MAC_B, IP_B, 10),
        (0, 0),
        "a VIF lockd cannot attach forwards nothing"
    );
}
