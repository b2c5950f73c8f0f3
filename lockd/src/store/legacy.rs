//! Migration from the JSON state file of earlier releases (`state.json`, format version 1) to
//! the SQLite store. The file's values are parsed with the same parsers as the CLI's; a file
//! that cannot be read or parsed is left as it is and stops the daemon.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use lockd_common::{
    policy::{DefaultLockingMode, LockingMode, parse_ipv4_list, parse_ipv6_list, parse_mac},
    settings::{NetworkSettings, Qos, QosAlgorithm, VifSettings},
};
use serde::Deserialize;

use super::{Change, Store, StoreError};

/// The file of earlier releases.
pub const LEGACY_FILE: &str = "state.json";
/// What the file is renamed to once migrated.
pub const MIGRATED_FILE: &str = "state.json.migrated";
const LEGACY_VERSION: u32 = 1;

#[derive(Deserialize)]
struct Network {
    uuid: String,
    name_label: String,
    default_locking_mode: DefaultLockingMode,
}

#[derive(Deserialize)]
struct LegacyQos {
    algorithm_type: String,
    kbps: Option<u64>,
    timeslice_us: Option<u64>,
}

#[derive(Deserialize)]
struct Vif {
    uuid: String,
    network_uuid: String,
    device: String,
    mac: String,
    vm_uuid: Option<String>,
    locking_mode: LockingMode,
    ipv4_allowed: Vec<String>,
    ipv6_allowed: Vec<String>,
    qos: LegacyQos,
}

#[derive(Deserialize)]
struct LegacyState {
    version: u32,
    networks: BTreeMap<String, Network>,
    vifs: BTreeMap<String, Vif>,
}

fn corrupt(path: &Path, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The changes that recreate the legacy file's state.
fn changes(path: &Path, text: &str) -> Result<Vec<Change>, StoreError> {
    let state: LegacyState = serde_json::from_str(text).map_err(|e| corrupt(path, e))?;
    if state.version != LEGACY_VERSION {
        return Err(corrupt(path, format!("unknown version {}", state.version)));
    }
    let mut out: Vec<Change> = state
        .networks
        .into_values()
        .map(|n| {
            Change::PutNetwork(NetworkSettings {
                uuid: n.uuid,
                name_label: n.name_label,
                default_locking_mode: n.default_locking_mode,
            })
        })
        .collect();
    for v in state.vifs.into_values() {
        let bad = |field: &str, e: &dyn ToString| {
            corrupt(path, format!("VIF {}: {field}: {}", v.uuid, e.to_string()))
        };
        let algorithm = QosAlgorithm::from_word(&v.qos.algorithm_type)
            .ok_or_else(|| bad("qos_algorithm_type", &v.qos.algorithm_type))?;
        out.push(Change::PutVif(VifSettings {
            mac: parse_mac(&v.mac).map_err(|e| bad("mac", &e))?,
            ipv4_allowed: parse_ipv4_list(&v.ipv4_allowed.join(","))
                .map_err(|e| bad("ipv4-allowed", &e))?,
            ipv6_allowed: parse_ipv6_list(&v.ipv6_allowed.join(","))
                .map_err(|e| bad("ipv6-allowed", &e))?,
            qos: Qos {
                algorithm,
                kbps: v.qos.kbps,
                timeslice_us: v.qos.timeslice_us,
            },
            uuid: v.uuid,
            network_uuid: v.network_uuid,
            device: v.device,
            extra_devices: Vec::new(),
            vm_uuid: v.vm_uuid,
            locking_mode: v.locking_mode,
        }));
    }
    Ok(out)
}

/// Moves `dir/state.json`, if there is one, into `store` and renames it to
/// `state.json.migrated`. Idempotent: a crash between the commit and the rename repeats the
/// same puts next time.
pub fn migrate(dir: &Path, store: &mut dyn Store) -> Result<Option<PathBuf>, StoreError> {
    let path = dir.join(LEGACY_FILE);
    let text = match fs::read(&path) {
        Ok(t) => String::from_utf8(t).map_err(|_| corrupt(&path, "not UTF-8"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Read {
                path,
                reason: e.to_string(),
            });
        }
    };
    let changes = changes(&path, &text)?;
    store.commit(&changes)?;
    let done = dir.join(MIGRATED_FILE);
    let write_err = |e: io::Error| StoreError::Write {
        path: done.clone(),
        reason: e.to_string(),
    };
    fs::rename(&path, &done).map_err(write_err)?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(write_err)?;
    tracing::info!(from = %path.display(), networks_and_vifs = changes.len(), "migrated the JSON state file");
    Ok(Some(done))
}
