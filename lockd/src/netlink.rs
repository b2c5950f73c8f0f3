//! Link events from rtnetlink (`RTMGRP_LINK`) and a one-shot dump of the current links, through
//! the rust-netlink crates (`netlink-sys` for the socket, `netlink-packet-route` for the
//! messages). No polling: the daemon reacts to each message.

use std::io;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkFlags, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const RTMGRP_LINK: u32 = 1;

/// A link appeared or changed (`New`), or went away (`Del`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    New { ifindex: u32, name: String },
    Del { ifindex: u32, name: String },
}

pub(crate) fn socket(groups: u32) -> io::Result<Socket> {
    let mut s = Socket::new(NETLINK_ROUTE)?;
    s.bind(&SocketAddr::new(0, groups))?;
    Ok(s)
}

fn name_of(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

/// Parses one datagram into link events; stops at `NLMSG_DONE`. Returns (events, done).
/// A message the crate cannot decode ends the datagram (the rest cannot be framed reliably).
fn parse(buf: &[u8]) -> io::Result<(Vec<LinkEvent>, bool)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off < buf.len() {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else {
            break;
        };
        let len = msg.header.length as usize;
        match msg.payload {
            NetlinkPayload::Done(_) => return Ok((out, true)),
            NetlinkPayload::Error(e) => {
                if let Some(code) = e.code {
                    return Err(io::Error::from_raw_os_error(-code.get()));
                }
            }
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                if let Some(name) = name_of(&l) {
                    out.push(LinkEvent::New {
                        ifindex: l.header.index,
                        name,
                    });
                }
            }
            // A port leaving its bridge is announced as a DELLINK of the bridge family: the
            // netdev is still there (lockd itself takes held netdevs off their bridge).
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l))
                if l.header.interface_family == netlink_packet_route::AddressFamily::Bridge => {}
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                if let Some(name) = name_of(&l) {
                    out.push(LinkEvent::Del {
                        ifindex: l.header.index,
                        name,
                    });
                }
            }
            _ => {}
        }
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
    }
    Ok((out, false))
}

/// A request socket whose receive times out after 5 s: a request the kernel never answers (a
/// wrong flag) must fail, not hang the daemon.
fn timed_socket() -> io::Result<Socket> {
    let s = socket(0)?;
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: setsockopt on our own socket with a live timeval of the size given.
    let r = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Sends a dump request for `msg` on a fresh timed socket; the replies are read from it.
fn send_dump(msg: RouteNetlinkMessage) -> io::Result<Socket> {
    let s = timed_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut bytes = vec![0u8; req.buffer_len()];
    req.serialize(&mut bytes);
    s.send(&bytes, 0)?;
    Ok(s)
}

/// Every link in the calling thread's network namespace, as (ifindex, name).
pub fn dump() -> io::Result<Vec<(u32, String)>> {
    let s = send_dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
    let mut links = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let (events, done) = parse(&buf[..n])?;
        for e in events {
            if let LinkEvent::New { ifindex, name } = e {
                links.push((ifindex, name));
            }
        }
        if done {
            return Ok(links);
        }
    }
}

/// A subscription to link events in the calling thread's network namespace.
pub struct Watcher {
    socket: Socket,
    buf: Vec<u8>,
}

impl Watcher {
    /// Subscribes; events from this moment on are delivered by [`Watcher::next_events`].
    pub fn subscribe() -> io::Result<Self> {
        Ok(Self {
            socket: socket(RTMGRP_LINK)?,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Blocks for the next datagram and returns its events.
    pub fn next_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
        Ok(parse(&self.buf[..n])?.0)
    }

    /// After lost events: drops what is still queued, without blocking. Those events are older
    /// than the dump that follows; read after it, one (a vanished netdev's last NEWLINK, queued
    /// just before the overflow dropped its DELLINK) would bring back a netdev that is gone.
    /// Returns how many datagrams were dropped.
    pub fn discard_queued(&mut self) -> usize {
        // At most a socket buffer's worth, many times over: a link storm cannot keep it here.
        const MAX: usize = 10_000;
        let mut n = 0;
        while n < MAX {
            match self.socket.recv(&mut &mut self.buf[..], libc::MSG_DONTWAIT) {
                Ok(_) => n += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // Interrupted, or another overflow meanwhile: what is queued is still stale.
                Err(_) => {}
            }
        }
        n
    }
}

/// Sends one request and waits for its acknowledgement (or the reply it asked for).
pub(crate) fn request(
    msg: RouteNetlinkMessage,
    flags: u16,
) -> io::Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
    let s = timed_socket()?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
    req.finalize();
    let mut bytes = vec![0u8; req.buffer_len()];
    req.serialize(&mut bytes);
    s.send(&bytes, 0)?;
    let mut buf = vec![0u8; 1 << 16];
    let n = s.recv(&mut &mut buf[..], 0)?;
    let mut out = Vec::new();
    let mut off = 0;
    while off < n {
        let Ok(m) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n]) else {
            break;
        };
        let len = m.header.length as usize;
        if let NetlinkPayload::Error(e) = &m.payload
            && let Some(code) = e.code
        {
            return Err(io::Error::from_raw_os_error(-code.get()));
        }
        out.push(m);
        if len == 0 {
            break;
        }
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// A link's bridge (its controller's ifindex, 0 for none) and whether it is up.
pub fn link_state(ifindex: u32) -> io::Result<(u32, bool)> {
    let mut get = LinkMessage::default();
    get.header.index = ifindex;
    for m in request(RouteNetlinkMessage::GetLink(get), 0)? {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = m.payload {
            let master = l
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Controller(m) => Some(*m),
                    _ => None,
                })
                .unwrap_or(0);
            return Ok((master, l.header.flags.contains(LinkFlags::Up)));
        }
    }
    Err(io::Error::other(format!("no answer for ifindex {ifindex}")))
}

/// Puts a netdev on bridge `master` (0: on none) and up, changing only what differs: a link
/// already up on the right bridge is not touched (never flapped).
pub fn plumb(ifindex: u32, master: u32) -> io::Result<()> {
    let (current, up) = link_state(ifindex)?;
    if current == master && up {
        return Ok(());
    }
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    if current != master {
        set.attributes.push(LinkAttribute::Controller(master));
    }
    if !up {
        set.header.flags = LinkFlags::Up;
        set.header.change_mask = LinkFlags::Up;
    }
    request(RouteNetlinkMessage::SetLink(set), NLM_F_ACK).map(|_| ())
}

/// The kind of the qdisc at `ifindex`'s ingress handle (ffff:), where clsact lives: None if
/// there is none, `clsact`, or an old-style `ingress` that leaves clsact no room. Read from a
/// qdisc dump (all of it, however many datagrams), which is what the kernel answers reliably.
pub fn ingress_qdisc(ifindex: u32) -> io::Result<Option<String>> {
    use netlink_packet_route::tc::{TcAttribute, TcMessage};
    let s = send_dump(RouteNetlinkMessage::GetQueueDiscipline(
        TcMessage::with_index(ifindex as i32),
    ))?;
    let mut buf = vec![0u8; 1 << 16];
    let mut found = None;
    loop {
        let n = s.recv(&mut &mut buf[..], 0)?;
        let mut off = 0;
        while off < n {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..n])
                .map_err(|e| io::Error::other(format!("qdisc dump: {e}")))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::Done(_) => return Ok(found),
                NetlinkPayload::Error(e) => {
                    if let Some(code) = e.code {
                        return Err(io::Error::from_raw_os_error(-code.get()));
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewQueueDiscipline(q))
                    if q.header.index == ifindex as i32
                        && q.header.handle.major == 0xffff
                        && q.header.handle.minor == 0 =>
                {
                    found = q.attributes.into_iter().find_map(|a| match a {
                        TcAttribute::Kind(k) => Some(k),
                        _ => None,
                    });
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
}

/// Adds a clsact qdisc to `ifindex` (the parent of lockd's TC filters); a clsact already
/// there is kept, any other qdisc at its handle (an old-style `ingress`) is refused (EINVAL).
/// Without `NLM_F_EXCL` the kernel takes a second clsact as a change without options.
pub fn add_clsact(ifindex: u32) -> io::Result<()> {
    use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    msg.header.parent = TcHandle::CLSACT;
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    request(
        RouteNetlinkMessage::NewQueueDiscipline(msg),
        NLM_F_ACK | netlink_packet_core::NLM_F_CREATE,
    )
    .map(|_| ())
}

/// Adds a cls_bpf direct-action filter running program `fd` on the egress side of
/// `ifindex`'s clsact qdisc (the features probe; lockd's own filters go through aya).
pub fn add_bpf_filter(ifindex: u32, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    use netlink_packet_route::tc::{
        TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption,
    };
    use std::os::fd::AsRawFd as _;
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = TcHandle {
        major: 0xffff,
        minor: TcHandle::MIN_EGRESS,
    };
    // Priority 1, every protocol (ETH_P_ALL in network order).
    msg.header.info = (1u32 << 16) | u32::from(0x0003u16.to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(fd.as_raw_fd() as u32)),
        TcOption::Bpf(TcFilterBpfOption::ProgName("lockd_probe".into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    request(
        RouteNetlinkMessage::NewTrafficFilter(msg),
        NLM_F_ACK | netlink_packet_core::NLM_F_CREATE | netlink_packet_core::NLM_F_EXCL,
    )
    .map(|_| ())
}

/// Holds a netdev lockd cannot enforce: off its bridge and down. Returns what it was (its
/// bridge's ifindex, 0 for none, and whether it was up) so it can be put back; a netdev
/// already off every bridge and down is not touched.
pub fn isolate(ifindex: u32) -> io::Result<(u32, bool)> {
    let (master, up) = link_state(ifindex)?;
    if master == 0 && !up {
        return Ok((master, up));
    }
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    if master != 0 {
        set.attributes.push(LinkAttribute::Controller(0));
    }
    // Down: the Up flag in the change mask, cleared in the flags.
    set.header.change_mask = LinkFlags::Up;
    request(RouteNetlinkMessage::SetLink(set), NLM_F_ACK)?;
    Ok((master, up))
}

/// Puts a netdev [`isolate`] held back as it was: on bridge `master` (0: none), up if `up`.
pub fn restore(ifindex: u32, master: u32, up: bool) -> io::Result<()> {
    let mut set = LinkMessage::default();
    set.header.index = ifindex;
    if master != 0 {
        set.attributes.push(LinkAttribute::Controller(master));
    }
    if up {
        set.header.flags = LinkFlags::Up;
        set.header.change_mask = LinkFlags::Up;
    }
    if set.attributes.is_empty() && !up {
        return Ok(());
    }
    request(RouteNetlinkMessage::SetLink(set), NLM_F_ACK).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_sees_loopback() {
        let links = dump().expect("dump");
        assert!(links.iter().any(|(i, n)| *i == 1 && n == "lo"), "{links:?}");
    }

    #[test]
    fn garbage_datagrams_do_not_panic() {
        for len in 0..256 {
            let b: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = parse(&b);
        }
    }
}
