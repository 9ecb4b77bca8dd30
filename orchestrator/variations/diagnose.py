"""Naming the source of nondeterminism: `reprun verify SPEC --diagnose`, `reprun diagnose A B`.

Two runs under identical inputs differ. Each step of the diagnosis runs a *pair* of the job with
some sources of nondeterminism removed (execution/interventions.py) and compares the pair with
itself: a pair that agrees where the plain pair did not has had its source removed. Every
source is removed at once first; when that pair agrees, the group search of the culprit search
(`search_culprits`) finds the fewest interventions that still make a pair agree. The answer
cites the knowledge base's entries for the libraries the job's manifest shows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

from orchestrator.compare.comparison import compare_records
from orchestrator.compare.value import (CAUSE_INPUT, CAUSE_NONDETERMINISM, CAUSE_RUN, DIFFERS, EQUIVALENT, IDENTICAL,
                                        Cause, Comparison)
from orchestrator.errors import InfrastructureError, UsageError
from orchestrator.events import RunObserver
from orchestrator.execution.interventions import (INTERVENTIONS, ImageTraits, InterventionKit,
                                                  intervene, intervention)
from orchestrator.execution.job import Executor
from orchestrator.knowledge import cited, for_intervention
from orchestrator.parallel import fits_in_parallel, run_concurrently
from orchestrator.records import ERROR, SUCCEEDED, EnvironmentManifest, RunRecord
from orchestrator.runner import PreparedRun, execute
from orchestrator.store.db import Store
from orchestrator.variations.culprit import search_culprits

# What can still make a pair differ when every intervention reprun has was applied.
REMAINING = (
    "GPU kernels (atomics, autotuned algorithms, TF32) that no CPU-side intervention reaches",
    "a race between threads or processes that one thread did not remove (a job that starts "
    "its own worker processes, say)",
    "an input reprun does not control: a file, a service or a device the job reads that is not "
    "in the spec",
)


@dataclass(frozen=True)
class NotTried:
    name: str
    reason: str


@dataclass(frozen=True)
class DiagnosisPlan:
    tried: tuple[str, ...]            # intervention names, in the registry's order
    not_tried: tuple[NotTried, ...]
    kit: InterventionKit
    side_by_side: bool                # the two runs of a pair in parallel


@dataclass(frozen=True)
class InterventionPair:
    removed: tuple[str, ...]
    records: tuple[RunRecord, RunRecord]
    comparison: Comparison

    @property
    def agrees(self) -> bool:
        return self.comparison.verdict in (IDENTICAL, EQUIVALENT)


@dataclass(frozen=True)
class Diagnosis:
    plan: DiagnosisPlan
    pairs: tuple[InterventionPair, ...]
    sources: tuple[str, ...] | None   # the fewest interventions that made a pair agree
    comparison: Comparison            # the plain pair, with what the diagnosis found first

    @property
    def runs(self) -> int:
        return 2 * len(self.pairs)


def differs_under_identical_inputs(comparison: Comparison) -> bool:
    """Both runs succeeded with the same inputs and material environment, and the results
    differ: the comparison then names nondeterminism (it does only in that case); incidental
    environment changes, such as the CPUs two parallel runs were pinned to, may come with it."""
    kinds = {c.kind for c in comparison.causes}
    return (comparison.verdict == DIFFERS and CAUSE_NONDETERMINISM in kinds
            and not kinds & {CAUSE_RUN, CAUSE_INPUT})


def most_runs(interventions: int) -> int:
    """The runs a diagnosis takes at most with one source (or two that act together): the pair
    with everything removed, then about two pairs per halving."""
    if interventions <= 1:
        return 2
    return 2 * (1 + 2 * math.ceil(math.log2(interventions)))


def suggestion(records: Sequence[RunRecord], command: str, *,
               interventions: int = len(INTERVENTIONS), side_by_side: bool = False) -> Cause:
    """What `--diagnose` would cost, for the report of a plain verify that differs."""
    runs = most_runs(interventions)
    durations = [r.outputs.duration_s for r in records if r.outputs and r.outputs.duration_s]
    if durations:
        duration = max(durations)
        seconds = duration * (runs / 2 if side_by_side else runs)
        cost = (f"at most {runs} runs, about {_minutes(seconds)} at this job's "
                f"{duration:.1f} s a run")
    else:
        cost = f"at most {runs} runs"
    return Cause(CAUSE_NONDETERMINISM,
                 f"to name the source, run `{command} --diagnose`: {cost}",
                 ("it runs pairs of the job with the wall clock frozen, the entropy fixed, "
                  "address-space randomization off and one thread, first all together, then "
                  "split, and names the one whose removal makes the two runs agree",))


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def plan_diagnosis(traits: ImageTraits, kit: InterventionKit, *, cpus: float,
                   host_cpus: int | None) -> DiagnosisPlan:
    tried, not_tried = [], []
    for each in INTERVENTIONS:
        reason = each.unsupported(traits, kit)
        if reason is None:
            tried.append(each.name)
        else:
            not_tried.append(NotTried(each.name, reason))
    return DiagnosisPlan(tuple(tried), tuple(not_tried), kit,
                         side_by_side=fits_in_parallel(cpus, 2, host_cpus))


def kit_folder(store: Store) -> Path:
    return Path(store.root) / "interventions"


def diagnose(prepared: PreparedRun, plain_runs: tuple[RunRecord, RunRecord], plan: DiagnosisPlan,
             *, store: Store, engine: Executor, observer: RunObserver) -> Diagnosis:
    """Pairs with sources removed until the fewest that make a pair agree are known;
    `plain_runs`: the two runs under identical inputs that differ."""
    plain = compare_records(*plain_runs)
    distributions = plain_runs[0].environment.python_distributions or {}
    pairs: list[InterventionPair] = []
    by_set: dict[frozenset, InterventionPair] = {}

    def run_pair(removed: Sequence[str]) -> InterventionPair:
        removed = tuple(n for n in plan.tried if n in set(removed))
        step = len(pairs) + 1
        observer.stage(f"diagnose {step}", "removing " + ", ".join(
            intervention(n).label for n in removed))

        def one(index: int) -> RunRecord:
            return execute(prepared, store=store, engine=engine, observer=observer,
                           label=f"diagnose {step}.{index}",
                           transform=lambda job: intervene(job, removed, plan.kit))

        if plan.side_by_side:
            records = run_concurrently(one, [1, 2], workers=2, engine=engine)
        else:
            records = [one(1), one(2)]
        for record in records:
            if record.status == ERROR:
                raise InfrastructureError(
                    f"run {record.id} of the diagnosis could not finish: "
                    f"{record.outputs.message if record.outputs else 'engine error'}")
        pair = InterventionPair(removed, (records[0], records[1]),
                                compare_records(records[0], records[1]))
        pairs.append(pair)
        by_set[frozenset(removed)] = pair
        observer.stage(f"diagnose {step}", f"the pair is {pair.comparison.verdict}")
        return pair

    sources: tuple[str, ...] | None = None
    if plan.tried:
        everything = run_pair(plan.tried)
        if everything.agrees:
            search = search_culprits(plan.tried, lambda removed: run_pair(removed).agrees,
                                     first_only=True)
            sources = search.groups[0] if search.groups else None
    causes = _causes(plain, plan, pairs, by_set, sources, distributions,
                     plain_runs[0].environment)
    extra = {**plain.extra, **_extra(plan, pairs, sources)}
    return Diagnosis(plan, tuple(pairs), sources,
                     replace(plain, causes=(*causes, *plain.causes), extra=extra))


def _joined(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _causes(plain: Comparison, plan: DiagnosisPlan, pairs: Sequence[InterventionPair],
            by_set: dict[frozenset, InterventionPair], sources: tuple[str, ...] | None,
            distributions: dict[str, str], manifest: EnvironmentManifest) -> list[Cause]:
    spent = f"the diagnosis took {2 * len(pairs)} runs ({len(pairs)} pairs)"
    not_tried = [f"not tried: {intervention(n.name).label} ({n.reason})" for n in plan.not_tried]
    if not plan.tried:
        return [Cause(CAUSE_NONDETERMINISM,
                      "no source of nondeterminism could be removed for this job", tuple(not_tried))]
    if sources is None:
        last = pairs[0]
        return [Cause(CAUSE_NONDETERMINISM,
                      "nondeterministic even with " + _joined(
                          [intervention(n).label for n in plan.tried]) + " together: runs "
                      f"{last.records[0].id} and {last.records[1].id} still differ",
                      ("what remains: " + "; ".join(REMAINING), *not_tried, spent))]
    pair = by_set[frozenset(sources)]
    what = _joined([intervention(n).source for n in sources])
    how = _joined([intervention(n).label for n in sources])
    together = " together" if len(sources) > 1 else ""
    fixes = [cited(entry, manifest) for name in sources
             for entry in for_intervention(name, distributions, manifest)]
    return [Cause(CAUSE_NONDETERMINISM,
                  f"{what}{together}: with {how}, two runs were {pair.comparison.verdict}",
                  (*fixes,
                   f"runs {pair.records[0].id} and {pair.records[1].id} had only {how}; the "
                   f"plain runs {plain.a.id} and {plain.b.id} differ",
                   *not_tried, spent))]


def _extra(plan: DiagnosisPlan, pairs: Sequence[InterventionPair],
           sources: tuple[str, ...] | None) -> dict:
    if sources:
        outcome = "removed " + _joined([intervention(n).label for n in sources]) + \
                  ": the two runs agree"
    elif plan.tried:
        outcome = "the two runs differ even with every source removed"
    else:
        outcome = "nothing could be removed"
    summary = [
        ["tried", ", ".join(plan.tried) or "nothing"],
        ["not tried", "; ".join(f"{n.name}: {n.reason}" for n in plan.not_tried) or "nothing"],
        ["outcome", outcome],
        ["runs", f"{2 * len(pairs)} ({len(pairs)} pairs"
                 + (", each pair side by side)" if plan.side_by_side else ")")],
    ]
    rows = [[str(i), ", ".join(p.removed), p.records[0].id, p.records[1].id,
             p.comparison.verdict, "yes" if p.agrees else "no"]
            for i, p in enumerate(pairs, 1)]
    return {
        "diagnosis": {"title": "Diagnosis", "columns": ["", ""], "rows": summary},
        "diagnosis_pairs": {"title": "Intervention pairs",
                            "columns": ["pair", "removed", "run", "run", "verdict", "agrees"],
                            "rows": rows},
    }


# --- the two ways in: after a plain verify, and on two recorded runs ----------------------------

def diagnose_runs(prepared: PreparedRun, plain_runs: tuple[RunRecord, RunRecord], *,
                  store: Store, engine: Executor, observer: RunObserver) -> Diagnosis:
    """The diagnosis of two runs of `prepared` that differ under identical inputs."""
    traits = ImageTraits.from_manifest(plain_runs[0].environment)
    kit = InterventionKit.prepare(kit_folder(store), prepared.spec.seed)
    plan = plan_diagnosis(traits, kit, cpus=prepared.spec.resources.cpus,
                          host_cpus=prepared.host.get("host_cpus"))
    for each in plan.not_tried:
        observer.stage("diagnose", f"not trying {intervention(each.name).label}: {each.reason}")
    return diagnose(prepared, plain_runs, plan, store=store, engine=engine, observer=observer)


def with_suggestion(comparison: Comparison, records: Sequence[RunRecord], command: str,
                    host_cpus: int | None, cpus: float) -> Comparison:
    """The plain comparison, with the cost of `--diagnose` among its causes when it would help."""
    if not differs_under_identical_inputs(comparison):
        return comparison
    cause = suggestion(records, command, side_by_side=fits_in_parallel(cpus, 2, host_cpus))
    causes = list(comparison.causes)
    return replace(comparison, causes=(*causes[:1], cause, *causes[1:]))


def refuse_unless_diagnosable(a: RunRecord, b: RunRecord) -> Comparison:
    """Two recorded runs can be diagnosed when they differ with the same inputs."""
    comparison = compare_records(a, b)
    if a.status != SUCCEEDED or b.status != SUCCEEDED:
        raise UsageError(f"runs {a.id} and {b.id} must both have succeeded to be diagnosed "
                         f"({a.id} {a.status}, {b.id} {b.status}).")
    if a.inputs.spec_name != b.inputs.spec_name or a.inputs.image.id != b.inputs.image.id \
            or a.inputs.dataset.sha256 != b.inputs.dataset.sha256 or a.inputs.seed != b.inputs.seed:
        raise UsageError(f"runs {a.id} and {b.id} do not share their inputs (spec, image, dataset "
                         "and seed); a diagnosis removes sources of nondeterminism from one job, "
                         "so compare them with `reprun diff` instead.")
    if not differs_under_identical_inputs(comparison):
        raise UsageError(f"runs {a.id} and {b.id} are {comparison.verdict}"
                         + (" with different inputs or environments" if comparison.verdict ==
                            DIFFERS else "") + "; there is no nondeterminism to diagnose.")
    return comparison


def after_plain_pair(prepared: PreparedRun, records: Sequence[RunRecord], *, store: Store,
                     engine: Executor, observer: RunObserver, diagnose: bool,
                     command: str) -> list[Comparison] | None:
    """For a plain verify: the diagnosis when asked and the pair differs under identical inputs,
    else the comparisons with what a diagnosis would cost; None: nothing to add."""
    if len(records) != 2:
        return None
    from orchestrator.store.baselines import approved_note
    plain = compare_records(records[0], records[1], baseline_id=records[0].id,
                            extra=approved_note(store, [r.id for r in records]))
    if not differs_under_identical_inputs(plain):
        if diagnose:
            observer.stage("diagnose", "the runs do not differ under identical inputs: nothing "
                                       "to diagnose")
        return None
    if diagnose:
        result = diagnose_runs(prepared, (records[0], records[1]), store=store, engine=engine,
                               observer=observer)
        return [replace(result.comparison, extra={**plain.extra, **result.comparison.extra})]
    return [with_suggestion(plain, records, command, prepared.host.get("host_cpus"),
                            prepared.spec.resources.cpus)]
