//! The daemon's persistent state: networks and VIFs as the operator configured them, typed
//! ([`NetworkSettings`], [`VifSettings`]). A command changes it by a list of [`Change`]s, which
//! the daemon applies to its in-memory [`State`] and commits to a [`Store`] in one durable
//! transaction that writes only what changed.
//!
//! The default store is SQLite ([`sqlite::SqliteStore`], `lockd.db` in the state directory);
//! the pool-wide one is etcd ([`etcd::EtcdStore`]), which other hosts change too: the daemon
//! follows it ([`Store::follow`]) and applies what they wrote ([`Store::take_remote`]).

pub mod etcd;
mod legacy;
pub mod sqlite;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
};

use lockd_common::{
    policy::VifPolicy,
    settings::{NetworkSettings, VifSettings},
};

pub use sqlite::SqliteStore;

/// One change to the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Creates or replaces a network.
    PutNetwork(NetworkSettings),
    /// Removes a network (by uuid).
    DeleteNetwork(String),
    /// Creates or replaces a VIF.
    PutVif(VifSettings),
    /// Removes a VIF (by uuid).
    DeleteVif(String),
}

/// A stored VIF row that failed validation: it is not one of the state's VIFs, and the
/// netdevs it names are held disabled until the row is replaced (POLICY.md, failing closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadVif {
    /// The row's uuid, as stored.
    pub uuid: String,
    /// The netdevs the row names (its device and extra devices), as far as they can be read.
    pub devices: Vec<String>,
    /// What is wrong with it: the column and why.
    pub reason: String,
}

/// Everything the daemon persists, with an index from netdev name to VIF.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    networks: BTreeMap<String, NetworkSettings>,
    vifs: BTreeMap<String, VifSettings>,
    by_device: HashMap<String, String>,
    bad_vifs: BTreeMap<String, BadVif>,
}

impl State {
    /// The stored VIF rows that failed validation.
    pub fn bad_vifs(&self) -> impl Iterator<Item = &BadVif> {
        self.bad_vifs.values()
    }

    /// The bad rows as they are now, to put back with [`State::restore_bad_vifs`] if the
    /// changes applied after this are undone (a valid VIF replacing a bad row is not undone
    /// by its own undo change).
    pub fn bad_vifs_snapshot(&self) -> BTreeMap<String, BadVif> {
        self.bad_vifs.clone()
    }

    /// Puts back bad rows saved by [`State::bad_vifs_snapshot`].
    pub fn restore_bad_vifs(&mut self, saved: BTreeMap<String, BadVif>) {
        self.bad_vifs = saved;
    }

    /// Records a stored row that failed validation.
    pub fn add_bad_vif(&mut self, bad: BadVif) {
        self.bad_vifs.insert(bad.uuid.clone(), bad);
    }

    pub fn networks(&self) -> impl Iterator<Item = &NetworkSettings> {
        self.networks.values()
    }

    pub fn vifs(&self) -> impl Iterator<Item = &VifSettings> {
        self.vifs.values()
    }

    pub fn network(&self, uuid: &str) -> Option<&NetworkSettings> {
        self.networks.get(uuid)
    }

    pub fn vif(&self, uuid: &str) -> Option<&VifSettings> {
        self.vifs.get(uuid)
    }

    /// The VIF that owns netdev `device`.
    pub fn vif_by_device(&self, device: &str) -> Option<&VifSettings> {
        self.vifs.get(self.by_device.get(device)?)
    }

    /// The bad stored row that names netdev `device`, if one does.
    pub fn bad_vif_by_device(&self, device: &str) -> Option<&BadVif> {
        self.bad_vifs
            .values()
            .find(|b| b.devices.iter().any(|d| d == device))
    }

    /// The VIFs on network `uuid`.
    pub fn vifs_on<'a>(&'a self, uuid: &'a str) -> impl Iterator<Item = &'a VifSettings> {
        self.vifs.values().filter(move |v| v.network_uuid == uuid)
    }

    /// What the dataplane enforces for `vif` (its mode resolved against its network).
    pub fn policy(&self, vif: &VifSettings) -> VifPolicy {
        vif.policy(self.network(&vif.network_uuid))
    }

    /// Applies `change` and returns the change that undoes it.
    pub fn apply(&mut self, change: Change) -> Change {
        match change {
            Change::PutNetwork(n) => match self.networks.insert(n.uuid.clone(), n.clone()) {
                Some(old) => Change::PutNetwork(old),
                None => Change::DeleteNetwork(n.uuid),
            },
            Change::DeleteNetwork(uuid) => match self.networks.remove(&uuid) {
                Some(old) => Change::PutNetwork(old),
                None => Change::DeleteNetwork(uuid),
            },
            Change::PutVif(v) => {
                let uuid = v.uuid.clone();
                // A valid VIF replaces a bad stored row of the same uuid.
                self.bad_vifs.remove(&uuid);
                let devices: Vec<String> = v.devices().cloned().collect();
                let old = self.vifs.insert(uuid.clone(), v);
                if let Some(o) = &old {
                    for d in o.devices() {
                        if !devices.contains(d) && self.by_device.get(d) == Some(&uuid) {
                            self.by_device.remove(d);
                        }
                    }
                }
                for d in devices {
                    self.by_device.insert(d, uuid.clone());
                }
                match old {
                    Some(old) => Change::PutVif(old),
                    None => Change::DeleteVif(uuid),
                }
            }
            Change::DeleteVif(uuid) => match self.vifs.remove(&uuid) {
                // A bad stored row deleted: its undo cannot rebuild it (callers that may undo
                // keep a `bad_vifs_snapshot`).
                None if self.bad_vifs.remove(&uuid).is_some() => Change::DeleteVif(uuid),
                Some(old) => {
                    for d in old.devices() {
                        if self.by_device.get(d) == Some(&uuid) {
                            self.by_device.remove(d);
                        }
                    }
                    Change::PutVif(old)
                }
                None => Change::DeleteVif(uuid),
            },
        }
    }

    /// The netdev names whose enforcement `change` may alter, read before it is applied: a
    /// VIF's old and new device, or every device on a changed network.
    pub fn devices_touched(&self, change: &Change, out: &mut Vec<String>) {
        match change {
            Change::PutNetwork(n) => {
                out.extend(self.vifs_on(&n.uuid).flat_map(|v| v.devices().cloned()))
            }
            Change::DeleteNetwork(u) => {
                out.extend(self.vifs_on(u).flat_map(|v| v.devices().cloned()))
            }
            Change::PutVif(v) => {
                out.extend(v.devices().cloned());
                out.extend(
                    self.vif(&v.uuid)
                        .into_iter()
                        .flat_map(|o| o.devices().cloned()),
                );
                if let Some(b) = self.bad_vifs.get(&v.uuid) {
                    out.extend(b.devices.iter().cloned());
                }
            }
            Change::DeleteVif(u) => {
                out.extend(self.vif(u).into_iter().flat_map(|o| o.devices().cloned()));
                if let Some(b) = self.bad_vifs.get(u) {
                    out.extend(b.devices.iter().cloned());
                }
            }
        }
    }
}

/// Errors of a state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store exists but could not be opened or read.
    #[error("cannot read state store {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    /// The store holds something that is not valid state; it is left untouched.
    #[error(
        "state store {path} is corrupt ({reason}); lockd will not start over it and will not \
         overwrite it: fix or move it away"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// A commit failed; the store is as it was before it.
    #[error("cannot write state store {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    /// No member of a pool-wide store answered; nothing was written.
    #[error("store unavailable: {reason} ({store})")]
    Unavailable { store: String, reason: String },
    /// A key the command read was changed by another host before the command committed;
    /// nothing was written.
    #[error("conflict: {what} was changed on another host meanwhile (retry the command)")]
    Conflict { what: String },
}

/// A pool-wide store's state, for `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Whether a member answers.
    pub up: bool,
    /// The store's revision up to which this host has applied every change.
    pub revision: i64,
}

/// Where state is kept.
pub trait Store: Send {
    /// Everything stored.
    fn load(&mut self) -> Result<State, StoreError>;
    /// Writes `changes` in one transaction, durable on return; on an error nothing is written.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Whether [`Store::idle`] has work: the daemon calls it once it has been idle a moment.
    fn idle_due(&self) -> bool {
        false
    }
    /// Housekeeping kept off the commands' path (a WAL checkpoint).
    fn idle(&mut self) {}
    /// Starts following what other hosts write (a store only this daemon writes has none);
    /// `wake` is called when there is some to take.
    fn follow(&mut self, _wake: Box<dyn Fn() + Send + Sync>) {}
    /// Applies to `state` what other hosts wrote since the last call, and returns the netdevs
    /// whose enforcement it may change.
    fn take_remote(&mut self, _state: &mut State) -> Vec<String> {
        Vec::new()
    }
    /// A pool-wide store's state.
    fn status(&self) -> Option<StoreStatus> {
        None
    }
}

/// Where the daemon keeps its state: `sqlite:PATH` (a directory; the default is the state
/// directory) or `etcd://HOST:PORT[,HOST:PORT…]/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUrl {
    Sqlite(Option<PathBuf>),
    Etcd(etcd::EtcdConfig),
}

impl std::str::FromStr for StoreUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("sqlite:") {
            return Ok(Self::Sqlite((!p.is_empty()).then(|| PathBuf::from(p))));
        }
        if s.starts_with("etcd://") {
            return etcd::EtcdConfig::parse(s).map(Self::Etcd);
        }
        Err(format!(
            "{s}: a store is sqlite:PATH or etcd://HOST:PORT[,HOST:PORT…]/PREFIX"
        ))
    }
}

/// Opens the default store in `dir`, migrating a `state.json` of an earlier release into it
/// (the file is then kept as `state.json.migrated`).
pub fn open_default(dir: &std::path::Path) -> Result<SqliteStore, StoreError> {
    let mut store = SqliteStore::open(dir)?;
    legacy::migrate(dir, &mut store)?;
    Ok(store)
}
