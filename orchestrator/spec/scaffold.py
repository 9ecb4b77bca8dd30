"""`reprun init`: a first spec for one's own repository, from a Dockerfile and a dataset path,
with a comment on every key so that the file explains itself."""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UsageError
from orchestrator.spec.load import load_spec
from orchestrator.spec.model import DEFAULT_SHM_BYTES

DEFAULT_SPEC = "reprun.yaml"
DEFAULT_COMMAND = "python3 train.py --seed {seed}"


@dataclass(frozen=True)
class Scaffold:
    """What `reprun init` was asked for, as the user gave it."""
    output: Path
    dockerfile: Path
    dataset: Path | None
    name: str | None = None
    command: str = DEFAULT_COMMAND


def write_scaffold(request: Scaffold) -> Path:
    """Write the spec (never over an existing file) and check it reads as a spec; the pins are
    left for `lock`. UsageError for a request no spec can be made from. Where the build
    context holds the store, .dockerignore gains it (see `keep_store_out_of_the_build`)."""
    output = request.output.absolute()
    if output.exists() or output.is_symlink():
        raise UsageError(f"{request.output} already exists; reprun init never overwrites a "
                         "file. Give another name with --output, or edit that spec.")
    folder = output.parent
    if not folder.is_dir():
        raise UsageError(f"the folder {folder} of {request.output} does not exist.")
    dockerfile = _existing(request.dockerfile, "Dockerfile", want_file=True)
    dataset = _existing(request.dataset, "dataset") if request.dataset is not None else None
    try:
        command = shlex.split(request.command)
    except ValueError as exc:
        raise UsageError(f"the command {request.command!r} cannot be split into arguments "
                         f"({exc}); quote it as a shell would.") from None
    if not command:
        raise UsageError("the command is empty; give the program that trains, such as "
                         f"--command '{DEFAULT_COMMAND}'.")
    text = spec_text(name=request.name or name_from(folder),
                     context=_relative(dockerfile.parent, folder),
                     dockerfile=dockerfile.name,
                     dataset=_relative(dataset, folder) if dataset is not None else None,
                     command=command)
    try:
        with open(output, "x", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {request.output}: {exc.strerror or exc}") from None
    try:
        load_spec(output, require_pins=False)
    except Exception:
        output.unlink(missing_ok=True)      # a spec that does not read is no start
        raise
    return output


def keep_store_out_of_the_build(context: Path, store: Path) -> Path | None:
    """Add the store to the context's .dockerignore when the context holds it: otherwise every
    build sends the engine every run's outputs. The .dockerignore written, or None."""
    try:
        inside = store.absolute().relative_to(context.absolute()).as_posix()
    except ValueError:
        return None
    ignore = context / ".dockerignore"
    lines = ignore.read_text(errors="replace").splitlines() if ignore.is_file() else []
    if any(line.strip().rstrip("/") == inside for line in lines):
        return None
    prefix = "" if not lines or ignore.read_text(errors="replace").endswith("\n") else "\n"
    with open(ignore, "a", encoding="utf-8") as handle:
        handle.write(f"{prefix}# reprun's store: run records and outputs, not build inputs\n"
                     f"{inside}/\n")
    return ignore


def name_from(folder: Path) -> str:
    """A spec name (lowercase letters, digits, dashes) from the repository's folder name."""
    name = re.sub(r"[^a-z0-9]+", "-", folder.name.lower()).strip("-")
    return name or "job"


def spec_text(*, name: str, context: str, dockerfile: str, dataset: str | None,
              command: list[str]) -> str:
    """The spec, each key with what it means; values quoted as JSON, which YAML reads alike."""
    q = json.dumps
    lines = [
        "# A reprun run spec, written by `reprun init`. Every key is described in reprun's",
        "# docs/spec.md; `reprun validate` checks this file, `reprun lock` refreshes its pins.",
        _line("version: 1", "the spec format"),
        _line(f"name: {q(name)}", "runs and baselines belong to this name"),
        _line("image:", "the container the job trains in"),
        "  build:",
        _line(f"    context: {q(context)}", "the folder sent to the engine to build"),
    ]
    if dockerfile != "Dockerfile":
        lines.append(_line(f"    dockerfile: {q(dockerfile)}", "inside the context"))
    lines.append(_line("  digest: null", "the image ID it built; `reprun lock` fills it in"))
    if dataset is not None:
        lines += [
            _line("dataset:", "mounted read-only; leave it out if the job makes its data"),
            _line(f"  path: {q(dataset)}", "a file or folder, relative to this spec"),
            _line("  sha256: null", "its checksum; `reprun lock` fills it in"),
            _line("  mount: /data", "where the job finds it"),
        ]
    else:
        lines += [
            _line("# dataset:", "the data the job reads, mounted read-only; add it with"),
            _line("#   path: data", "a path relative to this spec, then run `reprun lock`"),
        ]
    lines += [
        _line("seed: 42", "the job gets it as {seed} and as REPRUN_SEED"),
        "# What runs in the container: {seed} and {params.NAME} are filled in; {{ }} are braces.",
        f"command: [{', '.join(q(argument) for argument in command)}]",
        _line("params: {}", "values the command names as {params.NAME}"),
        _line("# workdir: /out", "the job's working folder (default: the image's WORKDIR)"),
        "outputs:",
        _line("  dir: /out", "the job writes its results here"),
        _line("  metrics: metrics.json", "a JSON object of numbers, inside dir"),
        _line("  artifacts: []", 'files to hash and compare, such as ["*.pt"]'),
        "compare:",
        _line("  metrics: {default: exact}", "per metric: exact, ignore, {abs: X} or {rel: X}"),
        _line("  artifacts: bitwise", "or ignore"),
        "resources:",
        _line("  cpus: 1", "also the thread count of OpenMP, BLAS and friends"),
        "  memory: 2g",
        "  timeout: 30m",
        _line(f"  shm: {DEFAULT_SHM_BYTES >> 30}g", "/dev/shm, where DataLoader workers pass batches"),
        _line("  # gpus: 1", "a count, all, or device IDs; refused where there are none"),
        _line("hermetic:", "the strict defaults; a relaxed one is recorded with each run"),
        "  network: none",
        "  read_only_root: true",
        '  user: "65534:65534"',
    ]
    return "\n".join(lines) + "\n"


def _line(code: str, comment: str) -> str:
    """A line with its comment lined up with the others (one space past a long value)."""
    return f"{code:<25} # {comment}"


def _existing(path: Path, what: str, *, want_file: bool = False) -> Path:
    resolved = path.absolute()
    if not resolved.exists():
        raise UsageError(f"there is no {what} at {path}.")
    if want_file and not resolved.is_file():
        raise UsageError(f"the {what} {path} is not a file.")
    return resolved


def _relative(path: Path, folder: Path) -> str:
    try:
        return path.relative_to(folder).as_posix() or "."
    except ValueError:
        raise UsageError(f"{path} is not inside {folder}, where the spec goes: a spec names "
                         "its build context and dataset relative to itself, inside the "
                         "repository.") from None
