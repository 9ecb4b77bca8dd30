"""Handing a job's results back from a machine that shares no filesystem with reprun.

A backend of that kind (execution/swarm.py; a Kubernetes backend would use it unchanged, see
docs/cluster.md) runs this wrapper around the job where it runs: it checks what only that
machine can (network interfaces, no-new-privileges, the dataset's hash where the data is read),
runs the job exactly as a local run does, and prints a framed block after the job's output:
exit status, OOM kills, the manifest and the metrics file (base64), and the sha256 of every
artifact, taken where it was written. The backend reads its output stream through an
OutputSplitter and parse_block, and hands back RemoteResults.
"""
from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from orchestrator.execution.job import LogSink
from orchestrator.outputs import MAX_METRICS_BYTES
from orchestrator.records import Artifact

# What the hand-back wrapper needs in the image (coreutils, findutils, sed: any Debian base).
WRAPPER_TOOLS = ("base64", "sha256sum", "find", "sort", "xargs", "sed", "cut", "wc", "readlink",
                 "sleep", "head", "tr", "ls", "mkdir")


def _q(text: str) -> str:
    return shlex.quote(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seconds(value: float) -> str:
    # Whole seconds where possible: not every `sleep` takes a fraction.
    return str(int(value)) if value == int(value) else f"{value:.3f}"


@dataclass(frozen=True)
class WrapperPlan:
    """What the hand-back wrapper does for one job: what it checks, where things are."""
    # Frames the block; new for every attempt, so that no output of a job is taken for it by
    # chance. (A job that reads it from /proc and forges a block is followed by the real one,
    # and the last block is the one read.)
    marker: str
    workdir: str                        # reprun's own tmpfs folder in the container
    shipped: dict[str, bytes]           # container path -> content, written before the job
    dataset_target: str | None          # where the dataset is mounted, to hash it there
    dataset_sha256: str | None
    outputs_dir: str | None
    metrics: str | None
    artifacts: tuple[str, ...]
    manifest: str | None
    no_network: bool
    no_new_privileges: bool             # the wrapper must apply it (the engine cannot)
    timeout_s: float


_ARTIFACT_HASHER = r"""
R=$1; shift
root=$(pwd -P)
for p in "$@"; do
  rel=${p#./}; name=${rel##*/}; hit=
  for pat in @PATTERNS@; do
    case $rel in $pat) hit=1 ;; esac
    case $name in $pat) hit=1 ;; esac
  done
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
  printf '%s artifact %s %s %s\n' "$R" "$(sha256sum < "$p" | cut -c1-64)" "$(wc -c < "$p" | tr -d ' ')" "$enc"
done
"""


def wrapper_script(plan: WrapperPlan) -> str:
    """The task container's entrypoint (`sh -c`); the job's own entrypoint and command follow
    as its arguments."""
    w = plan.workdir
    lines = [
        f"R={_q(plan.marker)}",
        "reprun_begin() { printf '\\n%s begin\\n' \"$R\"; }",
        "reprun_say() { printf '%s %s\\n' \"$R\" \"$*\"; }",
        "reprun_refuse() { reprun_begin; reprun_say refused \"$@\"; reprun_say end; exit 125; }",
        "reprun_missing=",
        f"for reprun_tool in {' '.join(WRAPPER_TOOLS)}; do",
        "  command -v \"$reprun_tool\" >/dev/null 2>&1 || reprun_missing=\"$reprun_missing $reprun_tool\"",
        "done",
        "[ -z \"$reprun_missing\" ] || reprun_refuse tools \"the image lacks$reprun_missing, "
        "which reprun needs to check the dataset and hand back results where the job runs\"",
    ]
    for path, content in sorted(plan.shipped.items()):
        folder = str(PurePosixPath(path).parent)
        lines.append(f"mkdir -p {_q(folder)} && printf '%s' {_q(_b64(content))} | base64 -d > "
                     f"{_q(path)} || reprun_refuse ship {_q(f'could not write {path} in the container')}")
    if plan.artifacts:
        hasher = _ARTIFACT_HASHER.replace("@PATTERNS@", " ".join(_q(p) for p in plan.artifacts))
        lines.append(f"printf '%s' {_q(_b64(hasher.encode()))} | base64 -d > {_q(w)}/.artifacts.sh"
                     " || reprun_refuse ship 'could not write the artifact hasher'")
    if plan.no_network:
        lines += [
            "reprun_ifaces=",
            "for reprun_if in $(ls /sys/class/net 2>/dev/null); do",
            "  [ \"$reprun_if\" = lo ] || reprun_ifaces=\"$reprun_ifaces $reprun_if\"",
            "done",
            "[ -z \"$reprun_ifaces\" ] || reprun_refuse network \"the container has network "
            "interfaces besides lo:$reprun_ifaces\"",
        ]
    lines.append("reprun_nnp=")
    if plan.no_new_privileges:
        lines += [
            "if [ \"$(sed -n 's/^NoNewPrivs:[[:space:]]*//p' /proc/self/status)\" != 1 ]; then",
            "  command -v setpriv >/dev/null 2>&1 || reprun_refuse privileges \"the engine "
            "cannot set no-new-privileges here and the image has no setpriv to set it\"",
            "  reprun_nnp='setpriv --no-new-privs'",
            "fi",
        ]
    if plan.dataset_target is not None:
        target = _q(plan.dataset_target)
        # The tree hash of DESIGN.md, computed with coreutils where the data is read.
        lines += [
            f"if [ -d {target} ]; then",
            f"  reprun_got=$( (cd {target} && find . -type f -print0 | LC_ALL=C sort -z "
            f"| xargs -0 sha256sum) 2>{_q(w)}/.dataset-errors | sha256sum | cut -c1-64)",
            "else",
            f"  reprun_got=$(sha256sum < {target} 2>{_q(w)}/.dataset-errors | cut -c1-64)",
            "fi",
            f"if [ \"$reprun_got\" != {_q(plan.dataset_sha256 or '')} ]; then",
            "  reprun_begin; reprun_say dataset \"$reprun_got\"",
            f"  reprun_say refused dataset \"$(head -n 1 {_q(w)}/.dataset-errors | tr -d '\\r')\"",
            "  reprun_say end; exit 3",
            "fi",
            f"rm -f {_q(w)}/.dataset-errors",
        ]
    lines += [
        "reprun_oom() { { sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events "
        "/sys/fs/cgroup/memory/memory.oom_control 2>/dev/null; echo 0; } | head -n 1; }",
        "reprun_oom_before=$(reprun_oom)",
        # The job runs in the foreground, as locally (a background job would start with SIGINT
        # ignored); a timer stops it at its timeout so that its results still come back. It
        # kills every process but PID 1, so it is armed only where the wrapper is PID 1: in
        # the task's own PID namespace.
        "reprun_timer=",
        "if [ \"$$\" = 1 ]; then",
        f"  ( sleep {_seconds(plan.timeout_s)} && : > {_q(w)}/.timed-out && kill -9 -1 ) "
        ">/dev/null 2>&1 </dev/null &",
        "  reprun_timer=$!",
        "fi",
        # The shell reports a job killed by a signal ("Killed") on its stderr: that is not the
        # job's output, so the wrapper's own stderr goes nowhere while the job keeps the real one.
        "exec 3>&2 2>/dev/null",
        "$reprun_nnp \"$@\" 2>&3 3>&-",
        "reprun_status=$?",
        "[ -z \"$reprun_timer\" ] || kill \"$reprun_timer\" 2>/dev/null",
        "reprun_begin",
        "reprun_say exit \"$reprun_status\"",
        "reprun_say oom \"$reprun_oom_before\" \"$(reprun_oom)\"",
        f"[ -e {_q(w)}/.timed-out ] && reprun_say timeout",
    ]
    if plan.dataset_target is not None:
        lines.append("reprun_say dataset \"$reprun_got\"")
    if plan.manifest:
        m = _q(plan.manifest)
        lines.append(f"[ -f {m} ] && [ ! -L {m} ] && base64 < {m} | sed \"s/^/$R manifest /\"")
    if plan.outputs_dir and plan.metrics:
        out = _q(plan.outputs_dir)
        m = _q(str(PurePosixPath(plan.outputs_dir) / plan.metrics))
        lines += [
            f"if [ -L {m} ]; then reprun_say metrics symlink",
            f"elif [ ! -e {m} ]; then reprun_say metrics missing",
            f"elif [ ! -f {m} ]; then reprun_say metrics not-a-file",
            f"else case \"$(readlink -f {m})\" in \"$(readlink -f {out})\"/*)",
            f"  reprun_size=$(wc -c < {m} | tr -d ' ')",
            f"  if [ \"$reprun_size\" -gt {MAX_METRICS_BYTES} ]; then "
            "reprun_say metrics too-large \"$reprun_size\"",
            f"  else reprun_say metrics file; base64 < {m} | sed \"s/^/$R metrics-data /\"; fi ;;",
            "  *) reprun_say metrics outside ;;",
            "esac; fi",
        ]
        if plan.artifacts:
            lines.append(f"(cd {out} && find . \\( -type f -o -type l \\) -exec sh "
                         f"{_q(w)}/.artifacts.sh \"$R\" {{}} +)")
    lines += ["reprun_say end", "exit \"$reprun_status\""]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- the block

@dataclass
class ResultBlock:
    """What the wrapper printed after the job: parsed, not yet judged."""
    complete: bool = False
    exit_code: int | None = None
    oom_kills: int = 0
    timed_out: bool = False
    dataset_sha256: str | None = None
    refused: tuple[str, str] | None = None         # (what, why)
    manifest: bytes | None = None
    metrics_state: str | None = None
    metrics_size: int | None = None
    metrics: bytes = b""
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _decode_b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def parse_block(text: bytes, marker: str) -> ResultBlock:
    block = ResultBlock()
    manifest, metrics = [], []
    prefix = marker.encode() + b" "
    for line in text.split(b"\n"):
        if not line.startswith(prefix):
            continue
        key, _, rest = line[len(prefix):].decode("utf-8", "replace").partition(" ")
        words = rest.split(" ")
        if key == "end":
            block.complete = True
        elif key == "exit" and rest.strip().isdigit():
            block.exit_code = int(rest)
        elif key == "oom" and len(words) == 2 and all(w.isdigit() for w in words):
            block.oom_kills = int(words[1]) - int(words[0])
        elif key == "timeout":
            block.timed_out = True
        elif key == "dataset":
            block.dataset_sha256 = rest.strip()
        elif key == "refused":
            what, _, why = rest.partition(" ")
            block.refused = (what, why.strip())
        elif key == "manifest":
            manifest.append(rest.strip())
        elif key == "metrics":
            block.metrics_state = words[0]
            if len(words) > 1 and words[1].isdigit():
                block.metrics_size = int(words[1])
        elif key == "metrics-data":
            metrics.append(rest.strip())
        elif key == "artifact" and len(words) == 3:
            name = _decode_b64(words[2])
            try:
                rel = name.decode("utf-8")
            except UnicodeDecodeError:
                shown = name.decode("utf-8", "backslashreplace")
                block.problems.append(f"the artifact {shown} has a name that is not UTF-8; a "
                                      "record could not name it unambiguously")
                continue
            if words[1].isdigit():
                block.artifacts[rel] = Artifact(sha256=words[0], size=int(words[1]))
        elif key == "artifact-escapes" and len(words) == 2:
            rel = _decode_b64(words[0]).decode("utf-8", "backslashreplace")
            link = _decode_b64(words[1]).decode("utf-8", "backslashreplace").strip()
            block.problems.append(f"the artifact {rel} is a symlink to {link}, outside the "
                                  "outputs folder; refused")
    if manifest:
        block.manifest = _decode_b64("".join(manifest))
    if metrics:
        block.metrics = _decode_b64("".join(metrics))
    return block


def metrics_problem(block: ResultBlock, name: str) -> str | None:
    return {
        "symlink": f"the metrics file {name} is a symlink; a job must write it as a file",
        "outside": f"the metrics file {name} lies behind a symlinked folder that leads outside "
                   "the outputs folder; refused",
        "not-a-file": f"the metrics file {name} is not a regular file",
        "too-large": f"the metrics file {name} is {block.metrics_size} bytes, over the "
                     f"{MAX_METRICS_BYTES}-byte limit",
    }.get(block.metrics_state or "")


class OutputSplitter:
    """Passes the job's stdout on as it comes and keeps back the block printed after it.

    The block starts with a newline, the marker and ` begin`; only a tail that could be the
    start of that line is held back. If the job printed the start line itself, the last one is
    the wrapper's: whatever came before it goes to the log after all.
    """

    def __init__(self, marker: str, sink: LogSink):
        self.start = b"\n" + marker.encode() + b" begin\n"
        self.end = marker.encode() + b" end\n"
        self.sink = sink
        self.held = b""
        self.block: bytearray | None = None

    @property
    def complete(self) -> bool:
        """The output so far ends with a whole block."""
        return self.block is not None and self.block.endswith(self.end)

    def feed(self, data: bytes) -> None:
        if self.block is not None:
            self.block += data
            return
        buffer = self.held + data
        found = buffer.find(self.start)
        if found >= 0:
            self._emit(buffer[:found])
            self.held, self.block = b"", bytearray(buffer[found + len(self.start):])
            return
        cut = buffer.rfind(b"\n", max(0, len(buffer) - len(self.start) + 1))
        if cut >= 0 and self.start.startswith(buffer[cut:]):
            self._emit(buffer[:cut])
            self.held = buffer[cut:]
        else:
            self._emit(buffer)
            self.held = b""

    def finish(self) -> bytes | None:
        """The block's text (None: the wrapper never printed one); the rest is emitted."""
        if self.block is None:
            self._emit(self.held)
            self.held = b""
            return None
        last = self.block.rfind(self.start)
        if last >= 0:
            self._emit(self.start + bytes(self.block[:last]))
            self.block = self.block[last + len(self.start):]
        return bytes(self.block)

    def _emit(self, data: bytes) -> None:
        if data:
            self.sink(data, "stdout")
