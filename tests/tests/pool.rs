//! Policy shared by a pool of hosts through etcd: real etcd members (`lockd_tests::etcd`),
//! real daemons, each in its own host namespace with its own bridge, VM netdevs and pins, and
//! real frames. A host is a namespace; the pool's network to etcd is a management namespace.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lockd_common::policy::format_mac;
use lockd_kit::netlab::{NetNs, bridge, send_frames, veth};
use lockd_tests::{
    daemon::Instance,
    etcd::Cluster,
    scene::{IP_B, IP_SPOOF, MAC_A, MAC_B, NET, udp},
    wire::{Capture, delivered, raw_socket},
};
use serde_json::Value;

/// How long a change may take to reach another host: a bound, not an expectation.
const CONVERGE_BOUND: Duration = Duration::from_secs(60);

/// One host: its namespace, a receiving VM `a` and the VM under test `b` (VIF `vifHb`).
struct Host {
    ns: NetNs,
    a: NetNs,
    b: NetNs,
    dev: String,
    vif: String,
    d: Instance,
}

fn vif_uuid(h: u8) -> String {
    format!("6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a{h:02}")
}

/// Host `h` on the pool's etcd under `/lockd-test`, its VM b plugged, its daemon started.
fn host(c: &mut Cluster, h: u8, env: &[(&str, &str)]) -> Host {
    let ns = NetNs::new(&format!("h{h}")).expect("host ns");
    bridge(&ns, "br0").expect("bridge");
    let a = NetNs::new(&format!("h{h}a")).expect("ns");
    veth(&ns, "vifa", &a, "eth0", &format_mac(MAC_A), Some("br0")).expect("veth a");
    let b = NetNs::new(&format!("h{h}b")).expect("ns");
    let dev = format!("vif{h}b");
    veth(&ns, &dev, &b, "eth0", &format_mac(MAC_B), Some("br0")).expect("veth b");
    c.connect(&ns);
    let mut d = Instance::new(&ns);
    d.env.push(("LOCKD_STORE".into(), c.store_url("lockd-test")));
    for (k, v) in env {
        d.env.push((k.to_string(), v.to_string()));
    }
    d.start();
    Host {
        ns,
        a,
        b,
        dev,
        vif: vif_uuid(h),
        d,
    }
}

/// From `d` (any host): the network, and each host's VIF locked to 10.0.0.2.
fn configure_pool(d: &Instance, hosts: &[&Host]) {
    d.cli(&["network-create", "name-label=br0", &format!("uuid={NET}")])
        .ok();
    for h in hosts {
        d.cli(&[
            "vif-create",
            &format!("network-uuid={NET}"),
            &format!("device={}", h.dev),
            &format!("mac={}", format_mac(MAC_B)),
            &format!("uuid={}", h.vif),
        ])
        .ok();
        lock(d, &h.vif, "10.0.0.2");
    }
}

fn lock(d: &Instance, vif: &str, allowed: &str) {
    d.cli(&[
        "vif-param-set",
        &format!("uuid={vif}"),
        "locking-mode=locked",
        &format!("ipv4-allowed={allowed}"),
    ])
    .ok();
}

/// `vif` as `d` lists it.
fn row(d: &Instance, vif: &str) -> Option<Value> {
    let all = d.cli(&["vif-list", "--json"]).json();
    all.as_array()?.iter().find(|r| r["uuid"] == vif).cloned()
}

/// Whether a listed row is locked and allows exactly `allowed` (on the VIF's own host, also
/// attached: see [`enforced`]).
fn locked_to(r: &Value, allowed: &[&str]) -> bool {
    let got: Vec<&str> = r["ipv4_allowed"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    r["effective_locking_mode"] == "locked"
        && got.len() == allowed.len()
        && got.iter().zip(allowed).all(|(g, w)| g.trim_end_matches("/32") == *w)
}

/// Whether the row is attached on this host and locked to `allowed`.
fn enforced(r: &Value, allowed: &[&str]) -> bool {
    r["attach"] != "absent" && locked_to(r, allowed)
}

/// Waits (on the host's own CLI) until `vif` on `h` satisfies `ok`; returns how long it took.
fn wait_for(h: &Host, vif: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if row(&h.d, vif).is_some_and(|r| ok(&r)) {
            let took = start.elapsed();
            eprintln!("{}: {what} after {took:.2?}", h.dev);
            return took;
        }
        assert!(
            start.elapsed() < CONVERGE_BOUND,
            "{}: not {what} within {CONVERGE_BOUND:?}: {:?}\n{}",
            h.dev,
            row(&h.d, vif),
            h.d.log()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `n` spoofed and `n` genuine frames from VM b of host `h`: (spoofed, genuine) delivered.
fn burst(h: &Host, n: u32, base: u32) -> (usize, usize) {
    let spoof: Vec<_> = (0..n).map(|i| udp(IP_SPOOF, base + i)).collect();
    let good: Vec<_> = (0..n).map(|i| udp(IP_B, base + i)).collect();
    let cap = Capture::start(&h.a, "eth0");
    let mut all = spoof.clone();
    all.extend(good.clone());
    send_frames(&h.b, "eth0", &all).expect("send");
    let got = cap.finish();
    (delivered(&got, &spoof), delivered(&got, &good))
}

fn assert_enforced(h: &Host, base: u32) {
    let (spoofed, genuine) = burst(h, 20, base);
    assert_eq!((spoofed, genuine), (0, 20), "{}: (spoofed, genuine) delivered", h.dev);
}

/// `/metrics` of a host whose daemon serves them on 127.0.0.1:9477.
fn metric(h: &Host, name: &str) -> Option<i64> {
    let text = h
        .ns
        .exec(&["curl", "-sf", "http://127.0.0.1:9477/metrics"])
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn wait_metric(h: &Host, name: &str, want: i64) {
    let start = Instant::now();
    while metric(h, name) != Some(want) {
        assert!(
            start.elapsed() < CONVERGE_BOUND,
            "{}: {name} is {:?}, not {want}",
            h.dev,
            metric(h, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{}: {name} {want} after {:.2?}", h.dev, start.elapsed());
}

#[test]
fn a_write_on_one_host_is_enforced_on_every_host() {
    let mut c = Cluster::start(1);
    let hosts: Vec<Host> = (1..=3).map(|h| host(&mut c, h, &[])).collect();
    let all: Vec<&Host> = hosts.iter().collect();
    configure_pool(&hosts[0].d, &all);
    for (i, h) in hosts.iter().enumerate() {
        wait_for(h, &h.vif, "locked to 10.0.0.2", |r| enforced(r, &["10.0.0.2"]));
        assert_enforced(h, 1000 * i as u32);
    }
    // Host 2 allows host 3's VM the spoofed address too: host 3 passes it.
    lock(&hosts[1].d, &hosts[2].vif, "10.0.0.2,10.0.0.99");
    wait_for(&hosts[2], &hosts[2].vif, "allowing 10.0.0.99", |r| {
        enforced(r, &["10.0.0.2", "10.0.0.99"])
    });
    assert_eq!(burst(&hosts[2], 20, 5000), (20, 20), "host 3 after host 2's write");
    // The keys are lockd's typed settings, one per network and VIF.
    let keys = c.etcdctl(&["get", "--prefix", "--keys-only", "/lockd-test/"]);
    let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 4, "one network and three VIFs: {keys:?}");
    // A value no lockd wrote, put straight into etcd: that VIF's netdev is held disabled on
    // its host (nothing passes), the other hosts go on.
    c.etcdctl(&["put", &format!("/lockd-test/vif/{}", hosts[2].vif), "{not json"]);
    wait_for(&hosts[2], &hosts[2].vif, "a bad row", |r| r["bad_row"].is_string());
    assert_eq!(burst(&hosts[2], 20, 6000), (0, 0), "host 3 holds its bad row's netdev");
    assert_enforced(&hosts[0], 7000);
    // Deleted in the pool: forgotten everywhere (the frames pass unfiltered again).
    hosts[0].d.cli(&["vif-destroy", &format!("uuid={}", hosts[1].vif)]).ok();
    let start = Instant::now();
    while row(&hosts[1].d, &hosts[1].vif).is_some() {
        assert!(start.elapsed() < CONVERGE_BOUND, "host 2 never forgot its VIF");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(burst(&hosts[1], 20, 8000), (20, 20), "host 2 without a VIF");
}

#[test]
fn etcd_killed_under_traffic_every_host_keeps_enforcing() {
    let mut c = Cluster::start(1);
    let metrics = [("LOCKD_METRICS_LISTEN", "127.0.0.1:9477")];
    let mut hosts: Vec<Host> = (1..=3).map(|h| host(&mut c, h, &metrics)).collect();
    let all: Vec<&Host> = hosts.iter().collect();
    configure_pool(&hosts[0].d, &all);
    for h in &hosts {
        wait_for(h, &h.vif, "locked", |r| enforced(r, &["10.0.0.2"]));
    }
    let applied = metric(&hosts[0], "lockd_store_revision").expect("revision");
    assert!(applied > 0, "host 1 applied revision {applied}");
    wait_metric(&hosts[0], "lockd_store_up", 1);

    // Spoofed frames from every host's VM while etcd dies and a daemon restarts.
    let caps: Vec<Capture> = hosts.iter().map(|h| Capture::start(&h.a, "eth0")).collect();
    let spoof: Vec<_> = (0..50).map(|i| udp(IP_SPOOF, 10_000 + i)).collect();
    let send_all = |hosts: &[Host]| {
        for h in hosts {
            send_frames(&h.b, "eth0", &spoof).expect("send");
        }
    };
    send_all(&hosts);
    c.kill(0);
    send_all(&hosts);
    wait_metric(&hosts[0], "lockd_store_up", 0);
    // A daemon restarted during the outage starts from its copy and enforces it.
    hosts[1].d.stop(libc::SIGKILL);
    send_all(&hosts);
    hosts[1].d.start();
    assert!(
        hosts[1].d.log().contains("enforcing this host's copy"),
        "{}",
        hosts[1].d.log()
    );
    send_all(&hosts);
    for (h, cap) in hosts.iter().zip(caps) {
        let got = cap.finish();
        assert_eq!(delivered(&got, &spoof), 0, "{}: spoofed delivered during the outage", h.dev);
    }
    for (i, h) in hosts.iter().enumerate() {
        assert_enforced(h, 20_000 + 1000 * i as u32);
        assert!(row(&h.d, &h.vif).is_some_and(|r| enforced(&r, &["10.0.0.2"])));
    }
    // A write fails clearly and changes nothing.
    let out = hosts[0].d.cli(&[
        "vif-param-set",
        &format!("uuid={}", hosts[0].vif),
        "ipv4-allowed=10.0.0.2,10.0.0.99",
    ]);
    assert_ne!(out.code, 0, "a write with etcd down succeeded");
    assert!(out.stderr.contains("store unavailable: "), "{}", out.stderr);
    eprintln!("write during the outage: {}", out.stderr.trim());
    assert!(row(&hosts[0].d, &hosts[0].vif).is_some_and(|r| enforced(&r, &["10.0.0.2"])));
    assert_enforced(&hosts[0], 30_000);

    // etcd back: every host follows again, and a write made now is applied everywhere.
    c.restart(0);
    for h in &hosts {
        wait_metric(h, "lockd_store_up", 1);
    }
    lock(&hosts[0].d, &hosts[2].vif, "10.0.0.2,10.0.0.99");
    for h in &hosts {
        wait_for(h, &hosts[2].vif, "allowing 10.0.0.99", |r| {
            locked_to(r, &["10.0.0.2", "10.0.0.99"])
        });
    }
    assert_eq!(burst(&hosts[2], 20, 40_000), (20, 20));
    assert_enforced(&hosts[0], 41_000);
}

#[test]
fn three_members_with_one_killed_writes_and_convergence_go_on() {
    let mut c = Cluster::start(3);
    let hosts: Vec<Host> = (1..=3).map(|h| host(&mut c, h, &[])).collect();
    let all: Vec<&Host> = hosts.iter().collect();
    configure_pool(&hosts[0].d, &all);
    for h in &hosts {
        wait_for(h, &h.vif, "locked", |r| enforced(r, &["10.0.0.2"]));
    }
    // Each round: a member dies, host 1 writes (through a surviving member), every host
    // applies it; then the member comes back.
    for (round, member) in [0usize, 1, 2].into_iter().enumerate() {
        c.kill(member);
        let allowed = format!("10.0.0.2,10.0.1.{round}");
        let start = Instant::now();
        lock(&hosts[0].d, &hosts[1].vif, &allowed);
        eprintln!("member m{member} down: write took {:.2?}", start.elapsed());
        let want = ["10.0.0.2".to_string(), format!("10.0.1.{round}")];
        let want: Vec<&str> = want.iter().map(String::as_str).collect();
        for h in &hosts {
            wait_for(h, &hosts[1].vif, "the write made with a member down", |r| {
                locked_to(r, &want)
            });
        }
        assert_enforced(&hosts[1], 1000 * round as u32);
        c.restart(member);
    }
}

#[test]
fn two_hosts_writing_one_vif_at_once_one_wins_the_other_changes_nothing() {
    let mut c = Cluster::start(1);
    let h1 = host(&mut c, 1, &[]);
    // Host 2 applies what others write 3 s late (a test hook): its writes race host 1's.
    let h2 = host(&mut c, 2, &[("LOCKD_ETCD_APPLY_DELAY_MS", "3000")]);
    configure_pool(&h1.d, &[&h1, &h2]);
    wait_for(&h2, &h1.vif, "locked", |r| locked_to(r, &["10.0.0.2"]));
    let key = format!("/lockd-test/vif/{}", h1.vif);
    let before = c.etcdctl(&["get", &key, "-w", "json"]);

    let won = h1.d.cli(&[
        "vif-param-set",
        &format!("uuid={}", h1.vif),
        "ipv4-allowed=10.0.0.2,10.0.0.50",
    ]);
    let lost = h2.d.cli(&[
        "vif-param-set",
        &format!("uuid={}", h1.vif),
        "ipv4-allowed=10.0.0.2,10.0.0.99",
    ]);
    assert_eq!(won.code, 0, "{}", won.stderr);
    assert_ne!(lost.code, 0, "both writes to one VIF succeeded");
    assert!(lost.stderr.contains("conflict: "), "{}", lost.stderr);
    eprintln!("the losing write: {}", lost.stderr.trim());
    // The loser changed nothing: not in etcd, not in its own state.
    let value = c.etcdctl(&["get", &key, "--print-value-only"]);
    assert!(value.contains("10.0.0.50") && !value.contains("10.0.0.99"), "{value}");
    assert_ne!(before, c.etcdctl(&["get", &key, "-w", "json"]));
    let r2 = row(&h2.d, &h1.vif).expect("row");
    assert!(!r2.to_string().contains("10.0.0.99"), "{r2}");
    // Both end with the winner's value.
    for h in [&h1, &h2] {
        wait_for(h, &h1.vif, "the winner's value", |r| {
            locked_to(r, &["10.0.0.2", "10.0.0.50"])
        });
    }
    // Retried once host 2 has it, the command succeeds.
    lock(&h2.d, &h1.vif, "10.0.0.2,10.0.0.99");
    wait_for(&h1, &h1.vif, "host 2's retried value", |r| {
        locked_to(r, &["10.0.0.2", "10.0.0.99"])
    });
}

/// Sends spoofed and genuine frames from `eth0` of `vm` until stopped, through every moment
/// the netdev is gone or not yet enforced; counts the frames sent.
struct Sender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<Result<(), lockd_kit::netlab::NetlabError>>>,
}

impl Sender {
    fn start(vm: &NetNs, frames: Vec<Vec<u8>>) -> Sender {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (stop.clone(), sent.clone());
        let thread = vm
            .spawn(move || {
                use std::os::fd::AsRawFd as _;
                while !s.load(Ordering::Relaxed) {
                    // The VM's netdev is gone while it moves: wait for it to come back.
                    let Ok(sock) = raw_socket("eth0") else {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    };
                    for f in frames.iter().cycle() {
                        if s.load(Ordering::Relaxed) {
                            break;
                        }
                        // SAFETY: a live socket and a buffer of the length given.
                        let r = unsafe {
                            libc::send(sock.as_raw_fd(), f.as_ptr().cast(), f.len(), 0)
                        };
                        if r < 0 {
                            break;
                        }
                        n.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_micros(200));
                    }
                }
            })
            .expect("sender");
        Sender {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.sent.load(Ordering::Relaxed)
    }
}

#[test]
fn a_vm_moved_to_another_host_is_locked_there_and_forgotten_here() {
    let mut c = Cluster::start(1);
    let h1 = host(&mut c, 1, &[]);
    let h2 = host(&mut c, 2, &[]);
    // The VM that moves: netdev `vifm` on host 1, then on host 2.
    let vm = NetNs::new("vm").expect("vm ns");
    let uuid = vif_uuid(9);
    veth(&h1.ns, "vifm", &vm, "eth0", &format_mac(MAC_B), Some("br0")).expect("veth");
    h1.d.cli(&["network-create", "name-label=br0", &format!("uuid={NET}")]).ok();
    h1.d.cli(&[
        "vif-create",
        &format!("network-uuid={NET}"),
        "device=vifm",
        &format!("mac={}", format_mac(MAC_B)),
        &format!("uuid={uuid}"),
    ])
    .ok();
    lock(&h1.d, &uuid, "10.0.0.2");
    let locked = |r: &Value| enforced(r, &["10.0.0.2"]);
    wait_for(&h1, &uuid, "the moving VM locked on host 1", locked);
    wait_for(&h2, &uuid, "the moving VM known on host 2", |r| {
        r["attach"] == "absent" && r["effective_locking_mode"] == "locked"
    });

    let spoof: Vec<_> = (0..200).map(|i| udp(IP_SPOOF, 50_000 + i)).collect();
    let good: Vec<_> = (0..200).map(|i| udp(IP_B, 50_000 + i)).collect();
    let caps = [Capture::start(&h1.a, "eth0"), Capture::start(&h2.a, "eth0")];
    let mixed: Vec<_> = spoof.iter().zip(&good).flat_map(|(s, g)| [s.clone(), g.clone()]).collect();
    let sender = Sender::start(&vm, mixed);
    std::thread::sleep(Duration::from_millis(200));
    // The move: the netdev goes from host 1 and appears on host 2 the way a toolstack plugs
    // a vif: created, enforced, then bridged and brought up (lockd's hook runs before the
    // vif is bridged).
    h1.ns.exec(&["ip", "link", "del", "vifm"]).expect("unplug on host 1");
    let moved = Instant::now();
    h2.ns
        .exec(&[
            "ip", "link", "add", "vifm", "type", "veth", "peer", "name", "eth0", "netns",
            vm.name(),
        ])
        .expect("plug on host 2");
    vm.exec(&["ip", "link", "set", "eth0", "address", &format_mac(MAC_B)]).expect("mac");
    vm.exec(&["ip", "link", "set", "eth0", "up"]).expect("vm up");
    wait_for(&h2, &uuid, "the moved VM locked on host 2", locked);
    eprintln!("enforced on host 2 {:.2?} after its netdev appeared", moved.elapsed());
    h2.ns.exec(&["ip", "link", "set", "vifm", "master", "br0"]).expect("bridge");
    h2.ns.exec(&["ip", "link", "set", "vifm", "up"]).expect("up");
    wait_for(&h1, &uuid, "forgotten on host 1", |r| r["attach"] == "absent");
    std::thread::sleep(Duration::from_millis(300));
    let sent = sender.finish();
    let [c1, c2] = caps.map(Capture::finish);
    eprintln!("the moving VM sent {sent} frames");
    assert_eq!(delivered(&c1, &spoof), 0, "spoofed delivered on host 1");
    assert_eq!(delivered(&c2, &spoof), 0, "spoofed delivered on host 2");
    assert!(delivered(&c1, &good) > 0, "nothing genuine arrived before the move");
    assert!(delivered(&c2, &good) > 0, "nothing genuine arrived after the move");
    assert!(h1.ns.exec(&["ip", "link", "show", "vifm"]).is_err());
}
