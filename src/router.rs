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
//! - [`listener`]: the SO_REUSEPORT listener every worker binds on the shared port.
//! - [`worker`]: what a worker process does after the fork.

pub mod admin;
pub mod listener;
pub mod rlimit;
pub mod supervisor;
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
