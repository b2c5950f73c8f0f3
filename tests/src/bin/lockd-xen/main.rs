//! `lockd-xen`: the Xen tier's driver, run in dom0 by `cargo xtask test --xen`.
//!
//! Two PV domUs, `a` and `b`, each run `lockd-domu` and have two vifs: `eth0` on `xenbr0`
//! (plugged by `vif-lockd`, so lockd locks it) and `eth1` on `ctlbr` (plugged by the stock
//! `vif-bridge`; lockd never manages it), over which this driver asks the agent to send
//! frames on `eth0` and to say what `eth0` received. Each subcommand is one case of the tier;
//! it prints what it saw and its last line is a summary with the domU, the vif and the frame
//! counts; it exits 0 when the case holds, 1 when it does not, 2 when it could not run.

mod agent;
mod cases;
mod toolstack;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use lockd_common::policy::format_mac;
use lockd_kit::frames::Mac;
use lockd_tests::{GUEST, OTHER, OWN4, OWN6, PEER4, PEER6};
use serde_json::Value;

use crate::agent::Agent;

/// One domU of the tier.
pub struct Domu {
    pub name: &'static str,
    /// Its xl `type`: PV for domu-a and domu-b; PVH for domu-c, the one `xl migrate` moves (a
    /// PV domU's log-dirty mode needs shadow paging, which Debian's Xen is built without; a
    /// PVH one's runs on HAP). See xtask/src/xen.rs.
    pub kind: &'static str,
    /// Its `eth0` MAC (the vif lockd locks).
    pub mac: Mac,
    /// Its addresses, as xl's `ip=` gives them.
    pub ip: String,
    pub ip4: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// Its `eth1` MAC (the control vif).
    pub control: Mac,
}

/// `a` is the corpus's guest (its MAC and addresses); `b` is the corpus's peer.
pub fn domu(which: &str) -> Option<Domu> {
    match which {
        "a" => Some(Domu {
            name: "domu-a",
            kind: "pv",
            mac: GUEST,
            ip: format!("{OWN4} {OWN6}"),
            ip4: OWN4,
            ip6: OWN6,
            control: [0x00, 0x16, 0x3e, 0xc0, 0x00, 0x0b],
        }),
        "b" => Some(Domu {
            name: "domu-b",
            kind: "pv",
            mac: OTHER,
            ip: format!("{PEER4} {PEER6}"),
            ip4: PEER4,
            ip6: PEER6,
            control: [0x00, 0x16, 0x3e, 0xc0, 0x00, 0x0a],
        }),
        // Created by the migrate case alone; no address of the corpus's.
        "c" => Some(Domu {
            name: "domu-c",
            kind: "pvh",
            mac: [0x02, 0, 0, 0, 0, 0x0d],
            ip: "10.0.0.3 2001:db8::3".into(),
            ip4: Ipv4Addr::new(10, 0, 0, 3),
            ip6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3),
            control: [0x00, 0x16, 0x3e, 0xc0, 0x00, 0x0d],
        }),
        _ => None,
    }
}

impl Domu {
    pub fn agent(&self) -> Result<Agent, String> {
        Agent::new(self.control).map_err(|e| format!("control socket on {}: {e}", agent::CONTROL_BRIDGE))
    }

    /// Its vif on xenbr0 (`vif<domid>.0`), from `xl domid`.
    pub fn vif(&self) -> Result<String, String> {
        let id = sh("xl", &["domid", self.name])?;
        Ok(format!("vif{}.0", id.trim()))
    }

    /// The xl config of this domU.
    fn config(&self, kernel: &str, ramdisk: &str) -> String {
        format!(
            "name = \"{}\"\ntype = \"{}\"\nkernel = \"{kernel}\"\nramdisk = \"{ramdisk}\"\n\
             extra = \"console=hvc0 quiet\"\nmemory = 128\nvcpus = 1\n\
             vif = [ \"mac={},bridge=xenbr0,ip={}\", \"mac={},bridge={},script=vif-bridge\" ]\n",
            self.name,
            self.kind,
            format_mac(self.mac),
            self.ip,
            format_mac(self.control),
            agent::CONTROL_BRIDGE,
        )
    }
}

/// Runs a program; its stdout, or why it failed.
pub fn sh(prog: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| format!("{prog}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{prog} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The lockd CLI (the daemon's socket from `LOCKD_SOCKET`).
pub fn lockd(args: &[&str]) -> Result<String, String> {
    let bin = lockd_tests::daemon::lockd_bin();
    sh(&bin.to_string_lossy(), args)
}

/// The lockd VIF whose netdev is `dev`.
pub fn vif_uuid(dev: &str) -> Result<String, String> {
    let u = lockd(&["vif-list", &format!("device={dev}"), "--minimal"])?;
    let u = u.trim();
    if u.is_empty() || u.contains(',') {
        return Err(format!("lockd has no single VIF for {dev} ({u:?})"));
    }
    Ok(u.to_string())
}

/// A VIF's packet counters for one direction, by reason name, from `vif-stats --json`.
pub fn counters(uuid: &str, dir: &str) -> Result<std::collections::BTreeMap<String, u64>, String> {
    let v: Value = serde_json::from_str(&lockd(&["vif-stats", &format!("uuid={uuid}"), "--json"])?)
        .map_err(|e| format!("vif-stats --json: {e}"))?;
    let mut out = std::collections::BTreeMap::new();
    if let Some(m) = v[0]["counters"][dir].as_object() {
        for (k, c) in m {
            out.insert(k.clone(), c["packets"].as_u64().unwrap_or(0));
        }
    }
    Ok(out)
}

/// `after - before`, reasons with no change left out.
pub fn delta(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// How long the tier waits for frames to be counted or to arrive: a bound, not a timing.
pub const FRAMES_BOUND: Duration = Duration::from_secs(120);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = match args.as_slice() {
        ["config", which, kernel, ramdisk] => match domu(which) {
            Some(d) => {
                print!("{}", d.config(kernel, ramdisk));
                Ok(String::new())
            }
            None => Err(format!("no domU {which}")),
        },
        ["ready", which] => domu(which)
            .ok_or_else(|| format!("no domU {which}"))
            .and_then(|d| {
                let t = d
                    .agent()?
                    .wait_ready(Duration::from_secs(600))
                    .map_err(|e| format!("{}'s agent did not answer: {e}", d.name))?;
                Ok(format!("{}'s agent answered after {t:.1?}", d.name))
            }),
        ["genuine"] => cases::genuine(),
        ["corpus"] => cases::corpus(false),
        ["corpus", "--big"] => cases::corpus(true),
        ["to-vm"] => cases::to_vm(),
        ["under-traffic", which, label, cmd @ ..] if !cmd.is_empty() => match domu(which) {
            Some(d) => toolstack::under_traffic(&d, label, cmd),
            None => Err(format!("no domU {which:?} (a, b or c)")),
        },
        ["attached", bridge] => toolstack::attached(bridge),
        ["xapi-hook"] => toolstack::xapi_hook(),
        ["baseline"] => toolstack::baseline(),
        ["rate"] => toolstack::rate(),
        _ => {
            eprintln!(
                "usage: lockd-xen config a|b KERNEL RAMDISK | ready a|b | genuine | corpus [--big] | to-vm | under-traffic LABEL CMD... | attached BRIDGE | xapi-hook | baseline | rate"
            );
            std::process::exit(2);
        }
    };
    match r {
        Ok(summary) => {
            if !summary.is_empty() {
                println!("{summary}");
            }
        }
        Err(e) => {
            println!("FAILED: {e}");
            std::process::exit(1);
        }
    }
}
