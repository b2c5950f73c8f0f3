//! `lockd daemon`: owns the state and the dataplane, follows netdevs as they come and go, and
//! answers CLI commands on a Unix socket.
//!
//! One thread (the core) owns state, store and dataplane and handles one message at a time:
//! a command from a client or a batch of link events from rtnetlink. tokio runs the socket
//! and signal handling around it. Exiting, by signal or kill, leaves every pin in place, so
//! enforcement continues (fail-closed) until a new daemon adopts it or `lockd cleanup` runs.

use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use lockd_common::settings::VifSettings;

use crate::{
    dataplane::{AttachMode, Dataplane, VifCounters, XdpModeRequest},
    netlink::{self, LinkEvent},
    store::{self, State, Store},
    xe::{self, Runtime},
};

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeRequest,
    /// xenopsd's record directory, read at start for VIFs the toolstack changed while the
    /// daemon was down.
    pub xenopsd_dir: PathBuf,
}

/// A client request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// An `xe` command: the command line after `lockd`.
    Xe { argv: Vec<String> },
    /// The toolstack hook's `filter`: settings for one VIF on one netdev, parsed by the hook
    /// from xenopsd's record. `network_name_label` is the record's bridge; with `plumb` the
    /// netdev is also put on it (off every bridge if the VIF is disabled) and up, as the
    /// original `setup-vif-rules` does.
    Apply {
        vif: VifSettings,
        network_name_label: String,
        #[serde(default)]
        plumb: bool,
    },
    /// The toolstack hook's `clear` of one netdev: only that netdev loses its policy; with
    /// `plumb` it leaves its bridge and is set up.
    Unplug {
        device: String,
        #[serde(default)]
        plumb: bool,
    },
    /// The toolstack hook could not read or apply the record for `device`: the VIF keeps the
    /// policy it has, or, having none, is enforced as `disabled` until a valid one arrives.
    Fence { device: String, reason: String },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// How long the core must be idle before it deletes replaced generations.
const GC_IDLE: Duration = Duration::from_millis(20);

enum Msg {
    Command(Box<Request>, oneshot::Sender<Reply>),
    Links(Vec<LinkEvent>),
}

struct Core {
    state: State,
    store: Box<dyn Store>,
    dp: Dataplane,
    /// Netdev name → ifindex in the daemon's namespace, kept current from rtnetlink.
    links: HashMap<String, u32>,
    xdp_mode: XdpModeRequest,
    /// Netdevs with no VIF whose policy could not be applied: enforced as `disabled` until a
    /// VIF with a valid policy takes the netdev (POLICY.md, failing closed).
    fenced: std::collections::HashSet<String>,
}

/// What a fenced netdev is held to: nothing passes either way.
fn fence_policy() -> lockd_common::policy::VifPolicy {
    lockd_common::policy::VifPolicy {
        mode: lockd_common::policy::EffectiveMode::Disabled,
        mac: [0; 6],
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        rate: None,
    }
}

impl Runtime for Core {
    fn ifindex(&self, device: &str) -> Option<u32> {
        self.links.get(device).copied()
    }
    fn attach_mode(&self, ifindex: u32) -> Option<AttachMode> {
        self.dp.attach_mode(ifindex)
    }
    fn counters(&self, ifindex: u32) -> Option<VifCounters> {
        self.dp.counters(ifindex).ok()
    }
}

impl Core {
    /// Makes the dataplane match the state for every VIF whose netdev exists: removes
    /// policies nobody wants, replaces changed ones atomically, attaches where missing.
    fn reconcile_all(&mut self) -> Result<()> {
        let mut devices: Vec<String> = self.state.vifs().map(|v| v.device.clone()).collect();
        let wanted: std::collections::HashSet<u32> = devices
            .iter()
            .filter_map(|d| self.links.get(d).copied())
            .collect();
        for ifx in self.dp.ifindexes() {
            if !wanted.contains(&ifx) {
                self.dp.remove_policy(ifx)?;
                tracing::info!(ifindex = ifx, "policy removed");
            }
        }
        devices.dedup();
        self.reconcile(&devices)
    }

    /// Makes the dataplane match the state for the netdevs `devices` only: what a command
    /// or a link event touched.
    fn reconcile(&mut self, devices: &[String]) -> Result<()> {
        for dev in devices {
            let Some(&ifx) = self.links.get(dev) else {
                continue;
            };
            let Some(vif) = self.state.vif_by_device(dev) else {
                if self.fenced.contains(dev) {
                    self.dp.set_policy(ifx, &fence_policy())?;
                    if self.dp.attach_mode(ifx).is_none() {
                        self.dp.attach(ifx, self.xdp_mode)?;
                    }
                    tracing::warn!(ifindex = ifx, device = %dev, "no valid policy: enforced as disabled");
                    continue;
                }
                if self.dp.has_policy(ifx) {
                    self.dp.remove_policy(ifx)?;
                    tracing::info!(ifindex = ifx, device = %dev, "policy removed");
                }
                continue;
            };
            let (uuid, policy) = (vif.uuid.clone(), self.state.policy(vif));
            self.fenced.remove(dev);
            self.dp
                .set_policy(ifx, &policy)
                .with_context(|| format!("VIF {uuid} (ifindex {ifx})"))?;
            if self.dp.attach_mode(ifx).is_none() {
                let mode = self
                    .dp
                    .attach(ifx, self.xdp_mode)
                    .with_context(|| format!("attaching VIF {uuid} (ifindex {ifx})"))?;
                tracing::info!(vif = %uuid, ifindex = ifx, ?mode, "attached");
            }
        }
        Ok(())
    }

    fn command(&mut self, req: Request) -> Reply {
        let fail = |msg: String| Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("lockd: {msg}\n"),
        };
        let started = Instant::now();
        let mut notes = String::new();
        // (netdev, bridge to put it on) for the hook's plumbing after the policy is in force.
        let mut bridge: Option<(String, Option<String>)> = None;
        let out = match req {
            Request::Fence { device, reason } => return self.fence(device, reason),
            Request::Xe { argv } => {
                // Tests of the panic policy inject a fault here (debug builds only).
                #[cfg(debug_assertions)]
                if argv.first().map(String::as_str) == Some("network-create")
                    && std::env::var("LOCKD_FAULT").as_deref() == Ok("panic-on-network-create")
                {
                    panic!("fault injected by LOCKD_FAULT");
                }
                // Host bits in a list item are accepted and stored as the network; say so.
                for a in argv.iter().skip(1) {
                    if let Some((key, value)) = a.split_once('=')
                        && key.to_ascii_lowercase().contains("allowed")
                    {
                        for n in lockd_common::policy::host_bit_notes(value) {
                            notes += &format!("lockd: note: {n}\n");
                        }
                    }
                }
                xe::execute(&self.state, self, &argv)
            }
            Request::Apply {
                vif,
                network_name_label,
                plumb,
            } => {
                let (uuid, device) = (vif.uuid.clone(), vif.device.clone());
                if plumb {
                    bridge = Some((device.clone(), Some(network_name_label.clone())));
                }
                match xe::vif_apply(&self.state, vif, &network_name_label) {
                    Ok(o) => Ok(o),
                    // The toolstack's settings cannot be applied: fail closed.
                    Err(e) => {
                        return self.fence(device.clone(), format!("VIF {uuid} ({device}): {e}"));
                    }
                }
            }
            Request::Unplug { device, plumb } => {
                if plumb {
                    bridge = Some((device.clone(), None));
                }
                xe::vif_unplug(&self.state, &device)
            }
        };
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if !out.changes.is_empty() {
            let mut devices = Vec::new();
            let mut undo = Vec::with_capacity(out.changes.len());
            for c in &out.changes {
                self.state.devices_touched(c, &mut devices);
                undo.push(self.state.apply(c.clone()));
                self.state.devices_touched(c, &mut devices);
            }
            devices.sort();
            devices.dedup();
            let applied = self
                .reconcile(&devices)
                .and_then(|()| Ok(self.store.commit(&out.changes)?));
            if let Err(e) = applied {
                for u in undo.into_iter().rev() {
                    self.state.apply(u);
                }
                // A netdev this command meant to give a policy, and which has none now, is
                // held disabled rather than left unfiltered.
                for d in &devices {
                    if self.links.contains_key(d) && self.state.vif_by_device(d).is_none() {
                        self.fenced.insert(d.clone());
                    }
                }
                if let Err(e2) = self.reconcile(&devices) {
                    tracing::error!(error = %e2, "restoring the previous policy failed");
                }
                return fail(format!("{e:#}; nothing was changed"));
            }
            tracing::debug!(
                took_us = started.elapsed().as_micros() as u64,
                devices = devices.len(),
                "command applied"
            );
        }
        if let Some((device, br)) = bridge
            && let Err(e) = self.plumb(&device, br.as_deref())
        {
            return Reply {
                code: 1,
                stdout: out.output,
                stderr: format!("{notes}lockd: {device}: {e:#} (its policy is in force)\n"),
            };
        }
        Reply {
            code: 0,
            stdout: out.output,
            stderr: notes,
        }
    }

    /// The original script's other duty: the netdev on its bridge (none when its VIF is
    /// disabled or cleared) and up. Only what differs is changed; a netdev not there yet is
    /// left to its hotplug.
    fn plumb(&self, device: &str, bridge: Option<&str>) -> Result<()> {
        let Some(&ifx) = self.links.get(device) else {
            return Ok(());
        };
        let disabled = self.state.vif_by_device(device).is_some_and(|v| {
            self.state.policy(v).mode == lockd_common::policy::EffectiveMode::Disabled
        });
        let master = match bridge {
            Some(b) if !disabled => *self
                .links
                .get(b)
                .with_context(|| format!("bridge {b} does not exist"))?,
            _ => 0,
        };
        netlink::plumb(ifx, master).with_context(|| format!("plumbing {device}"))
    }

    /// At start: a VIF the toolstack plugged through the hook has its record on disk; if the
    /// record changed while the daemon was down (a live locking-mode change the hook could not
    /// deliver), it is applied now. Records for netdevs that do not exist are left alone.
    fn resync_from_records(&mut self, dir: &Path) {
        let mut todo = Vec::new();
        for vif in self.state.vifs() {
            let Some(vm) = &vif.vm_uuid else { continue };
            for dev in vif.devices() {
                let devid = dev
                    .strip_prefix("vif")
                    .or_else(|| dev.strip_prefix("tap"))
                    .and_then(|rest| rest.split_once('.'))
                    .map(|(_, devid)| devid.to_string());
                if let Some(devid) = devid
                    && self.links.contains_key(dev)
                {
                    todo.push((dev.clone(), vm.clone(), devid));
                }
            }
        }
        for (dev, vm, devid) in todo {
            let req = match crate::hook::read_record(dir, "classic", &vm, &devid)
                .and_then(|r| crate::hook::settings_of(&r, &dev, &vm))
            {
                Ok((vif, bridge)) => Request::Apply {
                    vif,
                    network_name_label: bridge,
                    plumb: true,
                },
                Err(e) => {
                    tracing::debug!(device = %dev, error = %format!("{e:#}"), "no usable record");
                    continue;
                }
            };
            let r = self.command(req);
            if r.code != 0 {
                tracing::warn!(device = %dev, error = %r.stderr.trim(), "resync from xenopsd's record");
            }
        }
    }

    /// `Request::Fence`: the hook could not give `device` a policy.
    fn fence(&mut self, device: String, reason: String) -> Reply {
        let kept = self.state.vif_by_device(&device).map(|v| v.uuid.clone());
        let what = match &kept {
            Some(uuid) => format!("VIF {uuid} ({device}) keeps the policy it had"),
            None => {
                self.fenced.insert(device.clone());
                match self.reconcile(std::slice::from_ref(&device)) {
                    Ok(()) if self.links.contains_key(&device) => {
                        format!("{device} is enforced as disabled until a valid policy arrives")
                    }
                    Ok(()) => format!("{device} will be enforced as disabled when it appears"),
                    Err(e) => format!("{device}: enforcing disabled failed too: {e:#}"),
                }
            }
        };
        Reply {
            code: 1,
            stdout: String::new(),
            stderr: format!("lockd: {reason}; {what}\n"),
        }
    }

    fn links_changed(&mut self, events: Vec<LinkEvent>) {
        let start = Instant::now();
        let mut devices = Vec::new();
        for e in events {
            match e {
                LinkEvent::New { ifindex, name } => {
                    // A rename shows up as NEWLINK with a known ifindex and a new name: the
                    // old name's VIF lost its netdev.
                    self.links.retain(|n, i| {
                        let stale = *i == ifindex && *n != name;
                        if stale {
                            devices.push(n.clone());
                        }
                        !stale
                    });
                    devices.push(name.clone());
                    self.links.insert(name, ifindex);
                }
                LinkEvent::Del { ifindex, name } => {
                    self.links.retain(|_, i| *i != ifindex);
                    self.fenced.remove(&name);
                    // The kernel already detached the program; drop our side of it before the
                    // ifindex can be reused.
                    if self.dp.has_policy(ifindex) {
                        if let Err(err) = self.dp.remove_policy(ifindex) {
                            tracing::warn!(ifindex, %name, error = %err, "cleanup after link removal");
                        }
                        tracing::info!(ifindex, %name, "netdev gone");
                    }
                }
            }
        }
        devices.sort();
        devices.dedup();
        if let Err(e) = self.reconcile(&devices) {
            tracing::error!(error = %format!("{e:#}"), "reconcile after link change failed");
        }
        tracing::debug!(
            took_us = start.elapsed().as_micros() as u64,
            "link events handled"
        );
    }
}

/// Sends `READY=1` to systemd when started with `Type=notify`.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "sd_notify socket"),
    };
    let bytes = path.as_encoded_bytes();
    let r = if let Some(abs) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(abs)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "sd_notify READY=1");
    }
}

/// Binds the control socket (0600), refusing if another daemon answers on it.
fn bind(path: &Path) -> Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        bail!(
            "another lockd daemon is already listening on {}",
            path.display()
        );
    }
    let _stale = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(cfg: Config) -> Result<()> {
    let start = Instant::now();
    // Before anything is loaded: on a kernel that is too old, one line naming what it lacks.
    for fallback in crate::features::check(&crate::features::probe()).map_err(anyhow::Error::msg)? {
        tracing::warn!("{fallback}");
    }
    let mut store = store::open_default(&cfg.state_dir)?;
    let state = store.load()?;
    let mut dp = Dataplane::load_with(Some(&cfg.bpffs)).context("loading the dataplane")?;
    let adopted = dp.adopt().context("adopting pinned programs and maps")?;
    if !adopted.is_empty() {
        tracing::info!(count = adopted.len(), "adopted pinned attachments");
    }
    // Subscribe before the dump so no event falls between them.
    let mut watcher = netlink::Watcher::subscribe().context("subscribing to rtnetlink")?;
    let links = netlink::dump()
        .context("listing links")?
        .into_iter()
        .map(|(i, n)| (n, i))
        .collect();
    let mut core = Core {
        state,
        store: Box::new(store),
        dp,
        links,
        xdp_mode: cfg.xdp_mode,
        fenced: Default::default(),
    };
    core.reconcile_all().context("enforcing the stored state")?;
    core.resync_from_records(&cfg.xenopsd_dir);

    let (tx, rx) = mpsc::channel::<Msg>();
    let link_tx = tx.clone();
    std::thread::Builder::new()
        .name("netlink".into())
        .spawn(move || {
            loop {
                match watcher.next_events() {
                    Ok(ev) if ev.is_empty() => {}
                    Ok(ev) => {
                        if link_tx.send(Msg::Links(ev)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        // ENOBUFS: events were lost; a dump brings the table back in line.
                        tracing::warn!(error = %e, "rtnetlink receive; resynchronising");
                        let ev = netlink::dump()
                            .map(|l| {
                                l.into_iter()
                                    .map(|(ifindex, name)| LinkEvent::New { ifindex, name })
                                    .collect()
                            })
                            .unwrap_or_default();
                        if link_tx.send(Msg::Links(ev)).is_err() {
                            return;
                        }
                    }
                }
            }
        })?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(async { bind(&cfg.socket) })?;
    std::thread::Builder::new()
        .name("core".into())
        .spawn(move || {
            let handle = |core: &mut Core, msg| match msg {
                Msg::Command(req, reply) => {
                    let _gone = reply.send(core.command(*req));
                }
                Msg::Links(ev) => core.links_changed(ev),
            };
            loop {
                // Replaced generations are deleted once the core has been idle for a moment
                // (this waits for an RCU grace period, which no reply, and no request queued
                // right behind one, should wait for). set_policy collects by itself if
                // garbage ever stands in the way.
                let msg = if core.dp.has_garbage() {
                    match rx.recv_timeout(GC_IDLE) {
                        Ok(m) => m,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = core.dp.collect_garbage() {
                                tracing::warn!(error = %e, "deleting replaced policy entries");
                            }
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match rx.recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                };
                handle(&mut core, msg);
            }
        })?;
    tracing::info!(
        socket = %cfg.socket.display(),
        state = %cfg.state_dir.display(),
        bpffs = %cfg.bpffs.display(),
        took_ms = start.elapsed().as_millis() as u64,
        "lockd ready"
    );
    notify_ready();
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        loop {
            tokio::select! {
                conn = listener.accept() => {
                    let (stream, _) = conn?;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, tx).await {
                            tracing::warn!(error = %e, "client connection");
                        }
                    });
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        tracing::info!("stopping; enforcement stays pinned");
        let _ = std::fs::remove_file(&cfg.socket);
        Ok(())
    })
}

async fn serve(stream: UnixStream, tx: mpsc::Sender<Msg>) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let (rtx, rrx) = oneshot::channel();
            tx.send(Msg::Command(Box::new(req), rtx))
                .map_err(|_| anyhow::anyhow!("core stopped"))?;
            rrx.await?
        }
        Err(e) => Reply {
            code: 2,
            stdout: String::new(),
            stderr: format!("lockd: bad request: {e}\n"),
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    Ok(())
}

/// Client side: sends an `xe` command to the daemon at `socket` and returns its reply.
pub fn call(socket: &Path, argv: &[String]) -> Result<Reply> {
    request(
        socket,
        &Request::Xe {
            argv: argv.to_vec(),
        },
    )
}

/// Like [`request`], but waits up to `patience` for a daemon that is (re)starting: the
/// toolstack's hook must not fail a VIF plug because lockd is being restarted.
pub fn request_patiently(socket: &Path, req: &Request, patience: Duration) -> Result<Reply> {
    let start = Instant::now();
    loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(_) => return request(socket, req),
            Err(_) if start.elapsed() < patience => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return request(socket, req),
        }
    }
}

/// Client side: sends `req` to the daemon at `socket` and returns its reply.
pub fn request(socket: &Path, req: &Request) -> Result<Reply> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "the lockd daemon is not running (cannot connect to {}: {e}); start it with \
             `systemctl start lockd` or `lockd daemon`",
            socket.display()
        )
    })?;
    let mut bytes = serde_json::to_vec(req)?;
    bytes.push(b'\n');
    s.write_all(&bytes)?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).context("reading the daemon's reply")
}
