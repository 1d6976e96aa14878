//! The admin child: the host's one admin endpoint, `/metrics`, `/healthz` and `/readyz`.
//!
//! Why a child process: the supervisor must stay free of tokio and threads (tech-notes §3), so
//! it forks this process like a worker; it has its own single-threaded runtime and serves
//! the listener the supervisor bound before forking (so the address, port 0 included, is
//! fixed for the supervisor's life and survives an admin restart). On each scrape it reads
//! every worker's exposition from its Unix socket (`<runtime_dir>/metrics/worker-<i>.sock`,
//! connect and read to EOF, with a short timeout: a dead or stuck worker's series are simply
//! absent) and the supervisor's own figures from the file the supervisor rewrites on every
//! change (`<runtime_dir>/metrics/supervisor.prom`), and merges them by family
//! ([`merge`]). docs/metrics.md explains the design and every metric.
//!
//! State: the count of failed worker reads, kept in this process (it restarts at 0 when the
//! admin child is respawned, as counters may).

pub mod merge;

use std::cell::RefCell;
use std::convert::Infallible;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use nix::unistd::{Pid, getppid};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::signal::unix::{SignalKind, signal};

use crate::metrics as m;
use merge::Source;

/// Longest wait for one worker's exposition during a scrape or a readiness check.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(1000);
/// Largest exposition read from one worker.
const MAX_EXPOSITION_BYTES: u64 = 16 * 1024 * 1024;
/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The directory of the metrics sockets and the supervisor's figures.
pub fn metrics_dir(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("metrics")
}

/// Where worker `index` serves its exposition: connect, read the text to EOF.
pub fn worker_socket(runtime_dir: &Path, index: usize) -> PathBuf {
    metrics_dir(runtime_dir).join(format!("worker-{index}.sock"))
}

/// Where the supervisor writes its own figures (Prometheus text, replaced atomically).
pub fn supervisor_state(runtime_dir: &Path) -> PathBuf {
    metrics_dir(runtime_dir).join("supervisor.prom")
}

/// What the admin child is given by the supervisor.
pub struct AdminArgs {
    /// Bound and listening (by the supervisor, before the fork).
    pub listener: std::net::TcpListener,
    pub runtime_dir: PathBuf,
    /// Worker processes the supervisor runs.
    pub workers: usize,
    /// The supervisor: `/healthz` fails once this process has another parent.
    pub supervisor: Pid,
}

/// Everything the admin process does after the fork; returns its exit code.
pub fn process_main(args: AdminArgs, ready: Option<OwnedFd>) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "admin: cannot build the runtime");
            return 1;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        match serve(args, ready).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(error = %e, "admin: failed");
                1
            }
        }
    })
}

struct Admin {
    runtime_dir: PathBuf,
    workers: usize,
    supervisor: Pid,
    /// Failed reads of each worker's socket since this process started.
    scrape_errors: RefCell<Vec<u64>>,
}

async fn serve(args: AdminArgs, ready: Option<OwnedFd>) -> io::Result<()> {
    args.listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(args.listener)?;
    let admin = Rc::new(Admin {
        runtime_dir: args.runtime_dir,
        workers: args.workers,
        supervisor: args.supervisor,
        scrape_errors: RefCell::new(vec![0; args.workers]),
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // SIGHUP would end the process by default; there is nothing to reload here.
    let mut hup = signal(SignalKind::hangup())?;
    if let Some(fd) = ready {
        io::Write::write_all(&mut std::fs::File::from(fd), b"ready\n")?;
    }
    tracing::info!(addr = %listener.local_addr()?, "admin endpoint listening");
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((stream, _)) = r else { continue };
                let admin = admin.clone();
                tokio::task::spawn_local(async move {
                    let svc = hyper::service::service_fn(move |req| handle(admin.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            _ = hup.recv() => {}
        }
    }
}

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

async fn handle(admin: Rc<Admin>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "GET only\n"));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut r = reply(StatusCode::OK, admin.metrics().await);
            r.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(TEXT_FORMAT));
            r
        }
        "/healthz" => {
            if getppid() == admin.supervisor {
                reply(StatusCode::OK, "ok\n")
            } else {
                reply(StatusCode::SERVICE_UNAVAILABLE, "supervisor gone\n")
            }
        }
        "/readyz" => match admin.readiness().await {
            Ok(msg) => reply(StatusCode::OK, msg),
            Err(msg) => reply(StatusCode::SERVICE_UNAVAILABLE, msg),
        },
        _ => reply(StatusCode::NOT_FOUND, "not found: /metrics, /healthz, /readyz\n"),
    })
}

/// Reads one worker's exposition: connect, read to EOF, within [`SCRAPE_TIMEOUT`].
pub async fn read_worker(path: &Path) -> io::Result<String> {
    let read = async {
        let stream = UnixStream::connect(path).await?;
        let mut text = String::new();
        stream.take(MAX_EXPOSITION_BYTES).read_to_string(&mut text).await?;
        Ok(text)
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "no answer in time")))
}

/// The supervisor's figures, as it last wrote them.
struct SupervisorView {
    text: String,
    stopping: bool,
    /// Workers whose `switchboard_worker_up` is 1.
    up: Vec<usize>,
}

impl Admin {
    fn supervisor_view(&self) -> io::Result<SupervisorView> {
        let text = std::fs::read_to_string(supervisor_state(&self.runtime_dir))?;
        let families = merge::parse(&text).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        let mut view = SupervisorView { text: String::new(), stopping: false, up: vec![] };
        for f in &families {
            for s in &f.samples {
                if s.name == m::SUPERVISOR_STOPPING && s.number() != 0.0 {
                    view.stopping = true;
                }
                if s.name == m::WORKER_UP
                    && s.number() == 1.0
                    && let Some(w) = s.label("worker").and_then(|w| w.parse().ok())
                {
                    view.up.push(w);
                }
            }
        }
        view.text = text;
        Ok(view)
    }

    /// Every worker's exposition (`None` where it could not be read), counting failures.
    async fn scrape_workers(&self) -> Vec<Option<String>> {
        let reads = (0..self.workers).map(|i| {
            let path = worker_socket(&self.runtime_dir, i);
            async move { read_worker(&path).await }
        });
        let results = futures_util::future::join_all(reads).await;
        let mut errors = self.scrape_errors.borrow_mut();
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Ok(text) => Some(text),
                Err(e) => {
                    errors[i] += 1;
                    tracing::debug!(worker = i, error = %e, "admin: worker metrics unreadable");
                    None
                }
            })
            .collect()
    }

    async fn metrics(&self) -> String {
        let workers = self.scrape_workers().await;
        let supervisor = self.supervisor_view().map(|v| v.text).unwrap_or_default();
        let mut own = format!(
            "# HELP {n} Worker metrics sockets the admin endpoint could not read during a scrape.\n# TYPE {n} counter\n",
            n = m::ADMIN_SCRAPE_ERRORS
        );
        for (i, e) in self.scrape_errors.borrow().iter().enumerate() {
            own.push_str(&format!("{}{{worker=\"{i}\"}} {e}\n", m::ADMIN_SCRAPE_ERRORS));
        }
        let mut sources = vec![Source { worker: None, text: &supervisor }, Source { worker: None, text: &own }];
        let labels: Vec<String> = (0..self.workers).map(|i| i.to_string()).collect();
        for (i, text) in workers.iter().enumerate() {
            if let Some(text) = text {
                sources.push(Source { worker: Some(labels[i].clone()), text });
            }
        }
        let merged = merge::merge(&sources);
        for p in &merged.problems {
            tracing::warn!(problem = %p, "admin: metrics merge");
        }
        merged.text
    }

    /// `Ok` when every worker is up (by the supervisor's account) and answers on its socket.
    async fn readiness(&self) -> Result<String, String> {
        let view = self.supervisor_view().map_err(|e| format!("no supervisor state: {e}\n"))?;
        if view.stopping {
            return Err("stopping\n".into());
        }
        let down: Vec<usize> = (0..self.workers).filter(|i| !view.up.contains(i)).collect();
        if !down.is_empty() {
            return Err(format!("{}/{} workers up (down: {down:?})\n", self.workers - down.len(), self.workers));
        }
        let silent: Vec<usize> =
            self.scrape_workers().await.iter().enumerate().filter(|(_, t)| t.is_none()).map(|(i, _)| i).collect();
        if !silent.is_empty() {
            return Err(format!("workers not answering: {silent:?}\n"));
        }
        Ok(format!("ready: {n}/{n} workers up\n", n = self.workers))
    }
}
