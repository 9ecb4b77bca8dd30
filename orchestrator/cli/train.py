"""`reprun run`, `verify`, `rerun`, `diff` and `report`: train, compare, render."""
from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.cli.shared import (backend_option, observer, open_backend, open_store,
                                     quiet_option, report_option, say, tabulate)
from orchestrator.errors import UsageError


def verbose_option():
    return typer.Option(False, "--verbose", "-v",
                        help="Every table in full, not only what differs (as the reports are).")


def run(ctx: typer.Context, spec: Path,
        seed: Optional[int] = typer.Option(None, help="Override the spec's seed (recorded)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Re-read every dataset byte."),
        backend: Optional[str] = backend_option(),
        quiet: bool = quiet_option()) -> None:
    """Run a spec once in a hermetic container and record it."""
    from orchestrator.spec.load import load_spec
    from orchestrator.workflows.verify import raise_for_failed, run_once
    spec_value = load_spec(spec)
    store = open_store(ctx)
    record = run_once(spec_value, store=store, engine=open_backend(backend),
                      observer=observer(quiet), seed=seed, use_cache=not no_cache)
    _print_run_summary(record)
    raise_for_failed([record], store)


def _print_run_summary(record) -> None:
    from orchestrator.records import SUCCEEDED
    outputs = record.outputs
    say(f"run {record.id}: {record.status} in {outputs.duration_s:.1f}s")
    if outputs.metrics:
        from orchestrator.compare.comparison import natural_key
        from orchestrator.compare.numbers import metric_value_text
        rows = [(k, metric_value_text(outputs.metrics[k]))
                for k in sorted(outputs.metrics, key=natural_key)]
        say(tabulate(rows, headers=["metric", "value"], tablefmt="simple"))
    if record.status == SUCCEEDED and outputs.message:     # a capped log, an unmatched pattern
        say(f"reprun: note: {outputs.message}", err=True)


def verify(ctx: typer.Context, spec: Path,
           times: int = typer.Option(2, "--times", "-n", min=2, help="How many runs (≥ 2)."),
           sequential: bool = typer.Option(False, "--sequential", help="Never run in parallel."),
           report: List[Path] = report_option(),
           no_cache: bool = typer.Option(False, "--no-cache", help="Re-read every dataset byte."),
           vary: Optional[str] = typer.Option(
               None, "--vary", help="Vary these factors on the second run and hunt the culprit: "
                                    "`all` or names, e.g. cpus,tz (see docs/variations.md)."),
           vary_seed: Optional[int] = typer.Option(
               None, "--vary-seed", min=0, help="Repeat the random choices of an earlier --vary."),
           diagnose: bool = typer.Option(
               False, "--diagnose", help="When the runs differ under identical inputs, run pairs "
                                         "with sources of nondeterminism removed and name the "
                                         "one (see docs/variations.md)."),
           backend: Optional[str] = backend_option(),
           quiet: bool = typer.Option(False, "--quiet", "-q"),
           verbose: bool = verbose_option(),
           suggest: bool = typer.Option(
               False, "--suggest", help="With --times 3 or more: print the compare: block the "
                                        "observed spread suggests (docs/reports.md).")) -> None:
    """Train a spec N times (default twice) and say whether the results match."""
    from orchestrator.spec.load import load_spec
    from orchestrator.workflows import verify as workflow
    spec_value = load_spec(spec)
    workflow.check_report_paths(report)
    names = workflow.vary_names(vary, vary_seed, times)
    if suggest and times < 3:
        raise UsageError("--suggest reads the spread of several runs; give --times 3 or more.")
    outcome = workflow.verify(
        spec_value, store=open_store(ctx), engine=open_backend(backend),
        # Each line of job output says which run printed it ([run 1/2] | ...), in parallel or
        # not: with --vary, too ([control], [varied], [search 1]).
        observer=observer(quiet, parallel=True), times=times,
        sequential=sequential, report_paths=report, use_cache=not no_cache, vary=names,
        vary_seed=vary_seed, repeat=f"reprun verify {shlex.quote(str(spec))}",
        diagnose=diagnose)
    if outcome.spread is not None:
        typer.echo(outcome.spread.summary)
        if suggest:
            typer.echo(outcome.spread.suggested_block(spec_value.compare.artifacts,
                                                      keep=spec_value.compare.metrics))
    _print_reports(outcome, verbose)


def diagnose(ctx: typer.Context, run_a: str, run_b: str,
             dataset: Optional[Path] = typer.Option(
                 None, "--dataset", help="The dataset's new location (verified against the "
                                         "recorded hash)."),
             report: List[Path] = report_option(),
             backend: Optional[str] = backend_option(),
             quiet: bool = quiet_option()) -> None:
    """Name the source of nondeterminism of two recorded runs that differ under identical
    inputs, by running pairs of their job with sources removed."""
    from orchestrator.workflows.verify import diagnose_recorded
    from orchestrator.workflows import verify as workflow
    workflow.check_report_paths(report)
    _print_reports(diagnose_recorded(open_store(ctx), open_backend(backend),
                                     observer(quiet, parallel=True), run_a, run_b,
                                     dataset=dataset, report_paths=report))


def _print_reports(outcome, verbose: bool = False) -> None:
    from orchestrator.reports import render
    color = bool(sys.stdout and sys.stdout.isatty())
    width = shutil.get_terminal_size((100, 24)).columns
    for written in outcome.reports:
        # The report escapes what it shows itself, and may colour it.
        typer.echo(render(written.comparison, "terminal", color=color, verbose=verbose,
                          width=width))
        for path in written.files:
            say(f"report written: {path}", err=True)
        say(f"report saved in the store: {written.saved}", err=True)
    raise typer.Exit(outcome.exit_code)


def diff(ctx: typer.Context, run_a: str, run_b: str,
         report: List[Path] = typer.Option([], "--report", help="Write a report; repeatable."),
         verbose: bool = verbose_option()) -> None:
    """Compare two recorded runs (exit 0 identical/equivalent, 1 differs)."""
    from orchestrator.workflows import verify as workflow
    workflow.check_report_paths(report)
    _print_reports(workflow.diff(open_store(ctx), run_a, run_b, report), verbose)


def report(path: Path, fmt: str = typer.Option("terminal", "--format", "-f",
                                              help="terminal, md, html, json or junit."),
           output: Optional[Path] = typer.Option(None, "--output", "-o"),
           verbose: bool = verbose_option()) -> None:
    """Render a stored JSON report again, in any format."""
    from orchestrator.files import refuse_unwritable_file, write_text
    from orchestrator.reports import FORMATS, load_json_report, render
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(sorted(FORMATS))}.")
    if output:
        refuse_unwritable_file(output, "report")
    options = {"verbose": verbose, "width": shutil.get_terminal_size((100, 24)).columns} \
        if fmt == "terminal" else {}
    text = render(load_json_report(path), fmt, **options)
    if output:
        write_text(output, text, "report")
    else:
        say(text)


def rerun(ctx: typer.Context,
          run_id: Optional[str] = typer.Argument(None, help="The recorded run to replay."),
          dataset: Optional[Path] = typer.Option(None, "--dataset",
                                                 help="The dataset's new location (verified against the recorded hash)."),
          from_archive: Optional[Path] = typer.Option(None, "--from-archive",
                                                      help="Replay from an archive written by `reprun archive`."),
          allow: List[str] = typer.Option([], "--allow", help="Let an archived run relax one hermetic setting: network=host, user=UID:GID or writable-root; repeatable."),
          env_from_caller: List[str] = typer.Option([], "--env-from-caller", metavar="NAME", help="Give an archived run your value of the secret NAME; repeatable."),
          report: List[Path] = typer.Option([], "--report", help="Write a report; repeatable."),
          backend: Optional[str] = backend_option(),
          quiet: bool = typer.Option(False, "--quiet", "-q"),
          verbose: bool = verbose_option()) -> None:
    """Replay a recorded run from its record alone, then compare with the original."""
    from orchestrator.workflows import verify as workflow
    if (run_id is None) == (from_archive is None):
        raise UsageError("give either a RUN_ID or --from-archive FILE (not both).")
    workflow.check_report_paths(report)
    outcome = workflow.rerun(open_store(ctx), open_backend(backend), observer(quiet),
                             run_id=run_id, from_archive=from_archive, dataset=dataset,
                             allow=allow, env_from_caller=env_from_caller, report_paths=report)
    _print_reports(outcome, verbose)
