//! The toolstack hook: `lockd hook setup-vif-rules <backend> <vif-name> <vm-uuid> <devid>
//! filter|clear`, with the argument contract of xapi's `setup-vif-rules`. It reads xenopsd's
//! per-VIF JSON file and turns it into one daemon command.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Where xenopsd keeps its per-VIF files.
pub const DEFAULT_XENOPSD_DIR: &str = "/var/run/nonpersistent/xenopsd";

/// The file for one VIF: `<dir>/<backend>/VM/<vm-uuid>/vif.<devid>`.
pub fn vif_file(dir: &Path, backend: &str, vm_uuid: &str, devid: &str) -> PathBuf {
    dir.join(backend)
        .join("VM")
        .join(vm_uuid)
        .join(format!("vif.{devid}"))
}

/// `extra_private_keys` as either a JSON object or a list of pairs.
fn private_key<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    match v.get("extra_private_keys")? {
        Value::Object(m) => m.get(key)?.as_str(),
        Value::Array(pairs) => pairs.iter().find_map(|p| {
            let p = p.as_array()?;
            (p.first()?.as_str()? == key).then(|| p.get(1)?.as_str())?
        }),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Result<String> {
    let Some(v) = v else { return Ok(String::new()) };
    let items = v.as_array().context("address list is not an array")?;
    let items: Vec<&str> = items
        .iter()
        .map(|i| i.as_str().context("address is not a string"))
        .collect::<Result<_>>()?;
    Ok(items.join(","))
}

/// Translates a xenopsd VIF record into `vif-apply` arguments.
pub fn vif_apply_argv(record: &Value, vif_name: &str, vm_uuid: &str) -> Result<Vec<String>> {
    let vif_uuid = private_key(record, "vif-uuid").context("extra_private_keys has no vif-uuid")?;
    let net_uuid =
        private_key(record, "network-uuid").context("extra_private_keys has no network-uuid")?;
    let mac = record["mac"].as_str().context("no mac")?;
    let bridge = match &record["backend"] {
        Value::Array(b) => b.get(1).and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    let mut argv = vec![
        "vif-apply".to_string(),
        format!("uuid={vif_uuid}"),
        format!("network-uuid={net_uuid}"),
        format!("network-name-label={bridge}"),
        format!("device={vif_name}"),
        format!("mac={mac}"),
        format!("vm-uuid={vm_uuid}"),
    ];
    match &record["locking_mode"] {
        Value::String(m) if m == "Unlocked" => argv.extend([
            "locking-mode=unlocked".into(),
            "ipv4-allowed=".into(),
            "ipv6-allowed=".into(),
        ]),
        Value::String(m) if m == "Disabled" => argv.push("locking-mode=disabled".into()),
        Value::Array(l) if l.first().and_then(Value::as_str) == Some("Locked") => {
            let lists = l.get(1).context("Locked without address lists")?;
            argv.push("locking-mode=locked".into());
            argv.push(format!("ipv4-allowed={}", strings(lists.get("ipv4"))?));
            argv.push(format!("ipv6-allowed={}", strings(lists.get("ipv6"))?));
        }
        Value::Null => {}
        other => bail!("unknown locking_mode {other}"),
    }
    match &record["rate"] {
        Value::Null => argv.push("qos_algorithm_type=".into()),
        Value::Array(r) => {
            let kbps = r.first().and_then(Value::as_u64).context("rate kbps")?;
            argv.push("qos_algorithm_type=ratelimit".into());
            argv.push(format!("qos_algorithm_params:kbps={kbps}"));
            if let Some(ts) = r.get(1).and_then(Value::as_u64) {
                argv.push(format!("qos_algorithm_params:timeslice_us={ts}"));
            }
        }
        other => bail!("unknown rate {other}"),
    }
    Ok(argv)
}

/// Reads the VIF record for `filter`; `clear` needs only its uuid.
pub fn read_record(dir: &Path, backend: &str, vm_uuid: &str, devid: &str) -> Result<Value> {
    let path = vif_file(dir, backend, vm_uuid, devid);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The daemon command for a hook call.
pub fn command(
    dir: &Path,
    backend: &str,
    vif_name: &str,
    vm_uuid: &str,
    devid: &str,
    action: &str,
) -> Result<Vec<String>> {
    let record = read_record(dir, backend, vm_uuid, devid)?;
    match action {
        "filter" => vif_apply_argv(&record, vif_name, vm_uuid),
        "clear" => {
            let uuid =
                private_key(&record, "vif-uuid").context("extra_private_keys has no vif-uuid")?;
            // Unplugging a VIF lockd no longer knows is not an error for the toolstack.
            Ok(vec![
                "vif-destroy".into(),
                format!("uuid={uuid}"),
                "--if-exists".into(),
            ])
        }
        other => bail!("action must be filter or clear, not '{other}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locked_record_translates() {
        let r: Value = serde_json::from_str(
            r#"{"id":["vm","0"],"mac":"02:00:00:00:00:0b","backend":["Local","xenbr0"],
               "locking_mode":["Locked",{"ipv4":["10.0.0.2","10.0.2.0/24"],"ipv6":["2001:db8::2"]}],
               "rate":[1024,20000],
               "extra_private_keys":{"vif-uuid":"6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01","network-uuid":"0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02"}}"#,
        )
        .unwrap();
        let a = vif_apply_argv(&r, "vif3.0", "a1b2c3d4-0000-4000-8000-000000000003").unwrap();
        assert!(a.contains(&"locking-mode=locked".to_string()));
        assert!(a.contains(&"ipv4-allowed=10.0.0.2,10.0.2.0/24".to_string()));
        assert!(a.contains(&"qos_algorithm_params:kbps=1024".to_string()));
        assert!(a.contains(&"network-name-label=xenbr0".to_string()));
    }

    #[test]
    fn pair_list_keys_and_bad_modes() {
        let r: Value = serde_json::from_str(
            r#"{"mac":"02:00:00:00:00:0b","locking_mode":"Sideways",
               "extra_private_keys":[["vif-uuid","u"],["network-uuid","n"]]}"#,
        )
        .unwrap();
        assert_eq!(private_key(&r, "vif-uuid"), Some("u"));
        let e = vif_apply_argv(&r, "vif1.0", "vm").unwrap_err();
        assert!(e.to_string().contains("Sideways"), "{e}");
    }
}
