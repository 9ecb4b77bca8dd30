"""`reprun init`: scaffold a spec in the user's repository, then lock it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import ReprunError
from orchestrator.events import RunObserver
from orchestrator.spec.scaffold import Scaffold, keep_store_out_of_the_build, write_scaffold
from orchestrator.store.db import Store


@dataclass(frozen=True)
class Initialised:
    spec: Path
    pins: tuple[str, ...]           # what `lock` filled in; empty when not locked
    dockerignore: Path | None = None    # where the store was left out of the build context


def init_spec(request: Scaffold, *, store: Store, engine, observer: RunObserver,
              lock: bool = True) -> Initialised:
    """Write the spec, then lock it (build the image, hash the dataset). A failed lock leaves
    the written spec and says how to finish."""
    from orchestrator.workflows.lock import lock_specs
    path = write_scaffold(request)
    ignored = keep_store_out_of_the_build(request.dockerfile.absolute().parent, store.root)
    if not lock:
        return Initialised(path, (), ignored)
    try:
        (_, pins), = lock_specs([path], store=store, engine=engine, write=True,
                                observer=observer)
    except ReprunError as error:
        error.details.append(f"The spec {path} was written; fix the problem above, then run "
                             f"`reprun lock {path}`.")
        raise
    return Initialised(path, tuple(pins), ignored)
