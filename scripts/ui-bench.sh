#!/usr/bin/env bash
# Browser benchmark of the web UI (benches/ui/render.mjs): a 100,000-node flame graph rendered
# and zoomed in Debian's chromium, this tree's web/ against the page at BASE_REV in the same run
# (default f8c2d53, main on 2026-12-03, the page issue 11 point 7 asks to compare with; 0b2a597 is
# the page before the ES-module rewrite). No server needed.
# Targets (issue 11): render ≤ 100 ms, zoom ≤ 16 ms per frame; exits non-zero when missed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d web/node_modules/playwright-core ] || (cd web && npm ci --no-audit --no-fund --loglevel=error)
base="${BASE_REV:-f8c2d53}"
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
git archive "$base" web | tar -x -C "$old"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}" node benches/ui/render.mjs --new web --old "$old/web" \
  --json "${KILN_UI_BENCH_JSON:-target/ui-bench.json}" "$@"
