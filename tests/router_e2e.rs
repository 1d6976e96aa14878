//! The router as a user meets it: the real binary, real sockets, the local bus.
#![allow(clippy::unwrap_used)] // a test panics to report a failure

mod support;

use std::time::Duration;

use support::{Env, connect, envelope, expect_close, expect_error, next, subscribe_ok};
use switchboard::client::{Client, ConnectError, op};
use switchboard::wire::{ClientFrame, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn envelope_of(m: &switchboard::client::Message) -> (String, u64) {
    match m.frame() {
        Some(ServerFrame::Envelope(e)) => (e.topic.to_owned(), e.seq),
        other => panic!("expected an envelope, got {other:?}"),
    }
}

#[tokio::test]
async fn clients_get_only_their_topics_in_order_until_they_unsubscribe() {
    // One worker: a late subscriber's last_seq and the publish count are per worker.
    let env = Env::new().with("router", "workers = 1");
    let router = env.router();
    let addr = router.addr("router");
    let mut a = connect(addr).await;
    let mut b = connect(addr).await;
    assert_eq!(subscribe_ok(&mut a, 1, "post:1", &env.token(&["post:1"], 60)).await, None);
    assert_eq!(subscribe_ok(&mut b, 1, "post:2", &env.token(&["post:2", "user:7"], 60)).await, None);
    let mut p = env.publisher();
    let batch: Vec<_> = (1..=200)
        .flat_map(|s| [envelope("post:1", s, b"one"), envelope("post:2", s, b"two"), envelope("nobody", s, b"x")])
        .collect();
    p.publish(&batch).await.unwrap();
    for s in 1..=200 {
        assert_eq!(envelope_of(&next(&mut a).await), ("post:1".into(), s));
        assert_eq!(envelope_of(&next(&mut b).await), ("post:2".into(), s));
    }
    // A late subscriber learns the last seq forwarded here.
    let mut c = connect(addr).await;
    assert_eq!(subscribe_ok(&mut c, 9, "post:1", &env.token(&["post:1"], 60)).await, Some(200));

    a.send(&ClientFrame::Unsubscribe { id: 2, topic: "post:1" }).await.unwrap();
    assert!(matches!(next(&mut a).await.frame(), Some(ServerFrame::Ok { id: 2, last_seq: None })));
    a.send(&ClientFrame::Unsubscribe { id: 3, topic: "post:1" }).await.unwrap();
    assert_eq!(expect_error(&mut a).await, (3, "not_subscribed".into()));
    p.publish(&[envelope("post:1", 201, b"late")]).await.unwrap();
    assert_eq!(envelope_of(&next(&mut c).await), ("post:1".into(), 201));
    // `a` gets nothing more: its next frame is the pong to this ping.
    a.send(&ClientFrame::Ping { id: 4 }).await.unwrap();
    assert!(matches!(next(&mut a).await.frame(), Some(ServerFrame::Pong { id: 4 })));
}

#[tokio::test]
async fn pings_are_answered_and_close_is_echoed() {
    let env = Env::new();
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    c.send(&ClientFrame::Ping { id: 77 }).await.unwrap();
    assert!(matches!(next(&mut c).await.frame(), Some(ServerFrame::Pong { id: 77 })));
    c.send_raw(op::PING, true, b"hello").await.unwrap();
    let m = c.recv().await.unwrap();
    assert_eq!((m.op, m.payload.as_slice()), (op::PONG, &b"hello"[..]));
    c.close(1000).await.unwrap();
    assert_eq!(expect_close(&mut c).await, 1000);
    assert!(c.drain_to_eof().await.is_empty(), "the router closes the TCP connection after the close");
}

#[tokio::test]
async fn publish_cli_reaches_a_subscriber() {
    // One worker: a late subscriber's last_seq and the publish count are per worker.
    let env = Env::new().with("router", "workers = 1");
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    subscribe_ok(&mut c, 1, "post:42", &env.token(&["post:42"], 60)).await;
    let out = env.publish_cli("post:42", 5, r#"{"text":"hi"}"#);
    assert!(out.contains("to 1 local worker"), "{out}");
    match next(&mut c).await.frame() {
        Some(ServerFrame::Envelope(e)) => {
            assert_eq!((e.topic, e.seq, e.kind, e.payload), ("post:42", 5, "test.event", &br#"{"text":"hi"}"#[..]))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn subprotocol_is_echoed_only_when_offered() {
    let env = Env::new();
    let router = env.router();
    let addr = router.addr("router");
    let req = switchboard::client::request("x", "/ws", "Sec-WebSocket-Protocol: chat, switchboard.v1\r\n");
    let c = Client::connect_raw(tokio::net::TcpStream::connect(addr).await.unwrap(), &req).await.unwrap();
    assert!(c.response_head.to_ascii_lowercase().contains("sec-websocket-protocol: switchboard.v1"));
    assert!(
        c.response_head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
            || c.response_head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=")
    );
    let plain = connect(addr).await;
    assert!(!plain.response_head.to_ascii_lowercase().contains("sec-websocket-protocol"));
}

async fn refused(addr: std::net::SocketAddr, request: &str) -> (u16, String) {
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    match Client::connect_raw(s, request).await {
        Err(ConnectError::Refused(r)) => (r.status, r.body),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("upgrade accepted: {request}"),
    }
}

#[tokio::test]
async fn bad_handshakes_get_a_status_and_a_reason() {
    let env = Env::new().with("router", "handshake_timeout_secs = 1");
    let router = env.router();
    let addr = router.addr("router");
    let (s, body) = refused(addr, &switchboard::client::request("x", "/nope", "")).await;
    assert_eq!(s, 404, "{body}");
    let (s, body) = refused(addr, "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(s, 400);
    assert!(body.contains("not a WebSocket request"), "{body}");
    let v8 = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let (s, body) = refused(addr, v8).await;
    assert_eq!(s, 426, "RFC 6455 4.2.2: Upgrade Required");
    assert!(body.contains("version"), "{body}");
    let nokey =
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let (s, body) = refused(addr, nokey).await;
    assert_eq!(s, 400);
    assert!(body.contains("Sec-WebSocket-Key"), "{body}");
    let badkey = "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n";
    assert_eq!(refused(addr, badkey).await.0, 400);
    let post = "POST /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(refused(addr, post).await.0, 400);

    // A client that never finishes its request is cut after the handshake timeout.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "connection still open after the handshake timeout");

    // The router is still fine.
    let mut c = connect(addr).await;
    c.send(&ClientFrame::Ping { id: 1 }).await.unwrap();
    assert!(matches!(next(&mut c).await.frame(), Some(ServerFrame::Pong { id: 1 })));
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503() {
    // max_connections is per worker: one worker, so the third connection is the one refused.
    let env = Env::new().with("router", "max_connections = 2").with("router", "workers = 1");
    let router = env.router();
    let addr = router.addr("router");
    let a = connect(addr).await;
    let _b = connect(addr).await;
    let (s, body) = refused(addr, &switchboard::client::request("x", "/ws", "")).await;
    assert_eq!(s, 503, "{body}");
    drop(a);
    // The slot frees once the router has seen the disconnect.
    let mut ok = false;
    for _ in 0..100 {
        match Client::connect(addr, "/ws").await {
            Ok(_) => {
                ok = true;
                break;
            }
            Err(ConnectError::Refused(r)) if r.status == 503 => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(ok, "a freed slot is reused");
}

#[tokio::test]
async fn sigterm_drains_with_1001_and_exits_0_and_sighup_reloads() {
    use nix::sys::signal::Signal;
    let env = Env::new().with("router", "drain_window_secs = 1").with("router", "shutdown_grace_secs = 2");
    let mut router = env.router();
    let addr = router.addr("router");
    let mut c = connect(addr).await;
    subscribe_ok(&mut c, 1, "t", &env.token(&["t"], 60)).await;
    // SIGHUP with a config that no longer parses: logged, the old one kept, nobody dropped.
    let good = std::fs::read_to_string(env.config_path()).unwrap();
    // The supervisor checks the file and does not forward a broken one to the workers.
    std::fs::write(env.config_path(), "[router]\nbogus = 1\n").unwrap();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(router.pid() as i32), Signal::SIGHUP);
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !router.stderr().contains("config file is not usable") && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    std::fs::write(env.config_path(), good).unwrap();
    c.send(&ClientFrame::Ping { id: 2 }).await.unwrap();
    assert!(matches!(next(&mut c).await.frame(), Some(ServerFrame::Pong { id: 2 })));
    let waiter = tokio::task::spawn_blocking(move || {
        let code = router.signal_and_wait(Signal::SIGTERM, Duration::from_secs(10));
        (code, router.stderr())
    });
    assert_eq!(expect_close(&mut c).await, 1001);
    c.close(1001).await.unwrap();
    let (code, stderr) = waiter.await.unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("config file is not usable"), "the bad reload was logged: {stderr}");
}
