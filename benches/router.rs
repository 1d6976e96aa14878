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

criterion_group!(benches, ledger_route, frame_building, fan_out);
criterion_main!(benches);
