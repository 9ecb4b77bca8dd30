# Variation "path": an extra folder first in PATH.
if [ -n "${REPRUN_PATH_FIRST:-}" ]; then
  mkdir -p "$REPRUN_PATH_FIRST" && PATH="$REPRUN_PATH_FIRST:$PATH" || exit 97
fi
