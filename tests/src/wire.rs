//! Real frames on real links: AF_PACKET senders and receivers (pnet) inside VM namespaces.

use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lockd_kit::netlab::{NetNs, NetlabError};
use pnet::datalink::{self, Channel, Config};

fn channel(
    dev: &str,
) -> (
    Box<dyn datalink::DataLinkSender>,
    Box<dyn datalink::DataLinkReceiver>,
) {
    let iface = datalink::interfaces()
        .into_iter()
        .find(|i| i.name == dev)
        .unwrap_or_else(|| panic!("no interface {dev} in this namespace"));
    let cfg = Config {
        read_timeout: Some(Duration::from_millis(20)),
        ..Config::default()
    };
    match datalink::channel(&iface, cfg) {
        Ok(Channel::Ethernet(tx, rx)) => (tx, rx),
        Ok(_) => panic!("unexpected channel type on {dev}"),
        Err(e) => panic!("AF_PACKET channel on {dev}: {e}"),
    }
}

/// Sends every frame once, in order, from `dev` inside `ns`.
pub fn send(ns: &NetNs, dev: &str, frames: &[Vec<u8>]) {
    lockd_kit::netlab::send_frames(ns, dev, frames).expect("send frames");
}

/// A capture running on `dev` inside a namespace; [`Capture::finish`] returns what arrived.
pub struct Capture {
    handle: JoinHandle<Result<Vec<Vec<u8>>, NetlabError>>,
    stop: mpsc::Sender<()>,
}

impl Capture {
    /// Starts capturing and returns once the socket is open.
    pub fn start(ns: &NetNs, dev: &str) -> Capture {
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let dev = dev.to_string();
        let handle = ns
            .spawn(move || {
                let (_tx, mut rx) = channel(&dev);
                ready_tx.send(()).expect("signal ready");
                let mut got = Vec::new();
                let mut deadline: Option<Instant> = None;
                loop {
                    if deadline.is_none() && stop_rx.try_recv().is_ok() {
                        // Give frames in flight a moment to land.
                        deadline = Some(Instant::now() + Duration::from_millis(300));
                    }
                    if deadline.is_some_and(|d| Instant::now() > d) {
                        return got;
                    }
                    if let Ok(f) = rx.next() {
                        got.push(f.to_vec());
                    }
                }
            })
            .expect("spawn capture");
        ready_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("capture did not start within 120 s");
        Capture {
            handle,
            stop: stop_tx,
        }
    }

    /// Stops the capture and returns every frame received.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.send(()).expect("stop capture");
        self.handle
            .join()
            .expect("capture thread panicked")
            .expect("capture namespace")
    }
}

/// How many of `sent` arrived (each sent frame matched at most once per copy received).
pub fn delivered(received: &[Vec<u8>], sent: &[Vec<u8>]) -> usize {
    received.iter().filter(|r| sent.contains(r)).count()
}

/// A wire with a fixed one-way delay between two netdevs of one namespace: every frame that
/// arrives on one is sent out of the other `delay` later (both ways). It stands for the
/// network between a VM and a host some milliseconds away — this kernel has no netem.
/// The endpoints must send finished checksums (`ethtool -K … tx off`): AF_PACKET hands over
/// a frame whose checksum offload is still pending as it is.
pub struct DelayLine {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

/// An AF_PACKET socket bound to `dev` that does not see its own transmissions.
pub fn raw_socket(dev: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let last = std::io::Error::last_os_error;
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(last());
    }
    // SAFETY: fd was just returned by socket(2) and is owned by nothing else.
    let sock = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let cname = std::ffi::CString::new(dev).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string.
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if ifindex == 0 {
        return Err(last());
    }
    let one: libc::c_int = 1;
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: sockaddr_ll is plain data; every pointer passed below points to a live local
    // of the size given.
    unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        for (opt, val, len) in [
            (
                (libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING),
                (&raw const one).cast(),
                size_of::<libc::c_int>(),
            ),
            (
                (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
                (&raw const tv).cast(),
                size_of::<libc::timeval>(),
            ),
        ] {
            if libc::setsockopt(fd, opt.0, opt.1, val, len as libc::socklen_t) != 0 {
                return Err(last());
            }
        }
        if libc::bind(
            fd,
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        ) != 0
        {
            return Err(last());
        }
    }
    Ok(sock)
}

impl DelayLine {
    /// Starts forwarding between `a` and `b` inside `ns`.
    pub fn start(ns: &NetNs, a: &str, b: &str, delay: Duration) -> DelayLine {
        use std::os::fd::AsRawFd;
        use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
        let (sa, sb) = ns
            .run(|| (raw_socket(a), raw_socket(b)))
            .expect("delay line namespace");
        let sa = Arc::new(sa.unwrap_or_else(|e| panic!("AF_PACKET socket on {a}: {e}")));
        let sb = Arc::new(sb.unwrap_or_else(|e| panic!("AF_PACKET socket on {b}: {e}")));
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (from, to) in [(sa.clone(), sb.clone()), (sb, sa)] {
            let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
            let halt = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !halt.load(Ordering::Relaxed) {
                    // SAFETY: buf is a live buffer of the length given.
                    let n = unsafe {
                        libc::recv(from.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    if let Ok(n) = usize::try_from(n)
                        && tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                    {
                        return;
                    }
                }
            }));
            // Frames leave in arrival order, each when its delay is up; the channel closes
            // when the reader stops.
            threads.push(std::thread::spawn(move || {
                for (due, frame) in rx {
                    std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    // SAFETY: frame is a live buffer of the length given. A frame the link
                    // refuses is lost, as on a real wire.
                    let _lost = unsafe {
                        libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                    };
                }
            }));
        }
        DelayLine { stop, threads }
    }
}

impl Drop for DelayLine {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// An AF_PACKET socket on `dev` whose sends carry a virtio-net header.
fn split_socket(dev: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::AsRawFd;
    let sock = raw_socket(dev).unwrap_or_else(|e| panic!("AF_PACKET socket on {dev}: {e}"));
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a live int of the size given.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_VNET_HDR,
            (&raw const one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "PACKET_VNET_HDR: {}", std::io::Error::last_os_error());
    sock
}

/// The bytes to send for `frame` with `head` bytes in the skb's head: a virtio-net header
/// (flags, gso_type none, hdr_len, gso_size, csum_start, csum_offset), then the frame.
fn split_buf(frame: &[u8], head: u16) -> Vec<u8> {
    assert!(frame.len() >= 4096, "a frame under a page is sent linear");
    let mut buf = vec![0u8, 0];
    buf.extend_from_slice(&head.to_le_bytes());
    buf.extend_from_slice(&[0; 6]);
    buf.extend_from_slice(frame);
    buf
}

/// Sends each frame from `dev` inside `ns` as an skb whose head holds only its first `head`
/// bytes and the rest page fragments, as netback's skbs do. An AF_PACKET socket with a
/// virtio-net header builds such an skb for a frame of a page or more (`hdr_len` is the
/// head), so frames must be that long and the link's MTU must let them through.
pub fn send_split(ns: &NetNs, dev: &str, frames: &[(Vec<u8>, u16)]) {
    use std::os::fd::AsRawFd;
    let dev = dev.to_string();
    let frames = frames.to_vec();
    ns.run(move || {
        let sock = split_socket(&dev);
        for (frame, head) in &frames {
            let buf = split_buf(frame, *head);
            // SAFETY: a live buffer of the length given.
            let n = unsafe { libc::send(sock.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) };
            assert_eq!(
                n,
                buf.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
    })
    .expect("sender namespace");
}

/// The far host's MAC and address (on the VMs' subnet, behind the bridge's uplink).
pub const FAR_MAC: &str = "02:00:00:00:00:0f";
pub const FAR_IP: &str = "10.0.0.9";

/// A host 20 ms (round trip) away behind a bridge's uplink, as the far end of a VM's TCP
/// connection: the uplink port carries no lockd program; a delay line in its own namespace
/// stands for the network. Lives as long as the value.
pub struct FarHost {
    pub far: NetNs,
    _line: DelayLine,
    _wan: NetNs,
}

impl FarHost {
    /// Plugs the uplink into `bridge` in `host`; `vm` is the namespace of the VM that talks
    /// to the far host (its checksums are computed in software, for the delay line).
    pub fn start(host: &NetNs, bridge: &str, vm: &NetNs) -> FarHost {
        let wan = NetNs::new("rw").expect("ns");
        let far = NetNs::new("rf").expect("ns");
        lockd_kit::netlab::veth(
            host,
            "uplink",
            &wan,
            "up0",
            "02:00:00:00:00:fe",
            Some(bridge),
        )
        .expect("veth");
        lockd_kit::netlab::veth(&wan, "dn0", &far, "eth0", FAR_MAC, None).expect("veth");
        far.exec(&["ip", "addr", "add", &format!("{FAR_IP}/24"), "dev", "eth0"])
            .expect("addr");
        for ns in [&far, vm] {
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"])
                .expect("checksums in software for the delay line");
        }
        let line = DelayLine::start(&wan, "up0", "dn0", Duration::from_millis(10));
        FarHost {
            far,
            _line: line,
            _wan: wan,
        }
    }
}

/// An iperf3 TCP client report's goodput as frame bytes per second: the payload the receiver
/// got, each full segment carried in a frame 66 bytes longer (Ethernet 14, IPv4 20, TCP with
/// timestamps 32) — the flow's share of the rate, retransmissions not counted. None if the
/// report lacks the figures.
pub fn tcp_frame_rate(report: &serde_json::Value) -> Option<f64> {
    let recv = &report["end"]["sum_received"];
    let mss = 1448.0;
    Some(recv["bytes"].as_f64()? / recv["seconds"].as_f64()? * (mss + 66.0) / mss)
}

/// Bytes `dev` in `ns` has received (its rx counter: whole frames, Ethernet header included).
/// Panics if the device or its counter is missing.
pub fn rx_bytes(ns: &NetNs, dev: &str) -> u64 {
    let out = ns
        .exec(&["ip", "-j", "-s", "link", "show", "dev", dev])
        .unwrap_or_else(|e| panic!("ip -s link show {dev}: {e}"));
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip -j output for {dev}: {e}"));
    v[0]["stats64"]["rx"]["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no rx byte counter for {dev} in {v}"))
}
