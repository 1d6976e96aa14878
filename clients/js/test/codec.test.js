// Byte-exact frames, computed by hand from the layouts in src/wire/frame.rs and envelope.rs.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import {
  FrameError,
  decodeEnvelope,
  decodeJournalPage,
  decodeServerFrame,
  encodePing,
  encodeSubscribe,
  encodeUnsubscribe,
  jsonPayload,
  textPayload,
  tokenClaims,
  topicError,
} from '../src/codec.js';

// '92 03 01' -> Uint8Array; "text" segments as 'post:42' in quotes are spelled as ASCII.
function hex(spec) {
  const out = [];
  for (const part of spec.match(/'[^']*'|[0-9a-f]{2}/gi) ?? []) {
    if (part.startsWith("'")) for (const ch of part.slice(1, -1)) out.push(ch.charCodeAt(0));
    else out.push(parseInt(part, 16));
  }
  return Uint8Array.from(out);
}

const bytes = (u8) => [...u8].map((b) => b.toString(16).padStart(2, '0')).join(' ');

test('client frames encode to the exact bytes', () => {
  assert.equal(bytes(encodePing(1)), '92 03 01');
  assert.equal(bytes(encodePing(300)), '92 03 cd 01 2c');
  assert.equal(bytes(encodePing(0xffffffff)), '92 03 ce ff ff ff ff');
  assert.deepEqual(encodeSubscribe(1, 'post:42', 'tok'), hex("94 01 01 a7 'post:42' a3 'tok'"));
  assert.deepEqual(encodeUnsubscribe(2, 'a'), hex("93 02 02 a1 'a'"));
  // 40-byte topic: str8 (d9 28), the shortest form, as rmp writes it.
  const t40 = 'x'.repeat(40);
  assert.deepEqual(encodeSubscribe(128, t40, 'k'), hex(`94 01 cc 80 d9 28 '${t40}' a1 'k'`));
});

test('client frames refuse what the router would refuse', () => {
  assert.throws(() => encodePing(-1), RangeError);
  assert.throws(() => encodePing(2 ** 32), RangeError);
  assert.throws(() => encodePing(1.5), RangeError);
  assert.throws(() => encodeSubscribe(1, 'has space', 't'), TypeError);
  assert.throws(() => encodeSubscribe(1, '', 't'), TypeError);
  assert.throws(() => encodeSubscribe(1, 'x'.repeat(201), 't'), TypeError);
  assert.throws(() => encodeSubscribe(1, 'ok', ''), TypeError);
  assert.throws(() => encodeUnsubscribe(1, 'é'), TypeError);
});

test('topic rule: 1..=200 bytes of printable ASCII', () => {
  assert.equal(topicError('a'), null);
  assert.equal(topicError('!~'), null);
  assert.equal(topicError('x'.repeat(200)), null);
  assert.match(topicError(''), /empty/);
  assert.match(topicError('x'.repeat(201)), /200/);
  assert.match(topicError('a\x7f'), /0x7f/);
  assert.match(topicError(7), /string/);
});

test('router frames decode from the exact bytes', () => {
  assert.deepEqual(decodeServerFrame(hex('93 10 07 c0')), { type: 'ok', id: 7, lastSeq: null });
  assert.deepEqual(decodeServerFrame(hex('93 10 07 05')), { type: 'ok', id: 7, lastSeq: 5 });
  assert.deepEqual(decodeServerFrame(hex('93 10 07 cf 00 00 00 01 00 00 00 00')), { type: 'ok', id: 7, lastSeq: 2 ** 32 });
  assert.deepEqual(decodeServerFrame(hex("94 11 03 ad 'token_expired' a7 'expired'")), {
    type: 'error', id: 3, code: 'token_expired', message: 'expired',
  });
  assert.deepEqual(decodeServerFrame(hex('92 12 09')), { type: 'pong', id: 9 });
  assert.deepEqual(decodeServerFrame(hex("92 14 92 a1 'a' a1 'b'")), { type: 'resync', topics: ['a', 'b'] });
  assert.deepEqual(decodeServerFrame(hex("94 15 a1 'a' 03 05")), { type: 'gap', topic: 'a', fromSeq: 3, toSeq: 5 });
  assert.deepEqual(decodeServerFrame(hex("93 16 a1 'a' ad 'token_expired'")), { type: 'unsubscribed', topic: 'a', code: 'token_expired' });
  // An ArrayBuffer (what a browser WebSocket gives with binaryType 'arraybuffer') works too.
  assert.deepEqual(decodeServerFrame(hex('92 12 09').buffer), { type: 'pong', id: 9 });
});

// [19, "post:42", 5, "e1", 1700000000123, "k", bin 01 02]
const ENVELOPE = hex("97 13 a7 'post:42' 05 a2 'e1' cf 00 00 01 8b cf e5 68 7b a1 'k' c4 02 01 02");

test('envelope frame decodes to the application envelope', () => {
  const want = { topic: 'post:42', seq: 5, id: 'e1', ts: 1700000000123, kind: 'k', payload: Uint8Array.of(1, 2) };
  assert.deepEqual(decodeServerFrame(ENVELOPE), { type: 'envelope', envelope: want });
  assert.deepEqual(decodeEnvelope(ENVELOPE), want);
  // The payload is a copy: it does not pin (or alias) the socket's buffer.
  const src = ENVELOPE.slice();
  const env = decodeEnvelope(src);
  src[src.length - 1] = 0xff;
  assert.equal(env.payload[1], 2);
});

test('payload helpers decode text and JSON', () => {
  const env = { payload: new TextEncoder().encode('{"body":"héllo","n":1}') };
  assert.equal(textPayload(env), '{"body":"héllo","n":1}');
  assert.deepEqual(jsonPayload(env), { body: 'héllo', n: 1 });
  assert.throws(() => textPayload({ payload: Uint8Array.of(0xff) }));
});

test('malformed router frames are FrameErrors', () => {
  const bad = {
    empty: '',
    'not an array': '05',
    'empty array': '90',
    'unknown type': '91 09',
    'type is a string': "91 a1 'x'",
    'truncated': ENVELOPE.slice(0, -1),
    'trailing byte': Uint8Array.from([...ENVELOPE, 0]),
    'ok arity': '92 10 07',
    'ok id above u32': '93 10 cf 00 00 00 01 00 00 00 00 c0',
    'negative seq': "97 13 a1 'a' d0 ff a1 'i' 01 a1 'k' c4 00",
    'payload as str': "97 13 a1 'a' 01 a1 'i' 01 a1 'k' a0",
    'bad topic': "97 13 a3 'a b' 01 a1 'i' 01 a1 'k' c4 00",
    'envelope arity': "96 13 a1 'a' 01 a1 'i' 01 a1 'k'",
    'gap backwards': "94 15 a1 'a' 05 03",
    'resync not array': "92 14 a1 'a'",
    'error code not str': '94 11 01 01 01',
    'unsubscribed topic empty': "93 16 a0 a1 'x'",
  };
  for (const [why, spec] of Object.entries(bad)) {
    const b = typeof spec === 'string' ? hex(spec) : spec;
    assert.throws(() => decodeServerFrame(b), FrameError, why);
  }
  assert.throws(() => decodeServerFrame('text'), FrameError);
});

test('journal page: a map of envelope frames, more and next_after', () => {
  // {"envelopes": [ENVELOPE], "more": false, "next_after": 5}
  const page = hex(`83 a9 'envelopes' 91 ${bytes(ENVELOPE)} a4 'more' c2 aa 'next_after' 05`);
  const p = decodeJournalPage(page);
  assert.equal(p.more, false);
  assert.equal(p.nextAfter, 5);
  assert.equal(p.envelopes.length, 1);
  assert.equal(p.envelopes[0].seq, 5);
  assert.deepEqual(decodeJournalPage(hex("83 a9 'envelopes' 90 a4 'more' c3 aa 'next_after' 00")), { envelopes: [], more: true, nextAfter: 0 });
  assert.throws(() => decodeJournalPage(hex("82 a4 'more' c2 aa 'next_after' 05")), FrameError);
  assert.throws(() => decodeJournalPage(hex("83 a9 'envelopes' 91 92 12 01 a4 'more' c2 aa 'next_after' 05")), FrameError);
  assert.throws(() => decodeJournalPage(hex("83 a9 'envelopes' 90 a4 'more' 00 aa 'next_after' 05")), FrameError);
  assert.throws(() => decodeJournalPage(hex('90')), FrameError);
});

test('token claims are readable (unverified) for early refresh', () => {
  // claims [1, "k1", "u", ["a"], 100, 400, nil] followed by a 64-byte signature.
  const claims = hex("97 01 a2 'k1' a1 'u' 91 a1 'a' 64 cd 01 90 c0");
  const raw = Uint8Array.from([...claims, ...new Uint8Array(64)]);
  const token = Buffer.from(raw).toString('base64url');
  assert.deepEqual(tokenClaims(token), { version: 1, kid: 'k1', sub: 'u', topics: ['a'], iat: 100, exp: 400, nbf: null });
  assert.throws(() => tokenClaims('not base64!'), FrameError);
  assert.throws(() => tokenClaims('AAAA'), FrameError);
});
