"""`reprun archive` and `gc`: carry a run away whole, clean up after a crash."""
from __future__ import annotations

from pathlib import Path

import typer

from orchestrator.cli.shared import local_engine, observer, open_store, say


def archive(ctx: typer.Context, run_id: str,
            output: Path = typer.Option(..., "--output", "-o", help="The archive file to write: .tar, or compressed .tar.gz (.tgz), .tar.xz, .tar.bz2.")) -> None:
    """Write one self-contained archive of a run: image, dataset and record."""
    from orchestrator.store.archive import refuse_output, write_archive
    refuse_output(output)       # before the engine is asked for anything
    shown = observer()
    path = write_archive(open_store(ctx), run_id, output, client=local_engine().client,
                         progress=lambda phase, done, total: shown.progress("archive", phase, done, total))
    say(f"archive written: {path} ({path.stat().st_size / 2**20:.1f} MiB)")


def gc(ctx: typer.Context) -> None:
    """Remove what a crashed reprun left behind (containers, unused built images, folders of
    unrecorded runs) and repair runs it left `running`; say what was removed."""
    from orchestrator.workflows.gc import collect_garbage
    said = False
    for line in collect_garbage(open_store(ctx, repair=False),
                                lambda: local_engine().client):
        said = True
        say(line)
    if not said:
        say("nothing to remove: reprun left nothing behind")
