#!/usr/bin/env bash
# `make run`: the whole thing on one machine, no broker and no database server.
#
# Builds (release), installs the JS client's dependency (npm ci) if missing, generates
# development keys in run/keys if absent, writes run/switchboard.toml (local bus, SQLite
# journal at run/journal.sqlite), starts the router (127.0.0.1:8000, admin 127.0.0.1:9100)
# and the blog demo (127.0.0.1:8080, which is also the journal: /v1/...), waits for both
# ready lines and prints the URL. Ctrl-C stops both.
#
# Environment: RUN_DIR (default run), ROUTER_PORT (8000), ADMIN_PORT (9100), DEMO_PORT (8080),
# SKIP_BUILD=1 (use what is built).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
run_dir="${RUN_DIR:-run}"
router_port="${ROUTER_PORT:-8000}"
admin_port="${ADMIN_PORT:-9100}"
demo_port="${DEMO_PORT:-8080}"
bin="$root/target/release/switchboard"
blog="$root/target/release/examples/blog"

die() { echo "run.sh: $*" >&2; exit 1; }

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "run.sh: building (cargo build --release)"
  cargo build --release --bin switchboard --example blog || die "build failed"
fi
[ -x "$bin" ] && [ -x "$blog" ] || die "missing $bin or $blog: build first"

if [ ! -d clients/js/node_modules/@msgpack/msgpack ]; then
  command -v npm >/dev/null 2>&1 || die "npm not found (Node.js 20 is needed for the page's JS dependency)"
  echo "run.sh: installing the JS client's dependencies (npm ci)"
  (cd clients/js && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
fi

mkdir -p "$run_dir"
if [ ! -f "$run_dir/keys/dev.secret" ]; then
  "$bin" keygen --kid dev --out "$run_dir/keys" >/dev/null || die "keygen failed"
  echo "run.sh: generated development keys in $run_dir/keys"
fi

cat > "$run_dir/switchboard.toml" <<EOF
# Written by scripts/run.sh (development only). Paths are relative to this file.
[router]
listen = "127.0.0.1:$router_port"
runtime_dir = "."

[tokens]
key_files = ["keys"]

[bus]
kind = "local"
local_dir = "bus"

[admin]
listen = "127.0.0.1:$admin_port"

[journal]
store = "sqlite"
sqlite_path = "journal.sqlite"
# The demo serves the journal API itself; this credential lets other apps (PHP) publish to it.
app_credentials = ["dev-app-credential-0123456789"]
EOF

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -f "$run_dir"/.ready.*
}
trap 'echo; echo "run.sh: stopping"; cleanup; exit 0' INT TERM
trap cleanup EXIT

# start NAME CMD...: runs CMD with stdout copied to the terminal and watched for the ready line.
start() {
  local name="$1"; shift
  local fifo="$run_dir/.ready.$name"
  rm -f "$fifo"; mkfifo "$fifo"
  "$@" > "$fifo" &
  pids+=("$!")
  exec {fd}<"$fifo"
  local line deadline=$((SECONDS + 30))
  while [ $SECONDS -lt $deadline ]; do
    if read -r -t 1 -u "$fd" line; then
      echo "[$name] $line"
      case $line in ready\ *) break ;; esac
    fi
    kill -0 "${pids[-1]}" 2>/dev/null || die "$name exited before it was ready"
  done
  case $line in ready\ *) ;; *) die "$name printed no ready line within 30 s" ;; esac
  # Keep relaying its output after the ready line.
  (cat <&"$fd" | sed -u "s/^/[$name] /") &
  exec {fd}<&-
}

start router "$bin" router --config "$run_dir/switchboard.toml"
start blog "$blog" --config "$run_dir/switchboard.toml" --listen "127.0.0.1:$demo_port" \
  --key "$run_dir/keys/dev.secret" --db "$run_dir/blog.sqlite" \
  --router-ws "ws://127.0.0.1:$router_port/ws" --js clients/js

echo
echo "  open http://localhost:$demo_port in two windows"
echo "  (demo login: http://localhost:$demo_port/?as=bob in the second, or the switch links on the page)"
echo "  Ctrl-C stops the router and the demo."
echo
rc=0
wait -n "${pids[@]}" || rc=$?
# Ctrl-C reaches the whole process group: the router and the demo stop cleanly (exit 0),
# often before this shell's trap runs. Anything else is a failure worth saying so.
if [ "$rc" -eq 0 ] || [ "$rc" -eq 130 ]; then
  echo "run.sh: stopped"
  cleanup
  exit 0
fi
echo "run.sh: a process exited with status $rc; stopping the rest" >&2
cleanup
exit 1
