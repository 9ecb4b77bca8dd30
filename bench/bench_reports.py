"""The terminal verdict of a large diff stays short: two manifests of 5,000 OS packages and
5,000 Python distributions each, every version different, rendered at 100 columns.

The figure is the default report's length in lines (goal: at most 25, within the width); its
time is set against the verbose report of the same comparison, measured in the same run.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = 5000
WIDTH = 100


def _record(run_id: str, shift: int):
    from orchestrator.records import (Artifact, DatasetFacts, EnvironmentManifest, ImageFacts,
                                      Inputs, Outputs, RunRecord)
    return RunRecord(
        id=run_id, status="succeeded", started_at="2026-01-01T00:00:00Z",
        finished_at="2026-01-01T00:01:00Z",
        inputs=Inputs(spec_name="big", spec_path="big.yaml", spec_sha256="e" * 64, seed=1,
                      command=["python3", "/app/train.py"], params={}, env={},
                      resources={"cpus": 1}, container={},
                      image=ImageFacts(id="sha256:" + str(shift) * 64),
                      dataset=DatasetFacts(path="d", sha256="d" * 64, kind="file", files=1,
                                           bytes=1, mount="/data")),
        environment=EnvironmentManifest(
            os_packages={f"lib-package-{i:05d}": f"1.{shift}.{i % 13}" for i in range(PACKAGES)},
            python_distributions={f"py-dist-{i:05d}": f"2.{shift}" for i in range(PACKAGES)},
            env={"PINNED": "x" * 600 + str(shift)}),
        outputs=Outputs(exit_code=0, reason="ok", duration_s=1.0,
                        metrics={"accuracy": 0.9755555555555555 - shift * 0.0033},
                        artifacts={"model.pkl": Artifact(sha256=str(shift) * 64, size=10)},
                        log_sha256=None, log_bytes=0, log_truncated=False),
        compare={}, reprun_version="bench")


def _fastest(fn, tries: int = 3) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(tries):
        started = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - started)
    return best, out


def run() -> list[tuple]:
    sys.path.insert(0, str(REPO))
    from orchestrator.compare.comparison import compare_records
    from orchestrator.reports import render
    comparison = compare_records(_record("run-a", 1), _record("run-b", 2))
    concise, text = _fastest(lambda: render(comparison, "terminal", width=WIDTH))
    verbose, full = _fastest(lambda: render(comparison, "terminal", verbose=True, width=WIDTH))
    lines = text.splitlines()
    widest = max(map(len, lines))
    return [(f"terminal verdict of a 5,000-package diff: {len(lines)} lines, widest {widest} "
             f"(verbose: {len(full.splitlines())} lines)", concise,
             "the verbose terminal report", verbose, verbose / concise,
             f"<= 25 lines within {WIDTH} columns", len(lines) <= 25 and widest <= WIDTH)]


if __name__ == "__main__":
    for row in run():
        print(row)
