"""Model files that only their own image can read, compared there: the host never loads them.

The comparator script and figures.py are mounted read-only into the image of run a, with the
two files beside them; the container has the hermetic settings whatever the spec relaxed. Its
answer is one JSON line on stdout, read as the untrusted text it is.
"""
from __future__ import annotations

import json
import math
import shutil
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Callable

from orchestrator.compare.artifacts.findings import (
    PART_MISSING_A, PART_MISSING_B, CannotCompare, ContentFindings, PartFigures,
    part_from_figures, parts_detail, verdict_of_parts)
from orchestrator.compare.artifacts.policy import ArtifactPolicy
from orchestrator.execution.hermetic import helper_job
from orchestrator.execution.job import LABEL_RUN, Executor, Mount
from orchestrator.records import RunRecord

HERE = Path(__file__).resolve().parent
SCRIPT = "in_image_comparator.py"
TOOLS = "/reprun-compare"
ANSWER = "REPRUN-ANSWER "
MAX_ANSWER_BYTES = 8 << 20
TIMEOUT_S = 300.0
MIN_MEMORY = 512 << 20
PARTS_KEPT = 10_000


class InImageComparator:
    """Runs the comparator script through an Executor, opened only when a model file needs it
    (most comparisons have none, and `diff` should not wait for an engine it does not use)."""

    def __init__(self, open_executor: Callable[[], Executor]):
        self.open_executor = open_executor
        self._executor: Executor | None = None

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            self._executor = self.open_executor()
        return self._executor

    def compare(self, kind: str, name: str, path_a: Path, path_b: Path, a: RunRecord,
                b: RunRecord, policy: ArtifactPolicy) -> ContentFindings:
        image = a.inputs.image.id
        with tempfile.TemporaryDirectory(prefix="reprun-compare-") as tools:
            for module in (SCRIPT, "figures.py"):
                shutil.copyfile(HERE / module, Path(tools, module))
            Path(tools).chmod(0o755)
            base = PurePosixPath(name).name
            job = helper_job(
                name=f"reprun-compare-{uuid.uuid4().hex[:12]}", image_id=image,
                entrypoint=("python3",),
                command=(f"{TOOLS}/{SCRIPT}", kind, f"/compare/a/{base}", f"/compare/b/{base}",
                         json.dumps({"abs": policy.abs, "rel": policy.rel})),
                mounts=(Mount(tools, TOOLS, read_only=True),
                        Mount(str(path_a), f"/compare/a/{base}", read_only=True),
                        Mount(str(path_b), f"/compare/b/{base}", read_only=True)),
                user=str(a.inputs.container.get("user") or "65534:65534"),
                memory_bytes=max(MIN_MEMORY, int(a.inputs.resources.get("memory_bytes") or 0)),
                timeout_s=TIMEOUT_S, labels={LABEL_RUN: a.id})
            heard = _Heard()
            outcome = self.executor.run(job, heard)
        if outcome.reason != "ok" and not heard.answer_line():
            raise CannotCompare(f"the comparator in image {image[:19]} did not finish "
                                f"({outcome.message or outcome.reason})")
        reply = _parse(heard.answer_line(), image)
        if "unavailable" in reply:
            raise CannotCompare(f"the image {image[:19]} has no {_text(reply['unavailable'])}, "
                                f"so the {kind} file could not be loaded where it may run")
        if "failed" in reply:
            raise CannotCompare(f"the {kind} file could not be loaded in its image: "
                                f"{_text(reply['failed'])}")
        notes = [] if b.inputs.image.id == image else [
            f"compared in run a's image; run b ran in {b.inputs.image.id[:19]}"]
        parts = _parts(reply.get("parts"), policy)
        detail = parts_detail(parts, "parameter") + ("; " + notes[0] if notes else "")
        return ContentFindings(kind, verdict_of_parts(parts), detail + " (compared inside "
                               "the job's image)", tuple(parts))


class _Heard:
    """The comparator's output, bounded: a job's file can make its loader print anything."""

    def __init__(self):
        self.chunks: list[bytes] = []
        self.size = 0

    def __call__(self, chunk: bytes, stream: str = "stdout") -> None:
        if stream == "stdout" and self.size < MAX_ANSWER_BYTES:
            self.chunks.append(chunk[:MAX_ANSWER_BYTES - self.size])
            self.size += len(self.chunks[-1])

    def answer_line(self) -> str | None:
        text = b"".join(self.chunks).decode("utf-8", "replace")
        lines = [line for line in text.splitlines() if line.startswith(ANSWER)]
        return lines[-1][len(ANSWER):] if lines else None


def _parse(line: str | None, image: str) -> dict:
    if line is None:
        raise CannotCompare(f"the comparator in image {image[:19]} gave no answer (the image "
                            "may have no python3)")
    try:
        reply = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        reply = None
    if not isinstance(reply, dict):
        raise CannotCompare("the comparator's answer could not be read")
    return reply


def _text(value: object) -> str:
    return str(value)[:400]


def _parts(raw: object, policy: ArtifactPolicy) -> list[PartFigures]:
    if not isinstance(raw, dict) or len(raw) > PARTS_KEPT:
        raise CannotCompare("the comparator's answer holds no readable parameters")
    tolerant = policy.abs is not None or policy.rel is not None
    parts = []
    for name, found in raw.items():
        if not isinstance(found, dict):
            raise CannotCompare("the comparator's answer could not be read")
        if "missing" in found:
            parts.append(PartFigures(str(name)[:200], PART_MISSING_A if found["missing"] == "a"
                                     else PART_MISSING_B))
            continue
        try:
            _check_figures(found)
            parts.append(part_from_figures(str(name)[:200], found, tolerant=tolerant))
        except (KeyError, TypeError, ValueError):
            raise CannotCompare(f"the comparator's figures for {str(name)[:60]!r} could not "
                                "be read") from None
    if not parts:
        raise CannotCompare("the comparator found no numeric parameters in either file")
    return parts


def _check_figures(found: dict) -> None:
    for key in ("shape_a", "shape_b"):
        if not (isinstance(found[key], list) and all(type(n) is int for n in found[key])):
            raise ValueError(key)
    for key in ("elements", "differing", "beyond"):
        if key in found and not (type(found[key]) is int and found[key] >= 0):
            raise ValueError(key)
    for key in ("max_abs", "max_rel"):
        if key in found and not (isinstance(found[key], (int, float)) and not
                                 math.isnan(found[key]) and found[key] >= 0):
            raise ValueError(key)
