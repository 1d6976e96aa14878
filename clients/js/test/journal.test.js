import { test } from 'node:test';
import assert from 'node:assert/strict';

import { JournalClient, JournalError, topicSegment } from '../src/journal.js';
import { FakeJournal } from './fakes.js';

test('topic path segments keep : and escape what would break the path', () => {
  assert.equal(topicSegment('post:42'), 'post:42');
  assert.equal(topicSegment('a/b?c#d%e'), 'a%2Fb%3Fc%23d%25e');
  assert.equal(topicSegment('user@x+y'), 'user@x+y');
});

test('reads a page with the subscriber token, msgpack, after and limit', async () => {
  const j = new FakeJournal();
  for (let i = 0; i < 5; i++) j.append('post:42', { i });
  j.allow('tok', 'post:42');
  const c = new JournalClient({ baseUrl: 'http://journal.test/', fetch: j.fetch });
  const p = await c.page('post:42', 1, { limit: 2, token: 'tok' });
  assert.deepEqual(p.envelopes.map((e) => e.seq), [2, 3]);
  assert.equal(p.more, true);
  assert.equal(p.nextAfter, 3);
  assert.deepEqual(j.requests[0], {
    topic: 'post:42', after: 1, limit: 2, token: 'tok', accept: 'application/msgpack', path: '/v1/topics/post:42/envelopes',
  });
  assert.equal(new TextDecoder().decode(p.envelopes[0].payload), '{"i":1}');
});

test('errors carry status, code and oldest_seq', async () => {
  const j = new FakeJournal();
  j.append('t', 1);
  const c = new JournalClient({ baseUrl: 'http://journal.test', fetch: j.fetch });
  const err = async (p) => p.then(() => assert.fail('expected a JournalError'), (e) => e);

  let e = await err(c.page('t', 0, { token: 'nope' }));
  assert.ok(e instanceof JournalError);
  assert.deepEqual([e.status, e.code, e.retryable], [401, 'token_expired', false]);

  j.allow('tok', 'other');
  e = await err(c.page('t', 0, { token: 'tok' }));
  assert.deepEqual([e.status, e.code], [403, 'topic_not_granted']);

  j.allow('tok', 't');
  j.oldest.set('t', 40);
  e = await err(c.page('t', 0, { token: 'tok' }));
  assert.deepEqual([e.status, e.code, e.oldestSeq], [410, 'pruned', 40]);

  j.failNext = 1;
  e = await err(c.page('t', 39, { token: 'tok' }));
  assert.deepEqual([e.status, e.retryable], [503, true]);

  const down = new JournalClient({ baseUrl: 'http://x', fetch: async () => { throw new TypeError('fetch failed'); } });
  e = await err(down.page('t', 0, { token: 'tok' }));
  assert.deepEqual([e.status, e.code, e.retryable], [0, 'network', true]);

  const html = new JournalClient({ baseUrl: 'http://x', fetch: async () => new Response('<h1>bad gateway</h1>', { status: 502 }) });
  e = await err(html.page('t', 0, { token: 'tok' }));
  assert.deepEqual([e.status, e.code], [502, 'http_502']);
});

test('a page that breaks its promises is refused', async () => {
  const { encode } = await import('@msgpack/msgpack');
  const frame = (seq) => [19, 't', seq, 'i', 0, 'k', new Uint8Array()];
  const serve = (body) => new JournalClient({ baseUrl: 'http://x', fetch: async () => new Response(encode(body), { status: 200 }) });
  const cases = {
    'seq not above after': { envelopes: [frame(3)], more: false, next_after: 3 },
    'out of order': { envelopes: [frame(6), frame(5)], more: false, next_after: 6 },
    'other topic': { envelopes: [[19, 'u', 9, 'i', 0, 'k', new Uint8Array()]], more: false, next_after: 9 },
    'more without progress': { envelopes: [], more: true, next_after: 3 },
    'not a page': [1, 2],
  };
  for (const [why, body] of Object.entries(cases)) {
    await assert.rejects(serve(body).page('t', 3, { token: 'x' }), (e) => e.code === 'bad_page', why);
  }
});
