//! `cargo xtask bench`: lockd side by side with the empty-XDP floor, nftables and ebtables.
//! Sets up its own namespaces (removed on exit), prints progress, writes JSON, a Markdown
//! table and SVG plots.
#![recursion_limit = "256"]

mod api;
mod cost;
mod hook;
mod live;
mod netback;
mod path;
mod peers;
mod pktgen;
mod pool;
mod report;
mod throughput;
mod topo;
mod traffic;

use std::{path::PathBuf, time::Instant};

use lockd_kit::netlab::NetNs;
use serde_json::{Map, Value, json};

use crate::{
    api::daemon_api_and_rss,
    cost::{per_packet, scaling},
    live::{ratelimit, tcp_ratios, updates},
    netback::skb_hooks,
    path::Path,
    throughput::{Sample, measure, median_sample, num, sample_json},
    traffic::Helpers,
};
/// lockd's benchmark: lockd beside nftables, ebtables and xdp-filter (`cargo xtask bench`).
#[derive(clap::Parser)]
#[command(name = "lockd-bench")]
struct Opts {
    /// Fewer repetitions (a first look, not a result).
    #[arg(long)]
    quick: bool,
    /// Only the daemon API section.
    #[arg(long = "api")]
    api_only: bool,
    /// Only the pktgen section.
    #[arg(long = "pktgen")]
    pktgen_only: bool,
    /// Whether this kernel has pktgen: exit 0 if so, 1 if not.
    #[arg(long)]
    pktgen_check: bool,
    /// Only the toolstack hook section.
    #[arg(long = "hook")]
    hook_only: bool,
    /// Only the skb-path section (both hooks, linear and non-linear skbs).
    #[arg(long = "skb")]
    skb_only: bool,
    /// Only the netback sections (lockd's TC program by skb shape; the peers on netback's shape).
    #[arg(long = "netback")]
    netback_only: bool,
    /// Only the throughput section.
    #[arg(long = "throughput")]
    throughput_only: bool,
    /// Only the etcd section (policy shared by a pool of hosts).
    #[arg(long = "etcd")]
    etcd_only: bool,
    /// Only the update and rate-limit sections.
    #[arg(long = "live")]
    live_only: bool,
    /// Measure nothing: write bench.md and the plots again from this run's JSON (a report
    /// whose layout changed after the run).
    #[arg(long, value_name = "JSON")]
    render: Option<PathBuf>,
    /// Where the figures go (default: OUT_DIR/bench.json).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Where the plots and the JSON go.
    #[arg(long, default_value = "target/bench")]
    out_dir: PathBuf,
}

fn parse_opts() -> Opts {
    let mut opts = <Opts as clap::Parser>::parse();
    if opts.pktgen_check {
        std::process::exit(if pktgen::check() { 0 } else { 1 });
    }
    opts.json.get_or_insert_with(|| opts.out_dir.join("bench.json"));
    opts
}

impl Opts {
    /// The JSON output's path.
    fn json(&self) -> &PathBuf {
        self.json.as_ref().expect("set by parse_opts")
    }
}

fn step(what: &str) {
    eprintln!("\n== {what}");
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpu": cpu,
        "vcpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "kernel": kernel.trim(),
        "pktgen": traffic::has_pktgen(),
    })
}

fn main() {
    let opts = parse_opts();
    let start = Instant::now();
    std::fs::create_dir_all(&opts.out_dir).expect("out dir");
    if let Some(path) = &opts.render {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let result: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not a bench run's JSON: {e}", path.display()));
        std::fs::write(opts.out_dir.join("bench.md"), report::markdown(&result)).expect("write md");
        report::svgs(&result, &opts.out_dir);
        eprintln!("wrote {}/bench.md and SVG plots from {}", opts.out_dir.display(), path.display());
        return;
    }
    if opts.api_only {
        let api = daemon_api_and_rss();
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(&json!({
                "machine": machine(),
                "api_create_p99_ms": api["api_create_p99_ms"],
                "api_update_p99_ms": api["api_update_p99_ms"],
                "disk_fsync_p50_ms": api["disk_fsync_p50_ms"],
                "disk_fsync_p99_ms": api["disk_fsync_p99_ms"],
                "api_update_p99_over_fsync_p99_ms": api["api_update_p99_over_fsync_p99_ms"],
                "api": api,
            }))
            .expect("json"),
        )
        .expect("write json");
        return;
    }
    if opts.etcd_only {
        let pool = pool::etcd_pool(opts.quick);
        let mut result = json!({"machine": machine()});
        if let (Some(r), Some(p)) = (result.as_object_mut(), pool.as_object()) {
            r.extend(p.clone());
        }
        std::fs::write(opts.json(), serde_json::to_string_pretty(&result).expect("json"))
            .expect("write json");
        return;
    }
    if opts.hook_only {
        let hk = hook::hook_cost();
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(&json!({"machine": machine(), "hook": hk})).expect("json"),
        )
        .expect("write json");
        return;
    }
    if opts.pktgen_only {
        step("pktgen into one VIF (64-byte spoofed frames)");
        let pg = pktgen::measure(10_000_000);
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(&json!({"machine": machine(), "pktgen": pg["pktgen"]}))
                .expect("json"),
        )
        .expect("write json");
        return;
    }
    let mut helpers = Helpers::load();
    let per_thread = if opts.quick { 2_000_000 } else { 10_000_000 };
    if opts.netback_only {
        let mut result = json!({"machine": machine()});
        if let Some(r) = result.as_object_mut() {
            r.extend(netback_figures(&opts, &mut helpers));
        }
        std::fs::write(opts.json(), serde_json::to_string_pretty(&result).expect("json"))
            .expect("write json");
        return;
    }
    if opts.skb_only {
        step("the skb path: generic XDP and TC ingress, each over an empty program at its hook");
        let (hooks, _) = skb_hooks(per_thread, &mut helpers);
        let mut result = json!({"machine": machine(), "skb_hooks": hooks});
        if let Some(r) = result.as_object_mut() {
            r.extend(netback_figures(&opts, &mut helpers));
        }
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(&result).expect("json"),
        )
        .expect("write json");
        return;
    }

    if opts.throughput_only {
        let samples = throughput(per_thread, &mut helpers);
        let result = json!({"machine": machine(), "quick": opts.quick});
        let mut result = result.as_object().cloned().unwrap_or_default();
        let (figures, why) = peer_figures(&samples);
        result.extend(figures);
        result.insert("unavailable".into(), Value::Object(why));
        result.insert(
            "throughput".into(),
            samples.iter().map(sample_json).collect::<Vec<_>>().into(),
        );
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(&result).expect("json"),
        )
        .expect("write json");
        return;
    }
    if opts.live_only {
        let upd = updates(&opts, &mut helpers);
        let rl = ratelimit(&opts, &mut helpers);
        std::fs::write(
            opts.json(),
            serde_json::to_string_pretty(
                &json!({"machine": machine(), "updates": upd, "ratelimit": rl}),
            )
            .expect("json"),
        )
        .expect("write json");
        return;
    }

    // A device for test_run's ingress ifindex.
    let host = NetNs::new("bt").expect("ns");
    let vm = NetNs::new("bu").expect("ns");
    lockd_kit::netlab::veth(&host, "v0", &vm, "e0", "02:00:00:00:00:0b", None).expect("veth");
    let ifx = host.ifindex("v0").expect("ifindex");
    let (classes, overhead, limiter_added, monitor) = per_packet(&opts, (&host, ifx), &helpers);
    let (vifs_scaling, allowed_scaling) = scaling(&opts, (&host, ifx));
    drop((host, vm));

    let samples = throughput(per_thread, &mut helpers);
    step("the skb path: generic XDP and TC ingress, each over an empty program at its hook");
    let (hooks, hook_samples) = skb_hooks(per_thread, &mut helpers);
    let netback = netback_figures(&opts, &mut helpers);
    let upd = updates(&opts, &mut helpers);
    let rl = ratelimit(&opts, &mut helpers);
    let tcp = tcp_ratios(&opts);
    let api = daemon_api_and_rss();
    let hk = hook::hook_cost();
    let pool = pool::etcd_pool(opts.quick);
    step("pktgen into one VIF (where the kernel has it)");
    let pg = pktgen::measure(if opts.quick { 2_000_000 } else { 10_000_000 });

    let one = |p: Path| {
        samples
            .iter()
            .find(|s| s.path == p && s.vcpus == 1)
            .map(|s| s.ns_per_pkt)
            .unwrap_or(f64::NAN)
    };
    let floor = one(Path::Floor);
    let lockd = one(Path::LockdNative);
    let nft = one(Path::NftNetdev);
    let eb = one(Path::Ebtables { nf_call: false });
    let mut unavailable: Map<String, Value> = samples
        .iter()
        .chain(&hook_samples)
        .filter(|s| s.vcpus == 1)
        .filter_map(|s| {
            let why = s.unavailable.as_ref().or(s.invalid.as_ref())?;
            let key = if s.frame_len == 64 {
                s.path.key().to_string()
            } else {
                format!("{}_{}", s.path.key(), s.frame_len)
            };
            Some((key, json!(why)))
        })
        .collect();
    for (key, v) in [
        ("tcp_lan", &tcp["lan"]),
        ("tcp_wan", &tcp["wan_20ms"]),
        ("updates", &upd),
    ] {
        if let Some(why) = v["unavailable"].as_str().or(v["invalid"].as_str()) {
            unavailable.insert(key.into(), json!(why));
        }
    }
    // By frame class, the ns lockd's XDP program adds over the empty one under test_run.
    let testrun_added = overhead.clone();
    // The skb path: the hook `--xdp-mode auto` picks there (TC ingress).
    let skb_added = hooks["tc"]["64"]["added_ns"].clone();
    let two = samples
        .iter()
        .find(|s| s.path == Path::LockdNative && s.vcpus == 2)
        .map(|s| s.pps)
        .unwrap_or(f64::NAN);
    let one_pps = samples
        .iter()
        .find(|s| s.path == Path::LockdNative && s.vcpus == 1)
        .map(|s| s.pps)
        .unwrap_or(f64::NAN);
    let rl_acc = rl
        .as_array()
        .and_then(|a| a.first())
        .and_then(|r| r["ratio"].as_f64())
        .unwrap_or(f64::NAN);
    let mut result = json!({
        "machine": machine(),
        "quick": opts.quick,
        "seconds": start.elapsed().as_secs_f64(),
        "ratio_lockd_vs_floor": num(lockd / floor),
        "speedup_vs_nft_netdev": num(nft / lockd),
        "added_ns_lockd_skb": skb_added,
        "skb_hooks": hooks,
        "testrun_added_ns": testrun_added,
        "limiter_added_ns": num(limiter_added),
        "tcp_lan_ratio": tcp["lan"]["ratio"],
        "tcp_wan_ratio": tcp["wan_20ms"]["ratio"],
        "tcp": tcp,
        "unavailable": unavailable,
        "monitor_drop_ns": monitor,
        "speedup_vs_ebtables": num(eb / lockd),
        "lockd_2vcpu_vs_1vcpu": two / one_pps,
        "test_run_overhead_ns": overhead,
        "test_run_classes": classes,
        "update_p50_us": upd["p50_us"],
        "update_p99_us": upd["p99_us"],
        "update_leaked_frames": upd["leaked"],
        "update_wrongly_dropped_frames": upd["wrongly_dropped"],
        "updates": upd,
        "ratelimit_accuracy": rl_acc,
        "ratelimit": rl,
        "rss_mb_4096_vifs": api["rss_mb"],
        "api_create_p99_ms": api["api_create_p99_ms"],
        "api_update_p99_ms": api["api_update_p99_ms"],
        "disk_fsync_p50_ms": api["disk_fsync_p50_ms"],
        "disk_fsync_p99_ms": api["disk_fsync_p99_ms"],
        "api_update_p99_over_fsync_p99_ms": api["api_update_p99_over_fsync_p99_ms"],
        "api": api,
        "pktgen": pg["pktgen"],
        "hook_p99_ms": hk["hook_p99_ms"],
        "hook_storm_500_s": hk["hook_storm_500_s"],
        "hook": hk,
        "etcd_converge_p99_ms": pool["etcd_converge_p99_ms"],
        "etcd_update_p99_ms": pool["etcd_update_p99_ms"],
        "etcd_converge_p99_ms_4096": pool["etcd_converge_p99_ms_4096"],
        "etcd_start_4096_s": pool["etcd_start_4096_s"],
        "etcd": pool,
        "vifs_scaling": vifs_scaling,
        "allowed_scaling": allowed_scaling,
        "throughput": samples.iter().map(sample_json).collect::<Vec<_>>(),
    });
    let (figures, why) = peer_figures(&samples);
    if let Some(r) = result.as_object_mut() {
        r.extend(figures);
        let mut netback = netback;
        let nb_why = netback.remove("unavailable");
        r.extend(netback);
        if let Some(u) = r.get_mut("unavailable").and_then(Value::as_object_mut) {
            u.extend(why);
            if let Some(Value::Object(w)) = nb_why {
                u.extend(w);
            }
        }
    }
    std::fs::write(
        opts.json(),
        serde_json::to_string_pretty(&result).expect("json"),
    )
    .expect("write json");
    let md = report::markdown(&result);
    std::fs::write(opts.out_dir.join("bench.md"), &md).expect("write md");
    report::svgs(&result, &opts.out_dir);
    eprintln!(
        "\nwrote {}, {}/bench.md and SVG plots in {} ({:.0} s)",
        opts.json().display(),
        opts.out_dir.display(),
        opts.out_dir.display(),
        start.elapsed().as_secs_f64()
    );
    println!("{md}");
}

/// The netback sections: lockd's TC program cost by skb shape (the kernel's run statistics),
/// then the peers on netback's shape; the keys of both, and `tc_attach` (how lockd attaches at
/// TC by default).
fn netback_figures(opts: &Opts, helpers: &mut Helpers) -> Map<String, Value> {
    let count = netback::frames_per_run(opts.quick);
    step("lockd's TC ingress program by skb shape (kernel run statistics, median of 5 alternating runs)");
    let cost = netback::program_cost(count, helpers);
    step("netback's shape (4400 B, 128-byte head): lockd at TC, nftables netdev, ebtables, each over its own floor");
    let mut out = netback::peers(count, helpers, &cost["added_ns_lockd_netback"]);
    out.insert("added_ns_lockd_netback".into(), cost["added_ns_lockd_netback"].clone());
    out.insert("added_ns_lockd_netback_1500".into(), cost["added_ns_lockd_netback_1500"].clone());
    out.insert(
        "tc_attach".into(),
        json!(lockd::dataplane::TcMode::default().word()),
    );
    out.insert("netback_program_cost".into(), cost);
    out
}

/// Runs of each path at 1 vCPU (alternating, the median kept): a peer and its own floor are
/// compared by a difference smaller than one run's noise.
const THROUGHPUT_REPEATS: usize = 5;

/// Section 2: every path through one VIF at 1 and 2 vCPUs; at 1 vCPU each path several times,
/// alternating, and the median run kept.
fn throughput(per_thread: u32, helpers: &mut Helpers) -> Vec<Sample> {
    step("throughput through one VIF (64-byte spoofed frames, built-in live-frames generator)");
    let mut samples = Vec::new();
    for vcpus in [1usize, 2] {
        let repeats = if vcpus == 1 { THROUGHPUT_REPEATS } else { 1 };
        let mut runs: Vec<Vec<Sample>> = Path::ALL.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeats {
            for (i, path) in Path::ALL.into_iter().enumerate() {
                runs[i].push(measure(path, vcpus, per_thread, helpers));
            }
        }
        for run in runs {
            let ns: Vec<f64> = run.iter().map(|s| s.ns_per_pkt).collect();
            let mut s = median_sample(run);
            // The runs' median absolute deviation: one slow run (the sender descheduled) does
            // not make the path's noise.
            let mut dev: Vec<f64> = ns.iter().map(|x| (x - s.ns_per_pkt).abs()).collect();
            dev.sort_by(f64::total_cmp);
            let mad = dev.get(dev.len() / 2).copied().unwrap_or(f64::NAN);
            if repeats > 1 && mad.is_finite() {
                s.spread_ns = Some(mad);
            }
            let runs: Vec<String> = ns.iter().map(|x| format!("{x:.0}")).collect();
            let name = s.path.name();
            if let Some(why) = s.unavailable.as_ref().or(s.invalid.as_ref()) {
                eprintln!("  {name:48} {vcpus} vCPU: unavailable: {why}");
            } else {
                eprintln!(
                    "  {name:48} {vcpus} vCPU: {:10.0} pps {:7.1} ns/pkt  sent {} dropped {}{}",
                    s.pps,
                    s.ns_per_pkt,
                    s.sent,
                    s.counted.map_or("n/a".into(), |c| c.to_string()),
                    if repeats > 1 {
                        format!(" (median of {})", runs.join(" "))
                    } else {
                        String::new()
                    }
                );
            }
            samples.push(s);
        }
    }
    samples
}

/// The 1-vCPU figures by path: each path's whole ns per packet (what a user pays) and, for
/// lockd, the ns it adds over the empty XDP drop; for each peer, the ns its policy adds over
/// the same tool at the same hook dropping with one rule (its own floor), that over lockd's
/// added ns, and the noise of the difference (the sum of the two paths' median absolute
/// deviations over their runs). A figure that
/// could not be measured is null, with the reason in the second map (for `unavailable`): a
/// ratio whose divisor or dividend is within its noise says so rather than dividing noise.
fn peer_figures(samples: &[Sample]) -> (Map<String, Value>, Map<String, Value>) {
    let find = |p: Path| samples.iter().find(|s| s.path == p && s.vcpus == 1);
    let one = |p: Path| find(p).map_or(f64::NAN, |s| s.ns_per_pkt);
    let spread = |p: Path| find(p).and_then(|s| s.spread_ns).unwrap_or(0.0);
    let floor = one(Path::Floor);
    let lockd = one(Path::LockdNative);
    let lockd_added = lockd - floor;
    let lockd_noise = spread(Path::Floor) + spread(Path::LockdNative);
    let mut out = Map::new();
    let mut why = Map::new();
    out.insert("floor_ns_per_pkt".into(), num(floor));
    out.insert("lockd_native_ns_per_pkt".into(), num(lockd));
    out.insert("added_ns_lockd".into(), num(lockd_added));
    out.insert("noise_ns_lockd".into(), num(lockd_noise));
    for path in Path::ALL {
        let Some(own) = path.own_floor() else {
            continue;
        };
        let key = path.key();
        let (whole, base) = (one(path), one(own));
        let added = whole - base;
        let noise = spread(path) + spread(own);
        out.insert(format!("{key}_ns_per_pkt"), num(whole));
        out.insert(format!("{key}_floor_ns_per_pkt"), num(base));
        out.insert(format!("added_ns_{key}"), num(added));
        out.insert(format!("noise_ns_{key}"), num(noise));
        let ratio_key = format!("added_ratio_{key}");
        let reason = if !added.is_finite() || !lockd_added.is_finite() {
            Some("a path it divides could not be measured (see its row)".to_string())
        } else if lockd_added <= lockd_noise {
            Some(format!(
                "lockd's added ns ({lockd_added:.1}) is within this run's noise ({lockd_noise:.1} ns: the floor's and lockd's median absolute deviations)"
            ))
        } else if added <= noise {
            Some(format!(
                "{}'s policy adds nothing measurable over its one-rule floor ({added:.1} ns; noise {noise:.1} ns)",
                path.name()
            ))
        } else {
            None
        };
        match reason {
            Some(r) => {
                out.insert(ratio_key.clone(), Value::Null);
                why.insert(ratio_key, json!(r));
            }
            None => {
                out.insert(ratio_key, num(added / lockd_added));
            }
        }
    }
    (out, why)
}
