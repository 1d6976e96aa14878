//! The listening socket: one per worker, all on the same port through SO_REUSEPORT.
//!
//! Every worker binds its own listener (same address, same UID, SO_REUSEPORT on each) and
//! the kernel spreads new connections over the group by a hash of the 4-tuple, so workers
//! share no accept lock and no state (socket(7), "SO_REUSEPORT"; tech-notes section 4).
//! A listener that closes resets the connections still in its accept queue unless
//! `net.ipv4.tcp_migrate_req=1`; a draining worker therefore stops accepting first.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Accept queue length asked for; the kernel caps it at `net.core.somaxconn`.
pub const BACKLOG: i32 = 65_535;

/// Binds a non-blocking SO_REUSEPORT + SO_REUSEADDR listener on `addr` (port 0 picks one).
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    // tokio's `TcpListener::from_std` requires a non-blocking socket.
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    Ok(s.into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn two_listeners_share_a_port() {
        let a = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = a.local_addr().unwrap();
        let b = super::bind(addr).unwrap();
        assert_eq!(b.local_addr().unwrap(), addr);
    }
}
