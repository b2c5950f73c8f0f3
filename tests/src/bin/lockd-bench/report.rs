//! The benchmark's Markdown table and SVG plots (plain SVG written by hand).

use std::{fmt::Write as _, path::Path};

use serde_json::Value;

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Figures by key, joined with " / " (`unavailable` for a missing one).
fn join(r: &Value, keys: &[&str], fmt: impl Fn(f64) -> String) -> String {
    keys.iter()
        .map(|k| opt(&r[*k], &fmt))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// A figure, or `unavailable` where the run could not measure it.
fn opt(v: &Value, fmt: impl Fn(f64) -> String) -> String {
    v.as_f64().map_or_else(|| "unavailable".into(), fmt)
}

pub fn markdown(r: &Value) -> String {
    let mut s = String::new();
    let m = &r["machine"];
    let _ = writeln!(
        s,
        "Machine: {} ({} vCPUs), kernel {}, pktgen: {}. Run: {}, {:.0} s.\n",
        m["cpu"].as_str().unwrap_or("?"),
        m["vcpus"],
        m["kernel"].as_str().unwrap_or("?"),
        if m["pktgen"].as_bool() == Some(true) {
            "yes"
        } else {
            "no (built-in live-frames generator)"
        },
        if r["quick"].as_bool() == Some(true) {
            "--quick"
        } else {
            "full"
        },
        f(&r["seconds"])
    );
    let _ = writeln!(s, "| metric | value | target |\n|---|---|---|");
    let rows = [
        (
            "lockd native / floor (ns per packet)",
            format!("{:.2}×", f(&r["ratio_lockd_vs_floor"])),
            "≤ 1.10×",
        ),
        (
            "speed-up vs nftables netdev",
            format!("{:.2}×", f(&r["speedup_vs_nft_netdev"])),
            "≥ 4×",
        ),
        (
            "speed-up vs ebtables",
            if r["speedup_vs_ebtables"].is_number() {
                format!("{:.2}×", f(&r["speedup_vs_ebtables"]))
            } else {
                "unavailable (see the throughput table)".to_string()
            },
            "≥ 8×",
        ),
        (
            "ns the policy adds over the tool's own floor at its hook (lockd: empty XDP drop; each peer: itself with a one-rule drop): lockd / nftables netdev / nftables bridge / ebtables / ebtables nf-call 1 / xdp-filter",
            join(
                r,
                &[
                    "added_ns_lockd",
                    "added_ns_nft_netdev",
                    "added_ns_nft_bridge",
                    "added_ns_ebtables",
                    "added_ns_ebtables_nf_call",
                    "added_ns_xdp_filter",
                ],
                |x| format!("{x:.0}"),
            ),
            "lockd ≤ 15",
        ),
        (
            "added ns ratio (theirs ÷ lockd's): nftables netdev / nftables bridge / ebtables / ebtables nf-call 1 / xdp-filter",
            join(
                r,
                &[
                    "added_ratio_nft_netdev",
                    "added_ratio_nft_bridge",
                    "added_ratio_ebtables",
                    "added_ratio_ebtables_nf_call",
                    "added_ratio_xdp_filter",
                ],
                |x| format!("{x:.1}×"),
            ),
            "≥ 20 / – / ≥ 40 / – / ≥ 1",
        ),
        (
            "whole path, ns per packet (what a user pays, 1 vCPU): lockd / nftables netdev / nftables bridge / ebtables / ebtables nf-call 1 / xdp-filter",
            join(
                r,
                &[
                    "lockd_native_ns_per_pkt",
                    "nft_netdev_ns_per_pkt",
                    "nft_bridge_ns_per_pkt",
                    "ebtables_ns_per_pkt",
                    "ebtables_nf_call_ns_per_pkt",
                    "xdp_filter_ns_per_pkt",
                ],
                |x| format!("{x:.0}"),
            ),
            "reported",
        ),
        (
            "ns lockd adds on the skb path (TC ingress, over an empty TC program; 64 B)",
            opt(&r["added_ns_lockd_skb"], |x| format!("{x:.0}")),
            "≤ 30",
        ),
        (
            "ns lockd's TC program adds on netback's skbs (4400 B, 128 B head) / on 1500 B linear (kernel run statistics, over an empty program)",
            join(r, &["added_ns_lockd_netback", "added_ns_lockd_netback_1500"], |x| format!("{x:.0}")),
            "≤ 30, netback's = linear",
        ),
        (
            "on netback's skbs, the policy over each tool's own floor: nftables netdev / ebtables (÷ lockd's program cost)",
            format!(
                "{} / {} ns ({} / {})",
                opt(&r["added_ns_nft_netdev_netback"], |x| format!("{x:.0}")),
                opt(&r["added_ns_ebtables_netback"], |x| format!("{x:.0}")),
                opt(&r["added_ratio_nft_netdev_netback"], |x| format!("{x:.1}×")),
                opt(&r["added_ratio_ebtables_netback"], |x| format!("{x:.1}×"))
            ),
            "reported",
        ),
        (
            "a TCX link instead of a cls_bpf filter, per frame on netback's skbs: empty program / lockd",
            join(r, &["tcx_saves_ns_floor_netback", "tcx_saves_ns_lockd_netback"], |x| format!("{x:.0} ns less")),
            "reported",
        ),
        (
            "ns a rate limit adds per frame (test_run: the shaper hand-off)",
            opt(&r["limiter_added_ns"], |x| format!("{x:.1}")),
            "≤ 10",
        ),
        (
            "one TCP flow through the rate limit: same bridge / 20 ms away",
            format!(
                "{} / {}",
                opt(&r["tcp_lan_ratio"], |x| format!("{x:.3}")),
                opt(&r["tcp_wan_ratio"], |x| format!("{x:.3}"))
            ),
            "≥ 0.9 each",
        ),
        (
            "drop path, test_run: no monitor / a monitor attached (over its cap)",
            format!(
                "{} / {} ns",
                opt(&r["monitor_drop_ns"]["off_ns"], |x| format!("{x:.0}")),
                opt(&r["monitor_drop_ns"]["on_ns"], |x| format!("{x:.0}"))
            ),
            "off: within noise of no monitor code",
        ),
        (
            "lockd 2 vCPUs / 1 vCPU (pps)",
            format!("{:.2}×", f(&r["lockd_2vcpu_vs_1vcpu"])),
            "≥ 1.9×",
        ),
        (
            "update p99",
            format!("{:.0} µs", f(&r["update_p99_us"])),
            "< 1 ms",
        ),
        (
            "frames judged against the policy not in force during updates: leaked / wrongly dropped",
            format!(
                "{} / {}",
                r["update_leaked_frames"], r["update_wrongly_dropped_frames"]
            ),
            "0 / 0",
        ),
        (
            "rate limit: received at the far port / configured",
            format!("{:.4}", f(&r["ratelimit_accuracy"])),
            "1 ± 0.02",
        ),
        (
            "daemon RSS, 4096 VIFs",
            format!("{:.1} MB", f(&r["rss_mb_4096_vifs"])),
            "< 30 MB",
        ),
        (
            "API vif-param-set p99, 4096 VIFs (socket to durable reply)",
            format!("{:.2} ms", f(&r["api_update_p99_ms"])),
            "≤ 1 ms",
        ),
        (
            "the disk: one store page written + fsync, p50 / p99 (same directory)",
            format!(
                "{:.3} / {:.3} ms",
                f(&r["disk_fsync_p50_ms"]),
                f(&r["disk_fsync_p99_ms"])
            ),
            "reported",
        ),
        (
            "API vif-param-set p99 minus one fsync p99 (lockd's own work on the path)",
            format!("{:.2} ms", f(&r["api_update_p99_over_fsync_p99_ms"])),
            "≤ 0.3 ms",
        ),
        (
            "API vif-param-set p50 / p99, 8 clients at once (group commit)",
            format!(
                "{:.2} / {:.2} ms, {:.0} commands/s",
                f(&r["api"]["concurrent"]["update_p50_ms"]),
                f(&r["api"]["concurrent"]["update_p99_ms"]),
                f(&r["api"]["concurrent"]["commands_per_s"])
            ),
            "reported",
        ),
        (
            "API vif-create p99, 4096 VIFs (record; netdev not yet there)",
            format!("{:.2} ms", f(&r["api_create_p99_ms"])),
            "≤ 1 ms",
        ),
        (
            "API vif-create p50 / p99 on a live netdev (attaches both programs)",
            format!(
                "{:.1} / {:.1} ms",
                f(&r["api"]["api_create_attach_p50_ms"]),
                f(&r["api"]["api_create_attach_p99_ms"])
            ),
            "reported",
        ),
        (
            "hook re-filter p99 (process start to exit)",
            format!("{:.1} ms", f(&r["hook_p99_ms"])),
            "≤ 10 ms",
        ),
        (
            "hook: 500 VIFs plugged back to back",
            format!("{:.1} s", f(&r["hook_storm_500_s"])),
            "≤ 5 s",
        ),
    ];
    for (a, b, c) in rows {
        let _ = writeln!(s, "| {a} | {b} | {c} |");
    }
    let _ = writeln!(
        s,
        "\n### Throughput through one VIF (64-byte spoofed frames; 1 vCPU: median of 5 alternating runs, and their median absolute deviation)\n\n| path | vCPUs | Mpps | ns/packet | deviation (ns) | sent | dropped (counted) |\n|---|---|---|---|---|---|---|"
    );
    for t in r["throughput"].as_array().into_iter().flatten() {
        if let Some(why) = t["unavailable"].as_str().or(t["invalid"].as_str()) {
            let _ = writeln!(
                s,
                "| {} | {} | unavailable: {why} | | | | |",
                t["name"].as_str().unwrap_or(""),
                t["vcpus"]
            );
            continue;
        }
        let _ = writeln!(
            s,
            "| {}{} | {} | {:.3} | {:.1} | {} | {} | {} |",
            t["name"].as_str().unwrap_or(""),
            t["tool"]
                .as_str()
                .filter(|x| !x.is_empty())
                .map(|x| format!(" ({x})"))
                .unwrap_or_default(),
            t["vcpus"],
            f(&t["pps"]) / 1e6,
            f(&t["ns_per_pkt"]),
            opt(&t["spread_ns"], |x| format!("{x:.1}")).replace("unavailable", "–"),
            t["sent"],
            t["dropped_counted"]
                .as_u64()
                .map_or("n/a".into(), |c| c.to_string())
        );
    }
    let _ = writeln!(
        s,
        "\n### The skb path (1 vCPU; ns/packet, median of 5 alternating runs; each hook against a drop program at that hook)\n\n| hook | frame | empty | lockd | added |\n|---|---|---|---|---|"
    );
    for hook in ["generic_xdp", "tc"] {
        for (len, frame) in [
            ("64", "64 B, linear"),
            ("1500", "1500 B, linear"),
            (
                "4400_nonlinear",
                "4400 B, 128 in the head (netback's shape)",
            ),
        ] {
            let h = &r["skb_hooks"][hook][len];
            if let Some(why) = h["unavailable"].as_str() {
                let _ = writeln!(s, "| {hook} | {frame} | unavailable: {why} | | |");
                continue;
            }
            let _ = writeln!(
                s,
                "| {hook} | {frame} | {:.1} | {:.1} | {:.1} |",
                f(&h["empty_ns"]),
                f(&h["lockd_ns"]),
                f(&h["added_ns"])
            );
        }
    }
    s += &crate::netback::markdown(r);
    let _ = writeln!(
        s,
        "\n### Per-packet cost (BPF_PROG_TEST_RUN, ns, median of 5)\n\n| class | empty | lockd (XDP) | added | TC ingress | with a rate limit | added |\n|---|---|---|---|---|---|---|"
    );
    for c in r["test_run_classes"].as_array().into_iter().flatten() {
        let (e, l, t, tl) = (
            f(&c["empty_ns"]),
            f(&c["lockd_ns"]),
            f(&c["tc_ingress_ns"]),
            f(&c["tc_ingress_ratelimit_ns"]),
        );
        let _ = writeln!(
            s,
            "| {} | {e:.0} | {l:.0} | {:.0} | {t:.0} | {tl:.0} | {:.1} |",
            c["class"].as_str().unwrap_or(""),
            l - e,
            tl - t
        );
    }
    for (key, title) in [
        ("vifs_scaling", "VIFs configured"),
        ("allowed_scaling", "allowed entries on the VIF"),
    ] {
        let _ = writeln!(s, "\n### Scaling: {title}\n\n| n | ns/packet |\n|---|---|");
        for p in r[key].as_array().into_iter().flatten() {
            let _ = writeln!(s, "| {} | {:.1} |", p["n"], f(&p["ns_per_pkt"]));
        }
    }
    let _ = writeln!(
        s,
        "\n### Rate limit (shaper; live frames at full speed, 1000 B, counted where they arrive)\n\n| senders | received B/s | configured B/s | ratio | backlog B | dropped (backlog full) |\n|---|---|---|---|---|---|"
    );
    for p in r["ratelimit"].as_array().into_iter().flatten() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.4} | {} | {} |",
            p["senders"],
            f(&p["achieved_bps"]),
            f(&p["configured_bps"]),
            f(&p["ratio"]),
            p["backlog_bytes"],
            p["dropped"]
        );
    }
    let _ = writeln!(
        s,
        "\n### One TCP flow through the rate limit (iperf3, goodput as frame bytes over the rate)\n\n| peer | ratio |\n|---|---|"
    );
    for (name, key) in [
        ("VM on the same bridge", "lan"),
        ("host 20 ms away", "wan_20ms"),
    ] {
        let t = &r["tcp"][key];
        let v = t["unavailable"].as_str().map_or_else(
            || format!("{:.3}", f(&t["ratio"])),
            |w| format!("unavailable: {w}"),
        );
        let _ = writeln!(s, "| {name} | {v} |");
    }
    s
}

fn bars(title: &str, items: &[(String, f64)], unit: &str) -> String {
    let w = 760.0;
    let row = 26.0;
    let h = 50.0 + row * items.len() as f64;
    let max = items
        .iter()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
        .fold(1e-9, f64::max);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n"
    );
    for (i, (label, v)) in items.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        let len = if v.is_finite() {
            400.0 * v.max(0.0) / max
        } else {
            0.0
        };
        let value = if v.is_finite() {
            format!("{v:.1} {unit}")
        } else {
            "unavailable".into()
        };
        let _ = writeln!(
            s,
            "<text x=\"10\" y=\"{}\">{label}</text><rect x=\"260\" y=\"{y}\" width=\"{len:.1}\" height=\"18\" fill=\"#4a7ab5\"/><text x=\"{:.1}\" y=\"{}\">{value}</text>",
            y + 13.0,
            266.0 + len,
            y + 13.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn line(title: &str, pts: &[(f64, f64)], xlabel: &str) -> String {
    let (w, h, l, b) = (640.0, 320.0, 60.0, 40.0);
    let xmax = pts.iter().map(|p| p.0.max(1.0).log2()).fold(1.0, f64::max);
    let ymax = pts
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.2;
    let px = |x: f64| l + (w - l - 20.0) * x.max(1.0).log2() / xmax;
    let py = |y: f64| h - b - (h - b - 30.0) * y / ymax;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<text x=\"10\" y=\"18\" font-size=\"14\">{title}</text>\n<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"30\" x2=\"{l}\" y2=\"{}\" stroke=\"black\"/>\n<text x=\"{}\" y=\"{}\">{xlabel} (log scale)</text><text x=\"5\" y=\"40\">ns/pkt</text><text x=\"5\" y=\"{}\">0</text><text x=\"5\" y=\"{}\">{:.0}</text>\n",
        h - b,
        w - 20.0,
        h - b,
        h - b,
        w / 2.0 - 60.0,
        h - 8.0,
        h - b,
        py(ymax / 1.2) + 4.0,
        ymax / 1.2
    );
    let path: Vec<String> = pts
        .iter()
        .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
        .collect();
    let _ = writeln!(
        s,
        "<polyline fill=\"none\" stroke=\"#4a7ab5\" stroke-width=\"2\" points=\"{}\"/>",
        path.join(" ")
    );
    for (x, y) in pts {
        let _ = writeln!(
            s,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#4a7ab5\"/><text x=\"{:.1}\" y=\"{:.1}\">{x}</text>",
            px(*x),
            py(*y),
            px(*x) - 8.0,
            h - b + 14.0
        );
    }
    s.push_str("</svg>\n");
    s
}

pub fn svgs(r: &Value, dir: &Path) {
    let tp: Vec<(String, f64)> = r["throughput"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                format!("{} ({} vCPU)", t["name"].as_str().unwrap_or(""), t["vcpus"]),
                f(&t["ns_per_pkt"]),
            )
        })
        .collect();
    let _ = std::fs::write(
        dir.join("throughput.svg"),
        bars("ns per packet through one VIF (lower is better)", &tp, "ns"),
    );
    let added: Vec<(String, f64)> = [
        ("lockd, native XDP", "added_ns_lockd"),
        ("xdp-filter, native XDP", "added_ns_xdp_filter"),
        ("nftables netdev", "added_ns_nft_netdev"),
        ("nftables bridge", "added_ns_nft_bridge"),
        ("ebtables", "added_ns_ebtables"),
        ("ebtables, nf-call 1", "added_ns_ebtables_nf_call"),
        ("lockd, skb path (TC)", "added_ns_lockd_skb"),
    ]
    .iter()
    .map(|(label, key)| (label.to_string(), f(&r[*key])))
    .collect();
    let _ = std::fs::write(
        dir.join("added_ns.svg"),
        bars(
            "ns each policy adds over its tool's own floor at its hook (lower is better)",
            &added,
            "ns",
        ),
    );
    let oh: Vec<(String, f64)> = r["test_run_classes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["class"].as_str().unwrap_or("").to_string(),
                f(&c["lockd_ns"]) - f(&c["empty_ns"]),
            )
        })
        .collect();
    let _ = std::fs::write(
        dir.join("test_run_overhead.svg"),
        bars("test_run ns over the empty program, per class", &oh, "ns"),
    );
    for (key, title, x) in [
        ("vifs_scaling", "ns/pkt vs VIFs configured", "VIFs"),
        (
            "allowed_scaling",
            "ns/pkt vs allowed entries on one VIF",
            "entries",
        ),
    ] {
        let pts: Vec<(f64, f64)> = r[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (f(&p["n"]), f(&p["ns_per_pkt"])))
            .collect();
        let _ = std::fs::write(dir.join(format!("{key}.svg")), line(title, &pts, x));
    }
}
