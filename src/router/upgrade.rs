//! The HTTP side of a connection: accept, read the request, check it, answer 101 (or why not).
//!
//! hyper 1 serves the request (with `header_read_timeout` as the handshake timeout, which only
//! works with a timer set); the checks of RFC 6455 section 4.2.1 are done here, so that each
//! refusal has a status and a reason in its body: wrong path 404, a WebSocket version other
//! than 13 426 (with `Sec-WebSocket-Version: 13`), anything else that is not a well-formed
//! upgrade 400, a full worker 503. The 101 is built here too (instead
//! of `fastwebsockets::upgrade::upgrade`) because the upgraded connection is then downcast
//! back to the `TcpStream` it came from: the session gets owned halves with no lock and no
//! boxed I/O between it and the socket (tech-notes section 1, "zero-lock split").

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use sha1::{Digest, Sha1};
use tokio::net::{TcpListener, TcpStream};

use super::socket::{self, Session, Transport};

/// The subprotocol the router speaks; echoed only when the client offers it.
pub const PROTOCOL: &str = "switchboard.v1";

/// RFC 6455 section 1.3: the accept key is SHA-1 of the client's key and this GUID.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Why an upgrade was not accepted (503).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The worker is at `max_connections`.
    Full,
    /// The worker is draining.
    Draining,
}

/// What the HTTP side needs from whoever owns the connections (the worker, or the echo).
pub trait Endpoint: 'static {
    type Session: Session;
    /// Whether `path` is the WebSocket endpoint.
    fn is_path(&self, path: &str) -> bool;
    /// Seconds a client has to send its request headers.
    fn handshake_timeout(&self) -> Duration;
    /// The subprotocol to accept when offered.
    fn protocol(&self) -> Option<&'static str>;
    /// Admits one more connection and creates its session (before the 101 is sent).
    fn open(self: &Rc<Self>) -> Result<Rc<Self::Session>, Refusal>;
    /// The TLS acceptor for new connections (wss://), if TLS is configured: asked once per
    /// accepted connection, so a reload reaches the next one.
    fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        None
    }
}

/// Connections accepted in a row before the accept loop lets the other tasks run.
pub const ACCEPT_BATCH: usize = 1024;

/// Accepts connections until the task is dropped (which closes the listener).
///
/// Accepting is exempt from tokio's cooperative budget (128 operations per poll): in a
/// reconnect storm the run queue holds a writer task for every live connection, and with the
/// budget the loop took 128 connections per round of that queue, so a worker left 3,800
/// handshakes waiting in its accept queue at half a core of CPU (bench/RESULTS.md, "storm").
/// It yields after [`ACCEPT_BATCH`] instead, so deliveries still go on during a storm.
pub async fn accept_loop<E: Endpoint>(listener: TcpListener, ep: Rc<E>) {
    let mut in_a_row = 0;
    loop {
        if in_a_row == ACCEPT_BATCH {
            in_a_row = 0;
            tokio::task::yield_now().await;
        }
        in_a_row += 1;
        match tokio::task::unconstrained(listener.accept()).await {
            Ok((tcp, _peer)) => {
                // Frames are coalesced by the writer already; Nagle would only add latency.
                let _ = tcp.set_nodelay(true);
                match ep.tls() {
                    None => {
                        tokio::task::spawn_local(serve_http(ep.clone(), tcp));
                    }
                    Some(acceptor) => {
                        tokio::task::spawn_local(serve_tls(ep.clone(), acceptor, tcp));
                    }
                }
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning on a full fd table.
                tracing::warn!(error = %e, "accept failed");
                metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "accept_error").increment(1);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS handshake (within the handshake timeout), then HTTP over it.
async fn serve_tls<E: Endpoint>(ep: Rc<E>, acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream) {
    match tokio::time::timeout(ep.handshake_timeout(), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => serve_http(ep, tls).await,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "tls_handshake").increment(1);
        }
        Err(_) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => "tls_handshake").increment(1);
        }
    }
}

/// Serves HTTP on one connection (TCP or TLS) until it is upgraded or closed.
pub async fn serve_http<E: Endpoint, T: Transport>(ep: Rc<E>, io: T) {
    let timeout = ep.handshake_timeout();
    let service = hyper::service::service_fn(move |req| {
        let ep = ep.clone();
        async move { Ok::<_, Infallible>(respond::<E, T>(&ep, req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(timeout)
        // One request per connection: a refused client reconnects, an accepted one upgrades.
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    // A timeout or a malformed request ends here; hyper has answered or dropped it.
    let _ = conn.await;
}

fn plain(status: StatusCode, reason: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{reason}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn refuse(status: StatusCode, reason: &'static str, label: &'static str) -> Response<Full<Bytes>> {
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED, "reason" => label).increment(1);
    plain(status, reason)
}

/// Whether a comma-separated header contains `token` (case-insensitive).
fn has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The `Sec-WebSocket-Accept` value for a client key.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    STANDARD.encode(h.finalize())
}

fn respond<E: Endpoint, T: Transport>(ep: &Rc<E>, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    if !ep.is_path(req.uri().path()) {
        return refuse(StatusCode::NOT_FOUND, "not found: the WebSocket endpoint is elsewhere", "not_found");
    }
    if req.method() != hyper::Method::GET {
        return refuse(StatusCode::BAD_REQUEST, "a WebSocket upgrade must be a GET request", "not_websocket");
    }
    if !has_token(&req, header::CONNECTION, "upgrade") || !has_token(&req, header::UPGRADE, "websocket") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "not a WebSocket request: expected Connection: Upgrade and Upgrade: websocket",
            "not_websocket",
        );
    }
    if req.headers().get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        // RFC 6455 section 4.2.2: 426 with the versions this server speaks.
        let mut r =
            refuse(StatusCode::UPGRADE_REQUIRED, "unsupported WebSocket version: only 13 is spoken", "bad_version");
        r.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        return r;
    }
    let key = match req.headers().get(header::SEC_WEBSOCKET_KEY) {
        Some(k) if STANDARD.decode(k.as_bytes()).is_ok_and(|b| b.len() == 16) => k.as_bytes().to_vec(),
        Some(_) => {
            return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key must be 16 bytes in base64", "bad_key");
        }
        None => return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing", "bad_key"),
    };
    let protocol =
        ep.protocol().filter(|p| req.headers().get_all(header::SEC_WEBSOCKET_PROTOCOL).iter().any(|v| has_value(v, p)));
    let session = match ep.open() {
        Ok(s) => s,
        Err(Refusal::Full) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "this server is at its connection limit", "full");
        }
        Err(Refusal::Draining) => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "this server is shutting down", "draining");
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = tracing::debug_span!("conn", id = session.conn().id);
    let task = async move {
        let guard = socket::EndGuard(session);
        let Ok(upgraded) = on_upgrade.await else { return };
        match upgraded.downcast::<TokioIo<T>>() {
            Ok(parts) => {
                let session = guard.0.clone();
                // `run` takes over the end-of-connection duty.
                std::mem::forget(guard);
                socket::run(session, parts.io.into_inner(), parts.read_buf).await;
            }
            Err(_) => tracing::error!("upgraded connection is not the stream it was accepted as"),
        }
    };
    tokio::task::spawn_local(tracing::Instrument::instrument(task, span));
    metrics::counter!(crate::metrics::CONNECTIONS_ACCEPTED).increment(1);
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept_key(&key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = protocol {
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
    }
    r
}

fn has_value(v: &HeaderValue, want: &str) -> bool {
    v.to_str().is_ok_and(|s| s.split(',').any(|t| t.trim() == want))
}

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }
}
