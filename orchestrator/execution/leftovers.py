"""Clean-up after a crash (`reprun gc`): containers and built images a dead reprun left behind."""
from __future__ import annotations

import docker
import docker.errors

from orchestrator.execution.job import LABEL, LABEL_OWNER, LABEL_RUN
from orchestrator.execution.local import remove_container
from orchestrator.execution.owners import left_behind_because


def remove_leftovers(client: docker.DockerClient, *, finished_runs: set[str] = frozenset()
                     ) -> list[str]:
    """Containers reprun started and never removed (its process was killed, or the engine was
    away at the end): each one gone afterwards, described. A container whose reprun process is
    still alive on this host is in use and left alone; so is anything without reprun's label.
    `finished_runs`: run IDs the store knows are over, whichever host ran them."""
    removed = []
    # ignore_removed: another reprun may remove one of them between listing and inspecting
    for container in client.containers.list(all=True, ignore_removed=True,
                                            filters={"label": LABEL}):
        labels = container.labels or {}
        run_id = labels.get(LABEL_RUN, "?")
        why = left_behind_because(labels, finished_runs)
        if why is None and not labels.get(LABEL_OWNER) and container.status != "running":
            why = "it stopped and no reprun process claims it"
        if why is None:
            continue
        if remove_container(container, patience=0.0):
            removed.append(f"{container.name} (run {run_id}: {why})")
    return removed


def remove_unused_builds(client: docker.DockerClient, built: dict[str, str]
                         ) -> list[tuple[str, str | None]]:
    """Of the images reprun built (image ID -> spec) that no recorded run used, remove those a
    rebuild left untagged and no container uses. Returns (image ID, what was removed or None
    when it was already gone); tagged or used images are kept and not returned."""
    done: list[tuple[str, str | None]] = []
    for image_id, spec in sorted(built.items()):
        try:
            image = client.images.get(image_id)
        except docker.errors.ImageNotFound:
            done.append((image_id, None))
            continue
        if image.tags or client.containers.list(all=True, ignore_removed=True,
                                                filters={"ancestor": image_id}):
            continue
        try:
            client.images.remove(image_id, noprune=False)
        except docker.errors.ImageNotFound:
            done.append((image_id, None))
            continue
        except docker.errors.APIError:
            continue   # in use after all (a child image, a container created meanwhile)
        done.append((image_id, f"{image_id[:19]} (an untagged build of spec {spec} that no "
                               "recorded run used)"))
    return done


