// Test doubles: a clock moved by hand, a WebSocket driven by the test, and an in-memory
// journal behind a fetch function. They implement only what the client uses.
import { decode, encode } from '@msgpack/msgpack';

/** Lets every pending promise callback and immediate run. */
export async function settle(rounds = 30) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.ids = 0;
  }

  now() {
    return this.t;
  }

  setTimeout(fn, ms) {
    const id = ++this.ids;
    this.timers.set(id, { at: this.t + Math.max(0, ms | 0), fn, id });
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  /** Moves time forward by `ms`, running each timer due on the way (in time order). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next = null;
      for (const t of this.timers.values()) {
        if (t.at <= end && (!next || t.at < next.at || (t.at === next.at && t.id < next.id))) next = t;
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.t = next.at;
      next.fn();
    }
    this.t = end;
    await settle();
  }

  /** The delays of the pending timers, from now. */
  pending() {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

const toArrayBuffer = (u8) => u8.buffer.slice(u8.byteOffset, u8.byteOffset + u8.byteLength);

/** A WebSocket class whose instances the test opens, feeds and closes. */
export function fakeWebSocket() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.binaryType = 'blob';
      this.sent = []; // decoded client frames
      this.closedWith = null;
      sockets.push(this);
    }

    send(bytes) {
      if (this.readyState !== 1) throw new Error('socket not open');
      if (!(bytes instanceof Uint8Array)) throw new Error('client must send binary');
      this.sent.push(decode(bytes));
    }

    close(code, reason) {
      this.closedWith = { code, reason };
      this.readyState = 3;
    }

    // --- the router's side ---
    open() {
      this.readyState = 1;
      this.onopen?.({});
    }

    /** Sends a router frame (an array, encoded here) or raw bytes. */
    receive(frame) {
      const data = frame instanceof Uint8Array ? frame : encode(frame);
      this.onmessage?.({ data: toArrayBuffer(data) });
    }

    serverClose(code = 1006, reason = '') {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }

    /** The client frames sent so far of a type (1 subscribe, 2 unsubscribe, 3 ping). */
    sentOf(type) {
      return this.sent.filter((f) => f[0] === type);
    }

    lastSubscribe() {
      return this.sentOf(1).at(-1);
    }
  }
  return { FakeWebSocket, sockets };
}

/** An envelope frame array, as the journal stores and the router forwards it. */
export function envelopeFrame(topic, seq, payload = { n: seq }, kind = 'test.kind') {
  const bytes = new TextEncoder().encode(JSON.stringify(payload));
  return [19, topic, seq, `e-${topic}-${seq}`, 1_700_000_000_000 + seq, kind, bytes];
}

/**
 * An in-memory journal with the reconciliation API. `fetch` is what the client gets.
 * `validTokens`: token -> topics it grants (anything else is 401 token_expired).
 */
export class FakeJournal {
  constructor() {
    this.topics = new Map();
    this.validTokens = new Map();
    this.requests = [];
    this.oldest = new Map(); // topic -> oldest seq kept (pruning)
    this.gate = null; // a promise every answer waits for, when set
    this.failNext = 0; // answer this many requests with 503
    this.fetch = (url, init) => this.handle(url, init);
  }

  append(topic, payload, kind) {
    const list = this.topics.get(topic) ?? [];
    this.topics.set(topic, list);
    const f = envelopeFrame(topic, list.length + 1, payload, kind);
    list.push(f);
    return f;
  }

  allow(token, ...topics) {
    this.validTokens.set(token, topics);
  }

  hold() {
    let release;
    this.gate = new Promise((r) => (release = r));
    return () => {
      this.gate = null;
      release();
    };
  }

  async handle(url, init = {}) {
    const u = new URL(url);
    const m = u.pathname.match(/^\/v1\/topics\/([^/]+)\/envelopes$/);
    const auth = (init.headers?.Authorization ?? '').replace(/^Bearer /, '');
    const req = {
      topic: m ? decodeURIComponent(m[1]) : null,
      after: Number(u.searchParams.get('after')),
      limit: Number(u.searchParams.get('limit') || 100),
      token: auth,
      accept: init.headers?.Accept,
      path: u.pathname,
    };
    this.requests.push(req);
    if (this.gate) await this.gate;
    if (init.signal?.aborted) throw Object.assign(new Error('aborted'), { name: 'AbortError' });
    const json = (status, body) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
    if (this.failNext > 0) {
      this.failNext--;
      return json(503, { error: 'unavailable', message: 'try later' });
    }
    if (!m) return json(404, { error: 'not_found', message: 'no route' });
    const grants = this.validTokens.get(req.token);
    if (!grants) return json(401, { error: 'token_expired', message: 'token expired' });
    if (!grants.includes(req.topic)) return json(403, { error: 'topic_not_granted', message: 'no' });
    const list = this.topics.get(req.topic) ?? [];
    const oldest = this.oldest.get(req.topic) ?? 1;
    if (req.after + 1 < oldest) return json(410, { error: 'pruned', message: 'pruned', oldest_seq: oldest });
    const rest = list.filter((f) => f[2] > req.after);
    const page = rest.slice(0, req.limit);
    const more = rest.length > page.length;
    const body = encode({ envelopes: page, more, next_after: page.length ? page.at(-1)[2] : req.after });
    return new Response(body, { status: 200, headers: { 'content-type': 'application/msgpack' } });
  }
}
