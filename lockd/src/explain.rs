//! `lockd explain --pcap FILE`: every frame of a capture through the real kernel program under
//! a policy (`BPF_PROG_TEST_RUN` on a private copy of the programs and maps: nothing attached,
//! no traffic sent, the running daemon untouched), with the reference model's verdict beside
//! the kernel's.

use std::{fs::File, io::Read as _, path::Path};

use anyhow::{Context as _, Result, anyhow, bail};
use lockd_common::{
    Direction, Reason,
    model::{verdict_from_vm, verdict_to_vm},
    policy::{EffectiveMode, LockingMode, VifPolicy, parse_ipv4_list, parse_ipv6_list},
};
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};
use serde::Serialize;

use crate::{dataplane::Dataplane, frameinfo};

/// One frame of a capture: its bytes and its length on the wire.
pub struct Captured {
    pub data: Vec<u8>,
    pub orig_len: usize,
}

/// One frame's line.
#[derive(Debug, Serialize)]
pub struct Explained {
    pub index: usize,
    pub verdict: &'static str,
    pub reason: &'static str,
    pub model_verdict: &'static str,
    pub model_reason: &'static str,
    pub summary: String,
}

impl Explained {
    pub fn disagrees(&self) -> bool {
        self.reason != self.model_reason
    }

    pub fn text(&self) -> String {
        format!(
            "{:>5}  {:<4}  {:<15} model: {:<4} {:<15} {}",
            self.index,
            self.verdict,
            self.reason,
            self.model_verdict,
            self.model_reason,
            self.summary
        )
    }
}

/// The pcap magic numbers (either byte order, micro- or nanosecond) and pcapng's.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads every Ethernet frame of a pcap or pcapng file.
pub fn read_capture(path: &Path) -> Result<Vec<Captured>> {
    let mut magic = [0u8; 4];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("reading {}", path.display()))?;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bad = |e: pcap_file::PcapError| anyhow!("{}: not a readable capture: {e}", path.display());
    let mut out = Vec::new();
    if magic == PCAPNG_MAGIC {
        let mut r = PcapNgReader::new(file).map_err(bad)?;
        // Link types of the section's interfaces, in order (a packet names its interface).
        let mut links: Vec<DataLink> = Vec::new();
        while let Some(block) = r.next_block() {
            let block = block.map_err(bad)?;
            let (data, orig_len, link) = match &block {
                Block::SectionHeader(_) => {
                    links.clear();
                    continue;
                }
                Block::InterfaceDescription(i) => {
                    links.push(i.linktype);
                    continue;
                }
                Block::EnhancedPacket(p) => (
                    p.data.to_vec(),
                    p.original_len as usize,
                    links.get(p.interface_id as usize).copied(),
                ),
                Block::SimplePacket(p) => (
                    p.data.to_vec(),
                    p.original_len as usize,
                    links.first().copied(),
                ),
                _ => continue,
            };
            if link != Some(DataLink::ETHERNET) {
                bail!(
                    "{}: frame {} is not Ethernet ({link:?}); capture on the VIF's netdev",
                    path.display(),
                    out.len() + 1
                );
            }
            out.push(Captured { data, orig_len });
        }
    } else {
        let mut r = PcapReader::new(file).map_err(bad)?;
        let link = r.header().datalink;
        if link != DataLink::ETHERNET {
            bail!(
                "{}: link type {link:?}, not Ethernet; capture on the VIF's netdev (tcpdump -i vifN.M)",
                path.display()
            );
        }
        while let Some(p) = r.next_packet() {
            let p = p.map_err(bad)?;
            out.push(Captured {
                orig_len: p.orig_len as usize,
                data: p.data.into_owned(),
            });
        }
    }
    Ok(out)
}

/// A policy from `--mac` and the `key=value` words of `vif-param-set` (`locking-mode`,
/// `ipv4-allowed`, `ipv6-allowed`). Without `locking-mode`, `locked`: the mode one explains.
pub fn policy_from_words(mac: &str, words: &[String]) -> Result<VifPolicy> {
    let mac = lockd_common::policy::parse_mac(mac).map_err(|e| anyhow!("--mac: {e}"))?;
    let mut p = VifPolicy {
        mode: EffectiveMode::Locked,
        mac,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        rate: None,
    };
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| anyhow!("'{w}' is not key=value"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "locking-mode" => {
                p.mode = match v
                    .parse::<LockingMode>()
                    .map_err(|e| anyhow!("locking-mode: {e}"))?
                {
                    LockingMode::Locked => EffectiveMode::Locked,
                    LockingMode::Unlocked => EffectiveMode::Unlocked,
                    LockingMode::Disabled => EffectiveMode::Disabled,
                    LockingMode::NetworkDefault => bail!(
                        "locking-mode=network_default needs a network: give locked, unlocked or disabled, or use --vif"
                    ),
                }
            }
            "ipv4-allowed" => {
                p.ipv4 = parse_ipv4_list(v).map_err(|e| anyhow!("ipv4-allowed: {e}"))?
            }
            "ipv6-allowed" => {
                p.ipv6 = parse_ipv6_list(v).map_err(|e| anyhow!("ipv6-allowed: {e}"))?
            }
            other => bail!(
                "unknown parameter '{other}': explain takes locking-mode, ipv4-allowed and ipv6-allowed"
            ),
        }
    }
    Ok(p)
}

/// The policy the daemon reports for `--vif` (its `Request::Policy` answer).
pub fn policy_from_daemon(json: &str) -> Result<VifPolicy> {
    let v: serde_json::Value = serde_json::from_str(json).context("the daemon's policy")?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mode = match s("mode").as_str() {
        "locked" => EffectiveMode::Locked,
        "unlocked" => EffectiveMode::Unlocked,
        _ => EffectiveMode::Disabled,
    };
    Ok(VifPolicy {
        mode,
        mac: lockd_common::policy::parse_mac(&s("mac")).map_err(|e| anyhow!("{e}"))?,
        ipv4: parse_ipv4_list(&list("ipv4")).map_err(|e| anyhow!("{e}"))?,
        ipv6: parse_ipv6_list(&list("ipv6")).map_err(|e| anyhow!("{e}"))?,
        rate: None,
    })
}

fn verdict(r: Reason) -> &'static str {
    if matches!(r, Reason::Pass) {
        "pass"
    } else {
        "drop"
    }
}

/// Runs every frame through the kernel program for `dir` under `policy`. Must run as root
/// (it loads the programs); the programs are private to this call and unloaded after it.
pub fn explain(policy: &VifPolicy, frames: &[Captured], dir: Direction) -> Result<Vec<Explained>> {
    let mut dp = Dataplane::load().context("loading lockd's programs (explain needs root)")?;
    // The loopback device stands in for the VIF: test_run needs a real device, and the
    // programs find the policy by its ifindex in these private maps.
    let ifx = 1;
    dp.set_policy(ifx, policy).context("the policy")?;
    let egress = match dir {
        Direction::ToVm => Some(dp.tc_runner()?),
        Direction::FromVm => None,
    };
    // Frames counted per reason in this direction (the other is never touched here).
    let counts = |dp: &Dataplane| -> Result<Vec<u64>> {
        Reason::ALL
            .iter()
            .map(|&r| Ok(dp.counter(ifx, dir, r)?.packets))
            .collect()
    };
    let mut before = counts(&dp)?;
    let mut out = Vec::with_capacity(frames.len());
    for (i, f) in frames.iter().enumerate() {
        let mut summary = frameinfo::describe(&f.data, f.orig_len).summary;
        if f.data.len() < f.orig_len {
            summary += &format!(" (captured {} of {} bytes)", f.data.len(), f.orig_len);
        }
        let model = match dir {
            Direction::FromVm => verdict_from_vm(policy, &f.data),
            Direction::ToVm => verdict_to_vm(policy, &f.data),
        };
        // test_run refuses a frame shorter than an Ethernet header; no netdev delivers one.
        let kernel = if f.data.len() < lockd_common::proto::ETH_HLEN {
            summary += " (too short to run)";
            model
        } else {
            match &egress {
                Some(r) => {
                    r.run_skb(ifx, &f.data, 1)
                        .with_context(|| format!("frame {}", i + 1))?;
                }
                None => {
                    dp.judge(ifx, &f.data)
                        .with_context(|| format!("frame {}", i + 1))?;
                }
            }
            let after = counts(&dp)?;
            let changed = Reason::ALL
                .into_iter()
                .zip(after.iter().zip(&before))
                .find_map(|(r, (a, b))| (a != b).then_some(r));
            before = after;
            changed.ok_or_else(|| anyhow!("frame {}: the kernel counted nothing", i + 1))?
        };
        out.push(Explained {
            index: i + 1,
            verdict: verdict(kernel),
            reason: kernel.name(),
            model_verdict: verdict(model),
            model_reason: model.name(),
            summary,
        });
    }
    Ok(out)
}
