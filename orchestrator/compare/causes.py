"""The likely causes of a comparison, ranked: failed runs, inputs, environment, hints.

Each cause is one sentence in the user's words; the hints for nondeterminism under identical
inputs name what the hermetic settings pin (`THREAD_VARIABLES`, PYTHONHASHSEED) and what the
runs' records say was actually set.
"""
from __future__ import annotations

from typing import Sequence

from orchestrator.compare.environment import ENVIRONMENT_SECTIONS, SECTION_BY_NAME
from orchestrator.compare.value import (A_DIFFERS, ADDED, CAUSE_ENVIRONMENT, CAUSE_INPUT,
                                        CAUSE_NONDETERMINISM, CAUSE_RUN, CHANGED, CHANGES,
                                        DIFFERS, M_IDENTICAL, M_IGNORED, M_WITHIN, ArtifactRow,
                                        Cause, EnvironmentRow, InputRow, MetricRow)
from orchestrator.execution.hermetic import THREAD_VARIABLES
from orchestrator.knowledge import cited, known_cause, shown_in
from orchestrator.records import SUCCEEDED, RunRecord

_INPUT_GROUPS = (
    # prefix of InputRow.field, how the cause names it
    ("params.", "the params differ"),
    ("command", "the command differs"),
    ("env.", "the environment variables given to the job differ"),
    ("resources.", "the resources differ"),
    ("container.", "the container settings differ"),
)

# Per environment section, at most this many changes get a cause each; more become one cause.
_CHANGES_PER_CAUSE = 3


def likely_causes(
    a: RunRecord, b: RunRecord, verdict: str,
    inputs: Sequence[InputRow], environment: Sequence[EnvironmentRow],
    metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow],
) -> tuple[Cause, ...]:
    """Ranked: runs that failed, then inputs that differ, then the environment, then hints."""
    causes: list[Cause] = []
    for record in (a, b):
        if record.status != SUCCEEDED:
            details = (record.outputs.message,) if record.outputs and record.outputs.message else ()
            causes.append(Cause(CAUSE_RUN, f"run {record.id} did not succeed: "
                                           f"{failure_text(record)}", details))

    input_causes = _input_causes(inputs)
    causes.extend(input_causes)

    material = [row for row in environment if SECTION_BY_NAME[row.section].material]
    incidental = [row for row in environment if not SECTION_BY_NAME[row.section].material]
    causes.extend(_environment_causes(material))
    if verdict == DIFFERS and not input_causes and not material:
        causes.extend(_nondeterminism_causes(a, b, metrics, artifacts))
    causes.extend(_environment_causes(incidental))
    return tuple(causes)


def _input_causes(inputs: Sequence[InputRow]) -> list[Cause]:
    differ = {row.field: row for row in inputs if not row.same}
    causes = []
    image = [differ[f] for f in ("image.id", "image.repo_digest") if f in differ]
    if image:
        first = image[0]
        causes.append(Cause(CAUSE_INPUT, f"the image differs: {_shown(first.a)} vs "
                                         f"{_shown(first.b)}",
                            tuple(f"{r.field}: {_shown(r.a)} vs {_shown(r.b)}"
                                  for r in image[1:])))
    if "dataset.sha256" in differ:
        row = differ["dataset.sha256"]
        causes.append(Cause(CAUSE_INPUT, "the dataset differs",
                            (f"sha256 {_shown(row.a)} vs {_shown(row.b)}",)))
    if "seed" in differ:
        row = differ["seed"]
        causes.append(Cause(CAUSE_INPUT, f"the seed differs: {_shown(row.a)} vs {_shown(row.b)}"))
    for prefix, summary in _INPUT_GROUPS:
        rows = [r for name, r in differ.items() if name.startswith(prefix)]
        if rows:
            details = tuple(f"{r.field}: {_shown(r.a)} vs {_shown(r.b)}" for r in rows)
            if len(details) == 1:
                causes.append(Cause(CAUSE_INPUT, f"{summary}: {details[0]}"))
            else:
                causes.append(Cause(CAUSE_INPUT, summary, details))
    return causes


def _change_text(row: EnvironmentRow) -> str:
    label = SECTION_BY_NAME[row.section].label
    if row.change == CHANGED:
        return f"{label} {row.name} changed: {row.a} → {row.b}"
    if row.change == ADDED:
        return f"{label} {row.name} added" + ("" if row.b == "present" else f": {row.b}")
    return f"{label} {row.name} removed" + ("" if row.a == "present" else f" (was {row.a})")


def _environment_causes(rows: Sequence[EnvironmentRow]) -> list[Cause]:
    causes = []
    for spec in ENVIRONMENT_SECTIONS:
        section_rows = [r for r in rows if r.section == spec.section]
        if not section_rows:
            continue
        if len(section_rows) <= _CHANGES_PER_CAUSE:
            causes.extend(Cause(CAUSE_ENVIRONMENT, _change_text(r)) for r in section_rows)
            continue
        counts = {c: sum(r.change == c for r in section_rows) for c in CHANGES}
        how = ", ".join(f"{n} {c}" for c, n in counts.items() if n)
        causes.append(Cause(CAUSE_ENVIRONMENT,
                            f"{len(section_rows)} {spec.label} facts differ ({how})",
                            tuple(_change_text(r) for r in section_rows)))
    return causes


def _nondeterminism_causes(
    a: RunRecord, b: RunRecord, metrics: Sequence[MetricRow], artifacts: Sequence[ArtifactRow],
) -> list[Cause]:
    records = (a, b)
    hints: list[Cause] = []
    metrics_agree = all(r.status in (M_IDENTICAL, M_WITHIN, M_IGNORED) for r in metrics)
    artifacts_differ = any(r.status == A_DIFFERS for r in artifacts)
    head = Cause(CAUSE_NONDETERMINISM,
                 "nondeterministic under identical inputs: the same image, dataset, seed and "
                 "environment gave different results")
    differing = [r.name for r in artifacts if r.status == A_DIFFERS]
    if metrics_agree and differing and all(_is_document(n) for n in differing):
        # The model and the metrics agree: a document that differs embeds the time it was
        # written far more often than it draws randomness.
        entry = known_cause("embedded-build-time")
        return [Cause(CAUSE_NONDETERMINISM,
                      f"only documents differ ({', '.join(differing)}), the model and metrics "
                      "agree: they embed the time they were written",
                      (cited(entry),
                       "reprun sets SOURCE_DATE_EPOCH in every run (see docs/guarantees.md); a "
                       "writer that ignores it embeds the wall clock")), head]
    if metrics_agree and artifacts_differ:
        # Serialisation is the suspect only where no comparator saw the values themselves differ.
        read = [r for r in artifacts if r.status == A_DIFFERS and r.kind and not r.fallback]
        unread = [r.name for r in artifacts if r.status == A_DIFFERS and r not in read]
        if read:
            hints.append(Cause(
                CAUSE_NONDETERMINISM, "artifacts hold different values while metrics match",
                tuple(f"artifact {r.name}: {r.detail}" for r in read)))
        if unread:
            hints.append(Cause(
                CAUSE_NONDETERMINISM,
                "artifacts differ while metrics match: artifact serialisation embeds time or "
                "randomness", tuple(f"artifact {n} differs" for n in unread)))

    # Without the container's variables (the probe could not read them) nothing can be said
    # about what was set, only about what the BLAS libraries themselves reported.
    env_known = [r for r in records if "env" not in (r.environment.missing or {})]
    unpinned = []
    for record in records:
        env = _job_env(record)
        absent = [v for v in THREAD_VARIABLES if v not in env]
        if absent and record in env_known:
            unpinned.append(f"run {record.id}: {', '.join(absent)} not set")
        for lib in record.environment.blas or []:
            threads = lib.get("num_threads") if isinstance(lib, dict) else None
            if isinstance(threads, (int, float)) and threads > 1:
                unpinned.append(f"run {record.id}: {lib.get('internal_api', '?')} "
                                f"({lib.get('filepath', '?')}) uses {threads} threads")
    # What the frameworks' own settings say (the probe's frameworks section), cited once.
    live: dict[str, tuple] = {}
    for record in records:
        for entry in shown_in(record.environment):
            live.setdefault(entry.id, (entry, record.environment))
    framework_threads = [cited(entry, manifest) for entry, manifest in live.values()
                         if "threads" in entry.interventions]
    if unpinned or framework_threads:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "threads are not pinned: parallel reductions may add floats in a "
                           "different order on each run",
                           (*unpinned, *framework_threads, cited(known_cause("blas-threads")))))

    multi_cpu = []
    for record in records:
        cpus = record.environment.limits.get("cpus") or record.inputs.resources.get("cpus")
        count = record.environment.cpu.get("count")
        if isinstance(cpus, (int, float)) and cpus > 1:
            multi_cpu.append(f"run {record.id}: limited to {cpus} CPUs")
        elif not cpus and isinstance(count, int) and count > 1:
            multi_cpu.append(f"run {record.id}: no CPU limit, {count} CPUs visible")
    if multi_cpu:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "more than one CPU: work split across cores can finish and combine "
                           "in a different order",
                           (*multi_cpu, cited(known_cause("parallel-reduction-order")))))

    hints.append(Cause(
        CAUSE_NONDETERMINISM,
        "the job may draw randomness that does not come from REPRUN_SEED/{seed}",
        (f"image, dataset and seed {a.inputs.seed} are identical in both runs",
         cited(known_cause("python-random-unseeded")), cited(known_cause("seed-not-wired")))))

    hashseed = [f"run {r.id}" for r in env_known
                if _job_env(r).get("PYTHONHASHSEED") in (None, "", "random")]
    if hashseed:
        hints.append(Cause(CAUSE_NONDETERMINISM,
                           "PYTHONHASHSEED is not set: set and dict iteration order can vary",
                           (*(f"{where}: PYTHONHASHSEED not set" for where in hashseed),
                            cited(known_cause("pythonhashseed")))))

    if artifacts_differ and not metrics_agree:
        names = [r.name for r in artifacts if r.status == A_DIFFERS]
        hints.append(Cause(CAUSE_NONDETERMINISM, "the artifacts differ as well",
                           tuple(f"artifact {n} differs" for n in names)))

    return [head, *hints]


# Artifacts that are documents about a run rather than its model: their writers embed a date.
DOCUMENT_SUFFIXES = (".pdf", ".ps", ".eps", ".svg", ".html", ".htm")


def _is_document(name: str) -> bool:
    return name.lower().endswith(DOCUMENT_SUFFIXES)


def _job_env(record: RunRecord) -> dict[str, str]:
    return {**(record.environment.env or {}), **(record.inputs.env or {})}


# --- small helpers --------------------------------------------------------------------------

def _shown(text: str | None) -> str:
    return "(absent)" if text is None else text


def failure_text(record: RunRecord) -> str:
    reason = record.outputs.reason if record.outputs else None
    return record.status if not reason or reason == "ok" else f"{record.status}, {reason}"


