"""Replaying a recorded run from its record alone.

The spec file may have changed or gone since; the record holds everything the run was given:
the image by digest (or ID), the dataset by hash, the seed, the rendered command, params, env,
limits and hermetic settings. Secret values were never recorded, so they come from the
caller's environment under the same names, as a spec's `secrets` do.
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.compare.tolerance import parse_tolerances
from orchestrator.errors import UsageError
from orchestrator.manifest.probes import REDACTED
from orchestrator.records import RunRecord
from orchestrator.spec.model import (CompareSpec, DatasetSpec, Hermetic, ImageSpec, OutputsSpec,
                                     Resources, RunSpec)


def _literal(arg: str) -> str:
    """A recorded (already rendered) argument, protected from a second rendering."""
    return arg.replace("{", "{{").replace("}", "}}")


def _compare_spec(compare: dict) -> CompareSpec:
    tolerances = parse_tolerances(compare)
    return CompareSpec(metrics={"default": tolerances.default, **tolerances.metrics},
                       artifacts=tolerances.artifacts)


def spec_from_record(record: RunRecord, *, dataset_path: Path | None = None,
                     image_by_id: bool = False) -> RunSpec:
    """The spec a record describes. `image_by_id` skips the registry (an archive loaded it)."""
    inputs = record.inputs
    if not inputs.outputs:
        raise UsageError(f"run {record.id} was recorded by an older reprun that did not keep its "
                         "outputs settings; it cannot be replayed from its record.")
    dataset = Path(dataset_path or inputs.dataset.path).absolute()
    if not dataset.exists():
        raise UsageError(f"the dataset of run {record.id} is no longer at {dataset}; give its "
                         "new location with --dataset PATH (it is verified against the recorded "
                         "hash).")
    image = inputs.image
    image_spec = (ImageSpec(ref=image.repo_digest, build=None, digest=None)
                  if image.repo_digest and not image_by_id
                  else ImageSpec(ref=None, build=None, digest=image.id))
    resources = inputs.resources
    return RunSpec(
        version=1, name=inputs.spec_name, description=f"replay of run {record.id}",
        image=image_spec,
        dataset=DatasetSpec(path=dataset, sha256=inputs.dataset.sha256,
                            mount=inputs.dataset.mount,
                            file_name=(Path(inputs.dataset.path).name
                                       if inputs.dataset.kind == "file" else None)),
        seed=inputs.seed, command=tuple(_literal(a) for a in inputs.command),
        params=dict(inputs.params),
        env={k: v for k, v in inputs.env.items() if v != REDACTED},
        # Secret values were never recorded: like any secret, they come from reprun's environment.
        secrets=tuple(k for k, v in inputs.env.items() if v == REDACTED),
        outputs=OutputsSpec(dir=inputs.outputs["dir"], metrics=inputs.outputs["metrics"],
                            artifacts=tuple(inputs.outputs.get("artifacts", ()))),
        compare=_compare_spec(record.compare),
        resources=Resources(cpus=float(resources["cpus"]), memory_bytes=int(resources["memory_bytes"]),
                            timeout_s=float(resources["timeout_s"]), pids=int(resources["pids"])),
        hermetic=Hermetic(**inputs.hermetic) if inputs.hermetic else Hermetic(),
        source=Path(inputs.spec_path), source_sha256=inputs.spec_sha256,
    )
