//! A rate-limited VIF's shaper: an ifb device `lockdq<ifindex>` with a tbf root qdisc, made
//! and changed over rtnetlink. The TC ingress program redirects the VIF's passing frames to
//! it; tbf holds them in a byte-bounded FIFO until the rate allows, drops only when that
//! backlog is full, and the ifb hands each frame back to the VIF's receive path (see
//! `lockd-ebpf/src/ingress_tc.rs`). Why tbf on an ifb: docs/policy-choices.md.

use std::io;

use lockd_common::policy::RateLimit;
use netlink_packet_core::{
    DefaultNla, NLM_F_ACK, NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL, NLM_F_REPLACE,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    tc::{
        TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType,
        TcAttribute, TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType,
        TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
    },
};

use crate::netlink::request;

/// The network namespace a dataplane was loaded in, where its VIFs and their shapers live.
/// Shaper requests run there whichever thread makes them (a test reads counters from outside).
#[derive(Debug)]
pub struct Netns {
    fd: std::os::fd::OwnedFd,
    ino: u64,
}

fn netns_inode(path: &str) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

impl Netns {
    /// The calling thread's namespace.
    pub fn current() -> io::Result<Netns> {
        let path = "/proc/thread-self/ns/net";
        let fd = std::fs::File::open(path)?.into();
        Ok(Netns {
            fd,
            ino: netns_inode(path)?,
        })
    }

    /// Runs `f` in this namespace: right here if the calling thread is in it, else on a
    /// short-lived thread that enters it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
        if netns_inode("/proc/thread-self/ns/net")? == self.ino {
            return f();
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.fd);
        std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setns on a namespace descriptor we own, for this thread only.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("shaper thread panicked")))
        })
    }
}

/// Name prefix of shaper devices; the rest is the VIF's ifindex.
pub const PREFIX: &str = "lockdq";
/// The backlog never exceeds this (POLICY.md: ≤ 2 bursts or 2 MB, whichever is smaller).
pub const MAX_BACKLOG: u64 = 2 * 1024 * 1024;
/// The smallest burst: one largest frame the VIF may send (a 64 KiB GSO frame is split by tbf
/// into segments, so a full-size Ethernet frame with a tag is the unit).
pub const MIN_BURST: u64 = 1522;

const TCA_TBF_PARMS: u16 = 1;
const TCA_TBF_RATE64: u16 = 4;
const TCA_TBF_BURST: u16 = 6;
const TC_LINKLAYER_ETHERNET: u8 = 1;

/// The shaper's name for VIF `ifindex`.
pub fn name(ifindex: u32) -> String {
    format!("{PREFIX}{ifindex}")
}

/// Rate in bytes/s, burst and backlog limit in bytes, of a rate limit.
pub fn params(rate: &RateLimit) -> (u64, u64, u64) {
    let bytes_per_sec = rate.kbps.saturating_mul(1024);
    let burst = ((u128::from(bytes_per_sec) * u128::from(rate.timeslice_us) / 1_000_000) as u64)
        .max(MIN_BURST);
    let limit = (2 * burst).clamp(MIN_BURST, MAX_BACKLOG);
    (bytes_per_sec, burst.min(u64::from(u32::MAX)), limit)
}

/// The ifindex of the device called `name`, if there is one.
pub fn ifindex_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Whether the TC program itself can hand a frame to the shaper: `bpf_redirect` from TC
/// ingress marks the frame redirected, which an ifb requires of every frame it takes, only
/// since Linux 6.4 ("bpf: Set skb redirect and from_ingress info in __bpf_tx_skb"). On an
/// older kernel (Debian 12's 6.1 dom0) the ifb drops every frame the program hands it, so
/// there the hand-off is a u32 filter matching every frame, with a mirred redirect, after lockd's own filter
/// on the VIF's clsact ingress: the program lets a passing frame of a shaped VIF go on
/// (`FLAG_SHAPE_BY_FILTER`) and the filter hands it over. Found on a real netback vif (the
/// Xen tier's rate case), where lockd's limit let nothing through.
pub fn program_hands_over() -> bool {
    crate::features::Feature::IfbRedirect.by_version()
}

/// The hand-off filter's priority: after lockd's cls_bpf filter, whose priority the kernel
/// chooses counting down from 49152.
pub const HANDOFF_PRIORITY: u16 = u16::MAX;
const ETH_P_ALL: u16 = 0x0003;

fn clsact_ingress_filter(vif: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(vif as i32);
    msg.header.parent = TcHandle {
        major: u16::MAX,
        minor: TcHandle::MIN_INGRESS,
    };
    msg.header.info = (u32::from(HANDOFF_PRIORITY) << 16) | u32::from(ETH_P_ALL.to_be());
    msg
}

/// Puts VIF `vif`'s hand-off filter to shaper `shaper` (in place of one left from before): a
/// clsact qdisc if the VIF has none yet (its programs may come after its policy), then
/// `u32 match u32 0 0 action mirred egress redirect` (u32 rather than matchall, which some
/// kernels lack).
fn handoff_add(vif: u32, shaper: u32) -> io::Result<()> {
    crate::netlink::add_clsact(vif)
        .map_err(|e| io::Error::new(e.kind(), format!("a clsact qdisc on ifindex {vif}: {e}")))?;
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = shaper;
    let mut action = TcAction::default();
    action
        .attributes
        .push(TcActionAttribute::Kind("mirred".into()));
    action
        .attributes
        .push(TcActionAttribute::Options(vec![TcActionOption::Mirror(
            TcActionMirrorOption::Parms(mirror),
        )]));
    // One key that every frame matches (mask 0), terminal.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut msg = clsact_ingress_filter(vif);
    msg.attributes.push(TcAttribute::Kind("u32".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    handoff_remove(vif)?;
    request(
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(|_| ())
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("the hand-off filter (modules cls_u32, act_mirred) on ifindex {vif}: {e}"),
        )
    })
}

/// Removes VIF `vif`'s hand-off filter. Fine if there is none, or no VIF.
fn handoff_remove(vif: u32) -> io::Result<()> {
    let msg = clsact_ingress_filter(vif);
    match request(RouteNetlinkMessage::DelTrafficFilter(msg), NLM_F_ACK) {
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)
            ) =>
        {
            Ok(())
        }
        r => r.map(|_| ()),
    }
}

/// Makes (or takes over) the shaper of VIF `vif` with `rate`, up; returns its ifindex. An ifb
/// of that name left from before is reused. Where the program cannot hand frames over
/// itself, the VIF gets its hand-off filter too.
pub fn ensure(vif: u32, rate: &RateLimit) -> io::Result<u32> {
    let n = name(vif);
    let ifx = match ifindex_of(&n) {
        Some(i) => i,
        None => {
            let mut add = LinkMessage::default();
            add.attributes.push(LinkAttribute::IfName(n.clone()));
            add.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Ifb)]));
            request(
                RouteNetlinkMessage::NewLink(add),
                NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            )
            .map_err(|e| io::Error::new(e.kind(), format!("creating shaper {n}: {e}")))?;
            ifindex_of(&n)
                .ok_or_else(|| io::Error::other(format!("shaper {n} vanished after creation")))?
        }
    };
    let done = set_rate(ifx, rate).and_then(|()| up(ifx)).and_then(|()| {
        if program_hands_over() {
            Ok(())
        } else {
            handoff_add(vif, ifx)
        }
    });
    if let Err(e) = done {
        let _ = remove(vif);
        return Err(io::Error::new(
            e.kind(),
            format!("setting up shaper {n}: {e}"),
        ));
    }
    Ok(ifx)
}

fn up(ifindex: u32) -> io::Result<()> {
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    set.header.flags = LinkFlags::Up;
    set.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(set), NLM_F_ACK).map(|_| ())
}

/// Creates or replaces the tbf root qdisc of shaper `ifindex`.
pub fn set_rate(ifindex: u32, rate: &RateLimit) -> io::Result<()> {
    let (bps, burst, limit) = params(rate);
    // struct tc_tbf_qopt: rate and peakrate (struct tc_ratespec, 12 bytes each), then limit,
    // buffer and mtu. The buffer comes from TCA_TBF_BURST; no peak rate.
    let mut qopt = Vec::with_capacity(36);
    qopt.push(0); // cell_log
    qopt.push(TC_LINKLAYER_ETHERNET);
    qopt.extend_from_slice(&[0; 6]); // overhead, cell_align, mpu
    qopt.extend_from_slice(&(bps.min(u64::from(u32::MAX)) as u32).to_ne_bytes());
    qopt.extend_from_slice(&[0; 12]); // peakrate
    qopt.extend_from_slice(&(limit as u32).to_ne_bytes());
    qopt.extend_from_slice(&[0; 8]); // buffer, mtu
    let mut opts = vec![
        TcOption::Other(DefaultNla::new(TCA_TBF_PARMS, qopt)),
        TcOption::Other(DefaultNla::new(
            TCA_TBF_BURST,
            (burst as u32).to_ne_bytes().to_vec(),
        )),
    ];
    if bps > u64::from(u32::MAX) {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            bps.to_ne_bytes().to_vec(),
        )));
    }
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.handle = TcHandle { major: 1, minor: 0 };
    msg.header.parent = TcHandle::ROOT;
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes.push(TcAttribute::Options(opts));
    request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
    )
    .map(|_| ())
}

/// What a shaper's qdisc has done: frames and bytes it sent on, frames it dropped (backlog
/// full), and what waits in its backlog now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShaperStats {
    pub sent_packets: u64,
    pub sent_bytes: u64,
    pub dropped: u64,
    pub backlog_bytes: u64,
    pub backlog_packets: u64,
}

/// The tbf qdisc's counters of shaper `ifindex`.
pub fn stats(ifindex: u32) -> io::Result<ShaperStats> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle::ROOT;
    // A qdisc `get` answers only with NLM_F_ECHO (the kernel sends it as a notification).
    for m in request(RouteNetlinkMessage::GetQueueDiscipline(msg), NLM_F_ECHO)? {
        if let netlink_packet_core::NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewQueueDiscipline(q),
        ) = m.payload
        {
            for a in q.attributes {
                if let TcAttribute::Stats(s) = a {
                    return Ok(ShaperStats {
                        sent_packets: u64::from(s.packets),
                        sent_bytes: s.bytes,
                        dropped: u64::from(s.drops),
                        backlog_bytes: u64::from(s.backlog),
                        backlog_packets: u64::from(s.qlen),
                    });
                }
            }
        }
    }
    Err(io::Error::other(format!(
        "no qdisc statistics for shaper ifindex {ifindex}"
    )))
}

/// Removes the shaper of VIF `vif` (and its queue), its hand-off filter first. Fine if there
/// is none.
pub fn remove(vif: u32) -> io::Result<()> {
    let Some(ifx) = ifindex_of(&name(vif)) else {
        return Ok(());
    };
    handoff_remove(vif)?;
    remove_ifindex(ifx)
}

fn remove_ifindex(ifx: u32) -> io::Result<()> {
    let mut del = LinkMessage::default();
    del.header.index = ifx;
    match request(RouteNetlinkMessage::DelLink(del), NLM_F_ACK) {
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
        r => r.map(|_| ()),
    }
}

/// Every shaper device in this network namespace: (VIF ifindex its name gives, its ifindex).
pub fn all() -> io::Result<Vec<(u32, u32)>> {
    Ok(crate::netlink::dump()?
        .into_iter()
        .filter_map(|(ifx, n)| Some((n.strip_prefix(PREFIX)?.parse().ok()?, ifx)))
        .collect())
}

/// Removes every shaper whose VIF `keep` rejects; returns how many went.
pub fn remove_all_but(keep: impl Fn(u32) -> bool) -> io::Result<usize> {
    let mut n = 0;
    for (vif, ifx) in all()? {
        if !keep(vif) {
            handoff_remove(vif)?;
            remove_ifindex(ifx)?;
            n += 1;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_and_backlog_follow_the_policy() {
        let r = |kbps, timeslice_us| RateLimit { kbps, timeslice_us };
        // 1 MiB/s over 50 ms: a 52 428-byte burst, a backlog of two.
        assert_eq!(params(&r(1024, 50_000)), (1_048_576, 52_428, 104_856));
        // 100 MiB/s: two bursts would be 10 MiB; the backlog stops at 2 MiB.
        assert_eq!(params(&r(102_400, 50_000)).2, MAX_BACKLOG);
        // 1 kB/s: a burst below one frame is raised to one frame.
        assert_eq!(params(&r(1, 50_000)), (1024, MIN_BURST, 2 * MIN_BURST));
        // The largest rate xapi accepts does not overflow.
        let (bps, burst, limit) = params(&r(u64::from(u32::MAX), 10_000_000));
        assert_eq!(bps, u64::from(u32::MAX) * 1024);
        assert_eq!(burst, u64::from(u32::MAX));
        assert_eq!(limit, MAX_BACKLOG);
    }
}
