"""The execution interface: what to run, what came of it, and who runs it. No engine here.

Everything above execution hands over a `ContainerJob` (fully resolved and hermetic) and gets
back a `ContainerOutcome`; it does not know which `Executor` ran it (the local engine in
execution/local.py, a swarm in execution/swarm.py, a scripted one in the unit tests).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable, Protocol

from orchestrator.outputs import OutputsError, parse_metrics
from orchestrator.records import Artifact

LABEL = "io.reprun"            # every container reprun starts carries it, so leftovers can be found
LABEL_RUN = "io.reprun.run-id"
LABEL_SPEC = "io.reprun.spec"
LABEL_OWNER = "io.reprun.owner"  # host:pid of the reprun process; `gc` spares the living ones


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class ContainerJob:
    name: str
    image_id: str
    entrypoint: tuple[str, ...]
    command: tuple[str, ...]
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    hostname: str
    user: str
    network: str                      # "none" or "host"
    read_only_root: bool
    tmpfs: dict[str, str]
    cap_drop: tuple[str, ...]
    security_opt: tuple[str, ...]
    nano_cpus: int
    memory_bytes: int
    pids: int
    timeout_s: float
    labels: dict[str, str] = field(default_factory=dict)
    # The CPUs the job may run on ("0-1,3"); None: the executor pins a set of
    # ceil(nano_cpus) CPUs where it can (execution/cpus.py), distinct for parallel jobs.
    cpuset: str | None = None
    # What to hand back and the dataset pin, for a backend that reads them where the job ran.
    collect: ResultsToCollect | None = None
    shm_bytes: int = 64 << 20         # the size of /dev/shm
    workdir: str | None = None        # None: the image's WORKDIR
    gpu_count: int = 0                # -1: every GPU of the host
    gpu_device_ids: tuple[str, ...] = ()

    @property
    def wants_gpus(self) -> bool:
        return bool(self.gpu_count or self.gpu_device_ids)


@dataclass(frozen=True)
class ContainerOutcome:
    exit_code: int | None
    reason: str           # ok | exit | timeout | oom | interrupted | engine | pin
    duration_s: float
    message: str | None = None
    # The job's results as read where it ran; None: they are in the run's folders (local).
    collected: RemoteResults | None = None


# Called as sink(chunk, stream), stream being "stdout" or "stderr": the two arrive interleaved
# in any order, so anything that reads across chunks (secret redaction) keeps one state per stream.
LogSink = Callable[[bytes, str], None]


# Progress of a job in the backend's own words ("running on node n1", "retrying once: …").
EventSink = Callable[[str], None]


@dataclass(frozen=True)
class ResultsToCollect:
    """What a backend hands back besides the exit status, and the pin it checks where the data
    is read. A backend that shares the store's folders with the container may ignore it: reprun
    then reads the run's folders itself."""
    outputs_dir: str                 # in the container
    metrics: str                     # the metrics file, relative to outputs_dir
    artifacts: tuple[str, ...]       # globs, relative to outputs_dir
    dataset_source: str | None       # the dataset's path on the host: the source of its mount
    dataset_sha256: str | None       # its pin: file hash, or tree hash of a directory


@dataclass(frozen=True)
class RemoteResults:
    """A job's results as read where it ran, handed back without a shared filesystem."""
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
    def client(self) -> Any:
        """The engine where images are resolved (pulled, built, loaded from archives)."""

    def run(self, job: ContainerJob, on_output: LogSink,
            on_event: EventSink | None = None) -> ContainerOutcome:
        """Run the job to its end: output streamed to on_output as it comes, the outcome back.
        Leaves nothing running behind, also when interrupted (KeyboardInterrupt re-raised)."""

    def interrupt(self) -> None:
        """Stop every job under way (from another thread); each run ends `interrupted`."""

    def host_facts(self) -> dict[str, Any]:
        """Facts of where jobs run, for the record; a backend may refine them per run
        (`RemoteResults.host`). `host_cpus` is the capacity parallel runs may share."""

    def facts_scope(self) -> str | None:
        """The one machine every job runs on (its engine's ID, say), within which image-bound
        facts read by one run hold for the next: which BLAS kernels an image's libraries pick
        depends on the CPU. None where a job may land on any of several machines."""


