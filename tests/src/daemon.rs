//! Running the real `lockd` binary as a daemon inside a test's host namespace, and its CLI.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use lockd_kit::netlab::NetNs;
use serde_json::Value;

static N: AtomicU32 = AtomicU32::new(0);

/// How long a daemon may take to load its programs and say `READY=1`: a bound, not an
/// expectation (a few hundred ms on this machine's kernel, tens of seconds under qemu/TCG on
/// Linux 6.1, whose verifier walks ~1M instructions, and twice that on a slower CPU).
pub const READY_BOUND: Duration = Duration::from_secs(600);

/// Where cargo put the `lockd` binary: test binaries live in target/<profile>/deps, other
/// binaries in target/<profile>.
fn find_lockd_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join("lockd"), dir.parent()?.join("lockd")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The `lockd` binary (`cargo xtask test` builds it before the tests, with `--features
/// test-hooks`: the switches some tests set).
pub fn lockd_bin() -> PathBuf {
    find_lockd_bin().unwrap_or_else(|| {
        panic!("the lockd binary is missing next to the test: run the tests with `cargo xtask test` (which builds it)")
    })
}

/// Paths one daemon instance uses, unique per test.
pub struct Instance {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub netns: String,
    /// Extra environment for the daemon.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
    /// The bpffs `bpffs` lies on: the test's own, unmounted on drop.
    mount: Option<crate::bpffs::PrivateBpffs>,
}

/// Output of one CLI call.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    /// Panics unless the call succeeded; returns stdout trimmed.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "command failed: {}", self.stderr);
        self.stdout.trim().to_string()
    }

    pub fn json(self) -> Value {
        let s = self.ok();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
    }
}

impl Instance {
    /// Paths for a daemon running in `ns`; nothing is started yet.
    pub fn new(ns: &NetNs) -> Instance {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}-{n}", std::process::id());
        let base = std::env::temp_dir().join(format!("lockd-test-{tag}"));
        let _ = std::fs::remove_dir_all(&base);
        let mount = crate::bpffs::PrivateBpffs::mount(&base.join("bpffs"));
        Instance {
            state_dir: base.join("state"),
            socket: base.join("lockd.sock"),
            bpffs: mount.dir("lockd"),
            mount: Some(mount),
            netns: ns.name().to_string(),
            env: Vec::new(),
            child: None,
        }
    }

    /// `lockd daemon` inside the namespace (nsenter: only the network namespace changes, so
    /// bpffs pins outlive the process) with this instance's paths.
    fn daemon_command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.netns))
            .arg(lockd_bin())
            .arg("daemon")
            .env("LOCKD_STATE_DIR", &self.state_dir)
            .env("LOCKD_SOCKET", &self.socket)
            .env("LOCKD_BPFFS", &self.bpffs)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Waits up to `within` for the daemon to exit by itself; its status if it did.
    pub fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < within {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Starts the daemon (inside the namespace, via nsenter) and waits for its own readiness
    /// signal: the `READY=1` it sends to `NOTIFY_SOCKET`, as systemd would receive it. Loading
    /// the programs takes the verifier a while (much longer under qemu/TCG), so the bound is
    /// generous and no machine's speed is assumed; how long it took is printed.
    pub fn start(&mut self) -> Duration {
        assert!(self.child.is_none(), "daemon already running");
        let base = self.state_dir.parent().expect("base").to_path_buf();
        std::fs::create_dir_all(&base).expect("instance directory");
        let log =
            std::fs::File::create(self.state_dir.with_file_name("daemon.log")).expect("log file");
        let notify_path = base.join("notify.sock");
        let _stale = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
        notify
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("notify timeout");
        let child = self
            .daemon_command()
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn lockd daemon");
        self.child = Some(child);
        let start = Instant::now();
        let mut buf = [0u8; 256];
        while start.elapsed() < READY_BOUND {
            if let Ok(n) = notify.recv(&mut buf)
                && buf[..n].split(|b| *b == b'\n').any(|l| l == b"READY=1")
            {
                let took = start.elapsed();
                eprintln!("lockd daemon ready (READY=1) after {took:.2?}");
                return took;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("daemon exited with {status}: {}", self.log());
            }
        }
        panic!(
            "daemon sent no READY=1 within {READY_BOUND:?}: {}",
            self.log()
        );
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the daemon expecting it to fail; returns its stderr.
    pub fn start_failing(&self) -> String {
        let out = self.daemon_command().output().expect("run lockd daemon");
        assert!(!out.status.success(), "daemon was expected to fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.with_file_name("daemon.log")).unwrap_or_default()
    }

    /// Stops the daemon with `signal` (libc::SIGTERM, libc::SIGKILL) and waits for it.
    pub fn stop(&mut self, signal: i32) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, signal) };
            let _ = c.wait();
        }
    }

    /// Runs a CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Out {
        let out = Command::new(lockd_bin())
            .args(args)
            .env("LOCKD_SOCKET", &self.socket)
            .output()
            .expect("run lockd");
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The bytes of the daemon's database file, as one file: a `VACUUM INTO` copy, so that
    /// commits still in the write-ahead log are in it (the main file alone lacks them until a
    /// checkpoint, and a comparison of it could not see a command that wrongly committed) and
    /// a checkpoint, which moves pages but changes nothing stored, changes no byte. Panics,
    /// naming the store, if the store cannot be opened and read as lockd's.
    pub fn state_bytes(&self) -> Vec<u8> {
        use lockd::store::{SqliteStore, Store as _};
        let fail = |e: &dyn std::fmt::Display| -> ! {
            panic!(
                "cannot open the daemon's store in {}: {e}",
                self.state_dir.display()
            )
        };
        let mut store = SqliteStore::open_read_only(&self.state_dir).unwrap_or_else(|e| fail(&e));
        store.load().unwrap_or_else(|e| fail(&e));
        let conn = rusqlite::Connection::open_with_flags(
            store.path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap_or_else(|e| fail(&e));
        let copy = self.state_dir.with_file_name("state-copy.db");
        let _ = std::fs::remove_file(&copy);
        conn.execute("VACUUM INTO ?1", [copy.to_str().expect("utf-8 path")])
            .unwrap_or_else(|e| fail(&e));
        let bytes = std::fs::read(&copy).unwrap_or_else(|e| fail(&e));
        let _ = std::fs::remove_file(&copy);
        bytes
    }

    /// The VIF's counter for a direction and reason, from `vif-stats --json`.
    pub fn counter(&self, uuid: &str, dir: &str, reason: &str) -> u64 {
        let v = self
            .cli(&["vif-stats", &format!("uuid={uuid}"), "--json"])
            .json();
        v[0]["counters"][dir][reason]["packets"]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {dir}/{reason} in {v}"))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop(libc::SIGKILL);
        // No panic here: this may run while a test is already unwinding.
        let Some(bin) = find_lockd_bin() else { return };
        let _ = Command::new(bin)
            .args(["cleanup", "--bpffs"])
            .arg(&self.bpffs)
            .env("LOCKD_SOCKET", &self.socket)
            .output();
        drop(self.mount.take());
        if let Some(base) = self.state_dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}
