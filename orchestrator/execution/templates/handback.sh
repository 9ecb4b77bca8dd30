#!/bin/sh
# The Swarm task's entrypoint (execution/handback.py): it checks what only the machine the job
# runs on can check, runs the job (the run's own entrypoint, shipped here, then the job) exactly
# as a local run does, and prints a block framed by the marker R after the job's output: exit
# status, OOM kills, the metrics file (base64), the sha256 of every artifact. The job's stdout
# is encoded (every line behind a "|") and every process of the job is gone before the block
# starts, so the job can read the marker (it is in /proc/1/cmdline) but not print the block.
#
# reprun fills in the settings below (": @SETTINGS@"): every value single-quoted, a list one
# entry a line.
R='' reprun_workdir='' reprun_ship='' reprun_patterns='' reprun_hasher='' reprun_no_network=''
reprun_want_nnp=''
reprun_dataset_target='' reprun_dataset_sha256='' reprun_timeout='' reprun_outputs=''
reprun_metrics='' reprun_max_metrics=''
: @SETTINGS@

reprun_begin() { printf '\n%s begin\n' "$R"; }
reprun_say() { printf '%s %s\n' "$R" "$*"; }
reprun_refuse() { reprun_begin; reprun_say refused "$@"; reprun_say end; exit 125; }
reprun_nl='
'

reprun_missing=
for reprun_tool in base64 sha256sum find sort xargs sed cut wc readlink sleep head tr mkdir \
    mkfifo; do
  command -v "$reprun_tool" >/dev/null 2>&1 || reprun_missing="$reprun_missing $reprun_tool"
done
printf '' | sed -u p >/dev/null 2>&1 || reprun_missing="$reprun_missing sed-u"
[ -z "$reprun_missing" ] || reprun_refuse tools "the image lacks$reprun_missing, which reprun" \
  "needs to check the dataset and hand back results where the job runs"

reprun_hasher=$(printf '%s' "$reprun_hasher" | base64 -d)

# The files reprun ships with the job (its entrypoint and the Python probe), one "path content"
# line each, both base64. Nothing the wrapper runs after the job comes from a file: the job
# could have rewritten it.
reprun_ifs=$IFS IFS=$reprun_nl
for reprun_entry in $reprun_ship; do
  IFS=$reprun_ifs
  reprun_path=$(printf '%s' "${reprun_entry% *}" | base64 -d)
  if ! { mkdir -p "$(dirname "$reprun_path")" \
      && printf '%s' "${reprun_entry#* }" | base64 -d > "$reprun_path"; }; then
    reprun_refuse ship "could not write $reprun_path in the container"
  fi
done
IFS=$reprun_ifs

if [ -n "$reprun_no_network" ]; then
  reprun_ifaces=
  for reprun_if in /sys/class/net/*; do
    reprun_if=${reprun_if##*/}
    [ "$reprun_if" = lo ] || [ "$reprun_if" = '*' ] || reprun_ifaces="$reprun_ifaces $reprun_if"
  done
  [ -z "$reprun_ifaces" ] || reprun_refuse network "the container has network interfaces" \
    "besides lo:$reprun_ifaces"
fi

reprun_nnp=
if [ -n "$reprun_want_nnp" ] \
    && [ "$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)" != 1 ]; then
  command -v setpriv >/dev/null 2>&1 || reprun_refuse privileges "the engine cannot set" \
    "no-new-privileges here and the image has no setpriv to set it"
  reprun_nnp='setpriv --no-new-privs'
fi

if [ -n "$reprun_dataset_target" ]; then
  # The tree hash of DESIGN.md, computed with coreutils where the data is read.
  if [ -d "$reprun_dataset_target" ]; then
    reprun_got=$( (cd "$reprun_dataset_target" && find -L . -type f -print0 | LC_ALL=C sort -z \
      | xargs -0 sha256sum) 2>"$reprun_workdir/.dataset-errors" | sha256sum | cut -c1-64)
  else
    reprun_got=$(sha256sum < "$reprun_dataset_target" 2>"$reprun_workdir/.dataset-errors" \
      | cut -c1-64)
  fi
  if [ "$reprun_got" != "$reprun_dataset_sha256" ]; then
    reprun_begin; reprun_say dataset "$reprun_got"
    reprun_say refused dataset "$(head -n 1 "$reprun_workdir/.dataset-errors" | tr -d '\r')"
    reprun_say end; exit 3
  fi
  rm -f "$reprun_workdir/.dataset-errors"
fi

reprun_oom() {
  { sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events \
      /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; echo 0; } | head -n 1
}

# Kill every process in the task but PID 1 (this wrapper) and the ones named, until none is
# left: a job's background processes must be gone before the block is printed, so that no line
# after the block's start can be theirs. Zombies are skipped (they hold nothing open). Only
# where the wrapper is PID 1, in the task's own PID namespace: elsewhere -1 would be the host.
reprun_sweep() {
  reprun_left=1
  while [ -n "$reprun_left" ]; do
    reprun_left=
    for reprun_proc in /proc/[0-9]*; do
      reprun_pid=${reprun_proc#/proc/}
      case " 1 $* " in *" $reprun_pid "*) continue ;; esac
      read -r reprun_stat < "$reprun_proc/stat" 2>/dev/null || continue
      reprun_stat=${reprun_stat##*) }
      [ "${reprun_stat%% *}" = Z ] && continue
      kill -9 "$reprun_pid" 2>/dev/null && reprun_left=1
    done
  done
}

reprun_oom_before=$(reprun_oom)
# Every line the job prints on stdout reaches the log behind a "|" (the encoder, sed -u, reads
# it from a FIFO): a raw line, as the block's are, never comes from the job's stdout.
reprun_fifo=$reprun_workdir/.stdout
rm -f "$reprun_fifo"
mkfifo -m 600 "$reprun_fifo" || reprun_refuse ship "could not make $reprun_fifo in the container"
sed -u 's/^/|/' < "$reprun_fifo" &
reprun_encoder=$!
# The job runs in the foreground, as locally (a background job would start with SIGINT
# ignored); a timer stops it at its timeout so that its results still come back. It kills the
# job's processes, sparing the encoder and itself (its own PID, as `sh -c` reports its parent).
reprun_timer=
if [ "$$" = 1 ]; then
  ( sleep "$reprun_timeout" && : > "$reprun_workdir/.timed-out" \
      && reprun_sweep "$reprun_encoder" "$(exec sh -c 'echo "$PPID"')" ) \
    >/dev/null 2>&1 </dev/null &
  reprun_timer=$!
fi
# The shell reports a job killed by a signal ("Killed") on its stderr: that is not the job's
# output, so the wrapper's own stderr goes nowhere while the job keeps the real one.
exec 3>&2 2>/dev/null
$reprun_nnp "$@" > "$reprun_fifo" 2>&3 3>&-
reprun_status=$?
[ -z "$reprun_timer" ] || kill "$reprun_timer" 2>/dev/null
[ "$$" != 1 ] || reprun_sweep "$reprun_encoder"
wait "$reprun_encoder"
reprun_begin
reprun_say exit "$reprun_status"
reprun_say oom "$reprun_oom_before" "$(reprun_oom)"
[ -e "$reprun_workdir/.timed-out" ] && reprun_say timeout
[ -z "$reprun_dataset_target" ] || reprun_say dataset "$reprun_got"
if [ -n "$reprun_outputs" ] && [ -n "$reprun_metrics" ]; then
  reprun_m=$reprun_metrics
  if [ -L "$reprun_m" ]; then reprun_say metrics symlink
  elif [ ! -e "$reprun_m" ]; then reprun_say metrics missing
  elif [ ! -f "$reprun_m" ]; then reprun_say metrics not-a-file
  else
    case "$(readlink -f "$reprun_m")" in
      "$(readlink -f "$reprun_outputs")"/*)
        reprun_size=$(wc -c < "$reprun_m" | tr -d ' ')
        if [ "$reprun_size" -gt "$reprun_max_metrics" ]; then
          reprun_say metrics too-large "$reprun_size"
        else
          reprun_say metrics file; base64 < "$reprun_m" | sed "s/^/$R metrics-data /"
        fi ;;
      *) reprun_say metrics outside ;;
    esac
  fi
  if [ -n "$reprun_patterns" ]; then
    (cd "$reprun_outputs" && find . \( -type f -o -type l \) \
      -exec sh -c "$reprun_hasher" reprun-hasher "$R" "$reprun_patterns" {} +)
  fi
fi
reprun_say end
exit "$reprun_status"
