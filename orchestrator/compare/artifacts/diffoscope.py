"""A readable difference of two files no comparator of reprun reads, from Debian's diffoscope
where it is installed: bounded in time and in text, since the files are the job's."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TIME_LIMIT_S = 30.0
MAX_REPORT_BYTES = 64 << 10


def readable_diff(path_a: Path, path_b: Path) -> tuple[list[str], str | None]:
    """Its text lines and None, or no lines and why there are none."""
    tool = shutil.which("diffoscope")
    if tool is None:
        return [], "diffoscope is not installed, so no readable diff is shown"
    try:
        done = subprocess.run(
            [tool, "--text", "-", "--no-progress", "--max-report-size", str(MAX_REPORT_BYTES),
             "--exclude-directory-metadata=yes", str(path_a), str(path_b)],
            capture_output=True, timeout=TIME_LIMIT_S, stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C.UTF-8"})
    except subprocess.TimeoutExpired:
        return [], f"diffoscope took longer than {TIME_LIMIT_S:g}s and was stopped"
    except OSError as exc:
        return [], f"diffoscope could not start ({exc})"
    if done.returncode not in (0, 1):
        return [], f"diffoscope failed (exit {done.returncode})"
    text = done.stdout[:MAX_REPORT_BYTES].decode("utf-8", "replace")
    # Its first lines name the two temporary paths; what follows is the difference.
    lines = [line for line in text.splitlines() if not line.startswith(("--- ", "+++ "))]
    return lines, None
