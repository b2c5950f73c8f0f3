//! `cargo xtask test --xen`: lockd on a real Xen host, under qemu/TCG.
//!
//! Debian's Xen 4.17 hypervisor and tools (unpacked from their packages under `target/xen/`,
//! nothing installed) boot with Debian's 6.1 kernel as PV dom0. dom0 runs the host's root read
//! only over 9p (the guest tier's initramfs), starts xenstored and xenconsoled, loads the Xen
//! backends, and `xl create`s a PV domU (the same kernel, busybox and xen-netfront) whose vif
//! libxl plugs onto xenbr0 with xl's own `vif-bridge` script. The domU pings dom0 from its own
//! address and from a spoofed one, with frames inside netback's 128-byte head and larger ones
//! in page fragments. The parts: the spoofed pings reach the bridge before lockd; once lockd
//! locks `vif1.0` (at TC: netback has no native XDP) only the domU's own do, and lockd counts
//! the rest as `ipv4_spoof`.
//!
//! Facts this relies on (seen here): `-cpu qemu64,+svm`, as Xen's own CI boots it under QEMU
//! (`-cpu max` crashed dom0 early); commas in `-initrd` separate multiboot modules, so no
//! command line may hold one; xl needs libyajl2; xenstored runs in dom0; `/etc/xen`,
//! `/var/lib/xen` and `/var/log/xen` must be writable, so dom0 puts tmpfs on them and the
//! host gets empty mount points for the run (removed after if this run made them).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{guest, status, workspace};

/// Debian's packages for Xen 4.17 and xl's libraries.
const XEN_DEBS: &[&str] = &[
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "xen-utils-common",
    "xenstore-utils",
    "libxenstore4",
    "libxenmisc4.17",
    "libxenevtchn1",
    "libxengnttab1",
    "libxentoollog1",
    "libxencall1",
    "libxenforeignmemory1",
    "libxendevicemodel1",
    "libxentoolcore1",
    "libxenhypfs1",
    "libyajl2",
];

/// The parts dom0's script reports, in order.
const PARTS: &[&str] = &[
    "Xen 4.17: PV dom0 up, a PV domU created by xl, its vif on xenbr0 by vif-bridge",
    "unlocked, the domU's spoofed pings reach the bridge",
    "lockd locks the netback vif at TC: only the domU's own pings (64 and 1408 bytes) reach the bridge, the spoofed ones are counted as ipv4_spoof",
];

/// The domU's `/init`: netfront up with its own address and a spoofed one, then pings from
/// each, small and larger than netback's head, forever.
const DOMU_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /m/order); do insmod /m/$m; done
ip link set eth0 up; ip addr add 10.0.0.2/24 dev eth0; ip addr add 10.0.0.9/24 dev eth0
while true; do for src in 10.0.0.2 10.0.0.9; do for s in 56 1400; do
  ping -c 1 -W 1 -s $s -I $src 10.0.0.1 >/dev/null 2>&1; done; done; done
"#;

pub fn run() -> Result<()> {
    let kernel = guest::kernel("6.1")?;
    crate::cargo(&["build", "-p", "lockd", "--bin", "lockd"], &[])?;
    let lockd = workspace().join("target/debug/lockd");
    let dir = workspace().join("target/xen");
    let root = dir.join("root");
    let xl = root.join("usr/lib/xen-4.17/bin/xl");
    if !xl.exists() {
        let debs = dir.join("debs");
        let _ = fs::remove_dir_all(&debs);
        fs::create_dir_all(&debs)?;
        status(
            Command::new("apt-get")
                .arg("download")
                .args(XEN_DEBS)
                .current_dir(&debs),
        )
        .context("apt-get download of Xen's packages")?;
        let partial = dir.join("root.partial");
        let _ = fs::remove_dir_all(&partial);
        for deb in fs::read_dir(&debs)? {
            status(
                Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(deb?.path())
                    .arg(&partial),
            )?;
        }
        let _ = fs::remove_dir_all(&root);
        fs::rename(&partial, &root)?;
    }
    // The hypervisor as a multiboot ELF qemu can load.
    let xen = dir.join("xen");
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("boot/xen-4.17-amd64.gz"))
        .output()
        .context("gunzipping Xen's hypervisor image")?;
    if !out.status.success() {
        bail!(
            "gunzipping Xen's hypervisor image: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(&xen, out.stdout)?;
    let initrd = dir.join("dom0.cpio");
    crate::initramfs::build_initramfs(&kernel, &initrd)?;
    let domu = dir.join("domu.cpio");
    crate::initramfs::build_domu(&kernel, &["xen-netfront"], DOMU_INIT, &domu)?;
    let script = dir.join("dom0.sh");
    fs::write(&script, dom0_script(&kernel, &root, &lockd, &domu))?;
    let ws = fs::canonicalize(workspace())?;
    for p in [&initrd, &script, kernel.vmlinuz(), &ws] {
        if p.to_string_lossy().contains([',', ' ']) {
            bail!(
                "{} has a comma or space, which Xen's multiboot module line cannot carry",
                p.display()
            );
        }
    }
    // Mount points for dom0's tmpfs (the host root is read-only there), removed after if
    // this run made them.
    let mut made = Vec::new();
    for d in ["/etc/xen", "/var/lib/xen", "/var/log/xen"] {
        if !Path::new(d).exists() {
            fs::create_dir_all(d)?;
            made.push(d);
        }
    }
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35",
        "-cpu",
        "qemu64,+svm",
        "-m",
        "2048",
        "-smp",
        "2",
    ])
    .args(["-nographic", "-no-reboot", "-nic", "none"])
    .arg("-kernel")
    .arg(&xen)
    .arg("-append")
    .arg("dom0_mem=1024M console=com1 com1=115200 noreboot")
    .arg("-initrd")
    .arg(format!(
        "{} console=hvc0 quiet lockd.script={} lockd.workspace={},{}",
        kernel.vmlinuz().display(),
        script.display(),
        ws.display(),
        initrd.display()
    ))
    .args([
        "-virtfs",
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
    ]);
    let r = guest::watch(qemu, &dir.join("console.log"), PARTS, "Xen 4.17");
    for d in made {
        let _ = fs::remove_dir(d);
    }
    r
}

/// What dom0 runs (in a chroot of the host's root): the toolstack, one domU, lockd, and the
/// checks, each part reported as the guest tier's are.
fn dom0_script(k: &guest::Kernel, xen: &Path, lockd: &Path, domu: &Path) -> String {
    let (kroot, x, l) = (k.root.display(), xen.display(), lockd.display());
    let vmlinuz = k.vmlinuz().display();
    let [p_boot, p_unlocked, p_locked] = PARTS else {
        unreachable!("three parts")
    };
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask test --xen`; runs in Xen's dom0.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
part() {{ echo "LOCKD-PART $1 $(( $(date +%s) - start ))s $2"; }}
printf '#!/bin/sh\nexec /sbin/modprobe -d {kroot} "$@"\n' > /tmp/modprobe; chmod +x /tmp/modprobe
echo /tmp/modprobe > /proc/sys/kernel/modprobe
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-netback bridge sch_ingress cls_bpf; do
  /tmp/modprobe $m || echo "LOCKD-MODULE-MISSING $m"; done
echo "LOCKD-KERNEL $(uname -r) (Xen dom0)"
mount -t xenfs xenfs /proc/xen
for d in /etc/xen /var/lib/xen /var/log/xen; do mount -t tmpfs tmpfs $d; done
cp -a {x}/etc/xen/. /etc/xen/; mkdir -p /run/xen /run/xenstored
export LD_LIBRARY_PATH={x}/usr/lib/x86_64-linux-gnu:{x}/usr/lib/xen-4.17/lib
export PATH={x}/usr/lib/xen-4.17/bin:{x}/usr/bin:$PATH

echo "LOCKD-START {p_boot}"; start=$(date +%s)
xenstored --pid-file /run/xenstored.pid
for i in $(seq 120); do xenstore-ls / >/dev/null 2>&1 && break; sleep 1; done
xen-init-dom0; xenconsoled --pid-file=/run/xenconsoled.pid
ip link add xenbr0 type bridge; ip addr add 10.0.0.1/24 dev xenbr0; ip link set xenbr0 up
cat > /tmp/domu.cfg <<CFG
name = "domu1"
type = "pv"
kernel = "{vmlinuz}"
ramdisk = "{domu}"
extra = "console=hvc0 quiet"
memory = 256
vif = [ "mac=00:16:3e:00:00:02,bridge=xenbr0,ip=10.0.0.2" ]
CFG
xl create /tmp/domu.cfg
# Plugged by vif-bridge: the vif on xenbr0 (bounded wait, not a timing).
for i in $(seq 300); do bridge link show dev vif1.0 2>/dev/null | grep -q 'master xenbr0' && break; sleep 1; done
xl list; bridge link
if xl list domu1 >/dev/null 2>&1 && bridge link show dev vif1.0 | grep -q 'master xenbr0'; then
  part PASS "{p_boot}"; else part FAIL "{p_boot}"; fi

# Echo requests at the bridge for 10 s, as "<source> <length>" lines.
pings() {{ timeout 10 tcpdump -n -l -i xenbr0 'icmp and icmp[0] == 8' 2>/dev/null | sed -n 's/.*IP \([0-9.]*\) > .*length \([0-9]*\).*/\1 \2/p'; }}

echo "LOCKD-START {p_unlocked}"; start=$(date +%s)
pings > /tmp/before
echo "seen before lockd:"; sort /tmp/before | uniq -c
if grep -q '^10.0.0.9 ' /tmp/before; then part PASS "{p_unlocked}"; else part FAIL "{p_unlocked}"; fi

echo "LOCKD-START {p_locked}"; start=$(date +%s)
export LOCKD_SOCKET=/tmp/lockd.sock
{l} daemon --state-dir /tmp/lockd-state --socket /tmp/lockd.sock --bpffs /sys/fs/bpf/lockd > /tmp/lockd.log 2>&1 &
t0=$(date +%s)
for i in $(seq 600); do {l} network-list >/dev/null 2>&1 && break; sleep 1; done
echo "lockd answered after $(( $(date +%s) - t0 ))s"
net=$({l} network-create name-label=xenbr0)
vif=$({l} vif-create network-uuid=$net device=vif1.0 mac=00:16:3e:00:00:02)
{l} vif-param-set uuid=$vif locking-mode=locked ipv4-allowed=10.0.0.2
{l} vif-list
pings > /tmp/after
echo "seen once locked:"; sort /tmp/after | uniq -c
{l} vif-stats uuid=$vif | tee /tmp/stats
ok=1
grep -q '^10.0.0.9 ' /tmp/after && {{ echo "spoofed pings reached the bridge"; ok=0; }}
grep -q '^10.0.0.2 64$' /tmp/after || {{ echo "no 64-byte ping of the domU's own"; ok=0; }}
grep -q '^10.0.0.2 1408$' /tmp/after || {{ echo "no 1408-byte ping of the domU's own"; ok=0; }}
grep -q 'from_vm *ipv4_spoof' /tmp/stats || {{ echo "nothing counted as ipv4_spoof"; ok=0; }}
{l} vif-list --json | grep -q '"attach":"tc"' || {{ echo "not attached at TC"; ok=0; }}
[ $ok = 1 ] && part PASS "{p_locked}" || {{ part FAIL "{p_locked}"; tail -n 20 /tmp/lockd.log; }}
xl destroy domu1
"#,
        domu = domu.display(),
    )
}
