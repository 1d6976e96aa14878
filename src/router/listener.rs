//! PLACEHOLDER (issue 4 scaffolding; the `router` branch's real listener replaces this file
//! at merge): the SO_REUSEPORT listener each worker binds on the shared port.
//!
//! Every worker binds its own socket to the same address with SO_REUSEPORT, so the kernel
//! spreads new connections across the workers by a hash of the 4-tuple (tech-notes §4).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept queue length asked of the kernel (silently capped at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// A non-blocking, listening SO_REUSEPORT socket on `addr`, ready for
/// `tokio::net::TcpListener::from_std`.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}
