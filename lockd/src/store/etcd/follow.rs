//! The watch: follows every key under the prefix from the revision this host has, through
//! whichever member answers, and hands what changed to the core (its `wake`). When no member
//! answers it retries, and resumes from where it was; when etcd compacted past that, it reads
//! everything anew.

use std::{sync::Arc, sync::atomic::Ordering, time::Duration};

use etcd_client::{EventType, WatchOptions};

use super::{Members, Shared, cache::Kv};

/// What the watch hands over.
pub(super) enum Incoming {
    /// Keys put (`Some`) or deleted (`None`), each at its revision; every change up to
    /// `revision` is in.
    Events {
        revision: i64,
        kvs: Vec<(String, Option<Vec<u8>>, i64)>,
    },
    /// Every key, at `revision`.
    Everything { revision: i64, kvs: Vec<Kv> },
}

pub(super) struct Follow {
    pub(super) members: Arc<Members>,
    pub(super) shared: Arc<Shared>,
    pub(super) prefix: String,
    /// The next revision to watch from; 0: read everything first.
    pub(super) from: i64,
    pub(super) wake: Box<dyn Fn() + Send + Sync>,
}

impl Follow {
    async fn hand(&self, i: Incoming) {
        // The tests widen the window in which another host's change is not yet applied here
        // (the `test-hooks` feature only), to race two hosts' commands deterministically.
        #[cfg(feature = "test-hooks")]
        if let Some(ms) = std::env::var("LOCKD_ETCD_APPLY_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        self.shared
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(i);
        (self.wake)();
    }

    fn down(&self, why: &str, wait: &mut Duration) {
        if self.shared.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(from = self.from, "store unavailable: {why}; enforcing what this host has until etcd is back");
        } else {
            tracing::debug!("store still unavailable: {why}");
        }
        *wait = (*wait * 2).min(Duration::from_secs(1));
    }

    pub(super) async fn run(mut self) {
        let mut wait = Duration::from_millis(50);
        loop {
            if self.from == 0 {
                match self.members.get_all(&self.prefix).await {
                    Ok((kvs, revision)) => {
                        self.from = revision + 1;
                        self.hand(Incoming::Everything { revision, kvs }).await;
                    }
                    Err(e) => {
                        self.down(&e, &mut wait);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
            }
            let (prefix, from) = (self.prefix.clone(), self.from);
            let opened = self
                .members
                .call(|mut c| {
                    let prefix = prefix.clone();
                    async move {
                        c.watch(
                            prefix,
                            Some(
                                WatchOptions::new()
                                    .with_prefix()
                                    .with_start_revision(from)
                                    .with_progress_notify(),
                            ),
                        )
                        .await
                    }
                })
                .await;
            let mut stream = match opened {
                Ok((s, _)) => s,
                Err(e) => {
                    self.down(&e, &mut wait);
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            loop {
                let resp = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        self.down("the watch ended", &mut wait);
                        break;
                    }
                    Err(e) => {
                        self.down(&e.to_string(), &mut wait);
                        break;
                    }
                };
                if resp.compact_revision() > 0 || resp.canceled() {
                    tracing::warn!(from = self.from, compacted = resp.compact_revision(), reason = resp.cancel_reason(), "etcd no longer has this host's revision; reading everything");
                    self.from = 0;
                    break;
                }
                if !self.shared.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(from = self.from, "following the pool's state in etcd");
                    wait = Duration::from_millis(50);
                    // The state (up) changed: /metrics and the core see it.
                    (self.wake)();
                }
                let header = resp.header().map_or(0, |h| h.revision());
                let kvs: Vec<_> = resp
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        let key = String::from_utf8(kv.key().to_vec()).ok()?;
                        let value = match e.event_type() {
                            EventType::Put => Some(kv.value().to_vec()),
                            EventType::Delete => None,
                        };
                        Some((key, value, kv.mod_revision()))
                    })
                    .collect();
                let Some(last) = kvs.iter().map(|k| k.2).max() else {
                    // A progress notice: nothing changed up to `header`.
                    if header >= self.from {
                        self.from = header + 1;
                    }
                    continue;
                };
                self.from = last + 1;
                self.hand(Incoming::Events {
                    revision: last,
                    kvs,
                })
                .await;
            }
            tokio::time::sleep(wait).await;
        }
    }
}
