//! One scripted client: connect from a chosen loopback source, upgrade, subscribe, count frames.
//!
//! Used by the holder processes (`hold.rs`). Connection `i` (a global index over the whole
//! fleet) connects from 127.0.0.(2 + i % sources) with IP_BIND_ADDRESS_NO_PORT, so that more
//! than one source address' worth of ephemeral ports is available and the kernel picks the
//! port at connect time (not at bind time, which would exhaust ports per address early).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use switchboard::client::{Client, ConnectError, request};
use switchboard::wire::ServerFrame;
use tokio::io::AsyncReadExt;

/// Why one connect + subscribe attempt failed, sorted into the kinds the storm reports.
#[derive(Debug)]
pub enum AttemptError {
    Io(io::Error),
    Http { status: u16, body: String },
    Subscribe { code: String, message: String },
    Timeout(u64),
}

impl std::fmt::Display for AttemptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttemptError::Io(e) => write!(f, "{e}"),
            AttemptError::Http { status, body } => write!(f, "HTTP {status}: {body}"),
            AttemptError::Subscribe { code, message } => write!(f, "subscribe refused: {code}: {message}"),
            AttemptError::Timeout(ms) => write!(f, "no connect + upgrade + subscribe within {ms} ms"),
        }
    }
}

impl std::error::Error for AttemptError {}

impl From<io::Error> for AttemptError {
    fn from(e: io::Error) -> Self {
        AttemptError::Io(e)
    }
}

impl AttemptError {
    /// A short label without spaces (a key in the `tick` line): `refused`, `reset`,
    /// `timeout`, `eof`, `http_503`, `sub_<code>`, `io_<kind>`.
    pub fn kind(&self) -> String {
        match self {
            AttemptError::Io(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => "refused".into(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
                    "reset".into()
                }
                io::ErrorKind::UnexpectedEof => "eof".into(),
                io::ErrorKind::TimedOut => "timeout".into(),
                io::ErrorKind::AddrNotAvailable => "no_port".into(),
                k => format!("io_{k:?}").to_lowercase(),
            },
            AttemptError::Http { status, .. } => format!("http_{status}"),
            AttemptError::Subscribe { code, .. } => {
                format!(
                    "sub_{}",
                    code.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect::<String>()
                )
            }
            AttemptError::Timeout(_) => "timeout".into(),
        }
    }
}

impl From<ConnectError> for AttemptError {
    fn from(e: ConnectError) -> Self {
        match e {
            ConnectError::Io(e) => AttemptError::Io(e),
            ConnectError::Refused(r) => AttemptError::Http { status: r.status, body: r.body.trim().to_owned() },
        }
    }
}

/// Connects client `i` from source address 127.0.0.(2 + i % sources) and upgrades.
pub async fn connect(i: usize, sources: u8, addr: SocketAddr) -> Result<Client, AttemptError> {
    let src = Ipv4Addr::new(127, 0, 0, 2 + (i % sources.max(1) as usize) as u8);
    let s = tokio::net::TcpSocket::new_v4()?;
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own, with a correctly sized int argument.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of_val(&one) as libc::socklen_t,
        );
    }
    s.bind(SocketAddr::new(IpAddr::V4(src), 0))?;
    let stream = s.connect(addr).await?;
    Ok(Client::connect_raw(stream, &request(&addr.to_string(), "/ws", "")).await?)
}

/// Subscribes to `topic` and waits for the router's answer.
pub async fn subscribe(c: &mut Client, topic: &str, token: &str) -> Result<(), AttemptError> {
    c.subscribe(1, topic, token).await?;
    loop {
        let m = c.next().await?;
        match m.frame() {
            Some(ServerFrame::Ok { .. }) => return Ok(()),
            Some(ServerFrame::Error { code, message, .. }) => {
                return Err(AttemptError::Subscribe { code: code.to_string(), message: message.to_string() });
            }
            _ => continue,
        }
    }
}

/// Connect, upgrade and (unless `topic` is empty) subscribe, all within `timeout_ms`.
pub async fn open(
    i: usize,
    sources: u8,
    addr: SocketAddr,
    topic: &str,
    token: &str,
    timeout_ms: u64,
) -> Result<Client, AttemptError> {
    let attempt = async {
        let mut c = connect(i, sources, addr).await?;
        if !topic.is_empty() {
            subscribe(&mut c, topic, token).await?;
        }
        Ok(c)
    };
    match tokio::time::timeout(std::time::Duration::from_millis(timeout_ms), attempt).await {
        Ok(r) => r,
        Err(_) => Err(AttemptError::Timeout(timeout_ms)),
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// What the readers of one holder share (one thread: cells, no atomics).
pub struct Counters {
    pub envelopes: Cell<u64>,
    pub gaps: Cell<u64>,
    /// Wall-clock ns of the last envelope frame read.
    pub last_ns: Cell<u64>,
    /// End-to-end latency in ns: receive time minus the publish time in the payload's last 8 bytes.
    pub latency: RefCell<Histogram<u64>>,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            envelopes: Cell::new(0),
            gaps: Cell::new(0),
            last_ns: Cell::new(0),
            latency: RefCell::new(crate::protocol::new_hist()),
        }
    }
}

/// Counts envelope and gap frames on one connection without decoding or allocating, records
/// latency, and adds this connection's envelopes to `mine`. Returns when the socket closes.
pub async fn count_frames(c: &mut Client, k: &Counters, mine: &Cell<u64>) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let now = now_ns();
        let mut got = false;
        loop {
            if buf.len() < 2 {
                break;
            }
            let (len, head) = match buf[1] & 0x7f {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap_or([0; 8])) as usize, 10),
                126 | 127 => break,
                n => (n as usize, 2),
            };
            if buf.len() < head + len {
                break;
            }
            // Envelope frames start [0x97, 19 ...]; gap frames [0x94, 21 ...].
            match (buf[0] & 0x0f, buf.get(head..head + 2)) {
                (2, Some([0x97, 0x13])) => {
                    got = true;
                    k.envelopes.set(k.envelopes.get() + 1);
                    mine.set(mine.get() + 1);
                    if len >= 10 {
                        let end = head + len;
                        let ts = u64::from_be_bytes(buf[end - 8..end].try_into().unwrap_or([0; 8]));
                        if ts > 0 && now > ts {
                            let _ = k.latency.borrow_mut().record(now - ts);
                        }
                    }
                }
                (2, Some([0x94, 0x15])) => k.gaps.set(k.gaps.get() + 1),
                _ => {}
            }
            buf.advance(head + len);
        }
        if got {
            k.last_ns.set(now);
        }
        if buf.capacity() - buf.len() < 16 * 1024 {
            buf.reserve(64 * 1024);
        }
        match c.stream().read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
