//! Real frames on real links: AF_PACKET senders and receivers (pnet) inside VM namespaces.

use std::{
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lockd::netlab::{NetNs, NetlabError};
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
    lockd::netlab::send_frames(ns, dev, frames).expect("send frames");
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
            .recv_timeout(Duration::from_secs(5))
            .expect("capture did not start");
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
