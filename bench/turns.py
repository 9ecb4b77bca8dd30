"""Timing shared by the benchmarks (not a benchmark itself: bench/run.py runs bench_*.py)."""
from __future__ import annotations

import time


def fastest_in_turns(contenders: dict, tries: int) -> dict[str, float]:
    """Fastest of `tries` for each contender, taking turns so that other load hits all alike."""
    best = {name: float("inf") for name in contenders}
    for _ in range(tries):
        for name, fn in contenders.items():
            started = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - started)
    return best
