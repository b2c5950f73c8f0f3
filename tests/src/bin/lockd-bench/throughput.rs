//! Throughput through one VIF, each path in a fresh topology: the same spoofed 64-byte frame is
//! generated in the VM namespace and must be dropped by the path under test.

use std::{net::Ipv4Addr, time::Duration};

use aya::programs::XdpMode;
use lockd::dataplane::{Dataplane, TcMode, XdpModeRequest};
use lockd_common::{
    Direction, Reason,
    policy::{EffectiveMode, VifPolicy, parse_ipv4_list, parse_ipv6_list},
};
use lockd_kit::frames;
use serde_json::{Value, json};

use crate::{
    path::Path,
    peers::{self, Rules},
    topo::{GUEST, Topo, topo, wait_ready},
    traffic::{Helpers, send},
};

/// A 64-byte frame from the guest MAC with a foreign source IP: every path drops it.
pub fn spoofed_frame() -> Vec<u8> {
    let mut f = frames::udp4(
        GUEST,
        [0x02, 0, 0, 0, 0, 0x0a],
        Ipv4Addr::new(10, 0, 0, 99),
        Ipv4Addr::new(10, 0, 0, 1),
        1234,
        9,
        &[0; 18],
    );
    f.truncate(64);
    f
}

/// The spoofed frame at `len` bytes (padding after the datagram, which Ethernet allows).
pub fn spoofed_frame_of(len: usize) -> Vec<u8> {
    let mut f = spoofed_frame();
    f.resize(len, 0);
    f
}

pub fn bench_policy() -> VifPolicy {
    VifPolicy {
        mode: EffectiveMode::Locked,
        mac: GUEST,
        ipv4: parse_ipv4_list("10.0.0.2").expect("v4"),
        ipv6: parse_ipv6_list("2001:db8::2").expect("v6"),
        rate: None,
    }
}

/// libxdp's working directory on bpffs.
const XDP_DIR: &str = "/sys/fs/bpf/xdp";

/// Whether the bench mounted the bpffs at /sys/fs/bpf (for xdp-filter), to unmount it after.
static MOUNTED_BPFFS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether /sys/fs/bpf is a bpffs mount point now.
fn bpffs_at_sys_fs_bpf() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(4) == Some(&"/sys/fs/bpf") && l.contains(" - bpf ")
        })
}

/// What a path set up, kept alive for the measurement and asked for its drop count.
enum Setup {
    Lockd(Box<Dataplane>),
    Helper,
    Nft(&'static str),
    Ebtables(String),
    /// xdp-filter loaded on the VIF of the namespace named here.
    XdpFilter(String),
    /// A counting kit floor, with its count when attached.
    Counted(u64),
    /// The same through a TCX link, detached when dropped.
    CountedTcx {
        at: u64,
        _link: aya::programs::tc::SchedClassifierLink,
    },
    /// The path cannot run on this machine, and why.
    Unavailable(String),
}

fn setup(path: Path, t: &Topo, helpers: &mut Helpers) -> Setup {
    let ifx = t.host_ifx;
    // Frames redirected into a veth are delivered only if the peer runs native XDP or has GRO
    // on; paths without native XDP on the VIF get GRO.
    let gro = || {
        t.host
            .exec(&["ethtool", "-K", "vif0", "gro", "on"])
            .expect("ethtool -K vif0 gro on");
    };
    let attach_helper = |helpers: &mut Helpers, name: &str| {
        let p = helpers.program(name);
        t.host
            .run(|| p.attach_to_if_index(ifx, XdpMode::Driver).map(|_| ()))
            .expect("ns")
            .expect("attach helper");
    };
    match path {
        Path::Floor => {
            attach_helper(helpers, "xdp_drop");
            Setup::Helper
        }
        Path::FloorGeneric => {
            gro();
            let p = helpers.program(lockd_kit::programs::PROG_DROP_COUNTED);
            t.host
                .run(|| p.attach_to_if_index(ifx, XdpMode::Skb).map(|_| ()))
                .expect("ns")
                .expect("attach floor");
            Setup::Counted(helpers.floor_count())
        }
        Path::FloorTc => {
            gro();
            cls_bpf_filter(t, helpers, lockd_kit::programs::PROG_TC_DROP_COUNTED);
            Setup::Counted(helpers.floor_count())
        }
        Path::FloorTcx => {
            gro();
            let p = helpers.tc_program(lockd_kit::programs::PROG_TC_DROP_COUNTED);
            let link = t
                .host
                .run(|| {
                    let id = p.attach_with_options(
                        "vif0",
                        aya::programs::TcAttachType::Ingress,
                        aya::programs::tc::TcAttachOptions::TcxOrder(Default::default()),
                    )?;
                    p.take_link(id)
                })
                .expect("ns");
            match link {
                Ok(link) => Setup::CountedTcx {
                    at: helpers.floor_count(),
                    _link: link,
                },
                Err(e) => Setup::Unavailable(format!("a TCX link on this kernel: {e}")),
            }
        }
        Path::LockdNative
        | Path::LockdGeneric
        | Path::LockdTc
        | Path::LockdTcx
        | Path::LockdTcBeside => {
            let mode = match path {
                Path::LockdNative => XdpModeRequest::Native,
                Path::LockdGeneric => XdpModeRequest::Generic,
                _ => XdpModeRequest::Tc,
            };
            let tc_mode = if path == Path::LockdTcx {
                TcMode::Tcx
            } else {
                TcMode::Clsact
            };
            let dp = t
                .host
                .run(move || {
                    let mut dp = Dataplane::load().expect("load");
                    dp.set_tc_mode(tc_mode);
                    dp.set_policy(ifx, &bench_policy()).expect("policy");
                    dp.attach(ifx, mode).expect("attach");
                    dp
                })
                .expect("ns");
            if path != Path::LockdNative {
                gro();
            }
            if path == Path::LockdTcBeside {
                // A filter added without a priority goes before the first one there: the
                // empty program runs first and passes every frame on to lockd's.
                cls_bpf_filter(t, helpers, lockd_kit::programs::PROG_TC_EMPTY);
            }
            Setup::Lockd(Box::new(dp))
        }
        Path::NftNetdev | Path::NftNetdevFloor | Path::NftBridge | Path::NftBridgeFloor => {
            gro();
            let family = if path.bridged() { "bridge" } else { "netdev" };
            peers::nft_load(&t.host, family, rules(path));
            Setup::Nft(family)
        }
        Path::XdpFilter | Path::XdpFilterFloor => {
            // libxdp keeps its state under /sys/fs/bpf/xdp: bpffs must be there (mounted only
            // on an empty /sys/fs/bpf, as the daemon does, and unmounted after the run if it
            // was not there before).
            if !bpffs_at_sys_fs_bpf() {
                MOUNTED_BPFFS.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            if let Err(e) = lockd::dataplane::ensure_bpffs(std::path::Path::new(XDP_DIR)) {
                return Setup::Unavailable(format!("bpffs for xdp-filter: {e}"));
            }
            let ns = t.host.name().to_string();
            match peers::xdp_filter_load(&ns, rules(path)) {
                Ok(()) => Setup::XdpFilter(ns),
                Err(why) => Setup::Unavailable(why),
            }
        }
        Path::Ebtables { nf_call } | Path::EbtablesFloor { nf_call } => {
            gro();
            match peers::ebtables_load(&t.host, nf_call, rules(path)) {
                Ok(eb) => Setup::Ebtables(eb),
                Err(why) => Setup::Unavailable(why),
            }
        }
    }
}

/// Puts the kit's TC program `name` in a `cls_bpf` filter on vif0's clsact (made if missing), as
/// lockd attaches by default (a TCX link costs less per frame, so the floors must match). The
/// filter goes with the topology's namespace; the program forgets it, so the next topology's
/// vif0 (maybe the same ifindex) can have one too.
fn cls_bpf_filter(t: &Topo, helpers: &mut Helpers, name: &str) {
    let p = helpers.tc_program(name);
    t.host
        .run(|| {
            let _exists = aya::programs::tc::qdisc_add_clsact("vif0");
            let id = p.attach_with_options(
                "vif0",
                aya::programs::TcAttachType::Ingress,
                aya::programs::tc::TcAttachOptions::Netlink(Default::default()),
            )?;
            std::mem::forget(p.take_link(id)?);
            Ok::<(), aya::programs::ProgramError>(())
        })
        .expect("ns")
        .unwrap_or_else(|e| panic!("a cls_bpf filter for {name}: {e}"));
}

/// Whether a peer's path gets the locking policy or its one-rule floor.
fn rules(path: Path) -> Rules {
    if path.own_floor().is_some() {
        Rules::Policy
    } else {
        Rules::Floor
    }
}

fn dropped(s: &Setup, t: &Topo, helpers: &Helpers) -> Option<u64> {
    match s {
        Setup::Counted(at) | Setup::CountedTcx { at, .. } => Some(helpers.floor_count() - at),
        Setup::Lockd(dp) => Some(
            dp.counter(t.host_ifx, Direction::FromVm, Reason::Ipv4Spoof)
                .expect("counter")
                .packets,
        ),
        Setup::Helper | Setup::Unavailable(_) => None,
        Setup::XdpFilter(ns) => peers::xdp_filter_counter(ns),
        Setup::Nft(family) => peers::nft_counter(&t.host, family),
        Setup::Ebtables(eb) => peers::ebtables_counter(&t.host, eb),
    }
}

/// The kernel's run statistics (`run_time_ns`, `run_cnt`) of the program `path` runs, where it
/// is one of lockd's or the kit's (they count only while `BPF_ENABLE_STATS` is held).
fn prog_stats(path: Path, s: &Setup, helpers: &mut Helpers) -> Option<(u64, u64)> {
    use lockd_common::{PROG_VIF_INGRESS, PROG_VIF_INGRESS_TC};
    use lockd_kit::programs::{PROG_DROP, PROG_DROP_COUNTED, PROG_TC_DROP_COUNTED};
    let info = match (path, s) {
        (Path::LockdTc | Path::LockdTcx | Path::LockdTcBeside, Setup::Lockd(dp)) => {
            dp.program_info(PROG_VIF_INGRESS_TC)
        }
        (_, Setup::Lockd(dp)) => dp.program_info(PROG_VIF_INGRESS),
        (Path::FloorTc | Path::FloorTcx, _) => helpers.tc_program(PROG_TC_DROP_COUNTED).info().ok(),
        (Path::FloorGeneric, _) => helpers.program(PROG_DROP_COUNTED).info().ok(),
        (Path::Floor, _) => helpers.program(PROG_DROP).info().ok(),
        _ => None,
    }?;
    Some((info.run_time().as_nanos() as u64, info.run_count()))
}

/// Unloads xdp-filter from vif0 in `ns` (its maps are pinned under /sys/fs/bpf/xdp-filter, so
/// nothing stays behind) and leaves bpffs as found: libxdp's directory goes once empty, and a
/// bpffs the bench mounted goes too.
fn cleanup_xdp_filter(ns: &str) {
    let _ = peers::xdp_filter(ns, &["unload", "vif0"]);
    let _ = std::fs::remove_dir(XDP_DIR);
    if MOUNTED_BPFFS.swap(false, std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c"/sys/fs/bpf".as_ptr(), libc::MNT_DETACH) };
    }
}

/// One measurement.
pub struct Sample {
    pub path: Path,
    pub vcpus: usize,
    pub pps: f64,
    pub ns_per_pkt: f64,
    pub sent: u64,
    pub counted: Option<u64>,
    pub tool: String,
    /// Why the path could not run on this machine.
    pub unavailable: Option<String>,
    /// Why the run's figures cannot be trusted (its drop count does not fit what was sent).
    pub invalid: Option<String>,
    pub frame_len: usize,
    /// Where several runs were made: the median absolute deviation of their ns/packet from
    /// the median run's, the path's noise.
    pub spread_ns: Option<f64>,
    /// The kernel's own mean run time of the path's program over the measured frames, where
    /// run statistics are on and the program is lockd's or the kit's.
    pub prog_ns: Option<f64>,
    /// The same of the empty program run before it on the same frames (`LockdTcBeside`).
    pub beside_ns: Option<f64>,
}

pub fn measure(path: Path, vcpus: usize, per_thread: u32, helpers: &mut Helpers) -> Sample {
    measure_sized(path, vcpus, per_thread, helpers, 64)
}

/// One measurement with spoofed frames of `len` bytes.
/// How frames reach the VIF.
#[derive(Clone, Copy)]
pub enum Sender {
    /// The live-frames generator (linear skbs on the skb path), this many frames per thread.
    Live(u32),
    /// An AF_PACKET transmit ring in the VM with this many bytes in the skb's head and the
    /// rest in page fragments, as netback builds its skbs (a head as long as the frame: a
    /// linear skb); this many frames, one thread.
    Split { head: u16, count: u64 },
}

pub fn measure_sized(
    path: Path,
    vcpus: usize,
    per_thread: u32,
    helpers: &mut Helpers,
    len: usize,
) -> Sample {
    measure_with(path, vcpus, Sender::Live(per_thread), helpers, len)
}

pub fn measure_with(
    path: Path,
    vcpus: usize,
    sender: Sender,
    helpers: &mut Helpers,
    len: usize,
) -> Sample {
    let t = topo(path.bridged());
    if let Sender::Split { .. } = sender {
        // Frames past a page, on links that let them through.
        for (ns, dev) in [(&t.host, "vif0"), (&t.vm, "eth0")] {
            ns.exec(&["ip", "link", "set", dev, "mtu", "9000"])
                .expect("mtu");
        }
    }
    let mut setup = setup(path, &t, helpers);
    // Frames sent before the VIF's carrier is up and, on a bridge, before its port forwards
    // are dropped ahead of every hook a peer can use (seen: whole quick runs counting nothing).
    if !matches!(setup, Setup::Unavailable(_))
        && let Err(why) = wait_ready(&t, path.bridged())
    {
        setup = Setup::Unavailable(why);
    }
    if let Sender::Split { .. } = sender {
        // Frames from the VM's own stack take the plain veth path, not GRO's.
        let _ = t.host.exec(&["ethtool", "-K", "vif0", "gro", "off"]);
    }
    if let Setup::Unavailable(why) = setup {
        if matches!(path, Path::XdpFilter | Path::XdpFilterFloor) {
            cleanup_xdp_filter(t.host.name());
        }
        return Sample {
            path,
            vcpus,
            pps: f64::NAN,
            ns_per_pkt: f64::NAN,
            sent: 0,
            counted: None,
            tool: String::new(),
            unavailable: Some(why),
            invalid: None,
            frame_len: len,
            spread_ns: None,
            prog_ns: None,
            beside_ns: None,
        };
    }
    helpers.set_target(t.vm_ifx);
    let frame = spoofed_frame_of(len);
    let run = |helpers: &Helpers, warm: bool| match sender {
        Sender::Live(per_thread) => {
            let n = if warm {
                per_thread.min(200_000)
            } else {
                per_thread
            };
            send(
                helpers,
                &t.vm,
                t.vm_ifx,
                &frame,
                if warm { 1 } else { vcpus },
                n,
            )
        }
        Sender::Split { head, count } => {
            let n = if warm { count.min(20_000) } else { count };
            lockd_tests::txring::send_shaped(&t.vm, "eth0", &frame, head, n)
                .expect("the transmit ring")
        }
    };
    // Warm up, then measure.
    let _ = run(helpers, true);
    let before = dropped(&setup, &t, helpers);
    let beside = |helpers: &mut Helpers| {
        (path == Path::LockdTcBeside)
            .then(|| helpers.tc_program(lockd_kit::programs::PROG_TC_EMPTY).info().ok())
            .flatten()
            .map(|i| (i.run_time().as_nanos() as u64, i.run_count()))
    };
    let stats_before = (prog_stats(path, &setup, helpers), beside(helpers));
    let (sent, took) = run(helpers, false);
    std::thread::sleep(Duration::from_millis(100));
    let counted = dropped(&setup, &t, helpers).zip(before).map(|(a, b)| a - b);
    let mean = |after: Option<(u64, u64)>, before: Option<(u64, u64)>| {
        after
            .zip(before)
            .and_then(|((t1, n1), (t0, n0))| {
                (n1 > n0).then(|| (t1 - t0) as f64 / (n1 - n0) as f64)
            })
            // Zero time over counted runs: statistics are off.
            .filter(|ns| *ns > 0.0)
    };
    let prog_ns = mean(prog_stats(path, &setup, helpers), stats_before.0);
    let beside_ns = mean(beside(helpers), stats_before.1);
    // Every frame sent is spoofed: a path that counts its drops must count some (frames the
    // veth backlog sheds before the hook are not its to count), and never more than were sent.
    let invalid = counted.and_then(|c| {
        if c == 0 {
            Some(format!(
                "invalid run: {sent} spoofed frames sent, none counted as dropped"
            ))
        } else if c > sent {
            Some(format!(
                "invalid run: {c} drops counted for {sent} frames sent"
            ))
        } else {
            None
        }
    });
    // Where the path counts its drops, its rate is what it processed: frames the veth backlog
    // shed before the hook never reached it. The floor counts nothing; it keeps up anyway.
    let pps = counted.unwrap_or(sent) as f64 / took.as_secs_f64();
    let tool = match &setup {
        Setup::Ebtables(eb) => eb.clone(),
        _ => String::new(),
    };
    // Detach helpers from this (now discarded) topology's device by dropping the namespaces.
    if let Setup::XdpFilter(ns) = &setup {
        cleanup_xdp_filter(ns);
    }
    drop(setup);
    Sample {
        path,
        vcpus,
        pps,
        ns_per_pkt: if invalid.is_some() {
            f64::NAN
        } else {
            1e9 * vcpus as f64 / pps
        },
        sent,
        counted,
        tool,
        unavailable: None,
        invalid,
        frame_len: len,
        spread_ns: None,
        prog_ns,
        beside_ns,
    }
}

pub fn sample_json(s: &Sample) -> Value {
    json!({
        "path": s.path.key(), "name": s.path.name(), "vcpus": s.vcpus, "pps": s.pps,
        "ns_per_pkt": s.ns_per_pkt, "sent": s.sent, "dropped_counted": s.counted, "tool": s.tool,
        "unavailable": s.unavailable, "invalid": s.invalid, "frame_len": s.frame_len,
        "spread_ns": s.spread_ns, "prog_ns": s.prog_ns,
    })
}

/// The run with the median ns/packet; an unavailable or invalid run if any was.
pub fn median_sample(mut v: Vec<Sample>) -> Sample {
    if let Some(i) = v
        .iter()
        .position(|s| s.unavailable.is_some() || s.invalid.is_some())
    {
        return v.swap_remove(i);
    }
    v.sort_by(|a, b| a.ns_per_pkt.total_cmp(&b.ns_per_pkt));
    let mid = v.len() / 2;
    v.swap_remove(mid)
}

/// A figure for JSON: null when it could not be measured (never a 0 or a NaN).
pub fn num(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}
