# Variation "env-order": the shell passes its environment on in its own hash order, whatever
# order the engine gave; only `env -i` with an explicit list sets the order the variation chose.
if [ -n "${REPRUN_ENV_ORDER:-}" ]; then
  reprun_n=$# reprun_rest=
  for reprun_name in $(env | sed -n 's/^\([A-Za-z_][A-Za-z0-9_]*\)=.*/\1/p'); do
    case " $REPRUN_ENV_ORDER REPRUN_ENV_ORDER " in
      *" $reprun_name "*) ;;
      *) reprun_rest="$reprun_rest $reprun_name" ;;
    esac
  done
  for reprun_name in $reprun_rest $REPRUN_ENV_ORDER; do
    if eval "[ -n \"\${$reprun_name+set}\" ]"; then
      eval "set -- \"\$@\" \"$reprun_name=\${$reprun_name}\""
    fi
  done
  while [ "$reprun_n" -gt 0 ]; do set -- "$@" "$1"; shift; reprun_n=$((reprun_n - 1)); done
  set -- env -i "$@"
fi
