import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Backoff } from '../src/backoff.js';

// A fake random that replays the given values.
const fixed = (...values) => {
  let i = 0;
  return () => values[i++ % values.length];
};

test('full jitter: delays span [0, ceiling] and the ceiling doubles', () => {
  const low = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0 });
  const high = new Backoff({ baseMs: 100, capMs: 10_000, random: () => 0.999999 });
  const lows = [];
  const highs = [];
  for (let i = 0; i < 5; i++) {
    lows.push(low.next());
    highs.push(high.next());
  }
  assert.deepEqual(lows, [0, 0, 0, 0, 0]);
  assert.deepEqual(highs, [99, 199, 399, 799, 1599]);
});

test('the cap bounds every delay, even after many attempts', () => {
  const b = new Backoff({ baseMs: 100, capMs: 1_000, random: () => 0.999999 });
  const delays = Array.from({ length: 200 }, () => b.next());
  assert.ok(delays.every((d) => d >= 0 && d < 1_000));
  assert.equal(delays.at(-1), 999);
  assert.equal(b.ceiling(), 1_000);
});

test('a random in the middle gives the middle', () => {
  const b = new Backoff({ baseMs: 1_000, capMs: 60_000, random: fixed(0.5) });
  assert.deepEqual([b.next(), b.next(), b.next()], [500, 1_000, 2_000]);
});

test('a stable connection resets the attempts; a short one does not', () => {
  const b = new Backoff({ baseMs: 100, capMs: 10_000, stableMs: 5_000, random: () => 0.999999 });
  b.next();
  b.next();
  b.next();
  assert.equal(b.attempt, 3);
  b.connected(1_000);
  b.disconnected(5_999); // lived 4999 ms
  assert.equal(b.attempt, 3);
  assert.equal(b.next(), 799);
  b.connected(10_000);
  b.disconnected(15_000); // lived 5000 ms
  assert.equal(b.attempt, 0);
  assert.equal(b.next(), 99);
  b.disconnected(20_000); // never connected: no reset
  assert.equal(b.attempt, 1);
  b.reset();
  assert.equal(b.attempt, 0);
});

test('overloaded (close 4002): longer, never-zero delays with their own cap', () => {
  const low = new Backoff({ overloadBaseMs: 5_000, overloadCapMs: 60_000, random: () => 0 });
  const high = new Backoff({ overloadBaseMs: 5_000, overloadCapMs: 60_000, random: () => 0.999999 });
  for (let i = 0; i < 10; i++) {
    const l = low.next({ overloaded: true });
    const h = high.next({ overloaded: true });
    assert.equal(l, 5_000);
    assert.ok(h >= 5_000 && h < 60_000, `attempt ${i}: ${h}`);
  }
  assert.equal(high.ceiling({ overloaded: true }), 60_000);
  // The ordinary ceiling still applies to an ordinary close.
  assert.equal(high.ceiling(), 30_000);
});
