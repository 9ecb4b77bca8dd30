"""Which executor a command uses: --backend (or REPRUN_BACKEND), else reprun.toml, else local.

Apart from config.py because the Swarm backend reads its settings from there: config naming the
backends it opens would make the two import each other.
"""
from __future__ import annotations

from typing import Any, Callable

from orchestrator.execution.config import Config, chosen_backend, load_config
from orchestrator.execution.job import Executor


def open_backend(option: str | None = None, config: Config | None = None) -> Executor:
    """The executor a command uses; nothing is contacted until it is first used."""
    config = config if config is not None else load_config()
    name = chosen_backend(option, config)
    if name == "swarm":
        from orchestrator.execution.swarm import SwarmBackend
        return SwarmBackend(config.swarm)
    from orchestrator.execution.local import LocalEngine
    return LocalEngine()


class OpenedOnFirstUse:
    """An executor opened when a command first needs it, so that what a command can refuse
    without an engine (a wrong run ID, a missing archive, pins already current) is refused
    without loading the Docker SDK or reaching an engine."""

    def __init__(self, open_engine: Callable[[], Executor]):
        self._open = open_engine
        self._engine: Executor | None = None

    def opened(self) -> Executor:
        if self._engine is None:
            self._engine = self._open()
        return self._engine

    @property
    def client(self) -> Any:
        # Handed on freely (`resolve_tag(engine.client, ref)`); opened only when it is used.
        return ClientOnFirstUse(lambda: self.opened().client)

    def run(self, job, on_output, on_event=None):
        return self.opened().run(job, on_output, on_event=on_event)

    def interrupt(self) -> None:
        if self._engine is not None:     # never opened: nothing is under way
            self._engine.interrupt()

    def host_facts(self) -> dict[str, Any]:
        return self.opened().host_facts()

    def facts_scope(self) -> str | None:
        return self.opened().facts_scope()


class ClientOnFirstUse:
    """An engine's client, reached only when something is asked of it."""

    def __init__(self, client: Callable[[], Any]):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client(), name)
