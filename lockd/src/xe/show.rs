//! What the read-only verbs print: listings driven by the parameter tables, and `vif-stats`.

use lockd_common::{Direction, Reason};
use serde_json::{Map, Value, json};

use super::{
    Runtime, View, attach_word,
    params::{Param, text},
};
use crate::{dataplane::VifCounters, store::State};

/// A netdev's (or a VIF's summed) counters by direction and reason, zeros where none.
fn counters_json(c: Option<&VifCounters>) -> Value {
    let mut dirs = Map::new();
    for dir in [Direction::FromVm, Direction::ToVm] {
        let mut reasons = Map::new();
        for r in Reason::ALL {
            let cell = c.map(|c| c.get(dir, r)).unwrap_or_default();
            reasons.insert(
                r.name().into(),
                json!({ "packets": cell.packets, "bytes": cell.bytes }),
            );
        }
        dirs.insert(dir.name().into(), Value::Object(reasons));
    }
    Value::Object(dirs)
}

/// `vif-list` / `network-list`: every parameter of every object, as `xe` prints a record
/// (`name ( RW): value`) or as a JSON array of objects.
pub(super) fn list<'a, T: 'a>(
    table: &[Param<T>],
    objs: impl Iterator<Item = &'a T>,
    view: &View,
    json: bool,
) -> String {
    let rows: Vec<Vec<(&Param<T>, Value)>> = objs
        .map(|o| table.iter().map(|p| (p, (p.get)(o, view))).collect())
        .collect();
    if json {
        let arr: Vec<Value> = rows
            .into_iter()
            .map(|r| {
                Value::Object(
                    r.into_iter()
                        .map(|(p, v)| (p.json_key(), v))
                        .collect::<Map<_, _>>(),
                )
            })
            .collect();
        return format!("{}\n", Value::Array(arr));
    }
    let width = table.iter().map(|p| p.name.len()).max().unwrap_or(0) + 6;
    let mut out = String::new();
    for r in rows {
        for (i, (p, v)) in r.into_iter().enumerate() {
            let indent = if i == 0 { "" } else { "    " };
            let label = format!("{indent}{} ({})", p.name, p.access.label());
            out.push_str(&format!("{label:<w$}: {}\n", text(v), w = width + 4));
        }
        out.push('\n');
    }
    out
}

/// `vif-list`: every VIF, then every stored row that failed validation (held disabled).
pub(super) fn vif_list(view: &View, json: bool) -> String {
    let mut out = list(super::params::VIF, view.state.vifs(), view, json);
    let bad: Vec<Value> = view
        .state
        .bad_vifs()
        .map(|b| {
            let held: Vec<String> = b
                .devices
                .iter()
                .filter_map(|d| view.rt.held(d).map(|h| format!("{d}: {h}")))
                .collect();
            json!({
                "uuid": b.uuid,
                "device": b.devices.first(),
                "bad_row": b.reason,
                "held": if held.is_empty() {
                    format!("bad_row: netdev {} not present", b.devices.join(", "))
                } else {
                    held.join("; ")
                },
            })
        })
        .collect();
    if bad.is_empty() {
        return out;
    }
    if json {
        let mut all: Vec<Value> = serde_json::from_str(&out).unwrap_or_default();
        all.extend(bad);
        return format!("{}\n", Value::Array(all));
    }
    for b in bad {
        for (i, key) in ["uuid", "device", "bad_row", "held"]
            .into_iter()
            .enumerate()
        {
            let indent = if i == 0 { "" } else { "    " };
            out.push_str(&format!(
                "{:<w$}: {}\n",
                format!("{indent}{key} ( RO)"),
                text(b[key].clone()),
                w = 30
            ));
        }
        out.push('\n');
    }
    out
}

pub(super) fn vif_stats(s: &State, rt: &dyn Runtime, only: Option<&str>, json: bool) -> String {
    let mut rows = Vec::new();
    let mut text = String::new();
    for v in s.vifs().filter(|v| only.is_none_or(|u| u == v.uuid)) {
        // Every netdev of the VIF (an HVM guest's vif and tap): each its own counters, and
        // the VIF's the sum of them.
        let mut total: Option<VifCounters> = None;
        let mut netdevs = Vec::new();
        for dev in v.devices() {
            let ifindex = rt.ifindex(dev);
            let c = ifindex.and_then(|i| rt.counters(i));
            for dir in [Direction::FromVm, Direction::ToVm] {
                for r in Reason::ALL {
                    let cell = c.as_ref().map(|c| c.get(dir, r)).unwrap_or_default();
                    if cell.packets > 0 {
                        text.push_str(&format!(
                            "{:<36} {:<10} {:<7} {:<14} {:>12} {:>14}\n",
                            v.uuid,
                            dev,
                            dir.name(),
                            r.name(),
                            cell.packets,
                            cell.bytes
                        ));
                    }
                }
            }
            if let Some(c) = &c {
                total = Some(match total {
                    None => c.clone(),
                    Some(t) => t.plus(c),
                });
            }
            netdevs.push(json!({
                "device": dev,
                "ifindex": ifindex,
                "attach": attach_word(rt, ifindex),
                "counters": counters_json(c.as_ref()),
            }));
        }
        let ifindex = rt.ifindex(&v.device);
        rows.push(json!({
            "uuid": v.uuid,
            "device": v.device,
            "ifindex": ifindex,
            "attach": attach_word(rt, ifindex),
            "counters": counters_json(total.as_ref()),
            "netdevs": netdevs,
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
