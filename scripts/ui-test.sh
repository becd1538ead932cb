#!/usr/bin/env bash
# Runs the web UI's unit tests (web/tests/unit, plain `node --test`), then starts a real Kiln
# server on a free port with a fresh data directory, runs the browser test (web/tests/ui.test.mjs,
# Debian's chromium driven by playwright-core) against it, and stops it. Screenshots of each view
# go to $KILN_SCREENSHOTS (default target/ui-screenshots).
# As root it also runs the live-agent test (web/tests/ui-root.test.mjs, `root_live_agent`): a
# `kiln up` (server + eBPF agent) and a CPU-burning workload the page must wait for, then show.
# Not root: that test is skipped with a loud message, as scripts/test.sh does for root_* tests.
set -euo pipefail
cd "$(dirname "$0")/.."
node --test web/tests/unit/
[ -d web/node_modules/playwright-core ] || (cd web && npm ci --no-audit --no-fund --loglevel=error)
# The binary the test suite already built: the same command as scripts/test.sh's, so after it this is
# a no-op. (`cargo build --bin kiln` would rebuild reqwest, axum, kube… with another feature set:
# dev-dependencies unify features in a test build; that cost CI ~2-6 min.)
cargo test --workspace --all-targets --locked --no-run --quiet
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/kiln server --listen "127.0.0.1:$port" --data-dir "$data/open" &
pid=$!
# A second server with --auth-token, for the page's token prompt.
auth_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
auth_token="ui-test-$RANDOM$RANDOM"
./target/debug/kiln server --listen "127.0.0.1:$auth_port" --data-dir "$data/auth" --auth-token "$auth_token" &
auth_pid=$!
trap 'kill $pid $auth_pid 2>/dev/null; wait $pid $auth_pid 2>/dev/null; rm -rf "$data"' EXIT
for p in "$port" "$auth_port"; do
  for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$p/healthz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
KILN_URL="http://127.0.0.1:$port" KILN_AUTH_URL="http://127.0.0.1:$auth_port" KILN_AUTH_TOKEN="$auth_token" \
  KILN_SCREENSHOTS="${KILN_SCREENSHOTS:-$PWD/target/ui-screenshots}" \
  CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" node web/tests/ui.test.mjs

if [ "$(id -u)" != 0 ]; then
  echo "!!! SKIPPED root_live_agent (web/tests/ui-root.test.mjs): not root. Run this script as root (CI does)."
  exit 0
fi
# The workload of the e2e tests (main → alpha → beta → hot), named for its service_name.
gcc -O0 -g -fno-omit-frame-pointer -o "$data/kiln-ui-work" tests/workloads/callchain.c
up_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
up_metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# 2 s windows so the first arrives soon; no upload budget so the workload's debuginfo is not
# queued behind kiln's own (large, debug) executable.
./target/debug/kiln up --listen "127.0.0.1:$up_port" --metrics-listen "127.0.0.1:$up_metrics" \
  --data-dir "$data/up" --frequency 99 --window 2s --upload-budget off --kube-api off &
up_pid=$!
trap 'kill -INT $up_pid 2>/dev/null; kill $pid $auth_pid 2>/dev/null; wait $pid $auth_pid $up_pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$up_port/healthz" >/dev/null 2>&1 && break
  sleep 0.2
done
KILN_UP_URL="http://127.0.0.1:$up_port" KILN_UI_WORKLOAD="$data/kiln-ui-work" \
  KILN_SCREENSHOTS="${KILN_SCREENSHOTS:-$PWD/target/ui-screenshots}" \
  CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" node web/tests/ui-root.test.mjs
