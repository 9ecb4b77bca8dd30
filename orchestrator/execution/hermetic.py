"""The hermetic, seeded container configuration of a run, as one pure function of its inputs.

Every default of DESIGN's "Hermetic, seeded execution" is applied here and nowhere else; what
was applied is recorded with the run (`applied_settings`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from orchestrator.errors import InfrastructureError
from orchestrator.spec.model import GpuRequest

from orchestrator.execution.job import ResultsToCollect
from orchestrator.execution.job import LABEL_RUN, LABEL_SPEC, ContainerJob, Mount

HOSTNAME = "reprun"           # Docker's default is the random container ID: a needless difference
META_MOUNT = "/reprun"        # the entrypoint and the Python probe, read-only
# Set by `verify --vary` on each of its runs: the seed and what was varied, kept in the record.
LABEL_VARIATIONS = "io.reprun.variations"
# Set on each run of a diagnosis: the sources of nondeterminism removed from it.
LABEL_INTERVENTIONS = "io.reprun.interventions"
# The date document writers (matplotlib, LaTeX, zip) embed instead of now: 1980-01-01, the
# earliest a zip file can hold.
SOURCE_DATE_EPOCH = "315532800"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")


@dataclass(frozen=True)
class RunPaths:
    """Host folders of one run in the store."""
    root: Path

    @property
    def outputs(self) -> Path:
        return self.root / "out"

    @property
    def meta(self) -> Path:
        return self.root / "reprun"

    @property
    def log(self) -> Path:
        return self.root / "log.txt"


def thread_count(cpus: float) -> int:
    return max(1, math.floor(cpus))


def dataset_mount(dataset_path: Path, mount: str, file_name: str | None = None) -> Mount:
    # A single file appears inside the mount folder under its own name (or the one it was
    # pinned with), so that the job sees the same layout whether the dataset is one file or a
    # tree.
    if dataset_path.is_file():
        name = file_name or dataset_path.name
        return Mount(str(dataset_path), f"{mount.rstrip('/')}/{name}", read_only=True)
    return Mount(str(dataset_path), mount, read_only=True)


def container_job(spec, *, run_id: str, image_id: str, seed: int, paths: RunPaths,
                  secrets: dict[str, str] | None = None) -> ContainerJob:
    """`secrets`: the values of the spec's `secrets`, read from reprun's environment."""
    threads = thread_count(spec.resources.cpus)
    env = {
        # Before the spec's env, so that a spec can set another date.
        "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH,
        **spec.env,
        **(secrets or {}),
        "REPRUN_SEED": str(seed),
        "REPRUN_RUN_ID": run_id,
        "REPRUN_PARAMS": json.dumps(spec.params, sort_keys=True),
        "PYTHONHASHSEED": "0",
        **{name: str(threads) for name in THREAD_VARIABLES},
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "HOME": "/tmp",   # the non-root user has no home; many libraries want one
    }
    hermetic = spec.hermetic
    return ContainerJob(
        name=f"reprun-{run_id}",
        image_id=image_id,
        entrypoint=("/bin/sh", f"{META_MOUNT}/wrap.sh"),
        command=tuple(spec.render_command(seed)),
        env=env,
        mounts=(
            *([dataset_mount(spec.dataset.path, spec.dataset.mount, spec.dataset.file_name)]
              if spec.dataset is not None else []),
            Mount(str(paths.outputs), spec.outputs.dir, read_only=False),
            # Read-only: the job must not change what the entrypoint and the probe are.
            Mount(str(paths.meta), META_MOUNT, read_only=True),
        ),
        hostname=HOSTNAME,
        user=hermetic.user,
        network=hermetic.network,
        read_only_root=hermetic.read_only_root,
        tmpfs={"/tmp": f"rw,nosuid,nodev,size={hermetic.tmp_size},mode=1777"},
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        nano_cpus=int(spec.resources.cpus * 1e9),
        memory_bytes=spec.resources.memory_bytes,
        pids=spec.resources.pids,
        timeout_s=spec.resources.timeout_s,
        shm_bytes=spec.resources.shm_bytes,
        workdir=spec.workdir,
        gpu_count=spec.resources.gpus.count if spec.resources.gpus else 0,
        gpu_device_ids=spec.resources.gpus.device_ids if spec.resources.gpus else (),
        labels={LABEL_RUN: run_id, LABEL_SPEC: spec.name},
        collect=ResultsToCollect(outputs_dir=spec.outputs.dir, metrics=spec.outputs.metrics,
                          artifacts=tuple(spec.outputs.artifacts),
                          dataset_source=str(spec.dataset.path) if spec.dataset else None,
                          dataset_sha256=spec.dataset.sha256 if spec.dataset else None),
    )


def gpu_words(job: ContainerJob) -> str:
    return GpuRequest(job.gpu_count, job.gpu_device_ids).describe()


def gpu_refusal(wanted: str, runtimes: Iterable[str] | None) -> InfrastructureError | None:
    """Why a job that asks for GPUs (`wanted`, in words) cannot have them on an engine with
    these runtimes, or None. A GPU job is never run on the CPU in their place: its results
    would differ for a reason no record names."""
    runtimes = sorted(runtimes or ())
    if "nvidia" in runtimes:
        return None
    return InfrastructureError(
        f"the spec asks for {wanted}, but the Docker engine has no GPU runtime (its "
        f"runtimes: {', '.join(runtimes) or 'none'}) and reprun does not run a GPU job on the "
        "CPU. Run it on a host with an NVIDIA GPU and the NVIDIA Container Toolkit, or remove "
        "resources.gpus from the spec.")


def applied_settings(job: ContainerJob) -> dict:
    """The hermetic settings a run actually had, for its record (no host paths, no secrets)."""
    return {
        "network": job.network,
        "read_only_root": job.read_only_root,
        "user": job.user,
        "hostname": job.hostname,
        "cap_drop": list(job.cap_drop),
        "security_opt": list(job.security_opt),
        "tmpfs": dict(job.tmpfs),
        "shm_bytes": job.shm_bytes,
        **({"workdir": job.workdir} if job.workdir else {}),
        **({"gpus": job.gpu_count if not job.gpu_device_ids else list(job.gpu_device_ids)}
           if job.wants_gpus else {}),
        "mounts": [{"target": m.target, "read_only": m.read_only} for m in job.mounts],
        "pinned_env": {k: v for k, v in job.env.items()
                       if k in THREAD_VARIABLES or k in ("PYTHONHASHSEED", "TZ", "LC_ALL", "LANG",
                                                          "SOURCE_DATE_EPOCH")},
        **({"variations": json.loads(job.labels[LABEL_VARIATIONS])}
           if LABEL_VARIATIONS in job.labels else {}),
        **({"interventions": json.loads(job.labels[LABEL_INTERVENTIONS])}
           if LABEL_INTERVENTIONS in job.labels else {}),
    }


def helper_job(*, name: str, image_id: str, entrypoint: tuple[str, ...],
               command: tuple[str, ...], mounts: tuple[Mount, ...],
               user: str, memory_bytes: int, timeout_s: float,
               labels: dict[str, str]) -> ContainerJob:
    """A short tool reprun runs in a job's own image (comparing two of its artifacts), with the
    hermetic defaults whatever the spec relaxed: what it reads was written by the job."""
    return ContainerJob(
        name=name, image_id=image_id, entrypoint=entrypoint, command=command,
        env={"PYTHONHASHSEED": "0", "TZ": "UTC", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8",
             "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1",
             **{variable: "1" for variable in THREAD_VARIABLES}},
        mounts=mounts, hostname=HOSTNAME, user=user, network="none", read_only_root=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"}, cap_drop=("ALL",),
        security_opt=("no-new-privileges",), nano_cpus=int(1e9), memory_bytes=memory_bytes,
        pids=256, timeout_s=timeout_s, labels=labels)
