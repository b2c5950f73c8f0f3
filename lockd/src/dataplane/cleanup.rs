//! `lockd cleanup` and the removal of a replaced layout: every pin goes (links first, which
//! detaches the programs; a clsact filter through netlink), then the directories; `cleanup`
//! also removes every rate-limit shaper in the network namespace.

use std::{
    fs,
    path::{Path, PathBuf},
};

use super::{
    DataplaneError, Result, attach,
    pinning::{LinkName, parse_link_name, unpin},
    shaper,
};

/// Removes every pin under `dir`, of every layout (links first, which detaches the programs;
/// a clsact filter is removed through netlink), the directories, and every rate-limit shaper
/// in this network namespace.
pub fn cleanup(dir: &Path) -> Result<usize> {
    let mut removed = shaper::remove_all_but(|_| false).map_err(DataplaneError::Shaper)?;
    let versioned: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix('v')
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        })
        .map(|e| e.path())
        .collect();
    for root in versioned {
        removed += remove_layout(&root)?;
    }
    removed += remove_layout(dir)?;
    Ok(removed)
}

/// Removes one layout's pins and directories.
pub(super) fn remove_layout(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for sub in ["links", "maps"] {
        let d = dir.join(sub);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if let Some(LinkName::Clsact(ifindex, side, priority, handle)) =
                parse_link_name(&e.file_name().to_string_lossy())
            {
                attach::clsact_detach(ifindex, side, priority, handle);
            }
            unpin(&e.path())?;
            removed += 1;
        }
        let _ = fs::remove_dir(&d);
    }
    let _ = fs::remove_dir(dir);
    Ok(removed)
}

