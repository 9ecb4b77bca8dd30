"""Per-array figures of two arrays: max |Δ|, max relative Δ, how many elements differ.

Needs numpy and nothing of reprun, because the same module is mounted into a job's image, where
the in-image comparator (`in_image_comparator.py`) measures the parameters of models that only
that image can load.
"""
from __future__ import annotations

import numpy as np

# Elements per step: small enough that the few temporaries of a step stay in the CPU's cache,
# large enough that Python's overhead per step is noise.
CHUNK_ELEMENTS = 1 << 17


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
        self._delta: np.ndarray | None = None
        self._scale: np.ndarray | None = None

    def add(self, a: np.ndarray, b: np.ndarray) -> None:
        """Two chunks of equal length; the caller skips chunks whose bytes are equal."""
        self.elements += a.size
        if a.dtype.kind in "biu":
            a, b = a.astype(np.float64), b.astype(np.float64)
        elif a.dtype.kind == "f" and a.dtype.itemsize < 4:
            a, b = a.astype(np.float32), b.astype(np.float32)
        elif a.dtype.kind == "c":
            with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
                self._add_with_nan(a, b)
            return
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            # Into buffers kept between chunks: a fresh temporary of this size is a fresh
            # mapping of memory, and its page faults cost more than the arithmetic.
            delta, scale = self._buffers(a)
            np.subtract(a, b, out=delta)
            np.abs(delta, out=delta)
            largest = delta.max() if delta.size else 0.0
            if np.isnan(largest):
                self._add_with_nan(a, b)
                return
            if largest == 0:
                return
            self.differing += int(np.count_nonzero(delta))
            self.max_abs = max(self.max_abs, float(largest))
            np.abs(a, out=scale)
            np.maximum(scale, np.abs(b), out=scale)
            # 0/0 where both are zero is NaN, which fmax passes over: those elements agree.
            np.divide(delta, scale, out=scale)
            rel = scale
            self.max_rel = max(self.max_rel, float(np.fmax.reduce(rel)))
            self.beyond += self._beyond(delta, rel, float(largest))

    def _buffers(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dtype = np.result_type(a.dtype, np.float32)
        if self._delta is None or self._delta.dtype != dtype or self._delta.size < a.size:
            self._delta = np.empty(max(a.size, CHUNK_ELEMENTS), dtype)
            self._scale = np.empty_like(self._delta)
        return self._delta[:a.size], self._scale[:a.size]

    def _beyond(self, delta: np.ndarray, rel: np.ndarray, largest: float) -> int:
        if self.abs_tolerance is not None:
            return 0 if largest <= self.abs_tolerance else int(
                np.count_nonzero(delta > self.abs_tolerance))
        if self.rel_tolerance is not None:
            return int(np.count_nonzero(rel > self.rel_tolerance))
        return int(np.count_nonzero(delta))

    def _add_with_nan(self, a: np.ndarray, b: np.ndarray) -> None:
        # NaN in the same place is the same value; NaN against a number differs without bound.
        differ = (a != b) & ~(np.isnan(a) & np.isnan(b))
        count = int(np.count_nonzero(differ))
        if not count:
            return
        self.differing += count
        delta = np.where(differ, np.abs(a - b), 0)
        delta = np.where(np.isnan(delta), np.inf, delta)
        scale = np.maximum(np.abs(a), np.abs(b))
        rel = np.where(differ, delta / np.where(scale == 0, 1, scale), 0)
        rel = np.where(np.isnan(rel), np.inf, rel)
        self.max_abs = max(self.max_abs, float(delta.max()))
        self.max_rel = max(self.max_rel, float(rel.max()))
        self.beyond += self._beyond(delta, rel, float(delta.max()))

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
        end = start + CHUNK_ELEMENTS
        chunk_a, chunk_b = flat_a[start:end], flat_b[start:end]
        if chunk_a.tobytes() != chunk_b.tobytes():
            figures.add(chunk_a, chunk_b)
        else:
            figures.elements += chunk_a.size
    return {**found, **figures.as_dict()}
