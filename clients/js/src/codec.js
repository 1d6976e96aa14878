// Frame codec: the MessagePack frames between a client and the router, and the journal's
// page body. Pure: bytes in, plain objects out (no socket, no clock).
//
// Mirrors src/wire/frame.rs and src/wire/envelope.rs (SPEC.md has the byte vectors):
//
//   client -> router                     router -> client
//   [1, id, topic, token] subscribe      [16, id, last_seq | nil]                 ok
//   [2, id, topic]        unsubscribe    [17, id, code, message]                  error
//   [3, id]               ping           [18, id]                                 pong
//                                        [19, topic, seq, id, ts, kind, payload]  envelope
//                                        [20, [topic, ...]]                       resync
//                                        [21, topic, from_seq, to_seq]            gap
//                                        [22, topic, code]                        unsubscribed
//
// Decoding is strict like the Rust decoder (arity, types, limits), so a malformed frame is a
// typed FrameError and never a half-filled object.

import { Decoder, Encoder } from '@msgpack/msgpack';

export const FrameType = Object.freeze({
  SUBSCRIBE: 1,
  UNSUBSCRIBE: 2,
  PING: 3,
  OK: 16,
  ERROR: 17,
  PONG: 18,
  ENVELOPE: 19,
  RESYNC: 20,
  GAP: 21,
  UNSUBSCRIBED: 22,
});

/** WebSocket close codes the router sends (src/wire/frame.rs, CloseCode). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  INVALID_DATA: 1007,
  POLICY: 1008,
  TOO_BIG: 1009,
  INTERNAL: 1011,
  RESTART: 1012,
  SLOW_CONSUMER: 4000,
  IDLE_TIMEOUT: 4001,
  OVERLOADED: 4002,
});

/** Hard limits of the wire contract (src/wire/limits.rs). */
export const Limits = Object.freeze({
  MAX_TOPIC_BYTES: 200,
  MAX_TOKEN_TEXT_BYTES: 16 * 1024,
  MAX_KIND_BYTES: 128,
  MAX_ID_BYTES: 64,
  MAX_ENVELOPE_BYTES: 1024 * 1024,
  MAX_RESYNC_TOPICS: 256,
  MAX_U32: 0xffffffff,
});

/** Bytes that are not a valid frame (or journal page). */
export class FrameError extends Error {
  constructor(message) {
    super(message);
    this.name = 'FrameError';
  }
}

/** Why a string is not a topic, or null when it is one (1..=200 bytes of 0x21..=0x7e). */
export function topicError(topic) {
  if (typeof topic !== 'string') return 'topic must be a string';
  if (topic.length === 0) return 'topic is empty';
  if (topic.length > Limits.MAX_TOPIC_BYTES) return `topic is ${topic.length} bytes, above the limit of ${Limits.MAX_TOPIC_BYTES}`;
  for (let i = 0; i < topic.length; i++) {
    const c = topic.charCodeAt(i);
    if (c < 0x21 || c > 0x7e) return `topic has a character 0x${c.toString(16)} at ${i} outside printable ASCII`;
  }
  return null;
}

// One encoder for every client frame; `encode` returns a fresh, exactly sized copy (the
// bytes handed to WebSocket.send), so reusing the encoder's scratch buffer is safe.
const encoder = new Encoder({ initialBufferSize: 256 });
const encode = (value) => encoder.encode(value);

function checkU32(id) {
  if (!Number.isInteger(id) || id < 0 || id > Limits.MAX_U32) throw new RangeError(`request id ${id} is not a u32`);
}

function checkTopic(topic) {
  const e = topicError(topic);
  if (e) throw new TypeError(e);
}

export function encodeSubscribe(id, topic, token) {
  checkU32(id);
  checkTopic(topic);
  if (typeof token !== 'string' || token.length === 0) throw new TypeError('token must be a non-empty string');
  return encode([FrameType.SUBSCRIBE, id, topic, token]);
}

export function encodeUnsubscribe(id, topic) {
  checkU32(id);
  checkTopic(topic);
  return encode([FrameType.UNSUBSCRIBE, id, topic]);
}

export function encodePing(id) {
  checkU32(id);
  return encode([FrameType.PING, id]);
}

// The decoder refuses oversize lengths before it allocates; the field checks below do the rest.
const decoder = new Decoder({
  maxStrLength: Limits.MAX_TOKEN_TEXT_BYTES,
  maxBinLength: Limits.MAX_ENVELOPE_BYTES,
  maxArrayLength: 1 << 20,
  maxMapLength: 16,
  maxExtLength: 0,
});

function decodeBytes(bytes, what) {
  if (bytes.byteLength > Limits.MAX_ENVELOPE_BYTES * 64) throw new FrameError(`${what} is too large`);
  try {
    return decoder.decode(bytes);
  } catch (e) {
    throw new FrameError(`malformed ${what}: ${e.message}`);
  }
}

function uint(v, what) {
  if (!Number.isSafeInteger(v) || v < 0) throw new FrameError(`${what} must be an unsigned integer`);
  return v;
}

function u32(v, what) {
  uint(v, what);
  if (v > Limits.MAX_U32) throw new FrameError(`${what} must be a 32-bit unsigned integer`);
  return v;
}

function str(v, what, max) {
  if (typeof v !== 'string') throw new FrameError(`${what} must be a string`);
  // A string's UTF-8 length is at least its UTF-16 length; the exact check is cheap enough here.
  if (v.length > max || utf8Length(v) > max) throw new FrameError(`${what} is longer than ${max} bytes`);
  return v;
}

function topicField(v) {
  if (typeof v !== 'string') throw new FrameError('topic must be a string');
  const e = topicError(v);
  if (e) throw new FrameError(`invalid topic: ${e}`);
  return v;
}

function utf8Length(s) {
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) { n += 4; i++; }
    else n += 3;
  }
  return n;
}

function arity(a, n) {
  if (a.length !== n) throw new FrameError(`frame type ${a[0]} has ${a.length} elements, expected ${n}`);
}

/**
 * Turns a decoded envelope frame array into the envelope the application sees:
 * { topic, seq, id, ts, kind, payload: Uint8Array }. The payload is copied, so it does not
 * keep the whole socket message or journal page alive.
 */
export function envelopeFromArray(a) {
  if (!Array.isArray(a) || a[0] !== FrameType.ENVELOPE) throw new FrameError('not an envelope frame');
  arity(a, 7);
  const payload = a[6];
  if (!(payload instanceof Uint8Array)) throw new FrameError('payload must be binary');
  return {
    topic: topicField(a[1]),
    seq: uint(a[2], 'seq'),
    id: str(a[3], 'id', Limits.MAX_ID_BYTES),
    ts: uint(a[4], 'ts'),
    kind: str(a[5], 'kind', Limits.MAX_KIND_BYTES),
    payload: payload.slice(),
  };
}

/** Decodes one envelope frame (the bytes live delivery and the journal share). */
export function decodeEnvelope(bytes) {
  return envelopeFromArray(decodeBytes(toBytes(bytes), 'envelope'));
}

/**
 * Decodes a router frame into a tagged object:
 *   { type: 'ok', id, lastSeq }          lastSeq: number | null
 *   { type: 'error', id, code, message }
 *   { type: 'pong', id }
 *   { type: 'envelope', envelope }
 *   { type: 'resync', topics }
 *   { type: 'gap', topic, fromSeq, toSeq }
 *   { type: 'unsubscribed', topic, code }
 */
export function decodeServerFrame(bytes) {
  bytes = toBytes(bytes);
  if (bytes.byteLength > Limits.MAX_ENVELOPE_BYTES + 1024) throw new FrameError(`frame is ${bytes.byteLength} bytes, above the limit`);
  const a = decodeBytes(bytes, 'frame');
  if (!Array.isArray(a) || a.length === 0) throw new FrameError('frame must be a non-empty array');
  const t = a[0];
  switch (t) {
    case FrameType.OK:
      arity(a, 3);
      return { type: 'ok', id: u32(a[1], 'id'), lastSeq: a[2] === null ? null : uint(a[2], 'last_seq') };
    case FrameType.ERROR:
      arity(a, 4);
      return { type: 'error', id: u32(a[1], 'id'), code: str(a[2], 'code', 64), message: str(a[3], 'message', 1024) };
    case FrameType.PONG:
      arity(a, 2);
      return { type: 'pong', id: u32(a[1], 'id') };
    case FrameType.ENVELOPE:
      return { type: 'envelope', envelope: envelopeFromArray(a) };
    case FrameType.RESYNC: {
      arity(a, 2);
      if (!Array.isArray(a[1])) throw new FrameError('resync topics must be an array');
      if (a[1].length > Limits.MAX_RESYNC_TOPICS) throw new FrameError('too many resync topics');
      return { type: 'resync', topics: a[1].map(topicField) };
    }
    case FrameType.GAP: {
      arity(a, 4);
      const fromSeq = uint(a[2], 'from_seq');
      const toSeq = uint(a[3], 'to_seq');
      if (toSeq < fromSeq) throw new FrameError('gap range is backwards');
      return { type: 'gap', topic: topicField(a[1]), fromSeq, toSeq };
    }
    case FrameType.UNSUBSCRIBED:
      arity(a, 3);
      return { type: 'unsubscribed', topic: topicField(a[1]), code: str(a[2], 'code', 64) };
    default:
      throw new FrameError(`unknown frame type ${typeof t === 'number' ? t : typeof t}`);
  }
}

/**
 * Decodes the journal's MessagePack page:
 * {"envelopes": [<envelope frame>, ...], "more": bool, "next_after": uint}.
 */
export function decodeJournalPage(bytes) {
  const m = decodeBytes(toBytes(bytes), 'journal page');
  if (m === null || typeof m !== 'object' || Array.isArray(m) || m instanceof Uint8Array) {
    throw new FrameError('journal page must be a map');
  }
  if (!Array.isArray(m.envelopes)) throw new FrameError('journal page: envelopes must be an array');
  if (typeof m.more !== 'boolean') throw new FrameError('journal page: more must be a boolean');
  return { envelopes: m.envelopes.map(envelopeFromArray), more: m.more, nextAfter: uint(m.next_after, 'next_after') };
}

/** Accepts the shapes a WebSocket or fetch hands over: ArrayBuffer, any view, Node Buffer. */
export function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new FrameError('expected binary data');
}

// --- tokens (read only: the client never verifies, it only looks at exp to refresh early) ---

function base64urlDecode(text) {
  if (!/^[A-Za-z0-9_-]*$/.test(text)) throw new FrameError('token is not base64url');
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((text.length + 3) % 4);
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/**
 * The claims of a token, unverified: { version, kid, sub, topics, iat, exp, nbf } (seconds).
 * Throws FrameError when the text is not a token.
 */
export function tokenClaims(token) {
  const raw = base64urlDecode(String(token).replace(/=+$/, ''));
  if (raw.length <= 64) throw new FrameError('token too short');
  const c = decodeBytes(raw.subarray(0, raw.length - 64), 'token claims');
  if (!Array.isArray(c) || c.length !== 7 || c[0] !== 1) throw new FrameError('token claims must be [1, kid, sub, topics, iat, exp, nbf]');
  return {
    version: c[0],
    kid: str(c[1], 'kid', 64),
    sub: str(c[2], 'sub', 256),
    topics: Array.isArray(c[3]) ? c[3].map(topicField) : (() => { throw new FrameError('topics must be an array'); })(),
    iat: uint(c[4], 'iat'),
    exp: uint(c[5], 'exp'),
    nbf: c[6] === null ? null : uint(c[6], 'nbf'),
  };
}

// --- payload helpers ---

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** The payload as text (throws on invalid UTF-8). */
export function textPayload(envelope) {
  return utf8.decode(envelope.payload);
}

/** The payload parsed as JSON: what the journal stores for a JSON `payload` publish. */
export function jsonPayload(envelope) {
  return JSON.parse(textPayload(envelope));
}
