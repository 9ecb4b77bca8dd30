"""Files the user names for reprun to write (reports, JUnit, archives): refused before any work
when they could never be written, and written with an error that names them when they fail."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from orchestrator.errors import UsageError


def _first_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def refuse_unwritable_file(path: Path, what: str) -> None:
    """A folder, or a path through a file, is refused at once (exit 2): noticed only at the end,
    it would throw away a whole run or check. A missing folder is fine: it is made."""
    if path.is_dir():
        raise UsageError(f"the {what} {path} is a folder; give the name of a file to write "
                         "in it")
    _refuse_through_a_file(path, path.parent, what)


def refuse_unwritable_folder(path: Path, what: str) -> None:
    _refuse_through_a_file(path, path, what)


def _refuse_through_a_file(named: Path, folder: Path, what: str) -> None:
    existing = _first_existing(folder)
    if not existing.is_dir():
        raise UsageError(f"the {what} {named} cannot be written: {existing} is a file, "
                         "not a folder")


def write_text(path: Path, text: str, what: str) -> None:
    """UTF-8 whatever the locale (a report holds any character a job wrote), and atomically:
    a reader or a crash never sees half a report, and a failed write leaves the old one."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                         prefix=f".{path.name}.", suffix=".partial",
                                         delete=False) as handle:
            temporary = Path(handle.name)
            handle.write(text)
        os.replace(temporary, path)
    except OSError as exc:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        raise UsageError(f"cannot write the {what} {path}: {exc.strerror or exc}") from None
