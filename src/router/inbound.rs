//! The read side of a connection, cut at frame boundaries so that an idle one holds no buffer.
//!
//! fastwebsockets' reader allocates an 8 KiB buffer when it is created and keeps it for its
//! life, and reads ahead as far as that buffer allows. Most router clients are idle almost
//! all the time, so [`Inbound`] hands the reader exactly one frame at a time (its header,
//! then its payload, never a byte of the next frame) and the connection layer drops the
//! reader after every frame and waits for the socket to become readable before it makes the
//! next one: between frames a connection holds this struct (a few dozen bytes) and nothing
//! else. Client-to-server traffic is small (subscribes, pongs), so the extra reads per frame
//! cost nothing that matters; server-to-client traffic does not pass here.
//!
//! Only frame lengths are parsed here (RFC 6455 section 5.2); every check of the frame
//! itself (reserved bits, opcodes, masking, control frame rules, sizes) stays with
//! fastwebsockets, which sees the same bytes it would have seen from the socket.
//!
//! Invariant: `head[..head_len]` is a complete header whose first `given` bytes were handed
//! out, or `head_len == 0` and `head[..fill]` is the start of the next header.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

/// A connection's read half: bytes, and a wait for the next bytes that holds no buffer.
pub trait ReadHalf: AsyncRead + Unpin + 'static {
    /// Waits for the first bytes of the next frame and reads them into `buf` (0 at EOF).
    fn first_bytes(&mut self, buf: &mut [u8]) -> impl Future<Output = io::Result<usize>>;
}

impl ReadHalf for OwnedReadHalf {
    /// tokio reports a socket readable until a read would block, and reads here stop at frame
    /// boundaries, so readiness alone is stale right after a frame: a read must say so.
    async fn first_bytes(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            self.readable().await?;
            match self.try_read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// TLS: socket readiness says nothing about whole records, so this reads through rustls
/// (which holds its own buffers per connection anyway).
impl<T: AsyncRead + Unpin + 'static> ReadHalf for tokio::io::ReadHalf<T> {
    async fn first_bytes(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        tokio::io::AsyncReadExt::read(self, buf).await
    }
}

/// Longest frame header: 2 bytes, an 8-byte length, a 4-byte mask.
const MAX_HEAD: usize = 14;

/// Bytes of payload copied per read (a stack buffer; client frames are small).
const CHUNK: usize = 2048;

/// The header length implied by its first bytes (at least 2 needed).
fn header_len(head: &[u8]) -> usize {
    if head.len() < 2 {
        return 2;
    }
    let ext = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if head[1] & 0x80 != 0 { 4 } else { 0 }
}

/// The payload length of a complete header.
fn payload_len(head: &[u8]) -> u64 {
    match head[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[2..10]);
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    }
}

/// A socket's read half that yields one frame at a time.
pub struct Inbound<R = OwnedReadHalf> {
    io: R,
    /// Bytes hyper read past the HTTP request, served before the socket.
    prefix: Bytes,
    head: [u8; MAX_HEAD],
    /// Bytes of the next header read so far (while `head_len == 0`).
    fill: u8,
    /// Length of the complete header being handed out (0: none).
    head_len: u8,
    /// Header bytes already handed out.
    given: u8,
    /// Payload bytes of the current frame not handed out yet.
    payload_left: u64,
}

impl<R: ReadHalf> Inbound<R> {
    /// `prefix` are bytes read past the HTTP request; it is copied, because as a slice of
    /// hyper's read buffer (even an empty one) it would keep that whole buffer alive.
    pub fn new(io: R, prefix: Bytes) -> Self {
        let prefix = if prefix.is_empty() { Bytes::new() } else { Bytes::copy_from_slice(&prefix) };
        Self { io, prefix, head: [0; MAX_HEAD], fill: 0, head_len: 0, given: 0, payload_left: 0 }
    }

    /// Nothing of a frame has been read: the reader may be dropped without losing bytes.
    pub fn at_boundary(&self) -> bool {
        self.fill == 0 && self.head_len == 0 && self.payload_left == 0
    }

    /// Waits until the next frame starts arriving (or EOF, or an error), reading its first
    /// bytes. tokio reports a socket readable until a read would block, and reads here stop at
    /// frame boundaries, so readiness alone is stale right after a frame: a read must say so.
    pub async fn wait_frame(&mut self) -> io::Result<()> {
        if !self.prefix.is_empty() || !self.at_boundary() {
            return Ok(());
        }
        // 0 is EOF: the reader will meet it on its first read.
        self.fill = self.io.first_bytes(&mut self.head[..2]).await? as u8;
        Ok(())
    }

    /// Reads into `dst` from the prefix, then the socket.
    fn poll_source(&mut self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        if !self.prefix.is_empty() {
            let n = dst.len().min(self.prefix.len());
            dst[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(n));
        }
        let mut rb = ReadBuf::new(dst);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<R: ReadHalf> AsyncRead for Inbound<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.head_len > 0 {
                let (from, to) = (this.given as usize, this.head_len as usize);
                let n = out.remaining().min(to - from);
                out.put_slice(&this.head[from..from + n]);
                this.given += n as u8;
                if this.given == this.head_len {
                    this.head_len = 0;
                    this.given = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.payload_left > 0 {
                let want = (out.remaining() as u64).min(this.payload_left).min(CHUNK as u64) as usize;
                let mut chunk = [0u8; CHUNK];
                let n = match this.poll_source(cx, &mut chunk[..want]) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                out.put_slice(&chunk[..n]);
                this.payload_left -= n as u64;
                // n == 0 is EOF: the reader sees it as such.
                return Poll::Ready(Ok(()));
            }
            // At a boundary: read exactly the next header.
            loop {
                let have = this.fill as usize;
                let need = header_len(&this.head[..have]);
                if have >= need {
                    break;
                }
                let mut tmp = [0u8; MAX_HEAD];
                let n = match this.poll_source(cx, &mut tmp[..need - have]) {
                    Poll::Ready(Ok(n)) => n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                };
                if n == 0 {
                    // EOF, possibly inside a header: hand out what there is, then EOF.
                    if have == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let k = out.remaining().min(have);
                    out.put_slice(&this.head[..k]);
                    this.head.copy_within(k..have, 0);
                    this.fill -= k as u8;
                    return Poll::Ready(Ok(()));
                }
                this.head[have..have + n].copy_from_slice(&tmp[..n]);
                this.fill += n as u8;
            }
            let len = this.fill;
            this.payload_left = payload_len(&this.head[..len as usize]);
            this.head_len = len;
            this.given = 0;
            this.fill = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn yields_one_frame_at_a_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (r, _w) = server.into_split();
        let f1 = crate::client::encode_masked(2, true, b"hello", [1, 2, 3, 4]);
        let f2 = crate::client::encode_masked(2, true, &[7; 300], [5, 6, 7, 8]);
        let mut all = f1.clone();
        all.extend_from_slice(&f2);
        // The first 3 bytes arrive as if hyper had read them with the request.
        let mut inbound = Inbound::new(r, Bytes::copy_from_slice(&all[..3]));
        client.write_all(&all[3..]).await.unwrap();
        let mut got = vec![0u8; f1.len()];
        inbound.read_exact(&mut got).await.unwrap();
        assert_eq!(got, f1);
        assert!(inbound.at_boundary(), "not a byte of the next frame was read");
        // The next frame is there: waiting returns at once, with its first bytes read.
        inbound.wait_frame().await.unwrap();
        assert!(!inbound.at_boundary());
        let mut big = vec![0u8; 4096];
        let mut n = 0;
        while n < f2.len() {
            let k = inbound.read(&mut big[n..]).await.unwrap();
            assert!(k > 0);
            n += k;
        }
        assert_eq!(&big[..n], &f2[..]);
        assert!(inbound.at_boundary());
        // Nothing more sent: waiting blocks (readiness was stale), until EOF.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(50), inbound.wait_frame()).await.is_err());
        drop(client);
        inbound.wait_frame().await.unwrap();
        assert_eq!(inbound.read(&mut big).await.unwrap(), 0);
    }
}
