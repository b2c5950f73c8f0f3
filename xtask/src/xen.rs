//! `cargo xtask test --xen`: lockd on a real Xen host, under qemu/TCG.
//!
//! Debian's Xen 4.17 hypervisor and tools (unpacked from their packages under `target/xen/`,
//! nothing installed) boot with Debian's 6.1 kernel as PV dom0. dom0 runs the host's root read
//! only over 9p (the guest tier's initramfs), starts xenstored and xenconsoled, loads the Xen
//! backends, starts lockd, installs `dist/vif-lockd` as xl.conf's default vif script and
//! `xl create`s two PV domUs running `lockd-domu` (a static program in their initramfs; the
//! migrate case makes a third, PVH, domU of its own). Each
//! domU's `eth0` is on xenbr0, locked by lockd through vif-lockd; its `eth1` is on a control
//! bridge lockd never manages, over which dom0's driver (`lockd-xen`, in the tests crate) asks
//! it to send frames and to report what it received. The cases are in [`CASES`].
//!
//! Facts this relies on (seen here): `-cpu qemu64,+svm`, as Xen's own CI boots it under QEMU
//! (`-cpu max` crashed dom0 early), with `+npt`, so Xen finds HAP (TCG emulates nested
//! paging) and can run the PVH domU and its log-dirty mode for `xl migrate` (see [`OPEN`]);
//! commas in `-initrd` separate multiboot modules, so no command line may hold one; xl needs libyajl2; xenstored runs in dom0; `/etc/xen`,
//! `/var/lib/xen` and `/var/log/xen` must be writable, so dom0 puts tmpfs on them and the
//! host gets empty mount points for the run (removed after if this run made them).

use std::{fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{guest, status, workspace};

/// Where libxl runs its helpers from (`libxl-save-helper` for `xl migrate`): compiled in,
/// so dom0 binds the unpacked packages' copy there.
const XEN_LIBEXEC: &str = "/usr/lib/xen-4.17";

/// The domU agent's target: static, so it runs from an initramfs with no libraries.
pub(crate) const MUSL: &str = "x86_64-unknown-linux-musl";

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
    // Open vSwitch (XCP-ng's default bridge) and the libraries its daemons link.
    "openvswitch-switch",
    "openvswitch-common",
    "libunbound8",
    "libxdp1",
    "libbpf1",
    "libnuma1",
    "libcap-ng0",
];

/// The first part dom0's script reports: the toolstack, lockd and two domUs up.
const BOOT: &str = "Xen 4.17: PV dom0 up, two PV domUs created by xl, their vifs plugged by vif-lockd (xl.conf's vif.default.script) and locked at TC";

/// The cases, in order: each part's name and the dom0 command that runs it (`$X` is the
/// driver, `lockd-xen`). Each PASS line carries the case's domU, vif and frame counts.
/// `LOCKD_XEN_ONLY="<words>"` runs only the cases whose names contain one of the words.
const CASES: &[(&str, &str)] = &[
    ("genuine traffic between two domUs passes", "$X genuine"),
    (
        "every from-VM frame of the corpus (MAC, IPv4, ARP, IPv6, NDP, RA, DHCP server, 802.1Q, malformed) gets the model's verdict at dom0, counted with its reason",
        "$X corpus",
    ),
    (
        "frames past netback's 128-byte head (page fragments) get the model's verdict",
        "$X corpus --big",
    ),
    ("to-VM locking between two domUs", "$X to-vm"),
    (
        "xl network-attach / network-detach on a running domU",
        "$X attached xenbr0",
    ),
    (
        "xapi's hook (setup-vif-rules filter, clear) on a real netback vif, with a record in xenopsd's shape",
        "$X xapi-hook",
    ),
    (
        "Open vSwitch: a vif on an OVS bridge, plugged by vif-lockd through vif-openvswitch, is locked",
        "/tmp/start-ovs $X attached ovsbr0",
    ),
    (
        "xl's own anti-spoofing (upstream handle_iptable) against the same attack frames as lockd",
        "$X baseline",
    ),
    (
        "kill -9 of the daemon under traffic",
        "$X under-traffic a 'kill -9 of the daemon' /tmp/kill-lockd",
    ),
    (
        "a rate set both by xl (rate=, netback's credit shaper) and by lockd (ratelimit): what the guest gets",
        "$X rate",
    ),
];

/// Cases that cannot pass reliably here, run only when `LOCKD_XEN_ONLY` names them (README,
/// "Xen"). `xl migrate`, on domu-c, a PVH domU made for it: Debian's Xen is built without
/// shadow paging, which a PV domU's log-dirty mode needs ("Failed to enable logdirty: 95"); a
/// PVH one's runs on HAP, which `+npt` gives Xen under TCG — but QEMU 7.2's emulated nested
/// paging kills PVH domains (triple faults inside Xen's SVM code, double faults in the guest's
/// kernel) in 3 of the 9 runs made, with one TCG thread or many. It passed in the other 6.
const OPEN: &[(&str, &str)] = &[(
    "xl migrate to localhost under traffic (two domains of one VM)",
    "/tmp/migrate-c",
)];

/// The cases this run takes (all of [`CASES`], or those `LOCKD_XEN_ONLY` names, from
/// [`OPEN`] too).
fn cases() -> Vec<(&'static str, &'static str)> {
    let only = std::env::var("LOCKD_XEN_ONLY").unwrap_or_default();
    let words: Vec<&str> = only.split_whitespace().collect();
    if words.is_empty() {
        return CASES.to_vec();
    }
    CASES
        .iter()
        .chain(OPEN)
        .filter(|(name, _)| words.iter().any(|w| name.contains(w)))
        .copied()
        .collect()
}

/// The domU's `/init`: no IPv6 of its own (its kernel would send NDP the counts would
/// see), netfront loaded, then the agent.
const DOMU_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
for m in $(cat /m/order); do insmod /m/$m; done
exec /bin/lockd-domu
"#;

/// The dom0 kernels of a whole Xen tier: Debian 12's own and its newer backport (both boot as
/// PV dom0 here; 6.12 takes the other shaper hand-off, `bpf_redirect`, being 6.4+).
pub const DOM0_SERIES: &[&str] = &["6.1", "6.12"];

/// The Xen tier on every kernel of [`DOM0_SERIES`], one after the other (a failure on one does
/// not stop the next); fails if any failed.
pub fn run_all() -> Result<()> {
    let failed: Vec<String> = DOM0_SERIES
        .iter()
        .filter_map(|s| run(s).err().map(|e| format!("{s}: {e:#}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("the Xen tier failed on {}", failed.join("; "))
    }
}

/// The Xen tier with Debian's `series` kernel (6.1, or 6.12) as dom0 and in the domUs.
pub fn run(series: &str) -> Result<()> {
    let kernel = guest::kernel(series)?;
    crate::cargo(&["build", "-p", "lockd", "--bin", "lockd", "--features", "test-hooks"], &[])?;
    crate::cargo(&["build", "-p", "lockd-tests", "--bin", "lockd-xen"], &[])?;
    crate::cargo(
        &["build", "-p", "lockd-domu", "--release", "--target", MUSL],
        &[],
    )?;
    let agent = workspace().join(format!("target/{MUSL}/release/lockd-domu"));
    let dir = workspace().join("target/xen");
    let root = dir.join("root");
    let xl = root.join("usr/lib/xen-4.17/bin/xl");
    if !xl.exists() || !root.join("usr/lib/openvswitch-switch/ovs-vswitchd").exists() {
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
    crate::initramfs::build_domu(
        &kernel,
        &["xen-netfront"],
        DOMU_INIT,
        &[("lockd-domu", &agent)],
        &domu,
    )?;
    let ws = fs::canonicalize(workspace())?;
    let script = dir.join("dom0.sh");
    fs::write(&script, dom0_script(&kernel, &root, &ws, &domu))?;
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
    for d in ["/etc/xen", "/var/lib/xen", "/var/log/xen", XEN_LIBEXEC] {
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
        "qemu64,+svm,+npt",
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
    let mut parts = vec![BOOT];
    parts.extend(cases().iter().map(|(name, _)| *name));
    let r = guest::watch(qemu, &dir.join(format!("console-{series}.log")), &parts, "Xen 4.17");
    for d in made {
        let _ = fs::remove_dir(d);
    }
    r
}

/// What dom0 runs (in a chroot of the host's root): the toolstack, lockd, vif-lockd
/// installed as the README says, two domUs, and the cases (`lockd-xen`), each reported as
/// the guest tier's parts are, its last line of output as the PASS line's detail.
fn dom0_script(k: &crate::kernel::Kernel, xen: &Path, ws: &Path, domu: &Path) -> String {
    let (kroot, x, w) = (k.root.display(), xen.display(), ws.display());
    let vmlinuz = k.vmlinuz().display();
    let p_boot = BOOT;
    let runs: String = cases()
        .iter()
        .map(|(name, cmd)| format!("case_ \"{name}\" {cmd}\n"))
        .collect();
    format!(
        r#"#!/bin/sh
# Written by `cargo xtask test --xen`; runs in Xen's dom0.
export PATH={w}/target/debug:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
part() {{ echo "LOCKD-PART $1 $(( $(date +%s) - start ))s $2"; }}
# One case: its output indented, its last line the PASS line's detail.
case_() {{
  name=$1; shift; echo "LOCKD-START $name"; start=$(date +%s)
  if "$@" > /tmp/case.out 2>&1; then r=PASS; else r=FAIL; fi
  sed 's/^/    /' /tmp/case.out
  [ $r = FAIL ] && {{ echo "--- lockd log:"; tail -n 15 /tmp/lockd.log; echo "--- hotplug log:"; tail -n 15 /var/log/xen/xen-hotplug.log;
    for g in /var/log/xen/console/guest-*.log; do echo "--- $g:"; tail -n 15 $g; done; }}
  part $r "$name — $(tail -n 1 /tmp/case.out)"
}}
printf '#!/bin/sh\nexec /sbin/modprobe -d {kroot} "$@"\n' > /tmp/modprobe; chmod +x /tmp/modprobe
echo /tmp/modprobe > /proc/sys/kernel/modprobe
for m in xen-evtchn xen-gntdev xen-gntalloc xen-privcmd xenfs xen-netback bridge sch_ingress cls_bpf ifb sch_tbf cls_u32 act_mirred; do
  /tmp/modprobe $m || echo "LOCKD-MODULE-MISSING $m"; done
echo "LOCKD-KERNEL $(uname -r) (Xen dom0)"
mount -t xenfs xenfs /proc/xen
# udev's links, which Xen's locking.sh stats its lock through (devtmpfs has none).
for f in 0:stdin 1:stdout 2:stderr; do [ -e /dev/${{f#*:}} ] || ln -s /proc/self/fd/${{f%:*}} /dev/${{f#*:}}; done
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
for d in /etc/xen /var/lib/xen /var/log/xen; do mount -t tmpfs tmpfs $d; done
mount --bind {x}{XEN_LIBEXEC} {XEN_LIBEXEC}
cp -a {x}/etc/xen/. /etc/xen/; mkdir -p /run/xen /run/xenstored
export LD_LIBRARY_PATH={x}/usr/lib/x86_64-linux-gnu:{XEN_LIBEXEC}/lib
export PATH={XEN_LIBEXEC}/bin:{x}/usr/bin:{x}/usr/sbin:$PATH
# dom0's own IPv6 would put NDP and MLD on the bridges, which the counts would see.
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
X={w}/target/debug/lockd-xen

echo "LOCKD-START {p_boot}"; start=$(date +%s)
xenstored --pid-file /run/xenstored.pid
for i in $(seq 120); do xenstore-ls / >/dev/null 2>&1 && break; sleep 1; done
xen-init-dom0; mkdir -p /var/log/xen/console; xenconsoled --pid-file=/run/xenconsoled.pid --log=guest --log-dir=/var/log/xen/console
# The locked vifs' bridge (promiscuous, so every frame lockd passes shows on it) and the
# agents' control bridge.
ip link add xenbr0 type bridge; ip link set xenbr0 promisc on up
ip link add ctlbr type bridge; ip link set ctlbr up
# Open vSwitch from its packages, its database and run directory in dom0's tmpfs; started by
# its case (a loaded openvswitch module makes xapi's hook hand the port to xenopsd's script).
cat > /tmp/start-ovs <<EOS
#!/bin/sh
/tmp/modprobe openvswitch || echo "LOCKD-MODULE-MISSING openvswitch"
mkdir -p /var/run/openvswitch /tmp/ovs
ovsdb-tool create /tmp/ovs/conf.db {x}/usr/share/openvswitch/vswitch.ovsschema
ovsdb-server /tmp/ovs/conf.db --remote=punix:/var/run/openvswitch/db.sock --pidfile=/tmp/ovs/ovsdb.pid --detach --log-file=/tmp/ovs/ovsdb.log
ovs-vsctl --no-wait init
{x}/usr/lib/openvswitch-switch/ovs-vswitchd --pidfile=/tmp/ovs/vswitchd.pid --detach --log-file=/tmp/ovs/vswitchd.log
ovs-vsctl --timeout=60 add-br ovsbr0 && ip link set ovsbr0 up && exec "\$@"
echo "Open vSwitch did not start"; tail -n 5 /tmp/ovs/*.log; exit 1
EOS
chmod +x /tmp/start-ovs
# vif-lockd, installed as the README says.
install -m 755 {w}/dist/vif-lockd /etc/xen/scripts/vif-lockd
echo 'vif.default.script="vif-lockd"' >> /etc/xen/xl.conf
export LOCKD_SOCKET=/tmp/lockd.sock VIF_LOCKD_TRACE=1
cat > /tmp/start-lockd <<'EOS'
#!/bin/sh
lockd daemon --state-dir /tmp/lockd-state --socket $LOCKD_SOCKET --bpffs /sys/fs/bpf/lockd >> /tmp/lockd.log 2>&1 &
echo $! > /tmp/lockd.pid
t0=$(date +%s)
for i in $(seq 600); do lockd network-list >/dev/null 2>&1 && break; sleep 1; done
echo "lockd answered after $(( $(date +%s) - t0 ))s"
EOS
cat > /tmp/kill-lockd <<'EOS'
#!/bin/sh
kill -9 $(cat /tmp/lockd.pid); echo "lockd killed (-9)"
# Two seconds of traffic with no daemon: the pinned programs hold the vif alone.
sleep 2
exec /tmp/start-lockd
EOS
chmod +x /tmp/start-lockd /tmp/kill-lockd
/tmp/start-lockd
lockd features | sed 's/^/  features: /'
for d in a b c; do $X config $d {vmlinuz} {domu} > /tmp/$d.cfg; done
# The migrate case: domu-c (PVH) up, migrated under its own traffic, destroyed.
cat > /tmp/migrate-c <<EOS
#!/bin/sh
xl create /tmp/c.cfg >/dev/null && $X ready c >/dev/null || {{ echo "domu-c did not start"; exit 1; }}
out=\$($X under-traffic c 'xl migrate domu-c to localhost' xl migrate -s '' domu-c 'xl migrate-receive')
r=\$?; xl destroy domu-c >/dev/null 2>&1; printf '%s\\n' "\$out"
# Seen under TCG: PVH domains dying of triple faults inside Xen's SVM code.
[ \$r = 0 ] || ! xl dmesg | grep -q 'Triple fault' || echo "\$(echo "\$out" | tail -n 1) — and Xen logged a triple fault of an HVM-container domain (the emulator's nested paging)"
exit \$r
EOS
chmod +x /tmp/migrate-c
if ! {{ xl create /tmp/a.cfg && xl create /tmp/b.cfg; }}; then
  part FAIL "{p_boot} — xl create failed"; cat /var/log/xen/xen-hotplug.log; tail -n 20 /tmp/lockd.log; exit 1
fi
$X ready a; $X ready b
xl list; bridge link; lockd vif-list
grep 'vif-lockd: .* done in' /var/log/xen/xen-hotplug.log
n=$(lockd vif-list --json | grep -o '"attach":"tc"' | wc -l)
if [ "$(xl list | grep -c domu-)" = 2 ] && [ "$n" -ge 2 ] && lockd vif-list --json | grep -q '"effective_locking_mode":"locked"'; then
  part PASS "{p_boot} — domu-a vif$(xl domid domu-a).0, domu-b vif$(xl domid domu-b).0 locked by vif-lockd, $n netdevs at TC"
else part FAIL "{p_boot}"; tail -n 30 /var/log/xen/xen-hotplug.log; tail -n 20 /tmp/lockd.log; fi

{runs}xl list
xl destroy domu-a; xl destroy domu-b
"#,
        domu = domu.display(),
    )
}
