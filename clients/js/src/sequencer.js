// Per-topic sequencer: decides which envelopes reach the application, so that it sees each
// seq exactly once and in order, whether the envelope came live from the router or from a
// journal page. Pure: no socket, no fetch, no clock; the client feeds it and acts on what it
// returns.
//
// Invariants:
// - `lastSeq` is the last seq handed to the application (null until a baseline is known);
//   every delivered envelope has seq === previous lastSeq + 1, except across a journal page
//   (the journal is the source of truth, see `page`) or an explicit `reset`.
// - A live envelope that does not continue lastSeq waits in `buffer` (one per seq) and is
//   merged in seq order once the journal fills the space before it.
// - `target` is the highest seq known to exist (from a gap frame, a subscribe ack or a
//   live envelope); catch-up is not finished before lastSeq reaches it.
// - The buffer holds at most `maxBuffered` envelopes.

export class Sequencer {
  /**
   * @param {string} topic
   * @param {{ afterSeq?: number | null, maxBuffered?: number }} [opts] afterSeq: the last seq
   *   the application already has (0: from the start). Null or absent: live only, the first
   *   seq seen (subscribe ack or envelope) sets the baseline. maxBuffered: live envelopes held
   *   at most; beyond it they are dropped and fetched from the journal instead.
   */
  constructor(topic, { afterSeq = null, maxBuffered = 10_000 } = {}) {
    if (afterSeq !== null && !(Number.isSafeInteger(afterSeq) && afterSeq >= 0)) {
      throw new RangeError('afterSeq must be a non-negative integer or null');
    }
    this.topic = topic;
    this.lastSeq = afterSeq;
    this.catchingUp = false;
    this.target = afterSeq ?? 0;
    /** @type {Map<number, object>} seq -> envelope, live envelopes held during catch-up */
    this.buffer = new Map();
    this.maxBuffered = maxBuffered;
    this.stats = { delivered: 0, duplicates: 0, buffered: 0, overflow: 0 };
  }

  /** Whether the application's position is known (so the journal can be asked). */
  get hasBaseline() {
    return this.lastSeq !== null;
  }

  /**
   * The router acknowledged the subscription; `routerLastSeq` is the highest seq that worker
   * forwarded for the topic (or null). Returns true when the journal should be asked.
   */
  subscribed(routerLastSeq) {
    if (this.lastSeq === null) {
      if (routerLastSeq === null) return false;
      this.lastSeq = routerLastSeq;
    }
    if (routerLastSeq !== null) this.target = Math.max(this.target, routerLastSeq);
    return true;
  }

  /**
   * A live envelope. Returns { deliver: [envelopes], reconcile: bool }: reconcile is true when
   * a seq jump shows that envelopes were missed.
   */
  live(env) {
    if (this.lastSeq === null) this.lastSeq = env.seq - 1; // live only: first one sets the baseline
    if (env.seq <= this.lastSeq || this.buffer.has(env.seq)) {
      this.stats.duplicates++;
      return { deliver: [], reconcile: false };
    }
    if (env.seq === this.lastSeq + 1) {
      // The next one: deliver now, even during catch-up (the journal's copy is then a duplicate).
      return { deliver: this.drain([env]), reconcile: false };
    }
    // A jump: keep it, and unless a catch-up is already running, ask the journal for what
    // lies between.
    this.hold(env);
    const reconcile = !this.catchingUp;
    this.catchingUp = true;
    return { deliver: [], reconcile };
  }

  /** The router dropped [fromSeq, toSeq] for this client. Returns true when a fetch is needed. */
  gap(fromSeq, toSeq) {
    if (this.lastSeq !== null && toSeq <= this.lastSeq) return false;
    if (this.lastSeq === null) this.lastSeq = fromSeq - 1;
    this.target = Math.max(this.target, toSeq);
    this.catchingUp = true;
    return true;
  }

  /** Starts (or restarts) a catch-up round; returns the `after` to ask the journal for. */
  beginCatchUp() {
    if (this.lastSeq === null) throw new Error(`no baseline for ${this.topic}: nothing to reconcile from`);
    this.catchingUp = true;
    return this.lastSeq;
  }

  /**
   * A page of envelopes from the journal (seq order, all above the `after` asked). Envelopes at
   * or below lastSeq are duplicates. The journal is the source of truth: a seq it skips does
   * not exist, so the page is delivered even if it is not contiguous with lastSeq.
   * Returns the envelopes to deliver (page entries and buffered ones they make contiguous).
   */
  page(envelopes) {
    const out = [];
    for (const env of envelopes) {
      if (env.topic !== this.topic) continue;
      if (env.seq <= this.lastSeq) {
        this.stats.duplicates++;
        continue;
      }
      this.buffer.delete(env.seq);
      out.push(env);
      this.lastSeq = env.seq;
    }
    this.stats.delivered += out.length;
    return this.drain(out, false);
  }

  /**
   * The journal said `more: false`. Returns { deliver, done }: done is false when something
   * is still missing (a buffered envelope above a hole, or a known target not reached), which
   * happens when envelopes were stored after the page was read: the caller fetches again.
   */
  finishCatchUp() {
    const deliver = this.drain([], false);
    const done = this.buffer.size === 0 && this.lastSeq >= this.target;
    if (done) this.catchingUp = false;
    return { deliver, done };
  }

  /**
   * Gives up waiting for a hole the journal does not fill (it never should): delivers what is
   * buffered, in seq order, and leaves catch-up. Returns the envelopes.
   */
  skipHole() {
    const seqs = [...this.buffer.keys()].sort((a, b) => a - b);
    const out = seqs.map((s) => this.buffer.get(s));
    this.buffer.clear();
    if (out.length) this.lastSeq = out[out.length - 1].seq;
    this.target = Math.min(this.target, this.lastSeq);
    this.catchingUp = false;
    this.stats.delivered += out.length;
    return out;
  }

  /**
   * The journal pruned part of the range: the application reloaded its state as of
   * `afterSeq`; continue from there. Buffered envelopes at or below it are dropped.
   */
  reset(afterSeq) {
    this.lastSeq = afterSeq;
    for (const seq of this.buffer.keys()) if (seq <= afterSeq) this.buffer.delete(seq);
    this.target = Math.max(this.target, afterSeq);
  }

  // Memory stays bounded while the journal is slow or down: past maxBuffered, an envelope is
  // not kept, only its seq (as the target), so catch-up fetches it from the journal.
  hold(env) {
    this.target = Math.max(this.target, env.seq);
    if (this.buffer.size >= this.maxBuffered) {
      this.stats.overflow++;
      return;
    }
    this.buffer.set(env.seq, env);
    this.stats.buffered++;
  }

  // Appends to `out` every buffered envelope that continues lastSeq; with `advance`, `out`
  // itself is new (live) and moves lastSeq first.
  drain(out, advance = true) {
    if (advance) {
      for (const env of out) this.lastSeq = env.seq;
      this.stats.delivered += out.length;
    }
    for (const seq of this.buffer.keys()) if (seq <= this.lastSeq) this.buffer.delete(seq);
    while (this.buffer.has(this.lastSeq + 1)) {
      const env = this.buffer.get(this.lastSeq + 1);
      this.buffer.delete(env.seq);
      out.push(env);
      this.lastSeq = env.seq;
      this.stats.delivered++;
    }
    return out;
  }
}
