#!/usr/bin/env bash
# Build the example training images from the base, push them to the local registry, and lock the
# example specs to what this machine built. Image IDs are machine-local: the base image comes from
# debootstrap, whose output carries install dates, so every machine makes its own.
set -euo pipefail
REGISTRY=${REPRUN_REGISTRY:-127.0.0.1:5000}
cd "$(dirname "$0")/.."

build_and_push() {
  local name=$1 context=$2
  echo "images: building $name from $context" >&2
  docker build -q --network host -t "$name" "$context" >/dev/null
  docker tag "$name" "$REGISTRY/$name"
  docker push -q "$REGISTRY/$name" >/dev/null
}

build_and_push reprun/sklearn:latest images/sklearn
# PyTorch (Debian's, CPU only): the image whose state dicts are compared inside it.
build_and_push reprun/torch:latest images/torch
.venv/bin/reprun lock --quiet specs/*.yaml specs/nondeterministic/*.yaml
