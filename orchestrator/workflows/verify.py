"""`reprun run`, `verify`, `rerun` and `diff` as library calls: train, compare, report.

The command line only parses and renders; what a run's failure means, which comparisons are
made, where each report goes and which exit code the verdict gives are decided here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.errors import InfrastructureError, PinMismatch, UsageError
from orchestrator.events import RunObserver
from orchestrator.execution.job import Executor
from orchestrator.records import ERROR, INTERRUPTED, SUCCEEDED, RunRecord
from orchestrator.store.db import Store

LOG_TAIL_LINES = 15


@dataclass(frozen=True)
class WrittenReport:
    """One comparison, with where its reports went."""
    comparison: object          # orchestrator.compare.comparison.Comparison
    files: tuple[Path, ...]     # the --report paths written
    saved: Path                 # the JSON report kept in the store


@dataclass(frozen=True)
class Outcome:
    """What a verify, rerun or diff ends with: its reports and the exit code of its verdict."""
    reports: tuple[WrittenReport, ...]
    exit_code: int
    records: tuple[RunRecord, ...] = field(default_factory=tuple)
    spread: object = None       # orchestrator.compare.spread.Spread, from three runs or more


def raise_for_failed(records, store: Store) -> None:
    """Every run that did not succeed, as the error the user is shown (each with its log's tail);
    its exit code is the first failure's."""
    from orchestrator.runner import failure_of
    errors = []
    for record in records:
        if record.status == SUCCEEDED:
            continue
        if record.status == INTERRUPTED:
            raise KeyboardInterrupt
        error = failure_of(record, log_tail(store, record.id))
        if record.status == ERROR:
            error = InfrastructureError(error.message, details=error.details)
        errors.append(error)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise type(errors[0])(f"{len(errors)} of {len(records)} runs failed.", details=[
            line for error in errors for line in (error.message, *("  " + d for d in error.details))])


def report_failures(store: Store, records, report_paths) -> None:
    """When a run failed, the reports asked for are still written (verdict `incomplete`, with
    the reason), so that CI always finds one; then the failure is raised as before."""
    if report_paths and any(r.status != SUCCEEDED for r in records) \
            and not any(r.status == INTERRUPTED for r in records):
        compare_and_report(store, records, report_paths)
    raise_for_failed(records, store)


def log_tail(store: Store, run_id: str) -> list[str]:
    log = store.run_dir(run_id) / "log.txt"
    if not log.exists():
        return []
    return log.read_bytes()[-4096:].decode("utf-8", "replace").splitlines()[-LOG_TAIL_LINES:]


def check_report_paths(paths) -> None:
    """Refuse a report path of no known format, or one that cannot be written, before any work."""
    from orchestrator.files import refuse_unwritable_file
    from orchestrator.reports import format_for_path
    for path in paths:
        format_for_path(path)
        refuse_unwritable_file(path, "report")


def compare_and_report(store: Store, records, report_paths, *,
                       comparisons: list | None = None) -> Outcome:
    """Compare the first record with each other one (or take the comparisons given), keep each
    JSON report in the store and write the asked-for reports (`--times N` names them per run)."""
    from orchestrator.compare.comparison import combined_verdict, compare_records
    from orchestrator.files import write_text
    from orchestrator.reports import format_for_path, render
    from orchestrator.store.baselines import approved_note
    extra = approved_note(store, [r.id for r in records])
    spread = None
    if comparisons is None and len(records) >= 3:
        from orchestrator.compare.spread import spread_of
        spread = spread_of(records)
        extra = {**extra, "spread": spread.table()}
    first = records[0]
    from orchestrator.compare.artifacts.contents import contents_in_store
    contents = contents_in_store(store)
    comparisons = comparisons or [compare_records(first, other, baseline_id=first.id, extra=extra,
                                                  contents=contents)
                                  for other in records[1:]]
    written = []
    for comparison in comparisons:
        saved = store.save_report([comparison.a.id, comparison.b.id],
                                  comparison.verdict, render(comparison, "json"))
        files = []
        for path in report_paths:
            target = path if len(comparisons) == 1 else path.with_name(
                f"{path.stem}-{comparison.b.id}{path.suffix}")
            write_text(target, render(comparison, format_for_path(path)), "report")
            files.append(target)
        written.append(WrittenReport(comparison, tuple(files), saved))
    verdict = spread.verdict if spread is not None else combined_verdict(comparisons)
    return Outcome(tuple(written), verdict.exit_code, tuple(records), spread)


def run_once(spec, *, store: Store, engine: Executor, observer: RunObserver,
             seed: int | None = None, use_cache: bool = True) -> RunRecord:
    """`reprun run`: one recorded run (its failure is the caller's to raise, after the summary)."""
    from orchestrator.runner import execute, prepare
    prepared = prepare(spec, store=store, engine=engine, observer=observer, use_cache=use_cache)
    return execute(prepared, store=store, engine=engine, observer=observer, seed=seed)


def vary_names(vary: str | None, vary_seed: int | None, times: int) -> tuple:
    from orchestrator.variations.factors import parse_vary
    if vary is None:
        if vary_seed is not None:
            raise UsageError("--vary-seed repeats the choices of --vary; give --vary too.")
        return ()
    if times != 2:
        raise UsageError("--vary compares one control run with one varied run; drop --times.")
    return parse_vary(vary)


def verify(spec, *, store: Store, engine: Executor, observer: RunObserver, times: int = 2,
           sequential: bool = False, report_paths=(), use_cache: bool = True,
           vary: tuple = (), vary_seed: int | None = None, repeat: str = "",
           diagnose: bool = False) -> Outcome:
    """`reprun verify`: train `times` times (or a control and a varied run), compare, report.

    The report paths were checked by the caller, before anything was opened.
    """
    from orchestrator.parallel import RunPlan, fits_in_parallel, run_all
    from orchestrator.runner import prepare
    from orchestrator.variations import diagnose as diagnosis
    if diagnose and (vary or times != 2):
        raise UsageError("--diagnose compares one pair of runs under identical inputs; drop "
                         + ("--vary." if vary else "--times."))
    prepared = prepare(spec, store=store, engine=engine, observer=observer,
                       use_cache=use_cache)
    if vary:
        return _verify_varied(prepared, vary, vary_seed, store=store, engine=engine,
                              observer=observer, report_paths=report_paths, repeat=repeat,
                              side_by_side=not sequential)
    parallel = not sequential and fits_in_parallel(
        spec.resources.cpus, times, prepared.host.get("host_cpus"))
    observer.stage("verify", f"{times} runs, {'in parallel' if parallel else 'one after another'}")
    plans = [RunPlan(label=f"run {i + 1}/{times}") for i in range(times)]
    records = run_all(prepared, plans, store=store, engine=engine, observer=observer,
                      parallel=parallel)
    report_failures(store, records, report_paths)
    comparisons = diagnosis.after_plain_pair(prepared, records, store=store, engine=engine,
                                             observer=observer, diagnose=diagnose,
                                             command=repeat or "reprun verify SPEC")
    return compare_and_report(store, records, report_paths, comparisons=comparisons)


def _verify_varied(prepared, names, seed, *, store, engine, observer, report_paths,
                   repeat, side_by_side) -> Outcome:
    from orchestrator.variations.culprit import plan_for, verify_varied
    from orchestrator.variations.factors import new_seed
    plan = plan_for(prepared, names, new_seed() if seed is None else seed, engine=engine)
    if not plan.variations:
        raise UsageError("none of the factors asked for can be varied here:",
                         details=[f"{s.factor}: {s.reason}" for s in plan.skipped])
    result = verify_varied(prepared, plan, store=store, engine=engine, observer=observer,
                           repeat=repeat, side_by_side=side_by_side)
    if result.comparison is None:
        raise_for_failed([result.control], store)
    return compare_and_report(store, [t.record for t in result.trials[:2]], report_paths,
                              comparisons=[result.comparison])


def diff(store: Store, run_a: str, run_b: str, report_paths=()) -> Outcome:
    """`reprun diff`: compare two recorded runs."""
    return compare_and_report(store, [store.get(run_a), store.get(run_b)], report_paths)


def rerun(store: Store, engine: Executor, observer: RunObserver, *,
          run_id: str | None = None, from_archive: Path | None = None,
          dataset: Path | None = None, allow=(), env_from_caller=(),
          report_paths=()) -> Outcome:
    """`reprun rerun`: replay a recorded run (from the store or an archive) and compare.

    The engine's client is reached only once the archive is found: a wrong archive name is a
    bad invocation (exit 2) even where no engine answers.
    """
    from orchestrator.execution.backend import ClientOnFirstUse
    from orchestrator.rerun import spec_from_record
    from orchestrator.runner import execute, prepare
    if (run_id is None) == (from_archive is None):
        raise UsageError("give either a RUN_ID or --from-archive FILE (not both).")
    if from_archive is not None:
        from orchestrator.rerun import replay_from_archive, trust_from_flags
        loaded = replay_from_archive(from_archive, store, client=ClientOnFirstUse(lambda: engine.client),
                                     trust=trust_from_flags(allow, env_from_caller),
                                     dataset_path=dataset,
                                     progress=lambda phase, done, total:
                                     observer.progress("archive", phase, done, total))
        original, spec = loaded.record, loaded.accepted
    else:
        original = store.get(run_id)
        spec = spec_from_record(original, dataset_path=dataset)
    prepared = prepare(spec, store=store, engine=engine, observer=observer)
    if prepared.image.id != original.inputs.image.id:
        raise PinMismatch(f"the image resolved to {prepared.image.id}, but run {original.id} ran "
                          f"{original.inputs.image.id}; refusing to replay on a different image.")
    from orchestrator.variations.factors import replay_transform
    transform, not_replayed = replay_transform(original.inputs.container.get("variations"))
    if not_replayed:
        observer.stage("rerun", "not replayed (unknown to this reprun): " + ", ".join(not_replayed))
    record = execute(prepared, store=store, engine=engine, observer=observer, label="rerun",
                     transform=transform)
    report_failures(store, [original, record], report_paths)
    return compare_and_report(store, [original, record], report_paths)


def diagnose_recorded(store: Store, engine: Executor, observer: RunObserver, run_a: str,
                      run_b: str, *, dataset: Path | None = None, report_paths=()):
    """`reprun diagnose RUN_A RUN_B`: the job of two recorded runs, diagnosed."""
    from orchestrator.rerun import spec_from_record
    from orchestrator.runner import prepare
    from orchestrator.variations.diagnose import diagnose_runs, refuse_unless_diagnosable
    a, b = store.get(run_a), store.get(run_b)
    refuse_unless_diagnosable(a, b)
    prepared = prepare(spec_from_record(a, dataset_path=dataset), store=store, engine=engine,
                       observer=observer)
    if prepared.image.id != a.inputs.image.id:
        raise PinMismatch(f"the image resolved to {prepared.image.id}, but run {a.id} ran "
                          f"{a.inputs.image.id}; refusing to diagnose on a different image.")
    result = diagnose_runs(prepared, (a, b), store=store, engine=engine, observer=observer)
    return compare_and_report(store, [a, b], report_paths, comparisons=[result.comparison])
