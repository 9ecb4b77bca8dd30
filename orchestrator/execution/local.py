"""Where containers run: the local Docker engine, one implementation of the execution interface.

Everything above this module hands over a `ContainerJob` (what to run, fully resolved and
hermetic) and gets back a `ContainerOutcome`; it does not know which engine ran it. The
interface is execution/job.py; the choice between backends is execution/config.py.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import threading
import time
from typing import Any

import docker
import docker.errors
import docker.types
import requests.exceptions

from orchestrator.execution.job import (LABEL, LABEL_OWNER, ContainerJob, ContainerOutcome, EventSink,
                                        LogSink, Mount)
from orchestrator.errors import InfrastructureError
from orchestrator.execution.cpus import ONLINE_CPUS, CpuSets, cpus_needed
from orchestrator.execution.hermetic import gpu_refusal, gpu_words
from orchestrator.execution.owners import owner_label


def engine_patience_s() -> float:
    """How long a run that lost its engine waits for it to come back, to remove its container."""
    return float(os.environ.get("REPRUN_ENGINE_PATIENCE", "20"))


def engine_unreachable(exc: Exception) -> InfrastructureError:
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    return InfrastructureError(
        f"cannot reach the Docker engine at {where} ({type(exc).__name__}: {exc}). "
        "Start one with `make engine`, or point DOCKER_HOST at a running engine.")


def malformed_engine_address(exc: Exception) -> InfrastructureError:
    return InfrastructureError(
        f"DOCKER_HOST={os.environ.get('DOCKER_HOST', '')!r} is not an engine address reprun can "
        f"read ({exc}); set it to unix:///path/to/docker.sock or tcp://HOST:PORT, or unset it "
        "for the local socket.")


def connect() -> tuple[docker.DockerClient, dict[str, Any]]:
    """A client speaking the engine's own API version, and the engine's version facts.

    The engine here can be older than the SDK's default API version, so the version is asked
    first (unversioned); the answer also says the engine answers and is kept for the manifest,
    which saves the two round trips `version="auto"` and a ping would make again.
    """
    try:
        probe = docker.from_env(version=docker.constants.MINIMUM_DOCKER_API_VERSION)
        try:
            version = probe.version(api_version=False)
        finally:
            probe.close()
        return docker.from_env(version=version["ApiVersion"], timeout=120), version
    except ValueError as exc:
        # The SDK parses DOCKER_HOST with urllib, whose errors say nothing of where they came from.
        raise malformed_engine_address(exc) from None
    except (docker.errors.DockerException, requests.exceptions.RequestException, KeyError) as exc:
        raise engine_unreachable(exc) from None


class LocalEngine:
    """Runs jobs on the Docker engine this process talks to (DOCKER_HOST or the local socket)."""

    def __init__(self, client: docker.DockerClient | None = None):
        self._client = client
        self._version: dict[str, Any] | None = None
        self._engine_id: str | None = None
        self._host_cpus: int | None = None
        self._cpusets = CpuSets()
        self._live: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._interrupted = threading.Event()

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client, self._version = connect()
        return self._client

    def host_facts(self) -> dict[str, Any]:
        try:
            info = self.client.info()
            version = self._version or self.client.version()
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_unreachable(exc) from None
        self._engine_id = info.get("ID")
        self._host_cpus = info.get("NCPU")
        return {
            "engine": "docker",
            "engine_version": version.get("Version"),
            "api_version": version.get("ApiVersion"),
            "storage_driver": info.get("Driver"),
            "cgroup_version": info.get("CgroupVersion"),
            "host_os": info.get("OperatingSystem"),
            "host_kernel": info.get("KernelVersion"),
            "host_cpus": info.get("NCPU"),
            "host_memory_bytes": info.get("MemTotal"),
            "runtimes": sorted(info.get("Runtimes") or {}),
        }

    def facts_scope(self) -> str | None:
        if self._engine_id is None:
            self.host_facts()
        return f"engine {self._engine_id}" if self._engine_id else None

    def interrupt(self) -> None:
        """Stop every container this engine started; their runs end as `interrupted`."""
        self._interrupted.set()
        with self._lock:
            containers = list(self._live.values())
        for container in containers:
            _remove_quietly(container)

    def run(self, job: ContainerJob, on_output: LogSink,
            on_event: EventSink | None = None) -> ContainerOutcome:
        job, folder = self._pinned(job)
        try:
            return self._run_pinned(job, on_output)
        finally:
            self._cpusets.give_back(job.name)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    def _pinned(self, job: ContainerJob) -> tuple[ContainerJob, str | None]:
        """The job on a cpuset of its CPU limit's size (execution/cpus.py), with the online-CPUs
        file it reads listing the same CPUs; the folder holding that file, removed after the run."""
        if job.cpuset is None:
            if self._host_cpus is None:
                self.host_facts()
            if not self._host_cpus:
                return job, None         # the engine did not say: the job sees the host's CPUs
            job = dataclasses.replace(job, cpuset=self._cpusets.take(
                job.name, min(cpus_needed(job.nano_cpus), self._host_cpus), self._host_cpus))
        folder = tempfile.mkdtemp(prefix="reprun-cpus-")
        os.chmod(folder, 0o755)
        online = os.path.join(folder, "online")
        with open(online, "w") as handle:
            handle.write(job.cpuset + "\n")
        os.chmod(online, 0o444)
        return dataclasses.replace(job, mounts=(*job.mounts, Mount(online, ONLINE_CPUS))), folder

    def _run_pinned(self, job: ContainerJob, on_output: LogSink) -> ContainerOutcome:
        started = time.monotonic()
        if job.wants_gpus:
            self._require_gpus(job)
        try:
            container = self.client.containers.create(**_create_kwargs(job))
        except docker.errors.ImageNotFound as exc:
            raise InfrastructureError(f"the image {job.image_id} vanished from the engine: {exc}")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _as_infrastructure(exc) from None
        except KeyboardInterrupt:
            # The engine may have made the container before the interrupt reached us.
            _remove_by_name(self.client, job.name)
            raise
        with self._lock:
            self._live[container.id] = container
        outcome = None
        try:
            outcome = self._run_created(container, job, on_output, started)
        finally:
            lost = outcome is not None and outcome.reason == "engine"
            gone = remove_container(container, patience=engine_patience_s() if lost else 0.0)
            with self._lock:
                self._live.pop(container.id, None)
        if not gone:
            outcome = dataclasses.replace(outcome, message=(
                f"{outcome.message}; its container {job.name} could not be removed while the "
                "engine was away: `reprun gc` removes it once the engine is back"))
        return outcome

    def _require_gpus(self, job: ContainerJob) -> None:
        try:
            runtimes = self.client.info().get("Runtimes")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise engine_unreachable(exc) from None
        refusal = gpu_refusal(gpu_words(job), runtimes)
        if refusal is not None:
            raise refusal

    def _run_created(self, container, job: ContainerJob, on_output: LogSink,
                     started: float) -> ContainerOutcome:
        try:
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True,
                                      demux=True)
            pump = threading.Thread(target=_pump, args=(stream, on_output), daemon=True)
            pump.start()
            container.start()
        except requests.exceptions.ConnectionError as exc:
            # It answered a moment ago, when the container was created.
            return ContainerOutcome(None, "engine", time.monotonic() - started,
                                    f"lost the engine during the run, as the job started: {exc}")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise _as_infrastructure(exc, job) from None
        # A watchdog kills the job at its deadline; the wait itself has no HTTP timeout, so a
        # slow engine is never mistaken for a slow job.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            _kill_quietly(container)

        watchdog = threading.Timer(job.timeout_s, expire)
        watchdog.daemon = True
        watchdog.start()
        watch = _EngineWatch(self.client, container.id)
        try:
            return self._wait(container, job, started, pump, watchdog, timed_out, watch)
        finally:
            watch.close()

    def _wait(self, container, job: ContainerJob, started: float, pump: threading.Thread,
              watchdog: threading.Timer, timed_out: threading.Event,
              watch: "_EngineWatch") -> ContainerOutcome:
        try:
            exit_code = container.wait().get("StatusCode")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            if self._interrupted.is_set():
                return ContainerOutcome(None, "interrupted", time.monotonic() - started,
                                        "reprun was interrupted; the container was removed")
            return ContainerOutcome(None, "engine", time.monotonic() - started,
                                    f"lost the engine during the run: {exc}")
        finally:
            watchdog.cancel()
        pump.join(timeout=10)
        duration = time.monotonic() - started
        # An engine that shuts down stops its containers first: the wait then answers with the
        # job's signal status before the engine goes. Its event stream ending tells the two apart.
        if exit_code is not None and exit_code >= 128 and not timed_out.is_set() \
                and watch.gone.wait(3.0):
            return ContainerOutcome(None, "engine", duration,
                                    f"lost the engine during the run (it stopped the job, "
                                    f"status {exit_code}, as it went away)")
        if self._interrupted.is_set():
            return ContainerOutcome(exit_code, "interrupted", duration,
                                    "reprun was interrupted; the container was removed")
        if timed_out.is_set():
            return ContainerOutcome(None, "timeout", duration,
                                    f"the job ran past its timeout of {job.timeout_s:g}s and was killed")
        try:
            state = self.client.api.inspect_container(container.id)["State"]
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            # The engine answered the wait as it went down (it stops containers on shutdown):
            # the exit status is the engine's doing, not the job's.
            return ContainerOutcome(None, "engine", duration,
                                    f"lost the engine during the run (exit status {exit_code} "
                                    f"came as it went away: {type(exc).__name__})")
        if state.get("OOMKilled"):
            return ContainerOutcome(exit_code, "oom", duration,
                                    f"the job was killed for running out of memory "
                                    f"(limit {job.memory_bytes} bytes)")
        if exit_code != 0:
            return ContainerOutcome(exit_code, "exit", duration,
                                    f"the job exited with status {exit_code}"
                                    + (f" (killed by signal {exit_code - 128})" if exit_code and exit_code > 128 else ""))
        return ContainerOutcome(0, "ok", duration)


class _EngineWatch:
    """`gone` is set when the engine's event stream for a container ends: the engine went away."""

    def __init__(self, client, container_id: str):
        self.gone = threading.Event()
        try:
            self._events = client.events(filters={"container": container_id}, decode=True)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            self._events = None
            return
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        try:
            for _ in self._events:
                pass
        except Exception:
            pass
        self.gone.set()

    def close(self) -> None:
        if self._events is not None:
            try:
                self._events.close()
            except Exception:
                pass


def _create_kwargs(job: ContainerJob) -> dict[str, Any]:
    return dict(
        image=job.image_id,
        name=job.name,
        entrypoint=list(job.entrypoint),
        command=list(job.command),
        environment=dict(job.env),
        hostname=job.hostname,
        user=job.user,
        network_mode=job.network,
        read_only=job.read_only_root,
        tmpfs=dict(job.tmpfs),
        cap_drop=list(job.cap_drop),
        security_opt=list(job.security_opt),
        nano_cpus=job.nano_cpus,
        cpuset_cpus=job.cpuset,
        mem_limit=job.memory_bytes,
        memswap_limit=job.memory_bytes,   # no swap: an over-limit job is OOM-killed, not slowed
        pids_limit=job.pids,
        labels={LABEL: "1", LABEL_OWNER: owner_label(), **job.labels},
        # A list of binds, not the SDK's dict keyed by host path: one host file may be bound
        # at two places.
        volumes=[f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in job.mounts],
        shm_size=job.shm_bytes,
        **({"working_dir": job.workdir} if job.workdir else {}),
        **({"device_requests": [gpu_request(job)]} if job.wants_gpus else {}),
        detach=True,
    )


def gpu_request(job: ContainerJob) -> docker.types.DeviceRequest:
    if job.gpu_device_ids:
        return docker.types.DeviceRequest(device_ids=list(job.gpu_device_ids),
                                          capabilities=[["gpu"]])
    return docker.types.DeviceRequest(count=job.gpu_count, capabilities=[["gpu"]])


def _pump(stream, on_output: LogSink) -> None:
    try:
        for out, err in stream:
            if out:
                on_output(out, "stdout")
            if err:
                on_output(err, "stderr")
    except Exception:
        # The stream ends abruptly when the container is removed; what was read is kept.
        pass


def _kill_quietly(container) -> None:
    try:
        container.kill()
    except Exception:
        pass


def remove_container(container, patience: float) -> bool:
    """Remove it; while the engine cannot be reached, keep trying for `patience` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            container.remove(force=True)
            return True
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as exc:
            if "already in progress" in str(exc):
                return True
            if time.monotonic() >= deadline:
                return False
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            if time.monotonic() >= deadline:
                return False
        time.sleep(0.5)


def _remove_by_name(client, name: str) -> None:
    try:
        _remove_quietly(client.containers.get(name))
    except Exception:
        pass


def _remove_quietly(container) -> None:
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except Exception:
        pass


def _as_infrastructure(exc: Exception, job: ContainerJob | None = None) -> InfrastructureError:
    if isinstance(exc, requests.exceptions.ConnectionError):
        return engine_unreachable(exc)
    explanation = getattr(exc, "explanation", None) or str(exc)
    if job is not None and job.wants_gpus:
        # The runtime is there, the GPU is not (no driver, no device, a wrong ID).
        return InfrastructureError(
            f"the engine could not give the job the {gpu_words(job)} it asks for: "
            f"{explanation}. reprun does not run a GPU job on the CPU; check `nvidia-smi` on "
            "the host and resources.gpus in the spec.")
    return InfrastructureError(f"the engine refused to run the container: {explanation}")
