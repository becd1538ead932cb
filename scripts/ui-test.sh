#!/usr/bin/env bash
# Starts a real Kiln server on a free port with a fresh data directory, runs the browser test
# (web/tests/ui.test.mjs, Debian's chromium driven by playwright-core) against it, and stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d web/node_modules/playwright-core ] || (cd web && npm ci --no-audit --no-fund --loglevel=error)
cargo build --locked --bin kiln
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
./target/debug/kiln server --listen "127.0.0.1:$port" --data-dir "$data" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
KILN_URL="http://127.0.0.1:$port" CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" node web/tests/ui.test.mjs
