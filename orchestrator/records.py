"""The run record: what one execution of a spec was given, where it ran, and what it produced.

A record is a fact. Once a run is finished its record is frozen, written once into the store,
and read back years later by auditors; everything in it is JSON-friendly and self-describing.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import UsageError

RECORD_SCHEMA = "reprun.run/1"


class RunStatus(enum.StrEnum):
    """The status of a run. A str enum: records hold the same JSON strings as ever."""
    RUNNING = "running"          # only while reprun is still working on it
    SUCCEEDED = "succeeded"
    FAILED = "failed"            # the job failed: non-zero exit, timeout, OOM, bad outputs
    INTERRUPTED = "interrupted"  # reprun was stopped (Ctrl-C, SIGTERM, crash) before the end
    ERROR = "error"              # infrastructure failed mid-run (engine went away)


class OutcomeReason(enum.StrEnum):
    """How a job ended, as its backend (or the reading of its outputs) tells it."""
    OK = "ok"
    EXIT = "exit"                # non-zero exit status
    TIMEOUT = "timeout"
    OOM = "oom"
    INTERRUPTED = "interrupted"
    ENGINE = "engine"            # the engine failed or went away
    PIN = "pin"                  # a pinned input did not match where the job ran
    OUTPUTS = "outputs"          # the job ended well, but its metrics or artifacts are unusable


RUNNING = RunStatus.RUNNING
SUCCEEDED = RunStatus.SUCCEEDED
FAILED = RunStatus.FAILED
INTERRUPTED = RunStatus.INTERRUPTED
ERROR = RunStatus.ERROR
FINAL_STATUSES = (SUCCEEDED, FAILED, INTERRUPTED, ERROR)


class NewerRecord(UsageError, ValueError):
    """A record with a field or value this reprun does not know: a newer reprun wrote it. A
    ValueError too, so that a reader which skips unreadable records skips it."""


@dataclass(frozen=True)
class ImageFacts:
    id: str                          # the image ID (sha256:...) the container ran
    ref: str | None = None           # the pinned reference from the spec, if pulled
    repo_digest: str | None = None   # registry/name@sha256:... when the image came from one
    build_context: str | None = None


@dataclass(frozen=True)
class DatasetFacts:
    path: str               # as resolved on the host
    sha256: str             # file hash, or tree hash for a directory
    kind: str               # "file" or "tree"
    files: int
    bytes: int
    mount: str


@dataclass(frozen=True)
class Inputs:
    spec_name: str
    spec_path: str
    spec_sha256: str
    seed: int
    command: list[str]               # with placeholders substituted
    params: dict[str, Any]
    env: dict[str, str]              # secrets already redacted
    resources: dict[str, Any]        # cpus, memory_bytes, timeout_s, pids
    container: dict[str, Any]        # the hermetic settings actually applied
    image: ImageFacts
    dataset: DatasetFacts | None     # None: the spec had no dataset
    outputs: dict[str, Any] = field(default_factory=dict)    # dir, metrics file, artifact globs
    hermetic: dict[str, Any] = field(default_factory=dict)   # the spec's hermetic settings


@dataclass(frozen=True)
class Artifact:
    sha256: str
    size: int


@dataclass(frozen=True)
class Outputs:
    exit_code: int | None
    reason: str                      # ok | exit | timeout | oom | interrupted | outputs | engine
    duration_s: float
    metrics: dict[str, float]
    artifacts: dict[str, Artifact]
    log_sha256: str | None
    log_bytes: int
    log_truncated: bool
    message: str | None = None       # a one-paragraph explanation when something went wrong
    # Every other file the run left in its folder (manifest.txt, files in out/ that are no
    # artifact), hashed by the store when it seals the record, so `runs verify` covers them too.
    kept_files: dict[str, Artifact] = field(default_factory=dict)
    # The per-step stream (outputs.steps): series name -> [[step, value], ...], bounded.
    steps: dict[str, list[list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvironmentManifest:
    """Facts read inside the training container, plus the host's. Missing facts say why."""

    os: dict[str, str] = field(default_factory=dict)
    os_packages: dict[str, str] = field(default_factory=dict)
    package_manager: str | None = None
    python: dict[str, Any] = field(default_factory=dict)        # version, executable
    python_distributions: dict[str, str] = field(default_factory=dict)
    blas: list[dict[str, Any]] = field(default_factory=list)    # threadpoolctl's info()
    # Per importable ML framework (torch, tensorflow, jax, ...): version, determinism settings.
    frameworks: dict[str, dict[str, Any]] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)           # model, flags, count, cpuset
    gpu: dict[str, Any] = field(default_factory=dict)           # nvidia-smi: devices, driver
    limits: dict[str, Any] = field(default_factory=dict)        # cpus, memory_bytes, pids
    kernel: str | None = None
    locale: dict[str, str] = field(default_factory=dict)        # LANG, LC_ALL, TZ, umask
    user: dict[str, Any] = field(default_factory=dict)          # uid, gid, name
    hostname: str | None = None
    env: dict[str, str] = field(default_factory=dict)           # secrets redacted
    host: dict[str, Any] = field(default_factory=dict)          # engine, storage driver, reprun
    missing: dict[str, str] = field(default_factory=dict)       # fact -> why it is missing


@dataclass(frozen=True)
class RunRecord:
    id: str
    status: str
    started_at: str                  # ISO 8601, UTC
    finished_at: str | None
    inputs: Inputs
    environment: EnvironmentManifest
    outputs: Outputs | None
    compare: dict[str, Any]          # the spec's tolerances, so any two records can be diffed
    reprun_version: str
    schema: str = RECORD_SCHEMA
    # The hash of the record committed just before this one (None for the first): the store's
    # chain. The store fills it in when it commits the record, under its write lock.
    previous: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=2, allow_nan=True)

    def to_standard_json(self) -> str:
        """JSON any reader takes (`runs show --json`): a non-finite metric is the string "NaN",
        "Infinity" or "-Infinity", as in the JSON report, not a bare token outside the standard.
        The store writes records this way too (records of older reprun kept `to_json`'s text,
        which their hash chain was sealed over)."""
        return json.dumps(_finite(self.to_dict()), sort_keys=True, indent=2, allow_nan=False)

    def content_sha256(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """The record `to_dict` gave; one from a newer reprun is refused naming the field."""
        unknown = unknown_record_field(data)
        if unknown:
            raise NewerRecord(f"record written by a newer reprun (field {unknown}); upgrade "
                              "reprun to read it.")
        if isinstance(data, dict) and data.get("status") not in {s.value for s in RunStatus}:
            raise NewerRecord(f"record written by a newer reprun (status {data.get('status')!r}); "
                              "upgrade reprun to read it.")
        inputs = dict(data["inputs"])
        inputs["image"] = ImageFacts(**inputs["image"])
        # None: the job made its own data (the spec had no dataset).
        inputs["dataset"] = (DatasetFacts(**inputs["dataset"])
                             if inputs.get("dataset") is not None else None)
        outputs = data.get("outputs")
        if outputs is not None:
            outputs = dict(outputs)
            outputs["artifacts"] = {k: Artifact(**v) for k, v in outputs["artifacts"].items()}
            outputs["kept_files"] = {k: Artifact(**v)
                                     for k, v in (outputs.get("kept_files") or {}).items()}
            outputs = Outputs(**outputs)
        return cls(
            id=data["id"], status=RunStatus(data["status"]), started_at=data["started_at"],
            finished_at=data.get("finished_at"), inputs=Inputs(**inputs),
            environment=EnvironmentManifest(**data.get("environment", {})),
            outputs=outputs, compare=data.get("compare", {}),
            reprun_version=data.get("reprun_version", "?"),
            schema=data.get("schema", RECORD_SCHEMA), previous=data.get("previous"),
        )

    @classmethod
    def from_json(cls, text: str) -> "RunRecord":
        return cls.from_dict(json.loads(text))


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def unknown_record_field(data) -> str | None:
    """The dotted name of the first field this reprun does not know, if any."""
    shapes = {"": RunRecord, "inputs": Inputs, "inputs.image": ImageFacts,
              "inputs.dataset": DatasetFacts, "outputs": Outputs,
              "environment": EnvironmentManifest}
    for where, kind in shapes.items():
        value = data
        for part in filter(None, where.split(".")):
            value = value.get(part) if isinstance(value, dict) else None
        if not isinstance(value, dict):
            continue
        known = {f.name for f in dataclasses.fields(kind)}
        for key in sorted(value, key=str):
            if key not in known:
                return f"{where}.{key}" if where else str(key)
    artifacts = (data.get("outputs") or {}).get("artifacts") if isinstance(data, dict) else None
    if isinstance(artifacts, dict):
        known = {f.name for f in dataclasses.fields(Artifact)}
        for name, artifact in artifacts.items():
            extra = sorted(set(artifact) - known) if isinstance(artifact, dict) else []
            if extra:
                return f"outputs.artifacts.{name}.{extra[0]}"
    return None


@dataclass(frozen=True)
class RunSummary:
    """One run in a line: a row of the store's runs list, and how a comparison names its runs."""
    id: str
    spec: str
    status: str
    started_at: str
    finished_at: str | None = None
    duration_s: float | None = None
    image_id: str | None = None
    note: str | None = None
    reason: str | None = None        # outputs.reason, e.g. "timeout", when it did not succeed

    @classmethod
    def of(cls, record: RunRecord) -> "RunSummary":
        outputs = record.outputs
        return cls(id=record.id, spec=record.inputs.spec_name, status=record.status,
                   started_at=record.started_at, finished_at=record.finished_at,
                   duration_s=outputs.duration_s if outputs else None,
                   image_id=record.inputs.image.id, reason=outputs.reason if outputs else None)
