"""The per-step stream a job appends while it trains (`outputs.steps`, JSON Lines).

Each line is an object with an integer `step` and numeric values: `{"step": 15, "loss": 0.41}`.
The stream is diagnostic, not a result the job promised, so an odd line never fails a run: it is
skipped and counted in a note. What is read is bounded (bytes, series, steps per series), and
the file is opened without following a link, as every file the job leaves is.
"""
from __future__ import annotations

import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

MAX_STEPS_BYTES = 4 * 1024 * 1024
MAX_SERIES = 64
MAX_POINTS = 100_000


@dataclass(frozen=True)
class StepStream:
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def latest(self) -> tuple[int, dict[str, float]] | None:
        """The highest step seen and its values, for the live display."""
        last: dict[int, dict[str, float]] = {}
        for name, points in self.series.items():
            if points:
                step, value = points[-1]
                last.setdefault(step, {})[name] = value
        if not last:
            return None
        step = max(last)
        return step, last[step]


def read_steps(path: Path) -> StepStream:
    """The stream at `path`, or an empty one with a note saying why nothing was read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return StepStream(notes=(f"the job wrote no steps file ({path.name})",))
    except OSError as exc:
        why = "it is a symlink" if exc.errno == 40 else exc.strerror
        return StepStream(notes=(f"the steps file {path.name} was not read ({why})",))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return StepStream(notes=(f"the steps file {path.name} is not a regular file; "
                                     "not read",))
        raw = handle.read(MAX_STEPS_BYTES + 1)
    return parse_steps(raw, path.name)


def parse_steps(raw: bytes, name: str) -> StepStream:
    notes: list[str] = []
    if len(raw) > MAX_STEPS_BYTES:
        # Cut at the last whole line: a partial line is not a step.
        raw = raw[:MAX_STEPS_BYTES].rpartition(b"\n")[0]
        notes.append(f"the steps file {name} was capped at {MAX_STEPS_BYTES} bytes")
    points: dict[str, dict[int, float]] = {}
    bad_lines = dropped_values = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        entry = _entry(line)
        if entry is None:
            bad_lines += 1
            continue
        step, values = entry
        for key, value in values.items():
            if key == "step":
                continue
            number = _number(value)
            if number is None:
                dropped_values += 1
                continue
            if key not in points and len(points) >= MAX_SERIES:
                dropped_values += 1
                continue
            series = points.setdefault(key, {})
            if step in series or len(series) < MAX_POINTS:
                series[step] = number      # a step written twice (a resumed job): the last wins
            else:
                dropped_values += 1
    if bad_lines:
        notes.append(f"{bad_lines} line(s) of the steps file {name} are not an object with an "
                     "integer step; skipped")
    if dropped_values:
        notes.append(f"{dropped_values} value(s) of the steps file {name} are not numbers or "
                     f"exceed its bounds ({MAX_SERIES} series, {MAX_POINTS} steps each); "
                     "skipped")
    return StepStream(series={key: sorted(steps.items()) for key, steps in points.items()},
                      notes=tuple(notes))


def _entry(line: bytes) -> tuple[int, dict] | None:
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(value, dict):
        return None
    step = value.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or abs(step) > 2 ** 53:
        return None
    return step, value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


_TAIL_BYTES = 64 * 1024


def latest_step(path: Path) -> tuple[int, dict[str, float]] | None:
    """The last whole step line of a stream still being written (only its tail is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        handle.seek(max(info.st_size - _TAIL_BYTES, 0))
        tail = handle.read(_TAIL_BYTES)
    for line in reversed(tail.split(b"\n")[1:-1] if info.st_size > _TAIL_BYTES
                         else tail.split(b"\n")[:-1]):
        entry = _entry(line)
        if entry is not None:
            step, values = entry
            numbers = {k: n for k, v in values.items()
                       if k != "step" and (n := _number(v)) is not None}
            return step, numbers
    return None


class StepWatcher:
    """Calls `report(step, values)` each time a newer step appears, until stopped."""

    def __init__(self, path: Path, report, interval: float = 1.0):
        import threading
        self._path, self._report, self._interval = path, report, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="reprun-steps", daemon=True)

    def __enter__(self) -> "StepWatcher":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        shown = None
        while not self._stop.wait(self._interval):
            latest = latest_step(self._path)
            if latest is not None and latest[0] != shown:
                shown = latest[0]
                self._report(*latest)
