//! `lockd monitor` in the daemon: one thread drains the kernel's ring buffer of dropped
//! frames and publishes one line per event, and once a second a line per VIF whose drops went
//! over the cap ("N events suppressed"); each attached client gets the lines its filter keeps.
//! The kernel writes events only while at least one client is attached.

use std::{
    collections::HashMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use lockd_common::{Direction, DropEvent, Reason};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::{dataplane::MonitorMaps, frameinfo};

/// Which VIF and netdev an ifindex is, and its counter index (for its budget).
#[derive(Clone, Debug)]
pub struct VifName {
    /// Empty for a fenced netdev (no valid VIF).
    pub uuid: String,
    pub device: String,
    pub counter: Option<u32>,
}

/// ifindex → names, kept current by the core as it reconciles.
pub type Names = Arc<RwLock<HashMap<u32, VifName>>>;

/// Lines kept for a client that reads slowly, before it is told how many it missed.
const BACKLOG: usize = 4096;

pub struct Hub {
    tx: broadcast::Sender<Arc<Value>>,
    maps: Mutex<Option<(aya::maps::Array<MapData, lockd_common::MonitorCtl>, u32)>>,
    listeners: Mutex<usize>,
    /// Every event not written for the cap or a full ring, since the daemon started.
    pub suppressed_total: AtomicU64,
}

impl Hub {
    /// Starts the reader thread on the dataplane's monitor maps. `cap`: events a second per
    /// VIF.
    pub fn start(maps: Option<MonitorMaps>, names: Names, cap: u32) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(BACKLOG);
        let Some(MonitorMaps {
            ctl,
            budget,
            events,
        }) = maps
        else {
            return Arc::new(Hub {
                tx,
                maps: Mutex::new(None),
                listeners: Mutex::new(0),
                suppressed_total: AtomicU64::new(0),
            });
        };
        let hub = Arc::new(Hub {
            tx,
            maps: Mutex::new(Some((ctl, cap))),
            listeners: Mutex::new(0),
            suppressed_total: AtomicU64::new(0),
        });
        let h = hub.clone();
        let spawned = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || h.read(events, budget, names));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "monitor thread; `lockd monitor` will show nothing");
        }
        hub
    }

    /// A new client: the kernel writes events from now until the last client leaves.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        let rx = self.tx.subscribe();
        let mut n = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        if *n == 1 {
            self.switch(true);
        }
        Subscription {
            rx,
            hub: self.clone(),
        }
    }

    fn switch(&self, on: bool) {
        let mut m = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ctl, cap)) = m.as_mut() {
            let v = lockd_common::MonitorCtl {
                enabled: u32::from(on),
                cap: *cap,
            };
            if let Err(e) = ctl.set(0, v, 0) {
                tracing::warn!(error = %e, on, "switching the monitor");
            }
        }
    }

    fn read(
        &self,
        mut events: RingBuf<MapData>,
        budget: aya::maps::Array<MapData, lockd_common::MonitorBudget>,
        names: Names,
    ) {
        let mut last: HashMap<u32, u64> = HashMap::new();
        let mut tick = Instant::now();
        loop {
            let mut pfd = libc::pollfd {
                fd: events.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd.
            let _ = unsafe { libc::poll(&mut pfd, 1, 200) };
            let clock = Clock::now();
            while let Some(item) = events.next() {
                let Some(ev) = parse_event(&item) else {
                    continue;
                };
                let name = names
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&ev.ifindex)
                    .cloned();
                let _ = self
                    .tx
                    .send(Arc::new(event_line(&ev, name.as_ref(), &clock)));
            }
            if tick.elapsed() >= Duration::from_secs(1) {
                tick = Instant::now();
                let named: Vec<(u32, VifName)> = names
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .filter_map(|n| n.counter.map(|c| (c, n.clone())))
                    .collect();
                for (c, n) in named {
                    let now = budget.get(&c, 0).map_or(0, |b| b.suppressed);
                    // The budgets are new with each daemon: a slot not seen yet started at 0.
                    let before = last.insert(c, now).unwrap_or(0);
                    let delta = now.saturating_sub(before);
                    if delta > 0 {
                        self.suppressed_total.fetch_add(delta, Ordering::Relaxed);
                        let _ = self.tx.send(Arc::new(json!({
                            "time": clock.rfc3339_now(),
                            "vif": n.uuid,
                            "device": n.device,
                            "suppressed": delta,
                        })));
                    }
                }
            }
        }
    }
}

/// A client's feed; leaving switches the kernel's events off if it was the last.
pub struct Subscription {
    pub rx: broadcast::Receiver<Arc<Value>>,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut n = self.hub.listeners.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
            self.hub.switch(false);
        }
    }
}

/// What a client asked to see.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub vif: Option<String>,
    pub device: Option<String>,
    pub reason: Option<String>,
}

impl Filter {
    pub fn keeps(&self, line: &Value) -> bool {
        let is = |key: &str, want: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| line[key].as_str() == Some(w.as_str()))
        };
        // A suppressed count has no reason; it is kept for its VIF whatever the reason asked.
        let reason_ok = line.get("suppressed").is_some() || is("reason", &self.reason);
        is("vif", &self.vif) && is("device", &self.device) && reason_ok
    }
}

/// CLOCK_MONOTONIC (the kernel's event time) to wall-clock time.
struct Clock {
    offset_ns: i128,
}

impl Clock {
    fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a live timespec.
            unsafe { libc::clock_gettime(id, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        Clock {
            offset_ns: read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC),
        }
    }

    fn rfc3339(&self, monotonic_ns: u64) -> String {
        rfc3339(i128::from(monotonic_ns) + self.offset_ns)
    }

    fn rfc3339_now(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i128);
        rfc3339(now)
    }
}

/// UTC, millisecond precision: `2026-11-22T19:50:01.123Z` (before 1970: the epoch).
pub fn rfc3339(unix_ns: i128) -> String {
    let since = std::time::Duration::from_nanos(u64::try_from(unix_ns).unwrap_or(0));
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + since).to_string()
}

/// The line for one event read from the ring (`lockd monitor --json`'s object).
pub fn event_json(ev: &DropEvent, name: Option<&VifName>) -> Value {
    event_line(ev, name, &Clock::now())
}

/// Reads one ring buffer record as an event.
pub fn parse_event(bytes: &[u8]) -> Option<DropEvent> {
    (bytes.len() >= size_of::<DropEvent>())
        // SAFETY: the kernel wrote a DropEvent (plain data) of at least this size.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

fn event_line(ev: &DropEvent, name: Option<&VifName>, clock: &Clock) -> Value {
    let caplen = usize::from(ev.caplen).min(ev.frame.len());
    let info = frameinfo::describe(&ev.frame[..caplen], ev.len as usize);
    let reason = Reason::ALL
        .get(usize::from(ev.reason))
        .map_or("unknown", |r| r.name());
    let direction = if ev.direction == Direction::ToVm as u8 {
        Direction::ToVm.name()
    } else {
        Direction::FromVm.name()
    };
    json!({
        "time": clock.rfc3339(ev.time_ns),
        "vif": name.map_or("", |n| n.uuid.as_str()),
        "device": name.map_or_else(|| format!("ifindex {}", ev.ifindex), |n| n.device.clone()),
        "direction": direction,
        "reason": reason,
        "src_mac": info.src_mac,
        "dst_mac": info.dst_mac,
        "src_ip": info.src_ip,
        "dst_ip": info.dst_ip,
        "proto": info.proto,
        "len": ev.len,
        "summary": info.summary,
    })
}

/// The text form of a line (`lockd monitor` without `--json`).
pub fn text(line: &Value) -> String {
    let s = |k: &str| line[k].as_str().unwrap_or("").to_string();
    if let Some(n) = line["suppressed"].as_u64() {
        return format!(
            "{} {} {}: {n} events suppressed",
            s("time"),
            s("device"),
            s("vif")
        );
    }
    let addrs = if s("src_ip").is_empty() {
        String::new()
    } else {
        format!(" {} → {}", s("src_ip"), s("dst_ip"))
    };
    format!(
        "{} {} {} {} {} {} → {}{addrs} {} ({} bytes)",
        s("time"),
        s("device"),
        s("vif"),
        s("direction"),
        s("reason"),
        s("src_mac"),
        s("dst_mac"),
        s("proto"),
        line["len"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2026-11-22T19:50:01.123Z
        assert_eq!(
            rfc3339(1_795_377_001_123_000_000),
            "2026-11-22T19:50:01.123Z"
        );
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn filters_keep_what_was_asked() {
        let ev = json!({"vif": "u1", "device": "vif1.0", "reason": "ipv4_spoof"});
        let sup = json!({"vif": "u1", "device": "vif1.0", "suppressed": 3});
        let f = Filter {
            reason: Some("arp_spoof".into()),
            ..Default::default()
        };
        assert!(!f.keeps(&ev));
        assert!(f.keeps(&sup));
        let f = Filter {
            vif: Some("u2".into()),
            ..Default::default()
        };
        assert!(!f.keeps(&ev) && !f.keeps(&sup));
        assert!(Filter::default().keeps(&ev));
    }
}
