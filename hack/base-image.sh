#!/usr/bin/env bash
# Builds the Debian base image every local image starts from, with debootstrap; no registry needed.
#
#   hack/base-image.sh    prints the image name (slm-local/debian:$DEBIAN_SUITE) on the last line
#
# A second run finds the image and returns at once. Needs root (debootstrap) and a Docker engine.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
image="slm-local/debian:$DEBIAN_SUITE"
log() { printf '[base-image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if docker image inspect "$image" >/dev/null 2>&1; then log "$image present"; echo "$image"; exit 0; fi
[[ $(id -u) -eq 0 ]] || die "debootstrap needs root to build $image (or load an image of that name yourself)"
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null && apt-get install -y -qq debootstrap >/dev/null || die "apt-get install debootstrap failed"
fi
start=$SECONDS
root="$(mktemp -d /tmp/slm-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
log "debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR"
debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
  || die "debootstrap failed: $(tail -n 3 "$root.log" | tr '\n' ' ')"
rm -f "$root.log"
# Nothing a container needs: package caches and docs.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc "$root"/usr/share/man
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null || die "docker import failed"
log "$image built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$image"
