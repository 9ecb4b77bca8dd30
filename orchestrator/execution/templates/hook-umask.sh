# Variation "umask": the umask the job starts with.
if [ -n "${REPRUN_UMASK:-}" ]; then umask "$REPRUN_UMASK" || exit 97; fi
