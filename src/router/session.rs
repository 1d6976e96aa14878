//! One client's session in the frame protocol: its requests, and the slow-consumer policy.
//!
//! The connection layer ([`super::socket`]) hands complete binary messages here; this file
//! decodes them as `wire::ClientFrame`s and answers subscribe, unsubscribe and ping, with the
//! worker's ledger and verifier doing the work. Malformed frames come back as violations
//! (error frame, then a close past `max_violations`); token failures and limits are answered
//! with their own error codes and leave the connection usable.
//!
//! Slow consumers ([`deliver`]): an envelope that does not fit in the connection's outbound
//! queue (bounded in bytes) is not queued. Under `slow_consumer = "gap"` every envelope of
//! that topic still waiting is dropped as well and one `gap` frame names the seq range lost
//! (merged with a gap still queued for the topic), so the client reconciles just that topic
//! through the journal; under `"close"` the connection is closed with 4000 and its queue
//! discarded. Both are counted.

use std::rc::{Rc, Weak};

use bytes::Bytes;

use super::outbound::{self, Op, Refused};
use super::socket::{self, Conn, Limits, Violation};
use super::worker::Worker;
use crate::config::SlowConsumerPolicy;
use crate::wire::frame::FrameError;
use crate::wire::msgpack::DecodeError;
use crate::wire::token::TokenError;
use crate::wire::{ClientFrame, CloseCode, ServerFrame};

/// Extra room for answers on top of `outbound_queue_bytes`, so a client whose queue is full
/// of envelopes still gets its ok/error/pong frames.
pub const CONTROL_HEADROOM_BYTES: usize = 16 * 1024;

/// A frame of the protocol, as a complete WebSocket binary frame.
pub fn server_frame(f: &ServerFrame<'_>) -> Bytes {
    outbound::frame(Op::Binary, &f.encode())
}

/// One connected client.
pub struct Session {
    pub conn: Conn,
    /// The worker owns the session; a weak link avoids a cycle through its slab.
    worker: Weak<Worker>,
}

impl Session {
    pub fn new(conn: Conn, worker: Weak<Worker>) -> Self {
        Self { conn, worker }
    }

    /// Queues an answer (see [`Conn::send_control`]).
    pub fn send(&self, f: &ServerFrame<'_>, bound: usize) -> bool {
        self.conn.send_control(server_frame(f), bound)
    }

    pub fn send_error(&self, id: u32, code: &str, message: &str, bound: usize) {
        self.send(&ServerFrame::Error { id, code, message }, bound);
    }
}

/// A frame decoding failure as a violation, with the close code that fits.
fn frame_violation(e: &FrameError) -> Violation {
    Violation::new(e.code(), CloseCode::POLICY, e.to_string())
}

impl socket::Session for Session {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    fn limits(&self) -> Limits {
        match self.worker.upgrade() {
            Some(w) => w.limits(),
            // The worker is gone (shutdown): the tightest limits until the socket is dropped.
            None => Limits {
                max_message_bytes: 256,
                fragments: false,
                text: false,
                frames_per_sec: 1,
                burst: 1,
                max_violations: 0,
                control_queue_bytes: 4096,
            },
        }
    }

    async fn on_message(&self, _text: bool, payload: &[u8]) -> Result<(), Violation> {
        let Some(w) = self.worker.upgrade() else { return Ok(()) };
        let decoded = ClientFrame::decode(payload);
        if let Err(FrameError::Decode(DecodeError::TooLong { what: "token", len, max })) = &decoded {
            // A token over the contract's size is a token failure, not a protocol violation.
            let e = TokenError::TooLarge { len: *len, max: *max };
            metrics::counter!(crate::metrics::TOKEN_REJECTIONS, "reason" => e.code()).increment(1);
            let id = request_id(payload).unwrap_or(0);
            self.send_error(id, e.code(), &e.to_string(), w.limits().control_queue_bytes);
            return Ok(());
        }
        let frame = decoded.map_err(|e| {
            let mut v = frame_violation(&e);
            // Answer with the request id when the frame got far enough to have one.
            if let Some(id) = request_id(payload) {
                v.id = id;
            }
            v
        })?;
        match frame {
            ClientFrame::Subscribe { id, topic, token } => w.subscribe(self, id, topic, token).await,
            ClientFrame::Unsubscribe { id, topic } => w.unsubscribe(self, id, topic),
            ClientFrame::Ping { id } => {
                self.send(&ServerFrame::Pong { id }, w.limits().control_queue_bytes);
            }
        }
        Ok(())
    }

    fn error_frame(&self, v: &Violation) -> Option<Bytes> {
        Some(server_frame(&ServerFrame::Error { id: v.id, code: v.code.as_str(), message: &v.message }))
    }

    fn on_end(&self) {
        if let Some(w) = self.worker.upgrade() {
            w.remove(self.conn.id);
        }
    }
}

/// The request id of a frame that failed to decode, if its first two elements are readable.
fn request_id(payload: &[u8]) -> Option<u32> {
    let mut r = crate::wire::msgpack::Reader::new(payload);
    let n = r.array_len().ok()?;
    if n < 2 {
        return None;
    }
    r.u64().ok()?;
    r.u32().ok()
}

/// What happened to one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Did not fit: this many envelopes dropped (the new one included) and a gap queued.
    Gapped(u64),
    /// Did not fit: the connection is being closed (policy "close").
    Closed,
    /// The connection is closing anyway.
    Skipped,
}

/// Queues `frame` (an envelope of `topic`, `seq`) for `conn`, applying the slow-consumer
/// policy when its queue is over `bound` bytes.
pub fn deliver(
    conn: &Conn,
    topic: &Rc<str>,
    seq: u64,
    frame: &Bytes,
    bound: usize,
    policy: SlowConsumerPolicy,
) -> Delivery {
    let mut out = conn.out.borrow_mut();
    match out.push_envelope(frame.clone(), topic, seq, bound) {
        Ok(()) => Delivery::Queued,
        Err(Refused::Closed) => Delivery::Skipped,
        Err(Refused::Full) => match policy {
            SlowConsumerPolicy::Close => {
                out.close(outbound::close_frame(CloseCode::SLOW_CONSUMER, "slow consumer"), true);
                Delivery::Closed
            }
            SlowConsumerPolicy::Gap => {
                let Some(d) = out.drop_topic(topic, Some(seq)) else { return Delivery::Skipped };
                let gap = server_frame(&ServerFrame::Gap { topic, from_seq: d.from, to_seq: d.to });
                out.push_gap(gap, topic, d.from, d.to);
                Delivery::Gapped(d.count)
            }
        },
    }
}
