#!/usr/bin/env bash
# Installs the real Pyroscope SDKs that storage-server/tests/sdk.rs drives against a live server:
#   target/sdk-venvs/py1   PyPI pyroscope-io 1.x  (sends to the push API), with pyroscope-otel
#                          (span profiles for storage-server/tests/grafana_contract)
#   target/sdk-venvs/py08  PyPI pyroscope-io 0.8.x (sends to the legacy /ingest)
#   tests/sdk/node/node_modules  npm @pyroscope/nodejs (pinned by its lockfile; sends to /ingest)
# The two Python versions cannot share a venv (same import name), hence two. Idempotent: a venv
# that already imports its pinned version is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."

PY1_VERSION=1.4.0
PY08_VERSION=0.8.16
OTEL_VERSION=1.1.0
venvs=target/sdk-venvs
mkdir -p "$venvs"

python=${PYTHON:-python3}
venv() { # dir version [extra package==version]
  local dir=$1 version=$2 extra=${3:-}
  local stale="m.version('pyroscope-io') != '$version'"
  if [ -n "$extra" ]; then
    stale="$stale or m.version('${extra%%==*}') != '${extra##*==}'"
  fi
  local check="import importlib.metadata as m, sys; sys.exit($stale)"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" 2>/dev/null; then
    echo "$dir: pyroscope-io $version $extra already installed"
    return
  fi
  rm -rf "$dir"
  "$python" -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check "pyroscope-io==$version" $extra
  echo "$dir: pyroscope-io $version $extra installed"
}
venv "$venvs/py1" "$PY1_VERSION" "pyroscope-otel==$OTEL_VERSION"
venv "$venvs/py08" "$PY08_VERSION"

(cd tests/sdk/node && npm ci --no-audit --no-fund --loglevel=error)
echo "node: @pyroscope/nodejs $(node -p "require('./tests/sdk/node/node_modules/@pyroscope/nodejs/package.json').version")"
