#!/usr/bin/env bash
# Bring up a Docker engine and a local registry, idempotently.
#
# If an engine already answers (the user's own, or DOCKER_HOST), it is used and nothing changes.
# Otherwise, on Debian as root, Debian's docker.io is installed and dockerd is started in the
# background with no bridge network: training containers never get a network, and nothing here
# may route to a private-range address.
set -euo pipefail

STATE_DIR=${REPRUN_ENGINE_DIR:-/var/lib/reprun-engine}
ENGINE_LOG=$STATE_DIR/dockerd.log
REGISTRY_LOG=$STATE_DIR/registry.log
REGISTRY_ADDR=${REPRUN_REGISTRY:-127.0.0.1:5000}
REGISTRY_DATA=$STATE_DIR/registry
WAIT_SECONDS=${REPRUN_ENGINE_WAIT:-60}

say() { printf 'engine: %s\n' "$*" >&2; }
die() { printf 'engine: %s\n' "$*" >&2; exit 4; }

engine_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
registry_answers() { curl -fsS --max-time 3 "http://$REGISTRY_ADDR/v2/" >/dev/null 2>&1; }

need_root_debian() {
  [ "$(id -u)" = 0 ] || die "no Docker engine answers and I am not root, so I cannot start one. Start a Docker engine yourself (or set DOCKER_HOST to one) and run this again."
  [ -f /etc/debian_version ] || die "no Docker engine answers and this is not Debian, so I cannot install one. Install Docker Engine for your system (https://docs.docker.com/engine/install/) or set DOCKER_HOST, then run this again."
}

install_packages() {
  local missing=()
  for pair in dockerd:docker.io docker-registry:docker-registry curl:curl debootstrap:debootstrap; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  need_root_debian
  say "installing ${missing[*]} from Debian's packages"
  # Serialise concurrent callers: dpkg holds its own lock but apt-get update races on lists.
  flock /var/lib/reprun-engine.apt.lock bash -c '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "$@" >/dev/null
  ' _ "${missing[@]}" || die "could not install ${missing[*]} with apt-get; see above."
}

# A killed session leaves /var/run/docker.pid behind and dockerd then refuses to start.
clear_stale_pidfile() {
  local pidfile=$1
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile" 2>/dev/null || true)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    say "removing stale pid file $pidfile"
    rm -f "$pidfile"
  fi
}

start_dockerd() {
  clear_stale_pidfile /var/run/docker.pid
  clear_stale_pidfile /var/run/docker/containerd/containerd.pid
  if pgrep -x dockerd >/dev/null; then
    say "dockerd is already starting; waiting for it"
    return 0
  fi
  say "starting dockerd (no bridge network), log: $ENGINE_LOG"
  setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
    --host=unix:///var/run/docker.sock >>"$ENGINE_LOG" 2>&1 </dev/null &
}

wait_for_engine() {
  local deadline=$((SECONDS + WAIT_SECONDS))
  until engine_answers; do
    if [ $SECONDS -ge $deadline ]; then
      {
        echo "engine: dockerd did not answer within ${WAIT_SECONDS}s. The end of its log ($ENGINE_LOG):"
        tail -n 15 "$ENGINE_LOG" 2>/dev/null | sed 's/^/    /'
      } >&2
      exit 4
    fi
    sleep 0.5
  done
}

start_registry() {
  registry_answers && return 0
  mkdir -p "$REGISTRY_DATA"
  local config=$STATE_DIR/registry.yml
  cat >"$config" <<YAML
version: 0.1
log: {level: warn}
storage:
  filesystem: {rootdirectory: $REGISTRY_DATA}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
YAML
  if ! pgrep -f "docker-registry serve $config" >/dev/null; then
    say "starting the local registry on $REGISTRY_ADDR, data: $REGISTRY_DATA"
    setsid nohup docker-registry serve "$config" >>"$REGISTRY_LOG" 2>&1 </dev/null &
  fi
  local deadline=$((SECONDS + 30))
  until registry_answers; do
    if [ $SECONDS -ge $deadline ]; then
      echo "engine: the registry did not answer on $REGISTRY_ADDR within 30s. The end of its log:" >&2
      tail -n 15 "$REGISTRY_LOG" 2>/dev/null | sed 's/^/    /' >&2
      exit 4
    fi
    sleep 0.3
  done
}

main() {
  if engine_answers; then
    say "using the engine that already answers ($(docker version --format '{{.Server.Version}}'))"
  else
    need_root_debian
    install_packages
    mkdir -p "$STATE_DIR"
    # One starter at a time; a second caller waits and then finds the engine answering.
    exec 9>"$STATE_DIR/start.lock"
    flock 9
    engine_answers || { start_dockerd; wait_for_engine; }
    flock -u 9
    say "engine answers ($(docker version --format '{{.Server.Version}}'))"
  fi
  if ! registry_answers; then
    install_packages   # the registry, and curl to ask it, may be missing beside a user's engine
    mkdir -p "$STATE_DIR"
    exec 8>"$STATE_DIR/registry.lock"
    flock 8
    start_registry
    flock -u 8
  fi
  say "registry answers on $REGISTRY_ADDR"
}

main "$@"
