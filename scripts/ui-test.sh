#!/usr/bin/env bash
# Runs the web UI's unit tests (web/tests/unit, plain `node --test`), then starts a real Kiln
# server on a free port with a fresh data directory, runs the browser test (web/tests/ui.test.mjs,
# Debian's chromium driven by playwright-core) against it, and stops it. Screenshots of each view
# go to $KILN_SCREENSHOTS (default target/ui-screenshots).
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
