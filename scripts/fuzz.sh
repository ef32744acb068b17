#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets, one after the other, for
# SECONDS each (stable toolchain, no sanitizer), then prints one summary line
# per target: runs, exec/s, corpus size, coverage and the number of files in
# fuzz/artifacts/TARGET (crashes, timeouts, OOMs kept by libFuzzer).
#
# Usage: scripts/fuzz.sh SECONDS
# Full libFuzzer output goes to fuzz/target/fuzz-logs/TARGET.log (and the
# terminal). Exits non-zero if any target stopped on a failure.
set -euo pipefail

if [ $# -ne 1 ] || ! [[ $1 =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 SECONDS" >&2
    exit 2
fi
seconds=$1

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
root=$(pwd)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

logs=$root/fuzz/target/fuzz-logs
mkdir -p "$logs"

targets=()
for f in "$root"/fuzz/fuzz_targets/*.rs; do
    targets+=("$(basename "$f" .rs)")
done
if [ ${#targets[@]} -eq 0 ]; then
    echo "no targets in fuzz/fuzz_targets" >&2
    exit 1
fi

summary=()
failed=0
for t in "${targets[@]}"; do
    echo "== $t (${seconds}s)"
    log=$logs/$t.log
    start=$(date +%s)
    if cargo fuzz run -s none "$t" -- -max_total_time="$seconds" 2>&1 | tee "$log"; then
        status=ok
    else
        status="stopped (exit ${PIPESTATUS[0]})"
        failed=1
    fi
    elapsed=$(($(date +%s) - start))

    # The last libFuzzer status line: "#N <event> cov: C ft: F corp: U/S ... exec/s: E ...".
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    field() { sed -nE "s|.*[[:space:]]$1:? ([^[:space:]]+).*|\\1|p" <<<"$last"; }
    runs=$(sed -nE 's/^Done ([0-9]+) runs in ([0-9]+) second.*/\1/p' "$log" | tail -n 1)
    [ -n "$runs" ] || runs=$(sed -nE 's/^#([0-9]+).*/\1/p' <<<"$last")
    [ -n "$runs" ] || runs=0
    secs=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -n 1)
    [ -n "$secs" ] && [ "$secs" -gt 0 ] || secs=$((elapsed > 0 ? elapsed : 1))
    corpus=$(find "$root/fuzz/corpus/$t" -type f 2>/dev/null | wc -l)
    crashes=$(find "$root/fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
    line=$(printf '%-14s %s: runs %s, exec/s %s (libFuzzer: %s), corpus %s files (%s), cov %s, ft %s, artifacts %s' \
        "$t" "$status" "$runs" "$((runs / secs))" "$(field exec/s)" "$corpus" "$(field corp)" \
        "$(field cov)" "$(field ft)" "$crashes")
    summary+=("$line")
    if [ "$crashes" -gt 0 ]; then
        while IFS= read -r a; do summary+=("    ${a#"$root"/}"); done < <(find "$root/fuzz/artifacts/$t" -type f | sort)
    fi
done

echo
echo "== summary (${seconds}s per target; logs in ${logs#"$root"/})"
printf '%s\n' "${summary[@]}"
exit "$failed"
