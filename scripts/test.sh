#!/usr/bin/env bash
# Kiln's test suite: what the README calls "run the tests" and what CI runs (.ci/run installs the
# prerequisites first). Root is needed for the eBPF tests; without it they print why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "--- format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "--- the checked-in eBPF object matches its source"
KILN_CHECK_PREBUILT=1 cargo build -p kiln-sampler-bpf --locked

echo "--- unit, integration and end-to-end tests (benches run once as tests)"
# The real Pyroscope SDKs (scripts/sdk-setup.sh) must be there: their test fails instead of skipping.
export KILN_REQUIRE_SDKS=1
cargo test --workspace --all-targets --locked

echo "--- the web UI in a real browser"
scripts/ui-test.sh

echo "--- fuzz each parser briefly (pprof, push, folded/lines ingest, label selectors)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} scripts/fuzz.sh
