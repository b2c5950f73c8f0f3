//! The core: one thread that owns state, store and dataplane and handles one message at a
//! time — a command, or a batch of link events. Reconciliation, fencing and the hook's
//! plumbing live here.

use std::{collections::HashMap, path::Path, time::Instant};

use anyhow::{Context as _, Result};

use super::{Reply, Request};
use crate::{
    dataplane::{AttachMode, Dataplane, VifCounters, XdpModeRequest},
    netlink::{self, LinkEvent},
    store::{self, State, Store},
    xe::{self, Runtime},
};

pub(super) struct Core {
    pub(super) state: State,
    pub(super) store: Box<dyn Store>,
    pub(super) dp: Dataplane,
    /// Netdev name → ifindex in the daemon's namespace, kept current from rtnetlink.
    pub(super) links: HashMap<String, u32>,
    pub(super) xdp_mode: XdpModeRequest,
    /// Netdevs the toolstack's hook plugged with a record lockd could not use: enforced as
    /// `disabled` until a valid policy arrives for them (POLICY.md, failing closed). A fence
    /// belongs to that plug: it ends when the netdev goes away or a VIF takes it.
    pub(super) fenced: HashMap<String, Fence>,
    /// Netdevs lockd cannot give their policy, and how it holds them.
    pub(super) held: HashMap<String, Held>,
    /// Netdevs an older pinned layout still enforces, during a takeover at start: their
    /// policies are set here but their programs are not attached anew.
    pub(super) no_attach: std::collections::HashSet<u32>,
    /// ifindex → VIF and netdev names, for the monitor.
    pub(super) names: super::monitor::Names,
    /// `lockd_policy_update_seconds`.
    pub(super) update_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// A hook's fence on a netdev: which VM plugged it, and why its record could not be used.
#[derive(Clone, Debug)]
pub(super) struct Fence {
    pub(super) reason: String,
}

/// Why lockd holds a netdev; `/metrics` labels `lockd_vifs_held` with [`HoldCause::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldCause {
    /// The toolstack's record for the netdev could not be read or applied.
    Record,
    /// The VIF's stored row failed validation.
    BadRow,
    /// The dataplane refused the VIF's policy (a table full, a map error).
    Policy,
    /// The programs could not be attached to the netdev (a qdisc or program refused).
    Attach,
}

impl HoldCause {
    /// Every label, in the order `/metrics` lists them.
    pub const LABELS: [&'static str; 4] = ["record", "bad_row", "policy", "attach"];

    pub fn label(self) -> &'static str {
        match self {
            HoldCause::Record => "record",
            HoldCause::BadRow => "bad_row",
            HoldCause::Policy => "policy",
            HoldCause::Attach => "attach",
        }
    }
}

/// A netdev lockd holds because it cannot give it its policy.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub(super) ifindex: u32,
    /// The VIF the netdev belongs to, when lockd knows it.
    pub(super) vif: Option<String>,
    pub(super) cause: HoldCause,
    pub(super) detail: String,
    /// Set when not even `disabled` could be enforced (no programs on the netdev): lockd took
    /// it off bridge `.0` (0: none) and set it down (`.1`: whether it was up), to be put back.
    pub(super) isolated: Option<(u32, bool)>,
}

impl Held {
    /// How `vif-list` shows it.
    pub(super) fn describe(&self) -> String {
        let how = if self.isolated.is_some() {
            "off its bridge and down"
        } else {
            "enforced as disabled"
        };
        format!("{} ({how}): {}", self.cause.label(), self.detail)
    }
}

/// What a netdev should be given.
enum Want {
    /// Nothing: no VIF has it.
    Nothing,
    /// This VIF's policy.
    Policy(String, lockd_common::policy::VifPolicy),
    /// Held disabled for a known reason (a fence, a bad stored row).
    Hold(Option<String>, HoldCause, String),
}

/// What a fenced netdev is held to: nothing passes either way.
fn fence_policy() -> lockd_common::policy::VifPolicy {
    lockd_common::policy::VifPolicy {
        mode: lockd_common::policy::EffectiveMode::Disabled,
        mac: [0; 6],
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        rate: None,
    }
}

impl Runtime for Core {
    fn ifindex(&self, device: &str) -> Option<u32> {
        self.links.get(device).copied()
    }
    fn attach_mode(&self, ifindex: u32) -> Option<AttachMode> {
        self.dp.attach_mode(ifindex)
    }
    fn counters(&self, ifindex: u32) -> Option<VifCounters> {
        self.dp.counters(ifindex).ok()
    }
    fn held(&self, device: &str) -> Option<String> {
        self.held.get(device).map(Held::describe)
    }
}

impl Core {
    /// Makes the dataplane match the state for every VIF whose netdev exists: removes
    /// policies nobody wants, replaces changed ones atomically, attaches where missing. A
    /// netdev that cannot be enforced is held; the others go on.
    pub(super) fn reconcile_all(&mut self) -> Vec<String> {
        let mut devices: Vec<String> = self
            .state
            .vifs()
            .flat_map(|v| v.devices().cloned())
            .chain(
                self.state
                    .bad_vifs()
                    .flat_map(|b| b.devices.iter().cloned()),
            )
            .chain(self.fenced.keys().cloned())
            .collect();
        let wanted: std::collections::HashSet<u32> = devices
            .iter()
            .filter_map(|d| self.links.get(d).copied())
            .collect();
        for ifx in self.dp.ifindexes() {
            if !wanted.contains(&ifx) {
                if let Err(e) = self.dp.remove_policy(ifx) {
                    tracing::warn!(ifindex = ifx, error = %e, "removing a policy nobody wants");
                    continue;
                }
                self.name(ifx, None);
                tracing::info!(ifindex = ifx, "policy removed");
            }
        }
        devices.sort();
        devices.dedup();
        self.reconcile(&devices)
    }

    /// Makes the dataplane match the state for the netdevs `devices` only: what a command
    /// or a link event touched. Each netdev on its own: one that cannot be given its policy is
    /// held and the rest go on. Returns a line for each netdev held.
    fn reconcile(&mut self, devices: &[String]) -> Vec<String> {
        devices
            .iter()
            .filter_map(|dev| self.reconcile_one(dev))
            .collect()
    }

    fn reconcile_one(&mut self, dev: &str) -> Option<String> {
        let &ifx = self.links.get(dev)?;
        let want = if let Some(f) = self.fenced.get(dev) {
            Want::Hold(None, HoldCause::Record, f.reason.clone())
        } else if let Some(b) = self.state.bad_vif_by_device(dev) {
            Want::Hold(
                Some(b.uuid.clone()),
                HoldCause::BadRow,
                format!("its stored row is bad: {}", b.reason),
            )
        } else if let Some(v) = self.state.vif_by_device(dev) {
            Want::Policy(v.uuid.clone(), self.state.policy(v))
        } else {
            Want::Nothing
        };
        match want {
            Want::Nothing => {
                self.release(dev);
                if self.dp.has_policy(ifx) {
                    if let Err(e) = self.dp.remove_policy(ifx) {
                        tracing::warn!(ifindex = ifx, device = %dev, error = %e, "removing a policy");
                    } else {
                        self.name(ifx, None);
                        tracing::info!(ifindex = ifx, device = %dev, "policy removed");
                    }
                }
                None
            }
            Want::Policy(uuid, policy) => match self.enforce(ifx, &policy) {
                Ok(()) => {
                    self.name(ifx, Some((uuid, dev.to_string())));
                    self.release(dev);
                    None
                }
                Err((cause, detail)) => Some(self.hold(dev, ifx, Some(uuid), cause, detail)),
            },
            Want::Hold(uuid, cause, detail) => Some(self.hold(dev, ifx, uuid, cause, detail)),
        }
    }

    /// Gives `ifx` `policy` and attaches its programs where missing.
    fn enforce(
        &mut self,
        ifx: u32,
        policy: &lockd_common::policy::VifPolicy,
    ) -> Result<(), (HoldCause, String)> {
        let chain = |e: crate::dataplane::DataplaneError| e.to_string();
        self.dp
            .set_policy(ifx, policy)
            .map_err(|e| (HoldCause::Policy, chain(e)))?;
        if self.dp.attach_mode(ifx).is_none() && !self.no_attach.contains(&ifx) {
            let mode = self
                .dp
                .attach(ifx, self.xdp_mode)
                .map_err(|e| (HoldCause::Attach, chain(e)))?;
            tracing::info!(ifindex = ifx, ?mode, "attached");
        }
        Ok(())
    }

    /// Holds netdev `dev`: `disabled` where its programs are (or can be) attached, else off
    /// its bridge and down. Logs one line when the hold (or its cause) is new.
    fn hold(
        &mut self,
        dev: &str,
        ifx: u32,
        vif: Option<String>,
        cause: HoldCause,
        detail: String,
    ) -> String {
        let before = self.held.get(dev).cloned();
        let mut isolated = before.as_ref().and_then(|h| h.isolated);
        // The attach just failed: trying it again for `disabled` would fail the same way.
        let disabled = if cause == HoldCause::Attach {
            Err(detail.clone())
        } else {
            self.enforce(ifx, &fence_policy()).map_err(|(_, e)| e)
        };
        let failed = match disabled {
            Ok(()) => {
                self.name(
                    ifx,
                    Some((vif.clone().unwrap_or_default(), dev.to_string())),
                );
                // Enforced now: a netdev that was held off its bridge goes back.
                if let Some((master, up)) = isolated.take()
                    && let Err(e) = netlink::restore(ifx, master, up)
                {
                    tracing::warn!(device = %dev, error = %e, "putting a held netdev back");
                }
                None
            }
            Err(_) => match netlink::isolate(ifx) {
                Ok((master, up)) => {
                    // Held already: what it was before the first hold, unless the toolstack
                    // has put it on a bridge since.
                    isolated = Some(match isolated {
                        Some((m0, up0)) if master == 0 => (m0, up0 || up),
                        _ => (master, up),
                    });
                    None
                }
                Err(e) => Some(e),
            },
        };
        let h = Held {
            ifindex: ifx,
            vif: vif.clone(),
            cause,
            detail: detail.clone(),
            isolated,
        };
        let who = match &vif {
            Some(u) => format!("VIF {u} ({dev})"),
            None => format!("netdev {dev}"),
        };
        if let Some(e) = failed {
            tracing::error!(vif = ?vif, device = %dev, cause = cause.label(), error = %e, "cannot hold: neither disabled nor down: {detail}");
            self.held.insert(dev.to_string(), h);
            return format!("{who} cannot be enforced ({detail}) and could not be set down: {e}");
        }
        let line = format!("{who} is held, {}", h.describe());
        if before.as_ref().is_none_or(|b| {
            b.cause != cause || b.detail != detail || b.isolated.is_some() != h.isolated.is_some()
        }) {
            tracing::warn!(vif = ?vif, device = %dev, ifindex = ifx, cause = cause.label(), "{line}");
        }
        self.held.insert(dev.to_string(), h);
        line
    }

    /// Ends a hold: the netdev is enforced normally now; one held off its bridge goes back.
    fn release(&mut self, dev: &str) {
        let Some(h) = self.held.remove(dev) else {
            return;
        };
        // Only the netdev that was held goes back (not another that took its name).
        if let Some((master, up)) = h.isolated
            && self.links.get(dev) == Some(&h.ifindex)
            && let Err(e) = netlink::restore(h.ifindex, master, up)
        {
            tracing::warn!(device = %dev, error = %e, "putting a held netdev back");
        }
        tracing::info!(vif = ?h.vif, device = %dev, "hold released: enforced normally");
    }

    /// Records (or forgets) which VIF and netdev `ifindex` is, for the monitor.
    fn name(&self, ifindex: u32, name: Option<(String, String)>) {
        let mut names = self.names.write().unwrap_or_else(|p| p.into_inner());
        match name {
            Some((uuid, device)) => {
                let counter = self.dp.counter_index(ifindex);
                names.insert(
                    ifindex,
                    super::monitor::VifName {
                        uuid,
                        device,
                        counter,
                    },
                );
            }
            None => {
                names.remove(&ifindex);
            }
        }
    }

    /// What `/metrics` shows, read now: every enforced netdev's counters and mode.
    pub(super) fn snapshot(&self) -> super::metrics::Snapshot {
        let mut vifs = Vec::new();
        let names = self.names.read().unwrap_or_else(|p| p.into_inner()).clone();
        for (ifx, n) in names {
            let Ok(counters) = self.dp.counters(ifx) else {
                continue;
            };
            let mode = match self.state.vif_by_device(&n.device) {
                Some(v) if !self.held.contains_key(&n.device) => self.state.policy(v).mode.name(),
                _ => "disabled",
            };
            vifs.push(super::metrics::VifSample {
                uuid: n.uuid,
                device: n.device,
                mode,
                counters,
            });
        }
        vifs.sort_by(|a, b| a.device.cmp(&b.device));
        let held = self.held.values().map(|h| h.cause.label()).collect();
        super::metrics::Snapshot { vifs, held }
    }

    /// A monitor's filter, checked: the VIF must exist (its canonical uuid goes back in
    /// `stdout`), the reason must be one lockd counts.
    fn monitor_request(
        &self,
        vif: Option<String>,
        device: Option<String>,
        reason: Option<String>,
    ) -> Result<String, String> {
        if let Some(r) = &reason
            && !lockd_common::Reason::ALL.iter().any(|x| x.name() == r)
        {
            return Err(format!(
                "unknown reason '{r}'; one of: {}",
                lockd_common::Reason::ALL
                    .iter()
                    .map(|x| x.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(d) = &device
            && self.state.vif_by_device(d).is_none()
            && !self.fenced.contains_key(d)
        {
            return Err(format!("no VIF has device '{d}'"));
        }
        match vif {
            None => Ok(String::new()),
            Some(u) => {
                let canonical = xe::params::uuid(&u)?;
                match self.state.vif(&canonical) {
                    Some(v) => Ok(v.uuid.clone()),
                    None => Err(format!("unknown VIF '{u}'")),
                }
            }
        }
    }

    /// The policy in force for a VIF, as `lockd explain --vif` wants it.
    fn policy_request(&self, vif: &str) -> Result<String, String> {
        let canonical = xe::params::uuid(vif)?;
        let v = self
            .state
            .vif(&canonical)
            .ok_or_else(|| format!("unknown VIF '{vif}'"))?;
        let p = self.state.policy(v);
        Ok(serde_json::json!({
            "uuid": v.uuid,
            "mode": p.mode.name(),
            "mac": lockd_common::policy::format_mac(p.mac),
            "ipv4": p.ipv4.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
            "ipv6": p.ipv6.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        })
        .to_string())
    }

    pub(super) fn command(&mut self, req: Request) -> Reply {
        let fail = |msg: String| Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("lockd: {msg}\n"),
        };
        let started = Instant::now();
        let mut notes = String::new();
        // (netdev, bridge to put it on) for the hook's plumbing after the policy is in force.
        let mut bridge: Option<(String, Option<String>)> = None;
        let out = match req {
            Request::Fence {
                device,
                reason,
                vm_uuid,
            } => return self.fence(device, reason, vm_uuid),
            Request::Monitor {
                vif,
                device,
                reason,
            } => {
                return match self.monitor_request(vif, device, reason) {
                    Ok(uuid) => Reply {
                        code: 0,
                        stdout: uuid,
                        stderr: String::new(),
                    },
                    Err(e) => fail(e),
                };
            }
            Request::Policy { vif } => {
                return match self.policy_request(&vif) {
                    Ok(p) => Reply {
                        code: 0,
                        stdout: p,
                        stderr: String::new(),
                    },
                    Err(e) => fail(e),
                };
            }
            Request::Xe { argv } => {
                // Tests of the panic policy inject a fault here (debug builds only).
                #[cfg(debug_assertions)]
                if argv.first().map(String::as_str) == Some("network-create")
                    && std::env::var("LOCKD_FAULT").as_deref() == Ok("panic-on-network-create")
                {
                    panic!("fault injected by LOCKD_FAULT");
                }
                // Host bits in a list item are accepted and stored as the network; say so.
                for a in argv.iter().skip(1) {
                    if let Some((key, value)) = a.split_once('=')
                        && key.to_ascii_lowercase().contains("allowed")
                    {
                        for n in lockd_common::policy::host_bit_notes(value) {
                            notes += &format!("lockd: note: {n}\n");
                        }
                    }
                }
                xe::execute(&self.state, self, &argv)
            }
            Request::Apply {
                vif,
                network_name_label,
                plumb,
            } => {
                let (uuid, device) = (vif.uuid.clone(), vif.device.clone());
                if plumb {
                    bridge = Some((device.clone(), Some(network_name_label.clone())));
                }
                let vm = vif.vm_uuid.clone();
                match xe::vif_apply(&self.state, vif, &network_name_label) {
                    Ok(o) => Ok(o),
                    // The toolstack's settings cannot be applied: fail closed.
                    Err(e) => {
                        return self.fence(
                            device.clone(),
                            format!("VIF {uuid} ({device}): {e}"),
                            vm,
                        );
                    }
                }
            }
            Request::Unplug { device, plumb } => {
                if plumb {
                    bridge = Some((device.clone(), None));
                }
                xe::vif_unplug(&self.state, &device)
            }
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if !out.changes.is_empty() {
            let mut devices = Vec::new();
            let mut undo = Vec::with_capacity(out.changes.len());
            let mut unfenced = Vec::new();
            let bad_before = self.state.bad_vifs_snapshot();
            for c in &out.changes {
                self.state.devices_touched(c, &mut devices);
                undo.push(self.state.apply(c.clone()));
                self.state.devices_touched(c, &mut devices);
                // A valid VIF for a netdev ends a hook's fence on it.
                if let store::Change::PutVif(v) = c {
                    for d in v.devices() {
                        if let Some(f) = self.fenced.remove(d) {
                            unfenced.push((d.clone(), f));
                        }
                    }
                }
            }
            devices.sort();
            devices.dedup();
            // Durable first: the dataplane follows what is stored, and a netdev it cannot
            // enforce is held, never left with half a change.
            if let Err(e) = self.store.commit(&out.changes) {
                for u in undo.into_iter().rev() {
                    self.state.apply(u);
                }
                self.state.restore_bad_vifs(bad_before);
                self.fenced.extend(unfenced);
                return fail(format!("{e}; nothing was changed"));
            }
            for line in self.reconcile(&devices) {
                notes += &format!("lockd: warning: {line}\n");
            }
            self.update_seconds.observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                devices = devices.len(),
                "command applied"
            );
        } else if let Some((device, _)) = &bridge {
            // Nothing changed, but the command is an event for the netdev: a held one is
            // tried again.
            let device = device.clone();
            for line in self.reconcile(std::slice::from_ref(&device)) {
                notes += &format!("lockd: warning: {line}\n");
            }
        }
        if let Some((device, br)) = bridge
            && let Err(e) = self.plumb(&device, br.as_deref())
        {
            return Reply {
                code: 1,
                stdout: out.output,
                stderr: format!("{notes}lockd: {device}: {e:#} (its policy is in force)\n"),
            };
        }
        Reply {
            code: 0,
            stdout: out.output,
            stderr: notes,
        }
    }

    /// The original script's other duty: the netdev on its bridge (none when its VIF is
    /// disabled or cleared) and up. Only what differs is changed; a netdev not there yet is
    /// left to its hotplug.
    fn plumb(&mut self, device: &str, bridge: Option<&str>) -> Result<()> {
        let Some(&ifx) = self.links.get(device) else {
            return Ok(());
        };
        let disabled = self.state.vif_by_device(device).is_some_and(|v| {
            self.state.policy(v).mode == lockd_common::policy::EffectiveMode::Disabled
        });
        let master = match bridge {
            Some(b) if !disabled => *self
                .links
                .get(b)
                .with_context(|| format!("bridge {b} does not exist"))?,
            _ => 0,
        };
        // A netdev held off its bridge stays off; it goes onto this bridge when released. One
        // lockd could neither enforce nor set down is never plumbed.
        if let Some(h) = self.held.get_mut(device) {
            if let Some(isolated) = &mut h.isolated {
                *isolated = (master, true);
                return Ok(());
            }
            if self.dp.attach_mode(ifx).is_none() {
                anyhow::bail!(
                    "not put on its bridge: it is held ({}) without its programs",
                    h.describe()
                );
            }
        }
        netlink::plumb(ifx, master).with_context(|| format!("plumbing {device}"))
    }

    /// At start: a VIF the toolstack plugged through the hook has its record on disk; if the
    /// record changed while the daemon was down (a live locking-mode change the hook could not
    /// deliver), it is applied now. Records for netdevs that do not exist are left alone.
    pub(super) fn resync_from_records(&mut self, dir: &Path) {
        let mut todo = Vec::new();
        for vif in self.state.vifs() {
            let Some(vm) = &vif.vm_uuid else { continue };
            for dev in vif.devices() {
                let devid = dev
                    .strip_prefix("vif")
                    .or_else(|| dev.strip_prefix("tap"))
                    .and_then(|rest| rest.split_once('.'))
                    .map(|(_, devid)| devid.to_string());
                if let Some(devid) = devid
                    && self.links.contains_key(dev)
                {
                    todo.push((dev.clone(), vm.clone(), devid));
                }
            }
        }
        for (dev, vm, devid) in todo {
            let req = match crate::hook::read_record(dir, "classic", &vm, &devid)
                .and_then(|r| crate::hook::settings_of(&r, &dev, &vm))
            {
                Ok((vif, bridge)) => Request::Apply {
                    vif,
                    network_name_label: bridge,
                    plumb: true,
                },
                Err(e) => {
                    tracing::debug!(device = %dev, error = %format!("{e:#}"), "no usable record");
                    continue;
                }
            };
            let r = self.command(req);
            if r.code != 0 {
                tracing::warn!(device = %dev, error = %r.stderr.trim(), "resync from xenopsd's record");
            }
        }
    }

    /// `Request::Fence`: the hook could not give `device` a policy. A VIF of the same VM that
    /// already has the netdev keeps its policy; any other netdev (a fresh one, or a name an
    /// earlier VM used) is held disabled until a valid policy arrives.
    fn fence(&mut self, device: String, reason: String, vm: Option<String>) -> Reply {
        let vm = vm.map(|u| xe::params::uuid(&u).unwrap_or(u));
        let kept = self
            .state
            .vif_by_device(&device)
            .filter(|_| !self.fenced.contains_key(&device))
            .filter(|v| vm.is_none() || v.vm_uuid == vm)
            .map(|v| v.uuid.clone());
        let what = match &kept {
            Some(uuid) => format!("VIF {uuid} ({device}) keeps the policy it had"),
            None => {
                // Durable: a stored disabled VIF of its own holds the netdev across a restart.
                let out = xe::vif_fence(&self.state, &device, vm);
                let mut undo = Vec::new();
                for c in &out.changes {
                    undo.push(self.state.apply(c.clone()));
                }
                let stored = match self.store.commit(&out.changes) {
                    Ok(()) => String::new(),
                    Err(e) => {
                        for u in undo.into_iter().rev() {
                            self.state.apply(u);
                        }
                        format!(" (not stored: {e}; held until the daemon restarts)")
                    }
                };
                self.fenced.insert(
                    device.clone(),
                    Fence {
                        reason: reason.clone(),
                    },
                );
                let held = self.reconcile(std::slice::from_ref(&device));
                match self.held.get(&device) {
                    Some(h) if h.isolated.is_none() => format!(
                        "{device} is enforced as disabled until a valid policy arrives{stored}"
                    ),
                    Some(_) => format!(
                        "{device} is held off its bridge and down until a valid policy arrives ({}){stored}",
                        held.join("; ")
                    ),
                    None if !self.links.contains_key(&device) => {
                        format!("{device} will be enforced as disabled when it appears{stored}")
                    }
                    None => format!("{device}: holding it failed: {}", held.join("; ")),
                }
            }
        };
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("lockd: {reason}; {what}\n"),
        }
    }

    /// After lost link events (ENOBUFS): `links` is every netdev there is now. Netdevs that
    /// vanished meanwhile are removed as their deletion would have removed them.
    pub(super) fn resync(&mut self, links: Vec<(u32, String)>) {
        let now: std::collections::HashSet<(u32, &str)> =
            links.iter().map(|(i, n)| (*i, n.as_str())).collect();
        let mut events: Vec<LinkEvent> = self
            .links
            .iter()
            .filter(|(n, i)| !now.contains(&(**i, n.as_str())))
            .map(|(n, i)| LinkEvent::Del {
                ifindex: *i,
                name: n.clone(),
            })
            .collect();
        // A policy on an ifindex no netdev has any more (its name was never seen).
        let known: std::collections::HashSet<u32> = links.iter().map(|(i, _)| *i).collect();
        for ifx in self.dp.ifindexes() {
            if !known.contains(&ifx) && !self.links.values().any(|i| *i == ifx) {
                events.push(LinkEvent::Del {
                    ifindex: ifx,
                    name: String::new(),
                });
            }
        }
        tracing::info!(
            vanished = events.len(),
            links = links.len(),
            "resynchronised with rtnetlink"
        );
        events.extend(
            links
                .into_iter()
                .map(|(ifindex, name)| LinkEvent::New { ifindex, name }),
        );
        self.links_changed(events);
    }

    pub(super) fn links_changed(&mut self, events: Vec<LinkEvent>) {
        let start = Instant::now();
        let mut devices = Vec::new();
        for e in events {
            match e {
                LinkEvent::New { ifindex, name } => {
                    // A rename shows up as NEWLINK with a known ifindex and a new name: the
                    // old name's VIF lost its netdev.
                    let mut renamed = Vec::new();
                    self.links.retain(|n, i| {
                        let stale = *i == ifindex && *n != name;
                        if stale {
                            renamed.push(n.clone());
                        }
                        !stale
                    });
                    // The old name's fence and hold belong to this netdev, not to the next
                    // one to take the name.
                    for n in &renamed {
                        self.fenced.remove(n);
                        self.held.remove(n);
                    }
                    devices.extend(renamed);
                    devices.push(name.clone());
                    self.links.insert(name, ifindex);
                }
                LinkEvent::Del { ifindex, name } => {
                    self.links.retain(|_, i| *i != ifindex);
                    // A fence and a hold belong to that netdev: a later one of the same name
                    // starts afresh.
                    self.fenced.remove(&name);
                    self.held.retain(|n, h| *n != name && h.ifindex != ifindex);
                    // The kernel already detached the program; drop our side of it before the
                    // ifindex can be reused.
                    if self.dp.has_policy(ifindex) {
                        if let Err(err) = self.dp.remove_policy(ifindex) {
                            tracing::warn!(ifindex, %name, error = %err, "cleanup after link removal");
                        }
                        tracing::info!(ifindex, %name, "netdev gone");
                    }
                }
            }
        }
        devices.sort();
        devices.dedup();
        // Each held netdev has logged its line.
        let _held = self.reconcile(&devices);
        tracing::debug!(
            took_us = start.elapsed().as_micros() as u64,
            "link events handled"
        );
    }
}
