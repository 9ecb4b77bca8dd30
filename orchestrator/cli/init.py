"""`reprun init`: a first spec for one's own repository."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchestrator.cli.shared import local_engine, observer, open_store
from orchestrator.spec.scaffold import DEFAULT_COMMAND, DEFAULT_SPEC


def init(ctx: typer.Context,
         dockerfile: Path = typer.Option(Path("Dockerfile"), "--dockerfile",
                                         help="The Dockerfile of the training image."),
         dataset: Optional[Path] = typer.Option(None, "--dataset",
                                                help="The file or folder the job reads (none: it makes its own data)."),
         command: str = typer.Option(DEFAULT_COMMAND, "--command",
                                     help="What runs in the container, as a shell would split it."),
         name: Optional[str] = typer.Option(None, "--name", help="The spec's name (default: the folder's)."),
         output: Path = typer.Option(Path(DEFAULT_SPEC), "--output", "-o", help="The spec file to write."),
         lock: bool = typer.Option(True, "--lock/--no-lock", help="Pin the image and dataset at once."),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Write a commented spec for this repository from a Dockerfile and a dataset, then lock it."""
    from orchestrator.spec.scaffold import Scaffold
    from orchestrator.workflows.init import init_spec
    done = init_spec(Scaffold(output=output, dockerfile=dockerfile, dataset=dataset, name=name,
                              command=command),
                     store=open_store(ctx), engine=local_engine() if lock else None,
                     observer=observer(quiet), lock=lock)
    if done.dockerignore is not None:
        typer.echo(f"{done.dockerignore}: the store is left out of the build context", err=True)
    for pin in done.pins:
        typer.echo(f"{done.spec}: {pin}", err=True)
    typer.echo(f"wrote {done.spec}" + ("" if lock else "; pin it with `reprun lock`"))
