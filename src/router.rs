//! The router: a synchronous supervisor forking single-threaded workers that route envelopes
//! to WebSocket subscribers, plus one admin child serving the host's `/metrics`.
//!
//! Process model (DESIGN.md, tech-notes §3): the supervisor touches no tokio, no thread, no
//! metrics recorder and no AMQP before it forks; every child builds its own runtime after
//! the fork. The supervisor only blocks signals, forks, reaps and respawns.
//!
//! # Layout
//!
//! - [`supervisor`]: the supervisor process (fork, signals, reaping, readiness, sd_notify);
//!   [`supervisor::backoff`] is the crash-loop backoff schedule.
//! - [`admin`]: the admin child (`/metrics`, `/healthz`, `/readyz`); [`admin::merge`] merges
//!   the workers' Prometheus texts by family.
//! - [`rlimit`]: raising RLIMIT_NOFILE before the fork.
//! - [`worker`]: one worker (one thread, one runtime): [`worker::serve`], [`worker::process_main`],
//!   bus ingress, the per-second sweep (pings, idle closes, token expiry), resync.
//! - [`listener`]: the SO_REUSEPORT listening socket every worker binds.
//! - [`upgrade`]: HTTP, the handshake checks and the 101; the zero-lock downcast to `TcpStream`.
//! - [`socket`]: one WebSocket connection: reader task, writer, limits, violations, closing.
//! - [`inbound`]: the read side, cut at frame boundaries so an idle connection holds no buffer.
//! - [`outbound`]: the byte-bounded outbound queue and the coalescing `writev` writer.
//! - [`session`]: the frame protocol of one client, and the slow-consumer policy.
//! - [`ledger`]: topic -> connections and back, last seq per topic.
//! - [`auth`]: verified-token cache and batched signature checks.
//! - [`drain`]: closing clients spread over a window on SIGTERM.
//! - [`exporter`]: the worker's metrics recorder and its Unix socket.

pub mod admin;
pub mod auth;
pub mod drain;
pub mod exporter;
pub mod heap;
pub mod inbound;
pub mod ledger;
pub mod listener;
pub mod outbound;
pub mod rlimit;
pub mod session;
pub mod socket;
pub mod supervisor;
pub mod upgrade;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::config::Config;

/// Why the router could not start or keep running. Maps to exit code 1.
#[derive(Debug, Error)]
pub enum RouterError {
    #[error("cannot bind {what} {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("cannot prepare runtime directory {path}: {source}")]
    RuntimeDir { path: PathBuf, source: std::io::Error },
    #[error("{what}: {source}")]
    Os { what: &'static str, source: nix::Error },
    #[error("{role} failed {attempts} times before the router was ever ready (last: {status})")]
    StartupFailed { role: String, attempts: u32, status: String },
}

/// Runs the router until SIGTERM or SIGINT: the supervisor forks `cfg.worker_count()`
/// workers and the admin child, and keeps them running. `config_path` is re-read on SIGHUP.
pub fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<(), RouterError> {
    supervisor::run(cfg, config_path)
}
