"""`reprun check`: the scheduled rebuild check over many specs.

For each spec: (a) when its image is built from a Dockerfile, rebuild it without cache and diff
the fresh image's environment manifest against the pinned image's (environment drift); (b)
retrain on the pinned image and compare with the baseline (or the latest successful run; with
neither, train twice).
"""
from __future__ import annotations

import dataclasses
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from orchestrator.execution.job import Executor
from orchestrator.store.baselines import baseline_of
from orchestrator.compare.artifacts.contents import contents_in_store
from orchestrator.compare.comparison import compare_records
from orchestrator.compare.environment import compare_environments
from orchestrator.compare.value import Comparison, EnvironmentRow
from orchestrator.errors import ExitCode, ReprunError, UsageError
from orchestrator.events import RunObserver
from orchestrator.execution.hermetic import RunPaths, container_job
from orchestrator.manifest.probes import ManifestCapture, new_marker, parse_manifest, write_probe
from orchestrator.records import EnvironmentManifest, SUCCEEDED
from orchestrator.runner import PreparedRun, execute, prepare
from orchestrator.spec.load import load_spec
from orchestrator.spec.model import ImageSpec
from orchestrator.store.db import Store
from orchestrator.parallel import RunPlan, fits_in_parallel, run_all, run_concurrently

if TYPE_CHECKING:
    from orchestrator.images import FreshBuilds


@dataclass(frozen=True)
class SpecCheck:
    spec_path: str
    spec_name: str
    drift: tuple[EnvironmentRow, ...] | None = None     # None: not built from a Dockerfile
    comparison: Comparison | None = None
    compared_with: str | None = None                     # "baseline", "latest run", "second run"
    error: str | None = None
    exit_code: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def drifted(self) -> bool:
        return bool(self.drift) or (self.comparison is not None
                                    and self.comparison.verdict == "differs")


def capture_manifest(spec, image_id: str, engine: Executor, host: dict) -> EnvironmentManifest:
    """The environment facts of an image, read by the same probe a run uses, running `true`."""
    scratch = Path(tempfile.mkdtemp(prefix="reprun-probe-"))
    try:
        paths = RunPaths(scratch)
        job = container_job(spec, run_id="probe-" + scratch.name[-8:], image_id=image_id,
                            seed=spec.seed, paths=paths)
        job = dataclasses.replace(job, command=("true",))
        for folder in (paths.outputs, paths.meta):
            folder.mkdir(parents=True)
            folder.chmod(0o777)
        marker = new_marker()
        write_probe(paths.meta, marker)
        capture = ManifestCapture(marker, lambda *_: None)
        engine.run(job, capture.feed)
        return parse_manifest(capture.text, marker, host,
                              cut_from=capture.seen if capture.cut else None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def environment_drift(spec, prepared: PreparedRun, *, engine: Executor,
                      observer: RunObserver, label: str,
                      fresh_builds: "FreshBuilds") -> tuple[EnvironmentRow, ...]:
    observer.stage(label, f"rebuilding {spec.image.build.context} without cache")
    fresh_builds.pinned.add(prepared.image.id)
    fresh_id = fresh_builds.build(engine.client, spec.image.build,
                                  lambda phase, done, total, text:
                                  observer.progress(label, phase, done, total, text))
    pinned = capture_manifest(spec, prepared.image.id, engine, prepared.host)
    fresh = capture_manifest(spec, fresh_id, engine, prepared.host)
    rows, _ = compare_environments(pinned, fresh, "pinned", "rebuilt")
    # Hostname, run IDs and the like differ between any two containers; they are not drift.
    return tuple(r for r in rows if r.section not in ("hostname",))


def check_spec(path: Path, *, store: Store, engine: Executor, observer: RunObserver,
               fresh_builds: "FreshBuilds") -> SpecCheck:
    label = path.stem
    try:
        spec = load_spec(path)
        drift = None
        if spec.image.build is not None and spec.image.digest:
            pinned_spec = dataclasses.replace(
                spec, image=ImageSpec(ref=None, build=None, digest=spec.image.digest))
        else:
            pinned_spec = spec
        prepared = prepare(pinned_spec, store=store, engine=engine, observer=observer,
                           label=label)
        if spec.image.build is not None:
            drift = environment_drift(spec, prepared, engine=engine, observer=observer,
                                      label=label, fresh_builds=fresh_builds)
        approval = baseline_of(store, spec.name)
        reference = store.get(approval.run_id) if approval else store.latest_succeeded(spec.name)
        if reference is not None:
            record = execute(prepared, store=store, engine=engine, observer=observer,
                             label=label)
            records = [reference, record]
            compared_with = "baseline" if approval else "latest successful run"
        else:
            parallel = fits_in_parallel(spec.resources.cpus, 2, prepared.host.get("host_cpus"))
            records = run_all(prepared, [RunPlan(f"{label} 1/2"), RunPlan(f"{label} 2/2")],
                              store=store, engine=engine, observer=observer, parallel=parallel)
            compared_with = "second run"
        comparison = compare_records(records[0], records[1], baseline_id=records[0].id,
                                     tolerances=records[1].compare,
                                     contents=contents_in_store(store))
        failed = records[-1].status != SUCCEEDED
        code = (ExitCode.JOB_FAILED if failed else
                ExitCode.DIFFERS if (drift or comparison.verdict == "differs") else ExitCode.OK)
        return SpecCheck(spec_path=str(path), spec_name=spec.name, drift=drift,
                         comparison=comparison, compared_with=compared_with, exit_code=int(code))
    except ReprunError as error:
        return SpecCheck(spec_path=str(path), spec_name=path.stem, error=error.render(),
                         exit_code=int(error.exit_code))


def check_all(paths: list[Path], *, store: Store, engine: Executor, observer: RunObserver,
              jobs: int = 1) -> list[SpecCheck]:
    from orchestrator.images import FreshBuilds     # it loads the Docker SDK
    fresh_builds = FreshBuilds()       # one rebuild per distinct build context, shared

    def one(path: Path) -> SpecCheck:
        return check_spec(path, store=store, engine=engine, observer=observer,
                          fresh_builds=fresh_builds)
    try:
        if jobs <= 1:
            return [one(p) for p in paths]
        return run_concurrently(one, paths, workers=jobs, engine=engine)
    finally:
        fresh_builds.remove(engine.client)


def specs_to_check(specs: list[Path] | None) -> list[Path]:
    """The specs given, else the project's specs/*.yaml (refused when there are none)."""
    paths = list(specs or sorted(Path("specs").glob("*.yaml")))
    if not paths:
        raise UsageError("no specs to check: give spec files, or run where specs/*.yaml exist.")
    return paths


def refuse_unwritable_outputs(junit_path: Path | None, report_dir: Path | None) -> None:
    """Before any rebuild: a JUnit file or report folder that could not be written is refused."""
    from orchestrator.files import refuse_unwritable_file, refuse_unwritable_folder
    if junit_path is not None:
        refuse_unwritable_file(junit_path, "JUnit file")
    if report_dir is not None:
        refuse_unwritable_folder(report_dir, "report folder")


def save_reports(results: list[SpecCheck], *, store: Store, report_dir: Path | None,
                 junit_path: Path | None) -> None:
    """Each spec's comparison kept in the store (and as Markdown and HTML in `report_dir`), and
    the JUnit summary."""
    from orchestrator.files import write_text
    from orchestrator.reports import render
    for result in results:
        if result.comparison is None:
            continue
        store.save_report([result.comparison.a.id, result.comparison.b.id],
                          result.comparison.verdict, render(result.comparison, "json"))
        if report_dir is not None:
            for fmt, ext in (("md", "md"), ("html", "html")):
                write_text(report_dir / f"{result.spec_name}.{ext}",
                           render(result.comparison, fmt), "report")
    if junit_path is not None:
        write_text(junit_path, junit(results), "JUnit file")


DRIFT_ROWS_SHOWN = 40


def drift_rows(result: SpecCheck) -> list[tuple]:
    """The first rows of a spec's environment drift, as the check prints them."""
    return [(r.section, r.name, r.a or "-", r.b or "-")
            for r in (result.drift or ())[:DRIFT_ROWS_SHOWN]]


def summary_rows(results: list[SpecCheck]) -> list[tuple]:
    rows = []
    for r in results:
        drift = ("n/a (pulled)" if r.drift is None and r.error is None else
                 "-" if r.error else
                 "none" if not r.drift else f"{len(r.drift)} changes")
        verdict = r.comparison.verdict if r.comparison else "error"
        cause = (r.error.splitlines()[0] if r.error else
                 r.comparison.causes[0].summary if r.comparison and r.comparison.causes else "")
        rows.append((r.spec_name, drift, verdict, r.compared_with or "-", r.exit_code, cause[:70]))
    return rows


def overall_exit(results: list[SpecCheck]) -> int:
    return max((r.exit_code for r in results), default=0)


def junit(results: list[SpecCheck]) -> str:
    from orchestrator.reports.junit import JUnitCase, junit_xml
    cases = []
    for r in results:
        for name, failure in (
                ("environment", None if not r.drift else
                 "; ".join(f"{row.section} {row.name}: {row.a} -> {row.b}" for row in r.drift)),
                ("results", r.error or (None if r.comparison and r.comparison.verdict != "differs"
                                        else r.comparison.summary if r.comparison else None))):
            cases.append(JUnitCase(f"reprun.check.{r.spec_name}", name,
                                   failure=("failure", failure[:200], failure) if failure else None))
    return junit_xml("reprun check", cases)
