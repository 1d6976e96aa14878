#!/usr/bin/env bash
# Runs the Autobahn|Testsuite fuzzing client (cases 1-10, quick set: no 9.* performance, no
# 12.*/13.* compression) against examples/echo.rs, which serves the router's own connection
# layer. Exits non-zero when any case FAILED (NON-STRICT and INFORMATIONAL are fine).
#
#   scripts/autobahn.sh                 # build, start the echo, run, summarize
#   AUTOBAHN_DIR=... scripts/autobahn.sh  # where install_wstest.sh and run_fuzzingclient.sh live
#
# The report lands in target/autobahn/ (index.html per case).
set -euo pipefail
cd "$(dirname "$0")/.."

find_suite() {
  for d in "${AUTOBAHN_DIR:-}" ../shared/conformance/autobahn ../../shared/conformance/autobahn /work/shared/conformance/autobahn; do
    [ -n "$d" ] && [ -x "$d/run_fuzzingclient.sh" -o -f "$d/run_fuzzingclient.sh" ] && { echo "$d"; return; }
  done
  echo "autobahn: cannot find the suite (set AUTOBAHN_DIR)" >&2; exit 2
}
SUITE=$(find_suite)

bash "$SUITE/install_wstest.sh" >/dev/null
cargo build --release --example echo

OUT=target/autobahn
mkdir -p "$OUT"
target/release/examples/echo 127.0.0.1:0 > "$OUT/echo.out" 2> "$OUT/echo.log" &
ECHO_PID=$!
trap 'kill $ECHO_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 200); do
  grep -q '^ready echo=' "$OUT/echo.out" 2>/dev/null && break
  kill -0 $ECHO_PID 2>/dev/null || { echo "autobahn: echo server died" >&2; cat "$OUT/echo.log" >&2; exit 1; }
  sleep 0.05
done
ADDR=$(sed -n 's/^ready echo=//p' "$OUT/echo.out")
[ -n "$ADDR" ] || { echo "autobahn: echo server not ready" >&2; exit 1; }
echo "autobahn: echo server at $ADDR"
bash "$SUITE/run_fuzzingclient.sh" -u "ws://$ADDR/" -a switchboard -o "$OUT" -q
