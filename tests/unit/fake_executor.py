"""A pure-Python executor with scripted outcomes, for unit tests of the orchestration logic.

It implements the `Executor` protocol (orchestrator/execution/job.py) the way the local engine
does from the outside: the job's outputs appear in the host folder mounted at the spec's
outputs dir, its output is streamed, an outcome comes back. What a job "does" is a script: a
function of the `ContainerJob` (so a test can make the result depend on a variable, the CPU
count or the seed, as a real job would). Nothing here talks to an engine; claims about
containers stay with the real-engine tests.
"""
from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import docker.errors

from orchestrator.execution.hermetic import META_MOUNT
from orchestrator.execution.job import ContainerJob, ContainerOutcome

IMAGE_ID = "sha256:" + "1" * 64
REPO_DIGEST = "registry.test/reprun/fake@sha256:" + "2" * 64


@dataclass(frozen=True)
class Job:
    """What one scripted job does: the metrics and files it writes, what it prints, how it ends."""
    metrics: dict | None = field(default_factory=lambda: {"score": 1.0})
    files: dict[str, bytes] = field(default_factory=dict)       # written into the outputs dir
    output: bytes = b""
    exit_code: int | None = 0
    reason: str = "ok"
    message: str | None = None
    raises: BaseException | None = None      # the executor fails instead of returning


Script = Callable[[ContainerJob], Job]


def seeded(job: ContainerJob) -> Job:
    """A deterministic job: its metric and model are a function of the seed it is given."""
    seed = int(job.command[-1]) if job.command and job.command[-1].isdigit() else 0
    return Job(metrics={"score": seed / 10}, files={"model.bin": bytes([seed % 256]) * 16})


class FakeImages:
    def __init__(self, images: dict[str, "FakeImage"]):
        self._images = images

    def get(self, ref: str) -> "FakeImage":
        try:
            return self._images[ref]
        except KeyError:
            raise docker.errors.ImageNotFound(f"no such image: {ref}") from None

    def remove(self, image_id: str, **_) -> None:
        self._images.pop(image_id, None)


@dataclass
class FakeImage:
    id: str
    attrs: dict


class FakeClient:
    """The few calls image resolution makes, over images this test declares present."""

    def __init__(self, image_id: str = IMAGE_ID, repo_digest: str = REPO_DIGEST):
        image = FakeImage(image_id, {"RepoDigests": [repo_digest]})
        self.images = FakeImages({image_id: image, repo_digest: image})


class FakeExecutor:
    """Runs each job by its script; records every job it was given, in order."""

    def __init__(self, script: Script | list[Job] = seeded, *, host_cpus: int = 4,
                 client: FakeClient | None = None):
        self._script = script
        self._queue = list(script) if isinstance(script, list) else None
        self._lock = threading.Lock()
        self.jobs: list[ContainerJob] = []
        self.interrupted = 0
        self.client = client or FakeClient()
        self._host_cpus = host_cpus

    def run(self, job: ContainerJob, on_output, on_event=None) -> ContainerOutcome:
        with self._lock:
            self.jobs.append(job)
            scripted = self._queue.pop(0) if self._queue is not None else None
        scripted = scripted or self._script(job)
        if scripted.raises is not None:
            raise scripted.raises
        # As the entrypoint does: the probe's manifest (none here) leads stdout, then its end
        # line, then the job's own output.
        on_output(f"{_marker(job)} end\n".encode(), "stdout")
        if scripted.output:
            on_output(scripted.output, "stdout")
        outputs = _outputs_folder(job)
        if scripted.metrics is not None:
            (outputs / "metrics.json").write_text(json.dumps(scripted.metrics))
        for name, content in scripted.files.items():
            (outputs / name).write_bytes(content)
        return ContainerOutcome(scripted.exit_code, scripted.reason, 0.01, scripted.message)

    def interrupt(self) -> None:
        self.interrupted += 1

    def host_facts(self) -> dict:
        return {"host_cpus": self._host_cpus, "engine": "fake"}

    def facts_scope(self) -> str | None:
        return None


def _marker(job: ContainerJob) -> str:
    """The run's random marker, read from the entrypoint reprun wrote for this job."""
    meta = next(Path(m.source) for m in job.mounts if m.target == META_MOUNT)
    found = re.search(r"@@reprun-[0-9a-f]+", (meta / "wrap.sh").read_text())
    assert found, "the entrypoint names no marker"
    return found[0]


def _outputs_folder(job: ContainerJob) -> Path:
    """The host folder behind the job's writable outputs mount (not reprun's own /reprun)."""
    for mount in job.mounts:
        if not mount.read_only and mount.target != META_MOUNT:
            return Path(mount.source)
    raise AssertionError(f"job {job.name} has no writable outputs mount")
