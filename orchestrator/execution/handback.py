"""Handing a job's results back from a machine that shares no filesystem with reprun.

A backend of that kind (execution/swarm.py; a Kubernetes backend would use it unchanged, see
docs/cluster.md) runs this wrapper (templates/handback.sh) around the job where it runs: it
checks what only that machine can (network interfaces, no-new-privileges, the dataset's hash where the data is read),
runs the job exactly as a local run does, and prints a framed block after the job's output:
exit status, OOM kills, the metrics file (base64), and the sha256 of every artifact, taken
where it was written. (The environment manifest comes as in a local run: at the start of the
job's output, printed by the run's entrypoint before the job starts.) The backend reads its output stream through an
OutputSplitter and parse_block, and hands back RemoteResults.
"""
from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from orchestrator.execution.entrypoint import code
from orchestrator.execution.job import LogSink
from orchestrator.outputs import MAX_METRICS_BYTES
from orchestrator.records import Artifact


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
    no_network: bool
    no_new_privileges: bool             # the wrapper must apply it (the engine cannot)
    timeout_s: float


ARTIFACT_HASHER = ".artifacts.sh"     # in the plan's workdir


def wrapper_script(plan: WrapperPlan) -> str:
    """The task container's entrypoint (`sh -c`), templates/handback.sh with the plan's values;
    the job's own entrypoint and command follow as its arguments."""
    shipped = dict(plan.shipped)
    if plan.artifacts:
        shipped[str(PurePosixPath(plan.workdir) / ARTIFACT_HASHER)] = \
            code("handback-artifacts.sh").encode()
    metrics = (str(PurePosixPath(plan.outputs_dir) / plan.metrics)
               if plan.outputs_dir and plan.metrics else "")
    settings = {
        "R": plan.marker,
        "reprun_workdir": plan.workdir,
        "reprun_ship": "\n".join(f"{_b64(path.encode())} {_b64(content)}"
                                  for path, content in sorted(shipped.items())),
        "reprun_patterns": "\n".join(plan.artifacts),
        "reprun_no_network": "1" if plan.no_network else "",
        "reprun_want_nnp": "1" if plan.no_new_privileges else "",
        "reprun_dataset_target": plan.dataset_target or "",
        "reprun_dataset_sha256": plan.dataset_sha256 or "",
        "reprun_timeout": _seconds(plan.timeout_s),
        "reprun_outputs": plan.outputs_dir or "",
        "reprun_metrics": metrics,
        "reprun_max_metrics": str(MAX_METRICS_BYTES),
    }
    lines = [f"{name}={_q(value)}" for name, value in settings.items()]
    return code("handback.sh").replace(": @SETTINGS@\n", "\n".join(lines) + "\n")


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
    metrics = []
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
