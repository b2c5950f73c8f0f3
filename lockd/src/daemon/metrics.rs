//! Prometheus metrics at `/metrics` (`lockd daemon --metrics-listen ADDR:PORT`), in the
//! OpenMetrics text format encoded by `prometheus-client`. Counter values are read from the
//! kernel's maps by the core at each scrape, never copied on a timer.

use std::sync::{Arc, atomic::Ordering, mpsc};

use lockd_common::{Direction, Reason};
use prometheus_client::{
    encoding::text::encode,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use axum::{
    Router,
    extract::State,
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse as _, Response},
    routing::get,
};
use tokio::{net::TcpListener, sync::oneshot};

use super::{Msg, monitor::Hub};
use crate::dataplane::VifCounters;

/// One enforced netdev at scrape time.
pub struct VifSample {
    pub uuid: String,
    pub device: String,
    pub mode: &'static str,
    pub counters: VifCounters,
}

/// What the core reads for a scrape.
pub struct Snapshot {
    pub vifs: Vec<VifSample>,
    /// The cause label of each held netdev.
    pub held: Vec<&'static str>,
    /// A pool-wide store's state.
    pub store: Option<crate::store::StoreStatus>,
}

/// `lockd_policy_update_seconds`: 100 µs … about 3 s.
pub fn update_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// `lockd_store_transaction_commands`: 1 … 64 commands in one transaction.
pub fn group_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 7))
}

/// What a scrape needs.
#[derive(Clone)]
pub struct Context {
    pub(super) core: mpsc::Sender<Msg>,
    pub hub: Arc<Hub>,
    pub update_seconds: Histogram,
    pub group_commands: Histogram,
}

type Labels = Vec<(&'static str, String)>;

/// The exposition text for one snapshot.
pub fn render(snap: &Snapshot, ctx: &Context) -> String {
    let mut reg = Registry::default();
    let frames = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let vifs = Family::<Labels, Gauge>::default();
    for v in &snap.vifs {
        for dir in [Direction::FromVm, Direction::ToVm] {
            for r in Reason::ALL {
                let c = v.counters.get(dir, r);
                let labels = vec![
                    ("vif", v.uuid.clone()),
                    ("device", v.device.clone()),
                    ("direction", dir.name().to_string()),
                    ("reason", r.name().to_string()),
                ];
                frames.get_or_create(&labels).inc_by(c.packets);
                bytes.get_or_create(&labels).inc_by(c.bytes);
            }
        }
    }
    for mode in lockd_common::policy::EffectiveMode::ALL.iter().map(|m| m.name()) {
        let n = snap.vifs.iter().filter(|v| v.mode == mode).count();
        vifs.get_or_create(&vec![("mode", mode.to_string())])
            .set(n as i64);
    }
    reg.register(
        "lockd_frames",
        "Frames lockd judged, by VIF, netdev, direction and reason (pass or a drop reason)",
        frames,
    );
    reg.register(
        "lockd_bytes",
        "Bytes of the frames lockd judged, by VIF, netdev, direction and reason",
        bytes,
    );
    reg.register(
        "lockd_vifs",
        "Enforced netdevs by effective locking mode",
        vifs,
    );
    let held = Family::<Labels, Gauge>::default();
    for cause in super::engine::hold::HoldCause::LABELS {
        let n = snap.held.iter().filter(|c| **c == cause).count();
        held.get_or_create(&vec![("cause", cause.to_string())])
            .set(n as i64);
    }
    reg.register(
        "lockd_vifs_held",
        "Netdevs lockd holds (disabled, or off their bridge and down) because it cannot give them their policy, by cause",
        held,
    );
    reg.register(
        "lockd_policy_update_seconds",
        "Time to apply a command that changed policy: parse, kernel update, durable commit",
        ctx.update_seconds.clone(),
    );
    reg.register(
        "lockd_store_transaction_commands",
        "Commands committed in one durable store transaction (group commit: commands queued together share one)",
        ctx.group_commands.clone(),
    );
    if let Some(st) = snap.store {
        let up = Gauge::<i64>::default();
        up.set(i64::from(st.up));
        reg.register(
            "lockd_store_up",
            "Whether a member of the pool-wide store (etcd) answers: 0 means this host enforces what it last applied",
            up,
        );
        let rev = Gauge::<i64>::default();
        rev.set(st.revision);
        reg.register(
            "lockd_store_revision",
            "The pool-wide store's revision up to which this host has applied every change",
            rev,
        );
    }
    let suppressed = Counter::<u64>::default();
    suppressed.inc_by(ctx.hub.suppressed_total.load(Ordering::Relaxed));
    reg.register(
        "lockd_monitor_events_suppressed",
        "Drop events not written to lockd monitor (over the per-VIF cap, or the ring full)",
        suppressed,
    );
    let build = Family::<Labels, Gauge>::default();
    build
        .get_or_create(&vec![("version", env!("CARGO_PKG_VERSION").to_string())])
        .set(1);
    reg.register("lockd_build_info", "lockd's version", build);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition, for scrapers that do not
/// ask for OpenMetrics (curl, promtool): a counter's HELP and TYPE name its `_total` samples,
/// and there is no `# EOF` or `# UNIT`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for l in openmetrics.lines() {
        if l == "# EOF" || l.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| l.strip_prefix(p).map(|rest| (p, rest)));
        match meta {
            Some((p, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                if counters.contains(name) {
                    out += &format!("{p}{name}_total {tail}\n");
                } else {
                    out += l;
                    out.push('\n');
                }
            }
            None => {
                out += l;
                out.push('\n');
            }
        }
    }
    out
}

/// Serves `/metrics` (axum, HTTP/1.1) until the daemon stops: `GET /metrics` (and `HEAD`);
/// any other path 404, any other method 405.
pub async fn serve(listener: TcpListener, ctx: Context) {
    let app = Router::new()
        .route(
            "/metrics",
            get(scrape).fallback(|| async { (StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n") }),
        )
        .fallback(|method: Method| async move {
            if method == Method::GET {
                (StatusCode::NOT_FOUND, "lockd serves /metrics only\n")
            } else {
                (StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n")
            }
        })
        .with_state(ctx);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics server stopped");
    }
}

/// One scrape: the counters read from the kernel now, by the core.
async fn scrape(State(ctx): State<Context>, headers: HeaderMap) -> Response {
    let (tx, rx) = oneshot::channel();
    let snap = match ctx.core.send(Msg::Snapshot(tx)) {
        Ok(()) => rx.await.ok(),
        Err(_) => None,
    };
    // OpenMetrics for scrapers that ask for it (Prometheus does), else the text format.
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("openmetrics")));
    match snap {
        Some(snap) if openmetrics => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            render(&snap, &ctx),
        )
            .into_response(),
        Some(snap) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            prometheus_text(&render(&snap, &ctx)),
        )
            .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "lockd's core is not answering\n",
        )
            .into_response(),
    }
}
