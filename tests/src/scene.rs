//! The two-VM scene the end-to-end tests share: VM a receives, VM b's VIF is under test.

use std::net::Ipv4Addr;

use lockd_common::policy::format_mac;
use lockd_kit::frames::{self, Mac};

use crate::daemon::Instance;

pub const MAC_A: Mac = [0x02, 0, 0, 0, 0, 0x0a];
pub const MAC_B: Mac = [0x02, 0, 0, 0, 0, 0x0b];
pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// An address VM b may not use.
pub const IP_SPOOF: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);
pub const NET: &str = "0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02";
pub const VIF: &str = "6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01";

/// UDP from VM b to VM a with source `src`, numbered `i` (port and payload), so that every
/// frame is distinct.
pub fn udp(src: Ipv4Addr, i: u32) -> Vec<u8> {
    frames::udp4(
        MAC_B,
        MAC_A,
        src,
        IP_A,
        20_000 + (i % 40_000) as u16,
        9,
        &i.to_be_bytes(),
    )
}

/// VM b's network and VIF (`vifb`), locked, with its allowed addresses given as
/// `vif-param-set` words (`ipv4-allowed=…`, `ipv6-allowed=…`).
pub fn configure(d: &Instance, allowed: &[&str]) {
    d.cli(&["network-create", "name-label=br0", &format!("uuid={NET}")])
        .ok();
    d.cli(&[
        "vif-create",
        &format!("network-uuid={NET}"),
        "device=vifb",
        &format!("mac={}", format_mac(MAC_B)),
        &format!("uuid={VIF}"),
    ])
    .ok();
    let uuid = format!("uuid={VIF}");
    let mut args = vec!["vif-param-set", uuid.as_str(), "locking-mode=locked"];
    args.extend_from_slice(allowed);
    d.cli(&args).ok();
}

/// (bridge, up) of netdev `dev` in `ns`, from `ip -j link show`.
pub fn plumbing(ns: &lockd_kit::netlab::NetNs, dev: &str) -> (String, bool) {
    let j: serde_json::Value =
        serde_json::from_str(&ns.exec(&["ip", "-j", "link", "show", dev]).expect("ip"))
            .expect("json");
    let up = j[0]["flags"]
        .as_array()
        .is_some_and(|f| f.iter().any(|x| x == "UP"));
    (j[0]["master"].as_str().unwrap_or("").to_string(), up)
}
