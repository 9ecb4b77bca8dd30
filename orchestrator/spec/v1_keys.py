"""The keys of a version 1 spec, one table per mapping, and the checks that span keys.

The JSON Schema next to this module (spec-v1.schema.json) describes the same format for editors
and other tools; the tests keep the two in agreement.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import yaml

from orchestrator.compare.artifacts.policy import BITWISE, IGNORE, PolicyError, parse_policy
from orchestrator.compare.artifacts.policy import HOW_TO_WRITE as POLICY_HOW
from orchestrator.spec.model import (ALL_GPUS, SPEC_VERSION, CompareSpec, DatasetSpec, GpuRequest,
                                     Hermetic, ImageBuild, ImageSpec, OutputsSpec, Resources,
                                     Tolerance, substitute_placeholders)
from orchestrator.spec.units import MAX_INT, parse_duration, parse_size
from orchestrator.spec.yaml_reader import (ARGUMENT, BOOLEAN, FAILED, INTEGER, NUMBER, SCALAR,
                                           STRING, Key, Problem, Read, Reader, Reported,
                                           ValueType, complete, construct, describe, in_range,
                                           leaf, list_of, matching, named, one_of, optional_pin,
                                           scalar, section, short, value_at)

SCHEMA_FILE = Path(__file__).with_name("spec-v1.schema.json")
MAX_CPUS = 1024
MAX_GPUS = 1024
MAX_TIMEOUT_S = 365 * 86400         # larger waits overflow timers in the engine client

# Patterns shared in meaning with spec-v1.schema.json (Python and ECMA-262 read them alike).
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DATASET_SHA256_PATTERN = r"^(sha256:)?[0-9a-f]{64}$"
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_REF_PATTERN = rf"^{_REPOSITORY}(?::{_TAG})?@sha256:[0-9a-f]{{64}}$"
_UNPINNED_REF = rf"^{_REPOSITORY}(?::{_TAG})?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV_PREFIX = "REPRUN_"
CONTAINER_PATH_PATTERN = r"^/(?!(.*/)?\.\.(/|$)).+$"
RELATIVE_PATH_PATTERN = r"^(?!/)(?!(.*/)?\.\.(/|$)).+$"
GPU_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"     # an index, or a GPU-/MIG- UUID
USER_PATTERN = r"^[0-9]{1,10}:[0-9]{1,10}$"


def _image_ref(value: str) -> str:
    if re.fullmatch(IMAGE_REF_PATTERN, value):
        return value
    name, at, digest = value.partition("@")
    if not at and re.fullmatch(_UNPINNED_REF, value):
        tagged = ":" in value.rsplit("/", 1)[-1]
        raise Problem(f"{short(value)} has {'a tag but ' if tagged else ''}no digest",
                       "Run `reprun lock SPEC` to pin it, or add @sha256:<64 hex> to the reference")
    if at and not re.fullmatch(DIGEST_PATTERN, digest):
        raise Problem(f"has a malformed digest {short(digest)}",
                       "A digest is sha256: followed by 64 lowercase hex digits")
    raise Problem(f"{short(value)} is not a valid image reference",
                   "Write it as REGISTRY/NAME[:TAG]@sha256:<64 hex>")


def _dataset_sha256(value: str) -> str:
    if not re.fullmatch(DATASET_SHA256_PATTERN, value):
        raise Problem(f"{short(value)} is not a SHA-256 checksum",
                       "Give the 64 lowercase hex digits that sha256sum prints, "
                       "optionally after sha256:")
    return value.removeprefix("sha256:")


def _size(value: int | str) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        raise Problem(f"{short(str(value))} is not a size",
                       "Write a positive size such as 2g, 512m or 1024k, or a number of bytes")
    return in_range(1, MAX_INT)(size)


def _tmp_size(value: int | str) -> str:
    _size(value)
    return str(value)


def _timeout(value: int | float | str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise Problem(f"{short(str(value))} is not a duration",
                       "Write a positive duration such as 90s, 30m or 2h, or a number of seconds")
    return in_range(0, MAX_TIMEOUT_S, exclusive_low=True)(seconds)


def _cpus(value: int | float) -> float:
    return float(in_range(0, MAX_CPUS, exclusive_low=True)(value))


def _container_path(value: str) -> str:
    if isinstance(value, str) and posixpath.normpath(value) in ("/", "//"):
        raise Problem("'/' is the container's root, which the image itself fills",
                       "Write a folder of its own, such as /data")
    matching(CONTAINER_PATH_PATTERN, "is not an absolute path inside the container",
              "Write an absolute path without `..`, such as /data")(value)
    return posixpath.normpath(value)


def _relative_path(value: str) -> str:
    return matching(RELATIVE_PATH_PATTERN, "is not a relative path",
                     "Write a path relative to its folder, without a leading / or `..`")(value)


def _env_name(value: str) -> str:
    matching(ENV_NAME_PATTERN, "is not a valid environment variable name",
              "Use letters, digits and underscores, not starting with a digit")(value)
    if value.startswith(RESERVED_ENV_PREFIX):
        raise Problem(f"{short(value)} starts with {RESERVED_ENV_PREFIX}, which reprun reserves",
                       "Pick another name; reprun sets REPRUN_* variables itself")
    return value


def _repository_path(*, directory: bool) -> Read:
    """A host path relative to the spec file that must exist inside the repository."""
    kind = "a directory" if directory else "a file or directory"

    def read(reader: Reader, node: yaml.Node, where: str) -> Path:
        text = scalar(node, STRING)
        if not text or Path(text).is_absolute():
            raise Problem(f"{short(text)} is not a relative path",
                           "Give a path relative to the spec file, inside the repository")
        try:
            path = (reader.spec_dir / text).resolve()
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, RuntimeError, ValueError) as exc:
            raise Problem(f"{short(text)} cannot be resolved ({exc})",
                           "Check the path and any symbolic links on it") from None
        if not path.is_relative_to(reader.root):
            raise Problem(f"{short(text)} leaves the repository {reader.root} (it resolves "
                           f"to {path})", "Keep it inside the repository, next to the spec")
        if not exists or (directory and not is_dir):
            raise Problem(f"{short(text)} is not an existing {kind.removeprefix('a ')} "
                           f"(looked for {path})",
                           "Check the path; it is relative to the spec file")
        return path
    return read



# --- the format, one table per mapping ------------------------------------------------------

def _build_image_build(context: Path, dockerfile: str = "Dockerfile",
                       args: dict[str, str] | None = None) -> ImageBuild:
    if not (context / dockerfile).is_file():
        raise Problem(f"has no Dockerfile {dockerfile} in {context}",
                       "Add it, or set `dockerfile:` to its path inside the context")
    return ImageBuild(context=context, dockerfile=dockerfile, args=args or {})


_BUILD_KEYS = {
    "context": Key(_repository_path(directory=True), required=True,
                    example="context: ../images/sklearn"),
    "dockerfile": Key(leaf(STRING, _relative_path)),
    "args": Key(named(leaf(STRING, _env_name), leaf(STRING))),
}


def _build_image(ref: str | None = None, build: ImageBuild | None = None,
                 digest: str | None = None) -> ImageSpec:
    if ref is not None and build is not None:
        raise Problem("has both `ref` and `build`",
                       "Keep one: ref pulls a pinned image, build builds one from a Dockerfile")
    if ref is None and build is None:
        raise Problem("needs `ref` (a pinned image) or `build` (a Dockerfile to build)",
                       "Add one of them")
    if ref is not None and digest is not None:
        raise Problem("has `digest` next to `ref`",
                       "Remove digest; a ref carries its digest after @")
    return ImageSpec(ref=ref, build=build, digest=digest)


_IMAGE_KEYS = {
    "ref": Key(leaf(STRING, _image_ref)),
    "build": Key(section(_BUILD_KEYS, _build_image_build)),
    "digest": Key(optional_pin(leaf(STRING, matching(
        DIGEST_PATTERN, "is not an image ID",
        "An image ID is sha256: followed by 64 lowercase hex digits")))),
}

_DATASET_KEYS = {
    "path": Key(_repository_path(directory=False), required=True,
                 example="path: data/digits.csv"),
    "sha256": Key(optional_pin(leaf(STRING, _dataset_sha256))),
    "mount": Key(leaf(STRING, _container_path)),
}


def _read_dataset(reader: Reader, node: yaml.Node, where: str) -> DatasetSpec:
    values = complete(reader.mapping(node, _DATASET_KEYS, where))
    if values.get("sha256") is None and reader.require_pins:
        pin = value_at(node, "sha256")
        raise Problem("has no `sha256` pin", "Run `reprun lock SPEC` to fill it in, or add "
                      f"`sha256: <64 hex>` as printed by {_checksum_command(values['path'])}",
                      pin.start_mark if pin else None)
    return DatasetSpec(path=values["path"], sha256=values.get("sha256"),
                       mount=values.get("mount", DatasetSpec.mount))


def _checksum_command(path: Path) -> str:
    """The coreutils command that prints a dataset's pin: a folder's is its tree hash."""
    if path.is_dir():
        return (f"`(cd {path} && find -L . -type f -print0 | LC_ALL=C sort -z "
                "| xargs -0 sha256sum) | sha256sum`")
    return f"`sha256sum {path}`"


_OUTPUTS_KEYS = {
    "dir": Key(leaf(STRING, _container_path)),
    "metrics": Key(leaf(STRING, _relative_path)),
    "artifacts": Key(list_of(leaf(STRING, _relative_path))),
    "max_size": Key(leaf(ARGUMENT, _size)),
    "steps": Key(leaf(STRING, _relative_path)),
}


def _read_tolerance(reader: Reader, node: yaml.Node, where: str) -> Tolerance:
    how = "Write exact, ignore, {abs: 0.001} or {rel: 0.01}"
    if isinstance(node, yaml.MappingNode):
        bound = leaf(NUMBER, in_range(0))
        values = complete(reader.mapping(node, {"abs": Key(bound), "rel": Key(bound)}, where))
        if len(node.value) != 1:
            raise Problem("must have exactly one of `abs` or `rel`", how)
        if not values:
            raise Reported     # its one key was unknown, and said so
        (kind, value), = values.items()
        return Tolerance(kind, float(value))
    if not (isinstance(node, yaml.ScalarNode) and construct(node) in ("exact", "ignore")):
        raise Problem(f"must be a tolerance, not {describe(node)}", how)
    return Tolerance(node.value)


def _plain(reader: Reader, node: yaml.Node, where: str) -> Any:
    """A small policy value as plain data: scalars and mappings of them."""
    if isinstance(node, yaml.MappingNode):
        return complete({name: reader.value(value, _plain, f"{where}.{name}")
                         for name, _, value in reader.pairs(node, where)})
    return scalar(node, SCALAR)


def _read_artifact_policies(reader: Reader, node: yaml.Node, where: str) -> str | dict:
    """`bitwise`/`ignore` for all artifacts, or a mapping of pattern to policy, kept as written
    (the record carries it; compare/artifacts/policy.py reads it for every comparison)."""
    if isinstance(node, yaml.ScalarNode):
        return leaf(STRING, one_of(BITWISE, IGNORE))(reader, node, where)
    if not isinstance(node, yaml.MappingNode):
        raise Problem(f"must be bitwise, ignore or a mapping of artifact pattern to policy, "
                      f"not {describe(node)}", POLICY_HOW)

    def read_policy(reader: Reader, value: yaml.Node, at: str) -> Any:
        plain = _plain(reader, value, at)
        try:
            parse_policy(plain)
        except PolicyError as exc:
            # Without a pattern the sentence starts at its verb: the key path names the policy.
            raise Problem(exc.what.lstrip(": "), exc.how) from None
        return plain
    return named(leaf(STRING, matching(".+", "is empty", "Write a file name or glob")),
                 read_policy)(reader, node, where)


def _build_compare(metrics: dict[str, Tolerance] | None = None,
                   artifacts: str | dict = "bitwise",
                   test_examples: int | None = None) -> CompareSpec:
    return CompareSpec(metrics={"default": Tolerance("exact"), **(metrics or {})},
                       artifacts=artifacts, test_examples=test_examples)


_COMPARE_KEYS = {
    "metrics": Key(named(leaf(STRING, matching(".+", "is empty", "Name the metric")),
                           _read_tolerance)),
    "artifacts": Key(_read_artifact_policies),
    "test_examples": Key(leaf(INTEGER, in_range(1, MAX_INT))),
}

_GPU_COUNT = ValueType("a number of GPUs, `all` or a list of device IDs", (int, str),
                       "Write a count such as 1, `all`, or device IDs such as [0, 1]")


def _gpu_device_id(value: str | int | float) -> str:
    if isinstance(value, float):
        raise Problem(f"is the number {value}, not a device ID",
                      "Write a device index such as 0, or a UUID such as GPU-8f2b…")
    return matching(GPU_ID_PATTERN, "is not a GPU device ID",
                    "Write a device index such as 0, or a UUID as nvidia-smi -L prints it")(
                        str(value))


def _read_gpus(reader: Reader, node: yaml.Node, where: str) -> GpuRequest:
    if isinstance(node, yaml.SequenceNode):
        ids = list_of(leaf(ARGUMENT, _gpu_device_id), non_empty=True)(reader, node, where)
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise Problem(f"lists the device {repeated[0]} twice", "List each GPU once")
        return GpuRequest(device_ids=ids)
    value = scalar(node, _GPU_COUNT)
    if isinstance(value, str):
        if value != "all":
            raise Problem(f"is {short(value)}, not a number of GPUs",
                          "Write a count such as 1, `all`, or device IDs such as [0, 1]")
        return GpuRequest(count=ALL_GPUS)
    return GpuRequest(count=in_range(1, MAX_GPUS)(value))


_RESOURCES_KEYS = {
    "cpus": Key(leaf(NUMBER, _cpus)),
    "memory": Key(leaf(ARGUMENT, _size), attr="memory_bytes"),
    "timeout": Key(leaf(ARGUMENT, _timeout), attr="timeout_s"),
    "pids": Key(leaf(INTEGER, in_range(1, MAX_INT))),
    "gpus": Key(_read_gpus),
    "shm": Key(leaf(ARGUMENT, _size), attr="shm_bytes"),
}

_HERMETIC_KEYS = {
    "network": Key(leaf(STRING, one_of("none", "host"))),
    "read_only_root": Key(leaf(BOOLEAN)),
    "user": Key(leaf(STRING, matching(USER_PATTERN, "is not a numeric uid:gid",
                                          "Write it as 65534:65534"))),
    "tmp_size": Key(leaf(ARGUMENT, _tmp_size)),
}


def _version(value: int) -> int:
    if value != SPEC_VERSION:
        raise Problem(f"is {value}, but this reprun reads version {SPEC_VERSION}",
                       f"Write `version: {SPEC_VERSION}`")
    return value


_SPEC_KEYS = {
    "version": Key(leaf(INTEGER, _version), required=True, example="version: 1"),
    "name": Key(leaf(STRING, matching(NAME_PATTERN, "is not a valid name", "Use lowercase "
                 "letters, digits and dashes, starting with a letter or digit")),
                 required=True, example="name: digits-logreg"),
    "description": Key(leaf(STRING)),
    "image": Key(section(_IMAGE_KEYS, _build_image), required=True,
                  example="image: {ref: REGISTRY/NAME@sha256:<64 hex>}"),
    "dataset": Key(_read_dataset),
    "workdir": Key(leaf(STRING, _container_path)),
    "seed": Key(leaf(INTEGER, in_range(0, MAX_INT)), required=True, example="seed: 42"),
    "command": Key(list_of(leaf(ARGUMENT, str), non_empty=True), required=True,
                    example='command: [python3, /app/train.py, --seed, "{seed}"]'),
    "params": Key(named(leaf(STRING, matching(
        PARAM_NAME_PATTERN, "is not a valid parameter name",
        "Use letters, digits and underscores, not starting with a digit")), leaf(SCALAR))),
    "env": Key(named(leaf(STRING, _env_name), leaf(STRING))),
    "secrets": Key(list_of(leaf(STRING, _env_name))),
    "outputs": Key(section(_OUTPUTS_KEYS, OutputsSpec)),
    "compare": Key(section(_COMPARE_KEYS, _build_compare)),
    "resources": Key(section(_RESOURCES_KEYS, Resources)),
    "hermetic": Key(section(_HERMETIC_KEYS, Hermetic)),
}


def read_document(reader: Reader, node: yaml.Node, where: str) -> dict[str, Any]:
    """The RunSpec fields, with defaults for the optional sections and cross-key checks."""
    values = reader.mapping(node, _SPEC_KEYS, where)
    values = {"description": "", "dataset": None, "params": {}, "env": {}, "secrets": (),
              "outputs": OutputsSpec(), "workdir": None,
              "compare": _build_compare(), "resources": Resources(), "hermetic": Hermetic(),
              **values}
    _check_placeholders(reader, node, values["command"], values["params"])
    _check_mounts(reader, node, values["dataset"], values["outputs"])
    _check_secrets(reader, node, values["env"], values["secrets"])
    return complete(values)


def _check_secrets(reader: Reader, node: yaml.Node, env: Any, secrets: Any) -> None:
    if env is FAILED or secrets is FAILED:
        return
    for index, name in enumerate(secrets):
        item = value_at(node, "secrets").value[index]
        if name in env:
            reader.report(item.start_mark, f"secrets[{index}] {name} also has a value under env",
                          "Remove it from env: a secret's value is read from reprun's own "
                          "environment when the run starts, so it never sits in the spec file")
        elif name in secrets[:index]:
            reader.report(item.start_mark, f"secrets[{index}] {name} is listed twice",
                          "List each secret once")


def _check_placeholders(reader: Reader, node: yaml.Node, command: Any, params: Any) -> None:
    if command is FAILED or params is FAILED:
        return
    known = dict.fromkeys(["seed", *(f"params.{name}" for name in params)], "")
    for index, (argument, item) in enumerate(zip(command, value_at(node, "command").value)):
        try:
            substitute_placeholders(argument, known)
        except KeyError as exc:
            reader.report(item.start_mark, f"command[{index}] uses the unknown placeholder "
                          f"{{{exc.args[0]}}}", "Use {seed} or {params.NAME} with NAME defined "
                          "under params; write {{ and }} for literal braces")
        except ValueError as exc:
            reader.report(item.start_mark, f"command[{index}] has {exc}",
                          "Write {{ or }} for a literal brace")


def _check_mounts(reader: Reader, node: yaml.Node, dataset: Any, outputs: Any) -> None:
    if dataset is FAILED or outputs is FAILED or dataset is None:
        return
    mount, out = dataset.mount, outputs.dir
    if mount == out or mount.startswith(out.rstrip("/") + "/") or out.startswith(mount + "/"):
        located = value_at(node, "outputs", "dir") or value_at(node, "dataset", "mount") or node
        reader.report(located.start_mark, f"outputs.dir {out} overlaps dataset.mount {mount}",
                      "Give them separate folders; the dataset is mounted read-only")

