"""Run events: orchestration announces them, observers (progress display, logs) listen.

The orchestration code never prints; it calls these hooks. The base observer ignores them all.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from orchestrator.printing import escape_controls

MAX_PARTIAL_LINE = 64 * 1024   # characters of an unfinished job line held back for its prefix


class RunObserver:
    def stage(self, label: str, text: str) -> None: ...
    def progress(self, label: str, phase: str, done: int, total: int, text: str = "") -> None: ...
    def output(self, label: str, chunk: bytes) -> None: ...
    def step(self, label: str, step: int, values: dict[str, float]) -> None: ...
    def finished(self, label: str, record) -> None: ...


BYTE_PHASES = frozenset({"hash", "write", "pull"})     # counted in bytes; other phases in steps


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


class TerminalObserver(RunObserver):
    """Progress and live job output on a terminal (stderr); plain lines when not a TTY."""

    def __init__(self, stream: TextIO | None = None, *, show_output: bool = True,
                 prefix_output: bool = False):
        # No stderr at all (started with it closed, `2>&-`): the run goes on, unseen.
        self.stream = stream or sys.stderr or open(os.devnull, "w")
        self.show_output = show_output
        self.prefix_output = prefix_output
        self.tty = self.stream.isatty()
        self._lock = threading.Lock()
        self._last_progress: dict[tuple[str, str], float] = {}
        self._partial: dict[str, bytes] = {}

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text)
            self.stream.flush()

    def stage(self, label: str, text: str) -> None:
        self._write(("\r\033[K" if self.tty else "") + escape_controls(f"[{label}] {text}") + "\n")

    def progress(self, label: str, phase: str, done: int, total: int, text: str = "") -> None:
        key = (label, phase)
        now = time.monotonic()
        final = total and done >= total
        # On a TTY, redraw at most ten times a second; otherwise a line every few seconds.
        interval = 0.1 if self.tty else 5.0
        last = self._last_progress.get(key)
        if last == -1.0 or (not final and last is not None and now - last < interval):
            return
        self._last_progress[key] = -1.0 if final else now  # a finished bar is drawn once
        if phase in BYTE_PHASES:
            amount = f"{_human_bytes(done)} / {_human_bytes(total)}"
        else:
            amount = f"{done}/{total}"
        fraction = done / total if total else 0.0
        bar = "#" * int(fraction * 24)
        line = escape_controls(f"[{label}] {phase:5} [{bar:<24}] {amount} {text[:50]}")
        if self.tty:
            self._write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self._write(line + "\n")

    def step(self, label: str, step: int, values: dict[str, float]) -> None:
        from orchestrator.compare.numbers import shown
        # Names come from the job: shown without control characters, a few of them.
        names = sorted(values)[:6]
        text = ", ".join(f"{''.join(c if c.isprintable() else '?' for c in name[:40])} "
                         f"{shown(values[name])}" for name in names)
        self.stage(label, f"step {step}: {text}")

    def output(self, label: str, chunk: bytes) -> None:
        if not self.show_output:
            return
        text = chunk.decode("utf-8", errors="replace")
        if self.prefix_output:
            pending = self._partial.get(label, b"").decode("utf-8", "replace") + text
            *lines, rest = pending.split("\n")
            if len(rest) > MAX_PARTIAL_LINE:
                # A job printing without newlines must not grow reprun's memory: show it in pieces.
                lines.append(rest)
                rest = ""
            self._partial[label] = rest.encode()
            text = "".join(f"[{label}] | {line}\n" for line in lines)
        if text:
            self._write(text)
