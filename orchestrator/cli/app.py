"""The `reprun` command: the command table, the root options, and the one place where an
outcome becomes an exit code. Each command lives in the module of its group."""
from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
import typer.main

from orchestrator import __version__
from orchestrator.cli import check, init, maintenance, runs, specs, train
from orchestrator.cli.crash_report import write_crash_report
from orchestrator.cli.shared import say
from orchestrator.errors import ExitCode, ReprunError

app = typer.Typer(add_completion=True, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Retrain a pinned ML job in a hermetic container, compare, explain.")

# The order `reprun --help` lists them in.
for function in (init.init, specs.validate, train.run, train.verify, train.diagnose, train.diff,
                 train.report, train.rerun, maintenance.archive, check.check, specs.lock,
                 maintenance.gc):
    app.command(function.__name__)(function)
app.add_typer(runs.runs_app, name="runs")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reprun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          store: Optional[Path] = typer.Option(None, "--store", envvar="REPRUN_STORE",
                                               help="Store folder (default .reprun)."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    ctx.obj = {"store": store}


INTERRUPTED_EXIT = 130


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


_COMMAND = []


def command():
    """The Click command Typer builds from `app`, built once per process."""
    if not _COMMAND:
        _COMMAND.append(typer.main.get_command(app))
    return _COMMAND[0]


class _ReaderMayLeave:
    """A standard stream whose reader may go away (`reprun verify SPEC | head -3`). The command
    then goes on unheard and ends with its own exit code; left to Click, a closed pipe ends it
    at once with exit 1, which means "differs", before the run has even started."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        # What is still buffered, and all that follows, goes nowhere; so does the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _tolerate_leaving_readers() -> None:
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue        # closed or not a file (`2>&-`, a test's capture): nothing to guard
        setattr(sys, name, _ReaderMayLeave(stream))


def main() -> None:
    # SIGTERM ends a run the way Ctrl-C does: container removed, record marked interrupted.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _tolerate_leaving_readers()
    try:
        code = command().main(prog_name="reprun", standalone_mode=False)
    except ReprunError as error:
        say(f"reprun: {error.render()}", err=True)
        code = int(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED_EXIT
    except typer.TyperException as error:   # argument errors: Typer explains them itself
        show = getattr(error, "show", None)
        show() if show else typer.echo(f"reprun: {error.format_message()}", err=True)
        code = error.exit_code
    except Exception as error:  # a bug: one paragraph for the user, the details in a file
        crash, why_not = write_crash_report(traceback.format_exc())
        where = (f"the traceback is in {crash}" if crash else
                 f"its traceback could not be written ({why_not})")
        say(f"reprun: internal error ({type(error).__name__}: {error}). This is a bug in "
            f"reprun; {where}.", err=True)
        code = int(ExitCode.INFRASTRUCTURE)
    if code == INTERRUPTED_EXIT:
        typer.echo("reprun: interrupted; runs under way were stopped and recorded as interrupted.",
                   err=True)
    sys.exit(code if isinstance(code, int) else 0)
