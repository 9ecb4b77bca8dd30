"""Run reprun's benchmarks and print one table: `python bench/run.py [MODULE ...]`.

A benchmark is a module in bench/ (`hashing.py`, or any `bench_*.py`) with a `run()` that
returns rows of (name, seconds, baseline name, baseline seconds, ratio, goal, met); `met` is
True/False for a row with a goal, None otherwise. The table goes to stdout, and the figures with
the machine they came from to bench/results/latest.json. Exit status 1 when a goal was missed.
"""
from __future__ import annotations

import compileall
import importlib
import json
import os
import platform
import ssl
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "latest.json"
COLUMNS = ("name", "seconds", "baseline", "baseline_seconds", "ratio", "goal", "met")


def discover() -> list[str]:
    return ["hashing"] + sorted(p.stem for p in HERE.glob("bench_*.py"))


def machine() -> dict[str, object]:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        coreutils = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        coreutils = None
    return {
        "cpu_model": cpu,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "coreutils": coreutils,
    }


def _cell(value: object, column: str) -> str:
    if value is None:
        return ""
    if column == "ratio":
        return f"{value:.2f}×"
    if column in ("seconds", "baseline_seconds"):
        return f"{value:.3f}"
    if column == "met":
        return "yes" if value else "NO"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    # reprun as installed from a wheel, with its bytecode compiled; an editable install under
    # PYTHONDONTWRITEBYTECODE would compile every module again in each command measured.
    compileall.compile_dir(HERE.parent / "orchestrator", quiet=1)
    names = (argv if argv is not None else sys.argv[1:]) or discover()
    results: dict[str, list[dict[str, object]]] = {}
    for name in names:
        rows = importlib.import_module(name).run()
        for r in rows:
            if len(r) != len(COLUMNS):
                raise ValueError(f"benchmark {name} returned a row of {len(r)} fields: {r!r}")
        results[name] = [dict(zip(COLUMNS, r)) for r in rows]

    about = machine()
    print(f"{about['cpu_model']}, {about['nproc']} CPUs, Linux {about['kernel']}, "
          f"Python {about['python']}, {about['openssl']}")
    table = [[name] + [_cell(r[c], c) for c in COLUMNS] for name, rows in results.items() for r in rows]
    print(tabulate(table, headers=["bench", *COLUMNS], disable_numparse=True))

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": about,
        "benchmarks": results,
    }, indent=2, ensure_ascii=False) + "\n")
    print(f"written {RESULTS.relative_to(HERE.parent)}")
    return 1 if any(r["met"] is False for rows in results.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
