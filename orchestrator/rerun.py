"""Replaying a recorded run from its record alone.

The spec file may have changed or gone since; the record holds everything the run was given:
the image by digest (or ID), the dataset by hash, the seed, the rendered command, params, env,
limits and hermetic settings.

A record is data, not orders. Every field of it that drives execution goes through the spec's
own reader, with the spec's names, limits and ranges, so a record can ask for nothing a spec
could not. A record from an archive was written by someone else: it may not relax the hermetic
settings (network, root user, writable root) unless the caller allows each by name, it gets no
value from the caller's environment unless the caller names the variable, and its run is filed
as `<spec>@archive`, never under a spec of this store.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from orchestrator.compare.tolerance import parse_tolerances
from orchestrator.errors import SpecError, UsageError
from orchestrator.manifest.probes import REDACTED
from orchestrator.records import RunRecord
from orchestrator.spec.model import CompareSpec, ImageSpec, RunSpec
from orchestrator.spec.v1_keys import DIGEST_PATTERN, IMAGE_REF_PATTERN, read_document
from orchestrator.spec.yaml_reader import DOCUMENT, FAILED, START, Reader

ARCHIVE_ORIGIN = "archive"
WRITABLE_ROOT = "writable-root"
# Stands in for an image known only by its ID while the rest of the record is read as a spec.
_IMAGE_BY_ID = "reprun/recorded@sha256:" + "0" * 64


@dataclass(frozen=True)
class Trust:
    """What the caller of `rerun --from-archive` allows an archived record to ask for."""

    allow: frozenset[str] = frozenset()            # e.g. network=host, user=0:0, writable-root
    env_from_caller: frozenset[str] = frozenset()  # variables whose value the caller gives


def _literal(arg: str) -> str:
    """A recorded (already rendered) argument, protected from a second rendering."""
    return arg.replace("{", "{{").replace("}", "}}")


def _compare_spec(record: RunRecord) -> CompareSpec:
    try:
        tolerances = parse_tolerances(record.compare)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"the record of run {record.id} has tolerances reprun cannot read "
                         f"({exc}).") from None
    return CompareSpec(metrics={"default": tolerances.default, **tolerances.metrics},
                       artifacts=tolerances.artifacts, test_examples=tolerances.test_examples)


def spec_from_record(record: RunRecord, *, dataset_path: Path | None = None,
                     image_by_id: bool = False, archived: Trust | None = None) -> RunSpec:
    """The spec a record describes, read by the spec's own rules. `image_by_id` skips the
    registry (an archive loaded it); `archived` says the record came from an archive, and what
    its caller allows it."""
    inputs = record.inputs
    if not inputs.outputs:
        raise UsageError(f"run {record.id} was recorded by an older reprun that did not keep its "
                         "outputs settings; it cannot be replayed from its record.")
    # None: the run had no dataset (its job made its own data).
    dataset = (Path(dataset_path or inputs.dataset.path).absolute()
               if inputs.dataset is not None else None)
    if dataset is not None and not dataset.exists():
        raise UsageError(f"the dataset of run {record.id} is no longer at {dataset}; give its "
                         "new location with --dataset PATH (it is verified against the recorded "
                         "hash).")
    redacted = tuple(name for name, value in _mapping(inputs.env).items() if value == REDACTED)
    spec = _read_as_spec(record, dataset, redacted)
    if archived is not None:
        _refuse_unnamed_secrets(record, spec.secrets, archived)
        _refuse_relaxations(record, spec, archived)
    image = inputs.image
    if image.repo_digest and not image_by_id:
        image_spec = spec.image
    else:
        _check_image_id(record)
        image_spec = ImageSpec(ref=None, build=None, digest=image.id)
    return dataclasses.replace(
        spec, name=spec.name + (f"@{ARCHIVE_ORIGIN}" if archived is not None else ""),
        image=image_spec,
        dataset=dataclasses.replace(
            spec.dataset, path=dataset,
            file_name=Path(inputs.dataset.path).name if inputs.dataset.kind == "file" else None)
        if dataset is not None else None,
        compare=_compare_spec(record))


def _mapping(value) -> dict:
    return value if isinstance(value, dict) else {}


def _document(record: RunRecord, dataset: Path | None, redacted: tuple[str, ...]) -> dict:
    """The record's execution fields in the spec's own words."""
    inputs = record.inputs
    resources = _mapping(inputs.resources)
    image = inputs.image
    document = {
        "version": 1, "name": inputs.spec_name, "description": f"replay of run {record.id}",
        "image": {"ref": image.repo_digest or _IMAGE_BY_ID},
        **({"dataset": {"path": dataset.name, "sha256": inputs.dataset.sha256,
                        "mount": inputs.dataset.mount}} if dataset is not None else {}),
        "seed": inputs.seed,
        # Anything but a list of strings is left as it is, for the reader to name.
        "command": ([_literal(a) if isinstance(a, str) else a for a in inputs.command]
                    if isinstance(inputs.command, list) else inputs.command),
        "params": inputs.params,
        "env": {k: v for k, v in _mapping(inputs.env).items() if v != REDACTED},
        "secrets": list(redacted),
        # A spec never writes a key as null: an older record has no `steps`, a newer one None.
        "outputs": {k: v for k, v in _mapping(inputs.outputs).items() if v is not None},
        "resources": {"cpus": resources.get("cpus"), "memory": resources.get("memory_bytes"),
                      "timeout": resources.get("timeout_s"), "pids": resources.get("pids"),
                      **{key: resources[recorded] for key, recorded in
                         (("shm", "shm_bytes"), ("gpus", "gpus")) if recorded in resources}},
    }
    workdir = _mapping(inputs.container).get("workdir")
    if workdir is not None:
        document["workdir"] = workdir
    if inputs.hermetic:
        document["hermetic"] = inputs.hermetic
    if not document["secrets"]:
        del document["secrets"]
    return document


def _read_as_spec(record: RunRecord, dataset: Path | None, redacted: tuple[str, ...]) -> RunSpec:
    label = f"the record of run {record.id}"
    try:
        text = yaml.safe_dump(_document(record, dataset, redacted), sort_keys=False,
                              allow_unicode=False, width=1 << 16)
    except yaml.YAMLError as exc:
        raise UsageError(f"{label} holds values no spec can hold ({exc}).") from None
    # The dataset was found already, wherever it is now (--dataset): no repository to stay in.
    folder = dataset.parent if dataset is not None else Path.cwd()
    reader = Reader(label, folder, Path("/"), True)
    fields = FAILED
    try:
        node = reader.compose(text.encode())
        fields = reader.value(node, read_document, DOCUMENT) if node is not None else FAILED
    except RecursionError:
        reader.report(START, "the record is nested too deeply to read", "It is not a record")
    if reader.problems:
        error = reader.error()
        raise SpecError(f"{label} asks for what no spec may ask for, and was refused",
                        details=[_without_position(line, label) for line in error.details])
    return RunSpec(**fields, source=Path(str(record.inputs.spec_path)),
                   source_sha256=str(record.inputs.spec_sha256))


def _without_position(line: str, label: str) -> str:
    """A problem as the spec reader says it, without the line of a document the user never saw."""
    return re.sub(rf"^{re.escape(label)}:\d+:\d+: ", "", line)


def _check_image_id(record: RunRecord) -> None:
    image = record.inputs.image
    if not isinstance(image.id, str) or not re.fullmatch(DIGEST_PATTERN, image.id):
        raise SpecError(f"the record of run {record.id} names its image {image.id!r}, which is "
                        "not an image ID (sha256: and 64 hex digits); it was refused.")
    if image.repo_digest is not None and not (
            isinstance(image.repo_digest, str) and re.fullmatch(IMAGE_REF_PATTERN, image.repo_digest)):
        raise SpecError(f"the record of run {record.id} names its image by "
                        f"{image.repo_digest!r}, which is no pinned reference; it was refused.")


def relaxations(spec: RunSpec) -> list[str]:
    """The hermetic settings a spec relaxes, each in the words `--allow` takes."""
    hermetic = spec.hermetic
    relaxed = []
    if hermetic.network != "none":
        relaxed.append(f"network={hermetic.network}")
    uid, _, gid = hermetic.user.partition(":")
    if int(uid) == 0 or int(gid or 1) == 0:
        relaxed.append(f"user={hermetic.user}")
    if not hermetic.read_only_root:
        relaxed.append(WRITABLE_ROOT)
    return relaxed


def _refuse_relaxations(record: RunRecord, spec: RunSpec, trust: Trust) -> None:
    refused = [setting for setting in relaxations(spec) if setting not in trust.allow]
    if refused:
        flags = " ".join(f"--allow {setting}" for setting in refused)
        raise UsageError(f"the archived run {record.id} asks for relaxed hermetic settings "
                         f"({', '.join(refused)}), which reprun never takes from an archive on "
                         f"its own; pass {flags} if you trust the archive with them.")


def _refuse_unnamed_secrets(record: RunRecord, redacted: tuple[str, ...], trust: Trust) -> None:
    unnamed = [name for name in redacted if name not in trust.env_from_caller]
    if unnamed:
        flags = " ".join(f"--env-from-caller {name}" for name in unnamed)
        raise UsageError(f"the archived run {record.id} had the secret value"
                         f"{'s' if len(unnamed) > 1 else ''} {', '.join(unnamed)}, which were "
                         "never recorded; reprun gives an archive nothing from your environment "
                         f"unless you name it: pass {flags} to give the job your value.")


def trust_from_flags(allow: list[str], env_from_caller: list[str]) -> Trust:
    """`--allow` and `--env-from-caller` as given, each checked for what it can name."""
    for setting in allow:
        if not (setting == WRITABLE_ROOT or setting == "network=host"
                or re.fullmatch(r"user=[0-9]{1,10}:[0-9]{1,10}", setting)):
            raise UsageError(f"--allow {setting!r} names no hermetic setting; give network=host, "
                             f"user=UID:GID or {WRITABLE_ROOT}.")
    for name in env_from_caller:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UsageError(f"--env-from-caller {name!r} is not an environment variable name.")
    return Trust(allow=frozenset(allow), env_from_caller=frozenset(env_from_caller))


def replay_from_archive(path: Path, store, *, client, trust: Trust,
                        dataset_path: Path | None = None, progress=None):
    """The archive loaded and its record read as a spec, refused before its image reaches the
    engine when it asks for more than `trust` gives."""
    from orchestrator.store.archive import load_archive

    def accept(record: RunRecord, dataset: Path) -> RunSpec:
        return spec_from_record(record, dataset_path=dataset_path or dataset, image_by_id=True,
                                archived=trust)
    return load_archive(path, store, client=client, accept=accept, progress=progress)
