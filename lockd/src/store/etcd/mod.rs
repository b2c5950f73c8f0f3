//! The pool-wide store: etcd (v3 API, through the `etcd-client` crate). Every host's daemon
//! keeps the pool's networks and VIFs under one prefix; a command is one etcd transaction,
//! guarded by the revisions of the keys it read, so two hosts changing one VIF at once cannot
//! both win. Each daemon follows the prefix with a watch and enforces the VIFs whose netdevs
//! it has; a copy of every key (`cache.rs`) keeps it enforcing, across restarts, while etcd is
//! unreachable.
//!
//! The members are tried in turn: a request that cannot reach one goes to the next (the
//! crate's own balanced channel goes on sending to a member that is gone).

mod cache;
mod codec;
mod follow;
mod members;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use etcd_client::{
    Certificate, Compare, CompareOp, ConnectOptions, Identity, TlsOptions,
    Txn, TxnOp, TxnOpResponse,
};

pub use cache::CACHE_FILE;
use cache::{Cache, Kv};
use members::Members;
use codec::Key;

use super::{Change, State, Store, StoreError, StoreStatus};

/// How long a request waits for a member before the next is tried.
pub(super) const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an idle connection is checked (a member whose host is gone shows as down
/// after this and the ping's timeout; a member whose process died, at once).
const KEEPALIVE: Duration = Duration::from_secs(6);
/// How long a request waits for members that answer but have no leader: an election takes
/// about a second with etcd's default timings.
pub(super) const ELECTION_BOUND: Duration = Duration::from_secs(5);

/// `etcd://HOST:PORT[,HOST:PORT…]/PREFIX` and how to authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// `/PREFIX`, without a trailing slash.
    pub prefix: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdConfig {
    /// Parses the URL (the rest of the settings are the daemon's flags).
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{url}: an etcd store is etcd://HOST:PORT[,HOST:PORT…]/PREFIX"))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| format!("{url}: no /PREFIX after the endpoints"))?;
        let prefix = format!("/{}", prefix.trim_matches('/'));
        if prefix == "/" {
            return Err(format!("{url}: the prefix is empty"));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let ok = h
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(format!("{url}: endpoint {h:?} is not HOST:PORT"));
            }
            endpoints.push(h.to_string());
        }
        Ok(Self {
            endpoints,
            prefix,
            cacert: None,
            cert: None,
            key: None,
            user: None,
            password: None,
        })
    }

    fn tls(&self) -> Result<Option<TlsOptions>, String> {
        if self.cacert.is_none() && self.cert.is_none() && self.key.is_none() {
            return Ok(None);
        }
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => return Err("--etcd-cert and --etcd-key go together".into()),
        }
        Ok(Some(tls))
    }

    fn options(&self) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // etcd refuses pings closer than 5 s (`--grpc-keepalive-min-time`) and closes
            // the connection of a client that sends them.
            .with_keep_alive(KEEPALIVE, Duration::from_secs(3))
            .with_require_leader(true);
        match (&self.user, &self.password) {
            (Some(u), Some(p)) => o = o.with_user(u.clone(), p.clone()),
            (None, None) => {}
            _ => return Err("--etcd-user and --etcd-password go together".into()),
        }
        if let Some(t) = self.tls()? {
            o = o.with_tls(t);
        }
        Ok(o)
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls().ok().flatten().is_some() { "https" } else { "http" };
        self.endpoints.iter().map(|e| format!("{scheme}://{e}")).collect()
    }

    /// What the local cache belongs to.
    fn identity(&self) -> String {
        format!("etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

/// A key's revision as this host last saw it, and whether it exists then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    revision: i64,
    exists: bool,
}

/// What the store shares with its watch and with `/metrics`.
pub(super) struct Shared {
    up: AtomicBool,
    /// The revision up to which every change is applied here.
    revision: AtomicI64,
    inbox: Mutex<std::collections::VecDeque<follow::Incoming>>,
}

/// The etcd store.
pub struct EtcdStore {
    cfg: EtcdConfig,
    rt: tokio::runtime::Runtime,
    members: Arc<Members>,
    shared: Arc<Shared>,
    cache: Cache,
    seen: HashMap<String, Seen>,
    /// Where the watch starts: the revision after the one loaded (0: read everything first).
    follow_from: i64,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("store", &self.cfg.identity()).finish()
    }
}

impl EtcdStore {
    /// Prepares the store (nothing is read yet), with its cache in `dir`.
    pub fn open(cfg: EtcdConfig, dir: &Path) -> Result<Self, StoreError> {
        let bad = |reason: String| StoreError::Read {
            path: PathBuf::from(cfg.identity()),
            reason,
        };
        let options = cfg.options().map_err(bad)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let members = Arc::new(Members {
            clients: Mutex::new(vec![None; cfg.endpoints.len()]),
            urls: cfg.urls(),
            options,
            current: Default::default(),
        });
        let cache = Cache::open(dir, &cfg.identity())?;
        Ok(Self {
            cfg,
            rt,
            members,
            shared: Arc::new(Shared {
                up: AtomicBool::new(false),
                revision: AtomicI64::new(0),
                inbox: Default::default(),
            }),
            cache,
            seen: HashMap::new(),
            follow_from: 0,
        })
    }

    fn unavailable(&self, reason: String) -> StoreError {
        self.shared.up.store(false, Ordering::Relaxed);
        StoreError::Unavailable {
            store: self.cfg.identity(),
            reason,
        }
    }

    /// A state from a full read (of etcd or of the cache), and each key's revision.
    fn decode_all(&self, kvs: &[Kv]) -> (State, HashMap<String, Seen>) {
        let mut state = State::default();
        let mut seen = HashMap::with_capacity(kvs.len());
        let mut devices = Vec::new();
        // Networks first: a VIF's policy is read against its network.
        let mut items: Vec<_> = kvs
            .iter()
            .filter_map(|kv| Some((codec::parse_key(&self.cfg.prefix, kv.key.as_bytes())?, kv)))
            .collect();
        items.sort_by_key(|(k, _)| matches!(k, Key::Vif(_)));
        for (k, kv) in items {
            seen.insert(kv.key.clone(), Seen { revision: kv.mod_revision, exists: true });
            codec::apply(&mut state, codec::decode(&k, Some(&kv.value)), &mut devices);
        }
        (state, seen)
    }
}

impl Store for EtcdStore {
    /// Reads everything from etcd (and keeps a copy); if no member answers, what the copy
    /// holds. With neither, the daemon does not start: what it already enforces stays pinned.
    fn load(&mut self) -> Result<State, StoreError> {
        let prefix = self.cfg.prefix.clone();
        match self.rt.block_on(self.members.get_all(&prefix)) {
            Ok((kvs, revision)) => {
                self.cache.replace(&kvs, revision)?;
                let (state, seen) = self.decode_all(&kvs);
                self.seen = seen;
                self.follow_from = revision + 1;
                self.shared.up.store(true, Ordering::Relaxed);
                self.shared.revision.store(revision, Ordering::Relaxed);
                tracing::info!(store = %self.cfg.identity(), revision, keys = kvs.len(), "read the pool's state from etcd");
                Ok(state)
            }
            Err(reason) => {
                let cached = self.cache.load()?;
                if cached.revision == 0 {
                    return Err(StoreError::Unavailable {
                        store: self.cfg.identity(),
                        reason: format!(
                            "{reason}; and this host has no copy of the pool's state yet: lockd \
                             will not start without its policy (what is pinned stays enforced)"
                        ),
                    });
                }
                tracing::warn!(store = %self.cfg.identity(), revision = cached.revision, "store unavailable: {reason}; enforcing this host's copy of the pool's state until etcd is back");
                let (state, seen) = self.decode_all(&cached.kvs);
                self.seen = seen;
                self.follow_from = cached.revision + 1;
                self.shared.revision.store(cached.revision, Ordering::Relaxed);
                Ok(state)
            }
        }
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let prefix = &self.cfg.prefix;
        // The last change to each key is what the transaction writes.
        let mut writes: BTreeMap<String, (Key, Option<Vec<u8>>)> = BTreeMap::new();
        let mut reads: BTreeMap<String, Key> = BTreeMap::new();
        for c in changes {
            let k = codec::change_key(c);
            // A VIF is written against the network it was read with.
            if let Change::PutVif(v) = c {
                let n = Key::Network(v.network_uuid.clone());
                reads.insert(codec::key_of(prefix, &n), n);
            }
            writes.insert(codec::key_of(prefix, &k), (k, codec::change_value(c)));
        }
        let guard = |key: &str| match self.seen.get(key) {
            Some(s) if s.exists => Compare::mod_revision(key, CompareOp::Equal, s.revision),
            _ => Compare::version(key, CompareOp::Equal, 0),
        };
        let compares: Vec<Compare> = writes
            .keys()
            .chain(reads.keys().filter(|k| !writes.contains_key(*k)))
            .map(|k| guard(k))
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, (_, v))| match v {
                Some(v) => TxnOp::put(k.as_str(), v.clone(), None),
                None => TxnOp::delete(k.as_str(), None),
            })
            .collect();
        // On a failed guard: what each written key holds now.
        let current: Vec<TxnOp> = writes.keys().map(|k| TxnOp::get(k.as_str(), None)).collect();
        let txn = Txn::new().when(compares).and_then(ops).or_else(current);
        let (resp, uncertain) = self
            .rt
            .block_on(self.members.call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }))
            .map_err(|r| self.unavailable(r))?;
        self.shared.up.store(true, Ordering::Relaxed);
        let revision = if resp.succeeded() {
            resp.header().map_or(0, |h| h.revision())
        } else {
            // What each key holds now: exactly what this transaction writes means an attempt
            // that seemed lost was applied.
            let now: Vec<Option<(Vec<u8>, i64)>> = resp
                .op_responses()
                .into_iter()
                .map(|r| match r {
                    TxnOpResponse::Get(g) => g
                        .kvs()
                        .first()
                        .map(|kv| (kv.value().to_vec(), kv.mod_revision())),
                    _ => None,
                })
                .collect();
            let same = now.len() == writes.len()
                && writes
                    .values()
                    .zip(&now)
                    .all(|((_, want), got)| want.as_deref() == got.as_ref().map(|g| g.0.as_slice()));
            let applied_at = now.iter().flatten().map(|g| g.1).max();
            match applied_at {
                Some(rev) if uncertain && same => rev,
                _ => {
                    let what: Vec<String> = writes
                        .values()
                        .map(|(k, _)| match k {
                            Key::Network(u) => format!("network {u}"),
                            Key::Vif(u) => format!("VIF {u}"),
                        })
                        .collect();
                    return Err(StoreError::Conflict {
                        what: what.join(", "),
                    });
                }
            }
        };
        let mut cached = Vec::with_capacity(writes.len());
        for (key, (_, value)) in writes {
            self.seen.insert(
                key.clone(),
                Seen {
                    revision,
                    exists: value.is_some(),
                },
            );
            cached.push((key, value, revision));
        }
        self.cache.update(&cached, None)
    }

    fn follow(&mut self, wake: Box<dyn Fn() + Send + Sync>) {
        let task = follow::Follow {
            members: self.members.clone(),
            shared: self.shared.clone(),
            prefix: self.cfg.prefix.clone(),
            from: self.follow_from,
            wake,
        };
        self.rt.spawn(task.run());
    }

    fn take_remote(&mut self, state: &mut State) -> Vec<String> {
        let incoming: Vec<_> = self
            .shared
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        let mut devices = Vec::new();
        for i in incoming {
            match i {
                follow::Incoming::Events { revision, kvs } => {
                    self.absorb(state, &kvs, revision, &mut devices)
                }
                follow::Incoming::Everything { revision, kvs } => {
                    self.replace(state, kvs, revision, &mut devices)
                }
            }
        }
        devices.sort();
        devices.dedup();
        devices
    }

    fn status(&self) -> Option<StoreStatus> {
        Some(StoreStatus {
            up: self.shared.up.load(Ordering::Relaxed),
            revision: self.shared.revision.load(Ordering::Relaxed),
        })
    }
}

impl EtcdStore {
    /// Applies the watch's events at `revision`, skipping what this host already has (its own
    /// commits come back through the watch too).
    fn absorb(
        &mut self,
        state: &mut State,
        kvs: &[(String, Option<Vec<u8>>, i64)],
        revision: i64,
        devices: &mut Vec<String>,
    ) {
        for (key, value, rev) in kvs {
            if self.seen.get(key).is_some_and(|s| s.revision >= *rev) {
                continue;
            }
            self.seen.insert(
                key.clone(),
                Seen {
                    revision: *rev,
                    exists: value.is_some(),
                },
            );
            let Some(k) = codec::parse_key(&self.cfg.prefix, key.as_bytes()) else {
                continue;
            };
            codec::apply(state, codec::decode(&k, value.as_deref()), devices);
        }
        if let Err(e) = self.cache.update(kvs, Some(revision)) {
            tracing::warn!(error = %e, "keeping the local copy of the pool's state");
        }
        self.shared.revision.store(revision, Ordering::Relaxed);
    }

    /// Replaces the state by a full read at `revision` (after etcd compacted past this
    /// host's revision, or at a start from the cache), keeping what this host committed
    /// after it.
    fn replace(&mut self, state: &mut State, kvs: Vec<Kv>, revision: i64, devices: &mut Vec<String>) {
        let (mut new, mut seen) = self.decode_all(&kvs);
        let mut kept = Vec::new();
        for (key, s) in &self.seen {
            if s.revision > revision {
                seen.insert(key.clone(), *s);
                kept.push(key.clone());
            }
        }
        for key in kept {
            let change = match codec::parse_key(&self.cfg.prefix, key.as_bytes()) {
                Some(Key::Network(u)) => match state.network(&u) {
                    Some(n) => Change::PutNetwork(n.clone()),
                    None => Change::DeleteNetwork(u),
                },
                Some(Key::Vif(u)) => match state.vif(&u) {
                    Some(v) => Change::PutVif(v.clone()),
                    None => Change::DeleteVif(u),
                },
                None => continue,
            };
            new.apply(change);
        }
        // Every netdev whose VIF (or its network, or its bad row) is not what it was.
        for v in state.vifs().chain(new.vifs()) {
            let (a, b) = (state.vif(&v.uuid), new.vif(&v.uuid));
            let pa = a.map(|a| state.policy(a));
            let pb = b.map(|b| new.policy(b));
            if a != b || pa != pb {
                devices.extend(v.devices().cloned());
            }
        }
        for b in state.bad_vifs().chain(new.bad_vifs()) {
            devices.extend(b.devices.iter().cloned());
        }
        if let Err(e) = self.cache.replace(&kvs, revision) {
            tracing::warn!(error = %e, "keeping the local copy of the pool's state");
        }
        tracing::info!(revision, keys = kvs.len(), "re-read the pool's state from etcd");
        *state = new;
        self.seen = seen;
        self.shared.revision.store(revision, Ordering::Relaxed);
    }
}
