//! Link events from rtnetlink (`RTMGRP_LINK`), read on a raw `NETLINK_ROUTE` socket, and a
//! one-shot dump of the current links. No polling: the daemon reacts to each message.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const RTMGRP_LINK: u32 = 1;
const IFLA_IFNAME: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// A link appeared or changed (`New`), or went away (`Del`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    New { ifindex: u32, name: String },
    Del { ifindex: u32, name: String },
}

fn socket(groups: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2)/bind(2) with a zeroed, correctly sized sockaddr_nl.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        let r = libc::bind(
            fd.as_raw_fd(),
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            size_of::<libc::sockaddr_nl>() as u32,
        );
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Parses one datagram into link events; stops at `NLMSG_DONE`. Returns (events, done).
fn parse(buf: &[u8]) -> io::Result<(Vec<LinkEvent>, bool)> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off).unwrap_or(0) as usize;
        let ty = u16_at(buf, off + 4).unwrap_or(0);
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            break;
        }
        let msg = &buf[off + NLMSG_HDRLEN..off + len];
        match ty {
            NLMSG_DONE => return Ok((out, true)),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 0).unwrap_or(0) as i32;
                if errno != 0 {
                    return Err(io::Error::from_raw_os_error(-errno));
                }
            }
            RTM_NEWLINK | RTM_DELLINK if msg.len() >= IFINFOMSG_LEN => {
                let ifindex = u32_at(msg, 4).unwrap_or(0);
                let mut a = IFINFOMSG_LEN;
                let mut name = None;
                while a + 4 <= msg.len() {
                    let alen = usize::from(u16_at(msg, a).unwrap_or(0));
                    let aty = u16_at(msg, a + 2).unwrap_or(0);
                    if alen < 4 || a + alen > msg.len() {
                        break;
                    }
                    if aty == IFLA_IFNAME {
                        let raw = &msg[a + 4..a + alen];
                        let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                        name = Some(String::from_utf8_lossy(&raw[..end]).into_owned());
                    }
                    a += (alen + 3) & !3;
                }
                if let Some(name) = name {
                    out.push(if ty == RTM_NEWLINK {
                        LinkEvent::New { ifindex, name }
                    } else {
                        LinkEvent::Del { ifindex, name }
                    });
                }
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Ok((out, false))
}

/// Every link in the calling thread's network namespace, as (ifindex, name).
pub fn dump() -> io::Result<Vec<(u32, String)>> {
    let fd = socket(0)?;
    let mut req = [0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
    let total = req.len() as u32;
    req[0..4].copy_from_slice(&total.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[NLMSG_HDRLEN] = libc::AF_UNSPEC as u8;
    // SAFETY: req is valid for reads of its length.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut links = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = recv(&fd, &mut buf)?;
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
    fd: OwnedFd,
    buf: Vec<u8>,
}

impl Watcher {
    /// Subscribes; events from this moment on are delivered by [`Watcher::next`].
    pub fn subscribe() -> io::Result<Self> {
        Ok(Self {
            fd: socket(RTMGRP_LINK)?,
            buf: vec![0u8; 1 << 16],
        })
    }

    /// Blocks for the next datagram and returns its events.
    pub fn next_events(&mut self) -> io::Result<Vec<LinkEvent>> {
        let n = recv(&self.fd, &mut self.buf)?;
        Ok(parse(&self.buf[..n])?.0)
    }
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
        for len in 0..64 {
            let b: Vec<u8> = (0..len).map(|i| (i * 37) as u8).collect();
            let _ = parse(&b);
        }
    }
}
