//! Abuse against a running router and journal, each case checked for a clear answer AND for
//! no harm: a canary client keeps receiving every envelope (in order) throughout and answers
//! pings, and the router's resident memory stays bounded.
//!
//! Cases already covered on their own elsewhere, not repeated here beyond what the no-harm
//! check needs: every token failure code (router_bad_input.rs
//! `every_token_failure_has_its_code_and_the_connection_stays`), malformed / text / oversize
//! / fragmented frames (router_bad_input.rs), frame and subscribe floods
//! (`a_frame_flood_is_rate_limited_then_closed`), slow consumers (`a_client_that_never_reads_*`),
//! 503 beyond max_connections (router_e2e.rs `connections_beyond_the_limit_get_503`), journal
//! token and path errors (journal_http.rs `journal_http_reconcile_errors`).
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::{Env, connect, envelope, expect_error, next, now_secs, subscribe_ok};
use switchboard::client::verifying::http;
use switchboard::client::{Client, op};
use switchboard::wire::token::Claims;
use switchboard::wire::{ClientFrame, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CREDENTIAL: &str = "abuse-credential-0123456789";

/// Resident memory of the router: the supervisor and its children, in KiB.
fn router_rss(pid: u32) -> u64 {
    let mut total = support::rss_kib(pid);
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let ppid = stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(pid) {
            total += support::rss_kib(p);
        }
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abuse_gets_clear_answers_and_the_canary_never_notices() {
    let env = Env::new()
        .with("router", "workers = 2")
        .with("router", "handshake_timeout_secs = 2")
        .with("router", "max_frame_bytes = 65536")
        .with("journal", &format!("app_credentials = [{CREDENTIAL:?}]"));
    let router = env.router();
    let journal = support::Process::start(&["journal", "--config", &env.config_path().to_string_lossy()], env.path());
    let (raddr, jaddr) = (router.addr("router"), journal.addr("journal"));

    // The canary: subscribed to "canary", fed one envelope every 5 ms over the local bus.
    let mut canary = connect(raddr).await;
    let ctoken = env.token(&["canary"], 600);
    subscribe_ok(&mut canary, 1, "canary", &ctoken).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let feeder = {
        let (stop, sent, mut p) = (stop.clone(), sent.clone(), env.publisher());
        tokio::spawn(async move {
            let mut s = 0;
            while !stop.load(Ordering::SeqCst) {
                s += 1;
                p.publish(&[envelope("canary", s, b"c")]).await.unwrap();
                sent.store(s, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let got = Arc::new(AtomicU64::new(0));
    let reader = {
        let got = got.clone();
        tokio::spawn(async move {
            loop {
                let m = tokio::time::timeout(Duration::from_secs(10), canary.next())
                    .await
                    .expect("canary starved")
                    .unwrap();
                if let Some(ServerFrame::Envelope(e)) = m.frame() {
                    let want = got.load(Ordering::SeqCst) + 1;
                    assert_eq!(e.seq, want, "the canary missed or repeated an envelope");
                    got.store(e.seq, Ordering::SeqCst);
                } else if m.op == op::CLOSE {
                    return canary;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = router_rss(router.pid());

    // 1. Tokens on subscribe: each gets its error frame, the connection stays.
    let now = now_secs();
    let claims =
        Claims { kid: "test".into(), sub: "u".into(), topics: vec!["t".into()], iat: now, exp: now + 60, nbf: None };
    let other = switchboard::wire::SigningKeyFile::new("test", [9; 32]);
    let tokens: Vec<(&str, String, &str, u16)> = vec![
        ("garbage", "!!garbage~".into(), "token_malformed", 401),
        ("oversize", "A".repeat(20_000), "token_too_large", 401),
        ("wrong kid", env.token_with(Claims { kid: "nope".into(), ..claims.clone() }), "token_unknown_kid", 401),
        ("forged", switchboard::wire::token::mint(&claims, &other.key), "token_bad_signature", 401),
        ("expired", env.token_with(Claims { iat: now - 120, exp: now - 60, ..claims.clone() }), "token_expired", 401),
        (
            "wrong topic",
            env.token_with(Claims { topics: vec!["other".into()], ..claims.clone() }),
            "topic_not_granted",
            403,
        ),
    ];
    let mut c = connect(raddr).await;
    for (i, (name, tok, code, status)) in tokens.iter().enumerate() {
        c.subscribe(i as u32 + 10, "t", tok).await.unwrap();
        assert_eq!(expect_error(&mut c).await, (i as u32 + 10, (*code).to_owned()), "subscribe, {name}");
        // The same token against the journal's reconciliation read.
        let (st, body) =
            http(jaddr, "GET", "/v1/topics/t/envelopes?after=0", &[("Authorization", &format!("Bearer {tok}"))], b"")
                .await
                .unwrap();
        let body = String::from_utf8_lossy(&body);
        assert_eq!(st, *status, "reconcile, {name}: {body}");
        if *name != "oversize" {
            assert!(body.contains(code), "reconcile, {name}: {body}");
        }
        println!("abuse: token {name}: subscribe -> error {code}; reconcile -> HTTP {st}");
    }

    // 2. Topics at and beyond the limit, and invalid UTF-8.
    let at = "t".repeat(200);
    let beyond = "t".repeat(201);
    let tok = env.token(&[&at, "zz"], 600);
    subscribe_ok(&mut c, 30, &at, &tok).await;
    c.subscribe(31, &beyond, &tok).await.unwrap();
    let (id, code) = expect_error(&mut c).await;
    assert_eq!(id, 31);
    println!("abuse: topic of 200 bytes -> ok; 201 bytes -> error {code}");
    let mut raw = ClientFrame::Subscribe { id: 32, topic: "zz", token: &tok }.encode();
    let at_zz = raw.windows(2).position(|w| w == b"zz").unwrap();
    raw[at_zz..at_zz + 2].copy_from_slice(&[0xff, 0xfe]);
    c.send_raw(op::BINARY, true, &raw).await.unwrap();
    let m = next(&mut c).await;
    let answer = match m.frame() {
        Some(ServerFrame::Error { code, .. }) => format!("error {code}"),
        _ if m.op == op::CLOSE => format!("close {:?}", m.close_code()),
        other => panic!("invalid UTF-8 topic: {other:?}"),
    };
    println!("abuse: topic with invalid UTF-8 -> {answer}");
    // Journal: path tricks not already in journal_http.rs.
    let jt = env.token(&["t"], 600);
    // Decoded once only: %252e%252e is the topic "%2e%2e", which the token does not grant.
    for (p, want) in [
        ("/v1/topics/%00/envelopes", 400),
        ("/v1/topics/a%00b/envelopes", 400),
        ("/v1/topics/..%2F..%2Fetc/envelopes", 400),
        ("/v1/topics/%252e%252e/envelopes", 403),
    ] {
        let (st, body) = http(jaddr, "GET", p, &[("Authorization", &format!("Bearer {jt}"))], b"").await.unwrap();
        assert_eq!(st, want, "{p}: {}", String::from_utf8_lossy(&body));
        println!(
            "abuse: journal GET {p} -> {st} {}",
            String::from_utf8_lossy(&body).chars().take(60).collect::<String>()
        );
    }
    let overlong = format!("/v1/topics/{}/envelopes", "a".repeat(100_000));
    let (st, _) =
        http(jaddr, "GET", &overlong, &[("Authorization", &format!("Bearer {jt}"))], b"").await.unwrap_or((0, vec![]));
    assert!(st == 400 || st == 414 || st == 431 || st == 0, "overlong path: {st}");
    println!("abuse: journal GET with a 100 kB path -> {st} (0 = connection closed)");

    // 3. Slowloris: 100 handshakes that never finish are closed after handshake_timeout.
    let mut lazy = Vec::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(raddr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n").await.unwrap();
        lazy.push(s);
    }
    let t0 = std::time::Instant::now();
    for mut s in lazy {
        let mut b = [0u8; 512];
        let r = tokio::time::timeout(Duration::from_secs(8), async {
            loop {
                match s.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(r.is_ok(), "a half-open handshake was not closed");
    }
    println!("abuse: 100 slowloris handshakes closed within {:?}", t0.elapsed());

    // 4. 500 idle, unauthenticated, upgraded connections.
    let mut idle = Vec::new();
    for _ in 0..500 {
        match Client::connect(raddr, "/ws").await {
            Ok(c) => idle.push(c),
            Err(e) => panic!("idle connection {}: {e}", idle.len()),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = router_rss(router.pid());
    println!("abuse: 500 idle connections held; router RSS {rss0} -> {rss1} KiB");
    drop(idle);

    // No harm: the canary got everything sent so far, in order, and the abuser's
    // connection still works.
    c.send(&ClientFrame::Ping { id: 77 }).await.ok();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    feeder.await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while got.load(Ordering::SeqCst) < sent.load(Ordering::SeqCst) && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(got.load(Ordering::SeqCst), sent.load(Ordering::SeqCst), "the canary missed envelopes");
    assert!(!reader.is_finished(), "the canary was closed");
    reader.abort();
    let rss2 = router_rss(router.pid());
    println!("abuse: canary received all {} envelopes; router RSS at the end {rss2} KiB", sent.load(Ordering::SeqCst));
    assert!(rss2 < rss0 + 128 * 1024, "router RSS grew from {rss0} to {rss2} KiB");
}
