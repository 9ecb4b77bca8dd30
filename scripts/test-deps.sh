#!/usr/bin/env bash
# Install the Debian packages the test suite uses, only those that are missing.
#
# Idempotent and safe to run from several shells at once: apt-get update races on its lists,
# so callers are serialised with flock. Extra package names may be given as arguments.
# Without root (or off Debian) it says what is missing and leaves the tests to skip.
set -euo pipefail

PACKAGES=(
  chromium        # the HTML report is opened in a real headless browser
  busybox-static  # a tiny image without Python, imported for tests that remove or damage images
  shellcheck      # every shell template the containers run is checked (tests/test_containment.py)
  diffoscope-minimal  # a readable diff of artifacts no comparator of reprun reads
  libfaketime     # the clock intervention and the `time` factor preload it into the container
  pipx            # the wheel `make dist` builds is installed as a user would (tests/test_dist.py)
)
PACKAGES+=("$@")
LOCK=${REPRUN_APT_LOCK:-/var/lib/reprun-engine.apt.lock}

say() { printf 'test-deps: %s\n' "$*" >&2; }

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ] || [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null; then
  say "missing ${missing[*]}; install them with your package manager (tests that need them will be skipped)"
  exit 0
fi

say "installing ${missing[*]} from Debian's packages"
mkdir -p "$(dirname "$LOCK")"
flock "$LOCK" bash -c '
  set -e
  export DEBIAN_FRONTEND=noninteractive
  still=()
  for pkg in "$@"; do
    dpkg-query -W -f="\${Status}" "$pkg" 2>/dev/null | grep -q "install ok installed" || still+=("$pkg")
  done
  [ ${#still[@]} -eq 0 ] && exit 0
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${still[@]}" >/dev/null
' _ "${missing[@]}"
