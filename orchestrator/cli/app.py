"""The `reprun` command: parses arguments, calls the library, maps outcomes to exit codes."""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer
import typer.main

from orchestrator import __version__
from orchestrator.errors import ExitCode, ReprunError, UsageError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Retrain a pinned ML job in a hermetic container, compare, explain.")
runs_app = typer.Typer(help="List and show recorded runs (for audits).", no_args_is_help=False)
app.add_typer(runs_app, name="runs")


def tabulate(*args, **kwargs) -> str:
    # Imported when a table is printed: the import costs about 40 ms, a good part of what a
    # one-shot `reprun run` adds to the job, which prints no table.
    from tabulate import tabulate as render_table
    return render_table(*args, **kwargs)


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


def _store(ctx: typer.Context):
    from orchestrator.store.db import Store
    store = Store(ctx.obj.get("store") if ctx.obj else None)
    store.repair()
    return store


def _observer(quiet: bool = False, parallel: bool = False):
    from orchestrator.events import RunObserver, TerminalObserver
    return RunObserver() if quiet else TerminalObserver(prefix_output=parallel)


def _backend_option():
    return typer.Option(None, "--backend", envvar="REPRUN_BACKEND", metavar="local|swarm",
                        help="Where jobs run (default: `backend` in reprun.toml, else local).")


def _backend(name: Optional[str]):
    from orchestrator.execution.config import open_backend
    return open_backend(name)


@app.command()
def validate(specs: List[Path] = typer.Argument(..., help="Spec files to check.")) -> None:
    """Check spec files without running anything (exit 2 when any is invalid)."""
    from orchestrator.spec.load import validate_specs
    worst = ExitCode.OK
    for path, error in validate_specs(specs):
        if error is None:
            typer.echo(f"{path}: valid")
        else:
            typer.echo(error.render(), err=True)
            worst = max(worst, error.exit_code)
    raise typer.Exit(int(worst))


@app.command()
def run(ctx: typer.Context, spec: Path,
        seed: Optional[int] = typer.Option(None, help="Override the spec's seed (recorded)."),
        no_cache: bool = typer.Option(False, "--no-cache", help="Re-read every dataset byte."),
        backend: Optional[str] = _backend_option(),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or job output.")) -> None:
    """Run a spec once in a hermetic container and record it."""
    from orchestrator.runner import execute, prepare
    from orchestrator.spec.load import load_spec
    spec_value = load_spec(spec)
    store, engine, observer = _store(ctx), _backend(backend), _observer(quiet)
    prepared = prepare(spec_value, store=store, engine=engine, observer=observer,
                       use_cache=not no_cache)
    record = execute(prepared, store=store, engine=engine, observer=observer)
    _print_run_summary(record)
    _raise_for_failed([record], store)


def _print_run_summary(record) -> None:
    from orchestrator.records import SUCCEEDED
    outputs = record.outputs
    typer.echo(f"run {record.id}: {record.status} in {outputs.duration_s:.1f}s")
    if outputs.metrics:
        rows = [(k, f"{v:.6g}") for k, v in sorted(outputs.metrics.items())]
        typer.echo(tabulate(rows, headers=["metric", "value"], tablefmt="simple"))
    if record.status == SUCCEEDED and outputs.message:     # a capped log, an unmatched pattern
        typer.echo(f"reprun: note: {outputs.message}", err=True)


def _raise_for_failed(records, store) -> None:
    from orchestrator.records import ERROR, INTERRUPTED, SUCCEEDED
    from orchestrator.runner import failure_of
    for record in records:
        if record.status == SUCCEEDED:
            continue
        if record.status == INTERRUPTED:
            raise KeyboardInterrupt
        log = store.run_dir(record.id) / "log.txt"
        tail = log.read_bytes()[-4096:].decode("utf-8", "replace").splitlines()[-15:] if log.exists() else []
        error = failure_of(record, tail)
        if record.status == ERROR:
            from orchestrator.errors import InfrastructureError
            error = InfrastructureError(error.message, details=error.details)
        raise error


@app.command()
def verify(ctx: typer.Context, spec: Path,
           times: int = typer.Option(2, "--times", "-n", min=2, help="How many runs (≥ 2)."),
           sequential: bool = typer.Option(False, "--sequential", help="Never run in parallel."),
           report: List[Path] = typer.Option([], "--report", help="Write a report (.md .html .json .xml); repeatable."),
           no_cache: bool = typer.Option(False, "--no-cache", help="Re-read every dataset byte."),
           vary: Optional[str] = typer.Option(
               None, "--vary", help="Vary these factors on the second run and hunt the culprit: "
                                    "`all` or names, e.g. cpus,tz (see docs/variations.md)."),
           vary_seed: Optional[int] = typer.Option(
               None, "--vary-seed", min=0, help="Repeat the random choices of an earlier --vary."),
           backend: Optional[str] = _backend_option(),
           quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Train a spec N times (default twice) and say whether the results match."""
    from orchestrator.runner import prepare
    from orchestrator.spec.load import load_spec
    from orchestrator.parallel import RunPlan, fits_in_parallel, run_all
    spec_value = load_spec(spec)
    _check_report_paths(report)
    vary_names = _vary_names(vary, vary_seed, times)
    store, engine = _store(ctx), _backend(backend)
    prepared = prepare(spec_value, store=store, engine=engine, observer=_observer(quiet),
                       use_cache=not no_cache)
    if vary_names:
        return _verify_varied(spec, prepared, store, engine, vary_names, vary_seed, report, quiet)
    parallel = not sequential and fits_in_parallel(
        spec_value.resources.cpus, times, prepared.host.get("host_cpus"))
    observer = _observer(quiet, parallel=parallel)
    observer.stage("verify", f"{times} runs, {'in parallel' if parallel else 'one after another'}")
    plans = [RunPlan(label=f"run {i + 1}/{times}") for i in range(times)]
    records = run_all(prepared, plans, store=store, engine=engine, observer=observer,
                      parallel=parallel)
    _raise_for_failed(records, store)
    _compare_and_report(store, records, report)


def _vary_names(vary: Optional[str], vary_seed: Optional[int], times: int) -> tuple:
    from orchestrator.variations.factors import parse_vary
    if vary is None:
        if vary_seed is not None:
            raise UsageError("--vary-seed repeats the choices of --vary; give --vary too.")
        return ()
    if times != 2:
        raise UsageError("--vary compares one control run with one varied run; drop --times.")
    return parse_vary(vary)


def _verify_varied(spec: Path, prepared, store, engine, names, seed: Optional[int],
                   report: List[Path], quiet: bool) -> None:
    from orchestrator.variations.culprit import plan_for, verify_varied
    from orchestrator.variations.factors import new_seed
    plan = plan_for(prepared, names, new_seed() if seed is None else seed)
    if not plan.variations:
        raise UsageError("none of the factors asked for can be varied here:",
                         details=[f"{s.factor}: {s.reason}" for s in plan.skipped])
    result = verify_varied(prepared, plan, store=store, engine=engine, observer=_observer(quiet),
                           repeat=f"reprun verify {shlex.quote(str(spec))}")
    if result.comparison is None:
        _raise_for_failed([result.control], store)
    _compare_and_report(store, [t.record for t in result.trials[:2]], report,
                        comparisons=[result.comparison])


def _check_report_paths(paths: List[Path]) -> None:
    from orchestrator.reports import format_for_path
    from orchestrator.files import refuse_unwritable_file
    for path in paths:
        format_for_path(path)
        refuse_unwritable_file(path, "report")


def _compare_and_report(store, records, report_paths: List[Path], extra: dict | None = None,
                        comparisons: list | None = None) -> None:
    from orchestrator.store.baselines import approved_note
    from orchestrator.compare.comparison import combined_verdict, compare_records
    from orchestrator.reports import format_for_path, render
    from orchestrator.files import write_text
    extra = {**(extra or {}), **approved_note(store, [r.id for r in records])}
    first = records[0]
    comparisons = comparisons or [compare_records(first, other, baseline_id=first.id, extra=extra)
                                  for other in records[1:]]
    for comparison in comparisons:
        typer.echo(render(comparison, "terminal", color=bool(sys.stdout and sys.stdout.isatty())))
        text = render(comparison, "json")
        saved = store.save_report([comparison.a.run_id, comparison.b.run_id],
                                  comparison.verdict, text)
        for path in report_paths:
            target = path if len(comparisons) == 1 else path.with_name(
                f"{path.stem}-{comparison.b.run_id}{path.suffix}")
            write_text(target, render(comparison, format_for_path(path)), "report")
            typer.echo(f"report written: {target}", err=True)
        typer.echo(f"report saved in the store: {saved}", err=True)
    raise typer.Exit(combined_verdict(comparisons).exit_code)


@app.command()
def diff(ctx: typer.Context, run_a: str, run_b: str,
         report: List[Path] = typer.Option([], "--report", help="Write a report; repeatable.")) -> None:
    """Compare two recorded runs (exit 0 identical/equivalent, 1 differs)."""
    _check_report_paths(report)
    store = _store(ctx)
    _compare_and_report(store, [store.get(run_a), store.get(run_b)], report)


@app.command("report")
def report_cmd(path: Path, fmt: str = typer.Option("terminal", "--format", "-f",
                                                 help="terminal, md, html, json or junit."),
               output: Optional[Path] = typer.Option(None, "--output", "-o")) -> None:
    """Render a stored JSON report again, in any format."""
    from orchestrator.reports import FORMATS, load_json_report, render
    from orchestrator.files import refuse_unwritable_file, write_text
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(sorted(FORMATS))}.")
    if output:
        refuse_unwritable_file(output, "report")
    text = render(load_json_report(path), fmt)
    if output:
        write_text(output, text, "report")
    else:
        typer.echo(text)


@app.command()
def rerun(ctx: typer.Context,
          run_id: Optional[str] = typer.Argument(None, help="The recorded run to replay."),
          dataset: Optional[Path] = typer.Option(None, "--dataset",
                                                 help="The dataset's new location (verified against the recorded hash)."),
          from_archive: Optional[Path] = typer.Option(None, "--from-archive",
                                                      help="Replay from an archive written by `reprun archive`."),
          allow: List[str] = typer.Option([], "--allow", help="Let an archived run relax one hermetic setting: network=host, user=UID:GID or writable-root; repeatable."),
          env_from_caller: List[str] = typer.Option([], "--env-from-caller", metavar="NAME", help="Give an archived run your value of the secret NAME; repeatable."),
          report: List[Path] = typer.Option([], "--report", help="Write a report; repeatable."),
          backend: Optional[str] = _backend_option(),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Replay a recorded run from its record alone, then compare with the original."""
    from orchestrator.errors import PinMismatch
    from orchestrator.rerun import spec_from_record
    from orchestrator.runner import execute, prepare
    if (run_id is None) == (from_archive is None):
        raise UsageError("give either a RUN_ID or --from-archive FILE (not both).")
    _check_report_paths(report)
    store, engine, observer = _store(ctx), _backend(backend), _observer(quiet)
    if from_archive is not None:
        from orchestrator.rerun import replay_from_archive, trust_from_flags
        loaded = replay_from_archive(from_archive, store, client=engine.client,
                                     trust=trust_from_flags(allow, env_from_caller), dataset_path=dataset,
                                     progress=lambda phase, done, total: observer.progress("archive", phase, done, total))
        original, spec_value = loaded.record, loaded.accepted
    else:
        original = store.get(run_id)
        spec_value = spec_from_record(original, dataset_path=dataset)
    prepared = prepare(spec_value, store=store, engine=engine, observer=observer)
    if prepared.image.id != original.inputs.image.id:
        raise PinMismatch(f"the image resolved to {prepared.image.id}, but run {original.id} ran "
                          f"{original.inputs.image.id}; refusing to replay on a different image.")
    record = execute(prepared, store=store, engine=engine, observer=observer, label="rerun")
    _raise_for_failed([record], store)
    _compare_and_report(store, [original, record], report)


@app.command()
def archive(ctx: typer.Context, run_id: str,
            output: Path = typer.Option(..., "--output", "-o", help="The archive file to write: .tar, or compressed .tar.gz (.tgz), .tar.xz, .tar.bz2.")) -> None:
    """Write one self-contained archive of a run: image, dataset and record."""
    from orchestrator.store.archive import refuse_output, write_archive
    from orchestrator.execution.local import LocalEngine
    refuse_output(output)       # before the engine is asked for anything
    observer = _observer()
    path = write_archive(_store(ctx), run_id, output, client=LocalEngine().client,
                         progress=lambda phase, done, total: observer.progress("archive", phase, done, total))
    typer.echo(f"archive written: {path} ({path.stat().st_size / 2**20:.1f} MiB)")


@app.command()
def check(ctx: typer.Context,
          specs: List[Path] = typer.Argument(None, help="Spec files (default: specs/*.yaml)."),
          jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Check this many specs at once."),
          junit_path: Optional[Path] = typer.Option(None, "--junit", help="Write a JUnit XML summary."),
          report_dir: Optional[Path] = typer.Option(None, "--report-dir",
                                                    help="Write each spec's report here (Markdown and HTML)."),
          backend: Optional[str] = _backend_option(),
          quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Scheduled rebuild check: environment drift of rebuilt images, and results against baselines."""
    from orchestrator.workflows.check import check_all, junit, overall_exit, summary_rows
    from orchestrator.reports import render
    from orchestrator.files import refuse_unwritable_file, refuse_unwritable_folder, write_text
    paths = list(specs or sorted(Path("specs").glob("*.yaml")))
    if not paths:
        raise UsageError("no specs to check: give spec files, or run where specs/*.yaml exist.")
    if junit_path is not None:
        refuse_unwritable_file(junit_path, "JUnit file")
    if report_dir is not None:
        refuse_unwritable_folder(report_dir, "report folder")
    store = _store(ctx)
    results = check_all(paths, store=store, engine=_backend(backend),
                        observer=_observer(quiet, parallel=True), jobs=jobs)
    for result in results:
        if result.drift:
            typer.echo(f"\n{result.spec_name}: the rebuilt image's environment drifted")
            typer.echo(tabulate([(r.section, r.name, r.a or "-", r.b or "-") for r in result.drift[:40]],
                                headers=["section", "name", "pinned", "rebuilt"]))
        if result.comparison is not None:
            store.save_report([result.comparison.a.run_id, result.comparison.b.run_id],
                              result.comparison.verdict, render(result.comparison, "json"))
            if report_dir is not None:
                for fmt, ext in (("md", "md"), ("html", "html")):
                    write_text(report_dir / f"{result.spec_name}.{ext}",
                               render(result.comparison, fmt), "report")
    typer.echo("")
    typer.echo(tabulate(summary_rows(results), headers=["spec", "environment drift", "results",
                                                        "compared with", "exit", "first cause"]))
    if junit_path is not None:
        write_text(junit_path, junit(results), "JUnit file")
    raise typer.Exit(overall_exit(results))


@runs_app.command("approve")
def runs_approve(ctx: typer.Context, run_id: str,
                 reason: str = typer.Option(..., "--reason", help="Why this run is the accepted one."),
                 by: Optional[str] = typer.Option(None, "--by", help="Who approves (default: the current user).")) -> None:
    """Mark a run as the accepted baseline of its spec (who, when, why are kept)."""
    from orchestrator.store.baselines import approve
    approval = approve(_store(ctx.parent.parent), run_id, reason=reason, by=by)
    typer.echo(f"run {approval.run_id} is now the baseline of {approval.spec} "
               f"(approved by {approval.approved_by} at {approval.approved_at})")


@runs_app.callback(invoke_without_command=True)
def runs_list(ctx: typer.Context,
              spec: Optional[str] = typer.Option(None, help="Only runs of this spec name."),
              status: Optional[str] = typer.Option(None, help="succeeded, failed, interrupted, error, running."),
              since: Optional[str] = typer.Option(None, help="Started at or after: an ISO date or date-time (UTC unless an offset is given), or a time ago (30m, 12h, 7d)."),
              until: Optional[str] = typer.Option(None, help="Started before: as --since."),
              limit: int = typer.Option(50, help="At most this many (newest first)."),
              as_json: bool = typer.Option(False, "--json")) -> None:
    """List recorded runs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    from orchestrator.records import FINAL_STATUSES, RUNNING
    if status is not None and status not in (RUNNING, *FINAL_STATUSES):
        raise UsageError(f"--status {status!r} is not a status; use one of "
                         f"{', '.join((*FINAL_STATUSES, RUNNING))}.")
    start = None if since is None else _moment(since, "--since")
    end = None if until is None else _moment(until, "--until")
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}: no run can lie "
                         "between them (--until is the first moment not included).")
    store = _store(ctx.parent)
    summaries = store.list(spec=spec, status=status, limit=limit, since=start, until=end)
    if as_json:
        typer.echo(json.dumps([s.__dict__ for s in summaries], indent=2))
        return
    rows = [(s.id, s.spec, s.status, s.started_at[:19].replace("T", " "),
             "" if s.duration_s is None else f"{s.duration_s:.1f}s",
             (s.image_id or "")[7:19], s.note or "") for s in summaries]
    filtered = any(x is not None for x in (spec, status, since, until))
    if rows:
        typer.echo(tabulate(rows, headers=["run", "spec", "status", "started (UTC)", "took",
                                           "image", "note"]))
    elif filtered and store.list(limit=1):
        typer.echo("no runs match these filters; `reprun runs` lists them all")
    else:
        typer.echo("no runs recorded")


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _moment(text: str, option: str) -> str:
    """A time as the store writes it (UTC, milliseconds, Z), from an ISO date or date-time (a
    space or T between; UTC unless it has an offset) or a time ago (30m, 12h, 7d, 2w)."""
    from datetime import datetime, timedelta, timezone
    from orchestrator.store.db import utc_text
    ago = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    try:
        if ago:
            when = datetime.now(timezone.utc) - timedelta(seconds=int(ago[1]) * _AGO[ago[2]])
        else:
            when = datetime.fromisoformat(text.strip())
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {text!r} is not a time: give a date (2026-11-27), a date and "
                         "time in UTC (2026-11-27 16:52:42, or with an offset such as +02:00), "
                         "or a time ago (30m, 12h, 7d, 2w).") from None
    return utc_text(when)


@runs_app.command("show")
def runs_show(ctx: typer.Context, run_id: str,
              as_json: bool = typer.Option(False, "--json")) -> None:
    """Print one run record readably (or as JSON)."""
    from orchestrator.store.baselines import baseline_of
    from orchestrator.reports.record import render_record
    store = _store(ctx.parent.parent)
    record = store.get(run_id)
    if as_json:
        typer.echo(record.to_json())
        return
    approval = baseline_of(store, record.inputs.spec_name)
    typer.echo(render_record(record, baseline=approval))


@runs_app.command("verify")
def runs_verify(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """Prove no stored record, log or artifact was altered or removed (exit 1 naming any that was)."""
    from orchestrator.store.integrity import audit_store
    from orchestrator.store.db import Store
    store = Store(ctx.obj.get("store") if ctx.obj else None)
    repaired = store.repair()
    audit = audit_store(store)
    if as_json:
        typer.echo(json.dumps({
            "store": str(audit.root), "intact": audit.intact, "records": audit.records,
            "head": {"seq": audit.head_seq, "sha256": audit.head_sha256, "run": audit.head_run},
            "logs": audit.logs, "artifacts": audit.artifacts, "repaired": repaired,
            "running": audit.running, "unrecorded": audit.unrecorded,
            "problems": [{"run": p.run_id, "what": p.what} for p in audit.problems]}, indent=2))
    else:
        for line in repaired:
            typer.echo(f"repaired {line}")
        typer.echo(f"store {audit.root}: {audit.records} records in the chain"
                   + (f", newest #{audit.head_seq} (run {audit.head_run}) sha256:{audit.head_sha256}"
                      if audit.records else ""))
        if audit.unrecorded:
            typer.echo(f"{len(audit.unrecorded)} runs were interrupted before a record was written: "
                       + ", ".join(audit.unrecorded))
        if audit.running:
            typer.echo(f"{len(audit.running)} runs are still going: {', '.join(audit.running)}")
        if audit.intact:
            typer.echo(f"re-hashed {audit.records} records, {audit.logs} logs and "
                       f"{audit.artifacts} artifacts: nothing was altered or removed.")
        else:
            typer.echo(f"{len(audit.problems)} problems: the store was altered after the fact", err=True)
            for problem in audit.problems:
                typer.echo(f"  {problem}", err=True)
    if not audit.intact:
        raise typer.Exit(int(ExitCode.DIFFERS))


@app.command()
def lock(ctx: typer.Context, specs: List[Path],
         check: bool = typer.Option(False, "--check", help="Only say whether the pins are current (exit 0/1)."),
         quiet: bool = typer.Option(False, "--quiet", "-q")) -> None:
    """Fill in or update a spec's pins: image digest or ID, dataset checksum."""
    from orchestrator.dataset.tree import HashCache
    from orchestrator.execution.local import LocalEngine
    from orchestrator.spec.lock import lock_spec
    engine, stale = LocalEngine(), []
    cache = HashCache(_store(ctx).db_path)     # remembers the pinned dataset's file list
    for path in specs:
        changes = lock_spec(path, engine=engine, write=not check, cache=cache)
        for change in changes:
            if not quiet or check:
                typer.echo(f"{path}: {'stale, lock would set ' if check else ''}{change}", err=True)
        if changes:
            stale.append(path)
    if check and stale:
        raise typer.Exit(int(ExitCode.DIFFERS))


@app.command()
def gc(ctx: typer.Context) -> None:
    """Remove what a crashed reprun left behind (containers, unused built images, folders of
    unrecorded runs) and repair runs it left `running`; say what was removed."""
    from orchestrator.execution.local import LocalEngine
    from orchestrator.execution.leftovers import remove_leftovers, remove_unused_builds
    from orchestrator.store.db import Store
    store = Store(ctx.obj.get("store") if ctx.obj else None)
    said = 0
    for line in store.repair():
        said += 1
        typer.echo(f"repaired {line}")
    for run_id in store.remove_unrecorded_run_folders():
        said += 1
        typer.echo(f"removed run folder {store.run_dir(run_id)} (interrupted before a record "
                   "was written)")
    client = LocalEngine().client
    finished = {s.id for s in store.list() if s.status != "running"}
    for text in remove_leftovers(client, finished_runs=finished):
        said += 1
        typer.echo(f"removed container {text}")
    from orchestrator.execution.swarm import remove_leftover_services
    for text in remove_leftover_services(client, finished_runs=finished):
        said += 1
        typer.echo(f"removed swarm service {text}")
    for image_id, text in remove_unused_builds(client, store.built_images_without_runs()):
        store.forget_built_image(image_id)
        if text:
            said += 1
            typer.echo(f"removed image {text}")
    if not said:
        typer.echo("nothing to remove: reprun left nothing behind")


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
        typer.echo(f"reprun: {error.render()}", err=True)
        code = int(error.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = INTERRUPTED_EXIT
    except typer.TyperException as error:   # argument errors: Typer explains them itself
        show = getattr(error, "show", None)
        show() if show else typer.echo(f"reprun: {error.format_message()}", err=True)
        code = error.exit_code
    except Exception as error:  # a bug: one paragraph for the user, the details in a file
        crash = Path("/tmp") / "reprun-crash.txt"
        crash.write_text(traceback.format_exc())
        typer.echo(f"reprun: internal error ({type(error).__name__}: {error}). This is a bug in "
                   f"reprun; the traceback is in {crash}.", err=True)
        code = int(ExitCode.INFRASTRUCTURE)
    if code == INTERRUPTED_EXIT:
        typer.echo("reprun: interrupted; runs under way were stopped and recorded as interrupted.",
                   err=True)
    sys.exit(code if isinstance(code, int) else 0)

