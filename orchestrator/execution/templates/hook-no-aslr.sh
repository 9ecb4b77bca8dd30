# Intervention "aslr" and variation "aslr": the job starts with address-space randomization
# off (personality ADDR_NO_RANDOMIZE; the run's seccomp profile allows it).
if [ -n "${REPRUN_NO_ASLR:-}" ]; then
  command -v setarch >/dev/null 2>&1 \
    || { echo "reprun: the image has no setarch to turn address randomization off" >&2; exit 97; }
  set -- setarch "$(uname -m)" -R "$@"
fi
