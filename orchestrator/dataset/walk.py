"""Finding a dataset's files as `find . -type f` lists them, refusing what would escape the pin."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, NamedTuple

from orchestrator.errors import SpecError

LISTED_PER_KIND = 20               # names listed per kind (added, removed, links …) in a refusal


class FoundFile(NamedTuple):     # tuples, not dataclasses: there is one per file, and they add up
    rel: bytes          # "./a/b" (a single-file dataset: its name)
    abs: bytes
    st: os.stat_result


def resolve_dataset(path: Path) -> tuple[bytes, os.stat_result]:
    # Resolved like `cd DIR` and `sha256sum FILE` would: the dataset path itself may be a link.
    try:
        root = os.fsencode(os.path.realpath(path, strict=True))
        return root, os.stat(root)
    except FileNotFoundError:
        raise SpecError(f"the dataset {path} does not exist",
                        details=["Check dataset.path in the spec; it is relative to the spec file."]) from None
    except OSError as exc:
        raise SpecError(f"the dataset {path} cannot be read: {exc.strerror}") from None


def _inside(target: bytes, root: bytes) -> bool:
    return root == b"/" or target == root or target.startswith(root + b"/")


def walk_dataset(path: Path, root: bytes) -> Iterator[FoundFile]:
    """Regular files under root as `find . -type f` lists them; refuses links that leave it.

    A link that resolves outside the dataset would be dangling (or worse, a host file) once the
    folder is mounted into the container, and its target is not covered by the pin. The refusal
    comes after the last file, so that it can name every such link.
    """
    escaping: list[tuple[str, str]] = []
    pending = [b"."]
    while pending:
        rel_dir = pending.pop()
        abs_dir = root + rel_dir[1:]
        try:
            with os.scandir(abs_dir) as listing:
                for entry in listing:
                    rel = rel_dir + b"/" + entry.name
                    # Regular files first: they are nearly every entry, and one test settles them.
                    if entry.is_file(follow_symlinks=False):
                        yield FoundFile(rel, entry.path, entry.stat(follow_symlinks=False))
                    elif entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if not _inside(target, root):
                            escaping.append((os.fsdecode(rel), os.fsdecode(os.readlink(entry.path))))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(rel)
        except OSError as exc:
            raise SpecError(f"the dataset folder {os.fsdecode(abs_dir)} cannot be listed: "
                            f"{exc.strerror}") from None
    if escaping:
        link, target = escaping[0]
        raise SpecError(
            f"the dataset {path} contains a symbolic link that leads outside it: {link} -> {target}",
            details=[f"{link} -> {target}" for link, target in escaping[:LISTED_PER_KIND]]
            + and_more(len(escaping), "links")
            + ["Copy the target into the dataset folder, or point dataset.path at a folder "
               "that contains it."])


def and_more(count: int, what: str) -> list[str]:
    return [f"... and {count - LISTED_PER_KIND} more {what}"] if count > LISTED_PER_KIND else []
