#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for FUZZ_SECONDS (default 20) each,
# from the seeds in fuzz/corpus/<target>/ (copied to a temporary directory:
# the tree stays clean, new inputs are thrown away). Any crash, panic,
# failed assertion, build failure or missing tool fails the run.
# See docs/fuzzing.md.
#
# Usage: scripts/fuzz.sh [target...]   (default: every target)
#
# Why the flags:
# - RUSTC_BOOTSTRAP=1: libFuzzer's instrumentation (-Zsanitizer,
#   sanitizer-coverage passes) takes unstable rustc flags, and the machine
#   has the stable toolchain only (no nightly can be fetched).
# - AddressSanitizer stays on (cargo-fuzz's default): it builds and runs
#   on this stable toolchain with RUSTC_BOOTSTRAP, and it checks hearth's
#   few `unsafe` blocks and the C of its dependencies.
# - --codegen-units 16: cargo-fuzz's default of 1 made the cold build of
#   hearth take over 7 minutes on 2 cores; 16 units build in parallel at
#   the price of somewhat slower fuzzing.
# - One `cargo fuzz build` first, then each run with the very same flags,
#   so no run rebuilds anything.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
export RUSTC_BOOTSTRAP=1
FLAGS=(--codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi
cargo fuzz --version >/dev/null

cd fuzz
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[ "${#targets[@]}" -gt 0 ] || { echo "fuzz.sh: no fuzz targets found" >&2; exit 1; }

start=$(date +%s)
cargo fuzz build "${FLAGS[@]}"
echo "fuzz.sh: built ${#targets[@]} targets in $(( $(date +%s) - start ))s" >&2

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
    [ -d "corpus/$t" ] || { echo "fuzz.sh: no seeds in fuzz/corpus/$t" >&2; exit 1; }
    mkdir -p "$work/$t"
    cp -R "corpus/$t/." "$work/$t/"
    echo "fuzz.sh: fuzzing $t for ${FUZZ_SECONDS}s" >&2
    # A crash leaves its input in fuzz/artifacts/<target>/ (git-ignored) and
    # makes cargo fuzz exit non-zero. -rss_limit_mb bounds memory; -timeout
    # flags any input that hangs.
    if ! cargo fuzz run "${FLAGS[@]}" "$t" "$work/$t" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$work/$t.log" 2>&1; then
        tail -n 80 "$work/$t.log" >&2
        echo "fuzz.sh: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|new_units_added)' "$work/$t.log" >&2 || true
done
echo "fuzz.sh: all ${#targets[@]} targets passed in $(( $(date +%s) - start ))s" >&2
