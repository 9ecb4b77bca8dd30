#!/bin/sh
# The artifact hasher of the Swarm hand-back (handback.sh runs it by `find -exec sh -c`): one
# `artifact SHA256 SIZE NAME` line for each file that one of the spec's patterns matches, the
# name base64; a symlink that leads outside the outputs folder is named, not hashed.
# Arguments: the block's marker, the patterns (one a line), then the paths.
R=$1 patterns=$2; shift 2
root=$(pwd -P)
nl='
'
set -f   # the patterns are matched with `case`, never expanded against the files here
for p in "$@"; do
  rel=${p#./}; name=${rel##*/}; hit=
  IFS=$nl
  for pat in $patterns; do
    # shellcheck disable=SC2254  # the pattern is a glob on purpose
    case $rel in $pat) hit=1 ;; esac
    # shellcheck disable=SC2254
    case $name in $pat) hit=1 ;; esac
  done
  unset IFS
  [ -n "$hit" ] || continue
  enc=$(printf '%s' "$rel" | base64 | tr -d '\n')
  if [ -L "$p" ]; then
    t=$(readlink -f "$p")
    case $t in
      "$root"|"$root"/*) ;;
      *) printf '%s artifact-escapes %s %s\n' "$R" "$enc" "$(readlink "$p" | base64 | tr -d '\n')" ;;
    esac
    continue
  fi
  printf '%s artifact %s %s %s\n' "$R" "$(sha256sum < "$p" | cut -c1-64)" \
    "$(wc -c < "$p" | tr -d ' ')" "$enc"
done
