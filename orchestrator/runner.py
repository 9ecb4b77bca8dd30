"""One run of a spec, start to finish: pinned inputs checked, the job run hermetically, the
outputs read, and a complete record written to the store — also when the job fails or reprun
is interrupted.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import __version__
from .dataset import DatasetDigest, HashCache, verify_dataset
from .engine import ContainerJob, ContainerOutcome, Executor, LocalEngine
from .errors import JobFailed
from .events import RunObserver
from .hermetic import RunPaths, applied_settings, container_job
from .images import ResolvedImage, resolve_image
from .outputs import OutputsError, hash_artifacts, read_metrics, sha256_file
from .probe import new_marker, parse_manifest, pyprobe_source, redact_env, wrapper_script
from .records import (ERROR, FAILED, INTERRUPTED, SUCCEEDED, DatasetFacts, ImageFacts, Inputs,
                      Outputs, RunRecord)
from .store import Store, utc_now

DEFAULT_LOG_CAP = 64 * 1024 * 1024
JobTransform = Callable[[ContainerJob], ContainerJob]


@dataclass(frozen=True)
class Prepared:
    """The checked, resolved inputs of a spec; shared by every run of one `verify`."""
    spec: object
    dataset: DatasetDigest
    image: ResolvedImage
    host: dict


def prepare(spec, *, store: Store, engine: LocalEngine, observer: RunObserver,
            use_cache: bool = True, label: str = "prepare",
            dataset_path: Path | None = None) -> Prepared:
    path = dataset_path or spec.dataset.path
    observer.stage(label, f"verifying dataset {path}")
    cache = HashCache(store.db_path) if use_cache else None
    digest = verify_dataset(
        path, spec.dataset.sha256, cache=cache,
        progress=lambda done, total: observer.progress(label, "hash", done, total))
    observer.stage(label, "resolving image " + describe_image(spec.image))
    image = resolve_image(engine.client, spec.image, spec_name=spec.name,
                          progress=lambda phase, done, total, text:
                          observer.progress(label, phase, done, total, text))
    host = {**engine.host_facts(), "reprun_version": __version__,
            "image_id": image.id, "image_repo_digest": image.repo_digest}
    return Prepared(spec=spec, dataset=digest, image=image, host=host)


def describe_image(image_spec) -> str:
    if image_spec.ref:
        return image_spec.ref
    if image_spec.build is not None:
        return f"built from {image_spec.build.context}"
    return image_spec.digest


class LogFile:
    """The job's output, kept in a file up to a cap; the total is still counted."""

    def __init__(self, path: Path, cap: int):
        self.path, self.cap = path, cap
        self.handle = open(path, "wb")
        self.written = 0
        self.seen = 0

    def write(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        room = self.cap - self.written
        if room > 0:
            part = chunk[:room]
            self.handle.write(part)
            self.written += len(part)

    def close(self) -> None:
        self.handle.close()

    @property
    def truncated(self) -> bool:
        return self.seen > self.written

    def tail(self, lines: int = 15) -> list[str]:
        with open(self.path, "rb") as handle:
            handle.seek(max(0, self.written - 8192))
            text = handle.read().decode("utf-8", errors="replace")
        return text.splitlines()[-lines:]


def _owned_by_job(path: Path, user: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    uid, _, gid = user.partition(":")
    if os.geteuid() == 0 and uid.isdigit():
        os.chown(path, int(uid), int(gid or uid))
    else:
        path.chmod(0o777)


def execute(prepared: Prepared, *, store: Store, engine: Executor, observer: RunObserver,
            label: str = "run", seed: int | None = None,
            transform: JobTransform | None = None) -> RunRecord:
    """Run the job once and record it. Interrupts still write an `interrupted` record."""
    spec = prepared.spec
    seed = spec.seed if seed is None else seed
    run_id, run_dir, started_at = store.new_run(spec.name)
    paths = RunPaths(run_dir)
    job = container_job(spec, run_id=run_id, image_id=prepared.image.id, seed=seed, paths=paths)
    if transform is not None:
        job = transform(job)
    _owned_by_job(paths.outputs, job.user)
    _owned_by_job(paths.meta, job.user)
    marker = new_marker()
    (paths.meta / "wrap.sh").write_text(wrapper_script(marker))
    (paths.meta / "pyprobe.py").write_text(pyprobe_source())
    log = LogFile(paths.log, int(os.environ.get("REPRUN_LOG_CAP", DEFAULT_LOG_CAP)))

    def on_output(chunk: bytes) -> None:
        log.write(chunk)
        observer.output(label, chunk)

    observer.stage(label, f"run {run_id}: training in {prepared.image.id[:19]} "
                          f"(network {job.network}, {spec.resources.cpus:g} CPU)")
    interrupted = False
    try:
        outcome = engine.run(job, on_output)
    except KeyboardInterrupt:
        interrupted = True
        outcome = ContainerOutcome(None, "interrupted", 0.0,
                                   "reprun was interrupted; the container was removed")
    except Exception as exc:
        outcome = ContainerOutcome(None, "engine", 0.0, getattr(exc, "message", str(exc)))
    finally:
        log.close()
    record = _record(prepared, run_id, started_at, seed, job, outcome, paths, log, marker)
    store.finish(record)
    observer.finished(label, record)
    if interrupted:
        raise KeyboardInterrupt
    return record


def _record(prepared: Prepared, run_id: str, started_at: str, seed: int, job: ContainerJob,
            outcome: ContainerOutcome, paths: RunPaths, log: LogFile, marker: str) -> RunRecord:
    spec = prepared.spec
    metrics, artifacts, reason, message = {}, {}, outcome.reason, outcome.message
    if outcome.reason == "ok":
        try:
            metrics = read_metrics(paths.outputs / spec.outputs.metrics)
            artifacts = hash_artifacts(paths.outputs, spec.outputs.artifacts)
        except OutputsError as exc:
            reason, message = "outputs", str(exc)
    status = {"ok": SUCCEEDED, "interrupted": INTERRUPTED, "engine": ERROR}.get(reason, FAILED)
    manifest_path = paths.meta / "manifest.txt"
    manifest_text = (manifest_path.read_bytes().decode("utf-8", "replace")
                     if manifest_path.exists() else None)
    log_sha, _ = sha256_file(paths.log)
    if log.truncated:
        note = f"the log was capped at {log.cap} bytes; the job printed {log.seen}"
        message = f"{message}; {note}" if message else note
    inputs = Inputs(
        spec_name=spec.name, spec_path=str(spec.source), spec_sha256=spec.source_sha256,
        seed=seed, command=list(job.command), params=dict(spec.params),
        env=redact_env(dict(spec.env)),
        resources={"cpus": job.nano_cpus / 1e9, "memory_bytes": job.memory_bytes,
                   "timeout_s": job.timeout_s, "pids": job.pids},
        container=applied_settings(job),
        image=ImageFacts(id=prepared.image.id, ref=prepared.image.ref,
                         repo_digest=prepared.image.repo_digest,
                         build_context=prepared.image.build_context),
        dataset=DatasetFacts(path=str(spec.dataset.path), sha256=prepared.dataset.sha256,
                             kind=prepared.dataset.kind, files=len(prepared.dataset.files),
                             bytes=prepared.dataset.bytes, mount=spec.dataset.mount),
        outputs=dataclasses.asdict(spec.outputs),
        hermetic=dataclasses.asdict(spec.hermetic),
    )
    outputs = Outputs(exit_code=outcome.exit_code, reason=reason,
                      duration_s=round(outcome.duration_s, 3), metrics=metrics,
                      artifacts=artifacts, log_sha256=log_sha, log_bytes=log.seen,
                      log_truncated=log.truncated, message=message)
    return RunRecord(
        id=run_id, status=status, started_at=started_at, finished_at=utc_now(),
        inputs=inputs, environment=parse_manifest(manifest_text, marker, prepared.host),
        outputs=outputs, compare=compare_settings(spec), reprun_version=__version__)


def compare_settings(spec) -> dict:
    return {"metrics": {name: dataclasses.asdict(tol) for name, tol in spec.compare.metrics.items()},
            "artifacts": spec.compare.artifacts}


def failure_of(record: RunRecord, log_tail: list[str] | None = None) -> JobFailed:
    """The exit-5 error for a run that did not succeed, with the end of its log."""
    outputs = record.outputs
    message = f"run {record.id} of {record.inputs.spec_name} failed: {outputs.message or outputs.reason}."
    return JobFailed(message, details=["last lines of the log:", *("  " + l for l in (log_tail or []))]
                     if log_tail else [])
