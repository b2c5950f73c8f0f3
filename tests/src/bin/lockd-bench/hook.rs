//! The toolstack hook's cost: `lockd hook setup-vif-rules` as xenopsd runs it, one process per
//! call, from process start to exit, against a daemon in a namespace with a bridge.
//! - `hook_storm_500_s`: 500 VIFs plugged back to back (each a first `filter` of a fresh
//!   netdev: policy, three program attachments, bridge port, link up);
//! - `hook_p99_ms`: 200 re-filters of plugged VIFs (xenopsd's live locking-mode change).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lockd_kit::netlab::NetNs;
use serde_json::{Value, json};

use crate::{
    api::{BenchDaemon, pct_ms},
    step,
};

const VIFS: usize = 500;

fn record(i: usize, locked: bool) -> String {
    let mode = if locked {
        format!(
            r#"["Locked",{{"ipv4":["10.1.{}.{}"],"ipv6":[]}}]"#,
            i / 250,
            i % 250 + 1
        )
    } else {
        r#""Unlocked""#.to_string()
    };
    let vif = format!("6f1c3bd8-0a52-4b8e-9f3e-{i:012x}");
    format!(
        r#"{{"id":["{vm}","0"],"position":0,"mac":"02:00:00:01:{:02x}:{:02x}","carrier":true,"mtu":1500,"backend":["Local","xenbr0"],"other_config":{{}},"locking_mode":{mode},"extra_private_keys":{{"vif-uuid":"{vif}","network-uuid":"0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b00"}},"ipv4_configuration":"Unspecified4","ipv6_configuration":"Unspecified6","trunks":[]}}"#,
        i >> 8,
        i & 0xff,
        vm = vm(i),
    )
}

fn vm(i: usize) -> String {
    format!("a1b2c3d4-0000-4000-8000-{:012x}", i)
}

pub(crate) fn hook_cost() -> Value {
    step("toolstack hook: 500 VIFs plugged back to back, then 200 live re-filters");
    let ns = NetNs::new("bk").expect("ns");
    ns.exec(&["ip", "link", "add", "xenbr0", "type", "bridge"])
        .expect("bridge");
    ns.exec(&["ip", "link", "set", "xenbr0", "up"]).expect("up");
    let base = std::env::temp_dir().join(format!("lockd-hook-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let dir = base.join("xenopsd");
    let batch = base.join("links.batch");
    std::fs::create_dir_all(&base).expect("dir");
    let mut b = String::new();
    for i in 0..VIFS {
        b += &format!("link add vif{i}.0 type veth peer name p{i}\n");
        let d = dir.join("classic/VM").join(vm(i));
        std::fs::create_dir_all(&d).expect("record dir");
        std::fs::write(d.join("vif.0"), record(i, true)).expect("record");
    }
    std::fs::write(&batch, b).expect("batch");
    ns.exec(&["ip", "-batch", batch.to_str().expect("utf-8")])
        .expect("veths");
    let bin = lockd_tests::daemon::lockd_bin();
    let daemon = BenchDaemon::start(&ns, base, &[("LOCKD_XENOPSD_DIR", dir.as_path())]);
    let sock = daemon.sock.clone();
    let hook = |i: usize| {
        let t = Instant::now();
        let out = Command::new(&bin)
            .args([
                "hook",
                "setup-vif-rules",
                "classic",
                &format!("vif{i}.0"),
                &vm(i),
                "0",
                "filter",
            ])
            .env("LOCKD_SOCKET", &sock)
            .env("LOCKD_XENOPSD_DIR", &dir)
            .output()
            .expect("hook");
        assert!(
            out.status.success(),
            "hook vif{i}.0: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.elapsed()
    };
    let storm_start = Instant::now();
    let mut plugs: Vec<Duration> = (0..VIFS).map(hook).collect();
    let storm = storm_start.elapsed().as_secs_f64();
    // Live locking-mode changes: the record changes, xenopsd re-runs the hook.
    let mut refilters = Vec::new();
    for k in 0..200 {
        let i = (k * 7) % VIFS;
        let path = dir.join("classic/VM").join(vm(i)).join("vif.0");
        std::fs::write(&path, record(i, k % 2 == 1)).expect("record");
        refilters.push(hook(i));
    }
    daemon.stop();
    let r = json!({
        "hook_storm_500_s": storm,
        "hook_plug_p50_ms": pct_ms(&mut plugs, 50.0),
        "hook_plug_p99_ms": pct_ms(&mut plugs, 99.0),
        "hook_p50_ms": pct_ms(&mut refilters, 50.0),
        "hook_p99_ms": pct_ms(&mut refilters, 99.0),
    });
    eprintln!(
        "  500 plugs in {storm:.2} s (first filter p50 {:.1} ms, p99 {:.1} ms); re-filter p50 {:.2} ms, p99 {:.2} ms",
        r["hook_plug_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["hook_plug_p99_ms"].as_f64().unwrap_or(f64::NAN),
        r["hook_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["hook_p99_ms"].as_f64().unwrap_or(f64::NAN),
    );
    r
}
