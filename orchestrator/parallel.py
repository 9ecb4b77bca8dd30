"""Train a spec several times and compare: in parallel when the CPU limits allow it."""
from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass
from typing import Callable, TypeVar

from orchestrator.execution.job import Executor
from orchestrator.events import RunObserver
from orchestrator.records import RunRecord
from orchestrator.runner import JobTransform, PreparedRun, execute
from orchestrator.store.db import Store

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class RunPlan:
    label: str
    seed: int | None = None
    transform: JobTransform | None = None


def fits_in_parallel(cpus_per_run: float, runs: int, host_cpus: int | None) -> bool:
    """Two 1-CPU runs on two cores go side by side; anything that would contend waits its turn."""
    return bool(host_cpus) and cpus_per_run * runs <= host_cpus


def run_all(prepared: PreparedRun, plans: list[RunPlan], *, store: Store, engine: Executor,
            observer: RunObserver, parallel: bool) -> list[RunRecord]:
    if not parallel or len(plans) < 2:
        return [execute(prepared, store=store, engine=engine, observer=observer,
                        label=p.label, seed=p.seed, transform=p.transform) for p in plans]
    return run_concurrently(
        lambda p: execute(prepared, store=store, engine=engine, observer=observer,
                          label=p.label, seed=p.seed, transform=p.transform),
        plans, workers=len(plans), engine=engine)


def run_concurrently(work: Callable[[T], R], items: list[T], *, workers: int, engine) -> list[R]:
    """`work` over `items` on threads, results in order; Ctrl-C stops every job under way."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, item) for item in items]
        try:
            concurrent.futures.wait(futures)
        except KeyboardInterrupt:
            # Worker threads never see the signal: stop their containers, let each write its
            # `interrupted` record, then let the interrupt go on.
            engine.interrupt()
            concurrent.futures.wait(futures)
            raise
        return [f.result() for f in futures]
