//! The store's keys under the prefix and their values: `PREFIX/network/UUID` and
//! `PREFIX/vif/UUID`, each holding the typed settings as JSON (the form `state.json` had, the
//! one the store's types serialise to). A value that cannot be read is never enforced as it
//! stands: a VIF's becomes a bad row (its netdevs held disabled), a network's is left out (its
//! `network_default` VIFs resolve to `disabled`).

use lockd_common::settings::{NetworkSettings, VifSettings};

use crate::store::{BadVif, Change, State};

/// What a key under the prefix is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Network(String),
    Vif(String),
}

/// What a key's value decodes to.
pub(super) enum Item {
    /// A change to make to the state.
    Change(Change),
    /// A VIF value that is not valid: the uuid's VIF is replaced by this bad row.
    Bad(BadVif),
    /// A network value that is not valid: the network is dropped, and why.
    BadNetwork(String, String),
}

pub(super) fn key_of(prefix: &str, key: &Key) -> String {
    match key {
        Key::Network(u) => format!("{prefix}/network/{u}"),
        Key::Vif(u) => format!("{prefix}/vif/{u}"),
    }
}

/// The key a change writes.
pub(super) fn change_key(c: &Change) -> Key {
    match c {
        Change::PutNetwork(n) => Key::Network(n.uuid.clone()),
        Change::DeleteNetwork(u) => Key::Network(u.clone()),
        Change::PutVif(v) => Key::Vif(v.uuid.clone()),
        Change::DeleteVif(u) => Key::Vif(u.clone()),
    }
}

/// The value a change puts (none for a deletion).
pub(super) fn change_value(c: &Change) -> Option<Vec<u8>> {
    match c {
        Change::PutNetwork(n) => serde_json::to_vec(n).ok(),
        Change::PutVif(v) => serde_json::to_vec(v).ok(),
        Change::DeleteNetwork(_) | Change::DeleteVif(_) => None,
    }
}

/// The key's kind and uuid, if it is one of lockd's.
pub(super) fn parse_key(prefix: &str, key: &[u8]) -> Option<Key> {
    let rest = std::str::from_utf8(key).ok()?.strip_prefix(prefix)?;
    if let Some(u) = rest.strip_prefix("/network/") {
        return (!u.is_empty() && !u.contains('/')).then(|| Key::Network(u.to_string()));
    }
    let u = rest.strip_prefix("/vif/")?;
    (!u.is_empty() && !u.contains('/')).then(|| Key::Vif(u.to_string()))
}

/// What `value` (none: deleted) at `key` does to the state.
pub(super) fn decode(key: &Key, value: Option<&[u8]>) -> Item {
    match (key, value) {
        (Key::Network(u), None) => Item::Change(Change::DeleteNetwork(u.clone())),
        (Key::Vif(u), None) => Item::Change(Change::DeleteVif(u.clone())),
        (Key::Network(u), Some(v)) => match serde_json::from_slice::<NetworkSettings>(v) {
            Ok(n) if n.uuid == *u => Item::Change(Change::PutNetwork(n)),
            Ok(n) => Item::BadNetwork(u.clone(), format!("its value names uuid {}", n.uuid)),
            Err(e) => Item::BadNetwork(u.clone(), e.to_string()),
        },
        (Key::Vif(u), Some(v)) => {
            let bad = |reason: String| {
                Item::Bad(BadVif {
                    uuid: u.clone(),
                    devices: devices_of(v),
                    reason,
                })
            };
            match serde_json::from_slice::<VifSettings>(v) {
                Ok(vif) if vif.uuid != *u => bad(format!("its value names uuid {}", vif.uuid)),
                Ok(vif) => match crate::xe::params::device(&vif.device)
                    .map_err(|e| format!("device: {e}"))
                    .and_then(|_| {
                        crate::xe::params::check_vif(&vif).map_err(|(k, r)| format!("{k}: {r}"))
                    }) {
                    Ok(()) => Item::Change(Change::PutVif(vif)),
                    Err(reason) => bad(reason),
                },
                Err(e) => bad(e.to_string()),
            }
        }
    }
}

/// The netdevs a VIF value names, as far as they can be read: a bad value's are held.
fn devices_of(v: &[u8]) -> Vec<String> {
    let Ok(j) = serde_json::from_slice::<serde_json::Value>(v) else {
        return Vec::new();
    };
    let one = j.get("device").and_then(|d| d.as_str()).map(str::to_string);
    let extra = j
        .get("extra_devices")
        .and_then(|d| d.as_array())
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string));
    one.into_iter()
        .chain(extra)
        .filter(|d| !d.is_empty())
        .collect()
}

/// Applies `item` to `state`, adding the netdevs it may change to `devices`.
pub(super) fn apply(state: &mut State, item: Item, devices: &mut Vec<String>) {
    match item {
        Item::Change(c) => {
            state.devices_touched(&c, devices);
            state.apply(c.clone());
            state.devices_touched(&c, devices);
        }
        Item::Bad(mut b) => {
            // A value that names no readable netdev still holds the ones its VIF had.
            let before = state.vif(&b.uuid).into_iter().flat_map(|v| v.devices().cloned());
            let before_bad = state.bad_vifs().filter(|o| o.uuid == b.uuid);
            let before: Vec<String> = before
                .chain(before_bad.flat_map(|o| o.devices.iter().cloned()))
                .collect();
            for d in before {
                if !b.devices.contains(&d) {
                    b.devices.push(d);
                }
            }
            let del = Change::DeleteVif(b.uuid.clone());
            state.devices_touched(&del, devices);
            state.apply(del);
            devices.extend(b.devices.iter().cloned());
            state.add_bad_vif(b);
        }
        Item::BadNetwork(uuid, reason) => {
            tracing::error!(network = %uuid, "the store's value for the network is bad: {reason}; its network_default VIFs are disabled");
            let del = Change::DeleteNetwork(uuid);
            state.devices_touched(&del, devices);
            state.apply(del);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j_ok(v: &VifSettings) -> Vec<u8> {
        serde_json::to_vec(v).expect("json")
    }

    #[test]
    fn keys_round_trip_and_foreign_keys_are_not_lockd_s() {
        let k = Key::Vif("6f1c".into());
        assert_eq!(parse_key("/pool", key_of("/pool", &k).as_bytes()), Some(k));
        assert_eq!(parse_key("/pool", b"/pool/vif/"), None);
        assert_eq!(parse_key("/pool", b"/pool/vif/a/b"), None);
        assert_eq!(parse_key("/pool", b"/other/vif/a"), None);
        assert_eq!(parse_key("/pool", b"/pool/thing/a"), None);
    }

    #[test]
    fn a_bad_vif_value_is_a_bad_row_holding_its_netdevs() {
        let mut state = State::default();
        let mut devices = Vec::new();
        let v = br#"{"uuid":"u1","device":"vif3.0","mac":"nope"}"#;
        apply(&mut state, decode(&Key::Vif("u1".into()), Some(v)), &mut devices);
        assert_eq!(devices, ["vif3.0"]);
        assert_eq!(state.bad_vif_by_device("vif3.0").expect("bad row").uuid, "u1");
        // A value for another uuid under this key is bad too.
        let mut ok = VifSettings::new("u2".into(), "n".into(), "vif4.0".into(), [2, 0, 0, 0, 0, 1]);
        let j = serde_json::to_vec(&ok).expect("json");
        assert!(matches!(decode(&Key::Vif("u1".into()), Some(&j)), Item::Bad(_)));
        // Garbage where a valid VIF was: its netdev stays held.
        apply(&mut state, decode(&Key::Vif("u2".into()), Some(&j_ok(&ok))), &mut devices);
        apply(&mut state, decode(&Key::Vif("u2".into()), Some(b"{not json")), &mut devices);
        assert_eq!(state.bad_vif_by_device("vif4.0").expect("held").uuid, "u2");
        ok.device = "bad/name".into();
        let j = serde_json::to_vec(&ok).expect("json");
        assert!(matches!(decode(&Key::Vif("u2".into()), Some(&j)), Item::Bad(_)));
    }
}
