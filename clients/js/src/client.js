// The Switchboard client: one WebSocket to the router for every subscription, and the
// journal's HTTP API to recover what live delivery missed, so that the application sees every
// envelope of a topic exactly once, in seq order.
//
// Role of each part: codec.js turns bytes into frames, sequencer.js decides what to deliver,
// backoff.js spaces reconnects, journal.js reads pages. This file only wires them to the
// injected WebSocket, fetch and clock, and holds the connection's state machine:
//
//   connecting -> connected <-> catching-up -> reconnecting -> connected ... -> closed
//
// Invariants:
// - At most one live socket (`this.ws`); callbacks of an older socket are ignored.
// - A topic has at most one Subscription; its Sequencer survives reconnects, so its position
//   (the last seq delivered) is never lost while the subscription is open.
// - At most one reconciliation runs per topic; a reason to reconcile that arrives during one
//   makes it run another round instead of starting a second.

import {
  CloseCode,
  FrameError,
  Limits,
  decodeServerFrame,
  encodePing,
  encodeSubscribe,
  encodeUnsubscribe,
  tokenClaims,
  topicError,
} from './codec.js';
import { Backoff } from './backoff.js';
import { systemClock } from './clock.js';
import { JournalClient } from './journal.js';
import { Sequencer } from './sequencer.js';

const OPEN = 1; // WebSocket.OPEN

/** An error reported to `onError` / the 'error' event. */
export class SwitchboardError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'SwitchboardError';
    /** Machine code: a router or journal code (`token_expired`, `topic_not_granted`, ...) or
     * one of the client's (`get_token_failed`, `handler_error`, `journal_hole`, `bad_frame`,
     * `protocol_close`, `pruned`). */
    this.code = code;
    Object.assign(this, extra);
  }
}

// Subscribe errors that a fresh token may cure (a rotated key, an expired or stale token).
const TOKEN_CODES = new Set([
  'token_expired',
  'token_not_yet_valid',
  'token_bad_signature',
  'token_unknown_kid',
  'token_malformed',
  'token_unsupported_version',
  'token_ttl_too_long',
  'topic_not_granted',
]);
// Subscribe errors worth retrying later with the same request.
const RETRY_CODES = new Set(['rate_limited', 'internal']);

export class Switchboard {
  /**
   * @param {object} o
   * @param {string} o.url router WebSocket URL (ws:// or wss://)
   * @param {string} o.journalUrl journal base URL (http:// or https://), without /v1
   * @param {Function} [o.WebSocket] WebSocket constructor (the browser's by default; in Node 20
   *   pass the `ws` package's)
   * @param {Function} [o.fetch] fetch (global by default)
   * @param {{now(): number, setTimeout: Function, clearTimeout: Function}} [o.clock]
   * @param {() => number} [o.random] uniform in [0, 1), for jitter
   * @param {number} [o.pingIntervalMs=25000] application ping period
   * @param {number} [o.pingTimeoutMs=10000] no pong within this: the socket is dead, reconnect
   * @param {number} [o.connectTimeoutMs=10000] no open within this: give up the attempt
   * @param {number} [o.pageLimit=500] envelopes per journal page
   * @param {number} [o.tokenMarginSec=15] refetch a cached token this long before its exp
   * @param {number} [o.maxTokenRetries=3] consecutive token refusals before a subscription fails
   * @param {number} [o.maxHoleRounds=3] journal rounds without progress before a hole is skipped
   * @param {number} [o.maxBuffered=10000] live envelopes held per topic during catch-up
   * @param {object} [o.backoff] Backoff options for reconnects (see backoff.js)
   */
  constructor({
    url,
    journalUrl,
    WebSocket: WebSocketCtor = globalThis.WebSocket,
    fetch: fetchFn = globalThis.fetch,
    clock = systemClock,
    random = Math.random,
    pingIntervalMs = 25_000,
    pingTimeoutMs = 10_000,
    connectTimeoutMs = 10_000,
    pageLimit = 500,
    tokenMarginSec = 15,
    maxTokenRetries = 3,
    maxHoleRounds = 3,
    maxBuffered = 10_000,
    backoff = {},
  } = {}) {
    if (!url) throw new TypeError('url (the router WebSocket URL) is required');
    if (typeof WebSocketCtor !== 'function') throw new TypeError('no WebSocket available: pass one (in Node 20, the `ws` package)');
    this.url = url;
    this.WebSocket = WebSocketCtor;
    this.journal = journalUrl ? new JournalClient({ baseUrl: journalUrl, fetch: fetchFn }) : null;
    this.clock = clock;
    this.random = random;
    this.opts = { pingIntervalMs, pingTimeoutMs, connectTimeoutMs, pageLimit, tokenMarginSec, maxTokenRetries, maxHoleRounds, maxBuffered };
    this.backoffOpts = { ...backoff, random };
    this.backoff = new Backoff(this.backoffOpts);

    /** @type {Map<string, Subscription>} */
    this.subs = new Map();
    this.ws = null;
    this.wsOpen = false;
    this.everOpened = false;
    this.closed = false;
    this._state = 'idle';
    this.listeners = new Map();
    this.pending = new Map(); // request id -> { kind, sub, token }
    this.reqId = 1;
    this.timers = { connect: null, reconnect: null, ping: null, pong: null };
    this.pingId = null;
    this.rxQueue = null; // a promise chain, only while Blob messages are being read
  }

  /** The connection state: idle, connecting, connected, catching-up, reconnecting, closed. */
  get state() {
    return this._state;
  }

  /** Listens to 'state' (state), 'error' (SwitchboardError), 'disconnect' ({code, reason}). Returns an unsubscribe function. */
  on(event, fn) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(fn);
    return () => this.listeners.get(event)?.delete(fn);
  }

  emit(event, arg) {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(arg);
      } catch {
        // a listener's bug must not break the connection
      }
    }
  }

  /**
   * Subscribes to a topic.
   * @param {string} topic
   * @param {object} o
   * @param {(ctx: {topic: string}) => Promise<string> | string} o.getToken asks the application
   *   server for a token granting `topic`; called again whenever the router or journal refuses it
   * @param {(env: {topic, seq, id, ts, kind, payload: Uint8Array}) => void} o.onEnvelope
   * @param {(state: string) => void} [o.onState] subscribing, catching-up, live, closed, failed
   * @param {(topic: string, oldestSeq: number) => (number | void | Promise<number | void>)} [o.onReset]
   *   the journal pruned envelopes this client needs: reload the application's state, and
   *   return the seq it reflects (default: oldestSeq - 1, where delivery then continues)
   * @param {(err: SwitchboardError) => void} [o.onError]
   * @param {number | null} [o.afterSeq] the last seq the application already has (0: all of
   *   the journal). Absent: live from now (the router's ack or the first envelope sets it).
   * @returns {Subscription}
   */
  subscribe(topic, { getToken, onEnvelope, onState, onReset, onError, afterSeq = null } = {}) {
    if (this.closed) throw new Error('Switchboard is closed');
    const e = topicError(topic);
    if (e) throw new TypeError(e);
    if (this.subs.has(topic)) throw new Error(`already subscribed to ${topic}`);
    if (typeof getToken !== 'function') throw new TypeError('getToken must be a function');
    if (typeof onEnvelope !== 'function') throw new TypeError('onEnvelope must be a function');
    const sub = new Subscription(this, topic, { getToken, onEnvelope, onState, onReset, onError, afterSeq });
    this.subs.set(topic, sub);
    if (this.wsOpen) this.sendSubscribe(sub);
    else if (!this.ws && !this.timers.reconnect) this.connect();
    this.updateState();
    return sub;
  }

  /**
   * Skips the wait before the next reconnect attempt (call it on the browser's `online` or
   * `visibilitychange` events). Does nothing while connected or connecting.
   */
  reconnectNow() {
    if (this.closed || this.ws || this.subs.size === 0) return;
    if (this.timers.reconnect !== null) this.clock.clearTimeout(this.timers.reconnect);
    this.timers.reconnect = null;
    this.connect();
  }

  /** Closes every subscription and the socket, for good. */
  close() {
    if (this.closed) return;
    this.closed = true;
    for (const sub of [...this.subs.values()]) sub.shutdown('closed', false);
    this.subs.clear();
    this.clearTimers();
    const ws = this.ws;
    this.ws = null;
    this.wsOpen = false;
    if (ws) {
      detach(ws);
      try {
        ws.close(CloseCode.NORMAL);
      } catch {
        // already closing
      }
    }
    this.updateState();
  }

  // --- connection ---------------------------------------------------------------------

  connect() {
    if (this.closed || this.ws) return;
    this.timers.reconnect = null;
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (err) {
      this.emit('error', new SwitchboardError('connect_failed', String(err && err.message)));
      this.scheduleReconnect(null);
      return;
    }
    this.ws = ws;
    this.wsOpen = false;
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => ws === this.ws && this.onOpen();
    ws.onmessage = (ev) => ws === this.ws && this.onMessage(ev.data);
    ws.onclose = (ev) => ws === this.ws && this.onSocketGone(ev?.code ?? null, ev?.reason ?? '');
    ws.onerror = () => {}; // a close event follows
    this.timers.connect = this.clock.setTimeout(() => {
      if (ws === this.ws && !this.wsOpen) this.dropSocket('connect_timeout');
    }, this.opts.connectTimeoutMs);
    this.updateState();
  }

  onOpen() {
    this.clock.clearTimeout(this.timers.connect);
    this.timers.connect = null;
    this.wsOpen = true;
    this.everOpened = true;
    this.backoff.connected(this.clock.now());
    this.schedulePing();
    for (const sub of this.subs.values()) this.sendSubscribe(sub);
    this.updateState();
  }

  // The client decided the socket is dead (no pong, no open): stop listening to it and move
  // on now, without waiting for a close handshake that may never come.
  dropSocket(reason) {
    const ws = this.ws;
    if (!ws) return;
    detach(ws);
    try {
      ws.close(CloseCode.NORMAL, reason);
    } catch {
      // not open yet, or already closing
    }
    this.onSocketGone(null, reason);
  }

  onSocketGone(code, reason) {
    this.clearTimers();
    this.ws = null;
    this.wsOpen = false;
    this.pending.clear();
    this.pingId = null;
    for (const sub of this.subs.values()) sub.socketGone();
    this.backoff.disconnected(this.clock.now());
    if (this.closed) return;
    this.emit('disconnect', { code, reason });
    if (code === CloseCode.POLICY || code === CloseCode.TOO_BIG || code === CloseCode.INVALID_DATA) {
      this.emit('error', new SwitchboardError('protocol_close', `router closed the connection with ${code}: ${reason}`, { closeCode: code }));
    }
    this.scheduleReconnect(code);
  }

  scheduleReconnect(code) {
    if (this.closed || this.timers.reconnect) return;
    if (this.subs.size === 0) {
      // Nothing to receive: connect again on the next subscribe.
      this.updateState();
      return;
    }
    const delay = this.backoff.next({ overloaded: code === CloseCode.OVERLOADED });
    this.timers.reconnect = this.clock.setTimeout(() => this.connect(), delay);
    this.updateState();
  }

  clearTimers() {
    for (const k of Object.keys(this.timers)) {
      if (this.timers[k] !== null) this.clock.clearTimeout(this.timers[k]);
      this.timers[k] = null;
    }
  }

  schedulePing() {
    this.timers.ping = this.clock.setTimeout(() => this.ping(), this.opts.pingIntervalMs);
  }

  ping() {
    this.timers.ping = null;
    if (!this.wsOpen) return;
    if (this.timers.pong === null) {
      // One ping in flight at a time: its deadline is not pushed back by later pings.
      this.pingId = this.nextId();
      this.send(encodePing(this.pingId));
      this.timers.pong = this.clock.setTimeout(() => this.dropSocket('ping_timeout'), this.opts.pingTimeoutMs);
    }
    this.schedulePing();
  }

  nextId() {
    const id = this.reqId;
    this.reqId = id >= Limits.MAX_U32 ? 1 : id + 1;
    return id;
  }

  send(bytes) {
    if (!this.wsOpen) return false;
    try {
      this.ws.send(bytes);
      return true;
    } catch (err) {
      this.emit('error', new SwitchboardError('send_failed', String(err && err.message)));
      this.dropSocket('send_failed');
      return false;
    }
  }

  updateState() {
    let s;
    if (this.closed) s = 'closed';
    else if (this.wsOpen) s = [...this.subs.values()].some((x) => x.reconciling) ? 'catching-up' : 'connected';
    else if (this.ws) s = this.everOpened ? 'reconnecting' : 'connecting';
    else if (this.timers.reconnect) s = 'reconnecting';
    else s = 'idle';
    if (s !== this._state) {
      this._state = s;
      this.emit('state', s);
    }
  }

  // --- frames from the router ---------------------------------------------------------

  onMessage(data) {
    if (typeof data === 'string') {
      this.emit('error', new SwitchboardError('bad_frame', 'router sent a text message; the protocol is binary'));
      return;
    }
    const isBlob = typeof Blob !== 'undefined' && data instanceof Blob;
    if (isBlob || this.rxQueue) {
      // Reading a Blob is asynchronous: chain the reads so frames keep their order.
      const ws = this.ws;
      const prev = this.rxQueue ?? Promise.resolve();
      const next = prev
        .then(() => (isBlob ? data.arrayBuffer() : data))
        .then((buf) => ws === this.ws && this.onBinary(buf))
        .catch(() => {})
        .finally(() => {
          if (this.rxQueue === next) this.rxQueue = null;
        });
      this.rxQueue = next;
      return;
    }
    this.onBinary(data);
  }

  onBinary(data) {
    let f;
    try {
      f = decodeServerFrame(data);
    } catch (err) {
      this.emit('error', new SwitchboardError('bad_frame', err instanceof FrameError ? err.message : String(err)));
      return;
    }
    switch (f.type) {
      case 'envelope': {
        const sub = this.subs.get(f.envelope.topic);
        if (sub) sub.live(f.envelope);
        break;
      }
      case 'ok': {
        const p = this.pending.get(f.id);
        this.pending.delete(f.id);
        if (p?.kind === 'subscribe' && !p.sub.closed) p.sub.subscribed(f.lastSeq);
        break;
      }
      case 'error': {
        const p = this.pending.get(f.id);
        this.pending.delete(f.id);
        if (p?.kind === 'subscribe' && !p.sub.closed) p.sub.subscribeRefused(f.code, f.message, p.token);
        else if (!p || p.kind !== 'unsubscribe') this.emit('error', new SwitchboardError(f.code, f.message, { requestId: f.id }));
        break;
      }
      case 'pong':
        if (f.id === this.pingId) {
          this.clock.clearTimeout(this.timers.pong);
          this.timers.pong = null;
          this.pingId = null;
        }
        break;
      case 'resync':
        for (const t of f.topics) this.subs.get(t)?.requestReconcile();
        break;
      case 'gap': {
        const sub = this.subs.get(f.topic);
        if (sub && sub.seq.gap(f.fromSeq, f.toSeq)) sub.requestReconcile();
        break;
      }
      case 'unsubscribed':
        this.subs.get(f.topic)?.unsubscribedByRouter(f.code);
        break;
    }
  }

  sendSubscribe(sub) {
    sub.subscribeOn(this.ws);
  }
}

function detach(ws) {
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
}

/**
 * One topic's subscription: what `sb.subscribe` returns. `topic`, `lastSeq` and `state` are
 * for reading; `close()` ends it.
 */
export class Subscription {
  constructor(client, topic, { getToken, onEnvelope, onState, onReset, onError, afterSeq }) {
    this.client = client;
    this.topic = topic;
    this.seq = new Sequencer(topic, { afterSeq, maxBuffered: client.opts.maxBuffered });
    this.handlers = { getToken, onEnvelope, onState, onReset, onError };
    this.closed = false;
    this._state = null;
    this.routerSubscribed = false;
    this.sentOn = null; // the socket a subscribe was sent on (until its answer)
    this.token = null; // the cached token
    this.tokenPromise = null;
    this.tokenFailures = 0; // consecutive refusals of fresh tokens
    this.retryBackoff = new Backoff({ ...client.backoffOpts, overloadBaseMs: 0 });
    this.retryTimer = null;
    this.reconciling = false;
    this.reconcileAgain = false;
    this.abort = typeof AbortController === 'function' ? new AbortController() : null;
    this.sleeping = null; // { timer, resolve } while a reconciliation waits
    this.updateState();
  }

  /** The last seq delivered to the application (null: none yet, live-only). */
  get lastSeq() {
    return this.seq.lastSeq;
  }

  /** subscribing, catching-up, live, closed or failed. */
  get state() {
    return this._state;
  }

  /** Ends the subscription: no envelope is delivered after this returns. */
  close() {
    if (this.closed) return;
    const c = this.client;
    this.shutdown('closed', true);
    if (c.subs.get(this.topic) === this) c.subs.delete(this.topic);
    c.updateState();
  }

  shutdown(state, unsubscribe) {
    this.closed = true;
    this.abort?.abort();
    if (this.retryTimer !== null) this.client.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.wake();
    const c = this.client;
    if (unsubscribe && c.wsOpen && (this.routerSubscribed || this.sentOn === c.ws)) {
      const id = c.nextId();
      c.pending.set(id, { kind: 'unsubscribe', sub: this });
      c.send(encodeUnsubscribe(id, this.topic));
    }
    this.routerSubscribed = false;
    this.setState(state);
  }

  fail(err) {
    if (this.closed) return;
    this.report(err);
    const c = this.client;
    this.shutdown('failed', true);
    if (c.subs.get(this.topic) === this) c.subs.delete(this.topic);
    c.updateState();
  }

  report(err) {
    err.topic ??= this.topic;
    try {
      this.handlers.onError?.(err);
    } catch {
      // the application's handler must not break delivery
    }
    this.client.emit('error', err);
  }

  setState(s) {
    if (s === this._state) return;
    this._state = s;
    try {
      this.handlers.onState?.(s);
    } catch {
      // ignore
    }
  }

  updateState() {
    if (this.closed) return;
    this.setState(this.reconciling ? 'catching-up' : this.routerSubscribed ? 'live' : 'subscribing');
  }

  deliver(envs) {
    for (const env of envs) {
      if (this.closed) return;
      try {
        this.handlers.onEnvelope(env);
      } catch (err) {
        this.report(new SwitchboardError('handler_error', `onEnvelope threw: ${err && err.message}`, { cause: err, seq: env.seq }));
      }
    }
  }

  // --- tokens ---

  /** A token for this topic: the cached one unless it expires soon, else a fresh one. */
  async getToken() {
    const c = this.client;
    if (this.token !== null && !expiresSoon(this.token, c.clock.now(), c.opts.tokenMarginSec)) return this.token;
    if (!this.tokenPromise) {
      this.tokenPromise = (async () => {
        try {
          const t = await this.handlers.getToken({ topic: this.topic });
          if (typeof t !== 'string' || t.length === 0) throw new TypeError('getToken must resolve to a non-empty string');
          this.token = t;
          return t;
        } finally {
          this.tokenPromise = null;
        }
      })();
    }
    return this.tokenPromise;
  }

  /** Forgets `token` (if it is still the cached one): the next use fetches a fresh one. */
  dropToken(token) {
    if (this.token === token) this.token = null;
  }

  // --- router side ---

  async subscribeOn(ws) {
    const c = this.client;
    if (this.closed || !ws || ws !== c.ws || !c.wsOpen || this.routerSubscribed || this.sentOn === ws) return;
    this.sentOn = ws; // claimed while the token is fetched, so no second subscribe races it
    let token;
    try {
      token = await this.getToken();
    } catch (err) {
      if (this.sentOn === ws) this.sentOn = null;
      this.report(new SwitchboardError('get_token_failed', `getToken failed: ${err && err.message}`, { cause: err }));
      this.retryLater(() => this.subscribeOn(c.ws));
      return;
    }
    if (this.closed || ws !== c.ws || !c.wsOpen || this.sentOn !== ws) return;
    const id = c.nextId();
    c.pending.set(id, { kind: 'subscribe', sub: this, token });
    c.send(encodeSubscribe(id, this.topic, token));
  }

  retryLater(fn) {
    if (this.closed || this.retryTimer !== null) return;
    this.retryTimer = this.client.clock.setTimeout(() => {
      this.retryTimer = null;
      if (!this.closed) fn();
    }, this.retryBackoff.next());
  }

  subscribed(routerLastSeq) {
    this.sentOn = null;
    this.routerSubscribed = true;
    this.tokenFailures = 0;
    this.retryBackoff.reset();
    if (this.seq.subscribed(routerLastSeq)) this.requestReconcile();
    this.updateState();
    this.client.updateState();
  }

  subscribeRefused(code, message, token) {
    this.sentOn = null;
    const c = this.client;
    if (TOKEN_CODES.has(code)) {
      this.dropToken(token);
      this.tokenFailures++;
      if (this.tokenFailures > c.opts.maxTokenRetries) {
        this.fail(new SwitchboardError(code, `router refused ${this.tokenFailures} tokens in a row: ${message}`));
        return;
      }
      // The common case (an expired token) is cured at once by a fresh one; later tries wait.
      if (this.tokenFailures === 1) this.subscribeOn(c.ws);
      else this.retryLater(() => this.subscribeOn(c.ws));
      return;
    }
    if (RETRY_CODES.has(code)) {
      this.report(new SwitchboardError(code, message));
      this.retryLater(() => this.subscribeOn(c.ws));
      return;
    }
    this.fail(new SwitchboardError(code, message));
  }

  unsubscribedByRouter(code) {
    this.routerSubscribed = false;
    this.sentOn = null;
    this.updateState();
    if (code.startsWith('token_')) {
      // The token ran out while subscribed: subscribe again with a fresh one; the ack starts a
      // reconciliation that covers what was published in between.
      this.token = null;
      this.subscribeOn(this.client.ws);
      return;
    }
    this.fail(new SwitchboardError(code, `router unsubscribed ${this.topic}: ${code}`));
  }

  socketGone() {
    this.routerSubscribed = false;
    this.sentOn = null;
    if (this.retryTimer !== null) this.client.clock.clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.updateState();
  }

  live(env) {
    if (this.closed) return;
    const r = this.seq.live(env);
    this.deliver(r.deliver);
    if (r.reconcile) this.requestReconcile();
  }

  // --- journal side ---

  requestReconcile() {
    if (this.closed || !this.seq.hasBaseline) return;
    if (!this.client.journal) {
      this.report(new SwitchboardError('no_journal', `cannot reconcile ${this.topic}: no journalUrl`));
      return;
    }
    if (this.reconciling) {
      this.reconcileAgain = true;
      return;
    }
    this.reconcile().catch((err) => this.report(new SwitchboardError('internal', `reconcile failed: ${err && err.message}`, { cause: err })));
  }

  async reconcile() {
    const c = this.client;
    this.reconciling = true;
    this.updateState();
    c.updateState();
    let idleRounds = 0;
    try {
      do {
        this.reconcileAgain = false;
        const before = this.seq.lastSeq;
        let after = this.seq.beginCatchUp();
        for (;;) {
          const page = await this.fetchPage(after);
          if (page === null) return; // closed
          if (page.resetTo !== undefined) {
            this.seq.reset(page.resetTo);
            after = page.resetTo;
            continue;
          }
          this.deliver(this.seq.page(page.envelopes));
          if (this.closed) return;
          if (!page.more) break;
          // Live envelopes may have moved lastSeq past the page: no need to fetch those again.
          after = Math.max(page.nextAfter, this.seq.lastSeq);
        }
        const fin = this.seq.finishCatchUp();
        this.deliver(fin.deliver);
        if (this.closed) return;
        if (!fin.done) {
          // Something known to exist was not in the journal's answer: most often it was
          // stored after the page was read. Ask again; give up on a hole that never fills.
          idleRounds = this.seq.lastSeq > before ? 0 : idleRounds + 1;
          if (idleRounds >= c.opts.maxHoleRounds) {
            const from = this.seq.lastSeq + 1;
            this.deliver(this.seq.skipHole());
            this.report(new SwitchboardError('journal_hole', `journal did not return ${this.topic} from seq ${from}; skipped`));
          } else {
            if (idleRounds > 0) await this.sleep(this.retryBackoff.next());
            this.reconcileAgain = true;
          }
        }
      } while (this.reconcileAgain && !this.closed);
    } finally {
      this.reconciling = false;
      this.updateState();
      c.updateState();
    }
  }

  /**
   * One journal page, retrying what can be retried. Resolves to the page, to
   * { resetTo } after a 410 pruned was handled, or to null when the subscription closed.
   */
  async fetchPage(after) {
    const c = this.client;
    for (;;) {
      if (this.closed) return null;
      let token;
      try {
        token = await this.getToken();
      } catch (err) {
        this.report(new SwitchboardError('get_token_failed', `getToken failed: ${err && err.message}`, { cause: err }));
        await this.sleep(this.retryBackoff.next());
        continue;
      }
      if (this.closed) return null;
      try {
        const page = await c.journal.page(this.topic, after, { limit: c.opts.pageLimit, token, signal: this.abort?.signal });
        this.retryBackoff.reset();
        this.tokenFailures = 0;
        return this.closed ? null : page;
      } catch (err) {
        if (this.closed || err?.name === 'AbortError') return null;
        if (err.status === 401 || (err.status === 403 && err.code === 'topic_not_granted')) {
          this.dropToken(token);
          this.tokenFailures++;
          if (this.tokenFailures > c.opts.maxTokenRetries) {
            this.fail(new SwitchboardError(err.code, `journal refused ${this.tokenFailures} tokens in a row: ${err.message}`, { status: 401 }));
            return null;
          }
          if (this.tokenFailures > 1) await this.sleep(this.retryBackoff.next());
          continue;
        }
        this.tokenFailures = 0;
        if (err.status === 410 && err.oldestSeq !== null) return { resetTo: await this.pruned(err.oldestSeq) };
        if (err.retryable) {
          this.report(new SwitchboardError(err.code, err.message, { status: err.status }));
          await this.sleep(this.retryBackoff.next());
          continue;
        }
        this.fail(new SwitchboardError(err.code, err.message, { status: err.status }));
        return null;
      }
    }
  }

  async pruned(oldestSeq) {
    const fallback = oldestSeq - 1;
    if (!this.handlers.onReset) {
      this.report(new SwitchboardError('pruned', `journal no longer has ${this.topic} before seq ${oldestSeq}; continuing from there`, { oldestSeq }));
      return fallback;
    }
    try {
      const r = await this.handlers.onReset(this.topic, oldestSeq);
      return Number.isSafeInteger(r) && r >= 0 ? r : fallback;
    } catch (err) {
      this.report(new SwitchboardError('handler_error', `onReset threw: ${err && err.message}`, { cause: err }));
      return fallback;
    }
  }

  /** Waits `ms` on the injected clock; close() ends the wait early. */
  sleep(ms) {
    return new Promise((resolve) => {
      if (this.closed) return resolve();
      const timer = this.client.clock.setTimeout(() => {
        this.sleeping = null;
        resolve();
      }, ms);
      this.sleeping = { timer, resolve };
    });
  }

  wake() {
    if (!this.sleeping) return;
    this.client.clock.clearTimeout(this.sleeping.timer);
    const { resolve } = this.sleeping;
    this.sleeping = null;
    resolve();
  }
}

function expiresSoon(token, nowMs, marginSec) {
  let exp;
  try {
    exp = tokenClaims(token).exp;
  } catch {
    return false; // not a token we can read: let the router judge it
  }
  return exp * 1000 <= nowMs + marginSec * 1000;
}
