//! Seeing what lockd does, end to end with the real daemon and kernel: `lockd monitor` (one
//! line per dropped frame, capped per VIF), `/metrics` (scraped with curl, checked by
//! promtool, equal to `vif-stats`) and `lockd explain` on captures taken with tcpdump.

use std::{
    io::{BufRead as _, BufReader},
    net::{Ipv4Addr, Ipv6Addr},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use lockd_common::policy::format_mac;
use lockd_kit::{
    frames,
    netlab::{NetNs, bridge, send_frames, veth},
};
use lockd_tests::{
    daemon::{Instance, lockd_bin},
    scene::{IP_A, IP_B, IP_SPOOF, MAC_A, MAC_B, VIF, configure, udp},
    wire::{Capture, delivered},
};
use serde_json::Value;

/// A bridge in a host namespace, VM a (receiver) and VM b (the VIF under test, locked to
/// 10.0.0.2 and 2001:db8::2) plugged in, and a daemon enforcing it.
struct Topo {
    host: NetNs,
    a: NetNs,
    b: NetNs,
    d: Instance,
}

fn topo(env: &[(&str, &str)]) -> Topo {
    let host = NetNs::new("oh").expect("ns");
    bridge(&host, "br0").expect("bridge");
    let a = NetNs::new("oa").expect("ns");
    veth(&host, "vifa", &a, "eth0", &format_mac(MAC_A), Some("br0")).expect("veth a");
    let b = NetNs::new("ob").expect("ns");
    veth(&host, "vifb", &b, "eth0", &format_mac(MAC_B), Some("br0")).expect("veth b");
    let mut d = Instance::new(&host);
    d.env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    d.start();
    configure(&d, &["ipv4-allowed=10.0.0.2", "ipv6-allowed=2001:db8::2"]);
    Topo { host, a, b, d }
}

fn arp_claiming(spa: Ipv4Addr) -> Vec<u8> {
    frames::arp(MAC_B, [0xff; 6], 1, MAC_B, spa, [0; 6], IP_A)
}

/// `lockd monitor` with `args`, its stdout lines arriving on a channel.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn start(d: &Instance, args: &[&str]) -> Monitor {
        let mut child = Command::new(lockd_bin())
            .arg("monitor")
            .args(args)
            .env("LOCKD_SOCKET", &d.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("lockd monitor");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        // The daemon subscribes the client before it answers; the client says so on stderr
        // once the answer is in. Wait for that line, however long this machine takes.
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if etx.send(l).is_err() {
                    break;
                }
            }
        });
        let started = std::time::Instant::now();
        loop {
            match erx.recv_timeout(Duration::from_secs(120)) {
                Ok(l) if l.contains("monitoring drops") => break,
                Ok(l) => eprintln!("monitor: {l}"),
                Err(e) => panic!("lockd monitor {args:?} never said it was listening: {e}"),
            }
        }
        eprintln!("monitor {args:?} listening after {:.2?}", started.elapsed());
        Monitor { child, lines }
    }

    /// The next `n` lines, waiting up to a generous bound for each, then any more that
    /// arrive within `quiet` (so extra lines are seen, not missed).
    fn expect(&self, n: usize, quiet: Duration) -> Vec<String> {
        let mut v = Vec::new();
        while v.len() < n {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(l) => v.push(l),
                Err(_) => break,
            }
        }
        v.extend(self.drain(quiet));
        v
    }

    fn expect_json(&self, n: usize, quiet: Duration) -> Vec<Value> {
        self.expect(n, quiet)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// Every line that arrives within `quiet` of the one before (or of the call).
    fn drain(&self, quiet: Duration) -> Vec<String> {
        let mut v = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(quiet) {
            v.push(l);
        }
        v
    }

    fn json(&self, quiet: Duration) -> Vec<Value> {
        self.drain(quiet)
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn monitor_shows_each_dropped_frame_with_its_reason_and_addresses() {
    let t = topo(&[]);
    let all = Monitor::start(&t.d, &["--json", "--vif", VIF]);
    let arp_only = Monitor::start(&t.d, &["--json", "--reason", "arp_spoof"]);
    let text = Monitor::start(&t.d, &["--device", "vifb"]);
    send_frames(
        &t.b,
        "eth0",
        &[
            udp(IP_B, 1),
            udp(IP_SPOOF, 2),
            arp_claiming(IP_B),
            arp_claiming(Ipv4Addr::new(10, 0, 0, 77)),
        ],
    )
    .expect("send");
    let ev = all.expect_json(2, Duration::from_millis(500));
    assert_eq!(
        ev.len(),
        2,
        "one line per dropped frame, none for passing ones: {ev:?}"
    );
    let udp_ev = &ev[0];
    for (k, want) in [
        ("vif", VIF),
        ("device", "vifb"),
        ("direction", "from_vm"),
        ("reason", "ipv4_spoof"),
        ("src_mac", "02:00:00:00:00:0b"),
        ("dst_mac", "02:00:00:00:00:0a"),
        ("src_ip", "10.0.0.99"),
        ("dst_ip", "10.0.0.1"),
        ("proto", "ipv4/udp"),
    ] {
        assert_eq!(udp_ev[k], want, "{k} in {udp_ev}");
    }
    let time = udp_ev["time"].as_str().expect("time");
    assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
    let arp_ev = &ev[1];
    assert_eq!(arp_ev["reason"], "arp_spoof");
    assert_eq!(arp_ev["src_ip"], "10.0.0.77", "ARP: the sender's address");
    assert_eq!(arp_ev["dst_ip"], "10.0.0.1", "ARP: the target's address");
    assert_eq!(arp_ev["proto"], "arp");
    let arp = arp_only.expect_json(1, Duration::from_millis(500));
    assert_eq!(arp.len(), 1, "{arp:?}");
    assert_eq!(arp[0]["reason"], "arp_spoof");
    let lines = text.expect(2, Duration::from_millis(500));
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].contains("ipv4_spoof") && lines[0].contains("10.0.0.99 → 10.0.0.1"),
        "{}",
        lines[0]
    );
    // A filter naming nothing lockd knows is refused, not silently empty.
    let bad =
        t.d.cli(&["monitor", "--vif", "00000000-0000-0000-0000-000000000000"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("unknown VIF"), "{}", bad.stderr);
    let bad = t.d.cli(&["monitor", "--reason", "spoofing"]);
    assert!(
        bad.code != 0 && bad.stderr.contains("unknown reason"),
        "{}",
        bad.stderr
    );
    drop((all, arp_only, text, t.a, t.host));
}

#[test]
fn a_flood_prints_at_most_the_cap_and_counts_the_rest() {
    let t = topo(&[]);
    let before = t.d.counter(VIF, "from_vm", "ipv4_spoof");
    let m = Monitor::start(&t.d, &["--json"]);
    let flood: Vec<_> = (0..100_000).map(|i| udp(IP_SPOOF, i)).collect();
    let started = Instant::now();
    send_frames(&t.b, "eth0", &flood).expect("send");
    let took = started.elapsed();
    // The suppressed counts come once a second.
    let lines = m.json(Duration::from_millis(2500));
    let dropped = t.d.counter(VIF, "from_vm", "ipv4_spoof") - before;
    let events: Vec<&Value> = lines.iter().filter(|l| l["reason"].is_string()).collect();
    let suppressed: u64 = lines.iter().filter_map(|l| l["suppressed"].as_u64()).sum();
    eprintln!(
        "{dropped} dropped in {took:?}: {} events, {suppressed} suppressed",
        events.len()
    );
    // Each second a window opens: the flood spans at most took + 1 of them.
    let windows = took.as_secs() + 2;
    assert!(
        events.len() as u64 <= 100 * windows,
        "{} events for {windows} one-second windows",
        events.len()
    );
    assert!(suppressed > 0, "no suppressed count for a flood");
    assert_eq!(
        events.len() as u64 + suppressed,
        dropped,
        "every drop is either shown or counted as suppressed"
    );
    drop((m, t.a, t.host));
}

/// Scrapes `/metrics` inside the daemon's namespace.
fn scrape(t: &Topo, port: u16) -> String {
    t.host
        .exec(&["curl", "-sf", &format!("http://127.0.0.1:{port}/metrics")])
        .expect("curl /metrics")
}

/// `lockd_frames_total` for the VIF, direction and reason.
fn frames_total(body: &str, dir: &str, reason: &str) -> Option<u64> {
    let labels = format!("vif=\"{VIF}\",device=\"vifb\",direction=\"{dir}\",reason=\"{reason}\"");
    body.lines()
        .find(|l| l.starts_with("lockd_frames_total{") && l.contains(&labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
}

fn promtool(body: &str) {
    use std::io::Write as _;
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; `cargo xtask test` installs it)");
    p.stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = p.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn metrics_pass_promtool_and_equal_vif_stats() {
    let port = 9000 + (std::process::id() % 500) as u16;
    let listen = format!("127.0.0.1:{port}");
    let t = topo(&[("LOCKD_METRICS_LISTEN", &listen)]);
    // Scraped during traffic.
    let scraper = {
        let host = t.host.name().to_string();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let out = Command::new("ip")
                .args(["netns", "exec", &host, "curl", "-sf"])
                .arg(format!("http://127.0.0.1:{port}/metrics"))
                .output()
                .expect("curl");
            assert!(out.status.success(), "curl /metrics during traffic");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    let frames: Vec<_> = (0..20_000)
        .map(|i| {
            if i % 3 == 0 {
                udp(IP_SPOOF, i)
            } else {
                udp(IP_B, i)
            }
        })
        .collect();
    send_frames(&t.b, "eth0", &frames).expect("send");
    let during = scraper.join().expect("scraper");
    promtool(&during);
    std::thread::sleep(Duration::from_millis(200));
    // The host's own traffic (the bridge's IGMP reports, flooded to the VM) may land between
    // two reads: the scrape is taken between two vif-stats reads that agree, or tried again.
    let stats_now = || {
        t.d.cli(&["vif-stats", &format!("uuid={VIF}"), "--json"])
            .json()
    };
    let (body, stats) = (0..50)
        .find_map(|_| {
            let first = stats_now();
            let body = scrape(&t, port);
            (stats_now() == first).then_some((body, first))
        })
        .expect("vif-stats never stood still for a scrape");
    promtool(&body);
    let counters = &stats[0]["counters"];
    let mut checked = 0;
    for dir in ["from_vm", "to_vm"] {
        for (reason, c) in counters[dir].as_object().expect("reasons") {
            let want = c["packets"].as_u64().expect("packets");
            assert_eq!(
                frames_total(&body, dir, reason),
                Some(want),
                "{dir}/{reason}: /metrics against vif-stats"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked}");
    assert!(
        frames_total(&body, "from_vm", "ipv4_spoof").unwrap() >= 6_000,
        "the spoofed frames are counted"
    );
    for want in [
        "lockd_vifs{mode=\"locked\"} 1",
        "# TYPE lockd_policy_update_seconds histogram",
        "lockd_monitor_events_suppressed_total ",
        "lockd_build_info{version=",
        "lockd_bytes_total{",
    ] {
        assert!(body.contains(want), "{want} missing:\n{body}");
    }
    // The server's other answers: OpenMetrics when asked, 404 off /metrics, 405 for a POST.
    let curl = |a: &[&str]| t.host.exec(&[&["curl", "-s", "-o", "/dev/null", "-w"][..], a].concat()).expect("curl");
    let url = |p: &str| format!("http://127.0.0.1:{port}/{p}");
    let om = curl(&["%{content_type}", "-H", "Accept: application/openmetrics-text", &url("metrics")]);
    assert!(om.starts_with("application/openmetrics-text"), "{om}");
    let codes = (curl(&["%{http_code}", &url("other")]), curl(&["%{http_code}", "-X", "POST", &url("metrics")]));
    assert_eq!(codes, ("404".to_string(), "405".to_string()));
    drop((t.a, t.host));
}

/// tcpdump writing every frame VM b sends, until stopped.
struct Tcpdump {
    child: Child,
    path: std::path::PathBuf,
}

impl Tcpdump {
    fn start(ns: &NetNs, dev: &str, path: std::path::PathBuf) -> Tcpdump {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                "tcpdump",
                "-i",
                dev,
                // What the VM sent only: the bridge's own IGMP reports flooded to the VM are
                // frames lockd judged in the other direction, or not at all.
                "-Q",
                "out",
                "--immediate-mode",
                "-U",
                "-n",
                "-w",
            ])
            .arg(&path)
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump");
        // Frames count only once tcpdump says it is listening.
        let err = child.stderr.take().expect("stderr");
        let mut first = String::new();
        BufReader::new(err)
            .read_line(&mut first)
            .expect("tcpdump stderr");
        assert!(first.contains("listening"), "tcpdump: {first}");
        Tcpdump { child, path }
    }

    fn stop(mut self) -> std::path::PathBuf {
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        self.path.clone()
    }
}

fn explain(d: &Instance, args: &[&str]) -> Vec<Value> {
    let out = Command::new(lockd_bin())
        .arg("explain")
        .args(args)
        .env("LOCKD_SOCKET", &d.socket)
        .output()
        .expect("lockd explain");
    assert!(
        out.status.success(),
        "lockd explain {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn explain_gives_captured_frames_the_verdicts_they_got_live() {
    let t = topo(&[]);
    let tmp = TempDir::new("lockd-explain");
    let dir = tmp.0.clone();
    let ll_b: Ipv6Addr = "fe80::ff:fe00:b".parse().expect("ll");
    let sent = vec![
        udp(IP_B, 1),
        udp(IP_SPOOF, 2),
        arp_claiming(IP_B),
        arp_claiming(Ipv4Addr::new(10, 0, 0, 77)),
        frames::udp6(
            MAC_B,
            MAC_A,
            "2001:db8::2".parse().expect("v6"),
            "2001:db8::1".parse().expect("v6"),
            5000,
            9,
            b"ok",
        ),
        frames::udp6(
            MAC_B,
            MAC_A,
            "2001:db8::66".parse().expect("v6"),
            "2001:db8::1".parse().expect("v6"),
            5000,
            9,
            b"spoof",
        ),
        frames::udp4(MAC_B, MAC_A, IP_B, IP_A, 67, 68, b"rogue dhcp"),
        frames::icmp6(
            MAC_B,
            MAC_A,
            ll_b,
            "fe80::1".parse().expect("v6"),
            134,
            &[0; 12],
        ),
        udp(IP_B, 3),
    ];
    let before =
        t.d.cli(&["vif-stats", &format!("uuid={VIF}"), "--json"])
            .json();
    let dump = Tcpdump::start(&t.b, "eth0", dir.join("from-b.pcap"));
    let cap = Capture::start(&t.a, "eth0");
    send_frames(&t.b, "eth0", &sent).expect("send");
    let got = cap.finish();
    let pcap = dump.stop();
    let after =
        t.d.cli(&["vif-stats", &format!("uuid={VIF}"), "--json"])
            .json();

    let p = pcap.to_str().expect("path");
    let lines = explain(&t.d, &["--pcap", p, "--json", "--vif", VIF]);
    let frames = lockd::explain::read_capture(&pcap).expect("read the capture");
    assert_eq!(lines.len(), frames.len());
    // Each frame this test sent: passed live (reached VM a) exactly when explain says pass.
    let mut matched = 0;
    for (l, f) in lines.iter().zip(&frames) {
        assert_eq!(l["verdict"], l["model_verdict"], "{l}");
        assert_eq!(l["reason"], l["model_reason"], "{l}");
        if let Some(s) = sent.iter().find(|s| **s == f.data) {
            let live = if delivered(&got, std::slice::from_ref(s)) == 1 {
                "pass"
            } else {
                "drop"
            };
            assert_eq!(l["verdict"], live, "frame {}: {l}", l["index"]);
            matched += 1;
        }
    }
    assert_eq!(matched, sent.len(), "every sent frame is in the capture");
    // And every captured frame's reason adds up to what the kernel counted live.
    for (reason, c) in after[0]["counters"]["from_vm"]
        .as_object()
        .expect("reasons")
    {
        let live = c["packets"].as_u64().unwrap()
            - before[0]["counters"]["from_vm"][reason]["packets"]
                .as_u64()
                .unwrap();
        let explained = lines
            .iter()
            .filter(|l| l["reason"] == reason.as_str())
            .count() as u64;
        assert_eq!(
            explained,
            live,
            "{reason}: {:?}",
            lines
                .iter()
                .filter(|l| l["reason"] == reason.as_str())
                .collect::<Vec<_>>()
        );
    }
    // The same policy given as words, and the capture as pcapng, say the same.
    let ng = dir.join("from-b.pcapng");
    {
        use pcap_file::pcapng::{
            PcapNgWriter,
            blocks::{
                enhanced_packet::EnhancedPacketBlock,
                interface_description::InterfaceDescriptionBlock,
            },
        };
        let mut w = PcapNgWriter::new(std::fs::File::create(&ng).expect("create")).expect("ng");
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: pcap_file::DataLink::ETHERNET,
            snaplen: 0xffff,
            options: vec![],
        })
        .expect("idb");
        for f in &frames {
            w.write_pcapng_block(EnhancedPacketBlock {
                interface_id: 0,
                timestamp: Duration::ZERO,
                original_len: f.orig_len as u32,
                data: f.data.clone().into(),
                options: vec![],
            })
            .expect("epb");
        }
    }
    let words = explain(
        &t.d,
        &[
            "--pcap",
            ng.to_str().expect("path"),
            "--json",
            "--mac",
            "02:00:00:00:00:0b",
            "locking-mode=locked",
            "ipv4-allowed=10.0.0.2",
            "ipv6-allowed=2001:db8::2",
        ],
    );
    assert_eq!(words, lines);
    // To the VM: a frame for another MAC would be dropped.
    let to_vm = explain(
        &t.d,
        &["--pcap", p, "--json", "--direction", "to-vm", "--vif", VIF],
    );
    assert!(
        to_vm.iter().any(|l| l["reason"] == "rx_foreign_mac"),
        "frames from b to a are foreign to b: {to_vm:?}"
    );
    drop((t.a, t.host, tmp));
}

/// A directory removed however the test ends.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("temp dir");
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
