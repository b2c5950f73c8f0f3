//! The core: one thread that owns state, store and dataplane and handles one message at a
//! time — a command, or a batch of link events. Reconciliation, fencing and the hook's
//! plumbing live here: holds in `hold.rs`, the toolstack's side in `toolstack.rs`.

use std::{collections::HashMap, time::Instant};


use crate::{
    protocol::{Reply, Request},
    dataplane::{AttachMode, Dataplane, VifCounters, XdpModeRequest},
    netlink::LinkEvent,
    store::{State, Store},
    xe::{self, Runtime},
};

pub(super) mod group;
pub(super) mod hold;
mod toolstack;

use hold::{Held, HoldCause};
use toolstack::Fence;

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
    /// `lockd_store_transaction_commands`.
    pub(super) group_commands: prometheus_client::metrics::histogram::Histogram,
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

    /// Applies what other hosts wrote to the store and enforces it here: a netdev that a VIF
    /// now names is no longer fenced (as a command's VIF ends a fence).
    pub(in crate::daemon) fn remote(&mut self) {
        let devices = self.store.take_remote(&mut self.state);
        if devices.is_empty() {
            return;
        }
        for d in &devices {
            if self.state.vif_by_device(d).is_some() {
                self.fenced.remove(d);
            }
        }
        tracing::debug!(devices = devices.len(), "applying what other hosts wrote");
        // Each held netdev has logged its line.
        let _held = self.reconcile(&devices);
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
                _ => lockd_common::policy::EffectiveMode::Disabled.name(),
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
        super::metrics::Snapshot {
            vifs,
            held,
            store: self.store.status(),
        }
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
                let canonical = xe::params::uuid(&u).map_err(|e| e.to_string())?;
                match self.state.vif(&canonical) {
                    Some(v) => Ok(v.uuid.clone()),
                    None => Err(format!("unknown VIF '{u}'")),
                }
            }
        }
    }

    /// The policy in force for a VIF, as `lockd explain --vif` wants it.
    fn policy_request(&self, vif: &str) -> Result<String, String> {
        let canonical = xe::params::uuid(vif).map_err(|e| e.to_string())?;
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
        let fail = |msg: String| Reply::fail(1, msg);
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
                return self
                    .monitor_request(vif, device, reason)
                    .map_or_else(fail, Reply::ok);
            }
            Request::Policy { vif } => {
                return self.policy_request(&vif).map_or_else(fail, Reply::ok);
            }
            Request::Xe { argv } => {
                // A group of one: the same path as commands that came together.
                let (tx, mut rx) = tokio::sync::oneshot::channel();
                let mut group = group::Group::default();
                self.join_group(&mut group, &argv, tx);
                self.commit_group(group);
                return rx
                    .try_recv()
                    .unwrap_or_else(|_| Reply::fail(1, "the command was not answered"));
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
            let staged = self.stage(out.changes);
            // Durable first: the dataplane follows what is stored, and a netdev it cannot
            // enforce is held, never left with half a change.
            if let Err(e) = self.store.commit(&staged.changes) {
                self.unstage(staged);
                return fail(format!("{e}; nothing was changed"));
            }
            self.group_commands.observe(1.0);
            for line in self.reconcile(&staged.devices) {
                notes += &format!("lockd: warning: {line}\n");
            }
            self.update_seconds.observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                devices = staged.devices.len(),
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
                stderr: format!("{notes}lockd: {device}: {e} (its policy is in force)\n"),
            };
        }
        Reply {
            code: 0,
            stdout: out.output,
            stderr: notes,
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
