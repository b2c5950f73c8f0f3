//! The toolstack hook: `lockd hook setup-vif-rules <backend> <vif-name> <vm-uuid> <devid>
//! filter|clear`, with the argument contract of xapi's `setup-vif-rules`. It reads xenopsd's
//! per-VIF JSON file, parses it into typed settings and sends them to the daemon in one request.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use lockd_common::{
    policy::{ListError, LockingMode, parse_ipv4_list, parse_ipv6_list, parse_mac},
    settings::{Qos, QosAlgorithm, VifSettings},
};
use serde_json::Value;

use crate::{daemon::Request, xe::params};

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

/// An address list of the record, each item parsed with the CLI's parser.
fn list<N>(
    v: Option<&Value>,
    what: &str,
    parse: impl Fn(&str) -> Result<Vec<N>, ListError>,
) -> Result<Vec<N>> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let items = v
        .as_array()
        .with_context(|| format!("{what} is not an array"))?;
    let mut out = Vec::new();
    for i in items {
        let i = i
            .as_str()
            .with_context(|| format!("{what}: {i} is not a string"))?;
        out.extend(parse(i).with_context(|| what.to_string())?);
    }
    Ok(out)
}

/// Translates a xenopsd VIF record (`Vif.t` as xenopsd's encoder writes it, see
/// `../shared/TOOLSTACK.md`) into the VIF's settings and its bridge. Fields take the type's
/// defaults when absent; unknown fields are ignored.
pub fn settings_of(record: &Value, vif_name: &str, vm_uuid: &str) -> Result<(VifSettings, String)> {
    let uuid = |key: &str| -> Result<String> {
        let v =
            private_key(record, key).with_context(|| format!("extra_private_keys has no {key}"))?;
        params::uuid(v).map_err(|e| anyhow::anyhow!("{key}: {e}"))
    };
    let mac = match &record["mac"] {
        Value::Null => "fe:ff:ff:ff:ff:ff",
        m => m.as_str().context("mac is not a string")?,
    };
    let bridge = match &record["backend"] {
        Value::Null => "xenbr0".to_string(),
        Value::Array(b) if b.first().and_then(Value::as_str) == Some("Local") => b
            .get(1)
            .and_then(Value::as_str)
            .filter(|b| !b.is_empty())
            .context("backend Local without a bridge name")?
            .to_string(),
        Value::Array(b) if b.first().and_then(Value::as_str) == Some("Remote") => bail!(
            "backend {}: a bridge in another (driver) domain is not one lockd can filter",
            record["backend"]
        ),
        other => bail!("unsupported backend {other}"),
    };
    let mut vif = VifSettings::new(
        uuid("vif-uuid")?,
        uuid("network-uuid")?,
        vif_name.to_string(),
        parse_mac(mac)?,
    );
    vif.vm_uuid = params::uuid(vm_uuid).ok();
    // xapi resolves network_default before xenopsd sees it; absent means Unlocked.
    // Constructor names compared as the original script does (lowercased).
    let is = |v: Option<&Value>, name: &str| {
        v.and_then(Value::as_str)
            .is_some_and(|s| s.eq_ignore_ascii_case(name))
    };
    match &record["locking_mode"] {
        m @ Value::String(_) if is(Some(m), "Unlocked") => vif.locking_mode = LockingMode::Unlocked,
        Value::Null => vif.locking_mode = LockingMode::Unlocked,
        m @ Value::String(_) if is(Some(m), "Disabled") => vif.locking_mode = LockingMode::Disabled,
        Value::Array(l) if is(l.first(), "Locked") => {
            let lists = l.get(1).context("Locked without address lists")?;
            vif.locking_mode = LockingMode::Locked;
            vif.ipv4_allowed = list(lists.get("ipv4"), "ipv4", parse_ipv4_list)?;
            vif.ipv6_allowed = list(lists.get("ipv6"), "ipv6", parse_ipv6_list)?;
        }
        other => bail!("unknown locking_mode {other}"),
    }
    match &record["rate"] {
        Value::Null => {}
        Value::Array(r) => {
            let int = |i: usize, what: &str| {
                let v = r.get(i).unwrap_or(&Value::Null);
                v.as_i64()
                    .with_context(|| format!("rate: {what} {v} is not a 64-bit integer"))
            };
            let (kbps, timeslice) = (int(0, "kbps")?, int(1, "timeslice")?);
            // As netback reads them: kbps ≤ 0 is no limit, timeslice 0 the default.
            if kbps > 0 {
                vif.qos = Qos {
                    algorithm: QosAlgorithm::Ratelimit,
                    kbps: Some(kbps as u64),
                    timeslice_us: match u64::try_from(timeslice) {
                        Ok(0) => None,
                        Ok(t) => Some(t),
                        Err(_) => bail!("rate: timeslice {timeslice} is negative"),
                    },
                };
            }
        }
        other => bail!("unknown rate {other}"),
    }
    Ok((vif, bridge))
}

/// Reads the VIF record for `filter`.
pub fn read_record(dir: &Path, backend: &str, vm_uuid: &str, devid: &str) -> Result<Value> {
    let path = vif_file(dir, backend, vm_uuid, devid);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The toolstack's own script, which the hook chains to for the port plumbing on an Open
/// vSwitch host (`/sys/module/openvswitch` present, as the original script detects it).
/// `LOCKD_NETWORK_BACKEND=openvswitch|bridge` overrides the detection and
/// `LOCKD_ORIGINAL_SETUP_VIF_RULES` the script's path.
pub fn openvswitch() -> Option<PathBuf> {
    let ovs = match std::env::var("LOCKD_NETWORK_BACKEND").as_deref() {
        Ok("openvswitch") => true,
        Ok("bridge") => false,
        _ => Path::new("/sys/module/openvswitch").exists(),
    };
    ovs.then(|| {
        std::env::var_os("LOCKD_ORIGINAL_SETUP_VIF_RULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(ORIGINAL_SETUP_VIF_RULES))
    })
}

/// Where xenopsd installs its own `setup-vif-rules`.
pub const ORIGINAL_SETUP_VIF_RULES: &str = "/usr/libexec/xenopsd/setup-vif-rules";

/// `req` without the bridge plumbing (another party owns the ports).
pub fn without_plumbing(req: Request) -> Request {
    match req {
        Request::Apply {
            vif,
            network_name_label,
            ..
        } => Request::Apply {
            vif,
            network_name_label,
            plumb: false,
        },
        Request::Unplug { device, .. } => Request::Unplug {
            device,
            plumb: false,
        },
        other => other,
    }
}

/// The daemon request for a hook call.
pub fn command(
    dir: &Path,
    backend: &str,
    vif_name: &str,
    vm_uuid: &str,
    devid: &str,
    action: &str,
) -> Result<Request> {
    match action {
        "filter" => {
            let record = read_record(dir, backend, vm_uuid, devid)?;
            let (vif, network_name_label) = settings_of(&record, vif_name, vm_uuid)?;
            Ok(Request::Apply {
                vif,
                network_name_label,
                plumb: true,
            })
        }
        // Only this netdev; the record is not needed (and may be gone already).
        "clear" => Ok(Request::Unplug {
            device: vif_name.to_string(),
            plumb: true,
        }),
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
        let (v, bridge) =
            settings_of(&r, "vif3.0", "a1b2c3d4-0000-4000-8000-000000000003").unwrap();
        assert_eq!(v.locking_mode, LockingMode::Locked);
        assert_eq!(
            v.ipv4_allowed,
            parse_ipv4_list("10.0.0.2,10.0.2.0/24").unwrap()
        );
        assert_eq!(v.qos.rate_limit().unwrap().kbps, 1024);
        assert_eq!(v.device, "vif3.0");
        assert_eq!(bridge, "xenbr0");
    }

    #[test]
    fn pair_list_keys_and_bad_modes() {
        let r: Value = serde_json::from_str(
            r#"{"mac":"02:00:00:00:00:0b","locking_mode":"Sideways",
               "extra_private_keys":[["vif-uuid","6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01"],["network-uuid","0d6b2f77-3c8a-4a4e-8b47-2f1d7c3e9b02"]]}"#,
        )
        .unwrap();
        assert_eq!(
            private_key(&r, "vif-uuid"),
            Some("6f1c3bd8-0a52-4b8e-9f3e-1f0c2e6b7a01")
        );
        let e = settings_of(&r, "vif1.0", "vm").unwrap_err();
        assert!(e.to_string().contains("Sideways"), "{e}");
    }
}
