#!/usr/bin/env bash
# Make the base image without any container registry: debootstrap a minimal Debian bookworm
# from the mirror apt already uses, add python3, numpy and scikit-learn from Debian's packages,
# `docker import` it, and push it to the local registry so it can be referred to by digest.
#
# Skips all work when the tagged image already exists in the engine.
set -euo pipefail

TAG=${REPRUN_BASE_TAG:-reprun/base:bookworm}
REGISTRY=${REPRUN_REGISTRY:-127.0.0.1:5000}
PACKAGES=python3,python3-numpy,python3-sklearn,python3-threadpoolctl,ca-certificates
WORK=${REPRUN_BASE_WORK:-/var/tmp/reprun-base}

say() { printf 'base image: %s\n' "$*" >&2; }

debian_mirror() {
  # deb822 sources first (Debian 12's default), then the one-line format.
  local uri
  uri=$(grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
  [ -n "$uri" ] || uri=$(grep -h '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -m1 '/debian/\?$' || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

push_to_registry() {
  local remote=$REGISTRY/$TAG
  docker tag "$TAG" "$remote"
  docker push -q "$remote" >/dev/null
  say "pushed $(docker image inspect --format '{{index .RepoDigests 0}}' "$remote")"
}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG already exists; nothing to build"
  docker image inspect --format '{{range .RepoDigests}}{{.}} {{end}}' "$TAG" | grep -q "$REGISTRY/" \
    || push_to_registry
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ] || {
    say "needs debootstrap (Debian's package) and root to make the base image"; exit 4; }
  say "installing debootstrap from Debian's packages"
  flock /var/lib/reprun-engine.apt.lock bash -c \
    'DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null' \
    || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi
mirror=$(debian_mirror)
rootfs=$WORK/rootfs
rm -rf "$rootfs"; mkdir -p "$rootfs"
say "debootstrap bookworm from $mirror (about two minutes)"
debootstrap --variant=minbase --include="$PACKAGES" bookworm "$rootfs" "$mirror" \
  > "$WORK/debootstrap.log" 2>&1 || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 4; }

# Keep it lean: nothing the training needs lives in docs, man pages, locales or apt caches.
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*
find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'C.*' -exec rm -rf {} +
# debootstrap copies the host's resolver and hostname; an image must not carry them.
: > "$rootfs/etc/resolv.conf"; echo reprun > "$rootfs/etc/hostname"

say "importing $(du -sh "$rootfs" | cut -f1) as $TAG"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$TAG" >/dev/null
rm -rf "$rootfs"
push_to_registry
