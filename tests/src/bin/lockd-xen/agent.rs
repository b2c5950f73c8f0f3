//! dom0's side of the domU agents (`lockd-domu`): requests over the control bridge, and the
//! bridge capture that shows which frames reached the bridge.

use std::{
    collections::HashMap,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lockd_kit::frames::Mac;
use lockd_tests::wire::raw_socket;

/// The agents' control EtherType (as `lockd-domu` has it).
const CONTROL: u16 = 0x88b5;
/// The bridge the agents' control vifs are on (lockd never manages it).
pub const CONTROL_BRIDGE: &str = "ctlbr";
/// How long one request may take: a limit, not a prediction (TCG is slow, and one machine
/// runs it twice as slowly as another).
const REQUEST_BOUND: Duration = Duration::from_secs(120);

/// FNV-1a, 64 bits, as the agent hashes what it receives.
pub fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A domU's agent, reached at its control MAC.
pub struct Agent {
    sock: OwnedFd,
    me: Mac,
    peer: Mac,
    seq: u32,
}

fn mac_of(dev: &str) -> io::Result<Mac> {
    let s = std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))?;
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(s.trim().split(':')) {
        *m = u8::from_str_radix(p, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}

fn with_name(name: &str, rest: &[u8]) -> Vec<u8> {
    let mut b = vec![name.len() as u8];
    b.extend_from_slice(name.as_bytes());
    b.extend_from_slice(rest);
    b
}

impl Agent {
    pub fn new(peer: Mac) -> io::Result<Agent> {
        Ok(Agent {
            sock: raw_socket(CONTROL_BRIDGE)?,
            me: mac_of(CONTROL_BRIDGE)?,
            peer,
            seq: 0,
        })
    }

    /// One request and its reply body (after the status byte); `bound` limits the wait.
    fn call(&mut self, op: u8, body: &[u8], bound: Duration) -> io::Result<Vec<u8>> {
        self.seq += 1;
        let mut req = self.peer.to_vec();
        req.extend_from_slice(&self.me);
        req.extend_from_slice(&CONTROL.to_be_bytes());
        req.push(op);
        req.extend_from_slice(&self.seq.to_be_bytes());
        req.extend_from_slice(body);
        // SAFETY: req is a live buffer of the length given.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let end = Instant::now() + bound;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < end {
            // SAFETY: buf is a live buffer of the length given (the socket times out).
            let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let Ok(n) = usize::try_from(n) else { continue };
            let r = &buf[..n];
            if n >= 20
                && r[6..12] == self.peer
                && r[12..14] == CONTROL.to_be_bytes()
                && r[14] == op.to_ascii_lowercase()
                && r[15..19] == self.seq.to_be_bytes()
            {
                return match r[19] {
                    0 => Ok(r[20..].to_vec()),
                    _ => Err(io::Error::other(String::from_utf8_lossy(&r[20..]).into_owned())),
                };
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no reply from the agent within {bound:?}"),
        ))
    }

    /// Waits (bounded) until the agent answers; returns how long that took.
    pub fn wait_ready(&mut self, bound: Duration) -> io::Result<Duration> {
        let t = Instant::now();
        loop {
            match self.call(b'R', &with_name("eth0", &[]), Duration::from_secs(1)) {
                Ok(_) => return Ok(t.elapsed()),
                Err(e) if t.elapsed() > bound => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Sends `frame` once on the domU's `dev`.
    pub fn send(&mut self, dev: &str, frame: &[u8]) -> io::Result<()> {
        self.call(b'T', &with_name(dev, frame), REQUEST_BOUND).map(|_| ())
    }

    /// Hashes of every frame the domU received on `dev` since the last call.
    pub fn received(&mut self, dev: &str) -> io::Result<Vec<u64>> {
        Ok(self.report(dev)?.1)
    }

    /// (frames `dev` received since the agent started, hashes of those since the last call).
    pub fn report(&mut self, dev: &str) -> io::Result<(u64, Vec<u64>)> {
        let mut all = Vec::new();
        loop {
            let r = self.call(b'R', &with_name(dev, &[]), REQUEST_BOUND)?;
            if r.len() < 9 {
                return Err(io::Error::other("short R"));
            }
            let (more, total, hashes) = (r[0], u64::from_be_bytes(r[1..9].try_into().expect("8 bytes")), &r[9..]);
            all.extend(
                hashes
                    .chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes"))),
            );
            if more == 0 {
                return Ok((total, all));
            }
        }
    }

    /// The domU's view of `dev`: state and counters.
    pub fn info(&mut self, dev: &str) -> String {
        self.call(b'I', &with_name(dev, &[]), REQUEST_BOUND)
            .map_or_else(|e| e.to_string(), |b| String::from_utf8_lossy(&b).into_owned())
    }

    /// Starts sending `frames` round robin on `dev`, one every `gap`.
    pub fn stream(&mut self, dev: &str, gap: Duration, frames: &[Vec<u8>]) -> io::Result<()> {
        let mut body = (gap.as_micros() as u32).to_be_bytes().to_vec();
        for f in frames {
            body.extend_from_slice(&(f.len() as u16).to_be_bytes());
            body.extend_from_slice(f);
        }
        self.call(b'S', &with_name(dev, &body), REQUEST_BOUND).map(|_| ())
    }

    /// Stops the stream; how many frames it sent.
    pub fn stop(&mut self) -> io::Result<u64> {
        let r = self.call(b'X', &[], REQUEST_BOUND)?;
        Ok(u64::from_be_bytes(r.get(..8).ok_or_else(|| io::Error::other("short X"))?.try_into().expect("8 bytes")))
    }
}

/// What arrives on a dom0 netdev (the bridge: frames lockd passed), as hashes with counts.
pub struct Capture {
    seen: Arc<Mutex<HashMap<u64, u64>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(dev: &str) -> io::Result<Capture> {
        let sock = raw_socket(dev)?;
        let seen: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !st.load(Ordering::Relaxed) {
                // SAFETY: buf is a live buffer of the length given (the socket times out).
                let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if let Ok(n) = usize::try_from(n) {
                    *s.lock().expect("seen").entry(fnv(&buf[..n])).or_default() += 1;
                }
            }
        });
        Ok(Capture {
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// Forgets what arrived so far.
    pub fn clear(&self) {
        self.seen.lock().expect("seen").clear();
    }

    /// How many times a frame with this hash arrived.
    pub fn count(&self, hash: u64) -> u64 {
        self.seen.lock().expect("seen").get(&hash).copied().unwrap_or(0)
    }

    /// Waits (bounded) until every hash of `want` arrived; the ones still missing.
    pub fn wait_for(&self, want: &[u64], bound: Duration) -> Vec<u64> {
        let end = Instant::now() + bound;
        loop {
            let missing: Vec<u64> = want.iter().copied().filter(|h| self.count(*h) == 0).collect();
            if missing.is_empty() || Instant::now() > end {
                return missing;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
