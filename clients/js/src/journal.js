// The journal's reconciliation API, read side: one page of envelopes a topic missed.
//
//   GET {journalUrl}/v1/topics/{topic}/envelopes?after=SEQ&limit=N
//   Authorization: Bearer <subscriber token granting topic>
//   Accept: application/msgpack
//   200: {"envelopes": [<envelope frame>, ...], "more": bool, "next_after": uint}
//   errors: JSON {"error": code, "message": text, ...}; 410 adds "oldest_seq"
//
// `fetch` is injected (the browser's, Node's, or a fake in tests).

import { decodeJournalPage } from './codec.js';

/** A refusal or failure of the journal, with its HTTP status and machine code. */
export class JournalError extends Error {
  constructor(status, code, message, body = {}) {
    super(message || code);
    this.name = 'JournalError';
    /** HTTP status, or 0 when the request never got an answer. */
    this.status = status;
    /** The journal's `error` code (`token_expired`, `pruned`, ...), or `network` / `http_<status>`. */
    this.code = code;
    /** For 410 pruned: the oldest seq the journal still has. */
    this.oldestSeq = Number.isSafeInteger(body.oldest_seq) ? body.oldest_seq : null;
    this.body = body;
  }

  /** A failure that a later retry (with backoff) may cure. */
  get retryable() {
    return this.status === 0 || this.status === 429 || this.status >= 500 || this.code === 'bad_page';
  }
}

// Characters RFC 3986 allows in a path segment besides unreserved ones: kept literal so
// `post:42` stays readable in logs; everything else (/, ?, #, %, ...) is percent-encoded.
const SEGMENT_SAFE = /%(3A|40|21|24|26|27|28|29|2A|2B|2C|3B|3D)/g;

/** The path segment for a topic. */
export function topicSegment(topic) {
  return encodeURIComponent(topic).replace(SEGMENT_SAFE, (m) => decodeURIComponent(m));
}

export class JournalClient {
  /**
   * @param {{ baseUrl: string, fetch?: typeof fetch }} o
   */
  constructor({ baseUrl, fetch: fetchFn = globalThis.fetch }) {
    if (!baseUrl) throw new TypeError('journal baseUrl is required');
    if (typeof fetchFn !== 'function') throw new TypeError('no fetch available: pass one');
    this.baseUrl = baseUrl.replace(/\/+$/, '');
    // Called as a plain function: a browser's fetch invoked as `this.fetch(...)` on another
    // object throws "Illegal invocation".
    this.fetch = (...args) => fetchFn(...args);
  }

  pageUrl(topic, after, limit) {
    const q = `after=${after}` + (limit ? `&limit=${limit}` : '');
    return `${this.baseUrl}/v1/topics/${topicSegment(topic)}/envelopes?${q}`;
  }

  /**
   * One page of `topic` after seq `after`. Resolves to { envelopes, more, nextAfter } or
   * rejects with a JournalError.
   */
  async page(topic, after, { limit, token, signal } = {}) {
    let res;
    try {
      res = await this.fetch(this.pageUrl(topic, after, limit), {
        method: 'GET',
        headers: { Authorization: `Bearer ${token}`, Accept: 'application/msgpack' },
        signal,
      });
    } catch (e) {
      if (e && e.name === 'AbortError') throw e;
      throw new JournalError(0, 'network', `journal unreachable: ${e && e.message}`);
    }
    if (res.status !== 200) throw await errorFrom(res);
    let bytes;
    try {
      bytes = new Uint8Array(await res.arrayBuffer());
    } catch (e) {
      throw new JournalError(0, 'network', `journal body: ${e && e.message}`);
    }
    let page;
    try {
      page = decodeJournalPage(bytes);
    } catch (e) {
      throw new JournalError(res.status, 'bad_page', e.message);
    }
    for (let i = 0; i < page.envelopes.length; i++) {
      const env = page.envelopes[i];
      if (env.topic !== topic || env.seq <= after || (i > 0 && env.seq <= page.envelopes[i - 1].seq)) {
        throw new JournalError(res.status, 'bad_page', `journal page for ${topic} after ${after} holds ${env.topic}#${env.seq} out of order`);
      }
    }
    if (page.more && page.nextAfter <= after) {
      throw new JournalError(res.status, 'bad_page', `journal page says more but next_after ${page.nextAfter} does not advance past ${after}`);
    }
    return page;
  }
}

async function errorFrom(res) {
  let body = {};
  try {
    const text = await res.text();
    body = JSON.parse(text);
    if (body === null || typeof body !== 'object') body = {};
  } catch {
    body = {};
  }
  const code = typeof body.error === 'string' ? body.error : `http_${res.status}`;
  const message = typeof body.message === 'string' ? body.message : `journal answered ${res.status}`;
  return new JournalError(res.status, code, message, body);
}
