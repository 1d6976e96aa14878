//! Bad input through real sockets: every class gets its answer, other clients never notice.
#![allow(clippy::unwrap_used)] // a test panics to report a failure

mod support;

use std::time::Duration;

use support::{Env, connect, envelope, expect_close, expect_error, next, now_secs, subscribe_ok};
use switchboard::client::{Client, op};
use switchboard::wire::token::Claims;
use switchboard::wire::{ClientFrame, ServerFrame};

/// A client that must keep working while its neighbours misbehave.
async fn still_fine(c: &mut Client, id: u32) {
    c.send(&ClientFrame::Ping { id }).await.unwrap();
    match next(c).await.frame() {
        Some(ServerFrame::Pong { id: got }) if got == id => {}
        other => panic!("bystander got {other:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_are_errors_then_a_close() {
    let env = Env::new().with("router", "max_violations = 3").with("router", "max_frame_bytes = 1024");
    let router = env.router();
    let addr = router.addr("router");
    let mut bystander = connect(addr).await;
    subscribe_ok(&mut bystander, 1, "t", &env.token(&["t"], 60)).await;

    let mut c = connect(addr).await;
    c.send_raw(op::BINARY, true, &[0xc1]).await.unwrap();
    assert_eq!(expect_error(&mut c).await, (0, "bad_frame".into()));
    c.send_raw(op::BINARY, true, &[0x92, 0x09, 0x05]).await.unwrap();
    // The request id is echoed when the frame got that far.
    assert_eq!(expect_error(&mut c).await, (5, "unknown_frame".into()));
    c.send(&ClientFrame::Unsubscribe { id: 6, topic: "has space" }).await.unwrap();
    assert_eq!(expect_error(&mut c).await, (6, "bad_topic".into()));
    // Violations so far: 3 = the limit. The connection still works...
    still_fine(&mut c, 1).await;
    // ...until the next one.
    c.send_raw(op::BINARY, true, b"\x91").await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "bad_frame");
    assert_eq!(expect_close(&mut c).await, 1008);
    still_fine(&mut bystander, 2).await;
}

#[tokio::test]
async fn text_frames_are_refused_and_close_with_1007() {
    let env = Env::new().with("router", "max_violations = 1");
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    c.send_raw(op::TEXT, true, b"{\"subscribe\":1}").await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "text_not_supported");
    c.send_raw(op::TEXT, true, b"again").await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "text_not_supported");
    assert_eq!(expect_close(&mut c).await, 1007);
}

#[tokio::test]
async fn oversize_frames_close_with_1009() {
    let env = Env::new().with("router", "max_frame_bytes = 1024");
    let router = env.router();
    let addr = router.addr("router");
    let mut bystander = connect(addr).await;
    let mut c = connect(addr).await;
    // Exactly the limit is fine (and just malformed).
    c.send_raw(op::BINARY, true, &[0xc1; 1024]).await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "bad_frame");
    // One byte more: the router cannot skip a payload it will not read, so it closes.
    c.send_raw(op::BINARY, true, &vec![0x90; 1025]).await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "frame_too_large");
    assert_eq!(expect_close(&mut c).await, 1009);
    // A huge declared length allocates nothing: same answer, at once.
    let mut d = connect(addr).await;
    d.send_bytes(&[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4]).await.unwrap();
    assert_eq!(expect_error(&mut d).await.1, "frame_too_large");
    assert_eq!(expect_close(&mut d).await, 1009);
    still_fine(&mut bystander, 1).await;
}

#[tokio::test]
async fn fragmented_messages_are_refused_whole() {
    let env = Env::new()
        .with("router", "max_violations = 2")
        .with("router", "max_frame_bytes = 1024")
        .with("router", "client_frames_burst = 1000");
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    let ping = ClientFrame::Ping { id: 5 }.encode();
    // A fragmented (even valid) message: one error, its continuations are skipped.
    c.send_raw(op::BINARY, false, &ping[..1]).await.unwrap();
    c.send_raw(op::CONTINUATION, false, &ping[1..2]).await.unwrap();
    c.send_raw(op::CONTINUATION, true, &ping[2..]).await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "bad_frame");
    still_fine(&mut c, 6).await;
    // Endless fragments cost no memory: skipped as they come (control frames still answered).
    c.send_raw(op::BINARY, false, b"x").await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "bad_frame");
    for _ in 0..100 {
        c.send_raw(op::CONTINUATION, false, &[0u8; 1000]).await.unwrap();
    }
    c.send_raw(op::PING, true, b"mid").await.unwrap();
    let m = c.recv().await.unwrap();
    assert_eq!((m.op, m.payload.as_slice()), (op::PONG, &b"mid"[..]));
    c.send_raw(op::CONTINUATION, true, b"").await.unwrap();
    still_fine(&mut c, 7).await;
    // The third violation is one too many.
    c.send_raw(op::BINARY, false, b"x").await.unwrap();
    assert_eq!(expect_error(&mut c).await.1, "bad_frame");
    assert_eq!(expect_close(&mut c).await, 1008);
    // A continuation with no message is a protocol error (RFC 6455 5.4): closed with 1002.
    let mut d = connect(router.addr("router")).await;
    d.send_raw(op::CONTINUATION, true, b"y").await.unwrap();
    assert_eq!(expect_close(&mut d).await, 1002);
}

#[tokio::test]
async fn every_token_failure_has_its_code_and_the_connection_stays() {
    let env = Env::new()
        .with("tokens", "skew_secs = 0")
        .with("tokens", "max_ttl_secs = 600")
        .with("router", "max_frame_bytes = 65536");
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    let now = now_secs();
    let claims =
        Claims { kid: "test".into(), sub: "u".into(), topics: vec!["t".into()], iat: now, exp: now + 60, nbf: None };
    let other_key = switchboard::wire::SigningKeyFile::new("test", [9; 32]);
    let cases: Vec<(String, &str)> = vec![
        ("!!".into(), "token_malformed"),
        ("A".repeat(20_000), "token_too_large"),
        (env.token_with(Claims { kid: "nope".into(), ..claims.clone() }), "token_unknown_kid"),
        (switchboard::wire::token::mint(&claims, &other_key.key), "token_bad_signature"),
        (env.token_with(Claims { iat: now - 120, exp: now - 60, ..claims.clone() }), "token_expired"),
        (env.token_with(Claims { nbf: Some(now + 100), ..claims.clone() }), "token_not_yet_valid"),
        (env.token_with(Claims { exp: now + 601, ..claims.clone() }), "token_ttl_too_long"),
        (env.token_with(Claims { topics: vec!["other".into()], ..claims.clone() }), "topic_not_granted"),
    ];
    for (i, (token, code)) in cases.iter().enumerate() {
        c.subscribe(i as u32 + 10, "t", token).await.unwrap();
        assert_eq!(expect_error(&mut c).await, (i as u32 + 10, (*code).to_owned()), "case {code}");
    }
    // None of that was a protocol violation: the same connection subscribes fine.
    subscribe_ok(&mut c, 99, "t", &env.token_with(claims)).await;
}

#[tokio::test]
async fn subscriptions_beyond_the_limit_are_refused() {
    let env = Env::new().with("router", "max_subscriptions_per_connection = 2");
    let router = env.router();
    let mut c = connect(router.addr("router")).await;
    let token = env.token(&["a", "b", "c"], 60);
    subscribe_ok(&mut c, 1, "a", &token).await;
    subscribe_ok(&mut c, 2, "b", &token).await;
    c.subscribe(3, "c", &token).await.unwrap();
    assert_eq!(expect_error(&mut c).await, (3, "too_many_subscriptions".into()));
    // Renewing one at the limit is fine, and so is a new one after an unsubscribe.
    subscribe_ok(&mut c, 4, "b", &token).await;
    c.send(&ClientFrame::Unsubscribe { id: 5, topic: "a" }).await.unwrap();
    assert!(matches!(next(&mut c).await.frame(), Some(ServerFrame::Ok { id: 5, .. })));
    subscribe_ok(&mut c, 6, "c", &token).await;
}

#[tokio::test]
async fn a_frame_flood_is_rate_limited_then_closed() {
    let env = Env::new()
        .with("router", "client_frames_per_sec = 1")
        .with("router", "client_frames_burst = 5")
        .with("router", "max_violations = 3");
    let router = env.router();
    let addr = router.addr("router");
    let mut bystander = connect(addr).await;
    let mut c = connect(addr).await;
    for i in 0..20 {
        // The router may close mid-flood: later writes may fail, which is the point.
        if c.send(&ClientFrame::Ping { id: i }).await.is_err() {
            break;
        }
    }
    let mut pongs = 0;
    let mut limited = 0;
    let code = loop {
        let m = next(&mut c).await;
        match m.frame() {
            Some(ServerFrame::Pong { .. }) => pongs += 1,
            Some(ServerFrame::Error { code: "rate_limited", .. }) => limited += 1,
            _ if m.op == op::CLOSE => break m.close_code(),
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((pongs, limited, code), (5, 4, Some(1008)));
    // WebSocket pings count too.
    let mut d = connect(addr).await;
    for _ in 0..20 {
        if d.send_raw(op::PING, true, b"").await.is_err() {
            break;
        }
    }
    assert_eq!(expect_close(&mut d).await, 1008);
    still_fine(&mut bystander, 1).await;
}

#[tokio::test]
async fn a_client_that_never_reads_gets_a_gap_and_memory_stays_bounded() {
    let env = Env::new().with("router", "outbound_queue_bytes = 65536");
    let router = env.router();
    let addr = router.addr("router");
    let token = env.token(&["big", "small"], 60);
    let mut slow = connect(addr).await;
    subscribe_ok(&mut slow, 1, "big", &token).await;
    let mut healthy = connect(addr).await;
    subscribe_ok(&mut healthy, 1, "small", &token).await;
    let rss_before = router.rss_kib();
    let mut p = env.publisher();
    let payload = vec![7u8; 32 * 1024];
    let n = 1500u64; // ~48 MiB for a client that reads nothing
    for s in 1..=n {
        p.publish(&[envelope("big", s, &payload), envelope("small", s, b"s")]).await.unwrap();
        if s % 100 == 0 {
            // The healthy client keeps up as it goes.
            for k in s - 99..=s {
                match next(&mut healthy).await.frame() {
                    Some(ServerFrame::Envelope(e)) => assert_eq!(e.seq, k),
                    other => panic!("healthy client got {other:?}"),
                }
            }
        }
    }
    let grown = router.rss_kib().saturating_sub(rss_before);
    assert!(grown < 20 * 1024, "RSS grew {grown} KiB for a client that does not read");
    // Now read: every seq is either delivered or inside a gap, in order.
    let mut expect = 1u64;
    let mut gaps = 0;
    while expect <= n {
        let m = tokio::time::timeout(Duration::from_secs(10), slow.next()).await.expect("in time").expect("frame");
        match m.frame() {
            Some(ServerFrame::Envelope(e)) => {
                assert_eq!(e.seq, expect);
                expect += 1;
            }
            Some(ServerFrame::Gap { topic, from_seq, to_seq }) => {
                assert_eq!((topic, from_seq), ("big", expect), "gap starts where delivery stopped");
                assert!(to_seq >= from_seq);
                expect = to_seq + 1;
                gaps += 1;
            }
            other => panic!("slow client got {other:?}"),
        }
    }
    assert!(gaps >= 1, "no gap although the client read nothing for {n} envelopes");
}

#[tokio::test]
async fn slow_consumer_close_policy_closes_with_4000() {
    let env = Env::new().with("router", "outbound_queue_bytes = 65536").with("router", "slow_consumer = \"close\"");
    let router = env.router();
    let addr = router.addr("router");
    let token = env.token(&["big"], 60);
    let mut slow = connect(addr).await;
    subscribe_ok(&mut slow, 1, "big", &token).await;
    let mut p = env.publisher();
    let payload = vec![7u8; 32 * 1024];
    for s in 1..=1000 {
        p.publish(&[envelope("big", s, &payload)]).await.unwrap();
    }
    assert_eq!(expect_close(&mut slow).await, 4000);
}
