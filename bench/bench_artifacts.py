"""What comparing artifacts by content costs.

- npz: two 1 GiB .npz files (one float32 array each, every element moved a little, as a
  retrained model's are) compared array by array, against reading both files through the same
  zip reader without comparing: goal at most 2x;
- churn: prediction churn (with per-class accuracy) over two CSV files of 1,000,000 examples,
  reading and parsing included: goal under 1 s, against reading both files' bytes.
Contender and baseline take turns, and each keeps its fastest of a few tries.
"""
from __future__ import annotations

import shutil
import tempfile
import time
import zipfile
from pathlib import Path

from turns import fastest_in_turns

NPZ_ELEMENTS = 1 << 28            # float32: 1 GiB of data per file
CHURN_ROWS = 1_000_000



def _npz_files(folder: Path) -> tuple[Path, Path]:
    import numpy as np
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(NPZ_ELEMENTS, dtype=np.float32)
    a, b = folder / "a.npz", folder / "b.npz"
    np.savez(a, w=weights)
    weights += np.float32(1e-6) * rng.standard_normal(NPZ_ELEMENTS, dtype=np.float32)
    np.savez(b, w=weights)
    return a, b


def _read_npz(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            with archive.open(info) as stream:
                while stream.read(8 << 20):
                    pass


def _churn_files(folder: Path) -> tuple[Path, Path]:
    a, b = folder / "a.csv", folder / "b.csv"
    header = "id,prediction,label\n"
    a.write_text(header + "".join(f"{i},{i % 10},{i % 10}\n" for i in range(CHURN_ROWS)))
    b.write_text(header + "".join(f"{i},{(i + (i % 100 == 0)) % 10},{i % 10}\n"
                                  for i in range(CHURN_ROWS)))
    return a, b


def run() -> list[tuple]:
    from orchestrator.compare.artifacts.arrays import compare_npz
    from orchestrator.compare.artifacts.policy import parse_policy
    from orchestrator.compare.artifacts.predictions import compare_predictions
    folder = Path(tempfile.mkdtemp(prefix="reprun-bench-artifacts-"))
    try:
        a, b = _npz_files(folder)
        tolerance = parse_policy({"abs": 1e-5})
        best = fastest_in_turns({"compare": lambda: compare_npz(a, b, tolerance),
                                 "read": lambda: (_read_npz(a), _read_npz(b))}, tries=3)
        # Ratios as elsewhere in bench/: baseline seconds / reprun seconds (0.5 = twice as long).
        rows = [("npz 2x1 GiB compared", best["compare"], "both read", best["read"],
                 best["read"] / best["compare"], ">= 0.5 (<= 2x)",
                 best["compare"] <= 2 * best["read"])]
        a.unlink()
        b.unlink()
        a, b = _churn_files(folder)
        policy = parse_policy({"predictions": {"truth": "label"}})
        best = fastest_in_turns({"churn": lambda: compare_predictions(a, b, policy),
                                 "read": lambda: (a.read_bytes(), b.read_bytes())}, tries=3)
        rows.append(("churn 1,000,000 rows", best["churn"], "both read", best["read"],
                     best["read"] / best["churn"], "< 1 s", best["churn"] < 1.0))
        # CPU seconds beside wall seconds: other work on the machine cannot inflate them.
        started = time.process_time()
        compare_predictions(a, b, policy)
        rows.append(("churn 1,000,000 rows, CPU s", time.process_time() - started, None, None,
                     None, None, None))
        return rows
    finally:
        shutil.rmtree(folder, ignore_errors=True)
