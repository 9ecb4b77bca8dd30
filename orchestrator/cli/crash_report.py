"""Where the traceback of a bug goes: a new file in the user's own state folder.

Never a fixed name in a shared folder: another user could plant a link there (and a root
reprun would then overwrite the file it points to) or a folder (and the report could not be
written at all). Each report is a new file, created exclusively and never through a link, in a
folder only its owner may enter; when none can be written, the user is told why, and the exit
code stays the one of the bug.
"""
from __future__ import annotations

import os
import stat
import time
from pathlib import Path


def crash_folder() -> Path:
    """$XDG_STATE_HOME/reprun/crashes, by default ~/.local/state/reprun/crashes."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "reprun" / "crashes"


def write_crash_report(text: str) -> tuple[Path | None, str | None]:
    """(the report's path, None), or (None, why it could not be written)."""
    try:
        folder = _own_folder(crash_folder())
        name = f"crash-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}.txt"
        path = folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as handle:
            handle.write(text)
        return path, None
    except OSError as exc:
        return None, f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"


def _own_folder(folder: Path) -> Path:
    """The folder, made where missing; refused when it is a link, not a folder, or not ours."""
    for part in (*reversed(folder.parents[:3]), folder):
        try:
            os.mkdir(part, 0o700)
        except FileExistsError:
            pass
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{folder} is not a folder (a link or a file is there)")
    if info.st_uid != os.geteuid() or info.st_mode & 0o022:
        raise OSError(f"{folder} belongs to someone else or others may write into it")
    return folder
