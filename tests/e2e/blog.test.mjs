// The blog demo in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) against the real router and the real demo (journal inside).
//
// 1. Two pages on post 1: A posts, B shows it within a second.
// 2. The router stops; A posts three comments (stored in the journal); the router comes back:
//    B shows every comment exactly once, in order, without reload, and its connection state
//    went reconnecting -> catching up -> connected.
// 3. carol opening the private post sees the application's refusal on the page.
// 4. bob replies to alice's comment: alice's pages (post 1 and post 2) show the notification.
// Screenshots: target/e2e/*.png.
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { blogBin, bin, check, makeHome, root, start } from './lib.mjs';

const shots = path.join(root, 'target/e2e');
mkdirSync(shots, { recursive: true });
const t0 = Date.now();
const home = makeHome('sb-e2e-blog-');
home.writeConfig(0);
let router = await start('router', bin, ['router', '--config', home.config]);
const routerAddr = router.fields.router;
home.writeConfig(Number(routerAddr.split(':').pop())); // the restart binds the same port
const blog = await start('blog', blogBin, ['--config', home.config, '--listen', '127.0.0.1:0',
  '--key', home.secret, '--db', path.join(home.dir, 'blog.sqlite'),
  '--router-ws', `ws://${routerAddr}/ws`, '--js', path.join(root, 'clients/js')]);
const site = blog.fields.blog;

// A fresh profile (--user-data-dir) in the test's temporary directory; no browser download.
const browser = await chromium.launchPersistentContext(path.join(home.dir, 'chromium'), {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1100, height: 720 },
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
let failed = false;
try {
  const open = async (user, post) => {
    const page = await browser.newPage(); // the user is in the URL (?as=), so pages may share cookies
    page.on('pageerror', (e) => console.error(`[${user} page error] ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && process.env.E2E_VERBOSE && console.error(`[${user} console] ${m.text()}`));
    await page.goto(`${site}/posts/${post}?as=${user}`);
    await page.waitForFunction(() => window.demo && window.demo.ready);
    return page;
  };
  const connected = (page) => page.waitForSelector('#state[data-state=connected]', { timeout: 10_000 }).catch(async (e) => {
    console.error('state:', await page.textContent('#state'), '|', await page.textContent('#last-error'), '|', await page.textContent('#refusal'));
    await page.screenshot({ path: path.join(shots, 'failure.png') });
    throw e;
  });
  const comments = (page) => page.$$eval('#comments .comment .text', (els) => els.map((e) => e.textContent));
  const post = async (page, text) => {
    await page.fill('#comment-body', text);
    await page.click('#post-comment');
    await page.waitForFunction((t) => [...document.querySelectorAll('#comments .text')].some((e) => e.textContent === t), text);
  };

  const a = await open('alice', 1);
  const b = await open('bob', 1);
  await Promise.all([connected(a), connected(b)]);
  check(true, 'both pages connected to the router');

  // 1. live
  const sent = Date.now();
  await post(a, 'first comment, live');
  await b.waitForFunction(() => [...document.querySelectorAll('#comments .text')].some((e) => e.textContent === 'first comment, live'), null, { timeout: 1000 });
  check(true, `page B showed A's comment after ${Date.now() - sent} ms (< 1000)`);
  await b.screenshot({ path: path.join(shots, '01-live-comment.png') });

  // 2. router down, comments stored meanwhile, router back
  await b.evaluate(() => { window.demo.states = []; });
  await router.stop('SIGINT');
  await b.waitForSelector('#state[data-state=reconnecting]', { timeout: 10_000 });
  check(true, 'page B shows reconnecting once the router is gone');
  const offline = ['while the router was down 1', 'while the router was down 2', 'while the router was down 3'];
  for (const text of offline) await post(a, text);
  await b.screenshot({ path: path.join(shots, '02-reconnecting.png') });
  check((await comments(b)).length === 1, 'page B has not seen the offline comments yet');
  router = await start('router', bin, ['router', '--config', home.config]);
  await b.waitForFunction((n) => document.querySelectorAll('#comments .comment').length >= n, 4, { timeout: 15_000 });
  await connected(b);
  await b.waitForTimeout(300); // anything duplicated would show up now
  const shown = await comments(b);
  const want = ['first comment, live', ...offline];
  check(JSON.stringify(shown) === JSON.stringify(want), `page B shows every comment exactly once, in order: ${JSON.stringify(shown)}`);
  const seqs = await b.evaluate(() => window.demo.envelopes.filter((e) => e.topic === 'post:1').map((e) => e.seq));
  check(JSON.stringify(seqs) === '[1,2,3,4]', `page B got seqs 1..4 exactly once: ${JSON.stringify(seqs)}`);
  const states = await b.evaluate(() => window.demo.states);
  const i = states.indexOf('reconnecting');
  const j = states.indexOf('catching-up', i);
  const k = states.indexOf('connected', j);
  check(i >= 0 && j > i && k > j, `page B's state went reconnecting -> catching up -> connected: ${states.join(' -> ')}`);
  check(b.url().endsWith('/posts/1?as=bob') && (await b.evaluate(() => performance.getEntriesByType('navigation').length)) === 1, 'page B never reloaded');
  await b.screenshot({ path: path.join(shots, '03-caught-up.png') });

  // 3. the private post refuses carol, with the application's reason
  const c = await open('carol', 2);
  await c.waitForSelector('#refusal:not([hidden])', { timeout: 5000 });
  const reason = await c.textContent('#refusal');
  check(/private to alice and bob/.test(reason) && /carol/.test(reason), `carol sees the refusal: "${reason}"`);
  await c.screenshot({ path: path.join(shots, '04-private-refused.png') });
  const a2 = await open('alice', 2);
  await connected(a2);
  check((await a2.isHidden('#refusal')) && (await a2.isVisible('#comments-section')), 'alice may read and follow the private post');

  // 4. bob replies to alice: her pages get notification.reply on user:alice
  await b.click('.comment[data-id="1"] .reply-btn');
  await post(b, 'bob replies to alice');
  for (const [name, page] of [['post 1', a], ['post 2', a2]]) {
    await page.waitForSelector('#notifications li', { timeout: 3000 });
    const text = await page.textContent('#notifications li');
    check(/bob/.test(text) && /bob replies to alice/.test(text), `alice's page on ${name} shows the reply notification: "${text.trim()}"`);
  }
  check((await b.$$('#notifications li')).length === 0, 'bob got no notification for his own reply');
  await a.waitForSelector('.comment.reply');
  await a.screenshot({ path: path.join(shots, '05-reply-notification.png') });
  console.log(`blog e2e: passed in ${((Date.now() - t0) / 1000).toFixed(1)} s; screenshots in ${shots}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close().catch(() => {});
  await Promise.all([router.stop(), blog.stop()]);
  home.remove();
}
process.exit(failed ? 1 : 0);
