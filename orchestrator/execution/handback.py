"""Handing a job's results back from a machine that shares no filesystem with reprun.

A backend of that kind (execution/swarm.py; a Kubernetes backend would use it unchanged, see
docs/cluster.md) runs this wrapper (templates/handback.sh) around the job where it runs: it
checks what only that machine can (network interfaces, no-new-privileges, the dataset's hash
where the data is read), runs the job exactly as a local run does, and prints a framed block
after the job's output: exit status, OOM kills, the metrics file (base64), and the sha256 of
every artifact, taken where it was written. (The environment manifest comes as in a local run:
at the start of the job's output, printed by the run's entrypoint before the job starts.) The
backend reads its output stream through an OutputSplitter and parse_block, and hands back
RemoteResults.
"""
from __future__ import annotations

import base64
import binascii
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from orchestrator.execution.beneath import plain_relative
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


def wrapper_script(plan: WrapperPlan) -> str:
    """The task container's entrypoint (`sh -c`), templates/handback.sh with the plan's values;
    the job's own entrypoint and command follow as its arguments."""
    shipped = dict(plan.shipped)
    metrics = (str(PurePosixPath(plan.outputs_dir) / plan.metrics)
               if plan.outputs_dir and plan.metrics else "")
    settings = {
        "R": plan.marker,
        "reprun_workdir": plan.workdir,
        "reprun_ship": "\n".join(f"{_b64(path.encode())} {_b64(content)}"
                                  for path, content in sorted(shipped.items())),
        "reprun_patterns": "\n".join(plan.artifacts),
        # Held by the wrapper, never a file: the job could rewrite a file before it ends.
        "reprun_hasher": _b64(code("handback-artifacts.sh").encode()) if plan.artifacts else "",
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
            if not plain_relative(rel):
                block.problems.append(f"the artifact name {rel!r} is not a plain path inside "
                                      "the outputs folder; refused")
            elif words[1].isdigit():
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


JOB_LINE = b"|"        # the wrapper's encoder puts it before every line of the job's stdout
# A line with no newline for this long is passed on in parts: memory stays bounded. No line of
# the block is that long (base64 comes 76 characters a line).
MAX_HELD_BYTES = 64 << 10
# The most a block can hold: the metrics file in base64, and the artifacts' lines.
MAX_BLOCK_BYTES = 2 * MAX_METRICS_BYTES + (16 << 20)


class OutputSplitter:
    """Decodes the task's stdout: passes the job's lines on as they come, keeps the block back.

    The wrapper's encoder prints every line of the job's stdout behind a "|", so a line without
    one is the wrapper's: the block, which starts with an empty line and `MARKER begin`. (The
    empty line ends a last job line that had no newline; when that newline was the job's, the
    empty line follows it.) A raw line that is not part of the last block did not come from the
    job's stdout nor from the wrapper's last words: it is passed on as it is, as any output
    before the last block's start. The block is accepted only if the task's exit status agrees
    with it (SwarmBackend); a job cannot print after it, since its every process is gone first.
    """

    def __init__(self, marker: str, sink: LogSink):
        self.start = marker.encode() + b" begin"
        self.end = marker.encode() + b" end"
        self.sink = sink
        self.partial = b""              # the line being received
        self.continued = False          # part of a long job line was passed on already
        self.newline_held = False       # a job line ended: its newline, unless the block follows
        self.blank_held = False         # an empty raw line: the block's start, if it follows
        self.block: list[bytes] | None = None
        self.block_bytes = 0

    @property
    def complete(self) -> bool:
        """The output so far ends with a whole block."""
        return bool(self.block) and self.block[-1] == self.end and not self.partial

    def feed(self, data: bytes) -> None:
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            self._line(line, ended=True)
        if len(self.partial) > MAX_HELD_BYTES:
            if self.block is not None:
                self._abandon_block()
            self._line(self.partial, ended=False)
            self.partial = b""

    def finish(self) -> bytes | None:
        """The block's text (None: the wrapper never printed one); the rest is emitted."""
        if self.partial:
            self._line(self.partial, ended=False)
            self.partial = b""
        if self.block is None:
            self._release()
            return None
        return b"".join(line + b"\n" for line in self.block)

    def _line(self, line: bytes, ended: bool) -> None:
        if self.continued:                      # the rest of a long job line
            self._emit(line)
            self.continued = not ended
            self.newline_held = ended
            return
        if self.block is not None:
            if line.startswith(JOB_LINE) or line == self.start:
                self._abandon_block()           # not the last block: it was not the wrapper's
            elif self.block_bytes + len(line) > MAX_BLOCK_BYTES:
                self._abandon_block()
            else:
                self.block.append(line)
                self.block_bytes += len(line) + 1
                return
        if line.startswith(JOB_LINE):
            self._release()
            self._emit(line[len(JOB_LINE):])
            self.continued = not ended
            self.newline_held = ended
        elif line == b"" and ended and not self.blank_held:
            self.blank_held = True
        elif line == self.start and ended:
            if self.blank_held and self.newline_held:
                self._emit(b"\n")               # the job's own last newline
            self.newline_held = self.blank_held = False
            self.block, self.block_bytes = [], 0
        else:
            self._release()
            self._emit(line + (b"\n" if ended else b""))
            self.continued = not ended          # the rest of a long raw line passes too

    def _release(self) -> None:
        """What was held back turned out not to come before a block: pass it on."""
        held = (b"\n" if self.newline_held else b"") + (b"\n" if self.blank_held else b"")
        self.newline_held = self.blank_held = False
        self._emit(held)

    def _abandon_block(self) -> None:
        lines, self.block = self.block, None
        self._emit(b"\n" + self.start + b"\n" + b"".join(line + b"\n" for line in lines))

    def _emit(self, data: bytes) -> None:
        if data:
            self.sink(data, "stdout")
