"""What a dataset's pin is: the sha256 of a file, or the tree hash of a folder.

The tree hash is defined by a coreutils pipeline, so anyone can check a pin without reprun:

    (cd DIR && find -L . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum

A symbolic link is hashed as what the job reads through it (-L); walk.py refuses the links and
special files that pipeline would skip or could not settle.

This module holds that definition and the values built on it; tree.py computes them.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Iterable, NamedTuple

# What `xargs -0 sha256sum` prints for an empty directory: with no names, GNU xargs still runs
# sha256sum once, which then hashes its (empty) stdin. The pinned tree hash includes that line.
EMPTY_TREE_LINE = hashlib.sha256(b"").hexdigest().encode() + b"  -\n"


class FileEntry(NamedTuple):      # a tuple, not a dataclass: there is one per file
    path: str       # "./"-prefixed as `find .` prints it (a single-file dataset: its name)
    sha256: str
    size: int


@dataclass(frozen=True)
class DatasetDigest:
    sha256: str                     # bare hex: the file hash, or the tree hash of a directory
    kind: str                       # "file" | "tree"
    files: tuple[FileEntry, ...]    # sorted as the tree hash sorts them
    bytes: int
    cache_hits: int                 # files whose hash came from the cache, unread
    bytes_read: int = 0             # bytes actually read from disk for this digest


@dataclass(frozen=True)
class ManifestDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def sha256sum_line(hex_digest: str, name: bytes) -> bytes:
    # GNU sha256sum (9.1) escapes a name holding a backslash, newline or carriage return and
    # flags the line with a leading backslash, so one name is always one line.
    if b"\\" in name or b"\n" in name or b"\r" in name:
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + hex_digest.encode() + b"  " + name + b"\n"
    return hex_digest.encode() + b"  " + name + b"\n"


def tree_sha256(entries: Iterable[FileEntry]) -> str:
    """The tree hash of these files, byte-identical to the coreutils pipeline above."""
    named = sorted((os.fsencode(e.path), e.sha256) for e in entries)
    return tree_sha256_of_lines([sha256sum_line(digest, name) for name, digest in named])


def tree_sha256_of_lines(lines: list[bytes]) -> str:
    """`lines`: what sha256sum prints for each file, sorted by path bytes as `sort -z` does."""
    return hashlib.sha256(b"".join(lines) if lines else EMPTY_TREE_LINE).hexdigest()


def diff_manifests(old: Iterable[FileEntry], new: Iterable[FileEntry]) -> ManifestDiff:
    before = {e.path: e for e in old}
    after = {e.path: e for e in new}
    key = os.fsencode
    return ManifestDiff(
        added=tuple(sorted(after.keys() - before.keys(), key=key)),
        removed=tuple(sorted(before.keys() - after.keys(), key=key)),
        changed=tuple(sorted((p for p in before.keys() & after.keys()
                              if (before[p].sha256, before[p].size) != (after[p].sha256, after[p].size)),
                             key=key)),
    )
