"""The run spec, version 1, as frozen values: what the rest of reprun reads once a spec file
has been checked (orchestrator.spec.load reads the file into these)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.compare.tolerance import Tolerance
from orchestrator.errors import SpecError

SPEC_VERSION = 1
# `{{` and `}}` are literal braces; `{name}` is a placeholder; any other brace is a mistake.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")



@dataclass(frozen=True)
class ImageBuild:
    context: Path                   # absolute, resolved
    dockerfile: str = "Dockerfile"  # relative to the context
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    ref: str | None                 # name[:tag]@sha256:<64 hex>; the digest is mandatory
    build: ImageBuild | None        # exactly one of ref / build
    digest: str | None              # with build: the image ID the build must produce


@dataclass(frozen=True)
class DatasetSpec:
    path: Path                      # absolute, resolved
    sha256: str | None              # 64 hex; None only when loaded with require_pins=False
    mount: str = "/data"
    # A single file's name inside the mount: its own, unless a rerun found the pinned bytes
    # under another name, and the job still opens them by the name they were pinned with.
    file_name: str | None = None


@dataclass(frozen=True)
class OutputsSpec:
    dir: str = "/out"
    metrics: str = "metrics.json"
    artifacts: tuple[str, ...] = ()
    # outputs.max_size, in bytes: what the artifacts hashed after a run may add up to. Named as
    # the key, so that a record's outputs read back as a spec (rerun).
    max_size: int = 4 << 30
    steps: str | None = None        # a JSON Lines file the job appends one object per step to


@dataclass(frozen=True)
class CompareSpec:
    metrics: dict[str, Tolerance]   # always contains "default"
    # "bitwise", "ignore", or {pattern: policy} as written (compare/artifacts/policy.py)
    artifacts: str | dict[str, Any] = "bitwise"
    test_examples: int | None = None  # the test-set size behind accuracy-like metrics

    def tolerance_for(self, metric: str) -> Tolerance:
        return self.metrics.get(metric) or self.metrics.get("default", Tolerance("exact"))


@dataclass(frozen=True)
class GpuRequest:
    """The GPUs a job asks for: a number of them (ALL_GPUS: every one), or these devices."""
    count: int = 0
    device_ids: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.device_ids:
            return "GPU " + ", ".join(self.device_ids)
        if self.count == ALL_GPUS:
            return "every GPU"
        return f"{self.count} GPU" + ("" if self.count == 1 else "s")


ALL_GPUS = -1
# Docker gives /dev/shm 64 MB, which a PyTorch DataLoader with workers outgrows at once (its
# workers hand batches over through shared memory and die with "Bus error").
DEFAULT_SHM_BYTES = 1 << 30


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory_bytes: int = 2 << 30
    timeout_s: float = 1800.0
    pids: int = 512
    gpus: GpuRequest | None = None
    shm_bytes: int = DEFAULT_SHM_BYTES


@dataclass(frozen=True)
class Hermetic:
    """Every default is the strict setting; the runner records any relaxation."""

    network: str = "none"           # "none" or "host"
    read_only_root: bool = True
    user: str = "65534:65534"
    tmp_size: str = "256m"


@dataclass(frozen=True)
class RunSpec:
    version: int
    name: str
    description: str
    image: ImageSpec
    dataset: DatasetSpec | None     # None: the job makes its own data
    seed: int
    command: tuple[str, ...]        # raw, with placeholders
    params: dict[str, Any]
    env: dict[str, str]
    outputs: OutputsSpec
    compare: CompareSpec
    resources: Resources
    hermetic: Hermetic
    source: Path                    # the spec file, absolute
    source_sha256: str              # sha256 of the spec file's bytes
    # Variables whose values come from reprun's own environment when a run starts, never from
    # the spec file; their values never reach a record, a log kept by reprun or a report.
    secrets: tuple[str, ...] = ()
    workdir: str | None = None      # the job's working folder; None: the image's own

    def render_command(self, seed: int | None = None) -> list[str]:
        """The command with {seed} and {params.NAME} filled in; `{{`/`}}` become braces."""
        values = {"seed": str(self.seed if seed is None else seed)}
        values.update({f"params.{name}": _param_text(v) for name, v in self.params.items()})
        try:
            return [substitute_placeholders(arg, values) for arg in self.command]
        except (KeyError, ValueError) as exc:
            raise SpecError(f"spec {self.source} has a command that cannot be rendered: {exc}")



def substitute_placeholders(text: str, values: dict[str, str]) -> str:
    """Fill `{name}` placeholders; KeyError for an unknown name, ValueError for a lone brace."""
    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if match.group(1) is None:
            raise ValueError(f"an unmatched {token!r}")
        return values[match.group(1)]
    return _PLACEHOLDER.sub(one, text)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
