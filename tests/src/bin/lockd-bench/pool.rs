//! Policy shared through etcd: how long a write on one host takes to be enforced on the
//! others, the CLI's round trip against etcd, and a daemon's start with 4096 VIFs in etcd.
//! Real etcd (one member), three host namespaces, each with a daemon and a VIF netdev; the
//! verdict on another host is the kernel's (`BPF_PROG_TEST_RUN` of lockd's program over
//! that daemon's pinned maps), not its CLI's.

use std::time::{Duration, Instant};

use lockd::dataplane::Dataplane;
use lockd_kit::netlab::NetNs;
use lockd_tests::{etcd::Cluster, scene::IP_SPOOF, scene::udp};
use serde_json::{Value, json};

use crate::{
    api::{BenchDaemon, pct_ms},
    step,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// A write not enforced within this is a failed run, not a slow one.
const BOUND: Duration = Duration::from_secs(30);

/// (Dropped in field order: the dataplane, the daemon, then the namespaces.)
struct Host {
    /// A second dataplane over the daemon's pins: the kernel's verdict with its maps.
    dp: Dataplane,
    daemon: BenchDaemon,
    ifindex: u32,
    _vm: NetNs,
    ns: NetNs,
}

fn host(c: &mut Cluster, h: u32, url: &str) -> Host {
    let ns = NetNs::new(&format!("ep{h}")).expect("ns");
    let vm = NetNs::new(&format!("ev{h}")).expect("ns");
    let dev = format!("pv{h}");
    lockd_kit::netlab::veth(&ns, &dev, &vm, "eth0", "02:00:00:00:00:0b", None).expect("veth");
    c.connect(&ns);
    let base = std::env::temp_dir().join(format!("lockd-bench-pool-{}-{h}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let daemon = BenchDaemon::start(&ns, base, &[("LOCKD_STORE", std::path::Path::new(url))]);
    let dp = Dataplane::load_with(Some(daemon.bpffs())).expect("a dataplane over the daemon's pins");
    let ifindex = ns.ifindex(&dev).expect("ifindex");
    Host {
        ns,
        _vm: vm,
        daemon,
        dp,
        ifindex,
    }
}

fn xe(h: &Host, args: &[String]) -> (Duration, String) {
    let t = Instant::now();
    let r = lockd::protocol::call(&h.daemon.sock, args).expect("daemon");
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    (t.elapsed(), r.stdout.trim().to_string())
}

/// Waits until the kernel on `h` gives the spoofed probe `want`; when it did.
fn until(h: &Host, want: u32, probe: &[u8]) -> Instant {
    let start = Instant::now();
    loop {
        let (dp, ifindex) = (&h.dp, h.ifindex);
        let got = h.ns.run(|| dp.judge(ifindex, probe).expect("judge")).expect("ns");
        if got == want {
            return Instant::now();
        }
        assert!(start.elapsed() < BOUND, "not enforced within {BOUND:?}");
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// `writes` toggles of the network's default mode, written on host 1: (write round trips,
/// times from each write's acknowledgement until both other hosts' kernels enforce it).
fn toggles(hosts: &[Host], net: &str, writes: usize) -> (Vec<Duration>, Vec<Duration>) {
    let probe = udp(IP_SPOOF, 7);
    let (mut rtt, mut conv) = (Vec::new(), Vec::new());
    for i in 0..writes {
        let (mode, want) = if i % 2 == 0 { ("unlocked", XDP_PASS) } else { ("disabled", XDP_DROP) };
        let (t, _) = xe(
            &hosts[0],
            &[
                "network-param-set".into(),
                format!("uuid={net}"),
                format!("default-locking-mode={mode}"),
            ],
        );
        let acked = Instant::now();
        rtt.push(t);
        let last = hosts[1..].iter().map(|h| until(h, want, &probe)).max().unwrap_or(acked);
        conv.push(last.saturating_duration_since(acked));
    }
    (rtt, conv)
}

/// The section's figures.
pub(crate) fn etcd_pool(quick: bool) -> Value {
    step("policy shared through etcd: 3 hosts, 1 member (write on host 1 → kernel verdict on hosts 2 and 3)");
    let writes = if quick { 20 } else { 100 };
    let mut c = Cluster::start(1);
    let url = c.store_url("lockd-bench");
    let hosts: Vec<Host> = (1..=3).map(|h| host(&mut c, h, &url)).collect();
    let (_, net) = xe(&hosts[0], &["network-create".into(), "name-label=pool".into()]);
    for (i, _) in hosts.iter().enumerate() {
        xe(
            &hosts[0],
            &[
                "vif-create".into(),
                format!("network-uuid={net}"),
                format!("device=pv{}", i + 1),
                "mac=02:00:00:00:00:0b".into(),
            ],
        );
    }
    let (mut rtt, mut conv) = toggles(&hosts, &net, writes);
    let converge = pct_ms(&mut conv, 99.0);
    let update = pct_ms(&mut rtt, 99.0);
    eprintln!("  {writes} writes: converge p99 {converge:.1} ms, CLI round trip p99 {update:.1} ms");

    const VIFS: u32 = 4096;
    let fill = Instant::now();
    for i in 0..VIFS {
        xe(
            &hosts[0],
            &[
                "vif-create".into(),
                format!("network-uuid={net}"),
                format!("device=px{i}"),
                format!("mac=02:02:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            ],
        );
    }
    eprintln!("  {VIFS} more VIFs written in {:.1} s", fill.elapsed().as_secs_f64());
    let (_, mut conv_big) = toggles(&hosts, &net, writes);
    let converge_big = pct_ms(&mut conv_big, 99.0);
    eprintln!("  with {VIFS} VIFs in the store: converge p99 {converge_big:.1} ms");

    // A new host's daemon, its state all in etcd (no local copy yet).
    let ns = NetNs::new("ep9").expect("ns");
    c.connect(&ns);
    let base = std::env::temp_dir().join(format!("lockd-bench-pool-{}-9", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let t = Instant::now();
    let d = BenchDaemon::start(&ns, base, &[("LOCKD_STORE", std::path::Path::new(&url))]);
    let start_s = t.elapsed().as_secs_f64();
    let listed = lockd::protocol::call(&d.sock, &["vif-list".into(), "--json".into()])
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.stdout).ok())
        .and_then(|v| v.as_array().map(Vec::len))
        .unwrap_or(0);
    eprintln!("  a daemon started with {listed} VIFs from etcd in {start_s:.2} s");
    d.stop();
    drop(hosts);
    json!({
        "etcd_converge_p99_ms": converge,
        "etcd_update_p99_ms": update,
        "etcd_converge_p99_ms_4096": converge_big,
        "etcd_start_4096_s": start_s,
        "etcd_start_vifs": listed,
        "writes": writes,
    })
}
