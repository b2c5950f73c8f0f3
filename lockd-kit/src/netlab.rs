//! Network-namespace topologies for the demo, the end-to-end tests and the benchmark.
//!
//! Namespaces are per thread, so code that must run inside one runs on a fresh scoped thread
//! that enters it ([`NetNs::run`]); the caller's thread never changes namespace. Names carry
//! the pid and a counter so parallel tests and runs never collide.

use std::{
    fs::File,
    io,
    marker::PhantomData,
    os::fd::AsRawFd as _,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
};

/// Errors of namespace and link set-up.
#[derive(Debug, thiserror::Error)]
pub enum NetlabError {
    /// A command (`ip`, `sysctl` ...) could not be started.
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    /// A command exited non-zero.
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    /// `setns(2)` into the namespace failed.
    #[error("entering namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = NetlabError> = std::result::Result<T, E>;

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn sh(args: &[&str]) -> Result<String> {
    let cmd = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|source| NetlabError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetlabError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop. Not `Send`: it belongs to the test that made it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    _not_send: PhantomData<*const ()>,
}

impl NetNs {
    /// Creates `lk<pid>-<n><tag>` with loopback up and IPv6 autoconfiguration off, so the
    /// kernel itself sends nothing that would disturb exact counter checks.
    pub fn new(tag: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("lk{}-{n}{tag}", std::process::id());
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self {
            name,
            _not_send: PhantomData,
        };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        for key in [
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            ns.exec(&["sysctl", "-qw", key])?;
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let file = File::open(format!("/run/netns/{}", self.name)).map_err(|source| {
            NetlabError::Enter {
                name: self.name.clone(),
                source,
            }
        })?;
        let name = self.name.clone();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on this (new, private) thread only; the fd is valid.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(NetlabError::Enter {
                        name,
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs `f` on a background thread inside this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<Result<T>>> {
        let file = File::open(format!("/run/netns/{}", self.name)).map_err(|source| {
            NetlabError::Enter {
                name: self.name.clone(),
                source,
            }
        })?;
        let name = self.name.clone();
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on this (new, private) thread only; the fd is valid.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(NetlabError::Enter {
                    name,
                    source: io::Error::last_os_error(),
                });
            }
            Ok(f())
        }))
    }

    /// The ifindex of `dev` inside this namespace.
    pub fn ifindex(&self, dev: &str) -> Result<u32> {
        let out = self.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")])?;
        out.trim().parse().map_err(|_| NetlabError::Failed {
            cmd: format!("ifindex of {dev}"),
            stderr: out,
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _best_effort = sh(&["ip", "netns", "del", &self.name]);
    }
}

/// Creates a veth pair: `host_dev` in `host`, `vm_dev` in `vm` with MAC `vm_mac`, both up.
/// With `bridge`, the host end is enslaved to it.
pub fn veth(
    host: &NetNs,
    host_dev: &str,
    vm: &NetNs,
    vm_dev: &str,
    vm_mac: &str,
    bridge: Option<&str>,
) -> Result<()> {
    host.exec(&[
        "ip", "link", "add", host_dev, "type", "veth", "peer", "name", vm_dev, "netns", &vm.name,
    ])?;
    vm.exec(&["ip", "link", "set", vm_dev, "address", vm_mac])?;
    vm.exec(&["ip", "link", "set", vm_dev, "up"])?;
    if let Some(br) = bridge {
        host.exec(&["ip", "link", "set", host_dev, "master", br])?;
    }
    host.exec(&["ip", "link", "set", host_dev, "up"])?;
    Ok(())
}

/// Creates a Linux bridge `name` in `ns` and brings it up.
pub fn bridge(ns: &NetNs, name: &str) -> Result<()> {
    ns.exec(&["ip", "link", "add", name, "type", "bridge"])?;
    ns.exec(&["ip", "link", "set", name, "up"])?;
    Ok(())
}

/// Sends every frame once, in order, on `dev` inside `ns` (AF_PACKET via pnet).
pub fn send_frames(ns: &NetNs, dev: &str, frames: &[Vec<u8>]) -> Result<()> {
    let fail = |stderr: String| NetlabError::Failed {
        cmd: format!("AF_PACKET send on {dev}"),
        stderr,
    };
    ns.run(|| {
        use pnet::datalink::{self, Channel};
        let iface = datalink::interfaces()
            .into_iter()
            .find(|i| i.name == dev)
            .ok_or_else(|| fail("no such interface".into()))?;
        let mut tx = match datalink::channel(&iface, datalink::Config::default()) {
            Ok(Channel::Ethernet(tx, _rx)) => tx,
            Ok(_) => return Err(fail("unexpected channel type".into())),
            Err(e) => return Err(fail(e.to_string())),
        };
        for f in frames {
            match tx.send_to(f, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => return Err(fail(e.to_string())),
                None => return Err(fail("nothing sent".into())),
            }
        }
        Ok(())
    })?
}
