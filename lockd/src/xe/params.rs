//! Every `xe` parameter of a VIF and a network, declared once (as xapi's CLI declares its
//! fields with `make_field` in `ocaml/xapi-cli-server/records.ml`): its name, access, help,
//! how to read it, and how to set, add to or remove from it. The verbs, `vif-list`,
//! `network-list`, `--json` and the help text are all driven from these tables.

use lockd_common::{
    MAX_ALLOWED_PER_VIF,
    policy::{format_mac, parse_ipv4_list, parse_ipv6_list, parse_mac},
    settings::{NetworkSettings, QosAlgorithm, VifSettings, item4, item6},
};
use serde_json::{Value, json};

use super::{View, attach_word};

type V = Param<VifSettings>;
type N = Param<NetworkSettings>;

/// How a parameter may be changed (the letters `xe` prints beside it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only; settable only when the object is created, if it has a setter.
    Ro,
    /// Read-write.
    Rw,
    /// A set: `param-set` replaces, `param-add` / `param-remove` change items.
    Srw,
    /// A map: set key by key as `name:key=value`.
    Mrw,
}

impl Access {
    pub fn label(self) -> &'static str {
        match self {
            Access::Ro => " RO",
            Access::Rw => " RW",
            Access::Srw => "SRW",
            Access::Mrw => "MRW",
        }
    }
}

/// Why a parameter's value is refused; the caller names the parameter
/// ([`super::XeError::BadValue`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// Not a UUID.
    #[error("'{0}' is not a UUID")]
    Uuid(String),
    /// Not a netdev name: empty, longer than 15 bytes, or with '/' or ' '.
    #[error("'{0}' is not a netdev name")]
    Device(String),
    /// Not an integer from 1 to `max`.
    #[error("'{value}' is not an integer from 1 to {max}")]
    NotInRange { value: String, max: u64 },
    /// A stored or toolstack value outside what the kernel's arithmetic takes.
    #[error("{value} is outside 1..={max}")]
    OutOfRange { value: u64, max: u64 },
    /// More allowed addresses than a VIF may hold.
    #[error("{0} entries exceed the per-VIF limit of {MAX_ALLOWED_PER_VIF}")]
    TooMany(usize),
    /// A map parameter has no such key.
    #[error("no key '{key}' ({keys})")]
    NoKey { key: String, keys: &'static str },
    /// Not one of the words the parameter takes.
    #[error("'{value}' is not one of: {expected}")]
    Word {
        value: String,
        expected: &'static str,
    },
    /// A mode word, a MAC or an address list its parser refused (its own words).
    #[error("{0}")]
    Parse(String),
}

impl From<lockd_common::policy::BadWord> for BadValue {
    fn from(e: lockd_common::policy::BadWord) -> Self {
        BadValue::Word {
            value: e.value,
            expected: e.expected,
        }
    }
}

impl From<lockd_common::policy::ListError> for BadValue {
    fn from(e: lockd_common::policy::ListError) -> Self {
        BadValue::Parse(e.to_string())
    }
}

impl From<lockd_common::policy::BadMac> for BadValue {
    fn from(e: lockd_common::policy::BadMac) -> Self {
        BadValue::Parse(e.to_string())
    }
}

type Set<T> = fn(&mut T, &str) -> Result<(), BadValue>;
type SetIn<T> = fn(&mut T, &str, &str) -> Result<(), BadValue>;

/// One parameter of an object of type `T`.
pub struct Param<T: 'static> {
    /// The name `xe` uses (`ipv4-allowed`, `qos_algorithm_type`, `MAC`); keys match it
    /// case-insensitively with `_` and `-` alike, and `--json` uses it in snake case.
    pub name: &'static str,
    pub access: Access,
    pub help: &'static str,
    pub get: fn(&T, &View) -> Value,
    pub set: Option<Set<T>>,
    pub set_in_map: Option<SetIn<T>>,
    pub add: Option<Set<T>>,
    pub remove: Option<Set<T>>,
}

impl<T> Param<T> {
    const fn new(
        name: &'static str,
        access: Access,
        help: &'static str,
        get: fn(&T, &View) -> Value,
    ) -> Self {
        Self {
            name,
            access,
            help,
            get,
            set: None,
            set_in_map: None,
            add: None,
            remove: None,
        }
    }
    const fn set(mut self, f: Set<T>) -> Self {
        self.set = Some(f);
        self
    }
    /// The canonical key: lower case, `-` for `_`.
    pub fn key(&self) -> String {
        super::canon(self.name)
    }
    /// The `--json` key.
    pub fn json_key(&self) -> String {
        self.name.to_ascii_lowercase().replace('-', "_")
    }
    /// The value as `xe` prints it: sets as `a; b`, maps as `k: v; k2: v2`.
    pub fn text(&self, obj: &T, view: &View) -> String {
        text((self.get)(obj, view))
    }
}

/// A JSON value as `xe` prints it.
pub fn text(v: Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s,
        Value::Array(a) => a.into_iter().map(text).collect::<Vec<_>>().join("; "),
        Value::Object(m) => m
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| format!("{k}: {}", text(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

fn word<W: std::str::FromStr>(v: &str) -> Result<W, BadValue>
where
    W::Err: Into<BadValue>,
{
    v.parse::<W>().map_err(Into::into)
}

/// A canonical UUID (lower case, hyphenated).
pub fn uuid(v: &str) -> Result<String, BadValue> {
    uuid::Uuid::parse_str(v.trim())
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| BadValue::Uuid(v.to_string()))
}

pub(crate) fn device(v: &str) -> Result<String, BadValue> {
    let d = v.trim();
    if d.is_empty() || d.len() > 15 || d.contains(['/', ' ']) {
        return Err(BadValue::Device(d.to_string()));
    }
    Ok(d.to_string())
}

/// An optional positive integer no larger than `max` (empty clears it).
fn bounded(v: &str, max: u64) -> Result<Option<u64>, BadValue> {
    match v.trim() {
        "" => Ok(None),
        t => t
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .map(Some)
            .ok_or_else(|| BadValue::NotInRange {
                value: t.to_string(),
                max,
            }),
    }
}

fn check_total(v: &VifSettings) -> Result<(), BadValue> {
    let n = v.allowed_count();
    if n > MAX_ALLOWED_PER_VIF {
        return Err(BadValue::TooMany(n));
    }
    Ok(())
}

fn merge<N: PartialEq>(list: &mut Vec<N>, items: Vec<N>, add: bool) {
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

/// Largest `qos_algorithm_params:kbps` (POLICY.md: N × 1024 B/s must fit the kernel's math).
pub const MAX_KBPS: u64 = 4_294_967_295;
/// Largest `qos_algorithm_params:timeslice_us`.
pub const MAX_TIMESLICE_US: u64 = 10_000_000;

/// The bounds a complete VIF must keep however it arrived (the hook builds one whole):
/// kbps and timeslice in range, no more allowed entries than a VIF may hold. Errors name the
/// parameter and value.
pub fn check_vif(v: &VifSettings) -> Result<(), (&'static str, BadValue)> {
    if let Some(k) = v.qos.kbps
        && !(1..=MAX_KBPS).contains(&k)
    {
        return Err((
            "qos_algorithm_params:kbps",
            BadValue::OutOfRange {
                value: k,
                max: MAX_KBPS,
            },
        ));
    }
    if let Some(t) = v.qos.timeslice_us
        && !(1..=MAX_TIMESLICE_US).contains(&t)
    {
        return Err((
            "qos_algorithm_params:timeslice_us",
            BadValue::OutOfRange {
                value: t,
                max: MAX_TIMESLICE_US,
            },
        ));
    }
    check_total(v).map_err(|e| ("ipv4-allowed/ipv6-allowed", e))
}

fn set_qos_param(v: &mut VifSettings, key: &str, value: &str) -> Result<(), BadValue> {
    match key {
        "kbps" => v.qos.kbps = bounded(value, MAX_KBPS)?,
        "timeslice_us" => v.qos.timeslice_us = bounded(value, MAX_TIMESLICE_US)?,
        other => {
            return Err(BadValue::NoKey {
                key: other.to_string(),
                keys: "kbps, timeslice_us",
            });
        }
    }
    Ok(())
}

/// The VIF's parameters, in the order `vif-list` prints them.
pub static VIF: &[Param<VifSettings>] = &[
    V::new(
        "uuid",
        Access::Ro,
        "the VIF's UUID (generated when not given)",
        |v, _| json!(v.uuid),
    )
    .set(|v, s| uuid(s).map(|x| v.uuid = x)),
    V::new(
        "vm-uuid",
        Access::Ro,
        "the VM the VIF belongs to",
        |v, _| json!(v.vm_uuid),
    )
    .set(|v, s| uuid(s).map(|x| v.vm_uuid = Some(x))),
    V::new(
        "device",
        Access::Ro,
        "host-side netdev (vif3.0, tap3.0)",
        |v, _| json!(v.device),
    )
    .set(|v, s| device(s).map(|x| v.device = x)),
    V::new(
        "ifindex",
        Access::Ro,
        "the netdev's ifindex, if it exists",
        |v, w| json!(w.rt.ifindex(&v.device)),
    ),
    V::new("MAC", Access::Ro, "the guest MAC", |v, _| {
        json!(format_mac(v.mac))
    })
    .set(|v, s| parse_mac(s).map_err(BadValue::from).map(|x| v.mac = x)),
    V::new("network-uuid", Access::Ro, "the network", |v, _| {
        json!(v.network_uuid)
    })
    .set(|v, s| uuid(s).map(|x| v.network_uuid = x)),
    V::new(
        "locking-mode",
        Access::Rw,
        "network_default | locked | unlocked | disabled",
        |v, _| json!(v.locking_mode),
    )
    .set(|v, s| word(s).map(|x| v.locking_mode = x)),
    V::new(
        "effective-locking-mode",
        Access::Ro,
        "the mode in force",
        |v, w| json!(w.state.policy(v).mode),
    ),
    Param {
        add: Some(|v, s| {
            merge(
                &mut v.ipv4_allowed,
                parse_ipv4_list(s)?,
                true,
            );
            check_total(v)
        }),
        remove: Some(|v, s| {
            merge(
                &mut v.ipv4_allowed,
                parse_ipv4_list(s)?,
                false,
            );
            Ok(())
        }),
        ..V::new(
            "ipv4-allowed",
            Access::Srw,
            "IPv4 addresses and prefixes, comma separated",
            |v, _| json!(v.ipv4_allowed.iter().map(item4).collect::<Vec<_>>()),
        )
        .set(|v, s| {
            v.ipv4_allowed = parse_ipv4_list(s)?;
            check_total(v)
        })
    },
    Param {
        add: Some(|v, s| {
            merge(
                &mut v.ipv6_allowed,
                parse_ipv6_list(s)?,
                true,
            );
            check_total(v)
        }),
        remove: Some(|v, s| {
            merge(
                &mut v.ipv6_allowed,
                parse_ipv6_list(s)?,
                false,
            );
            Ok(())
        }),
        ..V::new(
            "ipv6-allowed",
            Access::Srw,
            "IPv6 addresses and prefixes, comma separated",
            |v, _| json!(v.ipv6_allowed.iter().map(item6).collect::<Vec<_>>()),
        )
        .set(|v, s| {
            v.ipv6_allowed = parse_ipv6_list(s)?;
            check_total(v)
        })
    },
    V::new(
        "qos_algorithm_type",
        Access::Rw,
        "ratelimit, or empty for none",
        |v, _| json!(v.qos.algorithm.word()),
    )
    .set(|v, s| {
        v.qos.algorithm = QosAlgorithm::from_word(s.trim()).ok_or_else(|| BadValue::Word {
            value: s.trim().to_string(),
            expected: "ratelimit, (empty)",
        })?;
        Ok(())
    }),
    Param {
        set_in_map: Some(set_qos_param),
        ..V::new(
            "qos_algorithm_params",
            Access::Mrw,
            "kbps (kilobytes/s, 1..4294967295), timeslice_us (1..10000000)",
            |v, _| json!({ "kbps": v.qos.kbps, "timeslice_us": v.qos.timeslice_us }),
        )
    },
    V::new(
        "attach",
        Access::Ro,
        "native | generic | tc | absent",
        |v, w| json!(attach_word(w.rt, w.rt.ifindex(&v.device))),
    ),
    V::new(
        "held",
        Access::Ro,
        "why and how lockd holds a netdev of the VIF it cannot give its policy, if it does",
        |v, w| {
            let held: Vec<String> = v
                .devices()
                .filter_map(|d| w.rt.held(d).map(|h| format!("{d}: {h}")))
                .collect();
            if held.is_empty() {
                Value::Null
            } else {
                json!(held.join("; "))
            }
        },
    ),
    V::new(
        "netdevs",
        Access::Ro,
        "every netdev of the VIF (an HVM guest's vif and tap): ifindex, attach, held",
        |v, w| {
            json!(
                v.devices()
                    .map(|d| {
                        let ifindex = w.rt.ifindex(d);
                        json!({
                            "device": d,
                            "ifindex": ifindex,
                            "attach": attach_word(w.rt, ifindex),
                            "held": w.rt.held(d),
                        })
                    })
                    .collect::<Vec<_>>()
            )
        },
    ),
];

/// The network's parameters.
pub static NETWORK: &[Param<NetworkSettings>] = &[
    N::new(
        "uuid",
        Access::Ro,
        "the network's UUID (generated when not given)",
        |n, _| json!(n.uuid),
    )
    .set(|n, s| uuid(s).map(|x| n.uuid = x)),
    N::new(
        "name-label",
        Access::Rw,
        "the network's name (the bridge)",
        |n, _| json!(n.name_label),
    )
    .set(|n, s| {
        n.name_label = s.to_string();
        Ok(())
    }),
    N::new(
        "default-locking-mode",
        Access::Rw,
        "unlocked | disabled: the mode of its network_default VIFs",
        |n, _| json!(n.default_locking_mode),
    )
    .set(|n, s| word(s).map(|x| n.default_locking_mode = x)),
    N::new("vifs", Access::Ro, "how many VIFs are on it", |n, w| {
        json!(w.state.vifs_on(&n.uuid).count())
    }),
];

/// The parameter of `table` that `key` names.
pub fn find<'t, T>(table: &'t [Param<T>], key: &str) -> Option<&'t Param<T>> {
    table.iter().find(|p| p.key() == key)
}

/// The help text of the `xe` verbs and their parameters, from the tables.
pub fn help() -> String {
    let mut h = String::from("xe-style commands (sent to the daemon):\n");
    for v in super::Verb::ALL {
        h.push_str(&format!("  {} {}\n", v.name(), v.usage()));
    }
    for (what, rows) in [
        (
            "VIF",
            VIF.iter()
                .map(|p| (p.name, p.access, p.help))
                .collect::<Vec<_>>(),
        ),
        (
            "network",
            NETWORK.iter().map(|p| (p.name, p.access, p.help)).collect(),
        ),
    ] {
        h.push_str(&format!("\n{what} parameters:\n"));
        for (name, access, help) in rows {
            h.push_str(&format!("  {name:<24} ({}) {help}\n", access.label()));
        }
    }
    h
}
