//! `lockd explain` takes its verdict from what the kernel program returned, and runs every
//! frame from the VM in the kernel — frames shorter than an Ethernet header too, which
//! `BPF_PROG_TEST_RUN` takes only with a fragment of padding the program does not read
//! (`testrun::SHORT_FRAME_PAD`). A frame the to-VM (TC) program cannot
//! be run on says why, on its line and on stderr. Real frames: sent by a VM over a veth and
//! captured at the host end, then cut short as a capture can hold them.

use std::{process::Command, time::Duration};

use lockd::{
    dataplane::{XDP_DROP, XDP_PASS},
    explain::{Captured, Run, explain, read_capture, xdp_verdict},
};
use lockd_common::{
    Direction,
    policy::{EffectiveMode, format_mac},
};
use lockd_kit::{
    frames,
    netlab::{NetNs, veth},
};
use lockd_tests::{
    daemon::lockd_bin,
    scene::{IP_A, IP_B, IP_SPOOF, MAC_A, MAC_B, udp},
    wire::{Capture, send},
};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use serde_json::Value;

/// The JSON fields of a line, a stable interface.
const FIELDS: [&str; 6] = [
    "index",
    "verdict",
    "reason",
    "model_verdict",
    "model_reason",
    "summary",
];

/// What `lockd explain` printed: its JSON lines and its stderr.
struct Out {
    lines: Vec<Value>,
    stderr: String,
}

fn run_explain(pcap: &std::path::Path, args: &[&str]) -> Out {
    let out = Command::new(lockd_bin())
        .arg("explain")
        .arg("--pcap")
        .arg(pcap)
        .arg("--json")
        .args(["--mac", &format_mac(MAC_B)])
        .args(args)
        // No daemon: the policy is given as words.
        .env("LOCKD_SOCKET", "/nonexistent/lockd.sock")
        .output()
        .expect("lockd explain");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "lockd explain {args:?} (3: the kernel and the model, or the kernel and itself, \
         disagree): {stderr}"
    );
    assert!(!stderr.contains("!!!"), "{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        let mut keys: Vec<&str> = l
            .as_object()
            .expect("object")
            .keys()
            .map(|k| k.as_str())
            .collect();
        keys.sort_unstable();
        let mut want = FIELDS;
        want.sort_unstable();
        assert_eq!(keys, want, "{l}");
        assert_eq!(l["verdict"], l["model_verdict"], "{l}");
        assert_eq!(l["reason"], l["model_reason"], "{l}");
    }
    Out { lines, stderr }
}

fn write_pcap(path: &std::path::Path, frames: &[Captured]) {
    let file = std::fs::File::create(path).expect("create pcap");
    let mut w = PcapWriter::with_header(file, PcapHeader::default()).expect("pcap header");
    for f in frames {
        w.write_packet(&PcapPacket::new(Duration::ZERO, f.orig_len as u32, &f.data))
            .expect("write packet");
    }
}

#[test]
fn explain_runs_short_frames_in_the_kernel_and_reports_what_the_program_returned() {
    // VM b's frames, captured where lockd judges them: the host end of its VIF.
    let host = NetNs::new("xh").expect("ns");
    let b = NetNs::new("xb").expect("ns");
    veth(&host, "vifb", &b, "eth0", &format_mac(MAC_B), None).expect("veth");
    let sent = vec![
        udp(IP_B, 1),
        udp(IP_SPOOF, 2),
        frames::arp(MAC_B, [0xff; 6], 1, MAC_B, IP_B, [0; 6], IP_A),
        // Addressed to VM b: what the host would send it (the to-VM direction).
        frames::udp4(MAC_A, MAC_B, IP_A, IP_B, 9, 5000, b"to b"),
    ];
    let cap = Capture::start(&host, "vifb");
    send(&b, "eth0", &sent);
    let got = cap.finish();
    let mut real: Vec<Vec<u8>> = Vec::new();
    for s in &sent {
        let f = got
            .iter()
            .find(|g| *g == s)
            .unwrap_or_else(|| panic!("a sent frame did not arrive at vifb: {got:?}"));
        real.push(f.clone());
    }

    // The capture: the real frames; then every length from 0 to 13 bytes (the start of the
    // genuine frame, as short on the wire as in the file); then frames whose IPv4 header is
    // cut short (from VM b, and to it: the kernel refuses both for TC).
    let mut caught: Vec<Captured> = real
        .iter()
        .map(|f| Captured {
            data: f.clone(),
            orig_len: f.len(),
        })
        .collect();
    let first_short = caught.len();
    for n in 0..lockd_common::proto::ETH_HLEN {
        caught.push(Captured {
            data: real[0][..n].to_vec(),
            orig_len: n,
        });
    }
    let cut_from_b = caught.len();
    caught.push(Captured {
        data: real[0][..24].to_vec(),
        orig_len: real[0].len(),
    });
    let cut_to_b = caught.len();
    caught.push(Captured {
        data: real[3][..24].to_vec(),
        orig_len: real[3].len(),
    });
    let dir = std::env::temp_dir().join(format!("lockd-explain-short-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pcap = dir.join("b.pcap");
    write_pcap(&pcap, &caught);
    let frames = read_capture(&pcap).expect("read the capture back");
    assert_eq!(frames.len(), caught.len());
    let is_short = |i: usize| (first_short..first_short + 14).contains(&i);

    // From the VM, locked: every frame ran in the kernel; the short ones are malformed.
    let locked = ["locking-mode=locked", "ipv4-allowed=10.0.0.2"];
    let from = run_explain(&pcap, &locked);
    assert_eq!(from.lines.len(), frames.len());
    let want: Vec<(&str, &str)> = vec![
        ("pass", "pass"),
        ("drop", "ipv4_spoof"),
        ("pass", "pass"),
        ("drop", "mac_spoof"),
    ];
    for (i, l) in from.lines.iter().enumerate() {
        let (v, r) = match i {
            i if i < first_short => want[i],
            // From VM a's MAC: rule 1 comes before any header is parsed.
            i if i == cut_to_b => ("drop", "mac_spoof"),
            _ => ("drop", "malformed"),
        };
        assert_eq!(
            (l["verdict"].as_str(), l["reason"].as_str()),
            (Some(v), Some(r)),
            "{l}"
        );
        assert!(
            !l["summary"].as_str().unwrap().contains("not run"),
            "from the VM every frame runs in the kernel: {l}"
        );
    }
    assert!(!from.stderr.contains("not run"), "{}", from.stderr);

    // The kernel's own return values, through the library: XDP_DROP for every short frame
    // under the locked policy, XDP_PASS for them when the VIF is unlocked (the model says
    // pass either way there: only the return value shows the program ran and passed them).
    let mut policy =
        lockd::explain::policy_from_words(&format_mac(MAC_B), &locked.map(String::from))
            .expect("policy");
    let lines = explain(&policy, &frames, Direction::FromVm).expect("explain, locked");
    for (i, l) in lines.iter().enumerate() {
        let Run::Kernel { retval } = l.run else {
            panic!("frame {} did not run in the kernel: {l:?}", l.index);
        };
        assert_eq!(l.verdict, xdp_verdict(retval), "{l:?}");
        assert_eq!(l.problem, None, "{l:?}");
        if is_short(i) {
            assert_eq!(retval, XDP_DROP, "{l:?}");
        }
    }
    policy.mode = EffectiveMode::Unlocked;
    for l in explain(&policy, &frames, Direction::FromVm).expect("explain, unlocked") {
        assert_eq!(l.run, Run::Kernel { retval: XDP_PASS }, "{l:?}");
        assert_eq!((l.verdict, l.reason), ("pass", "pass"), "{l:?}");
    }
    let disabled = run_explain(&pcap, &["locking-mode=disabled"]);
    assert!(
        disabled
            .lines
            .iter()
            .all(|l| l["verdict"] == "drop" && l["reason"] == "disabled"),
        "{:?}",
        disabled.lines
    );

    // To the VM: the real frames run in the kernel; frames under 14 bytes and the one whose
    // IPv4 header is cut short cannot, and their lines and stderr say exactly why.
    let to = run_explain(
        &pcap,
        &[
            "--direction",
            "to-vm",
            "locking-mode=locked",
            "ipv4-allowed=10.0.0.2",
        ],
    );
    assert_eq!(to.lines.len(), frames.len());
    let to_want = [
        ("drop", "rx_foreign_mac"),
        ("drop", "rx_foreign_mac"),
        ("pass", "pass"),
        ("pass", "pass"),
    ];
    for (i, l) in to.lines.iter().enumerate() {
        let summary = l["summary"].as_str().unwrap();
        let index = l["index"].as_u64().unwrap();
        if i < first_short {
            assert_eq!(
                (l["verdict"].as_str(), l["reason"].as_str()),
                (Some(to_want[i].0), Some(to_want[i].1)),
                "{l}"
            );
            assert!(!summary.contains("not run"), "{l}");
            continue;
        }
        // Whatever the program would make of them: the kernel builds no skb to run it on.
        let why = if is_short(i) {
            "builds no skb from under 14 bytes"
        } else {
            assert!(i == cut_from_b || i == cut_to_b);
            "IPv4 or IPv6 header is cut short"
        };
        assert!(
            summary.contains("not run in the kernel") && summary.contains(why),
            "{l}"
        );
        assert!(
            to.stderr
                .contains(&format!("lockd: frame {index}: not run in the kernel")),
            "{}",
            to.stderr
        );
    }
    policy.mode = EffectiveMode::Locked;
    for (i, l) in explain(&policy, &frames, Direction::ToVm)
        .expect("explain, to the VM")
        .iter()
        .enumerate()
    {
        let ran = matches!(l.run, Run::Kernel { .. });
        assert_eq!(ran, i < first_short, "{l:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    drop((b, host));
}
