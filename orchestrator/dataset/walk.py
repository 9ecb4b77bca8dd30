"""Finding a dataset's files as `find -L . -type f` lists them, refusing what the pin cannot cover."""
from __future__ import annotations

import errno
import os
import stat
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
    """The files under root as `find -L . -type f` lists them: a symbolic link is listed by its
    own name with what it leads to, as the job reads it (a linked folder's files under the
    link's path), so re-pointing a link changes the pin.

    Refused, after the last file so that every one is named: a link that resolves outside the
    dataset (dangling, or worse a host file, once the folder is mounted into the container,
    and its target not covered by the pin), a link that leads nowhere or into a loop, and a
    FIFO, socket or device (`find -type f` would skip them silently; a job reading a FIFO hangs).
    """
    escaping: list[tuple[str, str]] = []
    unusable: list[str] = []
    root_st = os.stat(root)
    # (name as listed, where it is, the (device, inode) of every folder above it): find -L
    # refuses to enter a folder that is one of its own ancestors, and so does this walk.
    pending: list[tuple[bytes, bytes, frozenset]] = [(b".", root, frozenset({_dir_id(root_st)}))]
    while pending:
        rel_dir, abs_dir, above = pending.pop()
        try:
            with os.scandir(abs_dir) as listing:
                for entry in listing:
                    rel = rel_dir + b"/" + entry.name
                    # Regular files first: they are nearly every entry, and one test settles them.
                    if entry.is_file(follow_symlinks=False):
                        yield FoundFile(rel, entry.path, entry.stat(follow_symlinks=False))
                    elif entry.is_dir(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        pending.append((rel, entry.path, above | {_dir_id(st)}))
                    elif entry.is_symlink():
                        found = _followed(entry.path, rel, root, above, escaping, unusable)
                        if isinstance(found, FoundFile):
                            yield found
                        elif found is not None:
                            pending.append(found)
                    else:
                        unusable.append(f"{os.fsdecode(rel)} ({_kind(entry.stat(follow_symlinks=False))})")
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
    if unusable:
        raise SpecError(
            f"the dataset {path} holds something a job cannot read as a file: {unusable[0]}",
            details=unusable[:LISTED_PER_KIND] + and_more(len(unusable), "entries")
            + ["A dataset holds regular files and folders, and links to them inside it; "
               "remove these or point dataset.path at a folder without them."])


def _dir_id(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _followed(link: bytes, rel: bytes, root: bytes, above: frozenset, escaping: list,
              unusable: list) -> FoundFile | tuple | None:
    """What a link inside the dataset leads to: a file to hash, a folder to walk, or None once
    the reason it cannot be is noted."""
    written = os.fsdecode(os.readlink(link))
    target = os.fsencode(os.path.realpath(link))
    if not _inside(target, root):
        escaping.append((os.fsdecode(rel), written))
        return None
    try:
        st = os.stat(target)
    except OSError as exc:
        why = "a loop of links" if exc.errno == errno.ELOOP else "it leads nowhere"
        unusable.append(f"{os.fsdecode(rel)} -> {written} ({why})")
        return None
    if stat.S_ISREG(st.st_mode):
        return FoundFile(rel, target, st)
    if stat.S_ISDIR(st.st_mode):
        if _dir_id(st) in above:
            unusable.append(f"{os.fsdecode(rel)} -> {written} (a loop: it leads to a folder "
                            "that holds it)")
            return None
        return rel, target, above | {_dir_id(st)}
    unusable.append(f"{os.fsdecode(rel)} -> {written} ({_kind(st)})")
    return None


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    return ("a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device"
            if stat.S_ISBLK(mode) else "not a regular file")


def and_more(count: int, what: str) -> list[str]:
    return [f"... and {count - LISTED_PER_KIND} more {what}"] if count > LISTED_PER_KIND else []
