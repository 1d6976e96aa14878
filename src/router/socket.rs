//! One WebSocket connection after the handshake: a reader task, a writer, and the limits.
//!
//! Protocol-agnostic: the router's [`super::session`] and the Autobahn echo example both run
//! through [`run`], so the conformance suite tests exactly the code clients meet. The reader
//! task runs fastwebsockets' split read half (never inside `select!`: `read_frame` is not
//! cancel-safe), made afresh for each frame over [`Inbound`] so that an idle connection holds
//! no read buffer; the writer is [`super::outbound::write_loop`], which replaces
//! fastwebsockets' writer so that queued frames leave in one `writev`.
//!
//! Limits enforced here, the same for every user of the layer ([`Limits`]): frame and message
//! size (fastwebsockets 0.10 caps single frames only, so fragments are assembled, and
//! capped, here), fragmented messages refused unless allowed, text refused unless allowed, a
//! token bucket on client frames (pings included), and a count of violations after which the
//! connection is closed with the close code that fits the last one.
//!
//! Closing: whoever decides (the peer, a violation, the worker) queues a close frame; the
//! writer sends it, half-closes the socket, and gives the reader [`CLOSE_LINGER`] to see the
//! peer's close or EOF before the socket is dropped (dropping unread data would reset the
//! connection and could destroy the close frame on its way).

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::inbound::{Inbound, ReadHalf};

use super::ledger::ConnId;
use super::outbound::{self, Finished, Op, Outbound, State};
use crate::wire::{CloseCode, ErrorCode};

/// How long the reader may wait for the peer's answer to our close frame.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// RFC 6455 close code for a protocol error.
const PROTOCOL_ERROR: u16 = 1002;

/// Limits applied to every frame; read from the session before each frame, so a reload takes
/// effect on the next one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest frame and largest (assembled) message, in bytes.
    pub max_message_bytes: usize,
    /// Accept fragmented messages (assembled up to `max_message_bytes`).
    pub fragments: bool,
    /// Accept text messages (checked as UTF-8).
    pub text: bool,
    /// Client frames per second (token bucket refill).
    pub frames_per_sec: u32,
    /// Token bucket size.
    pub burst: u32,
    /// Violations tolerated; the next one closes.
    pub max_violations: u32,
    /// Bound of the outbound queue for answers and control frames, in bytes.
    pub control_queue_bytes: usize,
}

/// A client misbehaved: what to tell it, and how to close if it keeps on.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The request id the answer refers to (0: none).
    pub id: u32,
    pub code: ErrorCode,
    /// Close code used when this violation is one too many.
    pub close: u16,
    pub message: Cow<'static, str>,
}

impl Violation {
    pub fn new(code: ErrorCode, close: u16, message: impl Into<Cow<'static, str>>) -> Self {
        Self { id: 0, code, close, message: message.into() }
    }
}

/// The state a connection shares with its worker: the outbound queue and liveness clocks.
pub struct Conn {
    /// Slot in the worker (and key in the ledger).
    pub id: ConnId,
    pub out: RefCell<Outbound>,
    /// Last time anything arrived from the peer (the idle sweep reads it).
    pub last_rx: Cell<Instant>,
    /// Last time the server pinged (or the connection opened).
    pub last_ping: Cell<Instant>,
}

impl Conn {
    pub fn new(id: ConnId) -> Self {
        let now = Instant::now();
        Self { id, out: RefCell::new(Outbound::new()), last_rx: Cell::new(now), last_ping: Cell::new(now) }
    }

    /// Queues a control frame within `bound`; a peer that lets answers pile up past it is not
    /// reading at all and is closed as a slow consumer. Returns whether it was queued.
    pub fn send_control(&self, frame: Bytes, bound: usize) -> bool {
        let refused = self.out.borrow_mut().push_control(frame, bound);
        match refused {
            Ok(()) => true,
            Err(outbound::Refused::Full) => {
                metrics::counter!(crate::metrics::CLOSES, "reason" => "slow_consumer").increment(1);
                self.close(CloseCode::SLOW_CONSUMER, "slow consumer", true);
                false
            }
            Err(outbound::Refused::Closed) => false,
        }
    }

    /// Starts the closing handshake with `code` (see [`Outbound::close`] for `discard`).
    pub fn close(&self, code: u16, reason: &str, discard: bool) {
        self.out.borrow_mut().close(outbound::close_frame(code, reason), discard);
    }

    pub fn is_open(&self) -> bool {
        self.out.borrow().state() == State::Open
    }
}

/// What the layer needs from the protocol above it (one value per connection).
pub trait Session: 'static {
    fn conn(&self) -> &Conn;
    fn limits(&self) -> Limits;
    /// A complete message (`text`: a text message, already checked as UTF-8).
    fn on_message(&self, text: bool, payload: &[u8]) -> impl Future<Output = Result<(), Violation>>;
    /// The frame that tells the client about a violation, if the protocol has one.
    fn error_frame(&self, v: &Violation) -> Option<Bytes>;
    /// The connection is over (called exactly once, also when the task is cancelled).
    fn on_end(&self);
}

/// Calls [`Session::on_end`] when dropped, so that even a cancelled connection unregisters.
pub struct EndGuard<S: Session>(pub Rc<S>);

impl<S: Session> Drop for EndGuard<S> {
    fn drop(&mut self) {
        self.0.on_end();
    }
}

/// A byte stream a connection runs on: plain TCP (owned halves, no lock) or TLS.
pub trait Transport: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    type Read: ReadHalf;
    type Write: AsyncWrite + Unpin + 'static;
    fn split(self) -> (Self::Read, Self::Write);
}

impl Transport for TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn split(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl Transport for tokio_rustls::server::TlsStream<TcpStream> {
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn split(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
}

/// Serves one upgraded connection until it is closed; `prefix` are bytes already read.
pub async fn run<S: Session, T: Transport>(session: Rc<S>, io: T, prefix: Bytes) {
    let guard = EndGuard(session);
    let (r, mut w) = io.split();
    let reader = read_loop(guard.0.clone(), Inbound::new(r, prefix));
    let mut reader = tokio::task::spawn_local(tracing::Instrument::in_current_span(reader));
    let conn = guard.0.conn();
    let finished = outbound::write_loop(&conn.out, &mut w).await;
    let written = conn.out.borrow().written;
    metrics::counter!(crate::metrics::BYTES_OUT).increment(written);
    tracing::debug!(?finished, written, "connection ended");
    match finished {
        Ok(Finished::Closed) => {
            // Half-close, then let the reader drain the peer's close (or EOF) for a moment.
            let _ = w.shutdown().await;
            if tokio::time::timeout(CLOSE_LINGER, &mut reader).await.is_err() {
                reader.abort();
            }
        }
        Ok(Finished::Killed) | Err(_) => {
            conn.out.borrow_mut().kill();
            reader.abort();
        }
    }
    drop(guard);
}

/// Token bucket over client frames.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, l: &Limits, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * f64::from(l.frames_per_sec)).min(f64::from(l.burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Per-connection reader state besides the socket.
struct Reader<S: Session> {
    s: Rc<S>,
    bucket: Cell<Option<Bucket>>,
    violations: Cell<u32>,
}

impl<S: Session> Reader<S> {
    /// Counts a violation, tells the client, and closes past the limit. Returns whether the
    /// connection is now closing.
    fn violate(&self, v: Violation, l: &Limits) -> bool {
        let n = self.violations.get() + 1;
        self.violations.set(n);
        metrics::counter!(crate::metrics::FRAMES_REJECTED, "reason" => v.code.as_str()).increment(1);
        let conn = self.s.conn();
        if let Some(f) = self.s.error_frame(&v) {
            conn.send_control(f, l.control_queue_bytes);
        }
        if n > l.max_violations {
            metrics::counter!(crate::metrics::CLOSES, "reason" => "violations").increment(1);
            conn.close(v.close, &v.message, false);
            return true;
        }
        false
    }

    /// Takes a token for one client frame; `false` (and a violation) when the bucket is dry.
    fn rate_ok(&self, l: &Limits) -> bool {
        let now = Instant::now();
        let mut b = self.bucket.take().unwrap_or(Bucket { tokens: f64::from(l.burst), at: now });
        let ok = b.take(l, now);
        self.bucket.set(Some(b));
        if !ok {
            self.violate(Violation::new(ErrorCode::RateLimited, CloseCode::POLICY, "too many frames: slow down"), l);
        }
        ok
    }

    /// Fails the connection for a protocol error the RFC says is fatal.
    fn fail(&self, code: u16, reason: &str) {
        metrics::counter!(crate::metrics::CLOSES, "reason" => "protocol_error").increment(1);
        self.s.conn().close(code, reason, false);
    }
}

/// A fastwebsockets reader for the next frame, with the limits applied.
fn reader<'a, R: ReadHalf>(inbound: &'a mut Inbound<R>, l: &Limits) -> WebSocketRead<&'a mut Inbound<R>> {
    let (mut rd, _) = fastwebsockets::after_handshake_split(inbound, tokio::io::sink(), Role::Server);
    rd.set_auto_pong(true);
    rd.set_auto_close(true);
    // fastwebsockets refuses `len >= max`: allow exactly max_message_bytes.
    rd.set_max_message_size(l.max_message_bytes.saturating_add(1));
    rd
}

/// A fragmented message being assembled, or skipped after it was refused.
enum Partial {
    None,
    Assembling { text: bool, buf: Vec<u8> },
    Skipping,
}

async fn read_loop<S: Session, R: ReadHalf>(s: Rc<S>, mut inbound: Inbound<R>) {
    let r = Reader { s, bucket: Cell::new(None), violations: Cell::new(0) };
    let mut partial = Partial::None;
    loop {
        let conn = r.s.conn();
        // Idle: no reader and no read buffer until the peer sends something (see inbound.rs).
        if inbound.wait_frame().await.is_err() {
            conn.out.borrow_mut().kill();
            return;
        }
        let l = r.s.limits();
        let mut rd = reader(&mut inbound, &l);
        let res = rd
            .read_frame(&mut |f: Frame<'_>| {
                // Obligated answers (pong, close echo): hand them to the writer.
                conn.last_rx.set(Instant::now());
                let mut stop = false;
                match f.opcode {
                    // Control frames carry at most 125 bytes (RFC 6455 5.5); fastwebsockets
                    // checks pings only.
                    OpCode::Close if f.payload.len() > 125 => {
                        conn.close(PROTOCOL_ERROR, "control frame above 125 bytes", false)
                    }
                    OpCode::Close => conn.out.borrow_mut().close(outbound::frame(Op::Close, &f.payload), false),
                    _ if !conn.is_open() => {}
                    _ => {
                        if r.rate_ok(&l) {
                            conn.send_control(outbound::frame(Op::Pong, &f.payload), l.control_queue_bytes);
                        }
                        stop = !conn.is_open();
                    }
                }
                // An error ends a ping flood that never yields a frame to the loop below.
                std::future::ready(if stop { Err("closing") } else { Ok::<(), &'static str>(()) })
            })
            .await;
        // Own the (small) payload and drop the reader now: its 8 KiB buffer should not be held
        // while the message is handled (a subscribe waits for its token check).
        let (opcode, fin, payload) = match res {
            Ok(f) => (f.opcode, f.fin, f.payload.to_vec()),
            Err(e) => {
                match e {
                    WebSocketError::UnexpectedEOF | WebSocketError::IoError(_) | WebSocketError::SendError(_) => {}
                    WebSocketError::FrameTooLarge => {
                        // The payload is still unread: the stream cannot be resynchronized.
                        let v = Violation::new(
                            ErrorCode::FrameTooLarge,
                            CloseCode::TOO_BIG,
                            format!("frame above {} bytes", l.max_message_bytes),
                        );
                        if let Some(f) = r.s.error_frame(&v) {
                            conn.send_control(f, l.control_queue_bytes);
                        }
                        metrics::counter!(crate::metrics::FRAMES_REJECTED, "reason" => "frame_too_large").increment(1);
                        r.fail(CloseCode::TOO_BIG, "frame too large");
                    }
                    WebSocketError::InvalidUTF8 => r.fail(CloseCode::INVALID_DATA, "invalid UTF-8"),
                    other => r.fail(PROTOCOL_ERROR, &other.to_string()),
                }
                if conn.is_open() {
                    // EOF or a socket error: nobody to write to.
                    conn.out.borrow_mut().kill();
                }
                return;
            }
        };
        drop(rd);
        conn.last_rx.set(Instant::now());
        match opcode {
            OpCode::Close => return,
            OpCode::Pong if payload.len() > 125 => {
                r.fail(PROTOCOL_ERROR, "control frame above 125 bytes");
                continue;
            }
            OpCode::Pong | OpCode::Ping => continue,
            _ if !conn.is_open() => continue, // closing: discard until the peer's close
            _ => {}
        }
        metrics::counter!(crate::metrics::FRAMES_IN).increment(1);
        if !r.rate_ok(&l) {
            continue;
        }
        let message: Option<(bool, Vec<u8>)> = match (opcode, &mut partial) {
            (OpCode::Text | OpCode::Binary, Partial::Assembling { .. } | Partial::Skipping) => {
                r.fail(PROTOCOL_ERROR, "new message inside a fragmented one");
                continue;
            }
            (OpCode::Continuation, Partial::None) => {
                r.fail(PROTOCOL_ERROR, "continuation frame without a message");
                continue;
            }
            (op @ (OpCode::Text | OpCode::Binary), Partial::None) => {
                let text = op == OpCode::Text;
                if fin {
                    Some((text, payload))
                } else if l.fragments {
                    partial = Partial::Assembling { text, buf: payload };
                    None
                } else {
                    partial = Partial::Skipping;
                    r.violate(
                        Violation::new(ErrorCode::BadFrame, CloseCode::POLICY, "fragmented messages are not accepted"),
                        &l,
                    );
                    None
                }
            }
            (OpCode::Continuation, Partial::Skipping) => {
                if fin {
                    partial = Partial::None;
                }
                None
            }
            (OpCode::Continuation, Partial::Assembling { buf, .. }) => {
                if buf.len() + payload.len() > l.max_message_bytes {
                    partial = if fin { Partial::None } else { Partial::Skipping };
                    let v = Violation::new(
                        ErrorCode::FrameTooLarge,
                        CloseCode::TOO_BIG,
                        format!("message above {} bytes", l.max_message_bytes),
                    );
                    r.violate(v, &l);
                    None
                } else {
                    buf.extend_from_slice(&payload);
                    if fin {
                        match std::mem::replace(&mut partial, Partial::None) {
                            Partial::Assembling { text, buf } => Some((text, buf)),
                            _ => None,
                        }
                    } else {
                        None
                    }
                }
            }
            // Control opcodes were handled above.
            _ => None,
        };
        let Some((text, payload)) = message else { continue };
        if text {
            if !l.text {
                r.violate(
                    Violation::new(
                        ErrorCode::TextNotSupported,
                        CloseCode::INVALID_DATA,
                        "text messages are not supported: send binary MessagePack frames",
                    ),
                    &l,
                );
                continue;
            }
            // Single text frames were checked by fastwebsockets; assembled ones are checked here.
            if std::str::from_utf8(&payload).is_err() {
                r.fail(CloseCode::INVALID_DATA, "invalid UTF-8");
                continue;
            }
        }
        if let Err(v) = r.s.on_message(text, &payload).await {
            r.violate(v, &l);
        }
    }
}
