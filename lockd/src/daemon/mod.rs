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
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::oneshot,
};

use crate::{
    dataplane::{Dataplane, XdpModeRequest},
    netlink::{self, LinkEvent},
    protocol::{Reply, Request},
    store,
};

mod engine;
pub mod metrics;
pub mod monitor;

use engine::{Core, group::Group};

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
    /// `lockd monitor`'s cap: events a second per VIF.
    pub monitor_cap: u32,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where state is kept.
    pub store: store::StoreUrl,
}

/// How long the core must be idle before it deletes replaced generations.
const GC_IDLE: Duration = Duration::from_millis(20);

enum Msg {
    Command(Box<Request>, oneshot::Sender<Reply>),
    Links(Vec<LinkEvent>),
    /// Every netdev there is, after events were lost.
    Resync(Vec<(u32, String)>),
    /// A scrape of `/metrics`: the counters, read from the kernel now.
    Snapshot(oneshot::Sender<metrics::Snapshot>),
    /// Other hosts changed the pool-wide store.
    Remote,
}

/// Sends `READY=1` to systemd when started with `Type=notify`. Written here, not with the
/// `sd-notify` crate: that crate (0.4 and 0.5) cannot reach an abstract-namespace
/// `NOTIFY_SOCKET` (`@…`), which systemd's own `sd_notify(3)` accepts.
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
    for fallback in crate::features::check(&crate::features::probe())? {
        tracing::warn!("{fallback}");
    }
    let mut store: Box<dyn store::Store> = match &cfg.store {
        store::StoreUrl::Sqlite(dir) => {
            Box::new(store::open_default(dir.as_deref().unwrap_or(&cfg.state_dir))?)
        }
        store::StoreUrl::Etcd(etcd) => {
            std::fs::create_dir_all(&cfg.state_dir)
                .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
            Box::new(store::etcd::EtcdStore::open(etcd.clone(), &cfg.state_dir)?)
        }
    };
    let state = store.load()?;
    let mut dp = Dataplane::load_with(Some(&cfg.bpffs)).context("loading the dataplane")?;
    dp.set_tc_mode(cfg.tc_mode);
    let names = monitor::Names::default();
    let hub = monitor::Hub::start(dp.take_monitor(), names.clone(), cfg.monitor_cap);
    let update_seconds = metrics::update_histogram();
    let group_commands = metrics::group_histogram();
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
        store,
        dp,
        links,
        xdp_mode: cfg.xdp_mode,
        fenced: Default::default(),
        held: Default::default(),
        no_attach: older.into_iter().collect(),
        names,
        update_seconds: update_seconds.clone(),
        group_commands: group_commands.clone(),
    };
    for b in core.state.bad_vifs() {
        tracing::error!(vif = %b.uuid, devices = ?b.devices, "stored VIF row is bad: {}; its netdevs are held disabled (`lockd doctor`)", b.reason);
    }
    let _held = core.reconcile_all();
    // An earlier release's layout: the policies are now in this layout's maps; every old link
    // moves over with one atomic program swap, then the missing programs are attached.
    let moved = core
        .dp
        .take_over_older()
        .context("taking over an older pinned layout")?;
    if moved > 0 || !core.no_attach.is_empty() {
        core.no_attach.clear();
        let _held = core.reconcile_all();
    }
    core.resync_from_records(&cfg.xenopsd_dir);

    let (tx, rx) = mpsc::channel::<Msg>();
    // What other hosts write to a pool-wide store: one message at a time is enough (each
    // takes everything that came in).
    let remote_tx = tx.clone();
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let remote_pending = pending.clone();
    core.store.follow(Box::new(move || {
        if !remote_pending.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _gone = remote_tx.send(Msg::Remote);
        }
    }));
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
                        let stale = watcher.discard_queued();
                        tracing::warn!(error = %e, stale, "rtnetlink receive; resynchronising");
                        // Until the dump succeeds: the link table must come back in line.
                        let mut wait = Duration::from_millis(50);
                        let links = loop {
                            match netlink::dump() {
                                Ok(l) => break l,
                                Err(e) => {
                                    tracing::error!(error = %e, "listing links after lost events; retrying");
                                    std::thread::sleep(wait);
                                    wait = (wait * 2).min(Duration::from_secs(2));
                                }
                            }
                        };
                        if link_tx.send(Msg::Resync(links)).is_err() {
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
    if let Some(addr) = cfg.metrics_listen {
        let m = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("--metrics-listen {addr}"))?;
        let ctx = metrics::Context {
            core: tx.clone(),
            hub: hub.clone(),
            update_seconds,
            group_commands,
        };
        rt.spawn(metrics::serve(m, ctx));
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    std::thread::Builder::new()
        .name("core".into())
        .spawn(move || {
            let handle = |core: &mut Core, msg| match msg {
                Msg::Command(req, reply) => {
                    let _gone = reply.send(core.command(*req));
                }
                Msg::Links(ev) => core.links_changed(ev),
                Msg::Resync(links) => core.resync(links),
                Msg::Snapshot(reply) => {
                    let _gone = reply.send(core.snapshot());
                }
                Msg::Remote => {
                    pending.store(false, std::sync::atomic::Ordering::Release);
                    core.remote();
                }
            };
            loop {
                // Replaced generations are deleted once the core has been idle for a moment
                // (this waits for an RCU grace period, which no reply, and no request queued
                // right behind one, should wait for). set_policy collects by itself if
                // garbage ever stands in the way.
                // The store's housekeeping (a WAL checkpoint) waits for the same idle moment.
                let msg = if core.dp.has_garbage() || core.store.idle_due() {
                    match rx.recv_timeout(GC_IDLE) {
                        Ok(m) => m,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if core.dp.has_garbage()
                                && let Err(e) = core.dp.collect_garbage()
                            {
                                tracing::warn!(error = %e, "deleting replaced policy entries");
                            }
                            if core.store.idle_due() {
                                core.store.idle();
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
                // `xe` commands queued behind this one share its transaction (group commit).
                let Msg::Command(req, reply) = msg else {
                    handle(&mut core, msg);
                    continue;
                };
                let Request::Xe { argv } = *req else {
                    handle(&mut core, Msg::Command(req, reply));
                    continue;
                };
                // A command reads the pool's state with what other hosts wrote up to now.
                core.remote();
                let mut group = Group::default();
                core.join_group(&mut group, &argv, reply);
                let mut next = None;
                while group.open() {
                    match rx.try_recv() {
                        Ok(Msg::Command(req, reply)) => match *req {
                            Request::Xe { argv } => core.join_group(&mut group, &argv, reply),
                            other => {
                                next = Some(Msg::Command(Box::new(other), reply));
                                break;
                            }
                        },
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                core.commit_group(group);
                if let Some(m) = next {
                    handle(&mut core, m);
                }
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
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(stream, tx, hub).await {
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

async fn serve(
    stream: UnixStream,
    tx: mpsc::Sender<Msg>,
    hub: std::sync::Arc<monitor::Hub>,
) -> Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    let mut filter = None;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            if let Request::Monitor { device, reason, .. } = &req {
                filter = Some(monitor::Filter {
                    vif: None,
                    device: device.clone(),
                    reason: reason.clone(),
                });
            }
            let (rtx, rrx) = oneshot::channel();
            tx.send(Msg::Command(Box::new(req), rtx))
                .map_err(|_| anyhow::anyhow!("core stopped"))?;
            rrx.await?
        }
        Err(e) => Reply::fail(2, format_args!("bad request: {e}")),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    // Subscribed before the reply goes out, so no event after it is missed.
    let sub = (filter.is_some() && reply.code == 0).then(|| hub.subscribe());
    w.write_all(&out).await?;
    let (Some(mut sub), Some(mut filter)) = (sub, filter) else {
        return Ok(());
    };
    // The core answered a monitor request with the VIF's canonical uuid (or nothing).
    let uuid = reply.stdout.trim();
    if !uuid.is_empty() {
        filter.vif = Some(uuid.to_string());
    }
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            got = sub.rx.recv() => {
                let line = match got {
                    Ok(l) => l,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        std::sync::Arc::new(serde_json::json!({
                            "time": monitor::rfc3339(
                                std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0, |d| d.as_nanos() as i128),
                            ),
                            "vif": filter.vif.clone().unwrap_or_default(),
                            "device": filter.device.clone().unwrap_or_default(),
                            "suppressed": n,
                            "note": "this client read too slowly",
                        }))
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if filter.keeps(&line) {
                    let mut out = serde_json::to_vec(&*line)?;
                    out.push(b'\n');
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            }
            n = tokio::io::AsyncReadExt::read(&mut r, &mut scratch) => {
                // The client hung up (Ctrl-C).
                if n.map_or(true, |n| n == 0) {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Client side: `lockd monitor`. Prints the daemon's lines (JSON, or text) until the
/// daemon goes away; Ctrl-C ends it.
pub fn monitor(socket: &Path, req: &Request, json: bool) -> Result<u8> {
    use std::io::{BufRead as _, Write as _};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| {
        anyhow::anyhow!(
            "the lockd daemon is not running (cannot connect to {}: {e})",
            socket.display()
        )
    })?;
    let mut bytes = serde_json::to_vec(req)?;
    bytes.push(b'\n');
    s.write_all(&bytes)?;
    let mut lines = std::io::BufReader::new(s).lines();
    let first = lines.next().context("the daemon closed the connection")??;
    let reply: Reply = serde_json::from_str(&first).context("reading the daemon's reply")?;
    if reply.code != 0 {
        eprint!("{}", reply.stderr);
        return Ok(reply.code.clamp(1, 255) as u8);
    }
    // As tcpdump does: from here on every drop is reported (scripts may wait for this line).
    eprintln!("lockd: monitoring drops (Ctrl-C to stop)");
    let stdout = std::io::stdout();
    for line in lines {
        let line = line?;
        let mut out = stdout.lock();
        let written = if json {
            writeln!(out, "{line}")
        } else {
            let v: serde_json::Value = serde_json::from_str(&line)?;
            writeln!(out, "{}", monitor::text(&v))
        };
        if written.and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    Ok(0)
}

