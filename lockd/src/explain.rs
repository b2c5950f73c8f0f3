//! `lockd explain --pcap FILE`: every frame of a capture through the real kernel program under
//! a policy (`BPF_PROG_TEST_RUN` on a private copy of the programs and maps: nothing attached,
//! no traffic sent, the running daemon untouched), with the reference model's verdict beside
//! the kernel's.

use std::{
    fs::File,
    io::Read as _,
    path::{Path, PathBuf},
};

use lockd_common::{
    Direction, Reason,
    model::{verdict_from_vm, verdict_to_vm},
    policy::{EffectiveMode, LockingMode, VifPolicy, parse_ipv4_list, parse_ipv6_list},
    proto::ETH_HLEN,
};
use pcap_file::{
    DataLink,
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
};
use serde::Serialize;

use crate::{
    dataplane::{Dataplane, DataplaneError, XDP_DROP, XDP_PASS},
    frameinfo,
};

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
    /// Whether the kernel ran the frame, and what the program returned.
    #[serde(skip)]
    pub run: Run,
    /// What is wrong with the kernel's own answer (its return value and its counters do not
    /// fit together), if anything.
    #[serde(skip)]
    pub problem: Option<String>,
}

impl Explained {
    /// The kernel and the model disagree.
    pub fn disagrees(&self) -> bool {
        self.reason != self.model_reason || self.verdict != self.model_verdict
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

/// Why `explain` has no answer.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The capture file cannot be opened or read.
    #[error("reading {}: {error}", path.display())]
    Read { path: PathBuf, error: std::io::Error },
    /// The file is not a pcap or pcapng capture (or is cut short).
    #[error("{}: not a readable capture: {}", path.display(), crate::error_chain(error))]
    Capture {
        path: PathBuf,
        error: Box<pcap_file::PcapError>,
    },
    /// A frame of the capture is not Ethernet (the text names it and what to do).
    #[error("{}: {what}", path.display())]
    NotEthernet { path: PathBuf, what: String },
    /// `--mac` or a `key=value` word is not one explain takes.
    #[error("{0}")]
    Words(String),
    /// The daemon's answer to `--vif` is not a policy (not JSON, or a field that does not
    /// parse).
    #[error("{0}")]
    DaemonPolicy(String),
    /// The private dataplane refused a step (`what` says which).
    #[error("{what}: {}", crate::error_chain(error))]
    Dataplane {
        what: String,
        error: Box<DataplaneError>,
    },
    /// The kernel refused to run a frame.
    #[error("frame {frame}: {error}")]
    Run { frame: usize, error: std::io::Error },
}

type Result<T> = std::result::Result<T, ExplainError>;

fn dataplane(what: impl Into<String>) -> impl FnOnce(DataplaneError) -> ExplainError {
    let what = what.into();
    move |error| ExplainError::Dataplane {
        what,
        error: Box::new(error),
    }
}

/// The pcap magic numbers (either byte order, micro- or nanosecond) and pcapng's.
const PCAPNG_MAGIC: [u8; 4] = [0x0a, 0x0d, 0x0d, 0x0a];

/// Reads every Ethernet frame of a pcap or pcapng file.
pub fn read_capture(path: &Path) -> Result<Vec<Captured>> {
    let mut magic = [0u8; 4];
    let read = |error| ExplainError::Read {
        path: path.to_path_buf(),
        error,
    };
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(read)?;
    let file = File::open(path).map_err(read)?;
    let bad = |error| ExplainError::Capture {
        path: path.to_path_buf(),
        error: Box::new(error),
    };
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
                return Err(ExplainError::NotEthernet {
                    path: path.to_path_buf(),
                    what: format!(
                        "frame {} is not Ethernet ({link:?}); capture on the VIF's netdev",
                        out.len() + 1
                    ),
                });
            }
            out.push(Captured { data, orig_len });
        }
    } else {
        let mut r = PcapReader::new(file).map_err(bad)?;
        let link = r.header().datalink;
        if link != DataLink::ETHERNET {
            return Err(ExplainError::NotEthernet {
                path: path.to_path_buf(),
                what: format!(
                    "link type {link:?}, not Ethernet; capture on the VIF's netdev (tcpdump -i vifN.M)"
                ),
            });
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
pub fn policy_from_words(mac: &str, params: &[String]) -> Result<VifPolicy> {
    let words = |s: String| ExplainError::Words(s);
    let mac = lockd_common::policy::parse_mac(mac).map_err(|e| words(format!("--mac: {e}")))?;
    let mut p = VifPolicy {
        mode: EffectiveMode::Locked,
        mac,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        rate: None,
    };
    for w in params {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| words(format!("'{w}' is not key=value")))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "locking-mode" => {
                p.mode = match v
                    .parse::<LockingMode>()
                    .map_err(|e| words(format!("locking-mode: {e}")))?
                {
                    LockingMode::Locked => EffectiveMode::Locked,
                    LockingMode::Unlocked => EffectiveMode::Unlocked,
                    LockingMode::Disabled => EffectiveMode::Disabled,
                    LockingMode::NetworkDefault => {
                        return Err(words(
                            "locking-mode=network_default needs a network: give locked, unlocked or disabled, or use --vif".into(),
                        ));
                    }
                }
            }
            "ipv4-allowed" => {
                p.ipv4 = parse_ipv4_list(v).map_err(|e| words(format!("ipv4-allowed: {e}")))?
            }
            "ipv6-allowed" => {
                p.ipv6 = parse_ipv6_list(v).map_err(|e| words(format!("ipv6-allowed: {e}")))?
            }
            other => {
                return Err(words(format!(
                    "unknown parameter '{other}': explain takes locking-mode, ipv4-allowed and ipv6-allowed"
                )));
            }
        }
    }
    Ok(p)
}

/// The policy the daemon reports for `--vif` (its `Request::Policy` answer).
pub fn policy_from_daemon(json: &str) -> Result<VifPolicy> {
    let bad = |e: &dyn std::fmt::Display| ExplainError::DaemonPolicy(e.to_string());
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| ExplainError::DaemonPolicy(format!("the daemon's policy: {e}")))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let list = |k: &str| {
        v[k].as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    // A word this release does not know holds the VIF, as the daemon would.
    let mode = s("mode").parse().unwrap_or(EffectiveMode::Disabled);
    Ok(VifPolicy {
        mode,
        mac: lockd_common::policy::parse_mac(&s("mac")).map_err(|e| bad(&e))?,
        ipv4: parse_ipv4_list(&list("ipv4")).map_err(|e| bad(&e))?,
        ipv6: parse_ipv6_list(&list("ipv6")).map_err(|e| bad(&e))?,
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

/// The `reason` of a frame the kernel program counted under no reason (a bug: every frame of
/// a managed VIF is counted exactly once).
pub const UNCOUNTED: &str = "uncounted";

/// The verdict an XDP program's return value means (`enum xdp_action`). lockd's from-VM
/// program returns only `XDP_PASS` or `XDP_DROP`; anything else is named, and flagged.
pub fn xdp_verdict(action: u32) -> &'static str {
    match action {
        XDP_PASS => "pass",
        XDP_DROP => "drop",
        0 => "aborted",
        3 => "tx",
        4 => "redirect",
        _ => "unknown",
    }
}

/// The verdict a TC program's return value means. lockd's to-VM program returns
/// `TC_ACT_UNSPEC` (-1, `TCX_NEXT`: the next program or the stack decides, so the frame goes
/// on) to pass and `TC_ACT_SHOT` (2) to drop; `TC_ACT_OK` (0) passes too.
pub fn tc_verdict(action: u32) -> &'static str {
    match action as i32 {
        -1 | 0 => "pass",
        2 => "drop",
        7 => "redirect",
        _ => "unknown",
    }
}

/// What the kernel program made of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    /// `BPF_PROG_TEST_RUN` ran it; the program returned `retval`.
    Kernel { retval: u32 },
    /// The kernel cannot run the program on it (why); `verdict` and `reason` are the model's.
    ModelOnly { why: &'static str },
}

/// Why a to-VM frame shorter than an Ethernet header is not run in the kernel (the kernel
/// said EINVAL). The skb test run wants 14 bytes of packet, and unlike XDP's `xdp_md`
/// (`data_end`) a TC program's `__sk_buff` context has no field that ends the packet before
/// the buffer does (`eth_type_trans` pulls 14 bytes and the program sees all of `skb->len`);
/// and no netdev transmits such a frame (`dev_validate_header` wants the link-layer header).
pub const TC_SHORT_FRAME: &str = "not run in the kernel: BPF_PROG_TEST_RUN builds no skb \
    from under 14 bytes (an Ethernet header) and a TC context cannot shorten one; \
    kernel columns repeat the model";

/// Why a to-VM frame of 14 bytes or more is not run in the kernel (the kernel said EINVAL):
/// `bpf_prog_test_run_skb` refuses an IPv4 or IPv6 frame whose network header is cut short (a
/// check net/bpf/test_run.c gained in 2026 for syzbot 619b9ef527f5, and stable kernels with
/// it, 6.18.44 here, as the differential tests see).
pub const TC_REFUSED: &str = "not run in the kernel: BPF_PROG_TEST_RUN builds no skb whose \
    IPv4 or IPv6 header is cut short (EINVAL); kernel columns repeat the model";

/// Why the kernel refused (EINVAL) to run the TC program on `frame`.
fn tc_refusal(frame: &[u8]) -> &'static str {
    let ip_header = match frame.get(12..14) {
        Some([0x08, 0x00]) => 20,
        Some([0x86, 0xdd]) => 40,
        _ => 0,
    };
    if frame.len() < ETH_HLEN {
        TC_SHORT_FRAME
    } else if frame.len() < ETH_HLEN + ip_header {
        TC_REFUSED
    } else {
        TC_REFUSED_OTHER
    }
}

/// Why the kernel would not run a to-VM frame, when neither reason above explains it.
pub const TC_REFUSED_OTHER: &str =
    "not run in the kernel: BPF_PROG_TEST_RUN refused it (EINVAL); kernel columns repeat the model";

/// The kernel's verdict (from the program's return value) and reason (from the one counter
/// that moved), and what is wrong if the two do not fit together.
pub fn reconcile(verdict: &'static str, moved: &[Reason]) -> (&'static str, Option<String>) {
    match moved {
        [r] => {
            let fits = match verdict {
                "pass" => matches!(r, Reason::Pass),
                "drop" => !matches!(r, Reason::Pass),
                _ => false,
            };
            let problem = (!fits).then(|| {
                format!(
                    "the program returned {verdict} but counted the frame under {}",
                    r.name()
                )
            });
            (r.name(), problem)
        }
        [] => (
            UNCOUNTED,
            Some(format!(
                "the program returned {verdict} and counted the frame under no reason"
            )),
        ),
        [first, ..] => (
            first.name(),
            Some(format!(
                "the program returned {verdict} and counted the frame under {} reasons: {}",
                moved.len(),
                moved
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ),
    }
}

/// Runs every frame through the kernel program for `dir` under `policy`. Must run as root
/// (it loads the programs); the programs are private to this call and unloaded after it.
///
/// The verdict is what the program returned (`XDP_PASS`/`XDP_DROP`, `TC_ACT_UNSPEC`/
/// `TC_ACT_SHOT`); the reason is the counter that moved. From the VM, a frame shorter than an
/// Ethernet header runs too ([`crate::testrun::SHORT_FRAME_PAD`]); to the VM the kernel
/// cannot run one, and the line says so.
pub fn explain(policy: &VifPolicy, frames: &[Captured], dir: Direction) -> Result<Vec<Explained>> {
    let mut dp = Dataplane::load().map_err(dataplane("loading lockd's programs (explain needs root)"))?;
    // The loopback device stands in for the VIF: test_run needs a real device, and the
    // programs find the policy by its ifindex in these private maps.
    let ifx = 1;
    dp.set_policy(ifx, policy).map_err(dataplane("the policy"))?;
    let egress = match dir {
        Direction::ToVm => Some(dp.tc_runner().map_err(dataplane("the TC program"))?),
        Direction::FromVm => None,
    };
    // Frames and bytes counted per reason in this direction (the other is never touched).
    let counts = |dp: &Dataplane| -> Result<Vec<(u64, u64)>> {
        Reason::ALL
            .iter()
            .map(|&r| dp.counter(ifx, dir, r).map(|c| (c.packets, c.bytes)))
            .collect::<std::result::Result<_, _>>()
            .map_err(dataplane("reading the private counters"))
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
        let frame = i + 1;
        let retval = match &egress {
            // Asked, not assumed: a kernel that one day takes these frames runs them.
            Some(r) => match r.run_skb(ifx, &f.data, 1) {
                Ok(r) => Ok(r.action),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(tc_refusal(&f.data)),
                Err(error) => return Err(ExplainError::Run { frame, error }),
            },
            None => Ok(dp
                .judge(ifx, &f.data)
                .map_err(dataplane(format!("frame {frame}")))?),
        };
        let (run, verdict_name, reason, problem) = match retval {
            Ok(retval) => {
                let after = counts(&dp)?;
                let moved: Vec<Reason> = Reason::ALL
                    .into_iter()
                    .zip(after.iter().zip(&before))
                    .filter(|(_, (a, b))| a.0 != b.0)
                    .map(|(r, _)| r)
                    .collect();
                let bytes: u64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
                before = after;
                let v = match dir {
                    Direction::FromVm => xdp_verdict(retval),
                    Direction::ToVm => tc_verdict(retval),
                };
                let (reason, mut problem) = reconcile(v, &moved);
                // The program counts the bytes it saw: a frame run padded (testrun's
                // SHORT_FRAME_PAD) must have been seen at its own length.
                if problem.is_none() && bytes != f.data.len() as u64 {
                    problem = Some(format!(
                        "the program counted {bytes} bytes for a frame of {}",
                        f.data.len()
                    ));
                }
                (Run::Kernel { retval }, v, reason, problem)
            }
            Err(why) => {
                summary += &format!(" ({why})");
                (Run::ModelOnly { why }, verdict(model), model.name(), None)
            }
        };
        out.push(Explained {
            index: i + 1,
            verdict: verdict_name,
            reason,
            model_verdict: verdict(model),
            model_reason: model.name(),
            summary,
            run,
            problem,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_values_name_the_verdict() {
        assert_eq!(xdp_verdict(XDP_PASS), "pass");
        assert_eq!(xdp_verdict(XDP_DROP), "drop");
        assert_eq!(xdp_verdict(0), "aborted");
        assert_eq!(xdp_verdict(4), "redirect");
        assert_eq!(xdp_verdict(99), "unknown");
        // TC_ACT_UNSPEC is -1 in the kernel's u32 retval.
        assert_eq!(tc_verdict(u32::MAX), "pass");
        assert_eq!(tc_verdict(0), "pass");
        assert_eq!(tc_verdict(2), "drop");
        assert_eq!(tc_verdict(7), "redirect");
        assert_eq!(tc_verdict(5), "unknown");
    }

    #[test]
    fn a_return_value_and_its_one_counter_that_fit_are_no_problem() {
        assert_eq!(reconcile("pass", &[Reason::Pass]), ("pass", None));
        assert_eq!(reconcile("drop", &[Reason::Malformed]), ("malformed", None));
    }

    #[test]
    fn a_return_value_the_counters_contradict_is_reported() {
        // The verdict stays the program's; the reason stays the counter's; both are named.
        let (reason, p) = reconcile("drop", &[Reason::Pass]);
        assert_eq!(reason, "pass");
        assert_eq!(
            p.as_deref(),
            Some("the program returned drop but counted the frame under pass")
        );
        let (reason, p) = reconcile("pass", &[Reason::ArpSpoof]);
        assert_eq!(reason, "arp_spoof");
        assert!(p.is_some_and(|p| p.contains("returned pass") && p.contains("arp_spoof")));
        // An action lockd never returns fits no counter.
        assert!(reconcile("redirect", &[Reason::Pass]).1.is_some());
        assert!(reconcile("aborted", &[Reason::Malformed]).1.is_some());
    }

    #[test]
    fn a_tc_refusal_names_its_cause() {
        assert_eq!(tc_refusal(&[]), TC_SHORT_FRAME);
        assert_eq!(tc_refusal(&[0; 13]), TC_SHORT_FRAME);
        let mut v4 = vec![0u8; 33];
        v4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(tc_refusal(&v4), TC_REFUSED);
        let mut v6 = vec![0u8; 53];
        v6[12..14].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(tc_refusal(&v6), TC_REFUSED);
        assert_eq!(tc_refusal(&[0; 60]), TC_REFUSED_OTHER);
    }

    #[test]
    fn no_counter_or_several_counters_are_reported() {
        let (reason, p) = reconcile("pass", &[]);
        assert_eq!(reason, UNCOUNTED);
        assert_eq!(
            p.as_deref(),
            Some("the program returned pass and counted the frame under no reason")
        );
        let (_, p) = reconcile("drop", &[Reason::Malformed, Reason::MacSpoof]);
        assert!(p.is_some_and(|p| p.contains("2 reasons: malformed, mac_spoof")));
    }
}
