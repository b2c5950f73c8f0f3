//! The daemon's persistent state: networks and VIFs as the operator configured them, stored as
//! one JSON file in the state directory and replaced atomically (temp file, fsync, rename,
//! fsync of the directory). A file that cannot be read or parsed is never overwritten.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use lockd_common::{
    DEFAULT_TIMESLICE_US,
    policy::{
        DefaultLockingMode, LockingMode, RateLimit, VifPolicy, parse_ipv4_list, parse_ipv6_list,
        parse_mac,
    },
};
use serde::{Deserialize, Serialize};

/// Format version of the state file.
pub const STATE_VERSION: u32 = 1;
const FILE: &str = "state.json";

/// A network and its default locking mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub uuid: String,
    pub name_label: String,
    pub default_locking_mode: DefaultLockingMode,
}

/// The VIF QoS setting (`qos_algorithm_type` and its params), as xapi stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    /// `ratelimit` or empty.
    pub algorithm_type: String,
    /// Kilobytes (1024 B) per second.
    pub kbps: Option<u64>,
    /// Bucket depth in microseconds of the rate (default 50 000).
    pub timeslice_us: Option<u64>,
}

impl Qos {
    /// The limit in force: `ratelimit` with a rate set.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        match (self.algorithm_type.as_str(), self.kbps) {
            ("ratelimit", Some(kbps)) => Some(RateLimit {
                kbps,
                timeslice_us: self.timeslice_us.unwrap_or(DEFAULT_TIMESLICE_US),
            }),
            _ => None,
        }
    }
}

/// One VIF as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vif {
    pub uuid: String,
    pub network_uuid: String,
    /// Host-side netdev name (`vif3.0`, `tap3.0`, a veth in tests).
    pub device: String,
    /// Guest MAC, lowercase colon form.
    pub mac: String,
    pub vm_uuid: Option<String>,
    pub locking_mode: LockingMode,
    /// Canonical items (`a.b.c.d` or `a.b.c.d/n`), validated when set.
    pub ipv4_allowed: Vec<String>,
    pub ipv6_allowed: Vec<String>,
    pub qos: Qos,
}

/// Everything the daemon persists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub version: u32,
    pub networks: BTreeMap<String, Network>,
    pub vifs: BTreeMap<String, Vif>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            version: STATE_VERSION,
            networks: BTreeMap::new(),
            vifs: BTreeMap::new(),
        }
    }
}

/// A stored VIF whose fields no longer parse (only possible if the file was edited by hand).
#[derive(Debug, thiserror::Error)]
#[error("VIF {uuid}: stored {field} is invalid: {reason}")]
pub struct BadStoredVif {
    pub uuid: String,
    pub field: &'static str,
    pub reason: String,
}

impl State {
    /// The dataplane policy of a VIF: its mode resolved against its network, its lists parsed.
    pub fn policy(&self, vif: &Vif) -> Result<VifPolicy, BadStoredVif> {
        let bad = |field, reason: String| BadStoredVif {
            uuid: vif.uuid.clone(),
            field,
            reason,
        };
        let network_default = self
            .networks
            .get(&vif.network_uuid)
            .map(|n| n.default_locking_mode)
            .unwrap_or_default();
        Ok(VifPolicy {
            mode: vif.locking_mode.effective(network_default),
            mac: parse_mac(&vif.mac).map_err(|e| bad("mac", e.to_string()))?,
            ipv4: parse_ipv4_list(&vif.ipv4_allowed.join(","))
                .map_err(|e| bad("ipv4-allowed", e.to_string()))?,
            ipv6: parse_ipv6_list(&vif.ipv6_allowed.join(","))
                .map_err(|e| bad("ipv6-allowed", e.to_string()))?,
            rate: vif.qos.rate_limit(),
        })
    }
}

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but could not be read.
    #[error("cannot read state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid state; it is left untouched for the operator to inspect.
    #[error(
        "state file {path} is corrupt ({reason}); lockd will not start over it and will not \
         overwrite it: fix or move it away"
    )]
    Corrupt { path: PathBuf, reason: String },
    /// Writing the new state failed; the previous file is intact.
    #[error("cannot write state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The embedded default store: one JSON file in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Loads the state; a missing file is the empty state.
    pub fn load(&self) -> Result<State, StoreError> {
        let path = self.path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(StoreError::Corrupt {
                    path,
                    reason: "not UTF-8".into(),
                });
            }
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let state: State = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("unknown version {}", state.version),
            });
        }
        Ok(state)
    }

    /// Replaces the state file atomically and durably.
    pub fn save(&self, state: &State) -> Result<(), StoreError> {
        let path = self.path();
        let wrap = |source| StoreError::Write {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(&self.dir).map_err(wrap)?;
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let mut f = File::create(&tmp).map_err(wrap)?;
        let text = serde_json::to_vec_pretty(state).map_err(|e| wrap(io::Error::other(e)))?;
        f.write_all(&text).map_err(wrap)?;
        f.sync_all().map_err(wrap)?;
        drop(f);
        fs::rename(&tmp, &path).map_err(wrap)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(wrap)?;
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_is_kept() {
        let dir = std::env::temp_dir().join(format!("lockd-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let store = Store::new(&dir);
        assert_eq!(store.load().unwrap(), State::default());
        let mut s = State::default();
        s.networks.insert(
            "n".into(),
            Network {
                uuid: "n".into(),
                name_label: "net".into(),
                default_locking_mode: DefaultLockingMode::Disabled,
            },
        );
        store.save(&s).unwrap();
        assert_eq!(store.load().unwrap(), s);
        fs::write(store.path(), b"{ not json").unwrap();
        let e = store.load().unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(fs::read(store.path()).unwrap(), b"{ not json");
        fs::remove_dir_all(&dir).unwrap();
    }
}
