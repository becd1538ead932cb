#!/usr/bin/env bash
# Checks deploy/: renders the base and every overlay with kustomize (`kubectl kustomize`), validates
# the output against the Kubernetes schemas (`kubernetes-validate --strict`: unknown fields are
# errors) and scans it with checkov's Kubernetes checks. Every check checkov would fail is either
# fixed or skipped on the resource with a written reason (`checkov.io/skipN` annotations).
#
# The two Python tools come from PyPI at pinned versions, in a venv kept between runs
# ($KILN_TOOLS_DIR, default ~/.cache/kiln): installed once, then reused without the network.
# checkov runs offline (--skip-download, BC_SKIP_MAPPING).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null; then
    echo "!!! kubectl is not installed: deploy/ cannot be rendered. The machine image ships kubectl 1.32" >&2
    echo "!!! (with kustomize v5); elsewhere install kubectl >= 1.27." >&2
    exit 1
fi

tools=${KILN_TOOLS_DIR:-$HOME/.cache/kiln}/k8s-venv-checkov-3.3.30
if [ ! -x "$tools/bin/checkov" ] || [ ! -x "$tools/bin/kubernetes-validate" ]; then
    rm -rf "$tools"
    python3 -m venv "$tools"
    "$tools/bin/pip" install --quiet --disable-pip-version-check \
        checkov==3.3.30 kubernetes-validate==1.37.0
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for dir in deploy deploy/overlays/*/; do
    name=$(echo "${dir%/}" | tr / -)
    kubectl kustomize "$dir" > "$out/$name.yaml"
    echo "--- rendered $dir: $(grep -c '^kind:' "$out/$name.yaml") resources"
done

"$tools/bin/kubernetes-validate" --strict --quiet "$out"/*.yaml
echo "--- kubernetes-validate --strict: every resource valid"

args=()
for f in "$out"/*.yaml; do args+=(-f "$f"); done
BC_SKIP_MAPPING=TRUE "$tools/bin/checkov" --framework kubernetes --skip-download --compact --quiet \
    "${args[@]}"
echo "--- checkov: no failed check"
