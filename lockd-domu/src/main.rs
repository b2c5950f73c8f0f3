//! The Xen tier's domU agent (`cargo xtask test --xen`). A PV domU has no 9p, so this runs
//! from its initramfs, statically linked (musl). It does what dom0's driver asks, one control
//! frame at a time, on the domU's netfront devices:
//!
//! - control frames arrive on `eth1` (a vif on a bridge lockd never manages) with EtherType
//!   [`CONTROL`]: `op u8, seq u32, body`; every request gets one reply with the same `seq`;
//! - `T ifname frame`: send `frame` once on `ifname` (reply: 0 sent, else the errno);
//! - `R ifname`: `more u8, total u64`, then the FNV-1a hashes of the frames received on
//!   `ifname` since the last `R` (at most [`MAX_HASHES`] a reply; `more` says whether some are
//!   left; `total` counts every frame `ifname` received since the agent started);
//! - `S ifname gap_us frames…`: send the frames round robin, one every `gap_us`, until `X`;
//! - `X`: stop the stream (reply: how many frames it sent);
//! - `I ifname`: the interface's state and counters, from sysfs, as text;
//!
//! Interfaces are brought up on first use, so a vif `xl network-attach` adds works too.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

/// The control EtherType (IEEE 802 local experimental).
const CONTROL: u16 = 0x88b5;
/// The control interface.
const CONTROL_IF: &str = "eth1";
/// Hashes in one `R` reply (8 bytes each, inside a 1500-byte frame).
const MAX_HASHES: usize = 160;

fn main() {
    if let Err(e) = run() {
        eprintln!("lockd-domu: {e}");
        std::process::exit(1);
    }
}

/// FNV-1a, 64 bits: the frame's identity in replies (dom0 hashes what it sent the same way).
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn last() -> io::Error {
    io::Error::last_os_error()
}

fn ifindex(name: &str) -> io::Result<i32> {
    let c = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(last()),
        i => Ok(i as i32),
    }
}

/// Sets `name` up (IFF_UP) if it is not.
fn ensure_up(name: &str) -> io::Result<()> {
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd is ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; the name fits (IFNAMSIZ checked).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= req.ifr_name.len() {
        return Err(io::Error::other("interface name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed.
    unsafe {
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFFLAGS as libc::Ioctl, &mut req) != 0 {
            return Err(last());
        }
        let flags = req.ifr_ifru.ifru_flags;
        if flags & libc::IFF_UP as i16 == 0 {
            req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
            if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) != 0 {
                return Err(last());
            }
        }
    }
    Ok(())
}

/// An AF_PACKET socket for `proto` (network order) on every interface, not seeing its own
/// transmissions.
fn packet_socket(proto: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto.to_be())) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd was just returned by socket(2).
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: `one` lives for the call and is the size given.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(last());
    }
    Ok(sock)
}

/// Sends `frame` on interface `ifindex` through `sock`.
fn send_on(sock: &OwnedFd, ifindex: i32, frame: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_ifindex = ifindex;
    sll.sll_halen = 6;
    // SAFETY: frame and sll live for the call, with the sizes given.
    let n = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if n < 0 { Err(last()) } else { Ok(()) }
}

/// Receives one frame into `buf`: (length, interface index).
fn recv_from(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, i32)> {
    // SAFETY: sockaddr_ll is plain data.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: buf and sll live for the call, with the sizes given.
    let n = unsafe {
        libc::recvfrom(
            sock.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            0,
            (&raw mut sll).cast(),
            &mut len,
        )
    };
    if n < 0 {
        Err(last())
    } else {
        Ok((n as usize, sll.sll_ifindex))
    }
}

/// What the agent has received, per interface index: frames in all, and the hashes of those
/// since the last report.
type Seen = Arc<Mutex<HashMap<i32, (u64, Vec<u64>)>>>;

/// A running `S` stream.
struct Stream {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: thread::JoinHandle<()>,
}

/// Splits `len u8, name` off the front of a body.
fn take_name(body: &[u8]) -> Option<(String, &[u8])> {
    let (&n, rest) = body.split_first()?;
    let name = rest.get(..usize::from(n))?;
    Some((String::from_utf8_lossy(name).into_owned(), &rest[usize::from(n)..]))
}

fn run() -> io::Result<()> {
    let control = packet_socket(CONTROL)?;
    let data = Arc::new(packet_socket(libc::ETH_P_ALL as u16)?);
    ensure_up(CONTROL_IF)?;
    let control_if = ifindex(CONTROL_IF)?;
    // Requests for the other domUs' agents reach this one too while the bridge floods.
    let own: Vec<u8> = std::fs::read_to_string(format!("/sys/class/net/{CONTROL_IF}/address"))?
        .trim()
        .split(':')
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    let seen: Seen = Arc::default();
    {
        let (data, seen) = (Arc::clone(&data), Arc::clone(&seen));
        thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            loop {
                if let Ok((n, ifi)) = recv_from(&data, &mut buf)
                    && ifi != control_if
                {
                    let h = fnv(&buf[..n]);
                    let mut seen = seen.lock().expect("seen");
                    let e = seen.entry(ifi).or_default();
                    e.0 += 1;
                    e.1.push(h);
                }
            }
        });
    }
    println!("LOCKD-DOMU ready");
    let mut stream: Option<Stream> = None;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, ifi) = recv_from(&control, &mut buf)?;
        if ifi != control_if || n < 19 || buf[..6] != own[..] {
            continue;
        }
        let req = &buf[..n];
        let (peer, me) = (&req[6..12], &req[0..6]);
        let (op, seq, body) = (req[14], &req[15..19], &req[19..]);
        let reply = answer(op, body, &data, &seen, &mut stream);
        let mut out = Vec::with_capacity(64 + reply.len());
        out.extend_from_slice(peer);
        out.extend_from_slice(me);
        out.extend_from_slice(&CONTROL.to_be_bytes());
        out.push(op.to_ascii_lowercase());
        out.extend_from_slice(seq);
        out.extend_from_slice(&reply);
        send_on(&control, control_if, &out)?;
    }
}

/// The reply body of one request.
fn answer(
    op: u8,
    body: &[u8],
    data: &Arc<OwnedFd>,
    seen: &Seen,
    stream: &mut Option<Stream>,
) -> Vec<u8> {
    let result = (|| -> io::Result<Vec<u8>> {
        match op {
            b'T' => {
                let (name, frame) = take_name(body).ok_or_else(|| io::Error::other("bad T"))?;
                ensure_up(&name)?;
                send_on(data, ifindex(&name)?, frame)?;
                Ok(Vec::new())
            }
            b'R' => {
                let (name, _) = take_name(body).ok_or_else(|| io::Error::other("bad R"))?;
                ensure_up(&name)?;
                let ifi = ifindex(&name)?;
                let mut seen = seen.lock().expect("seen");
                let (total, list) = seen.entry(ifi).or_default();
                let take = list.len().min(MAX_HASHES);
                let mut out = vec![u8::from(list.len() > take)];
                out.extend_from_slice(&total.to_be_bytes());
                for h in list.drain(..take) {
                    out.extend_from_slice(&h.to_be_bytes());
                }
                Ok(out)
            }
            b'S' => {
                let (name, rest) = take_name(body).ok_or_else(|| io::Error::other("bad S"))?;
                ensure_up(&name)?;
                let ifi = ifindex(&name)?;
                let gap = Duration::from_micros(u64::from(u32::from_be_bytes(
                    rest.get(..4)
                        .ok_or_else(|| io::Error::other("bad S"))?
                        .try_into()
                        .expect("4 bytes"),
                )));
                let mut frames = Vec::new();
                let mut at = &rest[4..];
                while at.len() >= 2 {
                    let len = usize::from(u16::from_be_bytes([at[0], at[1]]));
                    let f = at.get(2..2 + len).ok_or_else(|| io::Error::other("bad S"))?;
                    frames.push(f.to_vec());
                    at = &at[2 + len..];
                }
                if let Some(s) = stream.take() {
                    s.stop.store(true, Ordering::Relaxed);
                    let _ = s.thread.join();
                }
                let stop = Arc::new(AtomicBool::new(false));
                let sent = Arc::new(AtomicU64::new(0));
                let (data, st, se) = (Arc::clone(data), Arc::clone(&stop), Arc::clone(&sent));
                let thread = thread::spawn(move || {
                    for f in frames.iter().cycle() {
                        if st.load(Ordering::Relaxed) {
                            break;
                        }
                        if send_on(&data, ifi, f).is_ok() {
                            se.fetch_add(1, Ordering::Relaxed);
                        }
                        thread::sleep(gap);
                    }
                });
                *stream = Some(Stream { stop, sent, thread });
                Ok(Vec::new())
            }
            b'I' => {
                let (name, _) = take_name(body).ok_or_else(|| io::Error::other("bad I"))?;
                let mut out = String::new();
                for f in ["operstate", "flags", "carrier", "statistics/rx_packets", "statistics/rx_dropped", "statistics/rx_errors", "statistics/tx_packets"] {
                    let v = std::fs::read_to_string(format!("/sys/class/net/{name}/{f}")).unwrap_or_default();
                    out.push_str(&format!("{f}={} ", v.trim()));
                }
                Ok(out.into_bytes())
            }
            b'X' => {
                let n = stream.take().map_or(0, |s| {
                    s.stop.store(true, Ordering::Relaxed);
                    let _ = s.thread.join();
                    s.sent.load(Ordering::Relaxed)
                });
                Ok(n.to_be_bytes().to_vec())
            }
            _ => Err(io::Error::other("unknown op")),
        }
    })();
    match result {
        Ok(mut body) => {
            body.insert(0, 0);
            body
        }
        Err(e) => {
            let mut out = vec![1];
            out.extend_from_slice(e.to_string().as_bytes());
            out
        }
    }
}
