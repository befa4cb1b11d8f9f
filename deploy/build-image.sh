#!/usr/bin/env bash
# Builds the taskgate container image without a Docker daemon or an image registry, from the same
# deploy/Dockerfile that `docker build -f deploy/Dockerfile .` uses:
#
#   deploy/build-image.sh            (from anywhere, as root; Debian bookworm or similar)
#
# The Dockerfile's base images (build args RUST_IMAGE and RUNTIME_IMAGE) are made here instead of
# pulled: the runtime base is a Debian bookworm minbase with ca-certificates (mmdebstrap, trimmed
# of docs, man pages, locales and apt's caches as debian:bookworm-slim is), the builder base the
# same plus gcc and libc6-dev and this machine's Rust toolchain (the one `rustc` resolves to in the
# repository, without its docs) and this machine's CA bundle for cargo (CARGO_HTTP_CAINFO: crates
# come through whatever TLS proxy this machine trusts; the image itself gets Debian's bundle only).
# Both are cached in buildah's local storage, keyed by their recipe (and the toolchain), and
# remade when older than TASKGATE_BASE_MAX_AGE_DAYS (7). Then
# `buildah build --isolation chroot --format docker --layers` (docker format: the OCI format has no
# HEALTHCHECK), so an unchanged Dockerfile step is not run again; the builder stage's last layer
# is kept (localhost/taskgate-builder-cache:latest for the default tag), earlier builds' layers
# are removed.
#
# Installs buildah and mmdebstrap from Debian when missing. Needs crates.io and the Debian archive.
# Progress goes to stderr; stdout gets the image's tag, size and id, and the image id alone on the
# last line:
#
#   id="$(deploy/build-image.sh | tail -n 1)"
#
# Environment: TASKGATE_IMAGE_TAG (localhost/taskgate:dev), TASKGATE_DEBIAN_MIRROR (mmdebstrap's
# default, deb.debian.org), TASKGATE_BASE_MAX_AGE_DAYS (7), TASKGATE_REBUILD_BASES=1 (remake both
# bases now), TASKGATE_BUILD_CA_FILE (the builder's CA bundle; default $SSL_CERT_FILE or
# /etc/ssl/certs/ca-certificates.crt), STORAGE_DRIVER (buildah's own setting).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

TAG="${TASKGATE_IMAGE_TAG:-localhost/taskgate:dev}"
MAX_AGE_DAYS="${TASKGATE_BASE_MAX_AGE_DAYS:-7}"
SUITE=bookworm
STARTED="$SECONDS"

log() { printf 'build-image [%3ds]: %s\n' "$((SECONDS - STARTED))" "$*" >&2; }
fail() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (buildah's storage and mmdebstrap's root mode need it)"
[ -f deploy/Dockerfile ] && [ -f Cargo.lock ] || fail "$ROOT is not the taskgate repository root"

# --- tools ----------------------------------------------------------------------------------
packages=()
command -v buildah >/dev/null 2>&1 || packages+=(buildah)
command -v mmdebstrap >/dev/null 2>&1 || packages+=(mmdebstrap)
if [ "${#packages[@]}" -gt 0 ]; then
  log "installing ${packages[*]} from Debian"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
fi
command -v rustc >/dev/null 2>&1 || PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
command -v rustc >/dev/null 2>&1 || fail "no rustc: the builder base is made from this machine's Rust toolchain"

# One build at a time on this machine (the base tags and the image tag are shared).
exec 9>/run/lock/taskgate-build-image.lock
flock -w 3600 9 || fail "another build-image.sh still holds /run/lock/taskgate-build-image.lock"

WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/build-image.XXXXXX")"
containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- base images ----------------------------------------------------------------------------
# What debian:bookworm-slim leaves out (debuerreotype's slimify), and no translated package lists.
MMDEBSTRAP=(mmdebstrap --quiet --variant=minbase --format=tar
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --dpkgopt='path-exclude=/usr/share/groff/*' --dpkgopt='path-exclude=/usr/share/lintian/*'
  --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Languages "none"')
MIRROR=()
[ -z "${TASKGATE_DEBIAN_MIRROR:-}" ] || MIRROR=("$TASKGATE_DEBIAN_MIRROR")

key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

# fresh TAG: the image TAG exists and is younger than MAX_AGE_DAYS (and no rebuild was asked for).
fresh() {
  local created
  [ "${TASKGATE_REBUILD_BASES:-0}" != 1 ] || return 1
  created="$(buildah inspect --type image --format '{{.Docker.Created.Unix}}' "$1" 2>/dev/null)" || return 1
  [ $(($(date +%s) - created)) -lt $((MAX_AGE_DAYS * 86400)) ]
}

# import TARBALL TAG [buildah config options...]: a single-layer image from a root filesystem tarball.
import() {
  local tarball="$1" tag="$2" c
  shift 2
  c="$(buildah from --pull=never scratch)"
  containers+=("$c")
  buildah add --quiet "$c" "$tarball" / >/dev/null
  buildah config --created-by "deploy/build-image.sh" "$@" "$c"
  buildah commit --quiet --rm "$c" "$tag" >/dev/null
  unset 'containers[-1]'
}

# forget_others TAG: removes the other tags of TAG's repository (bases of older recipes or
# toolchains), where nothing built on them still needs them.
forget_others() {
  local name
  buildah images --noheading --format '{{.Name}}:{{.Tag}}' | while read -r name; do
    [[ "$name" == "${1%:*}:"* && "$name" != "$1" ]] || continue
    buildah rmi "$name" >/dev/null 2>&1 || true
  done
}

STD_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# Runtime base: stands in for debian:bookworm-slim, whose apt keeps no package caches either
# (its docker-clean: without this, the Dockerfile's apt-get update leaves 70 MB in the image).
runtime_recipe=("${MMDEBSTRAP[@]}" --include=ca-certificates
  --aptopt='Dir::Cache::pkgcache ""' --aptopt='Dir::Cache::srcpkgcache ""' "$SUITE" "${MIRROR[@]}")
RUNTIME_BASE="localhost/taskgate-base-runtime:$SUITE-$(key "${runtime_recipe[@]}")"
if fresh "$RUNTIME_BASE"; then
  log "runtime base $RUNTIME_BASE: cached"
else
  log "runtime base $RUNTIME_BASE: mmdebstrap $SUITE minbase + ca-certificates"
  "${runtime_recipe[@]}" "$WORK/runtime.tar" >&2
  import "$WORK/runtime.tar" "$RUNTIME_BASE" --env "PATH=$STD_PATH" --cmd '["bash"]'
  rm -f "$WORK/runtime.tar"
  forget_others "$RUNTIME_BASE"
  log "runtime base $RUNTIME_BASE: made"
fi

# Builder base: stands in for rust:1-bookworm, with this machine's toolchain (bin and lib; the docs
# under share/ are left out) where the official image keeps it, without rustup.
SYSROOT="$(rustc --print sysroot)"
RUST_VERSION="$(rustc --version | awk '{ print $2 }')"
TOOLCHAIN="$(basename "$SYSROOT")"
[ -x "$SYSROOT/bin/cargo" ] && [ -d "$SYSROOT/lib/rustlib" ] && [ "$SYSROOT" != /usr ] ||
  fail "the toolchain at $SYSROOT is not a rustup toolchain with cargo (bin/cargo, lib/rustlib)"
TOOLCHAIN_DIR="/usr/local/rustup/toolchains/$TOOLCHAIN"
copy_hook="mkdir -p \"\$1$TOOLCHAIN_DIR\" \"\$1/usr/local/cargo/bin\""
copy_hook+=" && cp -a $(printf '%q ' "$SYSROOT/bin" "$SYSROOT/lib")\"\$1$TOOLCHAIN_DIR/\""
copy_hook+=" && rm -rf \"\$1$TOOLCHAIN_DIR/lib/rustlib/src\""
# The builder fetches crates with this machine's trust (which may include a TLS-intercepting
# proxy's CA); only the builder has it, the runtime image keeps Debian's bundle alone.
HOST_CA="${TASKGATE_BUILD_CA_FILE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
[ -r "$HOST_CA" ] || fail "no CA bundle at $HOST_CA for the builder (set TASKGATE_BUILD_CA_FILE)"
copy_hook+=" && cp $(printf '%q' "$HOST_CA") \"\$1/etc/ssl/certs/build-host-ca-certificates.crt\""
builder_recipe=("${MMDEBSTRAP[@]}" --include=ca-certificates --include=gcc --include=libc6-dev
  --customize-hook="$copy_hook" "$SUITE" "${MIRROR[@]}")
BUILDER_BASE="localhost/taskgate-base-rust:$RUST_VERSION-$(key "${builder_recipe[@]}" "$(rustc -vV)" "$(sha256sum <"$HOST_CA")")"
if fresh "$BUILDER_BASE"; then
  log "builder base $BUILDER_BASE: cached"
else
  log "builder base $BUILDER_BASE: mmdebstrap $SUITE minbase + gcc, libc6-dev + $SYSROOT"
  "${builder_recipe[@]}" "$WORK/builder.tar" >&2
  import "$WORK/builder.tar" "$BUILDER_BASE" \
    --env RUSTUP_HOME=/usr/local/rustup --env CARGO_HOME=/usr/local/cargo \
    --env "PATH=/usr/local/cargo/bin:$TOOLCHAIN_DIR/bin:$STD_PATH" \
    --env "RUST_VERSION=$RUST_VERSION" \
    --env CARGO_HTTP_CAINFO=/etc/ssl/certs/build-host-ca-certificates.crt --cmd '["bash"]'
  rm -f "$WORK/builder.tar"
  forget_others "$BUILDER_BASE"
  log "builder base $BUILDER_BASE: made"
fi

# --- the image ------------------------------------------------------------------------------
build() {
  buildah build --isolation chroot --format docker --layers --force-rm --pull=never \
    -f deploy/Dockerfile --ignorefile deploy/Dockerfile.dockerignore \
    --build-arg "RUST_IMAGE=$BUILDER_BASE" --build-arg "RUNTIME_IMAGE=$RUNTIME_BASE" "$@" .
}
log "buildah build -f deploy/Dockerfile -t $TAG (RUST_IMAGE=$BUILDER_BASE RUNTIME_IMAGE=$RUNTIME_BASE)"
build --iidfile "$WORK/iid" -t "$TAG" >&2
IMAGE_ID="$(sed 's/^sha256://' "$WORK/iid")"
[ -n "$IMAGE_ID" ] || fail "buildah build wrote no image id"

# Layer cache housekeeping: the builder stage's last layer (the compiled dependencies, reused by
# the next build) gets a tag, all from the same cache, so that it is not dangling; then the
# dangling images made from these bases (earlier builds' layers) are removed, and storage stays
# bounded however many builds this machine runs. Other dangling images are left alone.
build --quiet --target builder -t "${TAG%:*}-builder-cache:latest" >/dev/null
for _ in 1 2 3 4 5; do
  removed=0
  while read -r id; do
    [ "$(buildah inspect --type image --format '{{range .History}}{{println .CreatedBy}}{{end}}' "$id" |
      head -n 1)" = deploy/build-image.sh ] || continue
    buildah rmi "$id" >/dev/null 2>&1 && removed=$((removed + 1))
  done < <(buildah images --noheading --no-trunc --filter dangling=true --format '{{.ID}}')
  [ "$removed" -gt 0 ] || break
  log "removed $removed dangling image(s) of earlier builds"
done
SIZE="$(buildah images --noheading --format '{{.Size}}' "$IMAGE_ID" | head -n 1)"
log "built in $((SECONDS - STARTED))s"

printf 'image: %s\n' "$TAG"
printf 'size: %s\n' "$SIZE"
printf 'id: %s\n' "$IMAGE_ID"
printf '%s\n' "$IMAGE_ID"
