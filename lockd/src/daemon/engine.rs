//! The core: one thread that owns state, store and dataplane and handles one message at a
//! time — a command, or a batch of link events. Reconciliation, fencing and the hook's
//! plumbing live here.

use std::{collections::HashMap, path::Path, time::Instant};

use anyhow::{Context as _, Result};

use super::{Reply, Request};
use crate::{
    dataplane::{AttachMode, Dataplane, VifCounters, XdpModeRequest},
    netlink::{self, LinkEvent},
    store::{State, Store},
    xe::{self, Runtime},
};

pub(super) struct Core {
    pub(super) state: State,
    pub(super) store: Box<dyn Store>,
    pub(super) dp: Dataplane,
    /// Netdev name → ifindex in the daemon's namespace, kept current from rtnetlink.
    pub(super) links: HashMap<String, u32>,
    pub(super) xdp_mode: XdpModeRequest,
    /// Netdevs with no VIF whose policy could not be applied: enforced as `disabled` until a
    /// VIF with a valid policy takes the netdev (POLICY.md, failing closed).
    pub(super) fenced: std::collections::HashSet<String>,
    /// Netdevs an older pinned layout still enforces, during a takeover at start: their
    /// policies are set here but their programs are not attached anew.
    pub(super) no_attach: std::collections::HashSet<u32>,
    /// ifindex → VIF and netdev names, for the monitor's events.
    pub(super) names: super::monitor::Names,
    /// `lockd_policy_update_seconds`.
    pub(super) update_seconds: prometheus_client::metrics::histogram::Histogram,
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
}

impl Core {
    /// Makes the dataplane match the state for every VIF whose netdev exists: removes
    /// policies nobody wants, replaces changed ones atomically, attaches where missing.
    pub(super) fn reconcile_all(&mut self) -> Result<()> {
        let mut devices: Vec<String> = self
            .state
            .vifs()
            .flat_map(|v| v.devices().cloned())
            .collect();
        let wanted: std::collections::HashSet<u32> = devices
            .iter()
            .filter_map(|d| self.links.get(d).copied())
            .collect();
        for ifx in self.dp.ifindexes() {
            if !wanted.contains(&ifx) {
                self.dp.remove_policy(ifx)?;
                self.name(ifx, None);
                tracing::info!(ifindex = ifx, "policy removed");
            }
        }
        devices.dedup();
        self.reconcile(&devices)
    }

    /// Makes the dataplane match the state for the netdevs `devices` only: what a command
    /// or a link event touched.
    fn reconcile(&mut self, devices: &[String]) -> Result<()> {
        for dev in devices {
            let Some(&ifx) = self.links.get(dev) else {
                continue;
            };
            let Some(vif) = self.state.vif_by_device(dev) else {
                if self.fenced.contains(dev) {
                    self.dp.set_policy(ifx, &fence_policy())?;
                    self.name(ifx, Some((String::new(), dev.clone())));
                    if self.dp.attach_mode(ifx).is_none() {
                        self.dp.attach(ifx, self.xdp_mode)?;
                    }
                    tracing::warn!(ifindex = ifx, device = %dev, "no valid policy: enforced as disabled");
                    continue;
                }
                if self.dp.has_policy(ifx) {
                    self.dp.remove_policy(ifx)?;
                    self.name(ifx, None);
                    tracing::info!(ifindex = ifx, device = %dev, "policy removed");
                }
                continue;
            };
            let (uuid, policy) = (vif.uuid.clone(), self.state.policy(vif));
            self.fenced.remove(dev);
            self.dp
                .set_policy(ifx, &policy)
                .with_context(|| format!("VIF {uuid} (ifindex {ifx})"))?;
            self.name(ifx, Some((uuid.clone(), dev.clone())));
            if self.dp.attach_mode(ifx).is_none() && !self.no_attach.contains(&ifx) {
                let mode = self
                    .dp
                    .attach(ifx, self.xdp_mode)
                    .with_context(|| format!("attaching VIF {uuid} (ifindex {ifx})"))?;
                tracing::info!(vif = %uuid, ifindex = ifx, ?mode, "attached");
            }
        }
        Ok(())
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
                Some(v) => self.state.policy(v).mode.name(),
                None => "disabled",
            };
            vifs.push(super::metrics::VifSample {
                uuid: n.uuid,
                device: n.device,
                mode,
                counters,
            });
        }
        vifs.sort_by(|a, b| a.device.cmp(&b.device));
        super::metrics::Snapshot { vifs }
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
            && !self.fenced.contains(d)
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
            Request::Fence { device, reason } => return self.fence(device, reason),
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
                match xe::vif_apply(&self.state, vif, &network_name_label) {
                    Ok(o) => Ok(o),
                    // The toolstack's settings cannot be applied: fail closed.
                    Err(e) => {
                        return self.fence(device.clone(), format!("VIF {uuid} ({device}): {e}"));
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
            for c in &out.changes {
                self.state.devices_touched(c, &mut devices);
                undo.push(self.state.apply(c.clone()));
                self.state.devices_touched(c, &mut devices);
            }
            devices.sort();
            devices.dedup();
            let applied = self
                .reconcile(&devices)
                .and_then(|()| Ok(self.store.commit(&out.changes)?));
            if let Err(e) = applied {
                for u in undo.into_iter().rev() {
                    self.state.apply(u);
                }
                // A netdev this command meant to give a policy, and which has none now, is
                // held disabled rather than left unfiltered.
                for d in &devices {
                    if self.links.contains_key(d) && self.state.vif_by_device(d).is_none() {
                        self.fenced.insert(d.clone());
                    }
                }
                if let Err(e2) = self.reconcile(&devices) {
                    tracing::error!(error = %e2, "restoring the previous policy failed");
                }
                return fail(format!("{e:#}; nothing was changed"));
            }
            self.update_seconds.observe(started.elapsed().as_secs_f64());
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                devices = devices.len(),
                "command applied"
            );
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
    fn plumb(&self, device: &str, bridge: Option<&str>) -> Result<()> {
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

    /// `Request::Fence`: the hook could not give `device` a policy.
    fn fence(&mut self, device: String, reason: String) -> Reply {
        let kept = self.state.vif_by_device(&device).map(|v| v.uuid.clone());
        let what = match &kept {
            Some(uuid) => format!("VIF {uuid} ({device}) keeps the policy it had"),
            None => {
                self.fenced.insert(device.clone());
                match self.reconcile(std::slice::from_ref(&device)) {
                    Ok(()) if self.links.contains_key(&device) => {
                        format!("{device} is enforced as disabled until a valid policy arrives")
                    }
                    Ok(()) => format!("{device} will be enforced as disabled when it appears"),
                    Err(e) => format!("{device}: enforcing disabled failed too: {e:#}"),
                }
            }
        };
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("lockd: {reason}; {what}\n"),
        }
    }

    pub(super) fn links_changed(&mut self, events: Vec<LinkEvent>) {
        let start = Instant::now();
        let mut devices = Vec::new();
        for e in events {
            match e {
                LinkEvent::New { ifindex, name } => {
                    // A rename shows up as NEWLINK with a known ifindex and a new name: the
                    // old name's VIF lost its netdev.
                    self.links.retain(|n, i| {
                        let stale = *i == ifindex && *n != name;
                        if stale {
                            devices.push(n.clone());
                        }
                        !stale
                    });
                    devices.push(name.clone());
                    self.links.insert(name, ifindex);
                }
                LinkEvent::Del { ifindex, name } => {
                    self.links.retain(|_, i| *i != ifindex);
                    self.fenced.remove(&name);
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
        if let Err(e) = self.reconcile(&devices) {
            tracing::error!(error = %format!("{e:#}"), "reconcile after link change failed");
        }
        tracing::debug!(
            took_us = start.elapsed().as_micros() as u64,
            "link events handled"
        );
    }
}
