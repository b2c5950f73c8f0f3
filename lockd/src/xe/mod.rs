//! The `xe`-style command layer: verbs with `key=value` arguments, checked against a read-only
//! [`State`] and answered with the [`Change`]s to make, so that a command is all-or-nothing.
//! Parameters are declared once in [`params`]; each verb is a small function over them. The
//! daemon supplies runtime facts (ifindex, attach mode, counters) through [`Runtime`], and
//! applies, enforces and commits the changes.

use std::collections::BTreeMap;

use lockd_common::settings::{NetworkSettings, VifSettings};

pub mod params;
mod show;
mod verbs;

pub use verbs::Verb;

use params::{Access, Param};

use crate::{
    dataplane::{AttachMode, VifCounters},
    store::{Change, State},
};

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
    #[error("invalid value for {key}: {reason}")]
    BadValue {
        key: String,
        reason: params::BadValue,
    },
    /// `param-get`/`param-set` of a parameter the object does not have.
    #[error("invalid value for param-name: {what} has no parameter '{key}'")]
    NoParam { what: &'static str, key: String },
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
    /// Why and how lockd holds a netdev it cannot give its policy, if it does.
    fn held(&self, device: &str) -> Option<String>;
}

/// What the views read: the state and the runtime.
pub struct View<'a> {
    pub state: &'a State,
    pub rt: &'a dyn Runtime,
}

pub(crate) fn attach_word(rt: &dyn Runtime, ifindex: Option<u32>) -> &'static str {
    match ifindex.and_then(|i| rt.attach_mode(i)) {
        Some(AttachMode::Native) => "native",
        Some(AttachMode::Generic) => "generic",
        Some(AttachMode::Tc) => "tc",
        None => "absent",
    }
}

/// What a command produced.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The changes to apply, enforce and commit (none for a read-only verb).
    pub changes: Vec<Change>,
    /// Text for stdout.
    pub output: String,
}

impl Outcome {
    fn print(output: String) -> Result<Self, XeError> {
        Ok(Self {
            changes: Vec::new(),
            output,
        })
    }
}

struct Args {
    kind: Verb,
    verb: String,
    /// Canonical key (maps: `name:key`) → value.
    kv: BTreeMap<String, String>,
    json: bool,
    /// `--if-exists` (vif-destroy): a missing VIF is not an error.
    if_exists: bool,
    /// `--minimal` (vif-list): only the uuids, comma-separated, as `xe` prints them.
    minimal: bool,
}

/// Canonical key: lowercase, `_` as `-` (xe accepts both spellings of `ipv4_allowed`).
pub(crate) fn canon(key: &str) -> String {
    key.trim().to_ascii_lowercase().replace('_', "-")
}

fn parse_args(argv: &[String]) -> Result<Args, XeError> {
    let (verb, rest) = argv
        .split_first()
        .ok_or_else(|| XeError::UnknownVerb(String::new()))?;
    let kind = Verb::parse(verb).ok_or_else(|| XeError::UnknownVerb(verb.clone()))?;
    let mut a = Args {
        kind,
        verb: verb.clone(),
        kv: BTreeMap::new(),
        json: false,
        if_exists: false,
        minimal: false,
    };
    for arg in rest {
        match arg.as_str() {
            "--json" => a.json = true,
            "--if-exists" if verb == "vif-destroy" => a.if_exists = true,
            "--minimal" if verb == "vif-list" => a.minimal = true,
            _ => {
                let (k, v) = arg
                    .split_once('=')
                    .ok_or_else(|| XeError::NotKeyValue(arg.clone()))?;
                let k = match k.split_once(':') {
                    Some((name, sub)) => {
                        format!(
                            "{}:{}",
                            canon(name),
                            sub.trim().to_ascii_lowercase().replace('-', "_")
                        )
                    }
                    None => canon(k),
                };
                if a.kv.insert(k.clone(), v.to_string()).is_some() {
                    return Err(XeError::Duplicate(k));
                }
            }
        }
    }
    Ok(a)
}

fn bad(key: &str, reason: params::BadValue) -> XeError {
    XeError::BadValue {
        key: key.to_string(),
        reason,
    }
}

impl Args {
    fn need(&self, key: &'static str) -> Result<&str, XeError> {
        self.kv
            .get(key)
            .map(String::as_str)
            .ok_or_else(|| XeError::Missing {
                verb: self.verb.clone(),
                key,
            })
    }

    fn unknown(&self, key: &str) -> XeError {
        XeError::UnknownKey {
            verb: self.verb.clone(),
            key: key.to_string(),
        }
    }

    /// Refuses any key but the verb's own.
    fn own_keys(&self) -> Result<(), XeError> {
        let names: Vec<&str> = self.kind.keys().iter().map(|(k, _)| *k).collect();
        self.only(&names)
    }

    /// Refuses any key but the verb's own, and requires those it must have.
    fn fixed_keys(&self) -> Result<(), XeError> {
        self.own_keys()?;
        for (key, required) in self.kind.keys() {
            if required {
                self.need(key)?;
            }
        }
        Ok(())
    }

    /// Refuses any key but `keys`.
    fn only(&self, keys: &[&str]) -> Result<(), XeError> {
        match self.kv.keys().find(|k| !keys.contains(&k.as_str())) {
            Some(k) => Err(self.unknown(k)),
            None => Ok(()),
        }
    }

    /// The canonical uuid in `uuid=`.
    fn uuid(&self) -> Result<String, XeError> {
        params::uuid(self.need("uuid")?).map_err(|e| bad("uuid", e))
    }

    /// Applies every key but `skip` to `obj` through `table`: `set` for the access levels in
    /// `settable` (and map keys of MRW parameters), or `add` / `remove`. Counts what it applied.
    fn apply<T>(
        &self,
        table: &[Param<T>],
        obj: &mut T,
        skip: &[&str],
        how: How,
    ) -> Result<usize, XeError> {
        let mut n = 0;
        for (k, v) in self.kv.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
            let (name, sub) = match k.split_once(':') {
                Some((name, sub)) => (name, Some(sub)),
                None => (k.as_str(), None),
            };
            let p = params::find(table, name).ok_or_else(|| self.unknown(k))?;
            let r = match (how, sub) {
                (How::Set(levels), None) if levels.contains(&p.access) => p.set.map(|f| f(obj, v)),
                (How::Set(_), Some(sub)) => p.set_in_map.map(|f| f(obj, sub, v)),
                (How::Add, None) => p.add.map(|f| f(obj, v)),
                (How::Remove, None) => p.remove.map(|f| f(obj, v)),
                _ => None,
            };
            r.ok_or_else(|| self.unknown(k))?
                .map_err(|e| bad(p.name, e))?;
            n += 1;
        }
        Ok(n)
    }

    fn param_name(&self) -> Result<String, XeError> {
        Ok(canon(self.need("param-name")?))
    }
}

#[derive(Clone, Copy)]
enum How {
    Set(&'static [Access]),
    Add,
    Remove,
}

const CHANGEABLE: &[Access] = &[Access::Rw, Access::Srw];
const AT_CREATE: &[Access] = &[Access::Ro, Access::Rw];

/// Runs one command against `state`.
pub fn execute(state: &State, rt: &dyn Runtime, argv: &[String]) -> Result<Outcome, XeError> {
    let a = parse_args(argv)?;
    let view = View { state, rt };
    match a.kind {
        Verb::NetworkCreate => network_create(&a, state),
        Verb::NetworkDestroy => {
            a.fixed_keys()?;
            let uuid = a.uuid()?;
            state
                .network(&uuid)
                .ok_or_else(|| XeError::UnknownNetwork(uuid.clone()))?;
            let count = state.vifs_on(&uuid).count();
            if count > 0 {
                return Err(XeError::NetworkInUse { uuid, count });
            }
            Ok(changed(Change::DeleteNetwork(uuid), String::new()))
        }
        Verb::NetworkParamSet => {
            let mut n = network(state, &a)?.clone();
            if a.apply(params::NETWORK, &mut n, &["uuid"], How::Set(CHANGEABLE))? == 0 {
                return Err(XeError::NothingToDo { verb: a.verb });
            }
            Ok(changed(Change::PutNetwork(n), String::new()))
        }
        Verb::NetworkParamGet => {
            // The object first, then param-name (as xe reports them).
            a.own_keys()?;
            let n = network(state, &a)?;
            let key = a.param_name()?;
            let p = params::find(params::NETWORK, &key).ok_or_else(|| XeError::NoParam {
                what: "network",
                key: key.to_string(),
            })?;
            Outcome::print(format!("{}\n", p.text(n, &view)))
        }
        Verb::NetworkList => {
            a.fixed_keys()?;
            Outcome::print(show::list(params::NETWORK, state.networks(), &view, a.json))
        }
        Verb::VifCreate => vif_create(&a, state),
        Verb::VifDestroy => {
            a.fixed_keys()?;
            let uuid = a.uuid()?;
            // A bad stored row goes the same way (and its netdevs with it).
            let bad = state.bad_vifs().any(|b| b.uuid == uuid);
            match state.vif(&uuid) {
                Some(_) => Ok(changed(Change::DeleteVif(uuid), String::new())),
                None if bad => Ok(changed(Change::DeleteVif(uuid), String::new())),
                None if a.if_exists => Outcome::print(String::new()),
                None => Err(XeError::UnknownVif(uuid)),
            }
        }
        Verb::VifParamSet | Verb::VifParamAdd | Verb::VifParamRemove => {
            let mut v = vif(state, &a)?.clone();
            let how = match a.kind {
                Verb::VifParamAdd => How::Add,
                Verb::VifParamRemove => How::Remove,
                _ => How::Set(CHANGEABLE),
            };
            if a.apply(params::VIF, &mut v, &["uuid"], how)? == 0 {
                return Err(XeError::NothingToDo { verb: a.verb });
            }
            Ok(changed(Change::PutVif(v), String::new()))
        }
        Verb::VifParamGet => {
            a.own_keys()?;
            let v = vif(state, &a)?;
            let key = a.param_name()?;
            let p = params::find(params::VIF, &key).ok_or_else(|| XeError::NoParam {
                what: "VIF",
                key: key.to_string(),
            })?;
            Outcome::print(format!("{}\n", p.text(v, &view)))
        }
        Verb::VifList => {
            a.fixed_keys()?;
            // `xe vif-list device=… [--minimal]`: only the VIFs that have this netdev.
            let dev = a.kv.get("device");
            let vifs = || {
                state
                    .vifs()
                    .filter(move |v| dev.is_none_or(|d| v.devices().any(|x| x == d)))
            };
            if a.minimal {
                let uuids: Vec<&str> = vifs().map(|v| v.uuid.as_str()).collect();
                Outcome::print(format!("{}\n", uuids.join(",")))
            } else if dev.is_some() {
                Outcome::print(show::list(params::VIF, vifs(), &view, a.json))
            } else {
                Outcome::print(show::vif_list(&view, a.json))
            }
        }
        Verb::VifStats => {
            a.fixed_keys()?;
            let only = match a.kv.get("uuid") {
                Some(_) => Some(vif(state, &a)?.uuid.as_str()),
                None => None,
            };
            Outcome::print(show::vif_stats(state, rt, only, a.json))
        }
    }
}

fn changed(change: Change, output: String) -> Outcome {
    Outcome {
        changes: vec![change],
        output,
    }
}

fn network_create(a: &Args, state: &State) -> Result<Outcome, XeError> {
    // Its optional keys are every parameter settable at creation, not only those `help` names.
    for (key, required) in a.kind.keys() {
        if required {
            a.need(key)?;
        }
    }
    let mut n = NetworkSettings {
        uuid: uuid::Uuid::new_v4().to_string(),
        name_label: String::new(),
        default_locking_mode: Default::default(),
    };
    a.apply(params::NETWORK, &mut n, &[], How::Set(AT_CREATE))?;
    if state.network(&n.uuid).is_some() {
        return Err(XeError::Exists {
            what: "network",
            uuid: n.uuid,
        });
    }
    let out = format!("{}\n", n.uuid);
    Ok(changed(Change::PutNetwork(n), out))
}

fn vif_create(a: &Args, state: &State) -> Result<Outcome, XeError> {
    a.fixed_keys()?;
    let mut v = VifSettings::new(
        uuid::Uuid::new_v4().to_string(),
        String::new(),
        String::new(),
        [0; 6],
    );
    a.apply(params::VIF, &mut v, &[], How::Set(AT_CREATE))?;
    check_vif(state, &v)?;
    if state.vif(&v.uuid).is_some() {
        return Err(XeError::Exists {
            what: "VIF",
            uuid: v.uuid,
        });
    }
    let out = format!("{}\n", v.uuid);
    Ok(changed(Change::PutVif(v), out))
}

/// A new VIF's references: its network exists, its device is nobody else's.
fn check_vif(state: &State, v: &VifSettings) -> Result<(), XeError> {
    if state.network(&v.network_uuid).is_none() {
        return Err(XeError::UnknownNetwork(v.network_uuid.clone()));
    }
    match state.vif_by_device(&v.device) {
        Some(o) if o.uuid != v.uuid => Err(XeError::DeviceTaken {
            device: v.device.clone(),
            uuid: o.uuid.clone(),
        }),
        _ => Ok(()),
    }
}

/// The toolstack hook's `filter` of one netdev: "this VIF, on this network, with these
/// settings, on this netdev". Creates the network if missing. A VIF is enforced on every
/// netdev it was filtered on and not yet cleared from (an HVM guest's `vif` and `tap`, or both
/// domains during a localhost migration): the settings are the record's, the netdev joins
/// the VIF's. A stale VIF record on the netdev (a previous boot's) gives it up.
pub fn vif_apply(
    state: &State,
    mut vif: VifSettings,
    network_name_label: &str,
) -> Result<Outcome, XeError> {
    params::check_vif(&vif).map_err(|(key, reason)| bad(key, reason))?;
    let mut changes = Vec::new();
    let mut notes = String::new();
    if state.network(&vif.network_uuid).is_none() {
        changes.push(Change::PutNetwork(NetworkSettings {
            uuid: vif.network_uuid.clone(),
            name_label: network_name_label.to_string(),
            default_locking_mode: Default::default(),
        }));
    }
    let device = vif.device.clone();
    // A bad stored row naming the netdev is a stale record too: the valid one replaces it.
    for b in state.bad_vifs() {
        if b.uuid != vif.uuid && b.devices.contains(&device) {
            notes.push_str(&format!(
                "replaced bad stored VIF row {} on {device}\n",
                b.uuid
            ));
            changes.push(Change::DeleteVif(b.uuid.clone()));
        }
    }
    if let Some(stale) = state.vif_by_device(&device)
        && stale.uuid != vif.uuid
    {
        notes.push_str(&format!("replaced stale VIF {} on {device}\n", stale.uuid));
        changes.push(match without_device(stale, &device) {
            Some(rest) => Change::PutVif(rest),
            None => Change::DeleteVif(stale.uuid.clone()),
        });
    }
    if let Some(current) = state.vif(&vif.uuid) {
        // Keep the netdevs the VIF already has; this one joins them.
        vif.device = current.device.clone();
        vif.extra_devices = current.extra_devices.clone();
        if !vif.devices().any(|d| *d == device) {
            vif.extra_devices.push(device);
        }
    }
    let out = format!("{notes}{}\n", vif.uuid);
    changes.push(Change::PutVif(vif));
    Ok(Outcome {
        changes,
        output: out,
    })
}

/// The hook could not use the toolstack's record for `device`, plugged for VM `vm`: the
/// netdev gets a VIF of its own, stored and `disabled` (no network lockd knows resolves to
/// disabled too), so that it stays held across a daemon restart and no VIF of another VM that
/// still names it lends it its policy (that VIF gives the netdev up, as a stale VIF does for
/// a valid record). The toolstack's next valid record for the netdev replaces it.
pub fn vif_fence(state: &State, device: &str, vm: Option<String>) -> Outcome {
    let mut changes = Vec::new();
    if let Some(stale) = state.vif_by_device(device) {
        changes.push(match without_device(stale, device) {
            Some(rest) => Change::PutVif(rest),
            None => Change::DeleteVif(stale.uuid.clone()),
        });
    }
    let mut fence = VifSettings::new(
        uuid::Uuid::new_v4().to_string(),
        String::new(),
        device.to_string(),
        // Any valid guest MAC (the VIF is disabled: nothing is matched against it).
        [0x02, 0, 0, 0, 0, 0],
    );
    fence.vm_uuid = vm;
    fence.locking_mode = lockd_common::policy::LockingMode::Disabled;
    let output = format!("{}\n", fence.uuid);
    changes.push(Change::PutVif(fence));
    Outcome { changes, output }
}

/// `vif` without netdev `device`; None if it was its only one.
fn without_device(vif: &VifSettings, device: &str) -> Option<VifSettings> {
    let mut rest: Vec<String> = vif.devices().filter(|d| *d != device).cloned().collect();
    if rest.is_empty() {
        return None;
    }
    let mut v = vif.clone();
    v.device = rest.remove(0);
    v.extra_devices = rest;
    Some(v)
}

/// The toolstack hook's `clear` of one netdev: the VIF that has it gives up that netdev only
/// (and is removed with its last one). Clearing a netdev lockd does not know is not an error.
pub fn vif_unplug(state: &State, device: &str) -> Result<Outcome, XeError> {
    let Some(vif) = state.vif_by_device(device) else {
        return Outcome::print(String::new());
    };
    let change = match without_device(vif, device) {
        Some(rest) => Change::PutVif(rest),
        None => Change::DeleteVif(vif.uuid.clone()),
    };
    Ok(changed(change, String::new()))
}

/// The VIF named by the command's `uuid=`.
fn vif<'s>(s: &'s State, a: &Args) -> Result<&'s VifSettings, XeError> {
    let uuid = a.uuid()?;
    s.vif(&uuid).ok_or(XeError::UnknownVif(uuid))
}

/// The network named by the command's `uuid=`.
fn network<'s>(s: &'s State, a: &Args) -> Result<&'s NetworkSettings, XeError> {
    let uuid = a.uuid()?;
    s.network(&uuid).ok_or(XeError::UnknownNetwork(uuid))
}
