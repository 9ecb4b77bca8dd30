"""Per-array figures of two arrays: max |Δ|, max relative Δ, how many elements differ.

Needs numpy and nothing of reprun, because the same module is mounted into a job's image, where
the in-image comparator (`in_image_comparator.py`) measures the parameters of models that only
that image can load.
"""
from __future__ import annotations

import numpy as np

# Elements per step: small enough that the few temporaries of a step stay in the CPU's cache,
# large enough that Python's overhead per step is noise.
CHUNK_ELEMENTS = 1 << 16


class Figures:
    """Running figures over the chunks of two arrays of one shape and dtype."""

    def __init__(self, abs_tolerance: float | None = None, rel_tolerance: float | None = None):
        self.abs_tolerance = abs_tolerance
        self.rel_tolerance = rel_tolerance
        self.elements = 0
        self.differing = 0
        self.beyond = 0            # elements outside the tolerance (all differing ones if exact)
        self.max_abs = 0.0
        self.max_rel = 0.0

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        self.elements += a.size
        if a.tobytes() == b.tobytes():
            return
        if a.dtype.kind in "biu":
            a, b = a.astype(np.float64), b.astype(np.float64)
        elif a.dtype.kind == "f" and a.dtype.itemsize < 4:
            a, b = a.astype(np.float32), b.astype(np.float32)
        # NaN in the same place is the same value; NaN against a number differs without bound.
        both_nan = np.isnan(a) & np.isnan(b)
        differ = (a != b) & ~both_nan
        count = int(np.count_nonzero(differ))
        if not count:
            return
        self.differing += count
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            delta = np.abs(a - b)
            delta[~differ] = 0
            scale = np.maximum(np.abs(a), np.abs(b))
            rel = np.where(differ, delta / np.where(scale == 0, 1, scale), 0)
        delta = np.where(np.isnan(delta), np.inf, delta)
        rel = np.where(np.isnan(rel), np.inf, rel)
        self.max_abs = max(self.max_abs, float(delta.max()))
        self.max_rel = max(self.max_rel, float(rel.max()))
        if self.abs_tolerance is not None:
            self.beyond += int(np.count_nonzero(delta > self.abs_tolerance))
        elif self.rel_tolerance is not None:
            self.beyond += int(np.count_nonzero(rel > self.rel_tolerance))
        else:
            self.beyond += count

    def as_dict(self) -> dict:
        return {"elements": self.elements, "differing": self.differing, "beyond": self.beyond,
                "max_abs": self.max_abs, "max_rel": self.max_rel}


def compare_arrays(a: np.ndarray, b: np.ndarray, abs_tolerance: float | None = None,
                   rel_tolerance: float | None = None) -> dict:
    """The figures of two whole arrays already in memory, or why they cannot be compared."""
    a, b = np.asarray(a), np.asarray(b)
    found = {"shape_a": list(a.shape), "shape_b": list(b.shape),
             "dtype_a": a.dtype.str, "dtype_b": b.dtype.str}
    if a.shape != b.shape or a.dtype != b.dtype:
        return found
    if a.dtype.hasobject or a.dtype.kind not in "biufc":
        return {**found, "unreadable": f"an array of {a.dtype} has no numeric values"}
    figures = Figures(abs_tolerance, rel_tolerance)
    flat_a, flat_b = a.reshape(-1), b.reshape(-1)
    for start in range(0, flat_a.size, CHUNK_ELEMENTS):
        figures.add(flat_a[start:start + CHUNK_ELEMENTS], flat_b[start:start + CHUNK_ELEMENTS])
    return {**found, **figures.as_dict()}
