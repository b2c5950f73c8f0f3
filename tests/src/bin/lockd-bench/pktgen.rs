//! The kernel's packet generator (`/proc/net/pktgen`, `CONFIG_NET_PKTGEN`) driving 64-byte
//! spoofed UDP frames out of the VM end of a veth into a VIF lockd guards. Used wherever the
//! kernel has it: `--pktgen` measures with it, `--pktgen-check` (the qemu guest tier) checks
//! that every frame pktgen says it sent was counted by lockd, and nothing more. Under TCG the
//! times are not performance and are not reported as such.

use std::{
    fs,
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use lockd::dataplane::{Dataplane, XdpModeRequest};
use lockd_common::{Direction, Reason};
use serde_json::{Value, json};

use crate::{throughput::bench_policy, topo::topo};

/// pktgen's files for the calling thread's network namespace (`/proc/net` would be the
/// process's: its main thread's namespace).
const PGDIR: &str = "/proc/thread-self/net/pktgen";

/// Why pktgen cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if Path::new(PGDIR).exists() {
        return None;
    }
    // Loading the module is the operator's business on a host; try once, quietly.
    let _ = std::process::Command::new("modprobe")
        .arg("pktgen")
        .output();
    (!Path::new(PGDIR).exists()).then(|| {
        "unavailable: no /proc/net/pktgen (this kernel has no pktgen: CONFIG_NET_PKTGEN is off)"
            .to_string()
    })
}

/// Writes one pktgen command to `file` (relative to /proc/net/pktgen) and checks pktgen's
/// own verdict, which it keeps in the file's `Result:` line.
fn pg(file: &str, cmd: &str) -> Result<(), String> {
    let path = Path::new(PGDIR).join(file);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // pktgen drops the last byte of a write as its newline (as `echo` sends it).
    f.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| format!("{} <- {cmd}: {e}", path.display()))?;
    if file != "pgctrl" {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if let Some(r) = text.lines().find(|l| l.starts_with("Result:"))
            && !r.contains("OK")
        {
            return Err(format!("{} <- {cmd}: {r}", path.display()));
        }
    }
    Ok(())
}

/// The frames pktgen reports sent on `dev` (its `pkts-sofar`).
fn sent(dev: &str) -> Result<u64, String> {
    let text = fs::read_to_string(Path::new(PGDIR).join(dev)).map_err(|e| e.to_string())?;
    text.split_whitespace()
        .skip_while(|w| *w != "pkts-sofar:")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("no pkts-sofar in pktgen's report:\n{text}"))
}

/// One pktgen run of `count` frames into a VIF with lockd attached natively. Returns
/// (frames sent, frames lockd counted as `ipv4_spoof`, every frame lockd counted, elapsed).
fn run(count: u64) -> Result<(u64, u64, u64, Duration), String> {
    let t = topo(false);
    let ifx = t.host_ifx;
    let dp = t
        .host
        .run(move || -> Result<Dataplane, String> {
            let mut dp = Dataplane::load().map_err(|e| e.to_string())?;
            dp.set_policy(ifx, &bench_policy())
                .map_err(|e| e.to_string())?;
            dp.attach(ifx, XdpModeRequest::Native)
                .map_err(|e| e.to_string())?;
            Ok(dp)
        })
        .map_err(|e| e.to_string())??;
    let before = dp.counters(ifx).map_err(|e| e.to_string())?;
    // /proc/net is the calling thread's namespace: configure and start from inside the VM.
    let (elapsed, sent_frames) =
        t.vm.run(move || -> Result<(Duration, u64), String> {
            pg("kpktgend_0", "rem_device_all")?;
            pg("kpktgend_0", "add_device eth0")?;
            for cmd in [
                format!("count {count}"),
                "pkt_size 64".into(),
                "clone_skb 0".into(),
                "delay 0".into(),
                "dst_mac 02:00:00:00:00:0a".into(),
                // A source the VIF may not use: lockd drops every frame as ipv4_spoof.
                "src_min 10.0.0.99".into(),
                "src_max 10.0.0.99".into(),
                "dst 10.0.0.1".into(),
                "udp_src_min 1234".into(),
                "udp_src_max 1234".into(),
                "udp_dst_min 9".into(),
                "udp_dst_max 9".into(),
            ] {
                pg("eth0", &cmd)?;
            }
            let start = Instant::now();
            // Blocks until every thread has sent its count.
            pg("pgctrl", "start")?;
            let elapsed = start.elapsed();
            let sent_frames = sent("eth0")?;
            pg("kpktgend_0", "rem_device_all")?;
            Ok((elapsed, sent_frames))
        })
        .map_err(|e| e.to_string())??;
    // The frames are in flight through the veth backlog for a moment after pktgen returns.
    std::thread::sleep(Duration::from_millis(300));
    let d = dp.counters(ifx).map_err(|e| e.to_string())?.delta(&before);
    let dir = Direction::FromVm as usize;
    let spoof = d.0[dir][Reason::Ipv4Spoof as usize].packets;
    let total: u64 = d.0[dir].iter().map(|c| c.packets).sum();
    drop(dp);
    Ok((sent_frames, spoof, total, elapsed))
}

/// `--pktgen`: a measurement where pktgen exists, else `unavailable` and why.
pub fn measure(count: u64) -> Value {
    if let Some(why) = unavailable() {
        eprintln!("  pktgen {why}");
        return json!({"pktgen": why});
    }
    match run(count) {
        Ok((sent, spoof, total, elapsed)) => {
            let pps = sent as f64 / elapsed.as_secs_f64();
            eprintln!(
                "  pktgen: sent {sent}, lockd counted {total} ({spoof} ipv4_spoof), {pps:.0} pps"
            );
            json!({"pktgen": {"sent": sent, "counted": total, "ipv4_spoof": spoof, "pps": pps}})
        }
        Err(e) => {
            eprintln!("  pktgen failed: {e}");
            json!({"pktgen": format!("failed: {e}")})
        }
    }
}

/// `--pktgen-check`: frames sent = frames lockd counted, all as `ipv4_spoof`. Exit status
/// says whether it held.
pub fn check() -> bool {
    if let Some(why) = unavailable() {
        eprintln!("pktgen check: {why}");
        return false;
    }
    let count = 20_000;
    match run(count) {
        Ok((sent, spoof, total, _)) => {
            println!(
                "pktgen check: pktgen sent {sent} of {count}; lockd counted {total}, {spoof} as ipv4_spoof (times under emulation are not performance)"
            );
            sent == count && total == sent && spoof == sent
        }
        Err(e) => {
            eprintln!("pktgen check failed: {e}");
            false
        }
    }
}
