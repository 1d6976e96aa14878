// Shared by the end-to-end tests: real binaries started from target/release, each watched for
// its `ready key=value ...` line (never a sleep), and a temporary home with keys and a config.
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const bin = path.join(root, 'target/release/switchboard');
export const blogBin = path.join(root, 'target/release/examples/blog');
export const CREDENTIAL = 'e2e-app-credential-0123456789';

/** A temporary directory with a key pair (`switchboard keygen`) and a config writer. */
export function makeHome(prefix) {
  const dir = mkdtempSync(path.join(tmpdir(), prefix));
  execFileSync(bin, ['keygen', '--kid', 'e2e', '--out', path.join(dir, 'keys')], { stdio: 'ignore' });
  return {
    dir,
    secret: path.join(dir, 'keys/e2e.secret'),
    config: path.join(dir, 'switchboard.toml'),
    writeConfig(routerPort = 0) {
      writeFileSync(this.config, `[router]
listen = "127.0.0.1:${routerPort}"
runtime_dir = "."
workers = 2
[tokens]
key_files = ["keys"]
[bus]
kind = "local"
local_dir = "bus"
[admin]
listen = "127.0.0.1:0"
[journal]
listen = "127.0.0.1:0"
sqlite_path = "journal.sqlite"
app_credentials = ["${CREDENTIAL}"]
outbox_poll_ms = 100
`);
    },
    remove() { rmSync(dir, { recursive: true, force: true }); },
  };
}

// Whatever ends this test (a failure, Ctrl-C, a closed pipe), the processes it started go too.
const children = new Set();
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGPIPE']) process.on(sig, () => process.exit(1));
for (const s of [process.stdout, process.stderr]) s.on('error', () => {});

/** Starts a process and resolves to {child, fields} once it prints `ready k=v ...`. */
export function start(name, cmd, args, { timeoutMs = 30_000 } = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    child.on('exit', () => children.delete(child));
    let buf = '';
    let done = false;
    const timer = setTimeout(() => fail(new Error(`${name}: no ready line within ${timeoutMs} ms`)), timeoutMs);
    function fail(e) {
      if (done) return;
      done = true;
      clearTimeout(timer);
      child.kill('SIGKILL');
      reject(e);
    }
    child.stderr.on('data', (d) => { if (process.env.E2E_VERBOSE) process.stderr.write(`[${name}] ${d}`); });
    child.on('exit', (code, sig) => fail(new Error(`${name} exited (${code ?? sig}) before it was ready`)));
    child.stdout.on('data', (d) => {
      if (done) return;
      buf += d;
      const line = buf.split('\n').find((l) => l.startsWith('ready '));
      if (!line) return;
      done = true;
      clearTimeout(timer);
      const fields = Object.fromEntries(line.slice(6).trim().split(/\s+/).map((kv) => kv.split(/=(.*)/s).slice(0, 2)));
      resolve({ child, fields, stop: (sig = 'SIGTERM') => stop(child, sig) });
    });
  });
}

/** Sends `sig` and resolves when the process has exited (SIGKILL after 10 s). */
export function stop(child, sig = 'SIGTERM') {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
    child.once('exit', () => { clearTimeout(t); resolve(); });
    child.kill(sig);
  });
}

export function check(cond, msg) {
  if (!cond) throw new Error(`FAILED: ${msg}`);
  console.log(`ok - ${msg}`);
}
