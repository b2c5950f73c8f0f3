//! `cargo xtask test --kernel 6.1|6.12`: the test tiers on another kernel, under qemu.
//!
//! How (and why this way):
//! - **Kernel**: Debian's own generic `linux-image-*-amd64-unsigned` package for the series,
//!   fetched with `apt-get download` and unpacked with `dpkg-deb -x` under
//!   `target/kernels/` — nothing is installed into the host's /boot or /lib/modules. The
//!   generic flavour carries 9p, virtio, veth, bridge, 8021q and pktgen as modules.
//! - **Boot**: `qemu-system-x86_64` with TCG (KVM stops this VM-in-a-VM with an emulation
//!   error), the unpacked kernel and a tiny initramfs built here: a static busybox, the
//!   modules 9p needs and an `/init` that mounts the host's root filesystem read-only over
//!   virtio-9p, puts tmpfs on the directories tests write (`/tmp`, `/run`, `/var/tmp`),
//!   points the kernel's module loader at the unpacked modules and runs a script in a chroot.
//!   The guest therefore runs the very test binaries the host just built, with the host's
//!   tools (ip, tc, nsenter), and cannot write to the host. No image to build or keep in step,
//!   no extra Python tooling (virtme-ng does the same with more moving parts).
//! - **Parts**: the script runs each part and prints `LOCKD-PART <name> PASS|FAIL`; the host
//!   prints one line per part with the kernel version and fails if any part failed or the
//!   guest did not finish.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    cargo_output, ensure_packages,
    initramfs::build_initramfs,
    kernel::{self, Kernel},
    workspace,
};

/// What the guest needs on the host beyond the test tiers' packages.
pub const APT: &[(&str, &str)] = &[
    ("qemu-system-x86", "qemu-system-x86_64"),
    ("busybox-static", "busybox"),
    ("kmod", "depmod"),
];

/// Modules loaded in the guest before the tests (with their dependencies).
const GUEST_MODULES: &[&str] = &[
    "veth",
    "bridge",
    "8021q",
    "pktgen",
    "sch_ingress",
    "cls_bpf",
    "ifb",
    "sch_netem",
    "sch_tbf",
    // The shaper hand-off before Linux 6.4 (lockd/src/dataplane/shaper.rs).
    "cls_u32",
    "act_mirred",
    "sch_htb",
];

/// Guest wall-clock limit (TCG is slow; the whole guest run aims at well under this).
const GUEST_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// One part of the guest run: a name and the shell command that runs it in the guest.
struct Part {
    name: &'static str,
    cmd: String,
}

pub fn run(series: &str) -> Result<()> {
    if workspace().to_string_lossy().contains(char::is_whitespace) {
        bail!(
            "the checkout's path {} has whitespace, which the guest's kernel command line cannot carry: clone it to a path without",
            workspace().display()
        );
    }
    ensure_packages(APT)?;
    crate::initramfs::ensure_static_busybox()?;
    let kernel = kernel::fetch(series)?;
    eprintln!(
        "xtask: kernel {} ({})",
        kernel.version,
        kernel.root.display()
    );
    let bins = build_binaries()?;
    let dir = kernel
        .root
        .parent()
        .expect("under target/kernels")
        .to_path_buf();
    let initrd = dir.join("initrd.cpio");
    build_initramfs(&kernel, &initrd)?;
    let script = dir.join("guest.sh");
    let mut parts = parts(&bins);
    // For working on one part: `LOCKD_GUEST_ONLY=<words in its name>`.
    if let Ok(only) = std::env::var("LOCKD_GUEST_ONLY") {
        parts.retain(|p| p.name.contains(only.as_str()));
        eprintln!("xtask: LOCKD_GUEST_ONLY={only}: {} part(s)", parts.len());
    }
    fs::write(&script, guest_script(&kernel, &parts))?;
    boot(&kernel, &initrd, &script, &parts)
}

/// The unpacked Debian kernel of `series` (fetched the first time), with the tools the guest
/// boot needs installed.
pub(crate) fn kernel(series: &str) -> Result<Kernel> {
    ensure_packages(APT)?;
    crate::initramfs::ensure_static_busybox()?;
    kernel::fetch(series)
}

/// The test binaries and the lockd binaries, built on the host for the guest to run.
struct Bins {
    tests: std::collections::BTreeMap<String, PathBuf>,
    lockd: PathBuf,
    bench: PathBuf,
}

fn build_binaries() -> Result<Bins> {
    crate::cargo(&["build", "-p", "lockd", "--bin", "lockd", "--features", "test-hooks"], &[])?;
    crate::cargo(
        &[
            "build",
            "--release",
            "-p",
            "lockd-tests",
            "--bin",
            "lockd-bench",
        ],
        &[],
    )?;
    let json = cargo_output(&[
        "test",
        "--no-run",
        "-p",
        "lockd-tests",
        "--tests",
        "--message-format=json",
    ])?;
    let mut tests = std::collections::BTreeMap::new();
    for line in json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["kind"][0] == "test"
            && let Some(exe) = v["executable"].as_str()
        {
            let name = v["target"]["name"].as_str().unwrap_or_default().to_string();
            tests.insert(name, PathBuf::from(exe));
        }
    }
    let ws = workspace();
    Ok(Bins {
        tests,
        lockd: ws.join("target/debug/lockd"),
        bench: ws.join("target/release/lockd-bench"),
    })
}

fn parts(b: &Bins) -> Vec<Part> {
    let t = |name: &str| {
        b.tests
            .get(name)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| format!("missing-test-binary-{name}"))
    };
    let one = |bin: &str, filters: &[&str]| {
        format!(
            "{} --exact --test-threads=1 --nocapture {}",
            t(bin),
            filters.join(" ")
        )
    };
    vec![
        Part {
            name: "kernel features and attach path",
            cmd: format!("{} features", b.lockd.display()),
        },
        Part {
            name: "from-VM end to end (XDP native and generic)",
            cmd: one(
                "e2e",
                &[
                    "arp_poisoning_is_dropped_native",
                    "arp_poisoning_is_dropped_generic",
                    "ip_spoofing_is_dropped_and_allowed_sources_pass",
                ],
            ),
        },
        Part {
            name: "to-VM end to end (TC egress)",
            cmd: one(
                "to_vm_and_rate",
                &["flooded_unicast_does_not_reach_a_locked_vm"],
            ),
        },
        Part {
            name: "802.1Q-tagged frames from the VM do not pass",
            cmd: one("e2e", &["vlan_tagged_frames_do_not_pass"]),
        },
        Part {
            name: "differential, 20000 random frames each way",
            cmd: format!(
                "LOCKD_DIFF_FRAMES=20000 {}",
                one(
                    "differential",
                    &[
                        "corpus_matches_model",
                        "random_frames_match_model",
                        "to_vm_corpus_and_random_frames_match_model",
                        "tc_hook_corpus_matches_model",
                    ],
                )
            ),
        },
        Part {
            name: "from-VM checks at TC ingress on skbs with the frame in fragments",
            cmd: one(
                "skb_path",
                &["fragmented_frames_get_the_models_verdict_at_the_tc_hook"],
            ),
        },
        Part {
            name: "lockd monitor: one line per dropped frame, with its reason and addresses",
            cmd: one(
                "observe",
                &["monitor_shows_each_dropped_frame_with_its_reason_and_addresses"],
            ),
        },
        Part {
            name: "daemon start, kill -9, adopt: no spoofed frame delivered",
            cmd: one("daemon_e2e", &["restarts_leave_no_gap"]),
        },
        Part {
            name: "fail closed: a netdev that cannot be attached is held, a bad stored row holds its VIF, lost link events",
            cmd: one(
                "hold",
                &[
                    "a_netdev_that_cannot_be_attached_is_held_and_its_batch_enforced",
                    "a_bad_stored_row_holds_only_its_vif",
                    "after_lost_events_vanished_links_leave_the_dataplane",
                ],
            ),
        },
        Part {
            name: "pktgen into a VIF: frames sent = frames lockd counted",
            cmd: format!("{} --pktgen-check", b.bench.display()),
        },
        // Last: it takes the TC modules away (the Xen dom0 that had neither) and stops the
        // kernel from loading them again.
        Part {
            name: "without sch_ingress and cls_bpf: lockd features names them, a VIF is stored and held",
            cmd: format!(
                "echo /bin/false > /proc/sys/kernel/modprobe && rmmod cls_bpf sch_ingress && LOCKD_TC_MODULES_REMOVED=1 {}",
                one("hold", &["a_kernel_without_the_tc_modules_holds_its_vifs"])
            ),
        },
    ]
}

fn guest_script(k: &Kernel, parts: &[Part]) -> String {
    let mut s = String::from(
        "#!/bin/sh\n# Written by `cargo xtask test --kernel`; runs inside the guest.\n",
    );
    s += "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n";
    // Tests that need a module this guest must have (8021q) fail rather than stop early.
    s += "export HOME=/tmp RUST_BACKTRACE=1 LOCKD_GUEST=1\n";
    // The kernel's module loader finds the unpacked package's modules.
    s += &format!(
        "printf '#!/bin/sh\\nexec /sbin/modprobe -d {} \"$@\"\\n' > /tmp/modprobe && chmod +x /tmp/modprobe && echo /tmp/modprobe > /proc/sys/kernel/modprobe\n",
        k.root.display()
    );
    for m in GUEST_MODULES {
        s += &format!("/tmp/modprobe {m} || echo \"LOCKD-MODULE-MISSING {m}\"\n");
    }
    s += "echo \"LOCKD-KERNEL $(uname -r)\"\n";
    s += &format!("cd {}\n", workspace().display());
    for p in parts {
        s += &format!(
            "echo 'LOCKD-START {name}'\nstart=$(date +%s)\nif {cmd} > /tmp/part.log 2>&1; then r=PASS; else r=FAIL; fi\nif grep -q '^running 0 tests' /tmp/part.log; then r=FAIL; echo 'no test ran'; fi\ngrep -h 'READY=1' /tmp/part.log | head -n 8\ntail -n 40 /tmp/part.log\necho \"LOCKD-PART $r $(( $(date +%s) - start ))s {name}\"\n",
            name = p.name,
            cmd = p.cmd
        );
    }
    s
}

fn boot(k: &Kernel, initrd: &Path, script: &Path, parts: &[Part]) -> Result<()> {
    let log_path = initrd.with_file_name("console.log");
    eprintln!(
        "xtask: booting {} under qemu (TCG); console in {}",
        k.version,
        log_path.display()
    );
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4G"])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(k.vmlinuz())
        .arg("-initrd")
        .arg(initrd)
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 quiet loglevel=4 lockd.script={} lockd.workspace={}",
            script.display(),
            fs::canonicalize(workspace())?.display()
        ))
        .args([
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ]);
    let names: Vec<&str> = parts.iter().map(|p| p.name).collect();
    watch(qemu, &log_path, &names, &k.version)
}

/// Runs a prepared qemu command, follows its console (`LOCKD-` markers from the guest's
/// script), keeps it in `log_path` and fails unless every part in `parts` reported PASS and
/// the script finished.
pub(crate) fn watch(mut qemu: Command, log_path: &Path, parts: &[&str], what: &str) -> Result<()> {
    let mut log = fs::File::create(log_path)?;
    let started = Instant::now();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut results: Vec<(String, String, String)> = Vec::new();
    let mut kernel_seen = None;
    let mut exit = None;
    let mut missing: Vec<String> = Vec::new();
    loop {
        let left = GUEST_TIMEOUT.saturating_sub(started.elapsed());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                bail!("the {what} guest did not finish within {GUEST_TIMEOUT:?}");
            }
            Err(_) => break,
        };
        let line = line.trim_end_matches('\r');
        // The console may put escape sequences before a marker.
        let line = line.find("LOCKD-").map_or(line, |i| &line[i..]).to_string();
        let _ = writeln!(log, "{line}");
        if let Some(v) = line.strip_prefix("LOCKD-KERNEL ") {
            kernel_seen = Some(v.to_string());
            eprintln!("guest: kernel {v}, booted in {:.0?}", started.elapsed());
        } else if let Some(p) = line.strip_prefix("LOCKD-START ") {
            eprintln!("guest: {p} ...");
        } else if let Some(rest) = line.strip_prefix("LOCKD-PART ") {
            let mut it = rest.splitn(3, ' ');
            let (r, t, rest) = (
                it.next().unwrap_or_default().to_string(),
                it.next().unwrap_or_default().to_string(),
                it.next().unwrap_or_default(),
            );
            // A part may say what it saw after its name: "NAME — DETAIL".
            let (name, detail) = rest.split_once(" — ").unwrap_or((rest, ""));
            let t = if detail.is_empty() {
                format!("({t})")
            } else {
                format!("({t}) — {detail}")
            };
            eprintln!("guest: {r} {name} {t}");
            results.push((r, t, name.to_string()));
        } else if let Some(m) = line.strip_prefix("LOCKD-MODULE-MISSING ") {
            eprintln!("guest: module {m} did not load");
            missing.push(m.trim().to_string());
        } else if let Some(code) = line.strip_prefix("LOCKD-GUEST-EXIT ") {
            exit = Some(code.trim().to_string());
        } else {
            println!("  | {line}");
        }
    }
    let _ = child.wait();
    let kv = kernel_seen.unwrap_or_else(|| "(did not boot)".into());
    eprintln!("\nkernel {kv} under qemu/TCG, {:.0?}:", started.elapsed());
    let mut failed = 0;
    for p in parts {
        match results.iter().find(|(_, _, n)| n == *p) {
            Some((r, t, _)) => {
                eprintln!("  {r:4}  {}  {t}", p);
                if r != "PASS" {
                    failed += 1;
                }
            }
            None => {
                eprintln!("  MISS  {}  (the guest never reported it)", p);
                failed += 1;
            }
        }
    }
    if exit.is_none() {
        bail!(
            "the guest stopped before its script finished (console: {})",
            log_path.display()
        );
    }
    if !missing.is_empty() {
        bail!(
            "module(s) {} did not load in the {kv} guest; the tests that need them cannot run (console: {})",
            missing.join(", "),
            log_path.display()
        );
    }
    if failed > 0 {
        bail!(
            "{failed} guest part(s) failed on {kv} (console: {})",
            log_path.display()
        );
    }
    Ok(())
}
