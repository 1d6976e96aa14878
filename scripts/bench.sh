#!/usr/bin/env bash
# The standard benchmark set (issue 8): starts a 2-worker router on the local bus, runs the
# scenarios of switchboard-bench, writes JSON to bench/out/ and draws SVG plots beside it.
# About 5 minutes on 2 cores. Figures from a shared machine are a floor.
#
#   scripts/bench.sh            # everything
#   ONLY="fanout idle" scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/switchboard
B=target/release/switchboard-bench
OUT=bench/out
mkdir -p "$OUT"
[ -x "$BIN" ] && [ -x "$B" ] || { echo "bench: build first (make release)" >&2; exit 1; }
ONLY=${ONLY:-"fanout fanout10 topics publisher idle connect storm"}
ulimit -n "$(ulimit -Hn)"

W=$(mktemp -d /tmp/sbbench.XXXXXX)
"$BIN" keygen --kid bench --out "$W/keys" >/dev/null
cat > "$W/sb.toml" <<TOML
[router]
listen = "127.0.0.1:0"
workers = 2
runtime_dir = "$W/run"
[admin]
listen = "127.0.0.1:0"
[tokens]
key_files = ["$W/keys"]
[bus]
local_dir = "$W/run/bus"
[journal]
store = "sqlite"
sqlite_path = "$W/journal.sqlite"
TOML

start_router() {
  "$BIN" router -c "$W/sb.toml" > "$W/router.out" 2> "$W/router.err" &
  RPID=$!
  for _ in $(seq 100); do grep -q '^ready router=' "$W/router.out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^ready router=//p' "$W/router.out" | head -1 | cut -d' ' -f1)
  [ -n "$ADDR" ] || { echo "bench: router did not start" >&2; cat "$W/router.err" >&2; exit 1; }
  sleep 0.5
}
stop_router() { kill -TERM "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; }
trap 'stop_router; rm -rf "$W"' EXIT

run() { # name args...
  local name=$1; shift
  echo "== $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$B" --addr "$ADDR" --config "$W/sb.toml" --key "$W/keys/bench.secret" --sources 50 --json "$OUT/$name.json" "$@"
}
want() { [[ " $ONLY " == *" $1 "* ]]; }

{
  echo "commit $(git rev-parse --short HEAD) on $(nproc) cores, $(uname -r), $(date -u +%FT%TZ)"
  echo "uptime: $(uptime)"
} | tee "$OUT/machine.txt"

start_router
want fanout && run fanout fanout --subs 2000 --envelopes 1000 --payload 100 --batch 256
if want fanout10; then
  # 10 % of the max load measured above: envelopes/s = 0.1 * deliveries/s / 2000.
  MAX=$(python3 -c "import json;print(json.load(open('$OUT/fanout.json'))['result']['deliveries_per_s'])" 2>/dev/null || echo 800000)
  R=$(python3 -c "print(max(1,int(0.1*$MAX/2000)))")
  run fanout-10pct fanout --subs 2000 --envelopes $((R * 10)) --rate "$R" --payload 100
fi
want topics && run topics-local topics --topics 1000 --subs 2 --envelopes 20 --rate 4000 --payload 100
want publisher && run topics-publisher topics --topics 1000 --subs 2 --envelopes 50 --payload 100 --via publisher --tasks 64 --batch 256
want idle && run idle idle --conns 10000 --topics 100 --pid "$RPID"
want connect && run connect connect --conns 10000
if want storm; then
  stop_router; start_router
  # One process holds at most ~20k fds (the hard limit here): 19,000 clients.
  run storm storm --conns "${STORM_CONNS:-19000}" --pid "$RPID" --timeout-secs 15
fi
stop_router
"$B" plot --out "$OUT" "$OUT"/*.json
echo "bench: results in $OUT" >&2
