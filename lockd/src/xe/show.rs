//! What the read-only verbs print: listings driven by the parameter tables, and `vif-stats`.

use lockd_common::{Direction, Reason};
use serde_json::{Map, Value, json};

use super::{
    Runtime, View, attach_word,
    params::{Param, text},
};
use crate::store::State;

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

pub(super) fn vif_stats(s: &State, rt: &dyn Runtime, only: Option<&str>, json: bool) -> String {
    let mut rows = Vec::new();
    let mut text = String::new();
    for v in s.vifs().filter(|v| only.is_none_or(|u| u == v.uuid)) {
        let ifindex = rt.ifindex(&v.device);
        let c = ifindex.and_then(|i| rt.counters(i));
        let mut dirs = Map::new();
        for dir in [Direction::FromVm, Direction::ToVm] {
            let mut reasons = Map::new();
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
