#!/usr/bin/env bash
# Builds Kiln's container image: the `kiln` binary (cargo profile `image`: optimized, no debug
# info, stripped; it embeds the eBPF sampler and the web UI), the few shared libraries it links
# (glibc, libgcc_s: copied from this machine, as `ldd` lists them) and the CA certificates (for an
# https --server-url), on an empty base. glibc rather than a static musl build: the agent tunes
# glibc's malloc (agent/src/alloc.rs) and the build needs no second toolchain.
#
# Uses Debian's buildah with the vfs storage driver and chroot isolation (no overlay mounts, no
# user namespaces needed: works inside containers and CI machines), then smoke-tests the image
# with `buildah run` and prints its compressed size.
#
#   scripts/image.sh                  # builds kiln:<version>
#   IMAGE=registry.example.com/observability/kiln:0.1.0 scripts/image.sh
#   scripts/image.sh --push docker://registry.example.com/observability/kiln:0.1.0
#
# Pushing needs credentials for the registry: `buildah login registry.example.com` first.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMAGE=${IMAGE:-kiln:$version}
push_to=
if [ "${1:-}" = "--push" ]; then
    push_to=${2:?usage: scripts/image.sh [--push TRANSPORT:DESTINATION]}
fi
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs
buildah() { command buildah --storage-driver vfs "$@"; }
command -v buildah >/dev/null || { echo "buildah is not installed (Debian: apt-get install buildah)" >&2; exit 1; }

started=$(date +%s)
cargo build --profile image --locked --bin kiln
echo "--- cargo build --profile image: $(( $(date +%s) - started )) s"
bin=target/image/kiln

ctr=$(buildah from scratch)
cleanup() { buildah rm "$ctr" >/dev/null 2>&1 || true; }
trap cleanup EXIT
buildah copy --quiet "$ctr" "$bin" /usr/local/bin/kiln
# The dynamic loader and every library the binary links, at the paths ldd resolves them to.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
    real=$(readlink -f "$lib")
    buildah copy --quiet "$ctr" "$real" "$lib"
done
buildah copy --quiet "$ctr" /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
buildah config \
    --entrypoint '["/usr/local/bin/kiln"]' \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    --label org.opencontainers.image.title=kiln \
    --label org.opencontainers.image.description="Kiln: a continuous, cluster-wide CPU profiler (server and agent)" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    "$ctr"
buildah commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
trap - EXIT
echo "--- built $IMAGE"

# Smoke test: the binary runs inside the image (its libraries are all there) and both
# subcommands the manifests use answer.
smoke=$(buildah from "$IMAGE")
trap 'buildah rm "$smoke" >/dev/null 2>&1 || true' EXIT
buildah run "$smoke" -- /usr/local/bin/kiln --version
agent_help=$(buildah run "$smoke" -- /usr/local/bin/kiln agent --help)
grep -q -- '--server-url' <<<"$agent_help"
server_help=$(buildah run "$smoke" -- /usr/local/bin/kiln server --help)
grep -q -- '--data-dir' <<<"$server_help"
buildah rm "$smoke" >/dev/null
trap - EXIT
echo "--- smoke test passed: kiln --version, kiln agent --help, kiln server --help"

# The size a registry stores and a node pulls: the image as a gzip-compressed OCI archive.
archive=$(mktemp -d)/kiln.oci.tar
buildah push --quiet --compression-format gzip "$IMAGE" "oci-archive:$archive:$IMAGE"
bytes=$(stat -c %s "$archive")
echo "--- compressed image: $bytes bytes ($(( bytes / 1048576 )) MiB); uncompressed binary: $(stat -c %s "$bin") bytes"
rm -rf "$(dirname "$archive")"
limit=$(( 20 * 1048576 ))
if [ "$bytes" -gt "$limit" ]; then
    echo "!!! the compressed image exceeds 20 MiB" >&2
    exit 1
fi

if [ -n "$push_to" ]; then
    buildah push "$IMAGE" "$push_to"
    echo "--- pushed $IMAGE to $push_to"
fi
