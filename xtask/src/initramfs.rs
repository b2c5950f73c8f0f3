//! The guest's initramfs: a static busybox, the modules 9p needs, and an `/init` that mounts
//! the host's root read-only over virtio-9p and runs the guest script in a chroot. Written as
//! a `newc` cpio archive here (the format is a few lines; no cpio tool needed).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

use crate::kernel::{Kernel, module_chain};

/// The guest's `/init`: busybox only, until the host's root is mounted.
fn init_script(modules: &[String]) -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sys /sys\n\
         /bin/busybox mount -t devtmpfs dev /dev\n\
         exec >/dev/console 2>&1\n",
    );
    for m in modules {
        s += &format!("/bin/busybox insmod /m/{m} || echo \"insmod {m} failed\"\n");
    }
    s += "/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /host || { echo 'LOCKD-GUEST-EXIT 99'; /bin/busybox poweroff -f; }\n";
    // The checkout may lie under a directory that gets a tmpfs below (a clone in /tmp): keep
    // a bind of it first and put it back on top afterwards, so the guest works from any path.
    s += "ws=$(/bin/busybox sed -n 's/.*lockd.workspace=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n";
    // (No `lockd.workspace=`, as when another script boots this initramfs: nothing to keep.)
    s += "if [ -n \"$ws\" ]; then /bin/busybox mkdir -p /ws && /bin/busybox mount -o bind \"/host$ws\" /ws || { echo \"cannot bind the checkout $ws\"; echo 'LOCKD-GUEST-EXIT 98'; /bin/busybox poweroff -f; }; fi\n";
    s += "/bin/busybox mount -t proc proc /host/proc\n";
    s += "/bin/busybox mount -t sysfs sys /host/sys\n";
    s += "/bin/busybox mount -t devtmpfs dev /host/dev\n";
    s += "for d in tmp run var/tmp; do /bin/busybox mount -t tmpfs tmpfs /host/$d; done\n";
    s += "/bin/busybox mkdir -p /host/dev/pts /host/dev/shm\n";
    s += "/bin/busybox mount -t devpts devpts /host/dev/pts\n";
    s += "/bin/busybox mount -t tmpfs tmpfs /host/dev/shm\n";
    s += "/bin/busybox mount -t bpf bpffs /host/sys/fs/bpf\n";
    s += "if [ -n \"$ws\" ]; then /bin/busybox mkdir -p \"/host$ws\"; /bin/busybox mount -o bind /ws \"/host$ws\" || { echo \"cannot put the checkout back at $ws\"; echo 'LOCKD-GUEST-EXIT 98'; /bin/busybox poweroff -f; }; fi\n";
    s +=
        "script=$(/bin/busybox sed -n 's/.*lockd.script=\\([^ ]*\\).*/\\1/p' /host/proc/cmdline)\n";
    s += "/bin/busybox chroot /host /bin/sh \"$script\"\n";
    s += "echo \"LOCKD-GUEST-EXIT $?\"\n";
    s += "echo o > /host/proc/sysrq-trigger\n/bin/busybox sleep 5\n/bin/busybox poweroff -f\n";
    s
}

/// The busybox binary to put in the initramfs.
fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Debian images often carry the dynamically linked `busybox` package, which satisfies a
/// "busybox is on the PATH" check but cannot run in an initramfs: swap in busybox-static.
pub(crate) fn ensure_static_busybox() -> Result<()> {
    let dynamic = busybox()
        .map(|b| fs::read(&b).map(|bytes| has_interpreter(&bytes)))
        .transpose()?
        .unwrap_or(true);
    if dynamic {
        eprintln!("xtask: installing busybox-static (the guest's initramfs needs it)");
        crate::status(
            std::process::Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-qq",
                    "--no-install-recommends",
                    "busybox-static",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    Ok(())
}

pub(crate) fn build_initramfs(k: &Kernel, out: &Path) -> Result<()> {
    let busybox = busybox().context("busybox is not installed")?;
    let mut mods: Vec<PathBuf> = Vec::new();
    for m in ["virtio_pci", "9pnet_virtio", "9p"] {
        for p in module_chain(k, m)? {
            if !mods.contains(&p) {
                mods.push(p);
            }
        }
    }
    let mut c = Cpio::default();
    for d in ["bin", "m", "proc", "sys", "dev", "host"] {
        c.dir(d);
    }
    c.node("dev/console", 0o020600, (5, 1));
    let bb = fs::read(&busybox)?;
    // The initramfs has no C library: a dynamically linked busybox cannot start there.
    if has_interpreter(&bb) {
        bail!(
            "{} is dynamically linked; the guest needs busybox-static (apt-get install busybox-static)",
            busybox.display()
        );
    }
    c.file("bin/busybox", 0o100755, &bb);
    let mut names = Vec::new();
    for p in &mods {
        let name = p
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        c.file(&format!("m/{name}"), 0o100644, &fs::read(p)?);
        names.push(name);
    }
    c.file("init", 0o100755, init_script(&names).as_bytes());
    fs::write(out, c.finish())?;
    Ok(())
}

/// A PV domU's initramfs: the static busybox, `modules` (with their dependencies, loaded in
/// order by `init` as it likes: they are in `/m`) and `init` itself. A PV guest has no 9p:
/// everything it runs is in here.
pub(crate) fn build_domu(
    k: &Kernel,
    modules: &[&str],
    init: &str,
    programs: &[(&str, &Path)],
    out: &Path,
) -> Result<()> {
    let busybox = busybox().context("busybox is not installed")?;
    let mut c = Cpio::default();
    for d in ["bin", "m", "proc", "sys", "dev", "tmp"] {
        c.dir(d);
    }
    c.node("dev/console", 0o020600, (5, 1));
    c.file("bin/busybox", 0o100755, &fs::read(&busybox)?);
    let mut order = String::new();
    for m in modules {
        for p in module_chain(k, m)? {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            if !order.contains(&name) {
                c.file(&format!("m/{name}"), 0o100644, &fs::read(&p)?);
                order += &format!("{name}\n");
            }
        }
    }
    c.file("m/order", 0o100644, order.as_bytes());
    for (name, path) in programs {
        let elf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        if has_interpreter(&elf) {
            bail!("{} is dynamically linked; a domU's initramfs has no libraries", path.display());
        }
        c.file(&format!("bin/{name}"), 0o100755, &elf);
    }
    c.file("init", 0o100755, init.as_bytes());
    fs::write(out, c.finish())?;
    Ok(())
}

/// Whether an ELF64 binary names a program interpreter (`PT_INTERP`): dynamically linked.
fn has_interpreter(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    let (Some(phoff), Some(size), Some(n)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return true;
    };
    (0..usize::from(n)).any(|i| {
        let at = phoff as usize + i * usize::from(size);
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..])
    })
}

/// A `newc` cpio archive (what the kernel unpacks as an initramfs), written by the `cpio` crate.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, dev: (u32, u32), data: &[u8]) {
        use std::io::Write as _;
        self.ino += 1;
        let size = u32::try_from(data.len()).expect("an initramfs file under 4 GiB");
        let mut w = cpio::newc::Builder::new(name)
            .ino(self.ino)
            .mode(mode)
            .nlink(1)
            .rdev_major(dev.0)
            .rdev_minor(dev.1)
            .write(&mut self.buf, size);
        w.write_all(data).expect("writing to memory");
        w.finish().expect("writing to memory");
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn node(&mut self, name: &str, mode: u32, dev: (u32, u32)) {
        self.entry(name, mode, dev, &[]);
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, (0, 0), data);
    }

    fn finish(self) -> Vec<u8> {
        cpio::newc::trailer(self.buf).expect("writing to memory")
    }
}
