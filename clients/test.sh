#!/usr/bin/env bash
# Runs the client test suites: clients/js (node:test) and clients/php (tests/run.php).
# Installs what is missing (npm ci; Debian's php-cli and php-curl) and fails loudly if it
# cannot. The last line is "clients: N passed, N failed" over both suites.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "clients/test.sh: $*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $*"
  fi
}

apt_updated=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq || die "apt-get update failed"
    apt_updated=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

# --- prerequisites ---
command -v node >/dev/null 2>&1 || die "node not found (Node.js 20 or later is required)"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js $(node --version) is too old: 20 or later is required"
command -v npm >/dev/null 2>&1 || die "npm not found"

if [ ! -d "$here/js/node_modules/@msgpack/msgpack" ]; then
  echo "clients/test.sh: installing JS dependencies (npm ci)"
  (cd "$here/js" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi

if ! command -v php >/dev/null 2>&1; then
  echo "clients/test.sh: installing php-cli and php-curl (apt-get)"
  apt_install php-cli php-curl
fi
php -r 'exit(extension_loaded("curl") ? 0 : 1);' || { echo "clients/test.sh: installing php-curl (apt-get)"; apt_install php-curl; }
php -r 'exit(PHP_VERSION_ID >= 80100 && extension_loaded("sodium") && extension_loaded("json") && extension_loaded("curl") ? 0 : 1);' \
  || die "php $(php -r 'echo PHP_VERSION;') lacks 8.1+, sodium, json or curl"

# --- suites ---
status=0
js_out="$(mktemp)"
php_out="$(mktemp)"
trap 'rm -f "$js_out" "$php_out"' EXIT

echo "== clients/js (npm test)"
(cd "$here/js" && npm test --silent) 2>&1 | tee "$js_out" || status=1
echo "== clients/php (php tests/run.php)"
php "$here/php/tests/run.php" 2>&1 | tee "$php_out" || status=1

js_pass="$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$js_out" | tail -1)"
js_fail="$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$js_out" | tail -1)"
php_line="$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$php_out" | tail -1 || true)"
[ -n "$js_pass" ] && [ -n "$js_fail" ] || { echo "clients/test.sh: no summary from the JS suite" >&2; status=1; js_pass=0; js_fail=${js_fail:-1}; }
[ -n "$php_line" ] || { echo "clients/test.sh: no summary from the PHP suite" >&2; status=1; php_line="0 passed, 1 failed"; }
php_pass="${php_line%% passed*}"
php_fail="${php_line#*, }"; php_fail="${php_fail%% failed}"

passed=$((js_pass + php_pass))
failed=$((js_fail + php_fail))
[ "$failed" -eq 0 ] || status=1
[ "$passed" -gt 0 ] || status=1
echo "clients: $passed passed, $failed failed"
exit "$status"
