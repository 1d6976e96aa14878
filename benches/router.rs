//! Hot-path micro-benchmarks: ledger routing, frame building, fan-out into queues.
//!
//!     cargo bench --bench router
#![allow(clippy::unwrap_used)] // a test panics to report a failure

use std::hint::black_box;
use std::rc::Rc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchboard::config::SlowConsumerPolicy;
use switchboard::router::ledger::Ledger;
use switchboard::router::outbound::{self, Op};
use switchboard::router::session;
use switchboard::router::socket::Conn;

fn envelope(len: usize) -> Bytes {
    let payload = vec![0x5a; len];
    let e = switchboard::wire::EnvelopeRef { topic: "post:42", seq: 7, id: "e7", ts: 1, kind: "k", payload: &payload };
    Bytes::from(e.encode())
}

fn ledger_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("ledger");
    let mut one_topic = Ledger::new();
    for conn in 0..1000 {
        one_topic.subscribe(conn, "post:42", u64::MAX, 64).unwrap();
    }
    let mut many = Ledger::new();
    let names: Vec<String> = (0..1000).map(|i| format!("post:{i}")).collect();
    for (conn, t) in names.iter().enumerate() {
        many.subscribe(conn as u32, t, u64::MAX, 64).unwrap();
    }
    g.throughput(Throughput::Elements(1));
    let mut seq = 0;
    g.bench_function("route 1 topic x 1000 subscribers", |b| {
        b.iter(|| {
            seq += 1;
            black_box(one_topic.route(black_box("post:42"), seq).map(|r| r.conns.len()))
        })
    });
    let mut i = 0;
    g.bench_function("route among 1000 topics", |b| {
        b.iter(|| {
            i = (i + 1) % names.len();
            black_box(many.route(black_box(&names[i]), 1).map(|r| r.conns.len()))
        })
    });
    g.bench_function("subscribe + unsubscribe", |b| {
        b.iter(|| {
            many.subscribe(5000, "post:7", 1, 64).unwrap();
            black_box(many.unsubscribe(5000, "post:7"))
        })
    });
    g.finish();
}

fn frame_building(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    for len in [100, 1000, 16_000] {
        let e = envelope(len);
        g.throughput(Throughput::Bytes(e.len() as u64));
        g.bench_function(format!("websocket frame of a {len} B payload"), |b| {
            b.iter(|| black_box(outbound::frame(Op::Binary, black_box(&e))))
        });
    }
    g.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fanout");
    let conns: Vec<Conn> = (0..1000).map(Conn::new).collect();
    let topic: Rc<str> = Rc::from("post:42");
    let e = envelope(100);
    g.throughput(Throughput::Elements(conns.len() as u64));
    g.bench_function("frame once + queue to 1000 connections", |b| {
        b.iter(|| {
            let framed = outbound::frame(Op::Binary, &e);
            for c in &conns {
                session::deliver(c, &topic, 1, &framed, 1 << 30, SlowConsumerPolicy::Gap);
            }
            for c in &conns {
                // Empty the queues without a socket (what the writer would do).
                c.out.borrow_mut().drop_topic(&topic, None);
            }
        })
    });
    g.finish();
}

/// A loopback TCP connection whose far end reads and discards on its own thread.
fn sink_peer(rt: &tokio::runtime::Runtime) -> tokio::net::tcp::OwnedWriteHalf {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 20];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    let stream = rt.block_on(tokio::net::TcpStream::connect(addr)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream.into_split().1
}

/// 64 queued 100-byte envelopes to a loopback TCP peer: fastwebsockets' writer (one write per
/// frame) against the router's outbound queue (one writev for all).
fn writers(c: &mut Criterion) {
    use switchboard::router::outbound::{Outbound, close_frame, write_loop};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let e = envelope(100);
    let mut g = c.benchmark_group("writer");
    g.throughput(Throughput::Elements(64));
    let (_, mut fws) =
        fastwebsockets::after_handshake_split(tokio::io::empty(), sink_peer(&rt), fastwebsockets::Role::Server);
    g.bench_function("fastwebsockets write_frame x 64", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..64 {
                    let f = fastwebsockets::Frame::binary(fastwebsockets::Payload::Borrowed(&e));
                    fws.write_frame(f).await.unwrap();
                }
            })
        })
    });
    let mut w = sink_peer(&rt);
    let framed = outbound::frame(Op::Binary, &e);
    let topic: Rc<str> = Rc::from("post:42");
    g.bench_function("outbound queue + writev x 64", |b| {
        b.iter(|| {
            // A close frame ends the writer's loop once the batch is out (4 bytes more).
            let out = std::cell::RefCell::new(Outbound::new());
            for seq in 0..64 {
                out.borrow_mut().push_envelope(framed.clone(), &topic, seq, 1 << 30).unwrap();
            }
            out.borrow_mut().close(close_frame(1000, ""), false);
            rt.block_on(write_loop(&out, &mut w)).unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, ledger_route, frame_building, fan_out, writers);
criterion_main!(benches);
