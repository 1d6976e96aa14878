import { test } from 'node:test';
import assert from 'node:assert/strict';

import { Sequencer } from '../src/sequencer.js';

const env = (seq, topic = 't') => ({ topic, seq, id: `e${seq}`, ts: 0, kind: 'k', payload: new Uint8Array() });
const seqs = (list) => list.map((e) => e.seq);

test('in-order live envelopes are delivered at once', () => {
  const s = new Sequencer('t', { afterSeq: 0 });
  assert.deepEqual(seqs(s.live(env(1)).deliver), [1]);
  assert.deepEqual(seqs(s.live(env(2)).deliver), [2]);
  assert.equal(s.lastSeq, 2);
});

test('duplicates and old seqs are dropped', () => {
  const s = new Sequencer('t', { afterSeq: 3 });
  assert.deepEqual(s.live(env(2)), { deliver: [], reconcile: false });
  assert.deepEqual(s.live(env(3)), { deliver: [], reconcile: false });
  assert.deepEqual(seqs(s.live(env(4)).deliver), [4]);
  assert.deepEqual(s.live(env(4)), { deliver: [], reconcile: false });
  assert.equal(s.stats.duplicates, 3);
});

test('a seq jump asks to reconcile once and holds the envelope', () => {
  const s = new Sequencer('t', { afterSeq: 1 });
  assert.deepEqual(s.live(env(4)), { deliver: [], reconcile: true });
  assert.deepEqual(s.live(env(5)), { deliver: [], reconcile: false }, 'a catch-up is already running');
  assert.equal(s.live(env(5)).deliver.length, 0, 'buffered duplicate');
  assert.equal(s.beginCatchUp(), 1);
  // The journal fills 2..3; the buffered 4, 5 follow in order.
  assert.deepEqual(seqs(s.page([env(2), env(3)])), [2, 3, 4, 5]);
  assert.deepEqual(s.finishCatchUp(), { deliver: [], done: true });
  assert.equal(s.catchingUp, false);
  assert.deepEqual(seqs(s.live(env(6)).deliver), [6]);
});

test('buffered catch-up merge: journal and live overlap, each seq once', () => {
  const s = new Sequencer('t', { afterSeq: 10 });
  s.beginCatchUp();
  // Live arrives during catch-up: 11 continues lastSeq (delivered now), 14 and 13 wait.
  assert.deepEqual(seqs(s.live(env(11)).deliver), [11]);
  assert.deepEqual(s.live(env(14)).deliver, []);
  assert.deepEqual(s.live(env(13)).deliver, []);
  // First journal page repeats 11 and brings 12: then 13 and 14 come from the buffer.
  assert.deepEqual(seqs(s.page([env(11), env(12)])), [12, 13, 14]);
  // A second page repeats what was buffered, and adds 15.
  assert.deepEqual(seqs(s.page([env(13), env(14), env(15)])), [15]);
  assert.equal(s.finishCatchUp().done, true);
  assert.equal(s.lastSeq, 15);
});

test('finishing with a hole asks for another round; skipHole gives up on it', () => {
  const s = new Sequencer('t', { afterSeq: 0 });
  s.live(env(1));
  s.live(env(4)); // jump
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(2)])), [2]);
  assert.deepEqual(s.finishCatchUp(), { deliver: [], done: false });
  assert.equal(s.beginCatchUp(), 2);
  assert.deepEqual(seqs(s.page([])), []);
  assert.equal(s.finishCatchUp().done, false);
  assert.deepEqual(seqs(s.skipHole()), [4]);
  assert.equal(s.catchingUp, false);
  assert.deepEqual(seqs(s.live(env(5)).deliver), [5]);
});

test('gap frame: reconcile unless already past it, and the target must be reached', () => {
  const s = new Sequencer('t', { afterSeq: 5 });
  assert.equal(s.gap(2, 5), false, 'all of it already delivered');
  assert.equal(s.gap(6, 8), true);
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(6), env(7)])), [6, 7]);
  assert.deepEqual(s.finishCatchUp(), { deliver: [], done: false }, '8 was dropped by the router, so it exists');
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(8)])), [8]);
  assert.equal(s.finishCatchUp().done, true);
});

test('subscribe ack: baseline for live-only, target otherwise', () => {
  const liveOnly = new Sequencer('t');
  assert.equal(liveOnly.hasBaseline, false);
  assert.equal(liveOnly.subscribed(null), false, 'nothing known: nothing to reconcile');
  assert.equal(liveOnly.subscribed(9), true);
  assert.equal(liveOnly.lastSeq, 9);
  assert.deepEqual(seqs(liveOnly.live(env(10)).deliver), [10]);

  const firstEnvelope = new Sequencer('t');
  assert.deepEqual(seqs(firstEnvelope.live(env(42)).deliver), [42], 'the first live envelope sets the baseline');

  const known = new Sequencer('t', { afterSeq: 3 });
  assert.equal(known.subscribed(7), true);
  assert.equal(known.lastSeq, 3);
  known.beginCatchUp();
  known.page([env(4), env(5)]);
  assert.equal(known.finishCatchUp().done, false, 'the router forwarded up to 7');
});

test('journal pages are the source of truth, even across a seq it does not have', () => {
  const s = new Sequencer('t', { afterSeq: 0 });
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(1), env(3), env(2, 'other')])), [1, 3]);
  assert.equal(s.finishCatchUp().done, true);
});

test('reset after pruning: continue from the seq the application reloaded', () => {
  const s = new Sequencer('t', { afterSeq: 2 });
  s.live(env(50)); // jump, held
  s.live(env(20)); // held
  s.beginCatchUp();
  s.reset(29); // reloaded state reflects 29
  assert.equal(s.lastSeq, 29);
  assert.equal(s.buffer.has(20), false, 'below the reset point: dropped');
  assert.deepEqual(seqs(s.page([env(30), env(49)])), [30, 49, 50]);
  assert.equal(s.finishCatchUp().done, true);
});

test('afterSeq must be a non-negative integer', () => {
  assert.throws(() => new Sequencer('t', { afterSeq: -1 }), RangeError);
  assert.throws(() => new Sequencer('t', { afterSeq: 1.5 }), RangeError);
  assert.throws(() => new Sequencer('t').beginCatchUp(), /baseline/);
});

test('the buffer is bounded; what overflows is fetched from the journal instead', () => {
  const s = new Sequencer('t', { afterSeq: 0, maxBuffered: 2 });
  s.live(env(3)); // jump
  s.live(env(4));
  s.live(env(5)); // over the bound: not kept, but known to exist
  assert.equal(s.buffer.size, 2);
  assert.equal(s.stats.overflow, 1);
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(1), env(2)])), [1, 2, 3, 4]);
  assert.equal(s.finishCatchUp().done, false, '5 is still to fetch');
  s.beginCatchUp();
  assert.deepEqual(seqs(s.page([env(5)])), [5]);
  assert.equal(s.finishCatchUp().done, true);
});
