//! A connection's outbound queue and the coalescing writer that drains it.
//!
//! Server-to-client WebSocket frames are unmasked (RFC 6455 section 5.1), so a frame is just
//! header + payload: [`frame`] builds it once into one `Bytes`, and an envelope's frame is
//! shared by every subscriber of its worker (a reference count per delivery, not a copy).
//! The writer hands every queued frame to one `writev` (up to [`MAX_IOVECS`] at a time), so
//! a connection with a backlog costs one syscall per batch, not one per frame.
//!
//! The queue is bounded in bytes ([`Outbound::push_envelope`] reports an overflow, and the
//! session applies the slow-consumer policy with [`Outbound::drop_topic`]). Idle, a queue
//! holds no allocation beyond its struct: the writer reads straight from the queued `Bytes`,
//! with no per-connection write buffer.
//!
//! Invariants: `bytes` is the sum of the queued frames' lengths; the front frame may be
//! partly written (`front_started`), and is then never dropped or rewritten.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Most frames handed to one `writev` (Linux allows 1024 iovecs; 64 fill a 256 KiB socket
/// buffer with typical envelopes and keep the slice array on the stack small).
pub const MAX_IOVECS: usize = 64;

/// Writes a frame's batch this many times in a row, then yields to the other connections.
const WRITES_PER_POLL: usize = 16;

/// WebSocket opcodes the router sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

/// Length of the header of an unmasked frame with `len` payload bytes.
pub fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

/// Appends the header of an unmasked final frame.
pub fn put_header(out: &mut BytesMut, op: Op, len: usize) {
    out.put_u8(0x80 | op as u8);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// One complete unmasked frame: header and payload in one buffer.
pub fn frame(op: Op, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut out, op, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// A close frame with `code` and a short reason (truncated to fit a control frame).
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut p = Vec::with_capacity(2 + end);
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&reason.as_bytes()[..end]);
    frame(Op::Close, &p)
}

/// The server's keepalive ping: a constant, so sending it allocates nothing.
pub fn ping_frame() -> Bytes {
    Bytes::from_static(&[0x80 | Op::Ping as u8, 0])
}

/// What a queued frame is, for the slow-consumer policy.
#[derive(Debug, Clone)]
pub enum Tag {
    /// An envelope of `topic` (the ledger's shared name) with `seq`.
    Envelope { topic: Rc<str>, seq: u64 },
    /// A gap notice for `topic` covering `from..=to`, merged while still queued.
    Gap { topic: Rc<str>, from: u64, to: u64 },
    /// Anything else: answers, pongs, resyncs, echoes.
    Control,
    /// The close frame: the last thing written.
    Close,
}

struct Item {
    bytes: Bytes,
    tag: Tag,
}

/// Where the connection stands, from the writer's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// A close frame is queued; nothing more is accepted.
    Closing,
    /// The peer is gone (or the socket failed): drop everything, write nothing.
    Dead,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue is over its byte bound.
    Full,
    /// The connection is closing or dead.
    Closed,
}

/// A seq range dropped for one topic (the content of a `gap` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped {
    pub from: u64,
    pub to: u64,
    /// Envelopes dropped.
    pub count: u64,
}

/// The queue of frames waiting for the socket.
pub struct Outbound {
    queue: VecDeque<Item>,
    /// Bytes queued (partly written front included, by what remains).
    bytes: usize,
    /// The front item was partly written.
    front_started: bool,
    state: State,
    /// When the close frame was queued (the sweep kills a close that cannot be written).
    closing_since: Option<tokio::time::Instant>,
    /// The writer, parked while the queue is empty or the socket is full.
    waker: Option<Waker>,
    /// Bytes written to the socket so far (for the metric, read at close).
    pub written: u64,
}

impl Default for Outbound {
    fn default() -> Self {
        Self::new()
    }
}

impl Outbound {
    pub fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            bytes: 0,
            front_started: false,
            state: State::Open,
            closing_since: None,
            waker: None,
            written: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        self.bytes
    }

    /// Frames waiting.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn push(&mut self, bytes: Bytes, tag: Tag) {
        self.bytes += bytes.len();
        self.queue.push_back(Item { bytes, tag });
        self.wake();
    }

    /// Queues an envelope frame unless that would take the queue over `bound` bytes.
    pub fn push_envelope(&mut self, frame: Bytes, topic: &Rc<str>, seq: u64, bound: usize) -> Result<(), Refused> {
        if self.state != State::Open {
            return Err(Refused::Closed);
        }
        if self.bytes + frame.len() > bound {
            return Err(Refused::Full);
        }
        self.push(frame, Tag::Envelope { topic: topic.clone(), seq });
        Ok(())
    }

    /// Queues a control frame unless that would take the queue over `bound` bytes.
    pub fn push_control(&mut self, frame: Bytes, bound: usize) -> Result<(), Refused> {
        if self.state != State::Open {
            return Err(Refused::Closed);
        }
        if self.bytes + frame.len() > bound {
            return Err(Refused::Full);
        }
        self.push(frame, Tag::Control);
        Ok(())
    }

    /// Drops every queued envelope of `topic` (not a partly written one) and merges their seqs
    /// with an already queued gap notice of the topic, which is removed too. Returns the
    /// range, plus `extra` (the envelope that did not fit), for the caller's new gap notice.
    pub fn drop_topic(&mut self, topic: &Rc<str>, extra: Option<u64>) -> Option<Dropped> {
        let mut range: Option<Dropped> = extra.map(|s| Dropped { from: s, to: s, count: 1 });
        let mut widen = |from: u64, to: u64, n: u64| {
            range = Some(match range {
                None => Dropped { from, to, count: n },
                Some(r) => Dropped { from: r.from.min(from), to: r.to.max(to), count: r.count + n },
            });
        };
        let skip = usize::from(self.front_started);
        let mut freed = 0;
        let mut i = skip;
        while i < self.queue.len() {
            let hit = match &self.queue[i].tag {
                Tag::Envelope { topic: t, seq } if Rc::ptr_eq(t, topic) => {
                    widen(*seq, *seq, 1);
                    true
                }
                Tag::Gap { topic: t, from, to } if Rc::ptr_eq(t, topic) => {
                    widen(*from, *to, 0);
                    true
                }
                _ => false,
            };
            if hit {
                if let Some(item) = self.queue.remove(i) {
                    freed += item.bytes.len();
                }
            } else {
                i += 1;
            }
        }
        self.bytes -= freed;
        range
    }

    /// Queues a gap notice for `topic` (always admitted: it replaces what was dropped, and
    /// there is at most one per subscribed topic).
    pub fn push_gap(&mut self, frame: Bytes, topic: &Rc<str>, from: u64, to: u64) {
        if self.state == State::Open {
            self.push(frame, Tag::Gap { topic: topic.clone(), from, to });
        }
    }

    /// Queues the close frame and accepts nothing after it. With `discard`, frames still
    /// queued (not a partly written one) are dropped first: the peer is not reading them.
    pub fn close(&mut self, frame: Bytes, discard: bool) {
        if self.state != State::Open {
            return;
        }
        if discard {
            let keep = usize::from(self.front_started);
            while self.queue.len() > keep {
                if let Some(item) = self.queue.pop_back() {
                    self.bytes -= item.bytes.len();
                }
            }
        }
        self.push(frame, Tag::Close);
        self.state = State::Closing;
        self.closing_since = Some(tokio::time::Instant::now());
    }

    /// When the close frame was queued, if it was.
    pub fn closing_since(&self) -> Option<tokio::time::Instant> {
        self.closing_since
    }

    /// The peer is gone: drop everything and let the writer finish.
    pub fn kill(&mut self) {
        self.state = State::Dead;
        self.queue.clear();
        self.bytes = 0;
        self.wake();
    }

    /// Marks `n` bytes as written.
    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        self.written += n as u64;
        while n > 0 {
            let Some(front) = self.queue.front_mut() else { break };
            if n >= front.bytes.len() {
                n -= front.bytes.len();
                self.queue.pop_front();
                self.front_started = false;
            } else {
                front.bytes.advance(n);
                self.front_started = true;
                n = 0;
            }
        }
        if self.queue.is_empty() && self.queue.capacity() > 16 {
            // A burst is over: give back the ring so an idle connection stays small.
            self.queue = VecDeque::new();
        }
    }

    /// Whether the front of the queue is the (unwritten) close frame alone.
    fn front_is_close(&self) -> bool {
        matches!(self.queue.front(), Some(Item { tag: Tag::Close, .. }))
    }
}

/// How the writer ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Finished {
    /// The close frame went out.
    Closed,
    /// The connection was killed (peer gone) before a close was written.
    Killed,
}

/// Drains `out` into `io` until the close frame is written or the connection dies.
///
/// Each wakeup writes everything queued with as few `writev` calls as the socket allows;
/// a queue that empties parks the writer until the next push.
pub async fn write_loop<W: AsyncWrite + Unpin>(
    out: &std::cell::RefCell<Outbound>,
    io: &mut W,
) -> std::io::Result<Finished> {
    poll_fn(|cx: &mut Context<'_>| {
        let mut o = out.borrow_mut();
        for _ in 0..WRITES_PER_POLL {
            if o.state == State::Dead {
                return Poll::Ready(Ok(Finished::Killed));
            }
            if o.queue.is_empty() {
                if o.state == State::Closing {
                    return Poll::Ready(Ok(Finished::Closed));
                }
                o.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let closing_now = o.front_is_close();
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for item in o.queue.iter().take(MAX_IOVECS) {
                slices[n] = IoSlice::new(&item.bytes);
                n += 1;
            }
            let res = Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n]);
            match res {
                Poll::Pending => {
                    // The socket will wake us when writable; `kill` must be able to as well
                    // (a peer that never reads would otherwise hold the writer forever).
                    o.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(w)) => {
                    o.consume(w);
                    if closing_now && o.queue.is_empty() {
                        return Poll::Ready(Ok(Finished::Closed));
                    }
                }
            }
        }
        // Fair share used: come back after the other tasks had theirs.
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(seq: u64) -> Bytes {
        frame(Op::Binary, &[0x91, seq as u8])
    }

    #[test]
    fn headers_for_each_length_class() {
        assert_eq!(&frame(Op::Binary, b"hi")[..], &[0x82, 2, b'h', b'i']);
        let f = frame(Op::Text, &[0; 126]);
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        assert_eq!(f.len(), 130);
        let f = frame(Op::Binary, &[0; 65536]);
        assert_eq!(&f[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(&close_frame(1001, "bye")[..], &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        assert_eq!(close_frame(1000, &"é".repeat(100)).len(), 2 + 2 + 122);
        assert_eq!(&ping_frame()[..], &[0x89, 0]);
    }

    #[test]
    fn overflow_drops_one_topic_and_merges_gaps() {
        let a: Rc<str> = Rc::from("a");
        let b: Rc<str> = Rc::from("b");
        let mut o = Outbound::new();
        let bound = 5 * 4;
        for s in 1..=3 {
            o.push_envelope(env(s), &a, s, bound).unwrap();
        }
        o.push_envelope(env(1), &b, 1, bound).unwrap();
        o.push_envelope(env(4), &a, 4, bound).unwrap();
        assert_eq!(o.push_envelope(env(5), &a, 5, bound), Err(Refused::Full));
        // Pretend the first frame is half written: it must survive.
        o.consume(2);
        let d = o.drop_topic(&a, Some(5)).unwrap();
        assert_eq!(d, Dropped { from: 2, to: 5, count: 4 });
        o.push_gap(frame(Op::Binary, b"gap"), &a, d.from, d.to);
        assert_eq!(o.len(), 3); // the rest of a:1, b:1, gap
        // A later overflow widens the queued gap instead of adding another.
        let d = o.drop_topic(&a, Some(9)).unwrap();
        assert_eq!(d, Dropped { from: 2, to: 9, count: 1 });
        assert_eq!(o.len(), 2);
        assert_eq!(o.queued_bytes(), 2 + 4);
        assert!(o.drop_topic(&Rc::from("a"), None).is_none(), "tags compare by identity");
    }

    #[test]
    fn close_discards_and_refuses_more() {
        let a: Rc<str> = Rc::from("a");
        let mut o = Outbound::new();
        o.push_envelope(env(1), &a, 1, 100).unwrap();
        o.push_envelope(env(2), &a, 2, 100).unwrap();
        o.close(close_frame(4000, "slow"), true);
        assert_eq!(o.len(), 1);
        assert_eq!(o.state(), State::Closing);
        assert_eq!(o.push_control(env(3), 100), Err(Refused::Closed));
        assert_eq!(o.push_envelope(env(3), &a, 3, 100), Err(Refused::Closed));
    }

    #[tokio::test]
    async fn writer_coalesces_and_stops_after_close() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let out = std::cell::RefCell::new(Outbound::new());
        let a: Rc<str> = Rc::from("a");
        for s in 1..=10 {
            out.borrow_mut().push_envelope(env(s), &a, s, 1000).unwrap();
        }
        out.borrow_mut().close(close_frame(1000, ""), false);
        let mut server = server;
        assert_eq!(write_loop(&out, &mut server).await.unwrap(), Finished::Closed);
        drop(server);
        let mut got = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut client, &mut got).await.unwrap();
        assert_eq!(got.len(), 10 * 4 + 4);
        assert_eq!(&got[36..40], &[0x82, 2, 0x91, 10]);
        assert_eq!(&got[40..], &[0x88, 2, 0x03, 0xe8]);
        assert_eq!(out.borrow().written, 44);
    }
}
