#!/usr/bin/env bash
# Runs every fuzz target briefly (FUZZ_SECONDS each, default 20). Needs nightly and cargo-fuzz
# (.ci/run installs both). Corpora are kept under fuzz/corpus/ (gitignored) between runs; a crash
# leaves its input under fuzz/artifacts/ and fails this script.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo +nightly fuzz list); do
  echo "--- fuzz $target (${seconds}s)"
  if ! cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $target failed (input saved under fuzz/artifacts/$target/)"
    exit 1
  fi
  grep -E '^Done [0-9]+ runs' "$log" || tail -n 5 "$log"
done
