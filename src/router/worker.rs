//! PLACEHOLDER worker (issue 4 scaffolding; the `router` branch's real worker replaces this
//! file at merge): answers any HTTP request with `200 worker=<index>`, so the supervisor,
//! the admin endpoint and their tests can be built before the real worker lands.
//!
//! It keeps the real worker's contract (`process_main`): a current_thread runtime built after
//! the fork, a SO_REUSEPORT listener on the shared port, `ready\n` written once listening,
//! its own metrics recorder (label `worker=<index>`, real histograms) served on
//! `<runtime_dir>/metrics/worker-<index>.sock`, SIGTERM -> exit 0 after a short drain,
//! SIGINT -> exit 0 now, SIGHUP -> re-read the config file and count the reload.

use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::metrics as m;

/// Buckets of the `_seconds` histograms (delivery latency), in seconds.
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Everything a worker process does after the fork; returns its exit code.
pub fn process_main(cfg: Config, config_path: Option<PathBuf>, index: usize, ready: Option<OwnedFd>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(worker = index, error = %e, "cannot build the runtime");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        match run(cfg, config_path, index, ready).await {
            Ok(code) => code,
            Err(e) => {
                tracing::error!(worker = index, error = %e, "worker failed");
                1
            }
        }
    })
}

fn install_recorder(index: usize) -> io::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .add_global_label("worker", index.to_string())
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .and_then(|b| b.install_recorder())
        .map_err(io::Error::other)?;
    // Register every router series at zero, so a scrape shows each family from the start.
    for name in [
        m::CONNECTIONS_ACCEPTED,
        m::CONNECTIONS_REFUSED,
        m::CLOSES,
        m::ENVELOPES_RECEIVED,
        m::ENVELOPES_UNROUTED,
        m::DELIVERIES,
        m::BYTES_OUT,
        m::DROPS,
        m::GAPS,
        m::RESYNCS,
        m::TOKEN_REJECTIONS,
        m::FRAMES_REJECTED,
        m::FRAMES_IN,
        m::BUS_RECONNECTS,
        m::BUS_SEQ_ANOMALIES,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for result in ["ok", "error"] {
        metrics::counter!(m::CONFIG_RELOADS, "result" => result).absolute(0);
    }
    for name in [m::CONNECTIONS, m::SUBSCRIPTIONS, m::TOPICS, m::BUS_CONNECTED] {
        metrics::gauge!(name).set(0.0);
    }
    let _ = metrics::histogram!(m::DELIVERY_LATENCY);
    Ok(handle)
}

async fn run(cfg: Config, config_path: Option<PathBuf>, index: usize, ready: Option<OwnedFd>) -> io::Result<i32> {
    let handle = install_recorder(index)?;
    let listener = tokio::net::TcpListener::from_std(super::listener::bind(cfg.router.listen)?)?;
    let sock = super::admin::worker_socket(&cfg.router.runtime_dir, index);
    match std::fs::remove_file(&sock) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let metrics_listener = UnixListener::bind(&sock)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut upkeep = tokio::time::interval(Duration::from_secs(5));
    if let Some(fd) = ready {
        io::Write::write_all(&mut std::fs::File::from(fd), b"ready\n")?;
    }
    tracing::info!(worker = index, addr = %listener.local_addr()?, "placeholder worker listening");
    loop {
        tokio::select! {
            r = listener.accept() => {
                if let Ok((stream, _)) = r {
                    metrics::counter!(m::CONNECTIONS_ACCEPTED).increment(1);
                    tokio::task::spawn_local(answer(stream, index));
                }
            }
            r = metrics_listener.accept() => {
                if let Ok((mut stream, _)) = r {
                    let text = handle.render();
                    tokio::task::spawn_local(async move { let _ = stream.write_all(text.as_bytes()).await; });
                }
            }
            _ = term.recv() => {
                tracing::info!(worker = index, "SIGTERM: draining");
                drop(listener);
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = std::fs::remove_file(&sock);
                return Ok(0);
            }
            _ = int.recv() => {
                let _ = std::fs::remove_file(&sock);
                return Ok(0);
            }
            _ = hup.recv() => {
                let result = match &config_path {
                    Some(p) => Config::load(p).and_then(|c| c.check().map(drop)).map_err(|e| e.to_string()),
                    None => Ok(()),
                };
                let label = if result.is_ok() { "ok" } else { "error" };
                tracing::info!(worker = index, result = label, "SIGHUP: reload");
                metrics::counter!(m::CONFIG_RELOADS, "result" => label).increment(1);
            }
            _ = upkeep.tick() => handle.run_upkeep(),
        }
    }
}

/// Reads one request head (or gives up after a while) and answers `200 worker=<index>`.
async fn answer(mut stream: TcpStream, index: usize) {
    let mut buf = vec![0u8; 8192];
    let mut len = 0;
    let read_head = async {
        while len < buf.len() {
            match stream.read(&mut buf[len..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => len += n,
            }
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read_head).await;
    let body = format!("worker={index}\n");
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(resp.as_bytes()).await.is_ok() {
        metrics::counter!(m::DELIVERIES).increment(1);
        metrics::counter!(m::BYTES_OUT).increment(resp.len() as u64);
    }
    let _ = stream.shutdown().await;
}
