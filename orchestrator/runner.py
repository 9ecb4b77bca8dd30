"""One run of a spec, start to finish: pinned inputs checked, the job run hermetically, the
outputs read, and a complete record written to the store — also when the job fails or reprun
is interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator import __version__
from orchestrator.dataset.tree import DatasetDigest, HashCache, verify_dataset
from orchestrator.execution.job import ContainerJob, ContainerOutcome, Executor
from orchestrator.errors import InfrastructureError, JobFailed, PinMismatch
from orchestrator.events import RunObserver
from orchestrator.execution.hermetic import RunPaths, applied_settings, container_job, gpu_refusal
from orchestrator.images import ResolvedImage, resolve_image
from orchestrator.steps import StepStream, StepWatcher, read_steps
from orchestrator.outputs import (OutputsError, find_artifacts, read_metrics, sha256_file,
                                  unmatched_patterns)
from orchestrator.manifest.probes import (PROBES, RUN_PROBES, ManifestCapture, image_facts,
                                          image_facts_key, new_marker, parse_manifest, write_probe)
from orchestrator.secrets import (Redactor, recorded_environment_env, recorded_inputs_env,
                                  secret_values)
from orchestrator.spec.model import RunSpec
from orchestrator.records import (ERROR, FAILED, INTERRUPTED, SUCCEEDED, DatasetFacts, ImageFacts,
                                  Inputs, EnvironmentManifest, OutcomeReason, Outputs, RunRecord)
from orchestrator.store.db import Store, utc_now

DEFAULT_LOG_CAP = 64 * 1024 * 1024
JobTransform = Callable[[ContainerJob], ContainerJob]


@dataclass(frozen=True)
class PreparedRun:
    """The checked, resolved inputs of a spec; shared by every run of one `verify`."""
    spec: RunSpec
    dataset: DatasetDigest | None       # None: the spec has no dataset
    image: ResolvedImage
    host: dict
    use_cache: bool = True      # False for audits: every byte and every fact read again
    facts_scope: str | None = None      # where image-bound facts may be reused (Executor)


def prepare(spec, *, store: Store, engine: Executor, observer: RunObserver,
            use_cache: bool = True, label: str = "prepare",
            dataset_path: Path | None = None) -> PreparedRun:
    secret_values(spec)      # an unset secret is refused before anything is read or pulled
    store.refuse_without_room()     # a run that could not keep its record never starts
    if spec.resources.gpus is not None:      # refused before anything is read or built
        refusal = gpu_refusal(spec.resources.gpus.describe(), engine.host_facts().get("runtimes"))
        if refusal is not None:
            raise refusal
    digest = None
    if spec.dataset is not None:
        path = dataset_path or spec.dataset.path
        observer.stage(label, f"verifying dataset {path}")
        cache = HashCache(store.db_path) if use_cache else None
        digest = verify_dataset(
            path, spec.dataset.sha256, cache=cache,
            progress=lambda done, total: observer.progress(label, "hash", done, total))
    observer.stage(label, "resolving image " + describe_image(spec.image))
    image = resolve_image(engine.client, spec.image, spec_name=spec.name,
                          leave_out=(spec.source, store.root),
                          progress=lambda phase, done, total, text:
                          observer.progress(label, phase, done, total, text))
    if image.build_context:
        store.note_built_image(image.id, spec.name)
    host = {**engine.host_facts(), "reprun_version": __version__,
            "image_id": image.id, "image_repo_digest": image.repo_digest}
    return PreparedRun(spec=spec, dataset=digest, image=image, host=host, use_cache=use_cache,
                    facts_scope=engine.facts_scope())


def describe_image(image_spec) -> str:
    if image_spec.ref:
        return image_spec.ref
    if image_spec.build is not None:
        return f"built from {image_spec.build.context}"
    return image_spec.digest


class LogFile:
    """The job's output, kept in a file up to a cap; the total is still counted.

    When the disk fills, the end of the output is held in memory (at most HELD bytes) and written
    at `close`, once the run's space reserve is released: a job's last words explain its failure.
    """

    HELD = 64 * 1024

    def __init__(self, path: Path, cap: int):
        self.path, self.cap = path, cap
        self.handle = open(path, "wb", buffering=0)
        self.written = 0
        self.seen = 0
        self.error: str | None = None     # why writing stopped (disk full…)
        self.held = bytearray()
        self.lost = 0                     # bytes under the cap that never reached the file

    def write(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        room = self.cap - self.written - len(self.held) - self.lost
        if room <= 0 or not chunk:
            return
        part = memoryview(chunk)[:room]
        if self.error is None:
            try:
                while part:
                    done = self.handle.write(part)
                    self.written += done
                    part = part[done:]
            except OSError as exc:
                self.error = exc.strerror or str(exc)
        if part:
            self.held += part
            if len(self.held) > self.HELD:
                drop = len(self.held) - self.HELD
                del self.held[:drop]
                self.lost += drop

    def close(self) -> None:
        try:
            while self.held:
                done = self.handle.write(self.held)
                self.written += done
                del self.held[:done]
        except OSError as exc:
            self.error = self.error or exc.strerror or str(exc)
            self.lost += len(self.held)
            self.held.clear()
        finally:
            try:
                self.handle.close()
            except OSError as exc:
                self.error = self.error or exc.strerror or str(exc)

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


def execute(prepared: PreparedRun, *, store: Store, engine: Executor, observer: RunObserver,
            label: str = "run", seed: int | None = None,
            transform: JobTransform | None = None) -> RunRecord:
    """Run the job once and record it. Interrupts still write an `interrupted` record."""
    spec = prepared.spec
    seed = spec.seed if seed is None else seed
    secrets = secret_values(spec)
    redactor = Redactor.for_run(spec, secrets)
    run_id, run_dir, started_at = store.new_run(spec.name)
    paths = RunPaths(run_dir)
    reserve = store.reserve_space(run_id)   # room for the record even if the job fills the disk
    job = container_job(spec, run_id=run_id, image_id=prepared.image.id, seed=seed, paths=paths,
                        secrets=secrets)
    if transform is not None:
        job = transform(job)
    _owned_by_job(paths.outputs, job.user)
    _owned_by_job(paths.meta, job.user)
    marker = new_marker()
    facts_key = image_facts_key(job, prepared.facts_scope, spec.secrets) \
        if prepared.facts_scope else None
    cached = store.image_facts(facts_key) if prepared.use_cache and facts_key else None
    probes = PROBES if cached is None else RUN_PROBES
    write_probe(paths.meta, marker, probes)
    log = LogFile(paths.log, int(os.environ.get("REPRUN_LOG_CAP", DEFAULT_LOG_CAP)))

    streams = {"stdout": redactor.stream(), "stderr": redactor.stream()}

    def on_output(chunk: bytes, stream: str = "stdout") -> None:
        chunk = streams.get(stream, streams["stdout"]).feed(chunk)
        log.write(chunk)
        observer.output(label, chunk)

    # The probe's output leads the container's stdout; only what follows it is the job's.
    manifest = ManifestCapture(marker, on_output)
    observer.stage(label, f"run {run_id}: training in {prepared.image.id[:19]} "
                          f"(network {job.network}, {job.nano_cpus / 1e9:g} CPU)")
    interrupted = False
    watching = (StepWatcher(paths.outputs / spec.outputs.steps,
                            lambda step, values: observer.step(label, step, values))
                if spec.outputs.steps else contextlib.nullcontext())
    try:
        with watching:
            outcome = engine.run(job, manifest.feed,
                                 on_event=lambda text: observer.stage(label, text))
    except KeyboardInterrupt:
        interrupted = True
        outcome = ContainerOutcome(None, OutcomeReason.INTERRUPTED, 0.0,
                                   "reprun was interrupted; the container was removed")
    except InfrastructureError as exc:
        # The engine failed or went away: recorded as such. Anything else is a bug in reprun
        # and goes on as one; the store's repair marks the run interrupted.
        outcome = ContainerOutcome(None, OutcomeReason.ENGINE, 0.0, exc.message)
    finally:
        for stream in streams.values():
            if tail := stream.flush():      # the bytes held back for a secret split across chunks
                log.write(tail)
                observer.output(label, tail)
        reserve.release()
        log.close()
    record = _record(prepared, run_id, started_at, seed, job, outcome, paths, log,
                     ManifestReading(marker, probes, cached, manifest), redactor)
    record = store.finish(record)
    if facts_key and cached is None and (facts := image_facts(record.environment)) is not None:
        store.remember_image_facts(facts_key, prepared.image.id, facts, record.id)
    observer.finished(label, record)
    if interrupted:
        raise KeyboardInterrupt
    if outcome.reason == OutcomeReason.PIN:     # checked where the job ran: recorded, then refused (exit 3)
        raise PinMismatch(outcome.message or "a pinned input did not match where the job ran")
    return record


@dataclass(frozen=True)
class ManifestReading:
    """How this run's manifest is read: which probes ran, and the image facts reused."""
    marker: str
    probes: tuple
    cached: tuple[dict, str] | None     # (image-bound facts, the run that read them)
    capture: ManifestCapture            # the probe's output, taken from the container's

    def parse(self, host: dict) -> EnvironmentManifest:
        text, cut_from = self.capture.text, self.capture.seen if self.capture.cut else None
        if self.cached is None:
            return parse_manifest(text, self.marker, host, self.probes, cut_from=cut_from)
        facts, source = self.cached
        return parse_manifest(text, self.marker, {**host, "image_facts_from_run": source},
                              self.probes, cached=facts, cut_from=cut_from)


def _record(prepared: PreparedRun, run_id: str, started_at: str, seed: int, job: ContainerJob,
            outcome: ContainerOutcome, paths: RunPaths, log: LogFile, plan: ManifestReading,
            redactor: Redactor) -> RunRecord:
    spec = prepared.spec
    metrics, artifacts, reason, message = {}, {}, outcome.reason, outcome.message
    links: list[str] = []
    collected = outcome.collected      # present: the backend read the results where the job ran
    if outcome.reason == OutcomeReason.OK:
        try:
            if collected is not None:
                metrics, artifacts = collected.results(spec.outputs.metrics)
            else:
                metrics = read_metrics(paths.outputs / spec.outputs.metrics, root=paths.outputs)
                found = find_artifacts(paths.outputs, spec.outputs.artifacts,
                                       max_bytes=spec.outputs.max_size)
                artifacts, links = found.artifacts, found.notes()
        except OutputsError as exc:
            reason, message = OutcomeReason.OUTPUTS, str(exc)
    steps = (read_steps(paths.outputs / spec.outputs.steps)
             if spec.outputs.steps and collected is None else StepStream())
    status = {OutcomeReason.OK: SUCCEEDED, OutcomeReason.INTERRUPTED: INTERRUPTED,
              OutcomeReason.ENGINE: ERROR}.get(reason, FAILED)
    manifest_text = plan.capture.text
    if manifest_text is not None:
        # The raw probe, kept with the run (the job saw this folder read-only): it holds the
        # container's environment, so without the secrets.
        (paths.meta / "manifest.txt").write_text(
            redactor.text(manifest_text) if redactor else manifest_text, encoding="utf-8")
    log_sha, _ = sha256_file(paths.log)
    notes = []
    if log.error:
        notes.append(f"the store's disk filled while the job ran ({log.error})"
                     + (f"; {log.lost} bytes of the log were lost, its end was kept"
                        if log.lost else ""))
    if log.seen > log.cap:
        notes.append(f"the log was capped at {log.cap} bytes; the job printed {log.seen}")
    if reason == OutcomeReason.EXIT and _ran_out_of_shared_memory(outcome, log):
        notes.append(f"out of shared memory: raise resources.shm (/dev/shm was "
                     f"{job.shm_bytes >> 20} MiB)")
    notes += steps.notes
    if reason == OutcomeReason.OK:
        notes += links
        notes += [f"the artifact pattern {pattern!r} matched no file, so nothing it was meant "
                  "to name is compared" for pattern in unmatched_patterns(spec.outputs.artifacts,
                                                                          artifacts)]
    for note in notes:
        message = f"{message}; {note}" if message else note
    inputs = Inputs(
        spec_name=spec.name, spec_path=str(spec.source), spec_sha256=spec.source_sha256,
        seed=seed, command=list(job.command), params=dict(spec.params),
        env=recorded_inputs_env(spec.env, spec.secrets),
        resources={"cpus": job.nano_cpus / 1e9, "memory_bytes": job.memory_bytes,
                   "timeout_s": job.timeout_s, "pids": job.pids, "shm_bytes": job.shm_bytes,
                   **({"gpus": list(job.gpu_device_ids) or job.gpu_count}
                      if job.wants_gpus else {})},
        container=applied_settings(job),
        image=ImageFacts(id=prepared.image.id, ref=prepared.image.ref,
                         repo_digest=prepared.image.repo_digest,
                         build_context=prepared.image.build_context),
        dataset=_dataset_facts(spec, prepared.dataset),
        outputs=dataclasses.asdict(spec.outputs),
        hermetic=dataclasses.asdict(spec.hermetic),
    )
    # What the job names (metrics, artifacts) and what its failure message quotes may carry a
    # declared secret; everything else reprun wrote itself, so it is never searched.
    outputs = Outputs(exit_code=outcome.exit_code, reason=reason,
                      duration_s=round(outcome.duration_s, 3), metrics=redactor.keys(metrics),
                      artifacts=redactor.keys(artifacts), log_sha256=log_sha, log_bytes=log.seen,
                      log_truncated=log.truncated,
                      message=redactor.text(message) if message else message,
                      steps=redactor.keys({k: [[s, v] for s, v in points]
                                           for k, points in steps.series.items()}))
    environment = plan.parse({**prepared.host, **(collected.host if collected else {})})
    environment = dataclasses.replace(environment, env=recorded_environment_env(
        environment.env, set_by_reprun=job.env, spec_env=spec.env, declared=spec.secrets))
    return RunRecord(
        id=run_id, status=status, started_at=started_at, finished_at=utc_now(),
        inputs=inputs, environment=environment,
        outputs=outputs, compare=compare_settings(spec), reprun_version=__version__)


SIGBUS_STATUS = 128 + 7
# What a job says when /dev/shm is full: a process touching shared memory past its end gets
# SIGBUS, and PyTorch's DataLoader reports its workers' deaths with these words.
SHARED_MEMORY_SIGNS = ("Bus error", "out of shared memory")


def _ran_out_of_shared_memory(outcome: ContainerOutcome, log: LogFile) -> bool:
    if outcome.exit_code == SIGBUS_STATUS:
        return True
    try:
        tail = "\n".join(log.tail(lines=50))
    except OSError:
        return False
    return any(sign in tail for sign in SHARED_MEMORY_SIGNS)


def _dataset_facts(spec: RunSpec, digest: DatasetDigest | None) -> DatasetFacts | None:
    if spec.dataset is None or digest is None:
        return None
    return DatasetFacts(path=str(spec.dataset.path), sha256=digest.sha256, kind=digest.kind,
                        files=len(digest.files), bytes=digest.bytes, mount=spec.dataset.mount)


def compare_settings(spec) -> dict:
    settings = {"metrics": {name: dataclasses.asdict(tol)
                            for name, tol in spec.compare.metrics.items()},
                "artifacts": spec.compare.artifacts}
    if spec.compare.test_examples is not None:
        settings["test_examples"] = spec.compare.test_examples
    return settings


def failure_of(record: RunRecord, log_tail: list[str] | None = None) -> JobFailed:
    """The exit-5 error for a run that did not succeed, with the end of its log."""
    outputs = record.outputs
    message = f"run {record.id} of {record.inputs.spec_name} failed: {outputs.message or outputs.reason}."
    return JobFailed(message, details=["last lines of the log:", *("  " + l for l in (log_tail or []))]
                     if log_tail else [])
