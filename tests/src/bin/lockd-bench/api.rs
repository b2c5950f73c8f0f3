//! The daemon's API latency and memory at 4096 VIFs, measured on its socket.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use lockd_kit::netlab::NetNs;
use serde_json::{Value, json};

use crate::step;

/// `lockd daemon` running inside `ns` (nsenter: only the network namespace changes, so its
/// bpffs pins are visible to `lockd cleanup`), with its state and socket under `base`.
pub(crate) struct BenchDaemon {
    child: std::process::Child,
    base: std::path::PathBuf,
    pub(crate) sock: std::path::PathBuf,
    bpffs: String,
    /// Its own bpffs, unmounted when it stops.
    mount: Option<lockd_tests::bpffs::PrivateBpffs>,
}

impl BenchDaemon {
    /// Starts it with `env` added and waits until it answers.
    pub(crate) fn start(
        ns: &NetNs,
        base: std::path::PathBuf,
        env: &[(&str, &std::path::Path)],
    ) -> Self {
        let mount = lockd_tests::bpffs::PrivateBpffs::mount(&base.join("bpffs"));
        let bpffs = mount.dir("lockd").to_string_lossy().into_owned();
        let sock = base.join("s.sock");
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .arg(lockd_tests::daemon::lockd_bin())
            .arg("daemon")
            .env("LOCKD_STATE_DIR", base.join("state"))
            .env("LOCKD_SOCKET", &sock)
            .env("LOCKD_BPFFS", &bpffs)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .spawn()
            .expect("daemon");
        let start = Instant::now();
        while lockd::protocol::call(&sock, &["network-list".into()]).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        BenchDaemon {
            child,
            base,
            sock,
            bpffs,
            mount: Some(mount),
        }
    }

    /// Its bpffs directory.
    pub(crate) fn bpffs(&self) -> &std::path::Path {
        std::path::Path::new(&self.bpffs)
    }

    /// The daemon's pid (nsenter execs it).
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it and removes its pins and files (as dropping it does, however the bench ends).
    pub(crate) fn stop(self) {
        drop(self);
    }
}

impl Drop for BenchDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new(lockd_tests::daemon::lockd_bin())
            .args(["cleanup", "--bpffs", &self.bpffs])
            .env("LOCKD_SOCKET", &self.sock)
            .output();
        drop(self.mount.take());
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// p-th percentile (0..=100) of `v`, in milliseconds.
pub(crate) fn pct_ms(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p / 100.0).round() as usize;
    v[i].as_secs_f64() * 1e3
}

/// The daemon's API cost and memory with 4096 VIFs: each request timed on the daemon's
/// socket, from the request the CLI sends to the reply, which comes after the store's
/// durable commit (process start excluded). 64 of the VIFs have real netdevs, so their
/// updates reach the kernel too; half the updates go to them.
pub(crate) fn daemon_api_and_rss() -> Value {
    step("daemon API latency and memory with 4096 VIFs (durable SQLite store)");
    const VIFS: u32 = 4096;
    const WITH_NETDEV: u32 = 64;
    let ns = NetNs::new("bd").expect("ns");
    for i in 0..WITH_NETDEV {
        ns.exec(&[
            "ip",
            "link",
            "add",
            &format!("bv{i}"),
            "type",
            "veth",
            "peer",
            "name",
            &format!("bp{i}"),
        ])
        .expect("veth");
        ns.exec(&["ip", "link", "set", &format!("bv{i}"), "up"])
            .expect("up");
    }
    let base = std::env::temp_dir().join(format!("lockd-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let daemon = BenchDaemon::start(&ns, base, &[]);
    let sock = daemon.sock.clone();
    let call = |args: &[String]| {
        let t = Instant::now();
        let r = lockd::protocol::call(&sock, args);
        (t.elapsed(), r)
    };
    let (_, net) = call(&["network-create".into(), "name-label=bench".into()]);
    let net = net.expect("network-create").stdout.trim().to_string();
    let mut creates = Vec::new();
    // Creates whose netdev exists: they attach both programs before replying.
    let mut attaches = Vec::new();
    let mut uuids = Vec::new();
    for i in 0..VIFS {
        let (t, r) = call(&[
            "vif-create".into(),
            format!("network-uuid={net}"),
            format!("device=bv{i}"),
            format!("mac=02:01:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
        ]);
        let r = r.expect("vif-create");
        assert_eq!(r.code, 0, "vif-create {i}: {}", r.stderr);
        if i < WITH_NETDEV {
            attaches.push(t);
        } else {
            creates.push(t);
        }
        uuids.push(r.stdout.trim().to_string());
        let (_, r) = call(&[
            "vif-param-set".into(),
            format!("uuid={}", uuids[i as usize]),
            "locking-mode=locked".into(),
            format!("ipv4-allowed=10.{}.{}.1", i >> 8, i & 0xff),
        ]);
        assert_eq!(r.expect("vif-param-set").code, 0, "vif-param-set {i}");
        if i % 1024 == 1023 {
            eprintln!("  {} VIFs configured", i + 1);
        }
    }
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap_or_default();
    // nsenter execs the daemon, so the child pid is the daemon's.
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    let mut updates = Vec::new();
    // Those whose VIF has a netdev: the kernel's maps change too.
    let mut updates_live = Vec::new();
    let mut rng = 0x9e37_79b9_u32;
    for k in 0..2000u32 {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        let i = if k % 2 == 0 {
            rng % WITH_NETDEV
        } else {
            rng % VIFS
        };
        let (t, r) = call(&[
            "vif-param-set".into(),
            format!("uuid={}", uuids[i as usize]),
            format!(
                "ipv4-allowed=10.{}.{}.1,10.99.{}.{}",
                i >> 8,
                i & 0xff,
                k >> 8,
                k & 0xff
            ),
        ]);
        assert_eq!(r.expect("vif-param-set").code, 0, "update {k}");
        updates.push(t);
        if i < WITH_NETDEV {
            updates_live.push(t);
        }
    }
    let concurrent = concurrent_updates(&sock, &uuids);
    // The disk's own cost of one durable write, measured where the store writes.
    let state = daemon.base.join("state");
    let page = page_size(&state.join(lockd::store::sqlite::DB_FILE));
    let mut fsyncs = fsync_samples(&state, page, 2000);
    daemon.stop();
    let mb = kb / 1024.0;
    let (fsync_p50, fsync_p99) = (pct_ms(&mut fsyncs, 50.0), pct_ms(&mut fsyncs, 99.0));
    let r = json!({
        "vifs": VIFS,
        "vifs_with_netdev": WITH_NETDEV,
        "rss_mb": mb,
        "api_create_p50_ms": pct_ms(&mut creates, 50.0),
        "api_create_p99_ms": pct_ms(&mut creates, 99.0),
        "api_create_attach_p50_ms": pct_ms(&mut attaches, 50.0),
        "api_create_attach_p99_ms": pct_ms(&mut attaches, 99.0),
        "api_update_p50_ms": pct_ms(&mut updates, 50.0),
        "api_update_p99_ms": pct_ms(&mut updates, 99.0),
        "api_update_live_p50_ms": pct_ms(&mut updates_live, 50.0),
        "api_update_live_p99_ms": pct_ms(&mut updates_live, 99.0),
        "store_page_bytes": page,
        "disk_fsync_p50_ms": fsync_p50,
        "disk_fsync_p99_ms": fsync_p99,
        "api_update_p99_over_fsync_p99_ms": pct_ms(&mut updates, 99.0) - fsync_p99,
        "api_create_p99_over_fsync_p99_ms": pct_ms(&mut creates, 99.0) - fsync_p99,
        "concurrent": concurrent,
    });
    eprintln!(
        "  disk: {page}-byte write + fsync p50 {fsync_p50:.3} ms p99 {fsync_p99:.3} ms; {CLIENTS} clients at once: vif-param-set p50 {:.3} ms p99 {:.3} ms, {:.0} commands/s",
        r["concurrent"]["update_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["concurrent"]["update_p99_ms"].as_f64().unwrap_or(f64::NAN),
        r["concurrent"]["commands_per_s"].as_f64().unwrap_or(f64::NAN),
    );
    eprintln!(
        "  RSS {mb:.1} MB; vif-create p50 {:.3} ms p99 {:.3} ms; vif-create attaching to a live netdev p50 {:.3} ms p99 {:.3} ms; vif-param-set p50 {:.3} ms p99 {:.3} ms",
        r["api_create_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_create_p99_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_create_attach_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_create_attach_p99_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_update_p50_ms"].as_f64().unwrap_or(f64::NAN),
        r["api_update_p99_ms"].as_f64().unwrap_or(f64::NAN)
    );
    r
}

/// Clients sending `vif-param-set` at once in the concurrent phase.
const CLIENTS: usize = 8;

/// `CLIENTS` clients at once, 250 `vif-param-set` each on VIFs of their own: each command's
/// latency (queued commands share a transaction: group commit) and the commands per second.
fn concurrent_updates(sock: &std::path::Path, uuids: &[String]) -> Value {
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let sock = sock.to_path_buf();
            let mine: Vec<String> = uuids.iter().skip(c).step_by(CLIENTS).take(250).cloned().collect();
            std::thread::spawn(move || {
                let mut lat = Vec::with_capacity(mine.len());
                for (k, uuid) in mine.iter().enumerate() {
                    let args = [
                        "vif-param-set".to_string(),
                        format!("uuid={uuid}"),
                        format!("ipv4-allowed=10.98.{c}.{}", k % 256),
                    ];
                    let t = Instant::now();
                    let r = lockd::protocol::call(&sock, &args).expect("vif-param-set");
                    lat.push(t.elapsed());
                    assert_eq!(r.code, 0, "concurrent vif-param-set: {}", r.stderr);
                }
                lat
            })
        })
        .collect();
    let mut all: Vec<Duration> = threads.into_iter().flat_map(|t| t.join().expect("client")).collect();
    let took = start.elapsed().as_secs_f64();
    json!({
        "clients": CLIENTS,
        "commands": all.len(),
        "commands_per_s": all.len() as f64 / took,
        "update_p50_ms": pct_ms(&mut all, 50.0),
        "update_p99_ms": pct_ms(&mut all, 99.0),
    })
}

/// The page size in an SQLite database's header (bytes 16–17, big-endian; 1 means 65536).
fn page_size(db: &std::path::Path) -> usize {
    let mut head = [0u8; 18];
    let read = std::fs::File::open(db).and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head));
    match (read, u16::from_be_bytes([head[16], head[17]])) {
        (Ok(()), 1) => 65536,
        (Ok(()), n) if n >= 512 => n as usize,
        _ => panic!("{}: not an SQLite database header", db.display()),
    }
}

/// `n` times: one `page`-byte write at the start of a file in `dir`, then fsync; each one's
/// time. The file is removed.
fn fsync_samples(dir: &std::path::Path, page: usize, n: usize) -> Vec<Duration> {
    use std::os::unix::fs::FileExt;
    let path = dir.join("fsync-probe");
    let f = std::fs::File::create(&path).expect("fsync probe");
    let mut buf = vec![0x5au8; page];
    f.write_all_at(&buf, 0).expect("write");
    f.sync_all().expect("fsync");
    let samples = (0..n)
        .map(|i| {
            let t = Instant::now();
            buf[0] = i as u8;
            f.write_all_at(&buf, 0).expect("write");
            f.sync_all().expect("fsync");
            t.elapsed()
        })
        .collect();
    let _ = std::fs::remove_file(&path);
    samples
}
