"""What every command module shares: the store, the backend, the observer, tables."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def say(text: str = "", *, err: bool = False) -> None:
    """Print a line reprun itself writes, its control characters escaped (orchestrator.printing)."""
    from orchestrator.printing import escape_controls
    typer.echo(escape_controls(text), err=err)


def tabulate(*args, **kwargs) -> str:
    # Imported when a table is printed: the import costs about 40 ms, a good part of what a
    # one-shot `reprun run` adds to the job, which prints no table.
    from tabulate import tabulate as render_table
    return render_table(*args, **kwargs)


def store_path(ctx: typer.Context) -> Optional[Path]:
    """The --store of the root command, from any depth of sub-command."""
    while ctx.parent is not None:
        ctx = ctx.parent
    return (ctx.obj or {}).get("store")


def open_store(ctx: typer.Context, *, repair: bool = True):
    from orchestrator.store.db import Store
    store = Store(store_path(ctx))
    if repair:
        store.repair()
    return store


def observer(quiet: bool = False, parallel: bool = False):
    """Progress on stderr (none when quiet); `parallel`: several runs, each output line says whose."""
    from orchestrator.events import RunObserver, TerminalObserver
    return RunObserver() if quiet else TerminalObserver(prefix_output=parallel)


def backend_option():
    return typer.Option(None, "--backend", envvar="REPRUN_BACKEND", metavar="local|swarm",
                        help="Where jobs run (default: `backend` in reprun.toml, else local).")


def open_backend(name: Optional[str]):
    """The backend asked for, checked now, opened (and the Docker SDK loaded) when first used."""
    from orchestrator.execution.backend import OpenedOnFirstUse, open_backend as open_named
    from orchestrator.execution.config import chosen_backend, load_config
    config = load_config()
    chosen = chosen_backend(name, config)      # a wrong name or reprun.toml: refused at once
    return OpenedOnFirstUse(lambda: open_named(chosen, config))


def local_engine():
    """The local engine, opened when first used."""
    from orchestrator.execution.backend import OpenedOnFirstUse

    def open_local():
        from orchestrator.execution.local import LocalEngine
        return LocalEngine()
    return OpenedOnFirstUse(open_local)


def quiet_option():
    return typer.Option(False, "--quiet", "-q", help="No progress or job output.")


def report_option():
    return typer.Option([], "--report", help="Write a report (.md .html .json .xml); repeatable.")
