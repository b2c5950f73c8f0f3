//! The maps of `lockd monitor`, handed out of the dataplane to the daemon's monitor: its
//! switch and cap, the per-VIF budgets (for the suppressed counts) and the ring of events.

use aya::maps::{Array, MapData, RingBuf};
use lockd_common::{MAP_EVENTS, MAP_MONITOR, MAP_MONITOR_BUDGET, MonitorBudget, MonitorCtl};

use super::{error::Result, take};

/// The monitor's maps, owned by whoever reads the events.
pub struct MonitorMaps {
    pub ctl: Array<MapData, MonitorCtl>,
    pub budget: Array<MapData, MonitorBudget>,
    pub events: RingBuf<MapData>,
}

impl MonitorMaps {
    /// Takes the monitor's maps out of the loaded object (once; None after). Writing stays off
    /// until [`MonitorMaps::set`].
    pub(super) fn take(ebpf: &mut aya::Ebpf) -> Option<Self> {
        Some(MonitorMaps {
            ctl: take(ebpf, MAP_MONITOR).ok()?,
            budget: take(ebpf, MAP_MONITOR_BUDGET).ok()?,
            events: take(ebpf, MAP_EVENTS).ok()?,
        })
    }

    /// Switches event writing on (with a per-VIF cap, events a second) or off.
    pub fn set(&mut self, enabled: bool, cap: u32) -> Result<()> {
        self.ctl
            .set(
                0,
                MonitorCtl {
                    enabled: u32::from(enabled),
                    cap,
                },
                0,
            )
            .map_err(super::error::map_err(MAP_MONITOR))
    }

    /// Drops the VIF with counter index `counter` did not report (over the cap or with the
    /// ring full), since the slot was first used; never goes back.
    pub fn suppressed(&self, counter: u32) -> u64 {
        self.budget.get(&counter, 0).map_or(0, |b| b.suppressed)
    }
}
