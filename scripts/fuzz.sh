#!/usr/bin/env bash
# Runs every fuzz target briefly (default 20 s each; FUZZ_SECONDS to change). Needs nightly and
# cargo-fuzz (.ci/run installs both). Corpora are kept under fuzz/corpus/ (gitignored) between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-20}
for target in $(cargo +nightly fuzz list); do
  echo "--- fuzz $target (${seconds}s)"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536
done
