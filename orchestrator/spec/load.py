"""Loading spec files: read the bytes safely, check them against the v1 keys, and build the
RunSpec; every problem in a document is raised together as one SpecError."""
from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Iterable

from orchestrator.errors import SpecError
from orchestrator.spec.model import RunSpec
from orchestrator.spec.v1_keys import read_document
from orchestrator.spec.yaml_reader import DOCUMENT, FAILED, START, Reader

MAX_SPEC_BYTES = 1 << 20            # a spec is a page of YAML; anything bigger is not a spec


def load_spec(path: str | Path, *, require_pins: bool = True) -> RunSpec:
    """Read and check one spec file; raise SpecError listing every problem found."""
    label = str(path)
    data = read_spec_bytes(path)
    source = Path(path).resolve()       # read_spec_bytes resolved it already
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec {label} is invalid (1 problem)", details=[
            f"{label}:1:1: the file is larger than {MAX_SPEC_BYTES} bytes. "
            "A run spec is a short YAML file; point reprun at the spec, not at data."])
    reader = Reader(label, source.parent, _repository_root(source.parent), require_pins)
    fields = FAILED
    try:
        node = reader.compose(data)
        fields = reader.value(node, read_document, DOCUMENT) if node is not None else FAILED
    except RecursionError:
        reader.report(START, "the spec is nested too deeply to read", "Write a flat spec")
    if reader.problems:
        raise reader.error()
    return RunSpec(**fields, source=source, source_sha256=hashlib.sha256(data).hexdigest())


def read_spec_bytes(path: str | Path) -> bytes:
    """A spec file's bytes, at most one more than MAX_SPEC_BYTES; SpecError if it cannot be
    read (missing, a folder, no permission, a FIFO or device, which would block the read)."""
    label = str(path)
    try:
        source = Path(path).resolve()
        mode = os.stat(source).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # a folder: open() says so itself
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
        with open(source, "rb") as handle:
            return handle.read(MAX_SPEC_BYTES + 1)
    except (OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SpecError(f"cannot read spec {label}",
                        details=[f"{label}: {reason}. Check the path and its permissions."]) from None


def validate_specs(paths: Iterable[str | Path], *,
                   require_pins: bool = True) -> list[tuple[Path, SpecError | None]]:
    """Check each spec; the error (or None) for each path, in order. For `reprun validate`."""
    results: list[tuple[Path, SpecError | None]] = []
    for path in paths:
        try:
            load_spec(path, require_pins=require_pins)
            results.append((Path(path), None))
        except SpecError as exc:
            results.append((Path(path), exc))
    return results



def _repository_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start
