#!/usr/bin/env bash
# Kiln's test suite: what the README calls "run the tests" and what CI runs (.ci/run installs the
# prerequisites first). Root is needed for the tests named `root_*` (eBPF, perf, namespaces,
# cgroups): they are `#[ignore = "needs root"]`, so a plain `cargo test` leaves them out, and this
# script runs them in a second pass when it runs as root (without root it says how many it skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
step() { echo "--- [$(( $(date +%s) - started ))s] $*"; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the checked-in eBPF object matches its source"
KILN_CHECK_PREBUILT=1 cargo build -p kiln-sampler-bpf --locked

step "unit, integration and end-to-end tests (benches run once as tests)"
# The real Pyroscope SDKs (scripts/sdk-setup.sh) must be there: their test fails instead of skipping.
export KILN_REQUIRE_SDKS=1
# Node 18 and 22 (.ci/run installs them in /opt/kiln-node): the Node tests fail instead of
# reporting them missing.
export KILN_REQUIRE_ALL_NODES=1
cargo test --workspace --all-targets --locked --no-fail-fast

step "root-only tests (eBPF, perf, namespaces, cgroups)"
if [ "$(id -u)" = 0 ]; then
    cargo test --workspace --all-targets --locked --no-fail-fast -- --ignored root_
else
    skipped=$(cargo test --workspace --all-targets --locked -q -- --ignored --list root_ 2>/dev/null |
        grep -c ': test$' || true)
    echo "!!! SKIPPED ${skipped} root-only tests (root_*): not root. Run this script as root (CI does)."
fi

step "object storage: the s3_* tests on a real Ceph RADOS gateway (scripts/ceph-rgw-up.sh)"
# Needs root (it starts Ceph daemons; installs the Debian packages if missing). Without root, or with
# KILN_SKIP_S3=1, the s3_* tests are reported as skipped, never as passed.
# They spend most of their time waiting (freshness bounds, a 60 s gateway outage), so they run in the
# background while the browser test and the fuzzers use the CPU; their output is printed, and their
# result counted, after those finish.
s3_pid=
if [ "$(id -u)" = 0 ] && [ "${KILN_SKIP_S3:-0}" != 1 ]; then
    s3_dir=$(mktemp -d /tmp/kiln-ceph.XXXXXX)
    s3_port=${KILN_TEST_S3_PORT:-7480}
    s3_log=$s3_dir/s3-tests.log
    # The test cluster keeps nothing worth a clean shutdown (memstore), and a ceph-osd waits for
    # its gone monitor on SIGTERM: SIGKILL by PID.
    stop_ceph() {
        for pid in $(cat "$s3_dir"/run/*.pid 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    }
    trap stop_ceph EXIT
    scripts/ceph-rgw-up.sh "$s3_dir" "$s3_port"
    (
        export KILN_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port KILN_TEST_S3_DIR=$s3_dir KILN_REQUIRE_S3=1
        cargo test --workspace --all-targets --locked --no-fail-fast -- --ignored s3_
    ) >"$s3_log" 2>&1 &
    s3_pid=$!
    echo "s3_* tests started in the background (log: $s3_log)"
else
    skipped=$(cargo test --workspace --all-targets --locked -q -- --ignored --list s3_ 2>/dev/null |
        grep -c ': test$' || true)
    echo "!!! SKIPPED ${skipped} object-storage tests (s3_*): they need root to start Ceph (CI runs them)."
fi

step "the web UI in a real browser"
scripts/ui-test.sh

step "fuzz each parser briefly (pprof, push, folded/lines ingest, label selectors)"
FUZZ_SECONDS=${FUZZ_SECONDS:-15} scripts/fuzz.sh

if [ -n "$s3_pid" ]; then
    step "object storage: waiting for the s3_* tests"
    s3_rc=0
    wait "$s3_pid" || s3_rc=$?
    cat "$s3_log"
    stop_ceph
    trap - EXIT
    if [ "$s3_rc" != 0 ]; then
        echo "!!! the s3_* tests failed (exit $s3_rc)"
        exit "$s3_rc"
    fi
fi
step "all tests passed"
