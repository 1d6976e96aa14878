//! A worker driven in-process: the bus driven by hand, paused clocks, and `Control`.
#![allow(clippy::unwrap_used)] // a test panics to report a failure

mod support;

use std::time::Duration;

use support::{Env, connect, envelope, expect_close, expect_error, next, subscribe_ok};
use switchboard::client::op;
use switchboard::router::worker::{Control, Exit};
use switchboard::wire::{ClientFrame, KeySet, ServerFrame, SigningKeyFile};
use tokio::task::LocalSet;

#[tokio::test(flavor = "current_thread")]
async fn bus_down_then_up_sends_resync_with_each_clients_topics() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new()
                .with("router", "max_subscriptions_per_connection = 300")
                .with("router", "client_frames_burst = 1000");
            let (running, _tx, _rx) = support::inproc::start(&env).await;
            let addr = running.local_addr();
            let mut a = connect(addr).await;
            let mut b = connect(addr).await;
            // 300 topics: more than one resync frame holds (256).
            let topics: Vec<String> = (0..300).map(|i| format!("t:{i}")).collect();
            for (chunk_no, chunk) in topics.chunks(60).enumerate() {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                let token = env.token(&refs, 60);
                for (i, t) in refs.iter().enumerate() {
                    subscribe_ok(&mut a, (chunk_no * 100 + i) as u32, t, &token).await;
                }
            }
            subscribe_ok(&mut b, 1, "t:5", &env.token(&["t:5"], 60)).await;
            let ingress = running.ingress();
            // Up without a prior down (the consumer starting) sends nothing.
            ingress.bus_state(true);
            ingress.bus_state(false);
            ingress.bus_state(true);
            let mut got: Vec<String> = Vec::new();
            let mut frames = 0;
            while got.len() < 300 {
                match next(&mut a).await.frame() {
                    Some(ServerFrame::Resync { topics }) => {
                        assert!(topics.len() <= 256);
                        frames += 1;
                        got.extend(topics.iter().map(|t| t.to_string()));
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(frames, 2);
            got.sort();
            let mut want = topics.clone();
            want.sort();
            assert_eq!(got, want);
            match next(&mut b).await.frame() {
                Some(ServerFrame::Resync { topics }) => assert_eq!(topics, ["t:5"]),
                other => panic!("{other:?}"),
            }
            // Routing carries on after the resync.
            ingress.deliver("t:5", 1, envelope("t:5", 1, b"x").frame);
            assert!(matches!(next(&mut b).await.frame(), Some(ServerFrame::Envelope(e)) if e.seq == 1));
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn silent_clients_are_pinged_then_closed_with_4001() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new().with("router", "ping_interval_secs = 15").with("router", "idle_timeout_secs = 45");
            let (running, _tx, _rx) = support::inproc::start(&env).await;
            let addr = running.local_addr();
            let mut silent = connect(addr).await;
            let mut alive = connect(addr).await;
            tokio::time::pause();
            let started = tokio::time::Instant::now();
            // The live client answers pings (Client::next does) from its own task.
            let keeper = tokio::task::spawn_local(async move {
                let mut pings_seen = 0;
                while tokio::time::Instant::now() < started + Duration::from_secs(100) {
                    match tokio::time::timeout(Duration::from_secs(20), alive.recv()).await {
                        Ok(Ok(m)) if m.op == op::PING => {
                            pings_seen += 1;
                            alive.send_raw(op::PONG, true, &m.payload).await.unwrap();
                        }
                        Ok(Ok(m)) => panic!("live client got {m:?}"),
                        Ok(Err(e)) => panic!("live client lost its connection: {e}"),
                        Err(_) => {}
                    }
                }
                (alive, pings_seen)
            });
            let mut pings = 0;
            let code = loop {
                let m = silent.recv().await.unwrap();
                match m.op {
                    op::PING => pings += 1, // and no pong: silence
                    op::CLOSE => break m.close_code(),
                    _ => panic!("{m:?}"),
                }
            };
            let waited = started.elapsed();
            assert_eq!(code, Some(4001));
            assert!(pings >= 2, "pinged {pings} times");
            assert!(waited >= Duration::from_secs(45) && waited < Duration::from_secs(48), "closed after {waited:?}");
            let (mut alive, pings_seen) = keeper.await.unwrap();
            assert!(pings_seen >= 5, "live client saw {pings_seen} pings in 100 s");
            alive.send(&ClientFrame::Ping { id: 3 }).await.unwrap();
            assert!(matches!(next(&mut alive).await.frame(), Some(ServerFrame::Pong { id: 3 })));
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_subscription_ends_when_its_token_expires() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new().with("tokens", "skew_secs = 0");
            let (running, _tx, _rx) = support::inproc::start(&env).await;
            let mut c = connect(running.local_addr()).await;
            subscribe_ok(&mut c, 1, "short", &env.token(&["short"], 3)).await;
            subscribe_ok(&mut c, 2, "long", &env.token(&["long"], 600)).await;
            tokio::time::pause();
            let started = tokio::time::Instant::now();
            match next(&mut c).await.frame() {
                Some(ServerFrame::Unsubscribed { topic, code }) => {
                    assert_eq!((topic, code), ("short", "token_expired"))
                }
                other => panic!("{other:?}"),
            }
            assert!(started.elapsed() <= Duration::from_secs(5), "expired after {:?}", started.elapsed());
            let ingress = running.ingress();
            ingress.deliver("short", 1, envelope("short", 1, b"x").frame);
            ingress.deliver("long", 1, envelope("long", 1, b"y").frame);
            match next(&mut c).await.frame() {
                Some(ServerFrame::Envelope(e)) => assert_eq!(e.topic, "long"),
                other => panic!("{other:?}"),
            }
            // Unsubscribing an expired topic: it is gone already.
            c.send(&ClientFrame::Unsubscribe { id: 3, topic: "short" }).await.unwrap();
            assert_eq!(expect_error(&mut c).await, (3, "not_subscribed".into()));
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn drain_stops_accepting_and_spreads_1001_closes_over_the_window() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new().with("router", "drain_window_secs = 1").with("router", "shutdown_grace_secs = 3");
            let (running, tx, rx) = support::inproc::start(&env).await;
            let addr = running.local_addr();
            let mut clients = Vec::new();
            for _ in 0..10 {
                clients.push(connect(addr).await);
            }
            let worker = tokio::task::spawn_local(running.run(rx));
            tx.send(Control::Drain).await.unwrap();
            let start = std::time::Instant::now();
            let mut times = Vec::new();
            for c in &mut clients {
                assert_eq!(expect_close(c).await, 1001);
                times.push(start.elapsed());
                c.close(1001).await.unwrap_or(());
            }
            assert!(times[9] >= Duration::from_millis(700), "all closed within {:?}: not spread", times[9]);
            assert!(times[0] < Duration::from_millis(300));
            assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting while draining");
            let exit = tokio::time::timeout(Duration::from_secs(5), worker).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Drained);
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn stop_closes_everyone_now() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new().with("router", "drain_window_secs = 10").with("router", "shutdown_grace_secs = 10");
            let (running, tx, rx) = support::inproc::start(&env).await;
            let mut c = connect(running.local_addr()).await;
            let worker = tokio::task::spawn_local(running.run(rx));
            tx.send(Control::Stop).await.unwrap();
            assert_eq!(expect_close(&mut c).await, 1001);
            let exit = tokio::time::timeout(Duration::from_secs(3), worker).await.unwrap().unwrap();
            assert_eq!(exit, Exit::Stopped);
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn reload_swaps_keys_and_limits_without_dropping_anyone() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new();
            let (running, tx, rx) = support::inproc::start(&env).await;
            let addr = running.local_addr();
            let ingress = running.ingress();
            let mut c = connect(addr).await;
            let old_token = env.token(&["a", "b", "c"], 60);
            subscribe_ok(&mut c, 1, "a", &old_token).await;
            let _worker = tokio::task::spawn_local(running.run(rx));

            let new_key = SigningKeyFile::new("next", [42; 32]);
            let keys = KeySet::parse(&new_key.public_text()).unwrap();
            let mut router = env.config().router;
            router.max_subscriptions_per_connection = 2;
            tx.send(Control::Reload { keys, router }).await.unwrap();
            // Applied once the worker took the message off the channel (same thread: yield).
            while tx.capacity() < tx.max_capacity() {
                tokio::task::yield_now().await;
            }

            // The existing subscription survives and still receives.
            ingress.deliver("a", 1, envelope("a", 1, b"x").frame);
            assert!(matches!(next(&mut c).await.frame(), Some(ServerFrame::Envelope(e)) if e.seq == 1));
            // The old key is gone (even for a token that was cached)...
            c.subscribe(2, "b", &old_token).await.unwrap();
            assert_eq!(expect_error(&mut c).await, (2, "token_unknown_kid".into()));
            // ...the new one works, up to the new limit.
            let now = support::now_secs();
            let claims = switchboard::wire::Claims {
                kid: "next".into(),
                sub: "u".into(),
                topics: vec!["b".into(), "c".into()],
                iat: now,
                exp: now + 60,
                nbf: None,
            };
            let token = switchboard::wire::token::mint(&claims, &new_key.key);
            subscribe_ok(&mut c, 3, "b", &token).await;
            c.subscribe(4, "c", &token).await.unwrap();
            assert_eq!(expect_error(&mut c).await, (4, "too_many_subscriptions".into()));
        })
        .await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_reads_nothing_is_cut_even_when_its_close_cannot_be_written() {
    LocalSet::new()
        .run_until(async {
            let env = Env::new().with("router", "outbound_queue_bytes = 65536");
            let (running, _tx, _rx) = support::inproc::start(&env).await;
            let mut deaf = connect(running.local_addr()).await;
            subscribe_ok(&mut deaf, 1, "big", &env.token(&["big"], 600)).await;
            let ingress = running.ingress();
            let frame = envelope("big", 0, &vec![1u8; 32 * 1024]).frame;
            // Fill the kernel's buffers on both sides (loopback autotuning allows tens of
            // MiB), then the outbound queue.
            for seq in 1..=1500 {
                ingress.deliver("big", seq, frame.clone());
                tokio::task::yield_now().await;
            }
            assert_eq!(running.worker().connections(), 1);
            let s = running.worker().session_for_tests(0);
            // The writer is stuck on a full socket (overflow dropped the rest: a gap waits).
            assert!(s.conn.out.borrow().queued_bytes() > 0, "the socket still takes data");
            drop(s);
            tokio::time::pause();
            let started = tokio::time::Instant::now();
            while running.worker().connections() > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                assert!(started.elapsed() < Duration::from_secs(120), "the connection was never cut");
            }
            // Idle timeout (45 s) plus the close deadline (5 s), give or take a sweep.
            assert!(started.elapsed() >= Duration::from_secs(45), "cut after {:?}", started.elapsed());
            drop(deaf);
        })
        .await;
}
