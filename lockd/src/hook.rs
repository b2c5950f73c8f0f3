//! The toolstack hook: `lockd hook setup-vif-rules <backend> <vif-name> <vm-uuid> <devid>
//! filter|clear`, with the argument contract of xapi's `setup-vif-rules`. It reads xenopsd's
//! per-VIF record ([`crate::xenopsd`]) and sends the daemon one typed request
//! ([`crate::protocol`]).

use std::path::{Path, PathBuf};

use crate::{
    protocol::Request,
    xenopsd::{self, RecordError},
};

/// Why the hook has no request to send.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `filter`'s record cannot be read or translated.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The last argument is neither `filter` nor `clear`.
    #[error("action must be filter or clear, not '{0}'")]
    Action(String),
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
) -> Result<Request, HookError> {
    match action {
        "filter" => {
            let record = xenopsd::read_record(dir, backend, vm_uuid, devid)?;
            let (vif, network_name_label) = xenopsd::settings_of(&record, vif_name, vm_uuid)?;
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
        other => Err(HookError::Action(other.to_string())),
    }
}
