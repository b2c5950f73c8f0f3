//! The `xe`-style command layer: verbs with `key=value` arguments, applied to a copy of the
//! state so that a command is all-or-nothing. Pure: the daemon supplies runtime facts (ifindex,
//! attach mode, counters) through [`Runtime`] and persists/enforces the returned state.

use std::collections::BTreeMap;

use lockd_common::{
    MAX_ALLOWED_PER_VIF,
    policy::{
        DefaultLockingMode, LockingMode, format_mac, parse_ipv4_list, parse_ipv6_list, parse_mac,
    },
};
use serde_json::{Value, json};

mod show;

use show::{effective, qos_params, vif_list, vif_stats};

use crate::{
    dataplane::{AttachMode, VifCounters},
    state::{Network, Qos, State, Vif},
};

/// The verbs the CLI forwards to the daemon.
pub const VERBS: &[&str] = &[
    "network-create",
    "network-destroy",
    "network-param-set",
    "network-param-get",
    "network-list",
    "vif-create",
    "vif-destroy",
    "vif-param-set",
    "vif-param-add",
    "vif-param-remove",
    "vif-param-get",
    "vif-list",
    "vif-stats",
    "vif-apply",
];

/// A command that cannot be carried out; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XeError {
    #[error("unknown command '{0}'")]
    UnknownVerb(String),
    #[error("argument '{0}' is not of the form key=value")]
    NotKeyValue(String),
    #[error("unknown parameter '{key}' for {verb}")]
    UnknownKey { verb: String, key: String },
    #[error("parameter '{0}' given twice")]
    Duplicate(String),
    #[error("{verb} needs {key}=")]
    Missing { verb: String, key: &'static str },
    #[error("no network with uuid {0}")]
    UnknownNetwork(String),
    #[error("no VIF with uuid {0}")]
    UnknownVif(String),
    #[error("{what} {uuid} already exists")]
    Exists { what: &'static str, uuid: String },
    #[error("'{0}' is not a UUID")]
    BadUuid(String),
    #[error("invalid value for {key}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("device {device} already belongs to VIF {uuid}")]
    DeviceTaken { device: String, uuid: String },
    #[error("network {uuid} still has {count} VIF(s); destroy them first")]
    NetworkInUse { uuid: String, count: usize },
    #[error("{verb} needs at least one parameter to change")]
    NothingToDo { verb: String },
}

/// Facts only the running daemon knows.
pub trait Runtime {
    /// The ifindex of a netdev in the daemon's namespace, if it exists.
    fn ifindex(&self, device: &str) -> Option<u32>;
    /// How the program is attached to a VIF's netdev, if it is.
    fn attach_mode(&self, ifindex: u32) -> Option<AttachMode>;
    /// The VIF's counters, if the dataplane knows the netdev.
    fn counters(&self, ifindex: u32) -> Option<VifCounters>;
}

/// What a command produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The state to persist and enforce, when the command changed it.
    pub state: Option<State>,
    /// Text for stdout.
    pub output: String,
}

struct Args {
    verb: String,
    kv: BTreeMap<String, String>,
    json: bool,
    /// `--if-exists` (vif-destroy): a missing VIF is not an error (the hook's `clear`).
    if_exists: bool,
}

/// Canonical key: lowercase, `_` as `-` (xe accepts both spellings of `ipv4_allowed`).
fn canon(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('_', "-")
}

fn parse_args(argv: &[String]) -> Result<Args, XeError> {
    let (verb, rest) = argv
        .split_first()
        .ok_or_else(|| XeError::UnknownVerb(String::new()))?;
    if !VERBS.contains(&verb.as_str()) {
        return Err(XeError::UnknownVerb(verb.clone()));
    }
    let mut kv = BTreeMap::new();
    let mut json = false;
    let mut if_exists = false;
    for a in rest {
        if a == "--json" {
            json = true;
            continue;
        }
        if a == "--if-exists" && verb == "vif-destroy" {
            if_exists = true;
            continue;
        }
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| XeError::NotKeyValue(a.clone()))?;
        let k = canon(k);
        if kv.insert(k.clone(), v.to_string()).is_some() {
            return Err(XeError::Duplicate(k));
        }
    }
    Ok(Args {
        verb: verb.clone(),
        kv,
        json,
        if_exists,
    })
}

impl Args {
    fn allow(&self, keys: &[&str]) -> Result<(), XeError> {
        match self.kv.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(k) => Err(XeError::UnknownKey {
                verb: self.verb.clone(),
                key: k.clone(),
            }),
            None => Ok(()),
        }
    }

    fn need(&self, key: &'static str) -> Result<&str, XeError> {
        self.kv
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| XeError::Missing {
                verb: self.verb.clone(),
                key,
            })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.kv.get(key).map(String::as_str)
    }
}

fn uuid_arg(v: &str) -> Result<String, XeError> {
    uuid::Uuid::parse_str(v.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| XeError::BadUuid(v.to_string()))
}

fn bad(key: &str, reason: impl ToString) -> XeError {
    XeError::BadValue {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

fn canonical_list(items: &[impl ToString]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// Canonical form of an item: plain address for host prefixes, `addr/len` otherwise.
fn canon4(l: &[ipnetwork::Ipv4Network]) -> Vec<String> {
    canonical_list(
        &l.iter()
            .map(|n| {
                if n.prefix() == 32 {
                    n.ip().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect::<Vec<_>>(),
    )
}

fn canon6(l: &[ipnetwork::Ipv6Network]) -> Vec<String> {
    canonical_list(
        &l.iter()
            .map(|n| {
                if n.prefix() == 128 {
                    n.ip().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect::<Vec<_>>(),
    )
}

fn check_total(vif: &Vif) -> Result<(), XeError> {
    let n = vif.ipv4_allowed.len() + vif.ipv6_allowed.len();
    if n > MAX_ALLOWED_PER_VIF {
        return Err(bad(
            "ipv4-allowed/ipv6-allowed",
            format!("{n} entries exceed the per-VIF limit of {MAX_ALLOWED_PER_VIF}"),
        ));
    }
    Ok(())
}

/// Runs one command against `state`.
pub fn execute(state: &State, rt: &dyn Runtime, argv: &[String]) -> Result<Outcome, XeError> {
    let a = parse_args(argv)?;
    let mut s = state.clone();
    let changed = |s: State, output: String| {
        Ok(Outcome {
            state: Some(s),
            output,
        })
    };
    match a.verb.as_str() {
        "network-create" => {
            a.allow(&["name-label", "uuid", "default-locking-mode"])?;
            let name_label = a.need("name-label")?.to_string();
            let uuid = match a.get("uuid") {
                Some(u) => uuid_arg(u)?,
                None => uuid::Uuid::new_v4().to_string(),
            };
            if s.networks.contains_key(&uuid) {
                return Err(XeError::Exists {
                    what: "network",
                    uuid,
                });
            }
            let default_locking_mode = match a.get("default-locking-mode") {
                Some(v) => v
                    .parse::<DefaultLockingMode>()
                    .map_err(|e| bad("default-locking-mode", e))?,
                None => DefaultLockingMode::default(),
            };
            s.networks.insert(
                uuid.clone(),
                Network {
                    uuid: uuid.clone(),
                    name_label,
                    default_locking_mode,
                },
            );
            changed(s, format!("{uuid}\n"))
        }
        "network-destroy" => {
            a.allow(&["uuid"])?;
            let uuid = uuid_arg(a.need("uuid")?)?;
            if s.networks.remove(&uuid).is_none() {
                return Err(XeError::UnknownNetwork(uuid));
            }
            let count = s.vifs.values().filter(|v| v.network_uuid == uuid).count();
            if count > 0 {
                return Err(XeError::NetworkInUse { uuid, count });
            }
            changed(s, String::new())
        }
        "network-param-set" => {
            a.allow(&["uuid", "default-locking-mode", "name-label"])?;
            let n = network_mut(&mut s, &a)?;
            if a.kv.len() == 1 {
                return Err(XeError::NothingToDo { verb: a.verb });
            }
            if let Some(v) = a.get("default-locking-mode") {
                n.default_locking_mode = v.parse().map_err(|e| bad("default-locking-mode", e))?;
            }
            if let Some(v) = a.get("name-label") {
                n.name_label = v.to_string();
            }
            changed(s, String::new())
        }
        "network-param-get" => {
            a.allow(&["uuid", "param-name"])?;
            let n = network_mut(&mut s, &a)?;
            let out = match canon(a.need("param-name")?).as_str() {
                "default-locking-mode" => n.default_locking_mode.to_string(),
                "name-label" => n.name_label.clone(),
                "uuid" => n.uuid.clone(),
                other => {
                    return Err(bad(
                        "param-name",
                        format!("network has no parameter '{other}'"),
                    ));
                }
            };
            Ok(Outcome {
                state: None,
                output: format!("{out}\n"),
            })
        }
        "network-list" => {
            a.allow(&[])?;
            let output = if a.json {
                let v: Vec<Value> = s
                    .networks
                    .values()
                    .map(|n| {
                        json!({
                            "uuid": n.uuid,
                            "name_label": n.name_label,
                            "default_locking_mode": n.default_locking_mode,
                            "vifs": s.vifs.values().filter(|v| v.network_uuid == n.uuid).count(),
                        })
                    })
                    .collect();
                format!("{}\n", Value::Array(v))
            } else {
                s.networks
                    .values()
                    .map(|n| {
                        format!(
                            "uuid ( RO)                  : {}\n    name-label ( RW)        : {}\n    default-locking-mode ( RW): {}\n\n",
                            n.uuid, n.name_label, n.default_locking_mode
                        )
                    })
                    .collect()
            };
            Ok(Outcome {
                state: None,
                output,
            })
        }
        "vif-create" => {
            a.allow(&["network-uuid", "device", "mac", "uuid", "vm-uuid"])?;
            let network_uuid = uuid_arg(a.need("network-uuid")?)?;
            if !s.networks.contains_key(&network_uuid) {
                return Err(XeError::UnknownNetwork(network_uuid));
            }
            let device = a.need("device")?.trim().to_string();
            if device.is_empty() || device.len() > 15 || device.contains(['/', ' ']) {
                return Err(bad("device", format!("'{device}' is not a netdev name")));
            }
            if let Some(v) = s.vifs.values().find(|v| v.device == device) {
                return Err(XeError::DeviceTaken {
                    device,
                    uuid: v.uuid.clone(),
                });
            }
            let mac = format_mac(parse_mac(a.need("mac")?).map_err(|e| bad("mac", e))?);
            let uuid = match a.get("uuid") {
                Some(u) => uuid_arg(u)?,
                None => uuid::Uuid::new_v4().to_string(),
            };
            if s.vifs.contains_key(&uuid) {
                return Err(XeError::Exists { what: "VIF", uuid });
            }
            let vm_uuid = a.get("vm-uuid").map(uuid_arg).transpose()?;
            s.vifs.insert(
                uuid.clone(),
                Vif {
                    uuid: uuid.clone(),
                    network_uuid,
                    device,
                    mac,
                    vm_uuid,
                    locking_mode: LockingMode::NetworkDefault,
                    ipv4_allowed: vec![],
                    ipv6_allowed: vec![],
                    qos: Qos::default(),
                },
            );
            changed(s, format!("{uuid}\n"))
        }
        "vif-destroy" => {
            a.allow(&["uuid"])?;
            let uuid = uuid_arg(a.need("uuid")?)?;
            if s.vifs.remove(&uuid).is_none() {
                if a.if_exists {
                    return Ok(Outcome::default());
                }
                return Err(XeError::UnknownVif(uuid));
            }
            changed(s, String::new())
        }
        "vif-param-set" => {
            a.allow(&[
                "uuid",
                "locking-mode",
                "ipv4-allowed",
                "ipv6-allowed",
                "qos-algorithm-type",
                "qos-algorithm-params:kbps",
                "qos-algorithm-params:timeslice-us",
            ])?;
            let vif = vif_mut(&mut s, &a)?;
            if a.kv.len() == 1 {
                return Err(XeError::NothingToDo { verb: a.verb });
            }
            if let Some(v) = a.get("locking-mode") {
                vif.locking_mode = v.parse().map_err(|e| bad("locking-mode", e))?;
            }
            if let Some(v) = a.get("ipv4-allowed") {
                vif.ipv4_allowed = canon4(&parse_ipv4_list(v).map_err(|e| bad("ipv4-allowed", e))?);
            }
            if let Some(v) = a.get("ipv6-allowed") {
                vif.ipv6_allowed = canon6(&parse_ipv6_list(v).map_err(|e| bad("ipv6-allowed", e))?);
            }
            if let Some(v) = a.get("qos-algorithm-type") {
                match v.trim() {
                    "ratelimit" | "" => vif.qos.algorithm_type = v.trim().to_string(),
                    other => {
                        return Err(bad(
                            "qos_algorithm_type",
                            format!("'{other}' is not one of: ratelimit, (empty)"),
                        ));
                    }
                }
            }
            for (key, field) in [
                ("qos-algorithm-params:kbps", &mut vif.qos.kbps),
                (
                    "qos-algorithm-params:timeslice-us",
                    &mut vif.qos.timeslice_us,
                ),
            ] {
                if let Some(v) = a.get(key) {
                    *field = match v.trim() {
                        "" => None,
                        t => {
                            Some(t.parse::<u64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                                bad(key, format!("'{t}' is not a positive integer"))
                            })?)
                        }
                    };
                }
            }
            check_total(vif)?;
            changed(s, String::new())
        }
        "vif-param-add" | "vif-param-remove" => {
            a.allow(&["uuid", "ipv4-allowed", "ipv6-allowed"])?;
            let vif = vif_mut(&mut s, &a)?;
            if a.kv.len() == 1 {
                return Err(XeError::NothingToDo { verb: a.verb });
            }
            let add = a.verb == "vif-param-add";
            if let Some(v) = a.get("ipv4-allowed") {
                let items = canon4(&parse_ipv4_list(v).map_err(|e| bad("ipv4-allowed", e))?);
                merge(&mut vif.ipv4_allowed, items, add);
            }
            if let Some(v) = a.get("ipv6-allowed") {
                let items = canon6(&parse_ipv6_list(v).map_err(|e| bad("ipv6-allowed", e))?);
                merge(&mut vif.ipv6_allowed, items, add);
            }
            check_total(vif)?;
            changed(s, String::new())
        }
        "vif-param-get" => {
            a.allow(&["uuid", "param-name"])?;
            let vif = vif_mut(&mut s, &a)?.clone();
            let out = match canon(a.need("param-name")?).as_str() {
                "uuid" => vif.uuid.clone(),
                "device" => vif.device.clone(),
                "mac" => vif.mac.clone(),
                "network-uuid" => vif.network_uuid.clone(),
                "vm-uuid" => vif.vm_uuid.clone().unwrap_or_default(),
                "locking-mode" => vif.locking_mode.to_string(),
                "effective-locking-mode" => effective(&s, &vif),
                "ipv4-allowed" => vif.ipv4_allowed.join(", "),
                "ipv6-allowed" => vif.ipv6_allowed.join(", "),
                "qos-algorithm-type" => vif.qos.algorithm_type.clone(),
                "qos-algorithm-params" => qos_params(&vif.qos),
                other => return Err(bad("param-name", format!("VIF has no parameter '{other}'"))),
            };
            Ok(Outcome {
                state: None,
                output: format!("{out}\n"),
            })
        }
        "vif-list" => {
            a.allow(&[])?;
            Ok(Outcome {
                state: None,
                output: vif_list(&s, rt, a.json),
            })
        }
        "vif-stats" => {
            a.allow(&["uuid"])?;
            let only = a.get("uuid").map(uuid_arg).transpose()?;
            if let Some(u) = &only
                && !s.vifs.contains_key(u)
            {
                return Err(XeError::UnknownVif(u.clone()));
            }
            Ok(Outcome {
                state: None,
                output: vif_stats(&s, rt, only.as_deref(), a.json),
            })
        }
        "vif-apply" => vif_apply(&a, s, rt),
        other => Err(XeError::UnknownVerb(other.to_string())),
    }
}

/// Keys of `vif-param-set` that `vif-apply` passes through.
const POLICY_KEYS: [&str; 6] = [
    "locking-mode",
    "ipv4-allowed",
    "ipv6-allowed",
    "qos-algorithm-type",
    "qos-algorithm-params:kbps",
    "qos-algorithm-params:timeslice-us",
];

/// `vif-apply`: the toolstack hook's one-shot "this VIF, on this network, with this policy",
/// as a single state change. Creates the network if missing, replaces any VIF with the same
/// uuid, and takes the device over from a stale VIF record (a previous boot's).
fn vif_apply(a: &Args, mut s: State, rt: &dyn Runtime) -> Result<Outcome, XeError> {
    let mut keys = vec![
        "uuid",
        "network-uuid",
        "network-name-label",
        "device",
        "mac",
        "vm-uuid",
    ];
    keys.extend(POLICY_KEYS);
    a.allow(&keys)?;
    let uuid = uuid_arg(a.need("uuid")?)?;
    let network_uuid = uuid_arg(a.need("network-uuid")?)?;
    let device = a.need("device")?.to_string();
    let mut notes = String::new();
    s.networks
        .entry(network_uuid.clone())
        .or_insert_with(|| Network {
            uuid: network_uuid.clone(),
            name_label: a.get("network-name-label").unwrap_or("").to_string(),
            default_locking_mode: DefaultLockingMode::default(),
        });
    s.vifs.remove(&uuid);
    let stale: Vec<String> = s
        .vifs
        .values()
        .filter(|v| v.device == device)
        .map(|v| v.uuid.clone())
        .collect();
    for st in stale {
        notes.push_str(&format!("replaced stale VIF {st} on {device}\n"));
        s.vifs.remove(&st);
    }
    let mut create: Vec<String> = vec![
        "vif-create".into(),
        format!("uuid={uuid}"),
        format!("network-uuid={network_uuid}"),
        format!("device={device}"),
        format!("mac={}", a.need("mac")?),
    ];
    if let Some(v) = a.get("vm-uuid") {
        create.push(format!("vm-uuid={v}"));
    }
    let s = execute(&s, rt, &create)?
        .state
        .expect("vif-create changes state");
    let mut set: Vec<String> = vec!["vif-param-set".into(), format!("uuid={uuid}")];
    for k in POLICY_KEYS {
        if let Some(v) = a.get(k) {
            set.push(format!("{k}={v}"));
        }
    }
    let s = if set.len() > 2 {
        execute(&s, rt, &set)?
            .state
            .expect("vif-param-set changes state")
    } else {
        s
    };
    Ok(Outcome {
        state: Some(s),
        output: format!("{notes}{uuid}\n"),
    })
}

/// The VIF named by the command's `uuid=`.
fn vif_mut<'s>(s: &'s mut State, a: &Args) -> Result<&'s mut Vif, XeError> {
    let uuid = uuid_arg(a.need("uuid")?)?;
    s.vifs.get_mut(&uuid).ok_or(XeError::UnknownVif(uuid))
}

/// The network named by the command's `uuid=`.
fn network_mut<'s>(s: &'s mut State, a: &Args) -> Result<&'s mut Network, XeError> {
    let uuid = uuid_arg(a.need("uuid")?)?;
    s.networks
        .get_mut(&uuid)
        .ok_or(XeError::UnknownNetwork(uuid))
}

fn merge(list: &mut Vec<String>, items: Vec<String>, add: bool) {
    if add {
        for i in items {
            if !list.contains(&i) {
                list.push(i);
            }
        }
    } else {
        list.retain(|x| !items.contains(x));
    }
}
