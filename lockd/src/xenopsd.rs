//! xenopsd's per-VIF record: where it lives and what it says. xenopsd writes one JSON file per
//! VIF (`Vif.t` as its encoder writes it, see `../shared/TOOLSTACK.md`); the hook reads it for
//! `filter`, and the daemon reads the whole directory at start for VIFs the toolstack changed
//! while it was down.

use std::{
    io,
    path::{Path, PathBuf},
};

use lockd_common::{
    policy::{BadMac, ListError, LockingMode, parse_ipv4_list, parse_ipv6_list, parse_mac},
    settings::{Qos, QosAlgorithm, VifSettings},
};
use serde_json::Value;

use crate::xe::params;

/// Where xenopsd keeps its per-VIF files.
pub const DEFAULT_XENOPSD_DIR: &str = "/var/run/nonpersistent/xenopsd";

/// Why a VIF record cannot be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record's file could not be read (absent, or unreadable).
    #[error("reading {}: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// The file is not JSON.
    #[error("parsing {}: {error}", path.display())]
    Parse {
        path: PathBuf,
        error: serde_json::Error,
    },
    /// `extra_private_keys` lacks a key xapi always writes.
    #[error("extra_private_keys has no {0}")]
    MissingKey(&'static str),
    /// A UUID of the record (or the hook's VM argument) is not one.
    #[error("{key}: {reason}")]
    BadUuid {
        key: &'static str,
        reason: crate::xe::params::BadValue,
    },
    /// A field has the wrong JSON type; the text says which and what it holds.
    #[error("{0}")]
    WrongType(String),
    /// The MAC address does not parse.
    #[error(transparent)]
    Mac(#[from] BadMac),
    /// An item of `ipv4` or `ipv6` is not an address lockd can allow.
    #[error("{what}: {error}")]
    List {
        what: &'static str,
        error: ListError,
    },
    /// A backend lockd cannot filter (a driver domain's bridge, or one it does not know).
    #[error("{0}")]
    Backend(String),
    /// A `locking_mode` or `rate` constructor lockd does not know.
    #[error("unknown {field} {value}")]
    Unknown { field: &'static str, value: Value },
    /// A `rate` whose numbers netback would refuse.
    #[error("rate: {0}")]
    Rate(String),
}

type Result<T> = std::result::Result<T, RecordError>;

/// The file for one VIF: `<dir>/<backend>/VM/<vm-uuid>/vif.<devid>`.
pub fn vif_file(dir: &Path, backend: &str, vm_uuid: &str, devid: &str) -> PathBuf {
    dir.join(backend)
        .join("VM")
        .join(vm_uuid)
        .join(format!("vif.{devid}"))
}

/// Reads the record of one VIF.
pub fn read_record(dir: &Path, backend: &str, vm_uuid: &str, devid: &str) -> Result<Value> {
    let path = vif_file(dir, backend, vm_uuid, devid);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(error) => return Err(RecordError::Read { path, error }),
    };
    serde_json::from_str(&text).map_err(|error| RecordError::Parse { path, error })
}

/// `extra_private_keys` as either a JSON object or a list of pairs.
fn private_key<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v.get("extra_private_keys")? {
        Value::Object(m) => m.get(key)?.as_str(),
        Value::Array(pairs) => pairs.iter().find_map(|p| {
            let p = p.as_array()?;
            (p.first()?.as_str()? == key).then(|| p.get(1)?.as_str())?
        }),
        _ => None,
    }
}

/// An address list of the record, each item parsed with the CLI's parser.
fn list<N>(
    v: Option<&Value>,
    what: &'static str,
    parse: impl Fn(&str) -> std::result::Result<Vec<N>, ListError>,
) -> Result<Vec<N>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .ok_or_else(|| RecordError::WrongType(format!("{what} is not an array")))?;
    let mut out = Vec::new();
    for i in items {
        let s = i
            .as_str()
            .ok_or_else(|| RecordError::WrongType(format!("{what}: {i} is not a string")))?;
        out.extend(parse(s).map_err(|error| RecordError::List { what, error })?);
    }
    Ok(out)
}

/// Translates a xenopsd VIF record into the VIF's settings and its bridge. Fields take the
/// type's defaults when absent; unknown fields are ignored.
pub fn settings_of(record: &Value, vif_name: &str, vm_uuid: &str) -> Result<(VifSettings, String)> {
    let uuid = |key: &'static str| -> Result<String> {
        let v = private_key(record, key).ok_or(RecordError::MissingKey(key))?;
        params::uuid(v).map_err(|reason| RecordError::BadUuid { key, reason })
    };
    let mac = match &record["mac"] {
        Value::Null => "fe:ff:ff:ff:ff:ff",
        m => m
            .as_str()
            .ok_or_else(|| RecordError::WrongType("mac is not a string".into()))?,
    };
    let bridge = match &record["backend"] {
        Value::Null => "xenbr0".to_string(),
        Value::Array(b) if b.first().and_then(Value::as_str) == Some("Local") => b
            .get(1)
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
            .ok_or_else(|| RecordError::Backend("backend Local without a bridge name".into()))?
            .to_string(),
        Value::Array(b) if b.first().and_then(Value::as_str) == Some("Remote") => {
            return Err(RecordError::Backend(format!(
                "backend {}: a bridge in another (driver) domain is not one lockd can filter",
                record["backend"]
            )));
        }
        other => return Err(RecordError::Backend(format!("unsupported backend {other}"))),
    };
    let mut vif = VifSettings::new(
        uuid("vif-uuid")?,
        uuid("network-uuid")?,
        vif_name.to_string(),
        parse_mac(mac)?,
    );
    vif.vm_uuid = params::uuid(vm_uuid).ok();
    // xapi resolves network_default before xenopsd sees it; absent means Unlocked.
    // Constructor names compared as the original script does (lowercased).
    let is = |v: Option<&Value>, name: &str| {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    match &record["locking_mode"] {
        m @ Value::String(_) if is(Some(m), "Unlocked") => vif.locking_mode = LockingMode::Unlocked,
        Value::Null => vif.locking_mode = LockingMode::Unlocked,
        m @ Value::String(_) if is(Some(m), "Disabled") => vif.locking_mode = LockingMode::Disabled,
        Value::Array(l) if is(l.first(), "Locked") => {
            let lists = l
                .get(1)
                .ok_or_else(|| RecordError::WrongType("Locked without address lists".into()))?;
            vif.locking_mode = LockingMode::Locked;
            vif.ipv4_allowed = list(lists.get("ipv4"), "ipv4", parse_ipv4_list)?;
            vif.ipv6_allowed = list(lists.get("ipv6"), "ipv6", parse_ipv6_list)?;
        }
        other => {
            return Err(RecordError::Unknown {
                field: "locking_mode",
                value: other.clone(),
            });
        }
    }
    match &record["rate"] {
        Value::Null => {}
        Value::Array(r) => {
            let int = |i: usize, what: &str| {
                let v = r.get(i).unwrap_or(&Value::Null);
                v.as_i64()
                    .ok_or_else(|| RecordError::Rate(format!("{what} {v} is not a 64-bit integer")))
            };
            let (kbps, timeslice) = (int(0, "kbps")?, int(1, "timeslice")?);
            // As netback reads them: kbps ≤ 0 is no limit, timeslice 0 the default.
            if kbps > 0 {
                vif.qos = Qos {
                    algorithm: QosAlgorithm::Ratelimit,
                    kbps: Some(kbps as u64),
                    timeslice_us: match u64::try_from(timeslice) {
                        Ok(0) => None,
                        Ok(t) => Some(t),
                        Err(_) => {
                            return Err(RecordError::Rate(format!(
                                "timeslice {timeslice} is negative"
                            )));
                        }
                    },
                };
            }
        }
        other => {
            return Err(RecordError::Unknown {
                field: "rate",
                value: other.clone(),
            });
        }
    }
    Ok((vif, bridge))
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockd_common::policy::parse_ipv4_list;

    #[test]
    fn locked_record_translates() {
        let r: Value = serde_json::from_str(
            r#"{"id":["vm","0"],"mac":"02:00:00:00:00:0b","backend":["Local","xenbr0"],
               "locking_mode":["Locked",{"ipv4":["10.0.0.2","10.0.2.0/24"],"ipv6":["2001:db8::2"]}],
               "rate":[1024,20000],
               "extra_private_keys":{"vif-uuid":"6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01","network-uuid":"0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02"}}"#,
        )
        .unwrap();
        let (v, bridge) =
            settings_of(&r, "vif3.0", "a1b2c3d4-0000-4000-8000-000000000003").unwrap();
        assert_eq!(v.locking_mode, LockingMode::Locked);
        assert_eq!(
            v.ipv4_allowed,
            parse_ipv4_list("10.0.0.2,10.0.2.0/24").unwrap()
        );
        assert_eq!(v.qos.rate_limit().unwrap().kbps, 1024);
        assert_eq!(v.device, "vif3.0");
        assert_eq!(bridge, "xenbr0");
    }

    #[test]
    fn pair_list_keys_and_bad_modes() {
        let r: Value = serde_json::from_str(
            r#"{"mac":"02:00:00:00:00:0b","locking_mode":"Sideways",
               "extra_private_keys":[["vif-uuid","6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01"],["network-uuid","0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02"]]}"#,
        )
        .unwrap();
        assert_eq!(
            private_key(&r, "vif-uuid"),
            Some("6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01")
        );
        let e = settings_of(&r, "vif1.0", "vm").unwrap_err();
        assert!(e.to_string().contains("Sideways"), "{e}");
    }
}
