"""Opening a file by a relative name inside a folder, never leaving it: no symlink followed.

What a job wrote (on shared storage, say) is read and copied by reprun, possibly as root; a name
it chose or a link it planted must not make reprun read or write anything outside the run's
folders. Each component is opened with O_NOFOLLOW from the one before (openat), so no link is
followed at any depth, and ".." is refused before anything is opened.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath


def plain_relative(name: str) -> bool:
    """A path inside a folder as it is written: relative, no empty, "." or ".." component."""
    if not name or "\0" in name or name.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def open_beneath(root: Path, rel: str, flags: int, *, make_folders: bool = False,
                 mode: int = 0o644) -> int:
    """A file descriptor for root/rel, opened with `flags` | O_NOFOLLOW; OSError (ELOOP for a
    symlink, ENOTDIR for a link or file where a folder should be) otherwise."""
    if not plain_relative(rel):
        raise OSError(f"{rel!r} is not a plain relative path")
    *folders, name = PurePosixPath(rel).parts
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for folder in folders:
            if make_folders:
                try:
                    os.mkdir(folder, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=fd)
            os.close(fd)
            fd = inner
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)
