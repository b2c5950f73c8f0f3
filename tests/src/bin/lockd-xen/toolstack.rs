//! The tier's cases about the toolstack around lockd: xl's hotplug (network-attach, migrate
//! under traffic, the plumbing), xapi's hook, and what xl alone does (its antispoof rules, its
//! rate) beside lockd.

use std::{
    collections::HashSet,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lockd_common::Reason;
use lockd_kit::frames::{self, BROADCAST, Mac};
use lockd_tests::{Case, FOREIGN, corpus};

use crate::{
    FRAMES_BOUND,
    agent::{Agent, Capture, fnv},
    cases::{BRIDGE, apply, restore, sentinel, show, wait_counted},
    counters, domu, lockd, sh, vif_uuid,
};

/// domU a streams genuine and spoofed frames while `cmd` runs (the daemon killed, the domU
/// migrated): no spoofed frame reaches the bridge, and genuine ones are back after it.
pub fn under_traffic(a: &crate::Domu, label: &str, cmd: &[&str]) -> Result<String, String> {
    let mut agent = a.agent()?;
    let vif_before = a.vif()?;
    let cap = Capture::start(BRIDGE).map_err(|e| format!("capture on {BRIDGE}: {e}"))?;
    let to = Ipv4Addr::new(10, 0, 0, 254);
    let genuine = frames::udp4(a.mac, BROADCAST, a.ip4, to, 7000, 9, b"lockd-xen genuine");
    let spoofs = [
        frames::udp4(a.mac, BROADCAST, Ipv4Addr::new(10, 0, 0, 99), to, 7000, 9, b"lockd-xen spoofed ip"),
        frames::udp4(FOREIGN, BROADCAST, a.ip4, to, 7000, 9, b"lockd-xen spoofed mac"),
        frames::arp(a.mac, BROADCAST, 2, a.mac, Ipv4Addr::new(10, 0, 0, 99), BROADCAST, to),
    ];
    let mut all = vec![genuine.clone()];
    all.extend(spoofs.iter().cloned());
    agent.stream("eth0", Duration::from_millis(5), &all).map_err(|e| e.to_string())?;
    let g = fnv(&genuine);
    let spoofed = || spoofs.iter().map(|f| cap.count(fnv(f))).sum::<u64>();
    let wait_more = |than: u64| {
        let end = Instant::now() + FRAMES_BOUND;
        while cap.count(g) < than && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        cap.count(g) >= than
    };
    let started = wait_more(10);
    let before = cap.count(g);
    let t = Instant::now();
    let out = sh(cmd[0], &cmd[1..]);
    let took = t.elapsed();
    let after_cmd = cap.count(g);
    let back = wait_more(after_cmd + 20);
    let sent = agent.stop().map_err(|e| e.to_string())?;
    let seen = cap.count(g);
    let bad = spoofed();
    match &out {
        Ok(o) => print!("{o}"),
        Err(e) => println!("{label}: {e}"),
    }
    // A new domain (migrate): its vif has a VIF of its own, and the old domain's went with it.
    let vif_after = a.vif().unwrap_or_default();
    let mut vifs = String::new();
    let mut vifs_ok = true;
    if vif_after != vif_before {
        let old_gone = vif_gone(&vif_before)?;
        let new_vif = vif_uuid(&vif_after);
        vifs_ok = old_gone && new_vif.is_ok();
        vifs = format!(
            "; {vif_before} → {vif_after}: the old VIF {}, the new vif's {}",
            if old_gone { "gone" } else { "STILL THERE" },
            new_vif.map_or_else(|e| format!("MISSING ({e})"), |u| format!("is {u}"))
        );
    }
    let summary = format!(
        "{} ({vif_after}): {sent} frames streamed across {label} ({took:.1?}): {seen} genuine seen on {BRIDGE} ({before} before, {} after), {bad} of ~{} spoofed delivered{vifs}",
        a.name,
        seen - after_cmd,
        sent * 3 / 4
    );
    if out.is_err() || !started || !back || bad != 0 || !vifs_ok { Err(summary) } else { Ok(summary) }
}

/// `xl network-attach` on the running domU a, onto `bridge` (a Linux bridge, or Open vSwitch's,
/// where vif-lockd hands the port to `vif-openvswitch`): the new vif is locked to its own `ip=`
/// from the moment it is plugged; `xl network-detach` removes exactly that vif's policy.
pub fn attached(bridge: &str) -> Result<String, String> {
    let a = domu("a").expect("a");
    let mac: Mac = [0x02, 0, 0, 0, 0x01, 0x0b];
    let own = Ipv4Addr::new(10, 0, 0, 5);
    let before = lockd(&["vif-list", "--minimal"])?;
    let (devid, vif) = network_attach(
        a.name,
        &[&format!("mac={}", lockd_common::policy::format_mac(mac)), &format!("bridge={bridge}"), &format!("ip={own}")],
    )?;
    let dev_in_domu = format!("eth{devid}");
    // Which bridge the stock script put it on: a Linux bridge's master, or OVS's port.
    let on = match plumbing(&vif)?.0.as_str() {
        "ovs-system" => sh("ovs-vsctl", &["port-to-br", &vif])?.trim().to_string(),
        m => m.to_string(),
    };
    let uuid = vif_uuid(&vif)?;
    let attach = lockd(&["vif-param-get", &format!("uuid={uuid}"), "param-name=ipv4-allowed"])?;
    let mut agent = a.agent()?;
    let cap = Capture::start(bridge).map_err(|e| format!("capture on {bridge}: {e}"))?;
    let genuine = frames::udp4(mac, BROADCAST, own, lockd_tests::PEER4, 7001, 9, b"attached genuine");
    let spoof = frames::udp4(mac, BROADCAST, a.ip4, lockd_tests::PEER4, 7001, 9, b"attached spoof");
    let c0 = counters(&uuid, "from_vm")?;
    let mut n = 0;
    for _ in 0..5 {
        for f in [&spoof, &genuine] {
            agent.send(&dev_in_domu, f).map_err(|e| format!("sending on the domU's {dev_in_domu}: {e}"))?;
            n += 1;
        }
    }
    let got = wait_counted(&uuid, "from_vm", &c0, n)?;
    let missing = cap.wait_for(&[fnv(&genuine)], FRAMES_BOUND);
    let (g, s) = (cap.count(fnv(&genuine)), cap.count(fnv(&spoof)));
    drop(cap);
    sh("xl", &["network-detach", a.name, &devid.to_string()])?;
    let gone = vif_gone(&vif)?;
    let after = lockd(&["vif-list", "--minimal"])?;
    let summary = format!(
        "domu-a: network-attach gave {vif} on {on} (VIF {uuid}, ipv4-allowed {}): {n} frames from the domU's {dev_in_domu}, counted {}, {g} genuine and {s} spoofed on {bridge}; network-detach removed {}, the other VIFs kept: {}",
        attach.trim(),
        show(&got),
        if gone { "its VIF" } else { "NOT its VIF" },
        before.trim() == after.trim()
    );
    let ok = on == bridge && missing.is_empty() && s == 0 && got.get("ipv4_spoof") == Some(&5) && gone && before.trim() == after.trim();
    if ok { Ok(summary) } else { Err(summary) }
}

/// xapi's hook on a real netback vif: `xl network-attach` plugs a new vif of domU a with the
/// stock `vif-bridge` (as xenopsd's `vif-real` plugs it, unlocked), then
/// `lockd hook setup-vif-rules classic vifD.N <domain-uuid> <devid> filter` reads a record in
/// xenopsd's shape and locks it; `clear` takes it out of enforcement and off its bridge.
pub fn xapi_hook() -> Result<String, String> {
    let a = domu("a").expect("a");
    let mac: Mac = [0x02, 0, 0, 0, 0x02, 0x0b];
    let own = Ipv4Addr::new(10, 0, 0, 6);
    let macs = lockd_common::policy::format_mac(mac);
    let (devid, vif) = network_attach(a.name, &[&format!("mac={macs}"), "bridge=xenbr0", "script=vif-bridge"])?;
    let id = vif.trim_start_matches("vif").split('.').next().unwrap_or_default().to_string();
    let uuid = sh("xenstore-read", &[&format!("/local/domain/{id}/vm")])
        .and_then(|p| sh("xenstore-read", &[&format!("{}/uuid", p.trim())]))?
        .trim()
        .to_string();
    // The record, in the shape of the hook tests' fixture (xenopsd's own, TOOLSTACK.md).
    let mut rec: serde_json::Value =
        serde_json::from_str(include_str!("../../../fixtures/xenopsd/vif-locked.json"))
            .map_err(|e| e.to_string())?;
    rec["id"] = serde_json::json!([uuid, devid.to_string()]);
    rec["position"] = serde_json::json!(devid);
    rec["mac"] = serde_json::json!(macs);
    rec["backend"] = serde_json::json!(["Local", BRIDGE]);
    rec["rate"] = serde_json::Value::Null;
    rec["locking_mode"] = serde_json::json!(["Locked", {"ipv4": [own.to_string()], "ipv6": []}]);
    rec["extra_private_keys"]["vif-uuid"] = serde_json::json!("6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a99");
    let dir = "/tmp/xenopsd";
    let vm_dir = format!("{dir}/classic/VM/{uuid}");
    std::fs::create_dir_all(&vm_dir).map_err(|e| e.to_string())?;
    std::fs::write(format!("{vm_dir}/vif.{devid}"), rec.to_string()).map_err(|e| e.to_string())?;
    let hook = |action: &str| {
        lockd(&["hook", "setup-vif-rules", "classic", &vif, &uuid, &devid.to_string(), action, "--xenopsd-dir", dir])
    };
    let mut agent = a.agent()?;
    let dev_in_domu = format!("eth{devid}");
    let genuine = frames::udp4(mac, BROADCAST, own, lockd_tests::PEER4, 7002, 9, b"hook genuine");
    let spoof = frames::udp4(mac, BROADCAST, a.ip4, lockd_tests::PEER4, 7002, 9, b"hook spoof");
    // Unlocked as the stock script left it: the spoofed frame reaches the bridge.
    let cap = Capture::start(BRIDGE).map_err(|e| format!("capture on {BRIDGE}: {e}"))?;
    agent.send(&dev_in_domu, &spoof).map_err(|e| e.to_string())?;
    let unlocked = cap.wait_for(&[fnv(&spoof)], FRAMES_BOUND).is_empty();
    hook("filter")?;
    let vuuid = vif_uuid(&vif)?;
    let c0 = counters(&vuuid, "from_vm")?;
    cap.clear();
    for _ in 0..5 {
        for f in [&spoof, &genuine] {
            agent.send(&dev_in_domu, f).map_err(|e| e.to_string())?;
        }
    }
    let got = wait_counted(&vuuid, "from_vm", &c0, 10)?;
    let missing = cap.wait_for(&[fnv(&genuine)], FRAMES_BOUND);
    let (g, s) = (cap.count(fnv(&genuine)), cap.count(fnv(&spoof)));
    hook("clear")?;
    let (master, _) = plumbing(&vif)?;
    sh("xl", &["network-detach", a.name, &devid.to_string()])?;
    let summary = format!(
        "domu-a: {vif} plugged unlocked by vif-bridge (spoofed frame reached {BRIDGE}: {unlocked}); after `hook … filter` with xenopsd's record: counted {}, {g} genuine and {s} spoofed on {BRIDGE}; after `clear`: on bridge {:?}",
        show(&got),
        if master.is_empty() { "none" } else { master.as_str() }
    );
    if unlocked && missing.is_empty() && s == 0 && got.get("ipv4_spoof") == Some(&5) && master.is_empty() {
        Ok(summary)
    } else {
        Err(summary)
    }
}

/// Whether lockd comes to have no VIF for netdev `dev` (its hotplug `offline` destroyed it),
/// within [`FRAMES_BOUND`].
fn vif_gone(dev: &str) -> Result<bool, String> {
    let end = Instant::now() + FRAMES_BOUND;
    loop {
        if lockd(&["vif-list", &format!("device={dev}"), "--minimal"])?.trim().is_empty() {
            return Ok(true);
        }
        if Instant::now() > end {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `xl network-attach DOMU ARGS…`: the new vif's devid and dom0 netdev (`vif<domid>.<devid>`).
fn network_attach(domu: &str, args: &[&str]) -> Result<(u32, String), String> {
    let mut cmd = vec!["network-attach", domu];
    cmd.extend_from_slice(args);
    sh("xl", &cmd)?;
    let list = sh("xl", &["network-list", domu])?;
    print!("{list}");
    let devid = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next()?.parse::<u32>().ok())
        .max()
        .ok_or("xl network-list shows no vif")?;
    let id = sh("xl", &["domid", domu])?;
    Ok((devid, format!("vif{}.{devid}", id.trim())))
}

/// (bridge, up) of a dom0 netdev, from `ip -j link show`.
fn plumbing(dev: &str) -> Result<(String, bool), String> {
    let j: serde_json::Value = serde_json::from_str(&sh("ip", &["-j", "link", "show", dev])?).map_err(|e| e.to_string())?;
    let up = j[0]["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"));
    Ok((j[0]["master"].as_str().unwrap_or("").to_string(), up))
}

/// The baseline to beat: xl's own anti-spoofing. Upstream's `handle_iptable` (Debian ships
/// `vif-common.sh` with it switched off, bug #894013: dom0 uses a copy with that one line
/// removed) puts IPv4 FORWARD rules per vif: its `ip=` sources and DHCP accepted, under the
/// FORWARD DROP policy Xen's docs ask for. domU a sends the corpus's frames for the standard
/// policy through a vif plugged that way, then through its lockd-locked vif; domU b (unlocked
/// for this case, so it filters nothing) says which arrived. Reported per reason, both ways.
pub fn baseline() -> Result<String, String> {
    let (a, b) = (domu("a").expect("a"), domu("b").expect("b"));
    let (va, vb) = (a.vif()?, b.vif()?);
    let (ua, ub) = (vif_uuid(&va)?, vif_uuid(&vb)?);
    let (mut aa, mut ab) = (a.agent()?, b.agent()?);
    sh("sh", &["-c", XL_ANTISPOOF_ON])?;
    let r = (|| {
        lockd(&["vif-param-set", &format!("uuid={ub}"), "locking-mode=unlocked"])?;
        let policy = lockd_tests::locked_policy();
        let cases: Vec<Case> = corpus::cases().into_iter().filter(|c| c.policy == policy).collect();
        let ip: Vec<String> = policy.ipv4.iter().map(|n| n.to_string()).collect();
        let (devid, xl_vif) = network_attach(
            a.name,
            &[&format!("mac={}", lockd_common::policy::format_mac(a.mac)), "bridge=xenbr0",
              &format!("ip={}", ip.join(" ")), "script=/etc/xen/scripts-xl/vif-bridge"],
        )?;
        let rules = sh("iptables", &["-S", "FORWARD"])?;
        print!("{rules}");
        if !rules.contains(&xl_vif) {
            return Err(format!("xl's handle_iptable put no rule for {xl_vif}"));
        }
        let xl = delivered_to_b(&mut aa, &mut ab, &format!("eth{devid}"), &cases, a.mac, a.ip4, 1)?;
        sh("xl", &["network-detach", a.name, &devid.to_string()])?;
        // lockd's turn, with xl's FORWARD rules and policy out of the way.
        sh("sh", &["-c", XL_ANTISPOOF_OFF])?;
        apply(&ua, &policy)?;
        let ours = delivered_to_b(&mut aa, &mut ab, "eth0", &cases, a.mac, a.ip4, 2)?;
        let mut reasons: Vec<Reason> = cases.iter().map(|c| c.expect).collect();
        reasons.sort();
        reasons.dedup();
        println!("| frames the model drops, by reason | sent | delivered under xl's handle_iptable ({xl_vif}) | delivered under lockd ({va}) |");
        println!("|---|---|---|---|");
        let (mut xs, mut ls, mut n_spoof) = (0, 0, 0);
        for r in reasons.iter().filter(|r| **r != Reason::Pass) {
            let of: Vec<&Case> = cases.iter().filter(|c| c.expect == *r).collect();
            let x = of.iter().filter(|c| xl.contains(&fnv(&c.frame))).count();
            let l = of.iter().filter(|c| ours.contains(&fnv(&c.frame))).count();
            println!("| {} | {} | {x} | {l} |", r.name(), of.len());
            (xs, ls, n_spoof) = (xs + x, ls + l, n_spoof + of.len());
        }
        let genuine: Vec<&Case> = cases.iter().filter(|c| c.expect == Reason::Pass).collect();
        let gx = genuine.iter().filter(|c| xl.contains(&fnv(&c.frame))).count();
        let gl = genuine.iter().filter(|c| ours.contains(&fnv(&c.frame))).count();
        println!("| (genuine: passed by the model) | {} | {gx} | {gl} |", genuine.len());
        let summary = format!(
            "{n_spoof} frames the model drops, sent by domu-a: xl's handle_iptable delivered {xs} of them to domu-b, lockd {ls}; of {} genuine, xl delivered {gx}, lockd {gl}",
            genuine.len()
        );
        if ls == 0 { Ok(summary) } else { Err(summary) }
    })();
    let _ = sh("sh", &["-c", XL_ANTISPOOF_OFF]);
    restore(&ub, b.ip4, b.ip6)?;
    restore(&ua, a.ip4, a.ip6)?;
    r
}

/// xl's hotplug scripts with upstream's `handle_iptable` (Debian's one-line `return 0`
/// removed), bridged IPv4 through iptables, and FORWARD's policy DROP.
const XL_ANTISPOOF_ON: &str = "set -e
rm -rf /etc/xen/scripts-xl; cp -a /etc/xen/scripts /etc/xen/scripts-xl
sed -i '/This function is disabled in Debian packaging/{n;/return 0/d}' /etc/xen/scripts-xl/vif-common.sh
! grep -A1 'disabled in Debian packaging' /etc/xen/scripts-xl/vif-common.sh | grep -q 'return 0'
for m in br_netfilter xt_physdev iptable_filter nft_compat; do /tmp/modprobe $m || true; done
sysctl -qw net.bridge.bridge-nf-call-iptables=1
iptables -P FORWARD DROP";

/// Undoes [`XL_ANTISPOOF_ON`].
const XL_ANTISPOOF_OFF: &str = "iptables -P FORWARD ACCEPT; iptables -F FORWARD
sysctl -qw net.bridge.bridge-nf-call-iptables=0";

/// Sends `cases`' frames and a sentinel from domU a's `dev`; the hashes domU b received.
fn delivered_to_b(
    aa: &mut Agent,
    ab: &mut Agent,
    dev: &str,
    cases: &[Case],
    mac: Mac,
    ip4: Ipv4Addr,
    k: u32,
) -> Result<HashSet<u64>, String> {
    ab.received("eth0").map_err(|e| e.to_string())?;
    for c in cases {
        // A frame netfront refuses (the runt) is not delivered by anyone.
        let _ = aa.send(dev, &c.frame);
    }
    let s = sentinel(mac, BROADCAST, ip4, lockd_tests::PEER4, 1000 + k);
    aa.send(dev, &s).map_err(|e| e.to_string())?;
    let mut got = HashSet::new();
    let end = Instant::now() + FRAMES_BOUND;
    while !got.contains(&fnv(&s)) {
        if Instant::now() > end {
            return Err(format!("domu-b never received the sentinel sent after the corpus on domu-a's {dev}"));
        }
        got.extend(ab.received("eth0").map_err(|e| e.to_string())?);
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(got)
}

/// A rate set both ways: xl's `rate=` (netback's own credit shaper, on the guest's transmit)
/// and lockd's `ratelimit` (its shaper on the VIF's from-VM traffic). domU a sends one
/// genuine 1000-byte frame as fast as it can on a vif `xl network-attach` gives it with
/// `rate=`; the bridge says what got through, with no lockd limit, with a lockd limit below
/// xl's, and with one above it. The guest gets the lower of the two: they do not stack.
pub fn rate() -> Result<String, String> {
    let a = domu("a").expect("a");
    let mac: Mac = [0x02, 0, 0, 0, 0x04, 0x0b];
    let own = Ipv4Addr::new(10, 0, 0, 8);
    let mut agent = a.agent()?;
    let frame = |mac: Mac, ip: Ipv4Addr| frames::udp4(mac, BROADCAST, ip, lockd_tests::PEER4, 7003, 9, &[0x5a; 958]);
    // What the domU can send at all, unshaped (its lockd-locked eth0, no limit).
    let unshaped = measure(&mut agent, "eth0", &frame(a.mac, a.ip4))?;
    println!("unshaped (eth0, no limit): {unshaped:.0} KB/s");
    // The rates follow what this machine's domU can send (1644 KB/s on one machine, 312 on a
    // slower one, both with one TCG thread): xl's a third of it, so netback's shaper has
    // something to hold back, lockd's low one a quarter of xl's, its high one 16× xl's.
    let Some((xl_kbs, low_kbs, high_kbs)) = rates(unshaped) else {
        return Err(format!("unavailable: the domU sends only {unshaped:.0} KB/s unshaped, too little to shape twice"));
    };
    let (devid, vif) = network_attach(
        a.name,
        &[&format!("mac={}", lockd_common::policy::format_mac(mac)), "bridge=xenbr0", &format!("ip={own}"), &format!("rate={xl_kbs}KB/s")],
    )?;
    let dev = format!("eth{devid}");
    let r = (|| {
        let uuid = vif_uuid(&vif)?;
        let f = frame(mac, own);
        let xl_only = measure(&mut agent, &dev, &f)?;
        let set = |kbs: u64| {
            lockd(&["vif-param-set", &format!("uuid={uuid}"), "qos_algorithm_type=ratelimit", &format!("qos_algorithm_params:kbps={kbs}")])
        };
        set(low_kbs)?;
        let lockd_low = measure(&mut agent, &dev, &f)?;
        println!("{}", shaper_state(&vif, &uuid));
        set(high_kbs)?;
        let lockd_high = measure(&mut agent, &dev, &f)?;
        let near = |got: f64, want: u64| (got - want as f64).abs() <= want as f64 * 0.25;
        let summary = format!(
            "{vif}: the domU sends {unshaped:.0} KB/s unshaped; xl rate={xl_kbs} KB/s alone: {xl_only:.0} KB/s; with lockd's ratelimit {low_kbs} KB/s too: {lockd_low:.0} KB/s; with lockd's {high_kbs} KB/s: {lockd_high:.0} KB/s — the lower shaper wins, they do not stack"
        );
        if near(xl_only, xl_kbs) && near(lockd_low, low_kbs) && near(lockd_high, xl_kbs) { Ok(summary) } else { Err(summary) }
    })();
    sh("xl", &["network-detach", a.name, &devid.to_string()])?;
    r
}

/// xl's rate, lockd's low and high ones (KB/s) for a domU that sends `unshaped` KB/s: xl's a
/// third of it in steps of 16 (at most 256), none under 64 (a lockd rate of 16 KB/s is 16
/// 1000-byte frames a second, the least a 4 s count tells apart).
fn rates(unshaped: f64) -> Option<(u64, u64, u64)> {
    let xl = ((unshaped / 3.0) as u64 / 16 * 16).min(256);
    (xl >= 64).then_some((xl, xl / 4, xl * 16))
}

/// What the shaper of `vif` did: its qdisc's and device's statistics, and lockd's counters.
fn shaper_state(vif: &str, uuid: &str) -> String {
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{vif}/ifindex")).unwrap_or_default();
    let shaper = format!("lockdq{}", ifindex.trim());
    let show = |r: Result<String, String>| r.unwrap_or_else(|e| e);
    format!(
        "shaper {shaper} of {vif}:\n{}{}{}",
        show(sh("tc", &["-s", "qdisc", "show", "dev", &shaper])),
        show(sh("ip", &["-s", "link", "show", &shaper])),
        show(lockd(&["vif-stats", &format!("uuid={uuid}")])),
    )
}

/// KB/s (1024 B) of `frame` from the domU's `dev` reaching the bridge, over a 4 s flood after
/// 1 s to fill the shapers.
fn measure(agent: &mut Agent, dev: &str, frame: &[u8]) -> Result<f64, String> {
    let cap = Capture::start(BRIDGE).map_err(|e| format!("capture on {BRIDGE}: {e}"))?;
    agent.stream(dev, Duration::ZERO, &[frame.to_vec()]).map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cap.count(fnv(frame)), Instant::now());
    std::thread::sleep(Duration::from_secs(4));
    let (c1, t1) = (cap.count(fnv(frame)), Instant::now());
    agent.stop().map_err(|e| e.to_string())?;
    Ok((c1 - c0) as f64 * frame.len() as f64 / 1024.0 / (t1 - t0).as_secs_f64())
}
