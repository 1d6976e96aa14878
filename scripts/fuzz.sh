#!/usr/bin/env bash
# Builds every cargo-fuzz target under fuzz/ and runs each for SECONDS (default 30).
# Exits non-zero if any target crashes; the input is left in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS]          all targets
#   FUZZ_TARGETS="token" scripts/fuzz.sh 600
#
# Runs on the stable toolchain: cargo-fuzz needs -Z flags, which RUSTC_BOOTSTRAP=1 allows.
# The sanitizer is off by default (FUZZ_SANITIZER=none): the wire code is safe Rust, what we
# hunt is panics, overflow (debug assertions are on) and broken round trips. Set
# FUZZ_SANITIZER=address to add ASan where its runtime is installed.
# Corpus: fuzz/corpus/<target>/ (grows, not committed) plus fuzz/seeds/<target>/ (the SPEC.md
# vectors, committed). Reproduce a crash: cargo fuzz run <target> fuzz/artifacts/<target>/<file>.
set -euo pipefail

secs="${1:-30}"
case "$secs" in '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 64 ;; esac
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 69
fi
export RUSTC_BOOTSTRAP=1
flags=(--sanitizer "${FUZZ_SANITIZER:-none}" --debug-assertions)
targets="${FUZZ_TARGETS:-$(cargo fuzz list)}"

cargo fuzz build "${flags[@]}"

failed=()
for t in $targets; do
    mkdir -p "corpus/$t" "seeds/$t"
    echo "== $t: ${secs}s"
    if ! cargo fuzz run "${flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        2> >(tee "corpus/$t.log" | grep -E '^(Done|==|INFO: seed|stat::number_of_executed_units)|panicked|ERROR' >&2); then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: crashes in ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: $(wc -w <<<"$targets") targets, ${secs}s each, no crash"
