//! The worker's metrics: its own Prometheus recorder, rendered on a Unix socket.
//!
//! Installed after the fork, in the worker (a recorder installed before would be shared by
//! every child, labels and all: tech-notes section 7), with a `worker` label and real
//! histogram buckets so that series from several workers can be summed. The host's single
//! `/metrics` is served by the admin aggregator, which connects to
//! `<runtime_dir>/metrics/worker-<index>.sock` of each worker: connect, read the text
//! exposition to EOF. `install_recorder` spawns no upkeep task, so one runs here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Histogram buckets, in seconds: from a microsecond (routing one envelope) to seconds.
pub const BUCKETS: &[f64] = &[0.000_001, 0.000_01, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// How often histogram buffers are folded (they grow until then).
const UPKEEP: Duration = Duration::from_secs(5);

/// The metrics socket of worker `index`.
pub fn socket_path(runtime_dir: &Path, index: usize) -> PathBuf {
    runtime_dir.join("metrics").join(format!("worker-{index}.sock"))
}

/// The running exporter; dropping it stops serving and removes the socket.
pub struct Exporter {
    path: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Exporter {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(p) = &self.path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Installs the recorder (tolerating one already installed: metrics then go to it) and
/// serves its text on the worker's socket. Failures are logged, never fatal: a worker
/// without metrics still routes.
pub fn start(index: usize, runtime_dir: &Path) -> Exporter {
    let mut ex = Exporter { path: None, tasks: Vec::new() };
    let handle = PrometheusBuilder::new()
        .add_global_label("worker", index.to_string())
        .set_buckets(BUCKETS)
        .and_then(PrometheusBuilder::install_recorder);
    let handle = match handle {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed (one is already?)");
            return ex;
        }
    };
    register_at_zero();
    let h = handle.clone();
    ex.tasks.push(tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(UPKEEP).await;
            h.run_upkeep();
        }
    }));
    let path = socket_path(runtime_dir, index);
    match bind(&path) {
        Ok(l) => {
            ex.tasks.push(tokio::task::spawn_local(serve(l, handle)));
            tracing::info!(path = %path.display(), "metrics socket");
            ex.path = Some(path);
        }
        Err(e) => tracing::warn!(error = %e, path = %path.display(), "cannot serve metrics"),
    }
    ex
}

/// Every family a worker reports exists from its start, at zero: a dashboard or an alert
/// over `rate(...)` sees 0 instead of "no data" until the first event. Labelled families get
/// the label values that occur most (others appear when first counted).
pub fn register_at_zero() {
    use crate::metrics as m;
    for name in [
        m::CONNECTIONS_ACCEPTED,
        m::ENVELOPES_RECEIVED,
        m::ENVELOPES_UNROUTED,
        m::DELIVERIES,
        m::BYTES_OUT,
        m::GAPS,
        m::RESYNCS,
        m::FRAMES_IN,
        m::BUS_RECONNECTS,
        m::BUS_SEQ_ANOMALIES,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for reason in ["ended", "idle_timeout", "slow_consumer", "violations", "protocol_error", "close_timeout"] {
        metrics::counter!(m::CLOSES, "reason" => reason).absolute(0);
    }
    for reason in ["not_found", "not_websocket", "full", "draining"] {
        metrics::counter!(m::CONNECTIONS_REFUSED, "reason" => reason).absolute(0);
    }
    for reason in ["gap", "slow_consumer_close"] {
        metrics::counter!(m::DROPS, "reason" => reason).absolute(0);
    }
    for reason in ["token_bad_signature", "token_expired", "token_unknown_kid", "topic_not_granted"] {
        metrics::counter!(m::TOKEN_REJECTIONS, "reason" => reason).absolute(0);
    }
    for reason in ["bad_frame", "rate_limited", "too_many_subscriptions"] {
        metrics::counter!(m::FRAMES_REJECTED, "reason" => reason).absolute(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(m::CONFIG_RELOADS, "result" => result).absolute(0);
    }
    for name in [m::CONNECTIONS, m::SUBSCRIPTIONS, m::TOPICS, m::BUS_CONNECTED] {
        metrics::gauge!(name).set(0.0);
    }
    for name in [m::ROUTE_SECONDS, m::DELIVERY_LATENCY] {
        // A registered histogram renders its buckets at zero.
        let _ = metrics::histogram!(name);
    }
}

fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A dead worker with the same index left its socket behind.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

async fn serve(listener: UnixListener, handle: PrometheusHandle) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let text = handle.render();
        tokio::task::spawn_local(async move {
            let _ = s.write_all(text.as_bytes()).await;
            let _ = s.shutdown().await;
        });
    }
}
