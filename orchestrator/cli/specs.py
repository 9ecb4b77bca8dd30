"""`reprun validate` and `lock`: check a spec, fill in its pins."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from orchestrator.cli.shared import local_engine, observer, open_store, say
from orchestrator.errors import ExitCode


def validate(specs: List[Path] = typer.Argument(..., help="Spec files to check.")) -> None:
    """Check spec files without running anything (exit 2 when any is invalid)."""
    from orchestrator.spec.load import validate_specs
    worst = ExitCode.OK
    for path, error in validate_specs(specs):
        if error is None:
            say(f"{path}: valid")
        else:
            say(error.render(), err=True)
            worst = max(worst, error.exit_code)
    raise typer.Exit(int(worst))


def lock(ctx: typer.Context, specs: List[Path],
         check: bool = typer.Option(False, "--check", help="Only say whether the pins are current (exit 0/1)."),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Fill in or update a spec's pins: image digest or ID, dataset checksum."""
    from orchestrator.workflows.lock import lock_specs
    stale = []
    for path, changes in lock_specs(specs, store=open_store(ctx), engine=local_engine(),
                                    write=not check, observer=observer(quiet)):
        for change in changes:
            if not quiet or check:
                say(f"{path}: {'stale, lock would set ' if check else ''}{change}", err=True)
        if changes:
            stale.append(path)
        elif check and not quiet:
            typer.echo(f"{path}: pins are current")
    if check and stale:
        raise typer.Exit(int(ExitCode.DIFFERS))
