"""What goes into an image build: the context's files as the engine receives them, the
Dockerfile, the build arguments and the ID of each base image.

A build's inputs are written into the image it makes (a label, so they travel with the image
into archives and registries, and cannot change without changing its ID). A spec whose pinned
image is present and whose inputs still hash the same runs that image without a rebuild; when
they differ, the difference names the files, arguments or bases that changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import docker.errors
import docker.utils.build

from orchestrator.errors import InfrastructureError
from orchestrator.spec.model import ImageBuild

LABEL_BUILD_INPUTS = "io.reprun.build-inputs"
# Past this many files the label keeps one hash of them all: a label is read on every run.
MAX_NAMED_FILES = 5000
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-+]([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(frozen=True)
class BuildInputs:
    files: dict[str, str] | None    # path in the context -> "sha256 mode" (a link: "-> target")
    files_sha256: str               # one hash over `files`, also when they are too many to keep
    dockerfile: str
    args: dict[str, str]
    bases: dict[str, str | None]    # each FROM image as the build reads it -> its ID (None: absent)

    @property
    def sha256(self) -> str:
        summary = {"files": self.files_sha256, "dockerfile": self.dockerfile,
                   "args": self.args, "bases": self.bases}
        return hashlib.sha256(_canonical(summary).encode()).hexdigest()

    def to_label(self) -> str:
        return _canonical({"schema": 1, "sha256": self.sha256, "files": self.files,
                           "files_sha256": self.files_sha256, "dockerfile": self.dockerfile,
                           "args": self.args, "bases": self.bases})

    @classmethod
    def from_label(cls, text: Any) -> "BuildInputs | None":
        """The inputs an image was built from, or None when it does not say (an image built
        by an older reprun, or a label that is not ours)."""
        try:
            data = json.loads(text) if isinstance(text, str) else None
            if not isinstance(data, dict) or data.get("schema") != 1:
                return None
            files = data["files"]
            inputs = cls(files=None if files is None else _strings(files),
                         files_sha256=str(data["files_sha256"]),
                         dockerfile=str(data["dockerfile"]), args=_strings(data["args"]),
                         bases={str(k): (None if v is None else str(v))
                                for k, v in dict(data["bases"]).items()})
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return inputs if inputs.sha256 == data.get("sha256") else None

    def changes_since(self, old: "BuildInputs") -> list[str]:
        """What differs from `old`, in words, most telling first."""
        changes = []
        if self.files is not None and old.files is not None:
            for path in sorted(self.files.keys() | old.files.keys()):
                before, now = old.files.get(path), self.files.get(path)
                if before is None:
                    changes.append(f"{path} was added")
                elif now is None:
                    changes.append(f"{path} was removed")
                elif before.split()[0] != now.split()[0]:
                    changes.append(f"{path} changed")
                elif before != now:
                    changes.append(f"{path} changed mode")
        elif self.files_sha256 != old.files_sha256:
            changes.append("files of the build context changed (too many to name)")
        if self.dockerfile != old.dockerfile:
            changes.append(f"the Dockerfile is now {self.dockerfile} (was {old.dockerfile})")
        for name in sorted(self.args.keys() | old.args.keys()):
            if self.args.get(name) != old.args.get(name):
                changes.append(f"the build argument {name} is now "
                               f"{_shown(self.args.get(name))} (was {_shown(old.args.get(name))})")
        for ref in sorted(self.bases.keys() | old.bases.keys()):
            if self.bases.get(ref) != old.bases.get(ref):
                changes.append(f"the base image {ref} is now {_shown(self.bases.get(ref))} "
                               f"(was {_shown(old.bases.get(ref))})")
        return changes or ["nothing it records (the image was made by another build)"]


def build_inputs(client, build: ImageBuild, leave_out: Iterable[Path] = ()) -> BuildInputs:
    """The inputs of `build` as they are now, with its bases as this engine holds them.
    `leave_out`: reprun's own files that may sit inside the context (the spec, which `lock`
    rewrites, and the store, which every run writes), so that they never make a build stale."""
    try:
        files = context_files(build.context, build.dockerfile, leave_out)
        dockerfile_text = (build.context / build.dockerfile).read_text(encoding="utf-8",
                                                                       errors="replace")
    except OSError as exc:
        raise InfrastructureError(f"cannot read the build context {build.context}: "
                                  f"{exc.strerror or exc}") from None
    files_sha256 = hashlib.sha256(_canonical(files).encode()).hexdigest()
    bases = {ref: _image_id(client, ref)
             for ref in base_references(dockerfile_text, dict(build.args))}
    return BuildInputs(files=files if len(files) <= MAX_NAMED_FILES else None,
                       files_sha256=files_sha256, dockerfile=build.dockerfile,
                       args=dict(build.args), bases=bases)


def context_files(context: Path, dockerfile: str,
                  leave_out: Iterable[Path] = ()) -> dict[str, str]:
    """Each file the engine receives as the build context (.dockerignore applied, as the
    Docker SDK applies it), with its content hash and mode; a link by its target, unfollowed,
    as the engine receives it."""
    patterns = []
    ignore = context / ".dockerignore"
    if ignore.is_file():
        patterns = [line.strip() for line in ignore.read_text(errors="replace").splitlines()
                    if line.strip() and not line.strip().startswith("#")]
    skipped = tuple(_relative_inside(Path(p), context) for p in leave_out)
    skipped = tuple(s for s in skipped if s)
    files = {}
    for relative in docker.utils.build.exclude_paths(str(context), patterns,
                                                      dockerfile=dockerfile):
        if any(relative == s or relative.startswith(s + "/") for s in skipped):
            continue
        path = context / relative
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode):
            files[relative] = f"-> {os.readlink(path)}"
        elif stat.S_ISREG(info.st_mode):
            files[relative] = f"{_file_sha256(path)} {stat.S_IMODE(info.st_mode):o}"
    return dict(sorted(files.items()))


def _relative_inside(path: Path, context: Path) -> str | None:
    try:
        return path.resolve().relative_to(context.resolve()).as_posix()
    except (ValueError, OSError, RuntimeError):
        return None


def base_references(dockerfile: str, args: dict[str, str]) -> list[str]:
    """The images the Dockerfile's FROM lines name, with ARG defaults and build arguments
    filled in; earlier stages and `scratch` are not images."""
    values: dict[str, str] = {}
    stages: set[str] = set()
    references: list[str] = []
    seen_from = False
    for line in _instructions(dockerfile):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not seen_from:     # only ARGs before the first FROM reach FROM
            name, equals, default = rest.strip().partition("=")
            values[name] = args.get(name, default.strip().strip("\"'") if equals else "")
        elif word == "FROM":
            seen_from = True
            parts = [part for part in rest.split() if not part.startswith("--")]
            if not parts:
                continue
            image = _substitute(parts[0], values)
            if image.lower() not in stages and image != "scratch" and image not in references:
                references.append(image)
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
    return references


def _instructions(dockerfile: str) -> list[str]:
    """Instructions with continuation lines joined and comments left out."""
    lines, current = [], ""
    for raw in dockerfile.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    if current:
        lines.append(current.strip())
    return lines


def _substitute(text: str, values: dict[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        value = values.get(name, "")
        if match.group(2) is not None and not value:
            return match.group(2)
        return value
    return _VARIABLE.sub(one, text)


def _image_id(client, reference: str) -> str | None:
    try:
        return client.images.get(reference).id
    except docker.errors.ImageNotFound:
        return None         # the build pulls it
    except docker.errors.APIError:
        return None         # a reference the engine cannot parse: the build will say so


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _strings(mapping: Any) -> dict[str, str]:
    if not isinstance(mapping, dict):
        raise TypeError("not a mapping")
    return {str(key): str(value) for key, value in mapping.items()}


def _shown(value: str | None) -> str:
    return "absent" if value is None else value


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
