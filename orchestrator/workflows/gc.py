"""`reprun gc`: remove what a crashed reprun left behind, and say each thing removed."""
from __future__ import annotations

from typing import Callable, Iterator

from orchestrator.records import RUNNING
from orchestrator.store.db import Store


def collect_garbage(store: Store, engine_client: Callable) -> Iterator[str]:
    """Repair runs left `running`, remove folders of unrecorded runs, leftover containers and
    swarm services, and built images no run uses; yields one line per thing done.

    `engine_client()` is called once the store's own clean-up is done: that part needs no engine.
    """
    from orchestrator.execution.leftovers import remove_leftovers, remove_unused_builds
    from orchestrator.execution.swarm import remove_leftover_services
    for line in store.repair():
        yield f"repaired {line}"
    for run_id in store.remove_unrecorded_run_folders():
        yield (f"removed run folder {store.run_dir(run_id)} (interrupted before a record "
               "was written)")
    client = engine_client()
    finished = {s.id for s in store.list() if s.status != RUNNING}
    for text in remove_leftovers(client, finished_runs=finished):
        yield f"removed container {text}"
    for text in remove_leftover_services(client, finished_runs=finished):
        yield f"removed swarm service {text}"
    for image_id, text in remove_unused_builds(client, store.built_images_without_runs()):
        store.forget_built_image(image_id)
        if text:
            yield f"removed image {text}"
