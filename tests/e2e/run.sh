#!/usr/bin/env bash
# End-to-end: the blog demo in headless Chromium, and PHP against the real router.
# Installs what is missing (Debian's chromium and php-cli, npm deps in clients/js and here),
# builds the release binary and the blog example, runs both suites and fails loudly.
# Screenshots: target/e2e/*.png. E2E_VERBOSE=1 shows the processes' logs and page errors.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
die() { echo "tests/e2e/run.sh: $*" >&2; exit 1; }
cd "$root"

command -v node >/dev/null 2>&1 || die "node not found (Node.js 20 or later is required)"
[ -x /usr/bin/chromium ] || [ -n "${CHROMIUM:-}" ] || scripts/services.sh chromium || die "cannot install chromium"
command -v php >/dev/null 2>&1 || scripts/services.sh php || die "cannot install php"
if [ ! -d clients/js/node_modules/@msgpack/msgpack ]; then
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in clients/js failed"
fi
if [ ! -d "$here/node_modules/playwright-core" ] || [ ! -d "$here/node_modules/ws" ]; then
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci in tests/e2e failed"
fi
cargo build --release --bin switchboard --example blog || die "build failed"

status=0
echo "== tests/e2e/blog.test.mjs (headless Chromium)"
node "$here/blog.test.mjs" || { echo "tests/e2e: blog FAILED" >&2; status=1; }
echo "== tests/e2e/php.test.mjs (PHP token and publish through the real router)"
node "$here/php.test.mjs" || { echo "tests/e2e: php FAILED" >&2; status=1; }
[ "$status" -eq 0 ] && echo "tests/e2e: passed" || echo "tests/e2e: FAILED" >&2
exit "$status"
