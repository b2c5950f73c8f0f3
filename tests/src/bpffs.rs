//! A bpffs of the test's own, mounted on an empty temporary directory and unmounted however
//! the test ends, so a test leaves the host's mounts as it found them (a fresh machine has no
//! bpffs at /sys/fs/bpf, and a test must not leave one there).

use std::path::{Path, PathBuf};

pub struct PrivateBpffs {
    root: PathBuf,
}

impl PrivateBpffs {
    /// Mounts a new bpffs at `root` (created; must not exist or be empty).
    pub fn mount(root: &Path) -> PrivateBpffs {
        std::fs::create_dir_all(root).expect("bpffs mount point");
        lockd::dataplane::mount_bpffs(root)
            .unwrap_or_else(|e| panic!("mount bpffs on {}: {e}", root.display()));
        PrivateBpffs {
            root: root.to_path_buf(),
        }
    }

    /// A pin directory on it (its parent is this bpffs, as lockd wants).
    pub fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        let Ok(target) = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: a NUL-terminated path; MNT_DETACH lets a mount still in use go lazily.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.root);
    }
}
