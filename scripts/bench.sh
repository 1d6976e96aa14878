#!/usr/bin/env bash
# The standard benchmark set (issue 8): a 2-worker router on the local bus, a journal for the
# HTTP API, then a second 2-worker router on RabbitMQ; runs the scenarios of switchboard-bench,
# writes JSON to bench/out/ and draws SVG plots beside it (PNG copies with rsvg-convert).
# About 10 minutes on 2 cores. Figures from a shared machine are a floor.
#
#   scripts/bench.sh                          # everything
#   ONLY="fanout idle" scripts/bench.sh       # some scenarios (names below)
#   STORM_CONNS=10000 scripts/bench.sh        # a smaller storm
#
# Local bus: fanout fanout10 topics publisher http idle connect storm storm-probe500
# RabbitMQ:  amqp-fanout amqp-topics amqp-storm (skipped, loudly, when no broker can be had)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/switchboard
B=target/release/switchboard-bench
OUT=bench/out
mkdir -p "$OUT"
[ -x "$BIN" ] && [ -x "$B" ] || { echo "bench: build first (make release)" >&2; exit 1; }
ONLY=${ONLY:-"fanout fanout10 topics publisher http idle connect storm storm-probe500 amqp-fanout amqp-topics amqp-storm"}
STORM_CONNS=${STORM_CONNS:-20000}
AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
ulimit -n "$(ulimit -Hn)"

W=$(mktemp -d /tmp/sbbench.XXXXXX)
EXCHANGE="sbbench.$$"
CRED="bench-credential-$$-0123456789"
"$BIN" keygen --kid bench --out "$W/keys" >/dev/null

router_config() { # file runtime_dir bus_lines
  cat > "$1" <<TOML
[router]
listen = "127.0.0.1:0"
workers = 2
runtime_dir = "$2"
[admin]
listen = "127.0.0.1:0"
[tokens]
key_files = ["$W/keys"]
[bus]
$3
[journal]
store = "sqlite"
sqlite_path = "$W/journal.sqlite"
TOML
}
router_config "$W/sb.toml" "$W/run" "local_dir = \"$W/run/bus\""
router_config "$W/amqp.toml" "$W/run-amqp" "kind = \"amqp\"
amqp_url = \"$AMQP_URL\"
exchange = \"$EXCHANGE\""
# The journal process for --via http: its own SQLite file (synchronous=full), the local
# router's bus (its outbox publishes there), one application credential.
cat > "$W/journal.toml" <<TOML
[tokens]
key_files = ["$W/keys"]
[bus]
local_dir = "$W/run/bus"
[journal]
listen = "127.0.0.1:0"
store = "sqlite"
sqlite_path = "$W/journal-http.sqlite"
sqlite_synchronous = "full"
app_credentials = ["$CRED"]
TOML

RPID="" JPID="" AMQP_USED=0
start_router() { # config
  CONF=$1
  "$BIN" router -c "$CONF" > "$W/router.out" 2> "$W/router.err" &
  RPID=$!
  for _ in $(seq 100); do grep -q '^ready router=' "$W/router.out" && break; sleep 0.1; done
  ADDR=$(sed -n 's/^ready router=//p' "$W/router.out" | head -1 | cut -d' ' -f1)
  [ -n "$ADDR" ] || { echo "bench: router did not start" >&2; cat "$W/router.err" >&2; exit 1; }
  sleep 0.5
}
stop_router() { [ -n "$RPID" ] && { kill -TERM "$RPID" 2>/dev/null || true; wait "$RPID" 2>/dev/null || true; }; RPID=""; }
start_journal() {
  "$BIN" journal -c "$W/journal.toml" > "$W/journal.out" 2> "$W/journal.err" &
  JPID=$!
  for _ in $(seq 100); do grep -q '^ready journal=' "$W/journal.out" && break; sleep 0.1; done
  JADDR=$(sed -n 's/^ready journal=//p' "$W/journal.out" | head -1 | cut -d' ' -f1)
  [ -n "$JADDR" ] || { echo "bench: journal did not start" >&2; cat "$W/journal.err" >&2; exit 1; }
}
stop_journal() { [ -n "$JPID" ] && { kill -TERM "$JPID" 2>/dev/null || true; wait "$JPID" 2>/dev/null || true; }; JPID=""; }
cleanup() {
  stop_journal
  stop_router
  # Routers declare their exchange durable and never delete it.
  [ "$AMQP_USED" = 1 ] && "$B" amqp delete-exchange --exchange "$EXCHANGE" --url "$AMQP_URL" >&2 || true
  rm -rf "$W"
}
trap cleanup EXIT

run() { # name args...
  local name=$1; shift
  echo "== $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
  "$B" --addr "$ADDR" --config "$CONF" --key "$W/keys/bench.secret" --sources 50 --json "$OUT/$name.json" "$@"
}
want() { [[ " $ONLY " == *" $1 "* ]]; }
want_any() { for s in "$@"; do want "$s" && return 0; done; return 1; }

{
  echo "commit $(git rev-parse --short HEAD) on $(nproc) cores, $(uname -r), $(date -u +%FT%TZ)"
  echo "uptime: $(uptime)"
} | tee "$OUT/machine.txt"
T0=$SECONDS

# ---------------------------------------------------------------- the local bus
if want_any fanout fanout10 topics publisher http idle connect storm storm-probe500; then
  start_router "$W/sb.toml"
  want fanout && run fanout fanout --subs 2000 --envelopes 1000 --payload 100 --batch 256
  if want fanout10; then
    # 10 % of the max load measured above: envelopes/s = 0.1 * deliveries/s / 2000.
    MAX=$(python3 -c "import json;print(json.load(open('$OUT/fanout.json'))['result']['deliveries_per_s'])" 2>/dev/null || echo 800000)
    R=$(python3 -c "print(max(1,int(0.1*$MAX/2000)))")
    run fanout-10pct fanout --subs 2000 --envelopes $((R * 10)) --rate "$R" --payload 100
  fi
  want topics && run topics-local topics --topics 1000 --subs 2 --envelopes 20 --rate 4000 --payload 100
  want publisher && run topics-publisher topics --topics 1000 --subs 2 --envelopes 50 --payload 100 --via publisher --tasks 64 --batch 256
  if want http; then
    start_journal
    # One envelope per request, as fast as 64 keep-alive connections (an application server's
    # concurrent requests) get answers.
    run topics-http topics --topics 1000 --subs 2 --envelopes 40 --payload 100 --via http --conns "${HTTP_CONNS:-64}" --batch 1 \
      --journal "$JADDR" --credential "$CRED"
    stop_journal
  fi
  want idle && run idle idle --conns 10000 --topics 100 --pid "$RPID"
  want connect && run connect connect --conns 10000
  # A fresh router for each storm (a worker killed twice within 30 s is respawned late).
  # The probe (one envelope to every client every --probe-ms) is all the traffic there is:
  # 100 ms is 200k deliveries/s at 20,000 clients, 500 ms a light 40k/s.
  if want storm; then
    stop_router; start_router "$W/sb.toml"
    run storm storm --conns "$STORM_CONNS" --pid "$RPID" --timeout-secs 15
  fi
  if want storm-probe500; then
    stop_router; start_router "$W/sb.toml"
    run storm-probe500 storm --conns "$STORM_CONNS" --pid "$RPID" --timeout-secs 15 --probe-ms 500
  fi
  stop_router
  echo "bench: local set done after $((SECONDS - T0)) s" >&2
fi

# ---------------------------------------------------------------- RabbitMQ
if want_any amqp-fanout amqp-topics amqp-storm; then
  port_open() { (exec 3<>"/dev/tcp/127.0.0.1/5672") 2>/dev/null; }
  if ! port_open && ! scripts/services.sh rabbitmq; then
    echo "" >&2
    echo "bench: !!! RabbitMQ is not running and could not be started: SKIPPING the RabbitMQ set !!!" >&2
    echo "" >&2
  else
    AMQP_USED=1
    start_router "$W/amqp.toml"
    want amqp-fanout && run fanout-amqp fanout --via amqp --subs 2000 --envelopes 1000 --payload 100 --batch 256
    want amqp-topics && run topics-amqp topics --via amqp --topics 1000 --subs 2 --envelopes 20 --rate 4000 --payload 100
    if want amqp-storm; then
      stop_router; start_router "$W/amqp.toml"
      run storm-amqp storm --conns "$STORM_CONNS" --pid "$RPID" --timeout-secs 15
    fi
    stop_router
    echo "bench: RabbitMQ set done after $((SECONDS - T0)) s" >&2
  fi
fi

"$B" plot --out "$OUT" "$OUT"/*.json
# PNG copies when librsvg is there (plotters' own bitmap backend needs system font libraries).
if command -v rsvg-convert >/dev/null; then
  for f in "$OUT"/*.svg; do rsvg-convert "$f" -o "${f%.svg}.png"; done
else
  echo "bench: no rsvg-convert (apt-get install librsvg2-bin): SVG only" >&2
fi
echo "bench: results in $OUT ($((SECONDS - T0)) s)" >&2
