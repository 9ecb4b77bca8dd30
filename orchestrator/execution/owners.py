"""Who owns what reprun left on an engine: the reprun process named in its label, alive or not."""
from __future__ import annotations

import os
import socket

from orchestrator.execution.job import LABEL_OWNER, LABEL_RUN


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def left_behind_because(labels: dict[str, str], finished_runs) -> str | None:
    """Why something reprun labelled (a container, a service) is left over; None: in use."""
    run_id = labels.get(LABEL_RUN, "?")
    host, _, pid = labels.get(LABEL_OWNER, "").rpartition(":")
    if run_id in finished_runs:
        return f"run {run_id} is already over in the store"
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return f"its reprun process {pid} is gone"
    return None
