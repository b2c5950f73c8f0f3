//! What the read-only verbs print: `vif-list`, `vif-stats` and parameter values.

use lockd_common::{Direction, Reason};
use serde_json::{Value, json};

use super::Runtime;
use crate::{
    dataplane::AttachMode,
    state::{Qos, State, Vif},
};

pub(super) fn effective(s: &State, vif: &Vif) -> String {
    let d = s
        .networks
        .get(&vif.network_uuid)
        .map(|n| n.default_locking_mode)
        .unwrap_or_default();
    vif.locking_mode.effective(d).to_string()
}

pub(super) fn qos_params(q: &Qos) -> String {
    let mut p = Vec::new();
    if let Some(k) = q.kbps {
        p.push(format!("kbps: {k}"));
    }
    if let Some(t) = q.timeslice_us {
        p.push(format!("timeslice_us: {t}"));
    }
    p.join("; ")
}

fn attach_word(rt: &dyn Runtime, ifindex: Option<u32>) -> &'static str {
    match ifindex.and_then(|i| rt.attach_mode(i)) {
        Some(AttachMode::Native) => "native",
        Some(AttachMode::Generic) => "generic",
        None => "absent",
    }
}

pub(super) fn vif_list(s: &State, rt: &dyn Runtime, json: bool) -> String {
    let rows: Vec<Value> = s
        .vifs
        .values()
        .map(|v| {
            let ifindex = rt.ifindex(&v.device);
            json!({
                "uuid": v.uuid,
                "device": v.device,
                "ifindex": ifindex,
                "mac": v.mac,
                "network_uuid": v.network_uuid,
                "vm_uuid": v.vm_uuid,
                "locking_mode": v.locking_mode,
                "effective_locking_mode": effective(s, v),
                "ipv4_allowed": v.ipv4_allowed,
                "ipv6_allowed": v.ipv6_allowed,
                "qos_algorithm_type": v.qos.algorithm_type,
                "qos_algorithm_params": { "kbps": v.qos.kbps, "timeslice_us": v.qos.timeslice_us },
                "attach": attach_word(rt, ifindex),
            })
        })
        .collect();
    if json {
        return format!("{}\n", Value::Array(rows));
    }
    let mut out = String::new();
    for (v, r) in s.vifs.values().zip(&rows) {
        out.push_str(&format!(
            "uuid ( RO)                    : {}\n\
             \x20   device ( RO)              : {} (ifindex {})\n\
             \x20   MAC ( RO)                 : {}\n\
             \x20   network-uuid ( RO)        : {}\n\
             \x20   locking-mode ( RW)        : {} (effective: {})\n\
             \x20   ipv4-allowed (SRW)        : {}\n\
             \x20   ipv6-allowed (SRW)        : {}\n\
             \x20   qos_algorithm_type ( RW)  : {}\n\
             \x20   qos_algorithm_params (MRW): {}\n\
             \x20   attach ( RO)              : {}\n\n",
            v.uuid,
            v.device,
            r["ifindex"]
                .as_u64()
                .map_or("-".to_string(), |i| i.to_string()),
            v.mac,
            v.network_uuid,
            v.locking_mode,
            r["effective_locking_mode"].as_str().unwrap_or_default(),
            v.ipv4_allowed.join(", "),
            v.ipv6_allowed.join(", "),
            v.qos.algorithm_type,
            qos_params(&v.qos),
            r["attach"].as_str().unwrap_or_default(),
        ));
    }
    out
}

pub(super) fn vif_stats(s: &State, rt: &dyn Runtime, only: Option<&str>, json: bool) -> String {
    let mut rows = Vec::new();
    let mut text = String::new();
    for v in s.vifs.values().filter(|v| only.is_none_or(|u| u == v.uuid)) {
        let ifindex = rt.ifindex(&v.device);
        let c = ifindex.and_then(|i| rt.counters(i));
        let mut dirs = serde_json::Map::new();
        for dir in [Direction::FromVm, Direction::ToVm] {
            let mut reasons = serde_json::Map::new();
            for r in Reason::ALL {
                let cell = c.as_ref().map(|c| c.get(dir, r)).unwrap_or_default();
                reasons.insert(
                    r.name().into(),
                    json!({ "packets": cell.packets, "bytes": cell.bytes }),
                );
                if cell.packets > 0 {
                    text.push_str(&format!(
                        "{:<36} {:<10} {:<7} {:<14} {:>12} {:>14}\n",
                        v.uuid,
                        v.device,
                        dir.name(),
                        r.name(),
                        cell.packets,
                        cell.bytes
                    ));
                }
            }
            dirs.insert(dir.name().into(), Value::Object(reasons));
        }
        rows.push(json!({
            "uuid": v.uuid,
            "device": v.device,
            "ifindex": ifindex,
            "attach": attach_word(rt, ifindex),
            "counters": dirs,
        }));
    }
    if json {
        format!("{}\n", Value::Array(rows))
    } else {
        format!(
            "{:<36} {:<10} {:<7} {:<14} {:>12} {:>14}\n{text}",
            "vif", "device", "dir", "reason", "packets", "bytes"
        )
    }
}
