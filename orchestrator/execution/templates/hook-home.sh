# Variation "home": another HOME, made before the job looks for it.
if [ -n "${REPRUN_MAKE_HOME:-}" ]; then mkdir -p "$HOME" || exit 97; fi
