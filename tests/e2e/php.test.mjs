// PHP against the real router: a token minted by clients/php's TokenIssuer (key from
// `switchboard keygen`) subscribes on the real router; an envelope published by
// clients/php's JournalPublisher (POST /v1/envelopes on `switchboard journal`, with an
// app credential) reaches the WebSocket client (the JS client over the `ws` package).
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import WebSocket from 'ws';
import { Switchboard, jsonPayload } from '../../clients/js/src/index.js';
import { CREDENTIAL, bin, check, makeHome, root, start } from './lib.mjs';

const t0 = Date.now();
const home = makeHome('sb-e2e-php-');
home.writeConfig(0);
const router = await start('router', bin, ['router', '--config', home.config]);
const journal = await start('journal', bin, ['journal', '--config', home.config]);
const autoload = path.join(root, 'clients/php/autoload.php');
const php = (code, ...args) => execFileSync('php', ['-r', `require $argv[1]; ${code}`, '--', autoload, ...args], { encoding: 'utf8' });
let failed = false;
let sb;
try {
  const token = php(`echo Switchboard\\TokenIssuer::fromKeyFile($argv[2], ttl: 120)->mint('user:php', ['post:php-42']);`, home.secret).trim();
  check(/^[A-Za-z0-9_-]+$/.test(token), 'PHP minted a token');
  const got = [];
  sb = new Switchboard({ url: `ws://${router.fields.router}/ws`, journalUrl: `http://${journal.fields.journal}`, WebSocket });
  const live = new Promise((resolve, reject) => {
    const sub = sb.subscribe('post:php-42', {
      getToken: () => token,
      onState: (s) => (s === 'live' ? resolve() : s === 'failed' ? reject(new Error('subscription failed')) : null),
      onEnvelope: (env) => got.push(env),
      onError: (e) => console.error(`client error: ${e.code} ${e.message}`),
    });
    void sub;
  });
  await Promise.race([live, new Promise((_, r) => setTimeout(() => r(new Error('not live in 10 s')), 10_000))]);
  check(true, 'the router accepted the PHP-minted token (subscription live)');
  const seq = php(`$p = new Switchboard\\JournalPublisher($argv[2], $argv[3]);
    echo $p->publish('post:php-42', 'comment.created', ['id' => 9, 'body' => 'from PHP'])->seq;`,
    `http://${journal.fields.journal}`, CREDENTIAL).trim();
  check(seq === '1', `PHP published through the journal (seq ${seq})`);
  const deadline = Date.now() + 5000;
  while (got.length === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  check(got.length === 1, 'the WebSocket client received the envelope');
  const p = jsonPayload(got[0]);
  check(got[0].kind === 'comment.created' && got[0].seq === 1 && p.body === 'from PHP' && p.id === 9,
    `envelope: ${got[0].kind} seq ${got[0].seq} ${JSON.stringify(p)}`);
  console.log(`php e2e: passed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  sb?.close();
  await Promise.all([router.stop(), journal.stop()]);
  home.remove();
}
process.exit(failed ? 1 : 0);
