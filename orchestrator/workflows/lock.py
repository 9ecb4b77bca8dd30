"""`reprun lock`: fill in or check the pins of several specs."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from orchestrator.events import RunObserver
from orchestrator.store.db import Store


def lock_specs(paths: list[Path], *, store: Store, engine, write: bool,
               observer: RunObserver | None = None) -> Iterator[tuple[Path, list[str]]]:
    """Each spec with the pins that changed (or would change, when not `write`)."""
    from orchestrator.dataset.tree import HashCache
    from orchestrator.spec.lock import lock_spec
    cache = HashCache(store.db_path)     # remembers the pinned dataset's file list
    builds: dict[str, str] = {}          # specs over one build context build it once
    shown = observer or RunObserver()
    for path in paths:
        label = path.stem

        def progress(phase: str, done: int, total: int, text: str, label: str = label) -> None:
            shown.progress(label, phase, done, total, text)
        yield path, lock_spec(path, engine=engine, write=write, cache=cache, builds=builds,
                              progress=progress, store_root=store.root)
