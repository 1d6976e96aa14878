//! A minimal WebSocket client of the frame protocol, for tests, the bench and diagnostics.
//!
//! Deliberately raw: it writes the handshake by hand and frames bytes itself (masked, as
//! RFC 6455 section 5.3 requires of clients), so tests can also send what a well-behaved
//! library never would (fragments, oversize frames, text, garbage) and see exactly what the
//! router answers, and the bench can hold many thousand connections cheaply. Not a
//! production client: no TLS, no extensions, no reconnect.

use std::io;
use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::wire::{ClientFrame, ServerFrame};

pub mod verifying;

/// WebSocket opcodes (RFC 6455 section 5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// One frame as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub op: u8,
    pub fin: bool,
    pub payload: Vec<u8>,
}

impl Message {
    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.op == op::CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// Decodes a binary message as a router frame.
    pub fn frame(&self) -> Option<ServerFrame<'_>> {
        if self.op != op::BINARY {
            return None;
        }
        ServerFrame::decode(&self.payload).ok()
    }
}

/// The HTTP answer to a handshake that was not accepted.
#[derive(Debug, Clone)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("io: {0}")]
    Io(#[from] io::Error),
    #[error("refused with HTTP {}: {}", .0.status, .0.body.trim())]
    Refused(Refused),
}

/// A connected client.
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
    /// The response headers of the handshake.
    pub response_head: String,
    mask_seed: u32,
}

/// A handshake request for `path` on `host`, with `extra` header lines (each ending `\r\n`).
pub fn request(host: &str, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

/// Reads an HTTP response head (and the body, for non-101 answers, up to EOF or its length).
async fn read_response(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<(u16, String, String), ConnectError> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.advance(end + 4);
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or(io::Error::from(io::ErrorKind::InvalidData))?;
            if status == 101 {
                return Ok((status, head, String::new()));
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").or_else(|| l.strip_prefix("Content-Length: ")))
                .and_then(|v| v.trim().parse::<usize>().ok());
            while len.is_none_or(|n| buf.len() < n) {
                if stream.read_buf(buf).await? == 0 {
                    break;
                }
            }
            let body = String::from_utf8_lossy(buf).into_owned();
            return Ok((status, head, body));
        }
        if buf.len() > 64 * 1024 || stream.read_buf(buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}

impl Client {
    /// Connects to `addr` and upgrades on `path`.
    pub async fn connect(addr: SocketAddr, path: &str) -> Result<Self, ConnectError> {
        Self::connect_raw(TcpStream::connect(addr).await?, &request(&addr.to_string(), path, "")).await
    }

    /// Connects from a chosen source IP (the bench spreads clients over 127.0.0.x so that
    /// more than one source address' worth of ephemeral ports is available).
    pub async fn connect_from(src: std::net::IpAddr, addr: SocketAddr, path: &str) -> Result<Self, ConnectError> {
        let s = if src.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        s.bind(SocketAddr::new(src, 0))?;
        let stream = s.connect(addr).await?;
        Self::connect_raw(stream, &request(&addr.to_string(), path, "")).await
    }

    /// Sends `request` verbatim on `stream` and expects a 101.
    pub async fn connect_raw(mut stream: TcpStream, request: &str) -> Result<Self, ConnectError> {
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        let mut buf = BytesMut::with_capacity(1024);
        let (status, head, body) = read_response(&mut stream, &mut buf).await?;
        if status != 101 {
            return Err(ConnectError::Refused(Refused { status, head, body }));
        }
        Ok(Self { stream, buf, response_head: head, mask_seed: 0x1234_5678 })
    }

    /// Sends one frame: `op`, `fin`, masked `payload`.
    pub async fn send_raw(&mut self, op: u8, fin: bool, payload: &[u8]) -> io::Result<()> {
        let out = encode_masked(op, fin, payload, self.next_mask());
        self.stream.write_all(&out).await
    }

    /// Sends raw bytes on the socket (no framing at all).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift: masks only need to be unpredictable to intermediaries, not secret here.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    /// Sends a protocol frame as one binary message.
    pub async fn send(&mut self, f: &ClientFrame<'_>) -> io::Result<()> {
        self.send_raw(op::BINARY, true, &f.encode()).await
    }

    pub async fn subscribe(&mut self, id: u32, topic: &str, token: &str) -> io::Result<()> {
        self.send(&ClientFrame::Subscribe { id, topic, token }).await
    }

    /// Reads the next frame, whatever it is. EOF is `UnexpectedEof`.
    pub async fn recv(&mut self) -> io::Result<Message> {
        loop {
            if let Some((m, used)) = decode_unmasked(&self.buf)? {
                self.buf.advance(used);
                return Ok(m);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads the next data or close frame, answering pings on the way.
    pub async fn next(&mut self) -> io::Result<Message> {
        loop {
            let m = self.recv().await?;
            if m.op == op::PING {
                self.send_raw(op::PONG, true, &m.payload).await?;
                continue;
            }
            return Ok(m);
        }
    }

    /// Sends a close frame with `code`.
    pub async fn close(&mut self, code: u16) -> io::Result<()> {
        self.send_raw(op::CLOSE, true, &code.to_be_bytes()).await
    }

    /// Reads until EOF (after a close), returning what came.
    pub async fn drain_to_eof(&mut self) -> Vec<Message> {
        let mut v = Vec::new();
        while let Ok(m) = self.recv().await {
            v.push(m);
        }
        v
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// A client frame: header, mask, masked payload.
pub fn encode_masked(op: u8, fin: bool, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | op);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=65535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Decodes one unmasked (server) frame from the front of `buf`.
pub fn decode_unmasked(buf: &[u8]) -> io::Result<Option<(Message, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    if buf[1] & 0x80 != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "server frames must not be masked"));
    }
    let (len, head) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return Ok(None),
        n => (n as usize, 2),
    };
    if buf.len() < head + len {
        return Ok(None);
    }
    let m = Message { op: buf[0] & 0x0f, fin: buf[0] & 0x80 != 0, payload: buf[head..head + len].to_vec() };
    Ok(Some((m, head + len)))
}
