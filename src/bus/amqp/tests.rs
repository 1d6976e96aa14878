//! Tests against the real RabbitMQ on 127.0.0.1:5672 (guest/guest; `scripts/services.sh
//! rabbitmq` starts it). A test that cannot reach it fails: none of them skips.
//!
//! Each test uses its own exchange (`sbtest.<name>.<nonce>`) and finds its connections by
//! name, so they run in parallel with each other and with other users of the broker. Broker
//! outages are simulated with `rabbitmqctl close_connection` (what a broker restart does to a
//! client: connection.close 320) and with a TCP proxy that the test switches off and on (what
//! an unreachable broker looks like), never by stopping the shared broker.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, ExchangeDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, ExchangeKind};

use super::*;
use crate::bus::local::Recorder;
use crate::bus::{Ingress, Routed};
use crate::config::{BusConfig, BusKind, BusRouting};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn cfg(name: &str) -> BusConfig {
    BusConfig {
        kind: BusKind::Amqp,
        amqp_url: BROKER.into(),
        exchange: format!("sbtest.{name}.{}", nonce()),
        connect_timeout_secs: 5,
        ..Default::default()
    }
}

async fn local<F: Future>(f: F) -> F::Output {
    tokio::task::LocalSet::new().run_until(f).await
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `secs`.
async fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn batch(topics: &[&str], per_topic: u64) -> Vec<Routed> {
    (1..=per_topic)
        .flat_map(|seq| {
            topics.iter().map(move |t| Routed {
                topic: (*t).to_owned(),
                seq,
                frame: Bytes::from(format!("\u{92}{t}/{seq}").into_bytes()),
            })
        })
        .collect()
}

fn got(r: &Recorder) -> Vec<Routed> {
    r.got
        .borrow()
        .iter()
        .map(|(topic, seq, frame)| Routed { topic: topic.clone(), seq: *seq, frame: frame.clone() })
        .collect()
}

/// Runs rabbitmqctl off the worker thread (it takes a few hundred ms).
async fn rabbitmqctl(args: &[&str]) -> String {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("rabbitmqctl").arg("-q").args(&args).output().expect("run rabbitmqctl");
        assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("rabbitmqctl task")
}

/// Closes, from the broker side, the connection whose client-given name is `name`.
async fn close_connection(name: &str) {
    let list = rabbitmqctl(&["list_connections", "--no-table-headers", "pid", "client_properties"]).await;
    let quoted = format!("{{\"connection_name\",\"{name}\"}}");
    let line = list.lines().find(|l| l.contains(&quoted)).unwrap_or_else(|| panic!("no connection {name} in\n{list}"));
    let pid = line.split_whitespace().next().expect("pid column");
    rabbitmqctl(&["close_connection", pid, "test"]).await;
}

/// `(messages_ready, messages_unacknowledged)` of a queue.
async fn queue_counts(queue: &str) -> Option<(u64, u64)> {
    let list =
        rabbitmqctl(&["list_queues", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged"]).await;
    list.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() == 3 && f[0] == queue).then(|| (f[1].parse().unwrap_or(0), f[2].parse().unwrap_or(0)))
    })
}

/// Deletes a test's exchanges (best effort: exchanges are durable and would pile up).
async fn cleanup(cfg: &BusConfig) {
    let Ok(conn) = lapin::Connection::connect(BROKER, Default::default()).await else { return };
    if let Ok(ch) = conn.create_channel().await {
        for x in [cfg.exchange.clone(), format!("{}.buckets", cfg.exchange)] {
            let _ = ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()).await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// What the test proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Forwards both ways.
    Up,
    /// Keeps every socket open but forwards nothing (a hung broker or a black-holed network):
    /// only heartbeats and timeouts can notice.
    Stalled,
    /// Listener closed and every connection cut: connection refused.
    Down,
}

/// A TCP proxy in front of the broker, on its own thread, that a test switches between
/// [`Link`] states (always on the same port).
struct Proxy {
    port: u16,
    state: tokio::sync::watch::Sender<Link>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Self {
        let (state, mut rx) = tokio::sync::watch::channel(Link::Up);
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("proxy runtime");
            rt.block_on(async move {
                let mut port = 0;
                loop {
                    while *rx.borrow_and_update() == Link::Down {
                        if rx.changed().await.is_err() {
                            return;
                        }
                    }
                    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
                    sock.set_reuseaddr(true).expect("reuseaddr");
                    sock.bind(SocketAddr::from(([127, 0, 0, 1], port))).expect("bind proxy");
                    let listener = sock.listen(64).expect("listen");
                    port = listener.local_addr().expect("addr").port();
                    let _ = port_tx.send(port);
                    let mut conns = tokio::task::JoinSet::new();
                    loop {
                        tokio::select! {
                            a = listener.accept() => if let Ok((client, _)) = a {
                                conns.spawn(forward(client, upstream, rx.clone()));
                            },
                            c = rx.changed() => if c.is_err() || *rx.borrow_and_update() == Link::Down { break },
                        }
                    }
                    // Dropping the listener and the JoinSet refuses and cuts everything.
                }
            });
        });
        let port = port_rx.recv().expect("proxy port");
        Self { port, state }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn set(&self, link: Link) {
        self.state.send_replace(link);
    }
}

/// One proxied connection: forwards while Up, holds the sockets silent while Stalled.
async fn forward(mut client: tokio::net::TcpStream, upstream: SocketAddr, mut rx: tokio::sync::watch::Receiver<Link>) {
    let Ok(mut broker) = tokio::net::TcpStream::connect(upstream).await else { return };
    if *rx.borrow_and_update() == Link::Up {
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut broker) => return,
            _ = rx.wait_for(|l| *l != Link::Up) => {}
        }
    }
    // Stalled: keep both sockets open and silent until the link changes (then drop them).
    let _ = rx.wait_for(|l| *l != Link::Stalled).await;
}

#[tokio::test(flavor = "current_thread")]
async fn fanout_reaches_every_worker_in_order() {
    local(async {
        let cfg = cfg("fanout");
        let (a, b) = (Rc::new(Recorder::default()), Rc::new(Recorder::default()));
        // Two "hosts": two queues on one exchange.
        let ca = Consumer::start(&cfg, 0, a.clone()).await.expect("consumer a");
        let cb = Consumer::start(&cfg, 1, b.clone()).await.expect("consumer b");
        let sent = batch(&["post:1", "post:2", "user:7"], 200);
        let mut p = Publisher::connect(&cfg).await.expect("publisher");
        // tokio::spawn needs a Send future: the publisher works on any runtime.
        let to_send = sent.clone();
        tokio::spawn(async move {
            for chunk in to_send.chunks(64) {
                p.publish(chunk).await.expect("publish");
            }
            p.close().await;
        })
        .await
        .expect("publisher task");
        wait_until(10, "600 envelopes at both workers", || a.got.borrow().len() >= 600 && b.got.borrow().len() >= 600)
            .await;
        for (index, r, c) in [(0, &a, &ca), (1, &b, &cb)] {
            // One publisher channel: the broker keeps its order, so each worker sees exactly the
            // published sequence, hence every topic in seq order with its own frames.
            assert_eq!(got(r), sent, "worker {index}");
            assert_eq!(*r.states.borrow(), [true], "worker {index}");
            let s = c.stats();
            assert_eq!((s.received, s.invalid, s.connections), (600, 0, 1), "worker {index}");
            let q = s.queue.expect("queue");
            assert!(q.starts_with(&format!("switchboard.{}.{index}.", hostname())), "{q}");
        }
        drop((ca, cb));
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_messages_are_acked_dropped_and_counted() {
    local(async {
        let cfg = cfg("invalid");
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let conn = lapin::Connection::connect(BROKER, Default::default()).await.expect("raw connection");
        let ch = conn.create_channel().await.expect("channel");
        let with = |pairs: Vec<(&str, AMQPValue)>| {
            let mut h = FieldTable::default();
            for (k, v) in pairs {
                h.insert(k.into(), v);
            }
            BasicProperties::default().with_headers(h)
        };
        let seq = |n| vec![("seq", AMQPValue::LongLongInt(n))];
        let cases: Vec<(&str, BasicProperties, &[u8])> = vec![
            ("t:1", BasicProperties::default(), b"no headers"),
            ("t:1", with(vec![("seq", AMQPValue::LongString("1".into()))]), b"seq as text"),
            ("t:1", with(seq(-1)), b"negative seq"),
            ("bad topic", with(seq(1)), b"space in topic"),
            ("", with(seq(1)), b"empty topic"),
            ("t:1", with(seq(1)), b""),
            ("t:1", with(seq(2)), b"the valid one"),
        ];
        for (key, props, body) in cases {
            ch.basic_publish(cfg.exchange.as_str().into(), key.into(), BasicPublishOptions::default(), body, props)
                .await
                .expect("raw publish");
        }
        wait_until(10, "the valid envelope", || !r.got.borrow().is_empty()).await;
        wait_until(5, "6 invalid counted", || c.stats().invalid == 6).await;
        assert_eq!(got(&r), [Routed { topic: "t:1".into(), seq: 2, frame: Bytes::from_static(b"the valid one") }]);
        // Dropped messages were acked too: nothing is left unacknowledged at the broker.
        let q = c.stats().queue.expect("queue");
        let mut counts = None;
        for _ in 0..100 {
            counts = queue_counts(&q).await;
            if counts == Some((0, 0)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(counts, Some((0, 0)));
        let _ = conn.close(200, "bye".into()).await;
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn broker_closing_connections_is_survived() {
    local(async {
        let cfg = cfg("close");
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let mut p = Publisher::connect(&cfg).await.expect("publisher");
        let sent = batch(&["post:1"], 20);
        p.publish(&sent[..10]).await.expect("publish 1");
        wait_until(10, "first 10", || r.got.borrow().len() == 10).await;

        // The broker drops the worker's connection: down, then up on a fresh queue.
        let q1 = c.stats().queue.expect("queue");
        close_connection(&q1).await;
        wait_until(15, "down then up", || *r.states.borrow() == [true, false, true]).await;
        let s = c.stats();
        let q2 = s.queue.expect("new queue");
        assert_ne!(q1, q2, "a fresh queue name per connection");
        assert_eq!(s.connections, 2);
        let queues = rabbitmqctl(&["list_queues", "--no-table-headers", "name"]).await;
        assert!(queues.lines().any(|l| l.trim() == q2) && !queues.lines().any(|l| l.trim() == q1), "{queues}");
        p.publish(&sent[10..]).await.expect("publish 2");
        wait_until(10, "all 20", || r.got.borrow().len() == 20).await;
        assert_eq!(got(&r), sent);

        // The broker drops the publisher's connection: one clear error, then it reconnects.
        close_connection(p.connection_name()).await;
        let more = batch(&["post:2"], 2);
        let mut first = p.publish(&more[..1]).await;
        // The close may reach lapin just after a publish went out; within a few calls it shows.
        for _ in 0..50 {
            if first.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            first = p.publish(&more[..1]).await;
        }
        let err = first.expect_err("publish on a closed connection fails");
        assert!(matches!(err, BusError::Closed { .. } | BusError::Unreachable { .. }), "{err:?}");
        assert!(!err.is_permanent(), "{err}");
        p.publish(&more[1..]).await.expect("publish after reconnect");
        wait_until(10, "post:2 seq 2", || r.got.borrow().iter().any(|(t, s, _)| t == "post:2" && *s == 2)).await;
        p.close().await;
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn unreachable_broker_reports_down_and_recovers() {
    local(async {
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 5672)));
        let mut cfg = cfg("outage");
        cfg.amqp_url = proxy.url();
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let mut p = Publisher::connect(&cfg).await.expect("publisher");
        let sent = batch(&["post:9"], 3);
        p.publish(&sent[..1]).await.expect("publish before");
        wait_until(10, "first envelope", || r.got.borrow().len() == 1).await;
        let q1 = c.stats().queue.expect("queue");

        proxy.set(Link::Down);
        wait_until(30, "bus down", || *r.states.borrow() == [true, false]).await;
        assert!(!c.stats().up);
        // The publisher's connection is cut: the next calls fail, and once it tries to connect
        // the error names the endpoint (not the credentials).
        let mut last = None;
        for _ in 0..3 {
            last = Some(p.publish(&sent[1..2]).await.expect_err("broker is down"));
        }
        let err = last.expect("an error");
        let text = err.to_string();
        assert!(matches!(err, BusError::Unreachable { .. }), "{err:?}");
        assert!(text.contains(&format!("127.0.0.1:{}", proxy.port)) && !text.contains("guest:guest"), "{text}");

        // Let a few reconnect attempts fail, then bring the broker back.
        tokio::time::sleep(Duration::from_millis(800)).await;
        proxy.set(Link::Up);
        wait_until(30, "bus up again", || *r.states.borrow() == [true, false, true]).await;
        let s = c.stats();
        assert!(s.up && s.queue.as_deref() != Some(q1.as_str()), "{s:?}");
        p.publish(&sent[1..]).await.expect("publish after");
        wait_until(10, "deliveries resume", || r.got.borrow().len() == 3).await;
        assert_eq!(got(&r).iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        p.close().await;
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn stalled_broker_is_noticed_by_heartbeats() {
    local(async {
        let proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], 5672)));
        let mut cfg = cfg("stall");
        cfg.amqp_url = proxy.url();
        cfg.heartbeat_secs = 1;
        cfg.connect_timeout_secs = 1;
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let mut p = Publisher::connect(&cfg).await.expect("publisher");
        let sent = batch(&["post:5"], 2);
        p.publish(&sent[..1]).await.expect("publish before");
        wait_until(10, "first envelope", || r.got.borrow().len() == 1).await;

        // Silence without a TCP error: lapin's missed-heartbeat check is what notices.
        let stalled_at = tokio::time::Instant::now();
        proxy.set(Link::Stalled);
        wait_until(15, "bus down", || *r.states.borrow() == [true, false]).await;
        let noticed = stalled_at.elapsed();
        // Reconnects meanwhile hang in the AMQP handshake and give up at connect_timeout.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(*r.states.borrow(), [true, false]);
        proxy.set(Link::Up);
        wait_until(30, "bus up again", || *r.states.borrow() == [true, false, true]).await;
        // The publisher's old connection is dead too; the first call may fail, a retry works.
        if p.publish(&sent[1..]).await.is_err() {
            p.publish(&sent[1..]).await.expect("publish after a reconnect");
        }
        wait_until(10, "deliveries resume", || r.got.borrow().iter().any(|(_, s, _)| *s == 2)).await;
        eprintln!("stalled broker noticed after {noticed:?} with heartbeat 1 s");
        p.close().await;
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn connect_failures_are_typed() {
    local(async {
        // A listener that never speaks AMQP: TCP connects (the kernel's backlog), the
        // handshake never comes.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut cfg = cfg("errors");
        cfg.amqp_url = format!("amqp://guest:s3cret@127.0.0.1:{}/%2f", mute.local_addr().expect("addr").port());
        cfg.connect_timeout_secs = 1;
        let err = Publisher::connect(&cfg).await.err().expect("timeout");
        let text = err.to_string();
        assert!(matches!(err, BusError::Unreachable { .. }) && text.contains("within 1 s"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        // A worker starting while the broker is unreachable starts anyway, reporting down.
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("starts while unreachable");
        assert_eq!(*r.states.borrow(), [false]);
        drop(c);

        // Nothing listening at all.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        cfg.amqp_url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        let err = Publisher::connect(&cfg).await.err().expect("refused");
        assert!(matches!(err, BusError::Unreachable { .. }), "{err:?}");
        // An IP literal is where lapin connects (amq-protocol-uri alone would say localhost).
        assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");

        // Wrong password, unknown vhost: permanent, and the consumer refuses to start.
        cfg.amqp_url = "amqp://guest:wrong-s3cret@127.0.0.1:5672/%2f".into();
        let err = Publisher::connect(&cfg).await.err().expect("bad password");
        assert!(matches!(err, BusError::AccessRefused { .. }) && err.is_permanent(), "{err:?}");
        assert!(!err.to_string().contains("wrong-s3cret"), "{err}");
        let r = Rc::new(Recorder::default());
        assert!(Consumer::start(&cfg, 0, r.clone()).await.is_err());
        cfg.amqp_url = "amqp://guest:guest@127.0.0.1:5672/no-such-vhost".into();
        let err = Publisher::connect(&cfg).await.err().expect("bad vhost");
        assert!(matches!(err, BusError::AccessRefused { .. }), "{err:?}");

        // An exchange that exists with another type: the broker refuses the topology.
        cfg.amqp_url = BROKER.into();
        let conn = lapin::Connection::connect(BROKER, Default::default()).await.expect("raw connection");
        let ch = conn.create_channel().await.expect("channel");
        ch.exchange_declare(
            cfg.exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions { durable: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .expect("declare direct");
        let err = Publisher::connect(&cfg).await.err().expect("type conflict");
        assert!(matches!(err, BusError::Closed { code: 406, .. }) && err.is_permanent(), "{err:?}");
        assert!(Consumer::start(&cfg, 0, r.clone()).await.is_err());
        let _ = conn.close(200, "bye".into()).await;
        cleanup(&cfg).await;
    })
    .await;
}

/// A worker whose thread is busy: every delivery takes `delay`.
#[derive(Default)]
struct Slow {
    inner: Recorder,
    delay: Duration,
}

impl Ingress for Slow {
    fn deliver(&self, topic: &str, seq: u64, frame: Bytes) {
        std::thread::sleep(self.delay);
        self.inner.deliver(topic, seq, frame)
    }
    fn bus_state(&self, up: bool) {
        self.inner.bus_state(up)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn slow_worker_is_bounded_by_prefetch_and_max_length() {
    local(async {
        let mut cfg = cfg("slow");
        cfg.prefetch = 10;
        cfg.queue_max_length = 50;
        let r = Rc::new(Slow { delay: Duration::from_millis(20), ..Default::default() });
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let q = c.stats().queue.expect("queue");
        // Publish from another thread: this one is deliberately slow.
        let pcfg = cfg.clone();
        let publisher = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut p = Publisher::connect(&pcfg).await.expect("publisher");
                for chunk in batch(&["t:slow"], 1000).chunks(100) {
                    p.publish(chunk).await.expect("publish");
                }
                p.close().await;
            })
        });
        tokio::task::spawn_blocking(move || publisher.join().expect("publisher thread")).await.expect("join");
        // The broker holds the backlog, bounded; the worker holds at most `prefetch` of it.
        for _ in 0..3 {
            let (ready, unacked) = queue_counts(&q).await.expect("queue listed");
            assert!(unacked <= 10, "unacked {unacked} > prefetch 10");
            assert!(ready <= 50, "ready {ready} > x-max-length 50");
        }
        wait_until(30, "the backlog drained", || r.inner.got.borrow().last().is_some_and(|(_, s, _)| *s == 1000)).await;
        let n = r.inner.got.borrow().len();
        // drop-head kept the newest: what arrived is a strictly rising run ending at 1000, and
        // most of the 1000 were dropped at the broker instead of piling up in the worker.
        assert!(n < 200, "{n} delivered");
        let seqs: Vec<u64> = r.inner.got.borrow().iter().map(|(_, s, _)| *s).collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[tokio::test(flavor = "current_thread")]
async fn buckets_bind_what_is_watched_and_rebind_after_reconnect() {
    local(async {
        let mut cfg = cfg("buckets");
        cfg.routing = BusRouting::Buckets;
        cfg.buckets = 64;
        let n = cfg.buckets;
        let topics: Vec<String> = (0..1000).map(|i| format!("post:{i}")).collect();
        let a = topics[0].clone();
        let b = topics.iter().find(|t| buckets::bucket_of(t, n) != buckets::bucket_of(&a, n)).expect("b").clone();
        let a2 =
            topics.iter().skip(1).find(|t| buckets::bucket_of(t, n) == buckets::bucket_of(&a, n)).expect("a2").clone();
        let r = Rc::new(Recorder::default());
        let c = Consumer::start(&cfg, 0, r.clone()).await.expect("consumer");
        let mut p = Publisher::connect(&cfg).await.expect("publisher");
        let env = |t: &str, seq| Routed { topic: t.to_owned(), seq, frame: Bytes::from(format!("{t}/{seq}")) };
        let seen = |r: &Recorder| r.got.borrow().iter().map(|(t, s, _)| (t.clone(), *s)).collect::<Vec<_>>();
        let bound = |c: &Consumer| c.stats().bound_buckets;

        c.watch(&a);
        wait_until(10, "a's bucket bound", || bound(&c) == 1).await;
        // b is published first; a arriving proves b, which nobody bound, was not routed here.
        p.publish(&[env(&b, 1), env(&a, 1)]).await.expect("publish");
        wait_until(10, "a/1", || r.got.borrow().len() == 1).await;
        assert_eq!(seen(&r), [(a.clone(), 1)]);

        c.watch(&b);
        wait_until(10, "b's bucket bound", || bound(&c) == 2).await;
        p.publish(&[env(&b, 2), env(&a, 2)]).await.expect("publish");
        wait_until(10, "b/2 and a/2", || r.got.borrow().len() == 3).await;

        c.unwatch(&b);
        wait_until(10, "b's bucket unbound", || bound(&c) == 1).await;
        p.publish(&[env(&b, 3), env(&a, 3)]).await.expect("publish");
        wait_until(10, "a/3", || r.got.borrow().len() == 4).await;
        assert_eq!(seen(&r), [(a.clone(), 1), (b.clone(), 2), (a.clone(), 2), (a.clone(), 3)]);

        // Two topics share a's bucket: it stays bound until the last one goes.
        c.watch(&a2);
        c.unwatch(&a);
        p.publish(&[env(&a2, 1)]).await.expect("publish");
        wait_until(10, "a2/1", || r.got.borrow().len() == 5).await;
        assert_eq!(bound(&c), 1);

        // After a reconnect the new queue is bound to the same buckets.
        let q1 = c.stats().queue.expect("queue");
        close_connection(&q1).await;
        wait_until(15, "down then up", || *r.states.borrow() == [true, false, true]).await;
        assert_eq!(bound(&c), 1);
        let q2 = c.stats().queue.expect("queue");
        let bindings =
            rabbitmqctl(&["list_bindings", "--no-table-headers", "source_name", "destination_name", "routing_key"])
                .await;
        let ours: Vec<&str> = bindings
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(format!("{}.buckets", cfg.exchange).as_str()))
            .collect();
        let want = format!("{}.buckets\t{q2}\t{}", cfg.exchange, buckets::bucket_of(&a, n));
        assert_eq!(ours, [want.as_str()], "{bindings}");
        p.publish(&[env(&b, 4), env(&a2, 2)]).await.expect("publish");
        wait_until(10, "a2/2", || r.got.borrow().len() == 6).await;
        assert_eq!(seen(&r).last(), Some(&(a2.clone(), 2)));
        assert_eq!(c.stats().misrouted, 0);
        p.close().await;
        drop(c);
        cleanup(&cfg).await;
    })
    .await;
}

#[test]
fn url_host_keeps_ip_literals() {
    let cfg = |url: &str| BusConfig { amqp_url: url.into(), ..Default::default() };
    let t = Target::new(&cfg("amqp://u:p@10.1.2.3:5673/%2f")).expect("target");
    assert_eq!((t.uri.authority.host.as_str(), t.uri.authority.port), ("10.1.2.3", 5673));
    assert_eq!(t.endpoint, "10.1.2.3:5673 (vhost /)");
    assert_eq!(t.uri.query.heartbeat, Some(10), "heartbeat_secs applies when the URL has none");
    let t = Target::new(&cfg("amqp://u:p@[::1]/v?heartbeat=3")).expect("target");
    assert_eq!((t.uri.authority.host.as_str(), t.uri.vhost.as_str()), ("::1", "v"));
    assert_eq!(t.uri.query.heartbeat, Some(3));
    let t = Target::new(&cfg("amqp://rabbit.internal/%2f")).expect("target");
    assert_eq!(t.uri.authority.host, "rabbit.internal");
}

/// Deletes every `sbtest.*` and `sbbench.*` exchange left by interrupted test or bench runs (run by name, alone:
/// `cargo test --lib sweep_test_exchanges -- --ignored`; rabbitmqctl cannot delete exchanges).
#[tokio::test(flavor = "current_thread")]
#[ignore]
async fn sweep_test_exchanges() {
    let list = rabbitmqctl(&["list_exchanges", "--no-table-headers", "name"]).await;
    let conn = lapin::Connection::connect(BROKER, Default::default()).await.expect("connection");
    let ch = conn.create_channel().await.expect("channel");
    for x in list.lines().map(str::trim).filter(|x| x.starts_with("sbtest.") || x.starts_with("sbbench.")) {
        ch.exchange_delete(x.into(), ExchangeDeleteOptions::default()).await.expect("delete");
        eprintln!("deleted {x}");
    }
    let _ = conn.close(200, "bye".into()).await;
}
