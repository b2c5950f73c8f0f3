//! Real etcd members for the pool tests, and the network the pool's hosts reach them on.
//!
//! Each daemon runs in its host's own network namespace, where the machine's loopback cannot
//! be reached; so the members listen on the "loopback" of the pool instead: a management
//! namespace with one bridge (`10.77.0.1/24`), to which every host namespace gets a veth
//! (`10.77.0.1H/24`). Each member is a real `etcd` (Debian's `etcd-server`) with its own data
//! directory in the test's temporary directory, killed and removed however the test ends.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use lockd_kit::netlab::{NetNs, bridge, veth};

/// The address every member listens on, inside the management namespace.
pub const ADDR: &str = "10.77.0.1";

/// How long members may take to elect a leader and answer: a bound, not an expectation
/// (about a second here).
pub const READY_BOUND: Duration = Duration::from_secs(120);

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A cluster of `etcd` members in a management namespace.
pub struct Cluster {
    pub ns: NetNs,
    members: Vec<Member>,
    base: PathBuf,
    hosts: u8,
}

impl Cluster {
    /// Starts `n` members (client ports 2379, 2479, …) and waits until all are healthy.
    pub fn start(n: usize) -> Cluster {
        let ns = NetNs::new("etcd").expect("management namespace");
        bridge(&ns, "pool").expect("pool bridge");
        ns.exec(&["ip", "addr", "add", &format!("{ADDR}/24"), "dev", "pool"])
            .expect("pool address");
        let base = std::env::temp_dir().join(format!("lockd-etcd-{}", ns.name()));
        let _ = std::fs::remove_dir_all(&base);
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: 2379 + 100 * i as u16,
                peer: 2380 + 100 * i as u16,
                dir: base.join(format!("m{i}")),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            ns,
            members,
            base,
            hosts: 0,
        };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy();
        c
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{ADDR}:{}", m.name, m.peer))
            .collect();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "member {} already runs", m.name);
        std::fs::create_dir_all(&m.dir).expect("member directory");
        let log = std::fs::File::create(m.dir.with_extension("log")).expect("member log");
        let client = format!("http://{ADDR}:{}", m.client);
        let peer = format!("http://{ADDR}:{}", m.peer);
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns.name()))
            .arg("etcd")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(m.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial.join(",")])
            .args(["--initial-cluster-token", self.ns.name()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (the bootstrap installs etcd-server)");
        m.child = Some(child);
    }

    /// Waits until every running member says it is healthy; prints how long it took.
    pub fn wait_healthy(&self) -> Duration {
        let start = Instant::now();
        let running: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| format!("{ADDR}:{}", m.client))
            .collect();
        let mut last = String::new();
        while start.elapsed() < READY_BOUND {
            match self.ns.exec(&[
                "etcdctl",
                "--endpoints",
                &running.join(","),
                "--dial-timeout=1s",
                "--command-timeout=2s",
                "endpoint",
                "health",
            ]) {
                Ok(_) => {
                    let took = start.elapsed();
                    eprintln!("etcd: {} member(s) healthy after {took:.2?}", running.len());
                    return took;
                }
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd members not healthy within {READY_BOUND:?}: {last}\n{}",
            self.logs()
        );
    }

    /// Every member's log, for a failure message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(m.dir.with_extension("log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "--- {} ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `HOST:PORT` of every member, comma separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{ADDR}:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The daemon's `--store` for these members under `prefix`.
    pub fn store_url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.endpoints())
    }

    /// Kills member `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data directory and waits for the cluster's health.
    pub fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy();
    }

    /// Gives `host` a link to the management namespace (`mg` in it, 10.77.0.1H/24).
    pub fn connect(&mut self, host: &NetNs) {
        self.hosts += 1;
        let h = self.hosts;
        let port = format!("h{h}");
        veth(&self.ns, &port, host, "mg", &format!("02:77:00:00:00:{h:02x}"), Some("pool"))
            .expect("management veth");
        host.exec(&["ip", "addr", "add", &format!("10.77.0.{}/24", 10 + h), "dev", "mg"])
            .expect("management address");
        // A new link forwards once its carrier is up: wait for the members' address to answer.
        let start = Instant::now();
        while host.exec(&["ping", "-c1", "-W1", ADDR]).is_err() {
            assert!(start.elapsed() < READY_BOUND, "{ADDR} unreachable from {}", host.name());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcdctl ARGS` against every member; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let eps = self.endpoints();
        let mut full = vec!["etcdctl", "--endpoints", &eps, "--command-timeout=5s"];
        full.extend_from_slice(args);
        self.ns
            .exec(&full)
            .unwrap_or_else(|e| panic!("etcdctl {args:?}: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
