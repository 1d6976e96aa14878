//! An echo server on the router's own connection layer, for the Autobahn conformance suite.
//!
//! Same accept loop, same handshake checks and 101, same reader task with the same limits
//! code, same outbound queue and `writev` writer as `switchboard router`: only the session
//! differs (it echoes every message instead of speaking the frame protocol), and the limits
//! are opened up where the suite needs it (text and fragmented messages allowed, 16 MiB
//! messages, no rate limit). `scripts/autobahn.sh` runs the suite against it.
//!
//!     cargo run --release --example echo -- 127.0.0.1:9001

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use switchboard::router::outbound::{self, Op};
use switchboard::router::socket::{self, Conn, Limits, Violation};
use switchboard::router::upgrade::{self, Endpoint, Refusal};

const LIMITS: Limits = Limits {
    max_message_bytes: 16 << 20,
    fragments: true,
    text: true,
    frames_per_sec: u32::MAX,
    burst: u32::MAX,
    max_violations: 0,
    control_queue_bytes: 256 << 20,
};

struct Echo {
    next_id: Cell<u32>,
}

struct EchoSession {
    conn: Conn,
}

impl Endpoint for Echo {
    type Session = EchoSession;

    fn is_path(&self, _path: &str) -> bool {
        true
    }

    fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(5)
    }

    fn protocol(&self) -> Option<&'static str> {
        None
    }

    fn open(self: &Rc<Self>) -> Result<Rc<EchoSession>, Refusal> {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1));
        Ok(Rc::new(EchoSession { conn: Conn::new(id) }))
    }
}

impl socket::Session for EchoSession {
    fn conn(&self) -> &Conn {
        &self.conn
    }

    fn limits(&self) -> Limits {
        LIMITS
    }

    async fn on_message(&self, text: bool, payload: &[u8]) -> Result<(), Violation> {
        let op = if text { Op::Text } else { Op::Binary };
        self.conn.send_control(outbound::frame(op, payload), LIMITS.control_queue_bytes);
        Ok(())
    }

    fn error_frame(&self, _v: &Violation) -> Option<Bytes> {
        None
    }

    fn on_end(&self) {}
}

fn main() -> std::io::Result<()> {
    switchboard::telemetry::init_logs();
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".into());
    let addr = addr.parse().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(switchboard::router::listener::bind(addr)?)?;
        println!("ready echo={}", listener.local_addr()?);
        upgrade::accept_loop(listener, Rc::new(Echo { next_id: Cell::new(0) })).await;
        Ok(())
    })
}
