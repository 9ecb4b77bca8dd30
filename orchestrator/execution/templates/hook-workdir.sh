# Variation "workdir": the job starts in another working folder.
if [ -n "${REPRUN_WORKDIR:-}" ]; then
  mkdir -p "$REPRUN_WORKDIR" && cd "$REPRUN_WORKDIR" || exit 97
fi
