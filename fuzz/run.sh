#!/usr/bin/env bash
# Short, bounded fuzzing of the two parsers of untrusted input (CI runs this; rerun it longer by
# hand with FUZZ_SECONDS=600). Works on stable Rust: cargo-fuzz with --sanitizer none still gets
# libFuzzer's coverage guidance; the targets assert the properties themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-30}"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked --version 0.13.2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in flow_id upstream_answer; do
  mkdir -p "$work/$target"
  cp fuzz/seeds/"$target"/* "$work/$target/"
  echo "fuzzing $target for ${seconds}s"
  if ! cargo fuzz run --sanitizer none "$target" "$work/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$work/$target.log" 2>&1; then
    tail -n 40 "$work/$target.log"
    echo "fuzz target $target failed (the crashing input is in fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E "^(Done|stat::number_of_executed_units)" "$work/$target.log"
done
