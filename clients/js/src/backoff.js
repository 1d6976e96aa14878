// Reconnect delays: exponential backoff with full jitter (a uniformly random delay between
// zero and the exponential ceiling), so that clients dropped together by a router restart do
// not come back together. Pure: the random source and the times are injected.
//
// Invariants: a delay is never above its ceiling (`capMs`, or `overloadCapMs` after the router
// said it is overloaded); `attempt` counts failures since the last stable connection.

export class Backoff {
  /**
   * @param {object} [o]
   * @param {number} [o.baseMs=500] ceiling of the first delay
   * @param {number} [o.capMs=30000] highest ceiling
   * @param {number} [o.factor=2] ceiling growth per attempt
   * @param {number} [o.stableMs=30000] a connection that lived this long resets the attempts
   * @param {number} [o.overloadBaseMs=5000] lowest delay after close 4002 (overloaded)
   * @param {number} [o.overloadCapMs=120000] highest ceiling after close 4002
   * @param {() => number} [o.random=Math.random] uniform in [0, 1)
   */
  constructor({
    baseMs = 500,
    capMs = 30_000,
    factor = 2,
    stableMs = 30_000,
    overloadBaseMs = 5_000,
    overloadCapMs = 120_000,
    random = Math.random,
  } = {}) {
    Object.assign(this, { baseMs, capMs, factor, stableMs, overloadBaseMs, overloadCapMs, random });
    this.attempt = 0;
    this.connectedAt = null;
  }

  /** The ceiling of the next delay (before jitter), for the given reason. */
  ceiling({ overloaded = false } = {}) {
    const base = overloaded ? this.overloadBaseMs : this.baseMs;
    const cap = overloaded ? this.overloadCapMs : this.capMs;
    // Math.min before the power would overflow: attempts beyond ~50 stay at the cap.
    return Math.min(cap, base * Math.pow(this.factor, Math.min(this.attempt, 64)));
  }

  /**
   * The delay before the next attempt, in ms, and counts the attempt. Full jitter: uniform in
   * [0, ceiling]; when overloaded, uniform in [overloadBaseMs, ceiling], so that a full server
   * is never hit again at once.
   */
  next({ overloaded = false } = {}) {
    const ceil = this.ceiling({ overloaded });
    const floor = overloaded ? Math.min(this.overloadBaseMs, ceil) : 0;
    this.attempt++;
    return Math.floor(floor + this.random() * (ceil - floor));
  }

  /** The connection opened at `now` (ms). */
  connected(now) {
    this.connectedAt = now;
  }

  /** The connection closed at `now` (ms): a stable one resets the attempts. */
  disconnected(now) {
    if (this.connectedAt !== null && now - this.connectedAt >= this.stableMs) this.attempt = 0;
    this.connectedAt = null;
  }

  reset() {
    this.attempt = 0;
    this.connectedAt = null;
  }
}
