"""What a job leaves behind: its metrics file, its artifacts, its log."""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.records import Artifact

MAX_METRICS_BYTES = 10 * 1024 * 1024
MAX_METRICS_DEPTH = 32
# What a spec's outputs.max_size is when it does not say: the artifacts hashed after a run.
DEFAULT_MAX_ARTIFACT_BYTES = 4 << 30


class OutputsError(Exception):
    """The job's outputs are not usable; the message says what is wrong (exit 5)."""


def read_metrics(path: Path, *, root: Path | None = None) -> dict[str, Any]:
    """Metrics as flat dotted names → floats. Raises OutputsError with a clear sentence.

    `root`: the outputs folder; a path that leaves it through a linked folder is refused."""
    if path.is_symlink():
        raise OutputsError(f"the metrics file {path.name} is a symlink; a job must write it as a file")
    # realpath, not Path.resolve: a loop of links in the way must be a refusal, not a crash.
    if root is not None and Path(os.path.realpath(root)) not in Path(os.path.realpath(path)).parents:
        raise OutputsError(f"the metrics file {path.name} lies behind a symlinked folder that "
                           "leads outside the outputs folder; refused")
    try:
        info = path.stat()
    except FileNotFoundError:
        raise OutputsError(f"the job wrote no metrics file ({path.name} is missing from its outputs)") from None
    except OSError as exc:
        raise OutputsError(f"the metrics file {path.name} cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        # A FIFO would block the read forever; a device could be anything.
        raise OutputsError(f"the metrics file {path.name} is not a regular file")
    size = info.st_size
    if size > MAX_METRICS_BYTES:
        raise OutputsError(f"the metrics file {path.name} is {size} bytes, over the "
                           f"{MAX_METRICS_BYTES}-byte limit")
    with open(path, "rb") as handle:
        raw = handle.read(MAX_METRICS_BYTES + 1)   # it may still be growing
    if len(raw) > MAX_METRICS_BYTES:
        raise OutputsError(f"the metrics file {path.name} is over the {MAX_METRICS_BYTES}-byte limit")
    return parse_metrics(raw, path.name)


def parse_metrics(raw: bytes, name: str) -> dict[str, Any]:
    """The metrics file's bytes (`name` is its file name) as flat dotted names → values: a
    float, a string, a boolean, None, or a list of floats (a curve)."""
    if len(raw) > MAX_METRICS_BYTES:
        raise OutputsError(f"the metrics file {name} is over the {MAX_METRICS_BYTES}-byte limit")
    try:
        document = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise OutputsError(f"the metrics file {name} is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise OutputsError(f"the metrics file {name} is not valid JSON ({_short(exc)})") from None
    if not isinstance(document, dict):
        raise OutputsError(f"the metrics file {name} must hold a JSON object of metrics, "
                           f"not a {type(document).__name__}")
    metrics: dict[str, float] = {}
    problems: list[str] = []
    _flatten(document, "", metrics, problems, depth=0)
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise OutputsError(f"the metrics file {name} cannot be read as metrics: {shown}")
    return metrics


def _flatten(node: dict, prefix: str, into: dict[str, float], problems: list[str], depth: int) -> None:
    if depth > MAX_METRICS_DEPTH:
        problems.append(f"{prefix or '(top)'} nests deeper than {MAX_METRICS_DEPTH} levels")
        return
    for key, value in node.items():
        name = f"{prefix}{_escaped(key)}"
        if isinstance(value, dict):
            _flatten(value, name + ".", into, problems, depth + 1)
        elif value is None or isinstance(value, (bool, str)):
            into[name] = value          # compared exactly; a text is no reason to fail a run
        elif isinstance(value, list):
            into[name] = _curve(value)
        else:
            into[name] = _number(value)


def _number(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:
        # An int beyond float range (JSON allows any length): its sign is what is left.
        return math.inf if value > 0 else -math.inf


def _curve(values: list) -> list[float] | str:
    """A list of numbers is a curve; any other list is kept as its JSON text, compared exactly."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return [_number(v) for v in values]
    return json.dumps(values, sort_keys=True)


def _escaped(key: str) -> str:
    """A metric name with each lone surrogate ("\\ud800" in JSON, which no UTF-8 text can hold)
    written out as the six characters `\\ud800`: stored, printed and compared as that text."""
    if not any("\ud800" <= c <= "\udfff" for c in key):
        return key
    return "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in key)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, Exception) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _matches(rel: str, pattern: str) -> bool:
    """An artifact pattern matches a file's path under the outputs folder, or its name."""
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(rel.rsplit("/", 1)[-1], pattern)


def unmatched_patterns(patterns: tuple[str, ...], artifacts: dict[str, Artifact]) -> list[str]:
    """The artifact patterns no file matched: a typo such as *.pt for *.pth would otherwise
    leave a model out of every comparison unseen."""
    return [p for p in patterns if not any(_matches(rel, p) for rel in artifacts)]


@dataclass(frozen=True)
class FoundArtifacts:
    artifacts: dict[str, Artifact]
    # Symbolic links a pattern matched, as "name -> target": never followed or hashed, so a
    # link into the dataset (ln -s /data/train.pt out/) costs the run nothing; said in its record.
    links: tuple[str, ...] = ()

    def notes(self) -> list[str]:
        return [f"the artifact {link} is a symbolic link; links are neither followed nor "
                "compared" for link in self.links]


def hash_artifacts(out_dir: Path, patterns: tuple[str, ...], *,
                   max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> dict[str, Artifact]:
    return find_artifacts(out_dir, patterns, max_bytes=max_bytes).artifacts


def find_artifacts(out_dir: Path, patterns: tuple[str, ...], *,
                   max_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES) -> FoundArtifacts:
    """Every regular file under the outputs folder whose relative path matches a pattern, hashed
    once their sizes add up to no more than max_bytes (outputs.max_size): an 8 GiB sparse file
    written in half a second must not keep reprun hashing for a minute after the job's timeout.

    Symbolic links are never followed: a link is listed, not hashed, wherever it points; a loop
    of links is refused, as no job means one as an output.
    """
    matched: list[tuple[str, Path, int]] = []
    links: list[str] = []
    for dirpath, dirnames, filenames in os.walk(out_dir):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            rel = path.relative_to(out_dir).as_posix()
            if not any(_matches(rel, p) for p in patterns):
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                raise OutputsError(f"the artifact {shown} has a name that is not UTF-8; a record "
                                   "could not name it unambiguously") from None
            try:
                info = os.lstat(path)
            except OSError as exc:
                raise OutputsError(f"the artifact {rel} cannot be read ({exc.strerror})") from None
            if stat.S_ISLNK(info.st_mode):
                links.append(_link(path, rel))
            elif stat.S_ISREG(info.st_mode):
                matched.append((rel, path, info.st_size))
    total = sum(size for _, _, size in matched)
    if total > max_bytes:
        biggest = sorted(matched, key=lambda m: -m[2])[:3]
        raise OutputsError(
            f"the artifacts add up to {total} bytes, over the {max_bytes}-byte limit of "
            f"outputs.max_size, so they were not hashed (largest: "
            + ", ".join(f"{rel} {size} bytes" for rel, _, size in biggest)
            + "); raise outputs.max_size in the spec if the job really writes that much")
    artifacts = {}
    for rel, path, _ in matched:
        sha, size = sha256_file(path)
        artifacts[rel] = Artifact(sha256=sha, size=size)
    return FoundArtifacts(artifacts, tuple(links))


def _link(path: Path, rel: str) -> str:
    target = os.readlink(path)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputsError(f"the artifact {rel} is a symbolic link loop ({rel} -> {target}); "
                               "it leads to no file") from None
    return f"{rel} -> {target}"
