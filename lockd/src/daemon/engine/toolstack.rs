//! The toolstack's side of the core: the hook's plumbing of a netdev onto its bridge, fences
//! for records lockd cannot use, and the resync from xenopsd's records at start.

use std::path::Path;

use crate::{
    netlink,
    protocol::{Reply, Request},
    xe,
};

use super::Core;

/// A hook's fence on a netdev: which VM plugged it, and why its record could not be used.
#[derive(Clone, Debug)]
pub(in crate::daemon) struct Fence {
    pub(in crate::daemon) reason: String,
}

/// Why the hook's plumbing of a netdev was not done (its policy is in force regardless).
#[derive(Debug, thiserror::Error)]
pub(super) enum PlumbError {
    /// The record's bridge is not a netdev here.
    #[error("bridge {0} does not exist")]
    NoBridge(String),
    /// The netdev is held without its programs: it stays off every bridge.
    #[error("not put on its bridge: it is held ({0}) without its programs")]
    Held(String),
    /// rtnetlink refused the change.
    #[error("plumbing {device}: {error}")]
    Netlink {
        device: String,
        error: std::io::Error,
    },
}

impl Core {
    /// The original script's other duty: the netdev on its bridge (none when its VIF is
    /// disabled or cleared) and up. Only what differs is changed; a netdev not there yet is
    /// left to its hotplug.
    pub(super) fn plumb(&mut self, device: &str, bridge: Option<&str>) -> Result<(), PlumbError> {
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
                .ok_or_else(|| PlumbError::NoBridge(b.to_string()))?,
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
                return Err(PlumbError::Held(h.describe()));
            }
        }
        netlink::plumb(ifx, master).map_err(|error| PlumbError::Netlink {
            device: device.to_string(),
            error,
        })
    }

    /// At start: a VIF the toolstack plugged through the hook has its record on disk; if the
    /// record changed while the daemon was down (a live locking-mode change the hook could not
    /// deliver), it is applied now. Records for netdevs that do not exist are left alone.
    pub(in crate::daemon) fn resync_from_records(&mut self, dir: &Path) {
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
            let req = match crate::xenopsd::read_record(dir, "classic", &vm, &devid)
                .and_then(|r| crate::xenopsd::settings_of(&r, &dev, &vm))
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
    pub(super) fn fence(&mut self, device: String, reason: String, vm: Option<String>) -> Reply {
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
                    Ok(()) => {
                        self.group_commands.observe(1.0);
                        String::new()
                    }
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
        Reply::fail(1, format_args!("{reason}; {what}"))
    }

}
