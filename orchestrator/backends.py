"""Where runs execute: one interface, several backends, one chosen per command or per project.

The interface is `Executor`: `run(job, on_output, on_event)` takes a resolved, hermetic
`engine.ContainerJob` and returns an `engine.ContainerOutcome` — exit status, reason, duration,
and, from a backend that shares no filesystem with reprun, the job's results as `Collected`.
Everything above it (runner, verify, check, rerun) is written against this interface alone.

Backends:
  local   the Docker engine reprun talks to (engine.LocalEngine); results are read from the
          run's folders in the store, which are bind mounted into the container
  swarm   a Docker Swarm, each run a `replicated-job` service (swarm.SwarmBackend); results
          come back through the service's logs, artifacts go to a configured shared location

Which one: `--backend`, else REPRUN_BACKEND, else `backend` in the config file, else local.

A backend that shares no filesystem with reprun hands results back with the wrapper at the end
of this module (`wrapper_script`, `OutputSplitter`, `parse_block`); a Kubernetes backend would
use it unchanged (docs/cluster.md).
The config file is `reprun.toml` in the current folder (REPRUN_CONFIG names another):

    backend = "swarm"
    [swarm]
    registry = "registry.example.org:5000"   # where images built here are pushed for the nodes
    artifacts = "/mnt/shared/reprun"          # on every node; each run writes <artifacts>/<run id>
    schedule_timeout = "10m"                  # how long a job may wait for a node
    constraints = ["node.labels.reprun == true"]
"""
from __future__ import annotations

import base64
import binascii
import os
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import UsageError
from .outputs import MAX_METRICS_BYTES, OutputsError, parse_metrics
from .records import Artifact

if TYPE_CHECKING:  # the job and outcome types live with the local engine
    import docker

    from .engine import ContainerJob, ContainerOutcome, LogSink
    from .swarm import SwarmSettings

CONFIG_FILE = "reprun.toml"
# What the hand-back wrapper needs in the image (coreutils, findutils, sed: any Debian base).
WRAPPER_TOOLS = ("base64", "sha256sum", "find", "sort", "xargs", "sed", "cut", "wc", "readlink",
                 "sleep", "head", "tr", "ls", "mkdir")
BACKEND_NAMES = ("local", "swarm")

# Progress of a job in the backend's own words ("running on node n1", "retrying once: …").
EventSink = Callable[[str], None]


@dataclass(frozen=True)
class ToCollect:
    """What a backend hands back besides the exit status, and the pin it checks where the data
    is read. A backend that shares the store's folders with the container may ignore it: reprun
    then reads the run's folders itself."""
    outputs_dir: str                 # in the container
    metrics: str                     # the metrics file, relative to outputs_dir
    artifacts: tuple[str, ...]       # globs, relative to outputs_dir
    manifest: str                    # where the probe writes the environment manifest
    dataset_source: str              # the dataset's path on the host: the source of its mount
    dataset_sha256: str              # its pin: file hash, or tree hash of a directory


@dataclass(frozen=True)
class Collected:
    """A job's results as read where it ran, handed back without a shared filesystem."""
    manifest: str | None = None                      # the probe's raw text
    metrics: bytes | None = None                     # the metrics file's bytes
    metrics_problem: str | None = None               # why they could not be read
    artifacts: dict[str, Artifact] = field(default_factory=dict)   # hashed where written
    artifacts_problem: str | None = None
    host: dict[str, Any] = field(default_factory=dict)             # the machine it ran on

    def results(self, metrics_file: str) -> tuple[dict[str, float], dict[str, Artifact]]:
        """Metrics and artifact hashes, or OutputsError with the sentence a local run gives."""
        name = PurePosixPath(metrics_file).name
        if self.metrics_problem:
            raise OutputsError(self.metrics_problem)
        if self.metrics is None:
            raise OutputsError(f"the job wrote no metrics file ({name} is missing from its "
                               "outputs)")
        metrics = parse_metrics(self.metrics, name)
        if self.artifacts_problem:
            raise OutputsError(self.artifacts_problem)
        return metrics, dict(self.artifacts)


class Executor(Protocol):
    """Runs one resolved job; the rest of reprun does not know where."""

    @property
    def client(self) -> "docker.DockerClient":
        """The engine where images are resolved (pulled, built, loaded from archives)."""

    def run(self, job: "ContainerJob", on_output: "LogSink",
            on_event: EventSink | None = None) -> "ContainerOutcome":
        """Run the job to its end: output streamed to on_output as it comes, the outcome back.
        Leaves nothing running behind, also when interrupted (KeyboardInterrupt re-raised)."""

    def interrupt(self) -> None:
        """Stop every job under way (from another thread); each run ends `interrupted`."""

    def host_facts(self) -> dict[str, Any]:
        """Facts of where jobs run, for the record; a backend may refine them per run
        (`Collected.host`). `host_cpus` is the capacity parallel runs may share."""

    def facts_scope(self) -> str | None:
        """The one machine every job runs on (its engine's ID, say), within which image-bound
        facts read by one run hold for the next: which BLAS kernels an image's libraries pick
        depends on the CPU. None where a job may land on any of several machines."""


@dataclass(frozen=True)
class Config:
    backend: str = "local"
    swarm: "SwarmSettings | None" = None     # None: every default
    source: Path | None = None


def config_path() -> Path:
    return Path(os.environ.get("REPRUN_CONFIG") or CONFIG_FILE)


def load_config(path: Path | None = None) -> Config:
    """The project's config file; an absent one means every default. Mistakes are exit 2."""
    path = path or config_path()
    if not path.is_file():
        if os.environ.get("REPRUN_CONFIG"):
            raise UsageError(f"REPRUN_CONFIG names {path}, which is not a file.")
        return Config()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}).") from None
    unknown = sorted(set(document) - {"backend", "swarm"})
    if unknown:
        raise UsageError(f"{path}: unknown setting {', '.join(unknown)}; the settings are "
                         "`backend` and the [swarm] table.")
    backend = document.get("backend", "local")
    _check_backend_name(backend, f"{path}: backend")
    swarm = document.get("swarm", {})
    if not isinstance(swarm, dict):
        raise UsageError(f"{path}: [swarm] must be a table of settings.")
    from .swarm import SwarmSettings      # checked whichever backend is chosen: typos show
    return Config(backend=backend, source=path.absolute(),
                  swarm=SwarmSettings.from_config(swarm, path.absolute()))


def _check_backend_name(name: Any, where: str) -> None:
    if name not in BACKEND_NAMES:
        raise UsageError(f"{where} is {name!r}; choose one of {', '.join(BACKEND_NAMES)}.")


def chosen_backend(option: str | None, config: Config) -> str:
    """--backend (or REPRUN_BACKEND, which the command line reads into it), else the file's."""
    name = option or config.backend
    # The command line reads REPRUN_BACKEND into --backend: name what the user actually set.
    from_environment = option is not None and os.environ.get("REPRUN_BACKEND") == option
    _check_backend_name(name, "REPRUN_BACKEND" if from_environment else "--backend")
    return name


def open_backend(option: str | None = None, config: Config | None = None) -> Executor:
    """The executor a command uses; nothing is contacted until it is first used."""
    config = config if config is not None else load_config()
    name = chosen_backend(option, config)
    if name == "swarm":
        from .swarm import SwarmBackend
        return SwarmBackend(config.swarm)
    from .engine import LocalEngine
    return LocalEngine()


# --------------------------------------------------------------------------- handing back
#
# A backend that shares no filesystem with reprun runs this wrapper around the job where it
# runs: it checks what only that machine can (network interfaces, no-new-privileges, the
# dataset's hash where the data is read), runs the job exactly as a local run does, and prints
# a framed block after the job's output: exit status, OOM kills, the manifest and the metrics
# file (base64), and the sha256 of every artifact, taken where it was written. The backend
# reads its output stream through an OutputSplitter and parse_block, and hands back Collected.


def _q(text: str) -> str:
    return shlex.quote(text)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _seconds(value: float) -> str:
    # Whole seconds where possible: not every `sleep` takes a fraction.
    return str(int(value)) if value == int(value) else f"{value:.3f}"


@dataclass(frozen=True)
class Plan:
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


def wrapper_script(plan: Plan) -> str:
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
class Block:
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


def parse_block(text: bytes, marker: str) -> Block:
    block = Block()
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


def metrics_problem(block: Block, name: str) -> str | None:
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
