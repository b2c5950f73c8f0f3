//! Holding a netdev lockd cannot give its policy: `disabled` where its programs are (or can
//! be) attached, else off its bridge and down; and letting it go once it is enforced.

use crate::netlink;

use super::Core;

/// Why lockd holds a netdev; `/metrics` labels `lockd_vifs_held` with [`HoldCause::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::daemon) enum HoldCause {
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
    pub(in crate::daemon) const LABELS: [&'static str; 4] = ["record", "bad_row", "policy", "attach"];

    pub(in crate::daemon) fn label(self) -> &'static str {
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
pub(in crate::daemon) struct Held {
    pub(in crate::daemon) ifindex: u32,
    /// The VIF the netdev belongs to, when lockd knows it.
    pub(in crate::daemon) vif: Option<String>,
    pub(in crate::daemon) cause: HoldCause,
    pub(in crate::daemon) detail: String,
    /// Set when not even `disabled` could be enforced (no programs on the netdev): lockd took
    /// it off bridge `.0` (0: none) and set it down (`.1`: whether it was up), to be put back.
    pub(in crate::daemon) isolated: Option<(u32, bool)>,
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

/// What a fenced netdev is held to: nothing passes either way.
pub(super) fn fence_policy() -> lockd_common::policy::VifPolicy {
    lockd_common::policy::VifPolicy {
        mode: lockd_common::policy::EffectiveMode::Disabled,
        mac: [0; 6],
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        rate: None,
    }
}

impl Core {
    /// Gives `ifx` `policy` and attaches its programs where missing.
    pub(super) fn enforce(
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
    pub(super) fn hold(
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
    pub(super) fn release(&mut self, dev: &str) {
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

}
