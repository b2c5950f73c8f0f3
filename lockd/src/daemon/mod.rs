//! `lockd daemon`: owns the state and the dataplane, follows netdevs as they come and go, and
//! answers CLI commands on a Unix socket.
//!
//! One thread (the core) owns state, store and dataplane and handles one message at a time:
//! a command from a client or a batch of link events from rtnetlink. tokio runs the socket
//! and signal handling around it. Exiting, by signal or kill, leaves every pin in place, so
//! enforcement continues (fail-closed) until a new daemon adopts it or `lockd cleanup` runs.

use std::{
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
    dataplane::{Dataplane, XdpModeRequest},
    netlink::{self, LinkEvent},
    store::{self, Store as _},
};

mod engine;

use engine::Core;

/// Daemon settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub xdp_mode: XdpModeRequest,
    pub tc_mode: crate::dataplane::TcMode,
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
    dp.set_tc_mode(cfg.tc_mode);
    let adopted = dp.adopt().context("adopting pinned programs and maps")?;
    if !adopted.is_empty() {
        tracing::info!(count = adopted.len(), "adopted pinned attachments");
    }
    let older = dp.older_layout_ifindexes();
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
        no_attach: older.into_iter().collect(),
    };
    core.reconcile_all().context("enforcing the stored state")?;
    // An earlier release's layout: the policies are now in this layout's maps; every old link
    // moves over with one atomic program swap, then the missing programs are attached.
    let moved = core
        .dp
        .take_over_older()
        .context("taking over an older pinned layout")?;
    if moved > 0 || !core.no_attach.is_empty() {
        core.no_attach.clear();
        core.reconcile_all()
            .context("enforcing the stored state after the takeover")?;
    }
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
            Ok(s) => return exchange(s, req),
            Err(_) if start.elapsed() < patience => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return request(socket, req),
        }
    }
}

/// Client side: sends `req` to the daemon at `socket` and returns its reply.
pub fn request(socket: &Path, req: &Request) -> Result<Reply> {
    let s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "the lockd daemon is not running (cannot connect to {}: {e}); start it with \
             `systemctl start lockd` or `lockd daemon`",
            socket.display()
        )
    })?;
    exchange(s, req)
}

/// One request and its reply on a connected socket.
fn exchange(mut s: std::os::unix::net::UnixStream, req: &Request) -> Result<Reply> {
    use std::io::{BufRead as _, Write as _};
    let mut bytes = serde_json::to_vec(req)?;
    bytes.push(b'\n');
    s.write_all(&bytes)?;
    let mut line = String::new();
    std::io::BufReader::new(s).read_line(&mut line)?;
    serde_json::from_str(&line).context("reading the daemon's reply")
}
