//! The router: workers that route envelopes from the bus to WebSocket subscribers.
//!
//! # Layout
//!
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
//!
//! [`run`] runs one worker in this process (the forking supervisor replaces it).

pub mod auth;
pub mod drain;
pub mod exporter;
pub mod inbound;
pub mod ledger;
pub mod listener;
pub mod outbound;
pub mod session;
pub mod socket;
pub mod upgrade;
pub mod worker;

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;

use thiserror::Error;

use crate::config::Config;

#[derive(Debug, Error)]
pub enum RouterError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot create the readiness pipe: {0}")]
    Pipe(nix::Error),
    #[error("the worker exited with code {0}")]
    Worker(i32),
}

/// Runs one worker in this process and prints `ready router=<ip:port>` on stdout once it
/// listens (port 0 in the config picks a free port, and the line names the real one).
///
/// Port 0 is resolved by binding it here first (SO_REUSEPORT lets the worker bind it again);
/// this first socket is closed before the ready line, so no client can have reached it.
pub fn run(mut cfg: Config, config_path: Option<PathBuf>) -> Result<(), RouterError> {
    let addr = cfg.router.listen;
    // Only port 0 needs resolving; a fixed port is bound by the worker alone, so that no
    // client reconnecting during a restart lands in the accept queue of a socket about to close.
    let probe = if addr.port() == 0 {
        let probe = listener::bind(addr).map_err(|source| RouterError::Listen { addr, source })?;
        cfg.router.listen = probe.local_addr().map_err(|source| RouterError::Listen { addr, source })?;
        Some(probe)
    } else {
        None
    };
    let addr = cfg.router.listen;
    let (rd, wr) = nix::unistd::pipe().map_err(RouterError::Pipe)?;
    let announcer = std::thread::spawn(move || {
        let mut line = String::new();
        let ok = std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut line).is_ok();
        drop(probe);
        if ok && line == "ready\n" {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "ready router={addr}");
            let _ = out.flush();
        }
    });
    let code = worker::process_main(cfg, config_path, 0, Some(wr));
    let _ = announcer.join();
    if code == 0 { Ok(()) } else { Err(RouterError::Worker(code)) }
}
