//! The skb path, where a Xen dom0 runs lockd (TC ingress: xen-netback has no native XDP), on
//! skbs of the shapes netback builds: 128 bytes in the head and the rest in page fragments.
//!
//! - [`skb_hooks`]: end-to-end ns/packet of each skb hook (generic XDP, TC ingress) over an
//!   empty drop program at the same hook, by frame size;
//! - [`program_cost`]: the kernel's own per-program run time (`run_time_ns / run_cnt` with
//!   `BPF_ENABLE_STATS`) of lockd's TC ingress program and of the empty TC program, for every
//!   skb shape; the sender's own cost and noise (larger than what lockd adds) are not in it;
//! - [`peers`]: nftables netdev ingress and ebtables on netback's shape, each against its own
//!   one-rule drop, beside lockd at TC through a `cls_bpf` filter and through a TCX link.

use serde_json::{Map, Value, json};

use crate::{
    path::Path,
    throughput::{Sample, Sender, measure_with, median_sample, num},
    traffic::Helpers,
};

/// Runs of each path, alternating.
const REPEATS: usize = 5;

/// One figure from alternating runs: the median, the runs' median absolute deviation from it
/// (the spread), and the runs.
struct Figure {
    median: f64,
    spread: f64,
    runs: Vec<f64>,
}

fn figure(runs: Vec<f64>) -> Figure {
    let mut v: Vec<f64> = runs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    if v.len() < runs.len() || v.is_empty() {
        return Figure {
            median: f64::NAN,
            spread: f64::NAN,
            runs,
        };
    }
    let median = v[v.len() / 2];
    let mut dev: Vec<f64> = v.iter().map(|x| (x - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    Figure {
        median,
        spread: dev[dev.len() / 2],
        runs,
    }
}

impl Figure {
    /// Why the figure is no result: a run missing, or a spread larger than the figure.
    fn unusable(&self) -> Option<String> {
        if !self.median.is_finite() {
            Some("a run could not be measured".into())
        } else if self.spread > self.median.abs() {
            Some(format!(
                "its spread ({:.1} ns) is larger than the figure ({:.1} ns): no result",
                self.spread, self.median
            ))
        } else {
            None
        }
    }

    fn json(&self) -> Value {
        json!({
            "ns": num(self.median),
            "spread_ns": num(self.spread),
            "runs": self.runs.iter().map(|x| num(*x)).collect::<Vec<_>>(),
            "unavailable": self.unusable(),
        })
    }

    /// The figure, or null where it is no result.
    fn result(&self) -> Value {
        if self.unusable().is_some() {
            Value::Null
        } else {
            num(self.median)
        }
    }
}

/// The skb shapes: (key, frame bytes, bytes in the skb's head). A head as long as the frame is
/// a linear skb (veth, loopback, most local senders); 128 bytes is what netback copies into the
/// head of every guest frame, leaving the rest in grant-mapped page fragments.
pub const SHAPES: [(&str, usize, u16); 7] = [
    ("64", 64, 64),
    ("1500", 1500, 1500),
    ("1500_head128", 1500, 128),
    ("4400", 4400, 4400),
    ("4400_head128", 4400, 128),
    ("9000", 9000, 9000),
    ("9000_head128", 9000, 128),
];

/// Frames sent per run.
pub fn frames_per_run(quick: bool) -> u64 {
    if quick { 30_000 } else { 150_000 }
}

/// What lockd's TC ingress program costs per frame on every skb shape, read from the kernel's
/// run statistics: in each run (a fresh topology), the empty TC program in a `cls_bpf` filter
/// before lockd's, both running on every frame (the spoofed one, which lockd drops at the IPv4
/// source check); lockd's added ns = its mean run time minus the empty program's over the same
/// frames (the statistics' own clock reads, and the cache state the stack leaves, are in both).
/// [`REPEATS`] runs; the median and the runs' median absolute deviation (the spread).
pub fn program_cost(count: u64, helpers: &mut Helpers) -> Value {
    let stats = match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => fd,
        Err(e) => {
            let why = format!("BPF_ENABLE_STATS (Linux 5.8+): {e}");
            eprintln!("  unavailable: {why}");
            return json!({"unavailable": why});
        }
    };
    let mut shapes = Map::new();
    for (key, len, head) in SHAPES {
        let sender = Sender::Split { head, count };
        let (mut floor, mut lockd, mut added) = (vec![], vec![], vec![]);
        let mut broken = None;
        for _ in 0..REPEATS {
            let s = measure_with(Path::LockdTcBeside, 1, sender, helpers, len);
            if let Some(why) = s.unavailable.as_ref().or(s.invalid.as_ref()) {
                broken.get_or_insert_with(|| why.clone());
            }
            let (fp, lp) = (s.beside_ns.unwrap_or(f64::NAN), s.prog_ns.unwrap_or(f64::NAN));
            floor.push(fp);
            lockd.push(lp);
            added.push(lp - fp);
        }
        let (floor, lockd, added) = (figure(floor), figure(lockd), figure(added));
        eprintln!(
            "  TC ingress {key:>13}: empty {:6.1} ns/run, lockd {:6.1} ns/run: +{:5.1} ± {:4.1}{}",
            floor.median,
            lockd.median,
            added.median,
            added.spread,
            broken
                .as_ref()
                .or(added.unusable().as_ref())
                .map(|w| format!("  [{w}]"))
                .unwrap_or_default()
        );
        shapes.insert(
            key.into(),
            json!({
                "frame_len": len, "head": head,
                "empty_prog_ns": floor.json(), "lockd_prog_ns": lockd.json(),
                "added_ns": added.json(),
                "added_ns_result": if broken.is_some() { Value::Null } else { added.result() },
                "unavailable": broken,
            }),
        );
    }
    drop(stats);
    let pick = |k: &str| shapes.get(k).map_or(Value::Null, |s| s["added_ns_result"].clone());
    json!({
        "added_ns_lockd_netback": pick("4400_head128"),
        "added_ns_lockd_netback_1500": pick("1500_head128"),
        "shapes": shapes,
    })
}

/// The paths of the peer comparison on netback's shape, each tool after its own floor.
const PEER_PATHS: [Path; 8] = [
    Path::FloorTc,
    Path::LockdTc,
    Path::FloorTcx,
    Path::LockdTcx,
    Path::NftNetdevFloor,
    Path::NftNetdev,
    Path::EbtablesFloor { nf_call: false },
    Path::Ebtables { nf_call: false },
];

/// Every path of [`PEER_PATHS`] on 4400-byte frames with 128 bytes in the head, end to end,
/// alternating, [`REPEATS`] rounds: what each tool's policy adds over its own one-rule drop,
/// and the ratio of that to what lockd's program adds (`lockd_added`, from the kernel's run
/// statistics: end to end it is inside the sender's noise).
pub fn peers(count: u64, helpers: &mut Helpers, lockd_added: &Value) -> Map<String, Value> {
    let sender = Sender::Split { head: 128, count };
    let mut runs: Vec<Vec<Sample>> = PEER_PATHS.iter().map(|_| Vec::new()).collect();
    for _ in 0..REPEATS {
        for (i, path) in PEER_PATHS.into_iter().enumerate() {
            runs[i].push(measure_with(path, 1, sender, helpers, 4400));
        }
    }
    let mut by_path = Map::new();
    let mut figs = Vec::new();
    for (path, r) in PEER_PATHS.into_iter().zip(runs) {
        let why = r
            .iter()
            .find_map(|s| s.unavailable.clone().or_else(|| s.invalid.clone()));
        let f = figure(r.iter().map(|s| s.ns_per_pkt).collect());
        eprintln!(
            "  {:48} {:8.1} ns/pkt ± {:5.1}{}",
            path.name(),
            f.median,
            f.spread,
            why.as_ref().map(|w| format!("  [{w}]")).unwrap_or_default()
        );
        by_path.insert(path.key().into(), json!({"ns_per_pkt": f.json(), "unavailable": why}));
        figs.push((path, f, why));
    }
    let get = |p: Path| figs.iter().find(|(q, ..)| *q == p).expect("measured");
    let mut out = Map::new();
    let mut why = Map::new();
    let lockd = lockd_added.as_f64();
    for (key, tool, floor) in [
        ("nft_netdev", Path::NftNetdev, Path::NftNetdevFloor),
        ("ebtables", Path::Ebtables { nf_call: false }, Path::EbtablesFloor { nf_call: false }),
        ("lockd_tc_end_to_end", Path::LockdTc, Path::FloorTc),
        ("lockd_tcx_end_to_end", Path::LockdTcx, Path::FloorTcx),
    ] {
        let ((_, t, tw), (_, f, fw)) = (get(tool), get(floor));
        let added = t.median - f.median;
        let noise = t.spread + f.spread;
        let reason = tw.clone().or_else(|| fw.clone()).or_else(|| {
            (added.is_nan() || added <= noise).then(|| {
                format!("{added:.1} ns added is within the two paths' spread ({noise:.1} ns)")
            })
        });
        let k = format!("added_ns_{key}_netback");
        out.insert(format!("noise_ns_{key}_netback"), num(noise));
        match &reason {
            Some(r) => {
                out.insert(k.clone(), Value::Null);
                why.insert(k, json!(r));
            }
            None => {
                out.insert(k, num(added));
            }
        }
        if key.starts_with("lockd") {
            continue;
        }
        let rk = format!("added_ratio_{key}_netback");
        match (reason, lockd) {
            (None, Some(l)) if l > 0.0 => {
                out.insert(rk, num(added / l));
            }
            (r, _) => {
                out.insert(rk.clone(), Value::Null);
                why.insert(
                    rk,
                    json!(r.unwrap_or_else(|| "added_ns_lockd_netback is no result".into())),
                );
            }
        }
    }
    // What a TCX link saves per frame over a cls_bpf filter, on either program.
    for (key, clsact, tcx) in [
        ("floor", Path::FloorTc, Path::FloorTcx),
        ("lockd", Path::LockdTc, Path::LockdTcx),
    ] {
        let ((_, c, _), (_, t, _)) = (get(clsact), get(tcx));
        out.insert(format!("tcx_saves_ns_{key}_netback"), num(c.median - t.median));
    }
    out.insert("peers_netback".into(), Value::Object(by_path));
    out.insert("unavailable".into(), Value::Object(why));
    out
}

/// The skb path's two hooks, each against a drop program at the same hook, with 64- and
/// 1500-byte frames (1 vCPU): raw ns/packet by hook and size.
pub fn skb_hooks(per_thread: u32, helpers: &mut Helpers) -> (Value, Vec<Sample>) {
    let mut out = serde_json::Map::new();
    let mut samples = Vec::new();
    for (hook, floor, lockd) in [
        ("generic_xdp", Path::FloorGeneric, Path::LockdGeneric),
        ("tc", Path::FloorTc, Path::LockdTc),
    ] {
        let mut by_len = serde_json::Map::new();
        // Linear skbs of 64 and 1500 bytes from the generator; and netback's shape, a frame
        // with 128 bytes in the head and the rest in page fragments.
        let split = Sender::Split {
            head: 128,
            count: u64::from(per_thread / 8),
        };
        for (key, len, sender) in [
            ("64", 64usize, Sender::Live(per_thread / 2)),
            ("1500", 1500, Sender::Live(per_thread / 2)),
            ("4400_nonlinear", 4400, split),
        ] {
            // Floor and lockd alternately, several times; the median of each (a run's noise,
            // from the sender above all, is as large as what lockd adds).
            let mut fs = Vec::new();
            let mut ls = Vec::new();
            for _ in 0..REPEATS {
                fs.push(measure_with(floor, 1, sender, helpers, len));
                ls.push(measure_with(lockd, 1, sender, helpers, len));
            }
            let f = median_sample(fs);
            let l = median_sample(ls);
            let why = |s: &Sample| s.unavailable.clone().or_else(|| s.invalid.clone());
            eprintln!(
                "  {hook:12} {key:>15} B: empty {:7.1} ns/pkt, lockd {:7.1} ns/pkt (+{:.1}){}",
                f.ns_per_pkt,
                l.ns_per_pkt,
                l.ns_per_pkt - f.ns_per_pkt,
                why(&f)
                    .or_else(|| why(&l))
                    .map(|w| format!("  [{w}]"))
                    .unwrap_or_default()
            );
            by_len.insert(
                key.to_string(),
                json!({"empty_ns": num(f.ns_per_pkt), "lockd_ns": num(l.ns_per_pkt),
                       "added_ns": num(l.ns_per_pkt - f.ns_per_pkt),
                       "unavailable": why(&f).or_else(|| why(&l))}),
            );
            samples.push(f);
            samples.push(l);
        }
        out.insert(hook.into(), Value::Object(by_len));
    }
    (Value::Object(out), samples)
}

/// The netback sections of the Markdown report: lockd's program by skb shape (run
/// statistics), and the peers end to end on netback's shape.
pub(crate) fn markdown(r: &Value) -> String {
    use std::fmt::Write as _;
    let n = |v: &Value| v.as_f64().map_or_else(|| "unavailable".to_string(), |x| format!("{x:.1}"));
    let mut s = String::from(
        "\n### lockd's TC ingress program by skb shape (the kernel's run statistics, `run_time_ns / run_cnt`; median of 5 alternating runs, ± their median absolute deviation)\n\n| frame | in the skb's head | empty program, ns/run | lockd, ns/run | lockd adds |\n|---|---|---|---|---|\n",
    );
    let mut shapes: Vec<&Value> = r["netback_program_cost"]["shapes"].as_object().into_iter().flatten().map(|(_, v)| v).collect();
    shapes.sort_by_key(|v| (v["frame_len"].as_u64(), std::cmp::Reverse(v["head"].as_u64())));
    for shape in shapes {
        let added = match shape["added_ns_result"].as_f64() {
            Some(a) => format!("{a:.1} ± {:.1}", shape["added_ns"]["spread_ns"].as_f64().unwrap_or(f64::NAN)),
            None => format!(
                "unavailable: {}",
                shape["unavailable"].as_str().or(shape["added_ns"]["unavailable"].as_str()).unwrap_or("spread larger than the figure")
            ),
        };
        let _ = writeln!(
            s,
            "| {} B | {} B | {} | {} | {added} |",
            shape["frame_len"],
            shape["head"],
            n(&shape["empty_prog_ns"]["ns"]),
            n(&shape["lockd_prog_ns"]["ns"]),
        );
    }
    let _ = writeln!(
        s,
        "\n### netback's shape end to end (4400 B, 128 B in the head, sent from the VM by a TX ring; 1 vCPU; median of 5 alternating runs)\n\n| path | ns/packet | ± | the policy adds over the tool's own floor |\n|---|---|---|---|"
    );
    let p = &r["peers_netback"];
    for (key, name, floor, added) in [
        ("floor_tc", "empty TC program (cls_bpf filter)", "", ""),
        ("lockd_tc", "lockd, TC ingress (cls_bpf filter, the default)", "floor_tc", "added_ns_lockd_tc_end_to_end_netback"),
        ("floor_tcx", "empty TC program (TCX link)", "", ""),
        ("lockd_tcx", "lockd, TC ingress (TCX link)", "floor_tcx", "added_ns_lockd_tcx_end_to_end_netback"),
        ("nft_netdev_floor", "nftables netdev ingress, one-rule drop", "", ""),
        ("nft_netdev", "nftables netdev ingress", "nft_netdev_floor", "added_ns_nft_netdev_netback"),
        ("ebtables_floor", "ebtables, one-rule drop", "", ""),
        ("ebtables", "ebtables", "ebtables_floor", "added_ns_ebtables_netback"),
    ] {
        let row = &p[key]["ns_per_pkt"];
        let add = if floor.is_empty() {
            "(floor)".to_string()
        } else {
            match r[added].as_f64() {
                Some(a) => format!("{a:.1}"),
                None => format!("unavailable: {}", r["unavailable"][added].as_str().unwrap_or("not measured")),
            }
        };
        let _ = writeln!(s, "| {name} | {} | {} | {add} |", n(&row["ns"]), n(&row["spread_ns"]));
    }
    s
}
