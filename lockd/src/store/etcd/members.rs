//! The members of the cluster, each with its own client: a request goes to the member that
//! answered last, then to each other in turn (the crate's own balanced channel goes on
//! sending to a member that is gone).

use std::{
    sync::{Mutex, atomic::Ordering},
    time::Duration,
};

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::{ELECTION_BOUND, REQUEST_TIMEOUT, cache::Kv};

/// Why a request reached no member.
fn unavailable(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            use std::error::Error as _;
            match s.source() {
                Some(src) => format!("{}: {src}", s.message()),
                None => s.message().to_string(),
            }
        }
        other => other.to_string(),
    }
}

/// Whether the request may have reached etcd (so a retry elsewhere may find it done).
fn maybe_applied(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => !s.message().contains("connect"),
        _ => false,
    }
}

/// The members, each with a client made when first used (making one with a user
/// authenticates, which needs the member up).
pub(super) struct Members {
    pub(super) urls: Vec<String>,
    pub(super) options: ConnectOptions,
    pub(super) clients: Mutex<Vec<Option<Client>>>,
    /// The member the last request went to.
    pub(super) current: std::sync::atomic::AtomicUsize,
}

impl Members {
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        if let Some(c) = self.lock()[i].clone() {
            return Ok(c);
        }
        let c = Client::connect([&self.urls[i]], Some(self.options.clone())).await?;
        self.lock()[i] = Some(c.clone());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<Client>>> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `op` on the current member, then on each other in turn while none answers;
    /// while members answer but have no leader (an election), again, for a few seconds.
    /// Returns its answer and whether an earlier attempt may have been applied.
    pub(super) async fn call<T, F, Fut>(&self, mut op: F) -> Result<(T, bool), String>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.urls.len();
        let started = tokio::time::Instant::now();
        let mut uncertain = false;
        loop {
            let first = self.current.load(Ordering::Relaxed);
            let mut errors = Vec::new();
            let mut electing = false;
            for k in 0..n {
                let i = (first + k) % n;
                // The bound is on each request, not on the channel: a watch's stream lives on.
                let r = match self.client(i).await {
                    Ok(c) => match tokio::time::timeout(REQUEST_TIMEOUT, op(c)).await {
                        Ok(r) => r.map_err(|e| (unavailable(&e), maybe_applied(&e))),
                        Err(_) => Err((format!("no answer within {REQUEST_TIMEOUT:?}"), true)),
                    },
                    Err(e) => Err((unavailable(&e), false)),
                };
                match r {
                    Ok(t) => {
                        self.current.store(i, Ordering::Relaxed);
                        return Ok((t, uncertain));
                    }
                    Err((why, maybe)) => {
                        uncertain |= maybe;
                        electing |= why.contains("leader");
                        // A client whose authentication or channel failed is made anew next time.
                        self.lock()[i] = None;
                        errors.push(format!("{}: {why}", self.urls[i]));
                    }
                }
            }
            if !electing || started.elapsed() > ELECTION_BOUND {
                return Err(errors.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything under `prefix` and the revision it is at.
    pub(super) async fn get_all(&self, prefix: &str) -> Result<(Vec<Kv>, i64), String> {
        let (mut resp, _) = self
            .call(|mut c| async move {
                c.get(prefix, Some(GetOptions::new().with_prefix())).await
            })
            .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs = resp
            .take_kvs()
            .into_iter()
            .filter_map(|kv| {
                Some(Kv {
                    key: String::from_utf8(kv.key().to_vec()).ok()?,
                    value: kv.value().to_vec(),
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect();
        Ok((kvs, revision))
    }
}

