// The whole client against a fake router socket, a fake journal and a fake clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Switchboard, jsonPayload } from '../src/index.js';
import { FakeClock, FakeJournal, envelopeFrame, fakeWebSocket, settle } from './fakes.js';

const TOPIC = 'post:42';

function setup(opts = {}) {
  const clock = new FakeClock();
  const journal = new FakeJournal();
  const { FakeWebSocket, sockets } = fakeWebSocket();
  const sb = new Switchboard({
    url: 'ws://router.test/ws',
    journalUrl: 'http://journal.test',
    WebSocket: FakeWebSocket,
    fetch: journal.fetch,
    clock,
    random: () => 0.5,
    pingIntervalMs: 20_000,
    pingTimeoutMs: 5_000,
    backoff: { baseMs: 1_000, capMs: 8_000, stableMs: 10_000 },
    ...opts,
  });
  const states = [];
  sb.on('state', (s) => states.push(s));
  const errors = [];
  sb.on('error', (e) => errors.push(e.code));
  return { clock, journal, sockets, sb, states, errors };
}

/** A subscription that records what it receives. */
function record(sb, topic, opts = {}) {
  const got = [];
  const subStates = [];
  let n = 0;
  const tokens = [];
  const sub = sb.subscribe(topic, {
    getToken: async () => {
      const t = `tok-${topic}-${++n}`;
      tokens.push(t);
      return t;
    },
    onEnvelope: (env) => got.push(env),
    onState: (s) => subStates.push(s),
    ...opts,
  });
  return { sub, got, subStates, tokens, seqs: () => got.map((e) => e.seq) };
}

/** The router's ack for the last subscribe on `ws`. */
function ack(ws, lastSeq = null) {
  const [, id] = ws.lastSubscribe();
  ws.receive([16, id, lastSeq]);
}

/** Journal append plus live delivery on `ws` (unless `ws` is null: lost on the way). */
function publish(journal, ws, topic, payload) {
  const f = journal.append(topic, payload);
  if (ws) ws.receive(f);
  return f;
}

test('subscribe, live delivery, a drop, reconnect: every envelope once, in order, with token refetch', async () => {
  const { clock, journal, sockets, sb, states } = setup();
  for (let i = 1; i <= 3; i++) journal.append(TOPIC, { i });
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);

  // One socket; the subscribe frame carries the topic and the application's token.
  assert.equal(sockets.length, 1);
  assert.equal(sb.state, 'connecting');
  const ws1 = sockets[0];
  ws1.open();
  await settle();
  assert.deepEqual(ws1.sentOf(1), [[1, 1, TOPIC, `tok-${TOPIC}-1`]]);

  // Ack with the router's last seq: the client reconciles 1..3 from the journal.
  ack(ws1, 3);
  await settle();
  assert.deepEqual(r.seqs(), [1, 2, 3]);
  assert.deepEqual(journal.requests.map((q) => [q.after, q.token]), [[0, `tok-${TOPIC}-1`]]);
  assert.equal(sb.state, 'connected');
  assert.equal(r.sub.state, 'live');

  // Live 4, 5; 6 is lost on the way; 7 arrives: the jump makes the client ask for 6.
  publish(journal, ws1, TOPIC, { i: 4 });
  publish(journal, ws1, TOPIC, { i: 5 });
  publish(journal, null, TOPIC, { i: 6 });
  publish(journal, ws1, TOPIC, { i: 7 });
  ws1.receive(envelopeFrame(TOPIC, 7)); // a duplicate from the router: dropped
  await settle();
  assert.deepEqual(r.seqs(), [1, 2, 3, 4, 5, 6, 7]);
  assert.equal(journal.requests.at(-1).after, 5);

  // The connection drops; 8 and 9 are published meanwhile.
  ws1.serverClose(1006);
  assert.equal(sb.state, 'reconnecting');
  assert.equal(r.sub.state, 'subscribing');
  publish(journal, null, TOPIC, { i: 8 });
  publish(journal, null, TOPIC, { i: 9 });

  // Full jitter with random 0.5 and base 1000: the first retry waits 500 ms.
  await clock.advance(499);
  assert.equal(sockets.length, 1);
  await clock.advance(1);
  assert.equal(sockets.length, 2);
  const ws2 = sockets[1];
  ws2.open();
  await settle();
  // The cached token has expired meanwhile: the router refuses it, the client gets a new one.
  assert.equal(ws2.lastSubscribe()[3], `tok-${TOPIC}-1`);
  ws2.receive([17, ws2.lastSubscribe()[1], 'token_expired', 'token expired']);
  await settle();
  assert.equal(ws2.lastSubscribe()[3], `tok-${TOPIC}-2`);
  journal.allow(`tok-${TOPIC}-2`, TOPIC);

  // Hold the journal's answer, so that live envelopes arrive during catch-up.
  const release = journal.hold();
  ack(ws2, 9);
  await settle();
  assert.equal(sb.state, 'catching-up');
  assert.equal(r.sub.state, 'catching-up');
  publish(journal, ws2, TOPIC, { i: 10 }); // above the hole: buffered
  await settle();
  assert.deepEqual(r.seqs(), [1, 2, 3, 4, 5, 6, 7]);
  release();
  await settle();
  assert.deepEqual(r.seqs(), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(sb.state, 'connected');
  assert.equal(r.sub.state, 'live');
  assert.equal(r.sub.lastSeq, 10);

  // The payload helper reads what the journal stored.
  assert.deepEqual(jsonPayload(r.got[9]), { i: 10 });
  assert.deepEqual(
    r.got.map((e) => [e.topic, e.id, e.kind]).at(-1),
    [TOPIC, `e-${TOPIC}-10`, 'test.kind'],
  );
  assert.deepEqual(states, [
    'connecting', 'connected', // socket open, subscribe sent
    'catching-up', 'connected', // ack: journal 1..3
    'catching-up', 'connected', // seq jump: journal 6
    'reconnecting', 'connected', // drop, new socket
    'catching-up', 'connected', // ack: journal 8..9, buffered 10
  ]);
  sb.close();
  assert.equal(sb.state, 'closed');
  assert.deepEqual(ws2.closedWith, { code: 1000, reason: undefined });
});

test('journal 401 token_expired: a fresh token, then the page', async () => {
  const { journal, sockets, sb } = setup();
  journal.append(TOPIC, 'a');
  journal.append(TOPIC, 'b');
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-2`, TOPIC); // the first token is already expired for the journal
  sockets[0].open();
  await settle();
  ack(sockets[0], 2);
  await settle();
  assert.deepEqual(r.seqs(), [1, 2]);
  assert.deepEqual(journal.requests.map((q) => q.token), [`tok-${TOPIC}-1`, `tok-${TOPIC}-2`]);
  assert.deepEqual(r.tokens, [`tok-${TOPIC}-1`, `tok-${TOPIC}-2`]);
});

test('router unsubscribes on token expiry: resubscribe with a new token and reconcile', async () => {
  const { journal, sockets, sb } = setup();
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);
  journal.allow(`tok-${TOPIC}-2`, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, null);
  await settle();
  publish(journal, ws, TOPIC, 1);
  ws.receive([22, TOPIC, 'token_expired']);
  publish(journal, null, TOPIC, 2); // published while unsubscribed
  await settle();
  assert.equal(ws.sentOf(1).length, 2);
  assert.equal(ws.lastSubscribe()[3], `tok-${TOPIC}-2`);
  ack(ws, 2);
  await settle();
  assert.deepEqual(r.seqs(), [1, 2]);
});

test('one socket carries every subscription; a gap frame reconciles only its topic', async () => {
  const { journal, sockets, sb } = setup();
  const a = record(sb, 'a', { afterSeq: 0 });
  const b = record(sb, 'b', { afterSeq: 0 });
  journal.allow('tok-a-1', 'a');
  journal.allow('tok-b-1', 'b');
  assert.equal(sockets.length, 1);
  const ws = sockets[0];
  ws.open();
  await settle();
  assert.deepEqual(ws.sentOf(1).map((f) => f[2]), ['a', 'b']);
  for (const f of ws.sentOf(1)) ws.receive([16, f[1], null]);
  await settle();
  const before = journal.requests.length;
  publish(journal, ws, 'a', 1);
  publish(journal, null, 'a', 2);
  publish(journal, null, 'a', 3);
  publish(journal, ws, 'b', 1);
  ws.receive([21, 'a', 2, 3]); // the router dropped a#2..3 for this slow client
  await settle();
  assert.deepEqual(journal.requests.slice(before).map((q) => [q.topic, q.after]), [['a', 1]]);
  assert.deepEqual(a.seqs(), [1, 2, 3]);
  assert.deepEqual(b.seqs(), [1]);
});

test('resync reconciles the named topics; the journal is read page by page with next_after', async () => {
  const { journal, sockets, sb } = setup({ pageLimit: 2 });
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, 0);
  await settle();
  for (let i = 1; i <= 5; i++) publish(journal, null, TOPIC, i); // the worker's bus was down
  ws.receive([20, [TOPIC, 'not-mine']]);
  await settle();
  assert.deepEqual(r.seqs(), [1, 2, 3, 4, 5]);
  assert.deepEqual(journal.requests.map((q) => [q.after, q.limit]), [[0, 2], [0, 2], [2, 2], [4, 2]]);
});

test('410 pruned calls onReset and continues from the seq it returns', async () => {
  const { journal, sockets, sb } = setup();
  for (let i = 1; i <= 30; i++) journal.append(TOPIC, i);
  journal.oldest.set(TOPIC, 21);
  const resets = [];
  const r = record(sb, TOPIC, {
    afterSeq: 3,
    onReset: async (topic, oldestSeq) => {
      resets.push([topic, oldestSeq]);
      return 25; // the application reloaded its state as of seq 25
    },
  });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);
  sockets[0].open();
  await settle();
  ack(sockets[0], 30);
  await settle();
  assert.deepEqual(resets, [[TOPIC, 21]]);
  assert.deepEqual(r.seqs(), [26, 27, 28, 29, 30]);
  assert.deepEqual(journal.requests.map((q) => q.after), [3, 25]);
});

test('without onReset, delivery continues from oldest_seq - 1 and an error says so', async () => {
  const { journal, sockets, sb, errors } = setup();
  for (let i = 1; i <= 4; i++) journal.append(TOPIC, i);
  journal.oldest.set(TOPIC, 3);
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);
  sockets[0].open();
  await settle();
  ack(sockets[0], 4);
  await settle();
  assert.deepEqual(r.seqs(), [3, 4]);
  assert.deepEqual(errors, ['pruned']);
});

test('journal outages are retried with backoff', async () => {
  const { clock, journal, sockets, sb, errors } = setup();
  journal.append(TOPIC, 1);
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, TOPIC);
  journal.failNext = 2;
  sockets[0].open();
  await settle();
  ack(sockets[0], 1);
  await settle();
  assert.deepEqual(r.seqs(), []);
  await clock.advance(500); // first retry: 0.5 * 1000
  assert.deepEqual(r.seqs(), []);
  await clock.advance(1_000); // second: 0.5 * 2000
  assert.deepEqual(r.seqs(), [1]);
  assert.deepEqual(errors, ['unavailable', 'unavailable']);
});

test('no pong within the timeout: the socket is dropped and replaced', async () => {
  const { clock, sockets, sb } = setup();
  record(sb, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, null);
  await clock.advance(20_000);
  const pings = ws.sentOf(3);
  assert.equal(pings.length, 1);
  ws.receive([18, pings[0][1]]); // answered: stays up
  await clock.advance(20_000);
  assert.equal(ws.sentOf(3).length, 2);
  assert.equal(ws.closedWith, null);
  await clock.advance(4_999);
  assert.equal(ws.closedWith, null);
  await clock.advance(1);
  assert.deepEqual(ws.closedWith, { code: 1000, reason: 'ping_timeout' });
  assert.equal(sb.state, 'reconnecting');
  await clock.advance(500);
  assert.equal(sockets.length, 2);
  sockets[1].open();
  await settle();
  assert.equal(sockets[1].sentOf(1).length, 1, 'subscriptions are restored on the new socket');
});

test('reconnect backoff: grows while connections fail, resets after a stable one, longer for 4002', async () => {
  const { clock, sockets, sb } = setup();
  record(sb, TOPIC);
  // Each attempt fails before opening: delays 500, 1000, 2000 (random 0.5, base 1000).
  sockets[0].serverClose(1006);
  await clock.advance(500);
  sockets[1].serverClose(1006);
  await clock.advance(999);
  assert.equal(sockets.length, 2);
  await clock.advance(1);
  sockets[2].serverClose(1006);
  await clock.advance(2_000);
  assert.equal(sockets.length, 4);
  // A connection that lasts stableMs resets the backoff: the next delay is 500 again.
  sockets[3].open();
  await clock.advance(10_000);
  sockets[3].serverClose(1012);
  assert.deepEqual(clock.pending(), [500]);
  await clock.advance(500);
  // Overloaded: at least overloadBaseMs (5000 by default).
  sockets[4].open();
  sockets[4].serverClose(4002);
  assert.ok(clock.pending()[0] >= 5_000, `overloaded delay ${clock.pending()[0]}`);
  sb.close();
  assert.deepEqual(clock.pending(), []);
});

test('a connect attempt that never opens times out', async () => {
  const { clock, sockets, sb } = setup({ connectTimeoutMs: 3_000 });
  record(sb, TOPIC);
  await clock.advance(3_000);
  assert.deepEqual(sockets[0].closedWith, { code: 1000, reason: 'connect_timeout' });
  await clock.advance(500);
  assert.equal(sockets.length, 2);
});

test('close() unsubscribes; nothing is delivered after it', async () => {
  const { journal, sockets, sb } = setup();
  const r = record(sb, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, null);
  publish(journal, ws, TOPIC, 1);
  r.sub.close();
  assert.deepEqual(ws.sentOf(2).map((f) => f[2]), [TOPIC]);
  publish(journal, ws, TOPIC, 2);
  assert.deepEqual(r.seqs(), [1]);
  assert.deepEqual(r.subStates, ['subscribing', 'live', 'closed']);
  // The topic is free again.
  const again = record(sb, TOPIC);
  await settle();
  assert.equal(ws.sentOf(1).length, 2);
  assert.equal(again.sub.state, 'subscribing');
});

test('a refused subscription fails with its code; a handler error does not stop delivery', async () => {
  const { journal, sockets, sb, errors } = setup();
  const bad = record(sb, 'secret');
  const fine = record(sb, TOPIC, {
    onEnvelope(env) {
      if (env.seq === 1) throw new Error('app bug');
      fine.got.push(env);
    },
  });
  const ws = sockets[0];
  ws.open();
  await settle();
  const [subBad, subFine] = ws.sentOf(1);
  ws.receive([17, subBad[1], 'too_many_subscriptions', 'limit 1']);
  ws.receive([16, subFine[1], null]);
  publish(journal, ws, TOPIC, 1);
  publish(journal, ws, TOPIC, 2);
  assert.equal(bad.sub.state, 'failed');
  assert.deepEqual(fine.seqs(), [2]);
  assert.deepEqual(errors, ['too_many_subscriptions', 'handler_error']);
  assert.throws(() => sb.subscribe(TOPIC, { getToken: () => 't', onEnvelope() {} }), /already subscribed/);
  assert.throws(() => sb.subscribe('bad topic', { getToken: () => 't', onEnvelope() {} }), TypeError);
});

test('repeated token refusals end the subscription instead of looping', async () => {
  const { clock, sockets, sb, errors } = setup({ maxTokenRetries: 2 });
  const r = record(sb, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  for (let i = 0; i < 3; i++) {
    ws.receive([17, ws.lastSubscribe()[1], 'token_bad_signature', 'bad']);
    await clock.advance(10_000);
  }
  assert.equal(r.sub.state, 'failed');
  assert.deepEqual(r.tokens.length, 3);
  assert.deepEqual(errors, ['token_bad_signature']);
});

test('a token whose exp is near is refreshed before it is sent', async () => {
  const { clock, sockets, sb } = setup();
  const { encode } = await import('@msgpack/msgpack');
  const mint = (exp) => {
    const claims = encode([1, 'k1', 'u', [TOPIC], exp - 60, exp, null]);
    return Buffer.from([...claims, ...new Uint8Array(64)]).toString('base64url');
  };
  const nowSec = Math.floor(clock.now() / 1000);
  const issued = [mint(nowSec + 5), mint(nowSec + 300)];
  let calls = 0;
  sb.subscribe(TOPIC, { getToken: () => issued[calls++], onEnvelope() {} });
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, null);
  ws.serverClose(1001);
  await clock.advance(500);
  sockets[1].open();
  await settle();
  // The first token expires within the 15 s margin: a second one was fetched for the new socket.
  assert.equal(calls, 2);
  assert.equal(sockets[1].lastSubscribe()[3], issued[1]);
});

test('malformed and text frames are reported, not fatal', async () => {
  const { journal, sockets, sb, errors } = setup();
  const r = record(sb, TOPIC);
  const ws = sockets[0];
  ws.open();
  await settle();
  ack(ws, null);
  ws.receive(Uint8Array.of(0x91, 0x09));
  ws.onmessage({ data: 'hello' });
  publish(journal, ws, TOPIC, 1);
  assert.deepEqual(r.seqs(), [1]);
  assert.deepEqual(errors, ['bad_frame', 'bad_frame']);
});

test('reconnectNow skips the backoff wait', async () => {
  const { clock, sockets, sb } = setup();
  record(sb, TOPIC);
  sockets[0].open();
  sockets[0].serverClose(1006);
  assert.equal(sockets.length, 1);
  sb.reconnectNow();
  assert.equal(sockets.length, 2);
  sb.reconnectNow(); // already connecting: nothing
  assert.equal(sockets.length, 2);
  assert.deepEqual(clock.pending(), [10_000], 'only the connect timeout is left');
});

test('journal 403 topic_not_granted: one fresh token, then the subscription fails', async () => {
  const { journal, sockets, sb, errors } = setup({ maxTokenRetries: 1 });
  const r = record(sb, TOPIC, { afterSeq: 0 });
  journal.allow(`tok-${TOPIC}-1`, 'elsewhere');
  journal.allow(`tok-${TOPIC}-2`, 'elsewhere');
  sockets[0].open();
  await settle();
  ack(sockets[0], 1);
  await settle();
  assert.equal(r.sub.state, 'failed');
  assert.deepEqual(r.tokens, [`tok-${TOPIC}-1`, `tok-${TOPIC}-2`]);
  assert.deepEqual(errors, ['topic_not_granted']);
  assert.deepEqual(sockets[0].sentOf(2).map((f) => f[2]), [TOPIC], 'unsubscribed from the router');
});
