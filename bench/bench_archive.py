"""Archives of the example run: `.tar.zst` against `.tar.gz`, written side by side.

The digits example is run once; its archive is then written in both formats, taking turns, and
the fastest of a few tries of each is kept. Both include saving the image from the engine (the
same work for both); the write phase alone (compression and tar) is timed as well, from the
first `write` progress event to the end.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REPRUN = [str(Path(sys.executable).with_name("reprun"))]
TRIES = 2


def _example_run(store: Path) -> str:
    env = {**os.environ, "REPRUN_STORE": str(store)}
    result = subprocess.run([*REPRUN, "run", "-q", str(REPO / "specs" / "digits.yaml")],
                            cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the example run failed: {result.stderr[-2000:]}")
    listed = subprocess.run([*REPRUN, "runs", "--json"], cwd=REPO, env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(listed.stdout)[0]["id"]


def _archive(store_root: Path, run_id: str, output: Path) -> tuple[float, float]:
    """Seconds for the whole archive, and for its write phase alone."""
    sys.path.insert(0, str(REPO))
    from orchestrator.execution.local import LocalEngine
    from orchestrator.store.archive import write_archive
    from orchestrator.store.db import Store
    marks: dict[str, float] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "write":
            marks.setdefault("write", time.perf_counter())

    output.unlink(missing_ok=True)
    started = time.perf_counter()
    write_archive(Store(store_root), run_id, output, client=LocalEngine().client, progress=progress)
    ended = time.perf_counter()
    return ended - started, ended - marks.get("write", started)


def run() -> list[tuple]:
    scratch = Path(tempfile.mkdtemp(prefix="reprun-bench-archive-"))
    try:
        store = scratch / "store"
        run_id = _example_run(store)
        best = {"gz": (float("inf"),) * 2, "zst": (float("inf"),) * 2}
        sizes = {}
        for _ in range(TRIES):
            for kind in best:
                output = scratch / f"run.tar.{kind}"
                whole, write = _archive(store, run_id, output)
                best[kind] = (min(best[kind][0], whole), min(best[kind][1], write))
                sizes[kind] = output.stat().st_size
        (gz_whole, gz_write), (zst_whole, zst_write) = best["gz"], best["zst"]
        size_ratio = sizes["zst"] / sizes["gz"]
        return [
            ("`reprun archive` .tar.zst, image save included", zst_whole,
             ".tar.gz, the same run", gz_whole, gz_whole / zst_whole, "≥ 5× faster",
             gz_whole / zst_whole >= 5),
            ("  write phase alone (tar + compression)", zst_write, ".tar.gz write phase",
             gz_write, gz_write / zst_write, None, None),
            (f"  size of .tar.zst ({sizes['zst'] / 2**20:.0f} MiB)", size_ratio,
             f".tar.gz ({sizes['gz'] / 2**20:.0f} MiB)", 1.0, size_ratio, "≤ 1.1× the size",
             size_ratio <= 1.1),
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    for row in run():
        print(row)
