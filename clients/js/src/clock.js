// The clock the client reads and schedules with. Injected everywhere, so that ping timeouts,
// backoff and token expiry are tested by moving a fake clock, not by sleeping.

/** The real clock: { now() in ms since the epoch, setTimeout, clearTimeout }. */
export const systemClock = Object.freeze({
  now: () => Date.now(),
  setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle),
});
