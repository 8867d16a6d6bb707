#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time and prints a table:
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 30)
#
# Installs cargo-fuzz when it is missing, builds all targets once (nightly; release with
# debug assertions and AddressSanitizer, cargo-fuzz's default), then runs each for
# SECONDS_PER_TARGET seconds on its committed corpus (fuzz/corpus/<target>, read only:
# what a run finds goes to a scratch directory). Exits 1 if any target crashed (a panic,
# a failed assertion, a sanitizer report, a timeout or running out of memory); the input
# is in fuzz/artifacts/<target>/ and the run's log is printed.
#
# Environment: FUZZ_TARGETS="a b" runs only those; FUZZ_MERGE=1 merges what a run found
# into the committed corpus (only inputs that add coverage: libFuzzer's -merge=1);
# FUZZ_FLAGS="--dev -s none" builds unoptimised without AddressSanitizer (CI's bounded
# run: a build of a few minutes instead of a quarter of an hour; panics, overflow and
# the image targets' escape checks still count; the long run keeps the defaults).
set -euo pipefail

secs=${1:-30}
case $secs in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if ! rustup toolchain list | grep -q '^nightly'; then
    echo "fuzz.sh: cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}
start=$(date +%s)
read -r -a flags <<<"${FUZZ_FLAGS:-}"
cargo +nightly fuzz build "${flags[@]}"
echo "fuzz.sh: built $(echo $targets | wc -w) targets in $(($(date +%s) - start)) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
rows=()
for t in $targets; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t" "$scratch/$t"
    log="$scratch/$t.log"
    rc=0
    # the scratch directory comes first: libFuzzer writes new inputs to the first one
    cargo +nightly fuzz run "${flags[@]}" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
        >"$log" 2>&1 || rc=$?
    execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
    rate=$(awk '/stat::average_exec_per_sec/ {print $2}' "$log" | tail -1)
    found=$(find "$scratch/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        failed=1
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -1 | sed 's/Test unit written to //')
        rows+=("$t|${execs:-?}|${rate:-?}|$found|1|${artifact:-see log}")
        echo "=== $t crashed (exit $rc); the end of its log:" >&2
        tail -60 "$log" >&2
    else
        rows+=("$t|${execs:-?}|${rate:-?}|$found|0|")
    fi
    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$found" -gt 0 ]; then
        cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "$scratch/$t" -- -merge=1 >"$scratch/$t.merge.log" 2>&1 ||
            echo "fuzz.sh: merging $t's finds failed (see $scratch/$t.merge.log)" >&2
    fi
done

echo
printf '%-16s %12s %8s %10s %8s  %s\n' target executions exec/s new-inputs crashes artifact
for r in "${rows[@]}"; do
    IFS='|' read -r t execs rate found crashes artifact <<<"$r"
    printf '%-16s %12s %8s %10s %8s  %s\n' "$t" "$execs" "$rate" "$found" "$crashes" "$artifact"
done
echo "($secs s per target)"
exit $failed
