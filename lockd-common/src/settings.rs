//! The operator's settings, typed once: what the CLI, the toolstack hook and the store parse
//! into, and what every other part of lockd passes around. Nothing downstream re-parses a
//! string; [`VifSettings::policy`] turns settings into what the dataplane enforces.

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

use crate::{
    DEFAULT_TIMESLICE_US,
    policy::{DefaultLockingMode, EffectiveMode, LockingMode, RateLimit, VifPolicy},
};

/// A network and its default locking mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSettings {
    /// Canonical (lower-case, hyphenated) UUID.
    pub uuid: String,
    pub name_label: String,
    pub default_locking_mode: DefaultLockingMode,
}

/// `qos_algorithm_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosAlgorithm {
    /// Empty: no QoS.
    #[default]
    None,
    Ratelimit,
}

impl QosAlgorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [QosAlgorithm; 2] = [QosAlgorithm::None, QosAlgorithm::Ratelimit];

    /// The word `qos_algorithm_type` holds for it (empty for none): the xe CLI, the store and
    /// the legacy state file all read and write this.
    pub fn word(self) -> &'static str {
        match self {
            QosAlgorithm::None => "",
            QosAlgorithm::Ratelimit => "ratelimit",
        }
    }

    /// The algorithm named exactly `word`.
    pub fn from_word(word: &str) -> Option<QosAlgorithm> {
        Self::ALL.into_iter().find(|a| a.word() == word)
    }
}

/// A VIF's QoS setting as xapi keeps it: the algorithm and its params, each settable on its
/// own (params without `ratelimit` are kept but not applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qos {
    pub algorithm: QosAlgorithm,
    /// `qos_algorithm_params:kbps`: kilobytes (1024 B) per second.
    pub kbps: Option<u64>,
    /// `qos_algorithm_params:timeslice_us`: bucket depth in µs of the rate.
    pub timeslice_us: Option<u64>,
}

impl Qos {
    /// The limit in force: `ratelimit` with a rate set.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        match (self.algorithm, self.kbps) {
            (QosAlgorithm::Ratelimit, Some(kbps)) => Some(RateLimit {
                kbps,
                timeslice_us: self.timeslice_us.unwrap_or(DEFAULT_TIMESLICE_US),
            }),
            _ => None,
        }
    }
}

/// One VIF as configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VifSettings {
    /// Canonical UUID.
    pub uuid: String,
    pub network_uuid: String,
    /// Host-side netdev name (`vif3.0`, `tap3.0`, a veth in tests).
    pub device: String,
    /// More netdevs of the same VIF, enforced alike: an HVM guest's `tap` beside its `vif`, or
    /// the other domain's netdev during a localhost migration (the toolstack hook adds and
    /// removes them; each `clear` takes away only its own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_devices: Vec<String>,
    /// The guest MAC.
    pub mac: [u8; 6],
    pub vm_uuid: Option<String>,
    pub locking_mode: LockingMode,
    /// A4, in the order given, without duplicates.
    pub ipv4_allowed: Vec<Ipv4Network>,
    /// A6, likewise.
    pub ipv6_allowed: Vec<Ipv6Network>,
    pub qos: Qos,
}

impl VifSettings {
    /// Every netdev of the VIF: `device`, then `extra_devices`.
    pub fn devices(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.device).chain(&self.extra_devices)
    }

    /// A new VIF with the defaults: `network_default`, no addresses, no QoS.
    pub fn new(uuid: String, network_uuid: String, device: String, mac: [u8; 6]) -> Self {
        Self {
            uuid,
            network_uuid,
            device,
            extra_devices: Vec::new(),
            mac,
            vm_uuid: None,
            locking_mode: LockingMode::NetworkDefault,
            ipv4_allowed: Vec::new(),
            ipv6_allowed: Vec::new(),
            qos: Qos::default(),
        }
    }

    /// The mode in force (POLICY.md, "Effective mode"). A VIF whose network lockd does not know
    /// fails closed: it is `disabled` unless its own mode says otherwise.
    pub fn effective_mode(&self, network: Option<&NetworkSettings>) -> EffectiveMode {
        let default = match network {
            Some(n) => n.default_locking_mode,
            None => DefaultLockingMode::Disabled,
        };
        self.locking_mode.effective(default)
    }

    /// What the dataplane enforces for this VIF.
    pub fn policy(&self, network: Option<&NetworkSettings>) -> VifPolicy {
        VifPolicy {
            mode: self.effective_mode(network),
            mac: self.mac,
            ipv4: self.ipv4_allowed.clone(),
            ipv6: self.ipv6_allowed.clone(),
            rate: self.qos.rate_limit(),
        }
    }

    /// Allowed entries of both families.
    pub fn allowed_count(&self) -> usize {
        self.ipv4_allowed.len() + self.ipv6_allowed.len()
    }
}

/// An allowed item as the operator reads it: a plain address for a host prefix.
pub fn item4(n: &Ipv4Network) -> String {
    if n.prefix() == 32 {
        n.ip().to_string()
    } else {
        n.to_string()
    }
}

/// The same for IPv6.
pub fn item6(n: &Ipv6Network) -> String {
    if n.prefix() == 128 {
        n.ip().to_string()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vif(mode: LockingMode) -> VifSettings {
        let mut v = VifSettings::new("v".into(), "n".into(), "vif1.0".into(), [2, 0, 0, 0, 0, 1]);
        v.locking_mode = mode;
        v
    }

    #[test]
    fn effective_mode_resolves_and_fails_closed() {
        let net = NetworkSettings {
            uuid: "n".into(),
            name_label: "x".into(),
            default_locking_mode: DefaultLockingMode::Unlocked,
        };
        let nd = vif(LockingMode::NetworkDefault);
        assert_eq!(nd.effective_mode(Some(&net)), EffectiveMode::Unlocked);
        assert_eq!(nd.effective_mode(None), EffectiveMode::Disabled);
        assert_eq!(
            vif(LockingMode::Locked).effective_mode(None),
            EffectiveMode::Locked
        );
    }

    #[test]
    fn qos_applies_only_as_ratelimit_with_a_rate() {
        let mut q = Qos {
            kbps: Some(8),
            ..Qos::default()
        };
        assert_eq!(q.rate_limit(), None);
        q.algorithm = QosAlgorithm::Ratelimit;
        assert_eq!(
            q.rate_limit(),
            Some(RateLimit {
                kbps: 8,
                timeslice_us: DEFAULT_TIMESLICE_US
            })
        );
    }
}
