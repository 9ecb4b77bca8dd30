"""Which variation is to blame: `verify --vary` and the culprit search behind it.

Run 1 is the control (pinned defaults), run 2 varies every factor of the plan. When they
differ, a run with nothing varied tells nondeterminism apart from a dependence on the factors;
then an adaptive group search (`search_culprits`) splits the factors and keeps the halves that
reproduce the difference, so that few culprits among many factors cost few runs. Two factors
that matter only together are found too: when neither half reproduces alone, each half is
searched with the other half held varied.

The result is the usual `Comparison` of run 1 with run 2, with the culprits first among its
causes and the variations, their values and the search steps in its `extra` sections.
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from orchestrator.compare.comparison import compare_records
from orchestrator.compare.numbers import metric_value_text, tell_apart
from orchestrator.compare.value import (A_DIFFERS, CAUSE_ENVIRONMENT, CAUSE_NONDETERMINISM, DIFFERS,
                                        INCOMPLETE, MISSING_A, MISSING_B, M_BEYOND, M_DIFFERS,
                                        NUMBER, CAUSE_INPUT, Cause, Comparison)
from orchestrator.execution.job import Executor
from orchestrator.errors import InfrastructureError
from orchestrator.knowledge import cited, for_factor, known_cause
from orchestrator.events import RunObserver
from orchestrator.execution.hermetic import RunPaths, container_job
from orchestrator.parallel import run_concurrently
from orchestrator.records import ERROR, SUCCEEDED, RunRecord
from orchestrator.runner import PreparedRun, execute
from orchestrator.store.db import Store
from orchestrator.variations.factors import (FACTOR_NAMES, HostContext, VariationPlan, factor,
                                             image_locales, plan_variations)

Oracle = Callable[[frozenset], bool]


# --- the search, over any oracle --------------------------------------------------------------

@dataclass(frozen=True)
class SearchStep:
    varied: frozenset            # the factors varied in this run; all others at control
    reproduces: bool             # did the result differ from the control's?


@dataclass(frozen=True)
class SearchResult:
    groups: tuple[tuple[str, ...], ...]   # each: factors that change the result together
    steps: tuple[SearchStep, ...]         # one per oracle call, i.e. per run

    @property
    def runs(self) -> int:
        return len(self.steps)


def search_culprits(factors: Sequence[str], oracle: Oracle, *,
                    first_only: bool = False) -> SearchResult:
    """Find the factors the result depends on (`first_only`: one minimal group, not all).

    Known before any call: varying every factor reproduces the difference, varying none does
    not. The oracle is asked about each set at most once. A monotone dependence is assumed (a
    set that reproduces still does with more factors varied), as for any group test.
    """
    order = {name: i for i, name in enumerate(factors)}
    known: dict[frozenset, bool] = {frozenset(factors): True, frozenset(): False}
    steps: list[SearchStep] = []

    def ask(varied: frozenset) -> bool:
        if varied not in known:
            known[varied] = bool(oracle(varied))
            steps.append(SearchStep(varied, known[varied]))
        return known[varied]

    def find_one(candidates: tuple, held: frozenset, verified: bool) -> frozenset | None:
        """A minimal part of `candidates` that reproduces with `held` varied too, or None when
        `candidates` turns out not to (only possible when not `verified`)."""
        if len(candidates) == 1:
            return frozenset(candidates) if verified or ask(held | set(candidates)) else None
        half = (len(candidates) + 1) // 2
        first, second = candidates[:half], candidates[half:]
        if ask(held | set(first)):
            return find_one(first, held, True)
        # Optimistically, the second half holds it on its own: one run per level, not two.
        found = find_one(second, held, False)
        if found is not None:
            return found
        if not verified and not ask(held | set(candidates)):
            return None
        # Neither half alone, both together: search each with the other held varied.
        in_first = find_one(first, held | set(second), True)
        in_second = find_one(second, held | in_first, True)
        return in_first | in_second

    groups: list[frozenset] = []
    pool = tuple(factors)
    while pool:
        group = find_one(pool, frozenset(), True)
        groups.append(group)
        found = frozenset().union(*groups)
        pool = tuple(f for f in factors if f not in found)
        # Anything left that still changes the result on its own is another culprit.
        if first_only or not pool or not ask(frozenset(pool)):
            break
    for group in groups:
        ask(group)    # each culprit named is one run that shows it
    return SearchResult(
        groups=tuple(tuple(sorted(g, key=order.__getitem__)) for g in groups),
        steps=tuple(steps))


class _Unanswered(Exception):
    def __init__(self, varied: frozenset):
        self.varied = varied


def next_question(factors: Sequence[str], known: dict[frozenset, bool], *,
                  first_only: bool = False) -> frozenset | None:
    """The set the search asks about next, given the answers `known`; None: it is done."""
    def oracle(varied: frozenset) -> bool:
        if varied not in known:
            raise _Unanswered(varied)
        return known[varied]
    try:
        search_culprits(factors, oracle, first_only=first_only)
    except _Unanswered as ask:
        return ask.varied
    return None


Batch = Callable[[list], list]    # sets of factors -> whether each reproduces, run side by side


def search_side_by_side(factors: Sequence[str], run_batch: Batch,
                        fits: Callable[[list], bool], *, first_only: bool = False,
                        first: Sequence[frozenset] = ()) -> tuple[SearchResult, dict]:
    """`search_culprits` with the runs it will need next run side by side while `fits` allows.

    Each round runs the question the search asks now and, speculatively, the ones it would ask
    after each answer (breadth first), as many as fit. The search itself is then replayed over
    the answers, so the result is the sequential one whatever ran beside it (for a job whose
    result is a function of what is varied); a speculative run that was not needed is still
    recorded, it only costs CPU that was idle. `first`: sets run in the first round whatever
    the search asks (the run with nothing varied). Returns the result and every answer.
    """
    known: dict[frozenset, bool] = {}
    pending = list(first)
    while True:
        asked = next_question(factors, known, first_only=first_only)
        if asked is None and not pending:
            break
        batch, pending, hypotheses = pending, [], []
        if asked is not None and (not batch or fits([*batch, asked])):
            batch.append(asked)
            hypotheses.append((known, asked))
        while hypotheses:
            assumed, question = hypotheses.pop(0)
            for answer in (False, True):
                after = {**assumed, question: answer}
                ahead = next_question(factors, after, first_only=first_only)
                if ahead is None or ahead in batch or ahead in known:
                    continue
                if not fits([*batch, ahead]):
                    hypotheses = []
                    break
                batch.append(ahead)
                hypotheses.append((after, ahead))
        known.update(zip(batch, run_batch(batch)))
        if known.get(frozenset()):
            break          # nondeterministic with nothing varied: there is nothing to search
    if known.get(frozenset()):
        return SearchResult((), ()), known
    return search_culprits(factors, known.__getitem__, first_only=first_only), known


# --- verify --vary ----------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialRun:
    role: str                    # control | varied | fixed | search
    varied: tuple[str, ...]
    record: RunRecord
    comparison: Comparison | None  # with the control; None for the control itself

    @property
    def reproduces(self) -> bool:
        return self.comparison is not None and self.comparison.verdict in (DIFFERS, INCOMPLETE)


@dataclass(frozen=True)
class VariedVerification:
    plan: VariationPlan
    trials: tuple[TrialRun, ...]
    comparison: Comparison | None   # run 1 vs run 2; None when the control failed

    @property
    def control(self) -> RunRecord:
        return self.trials[0].record


def host_context(prepared: PreparedRun, locales: tuple[str, ...] = ()) -> HostContext:
    spec = prepared.spec
    return HostContext(host_cpus=prepared.host.get("host_cpus"),
                       dataset_path=Path(spec.dataset.path) if spec.dataset else None,
                       dataset_kind=prepared.dataset.kind if prepared.dataset else "none",
                       dataset_bytes=prepared.dataset.bytes if prepared.dataset else 0,
                       dataset_files=len(prepared.dataset.files) if prepared.dataset else 0,
                       memory_bytes=spec.resources.memory_bytes, image_locales=locales)


def locales_of_image(engine: Executor | None, image_id: str) -> tuple[str, ...]:
    """The real locales the job's image has, from `locale -a` in a container of it with no
    network; none when that cannot be run (no engine here, no `locale` in the image)."""
    if engine is None:
        return ()
    try:
        listing = engine.client.containers.run(
            image_id, ["-a"], entrypoint=["locale"], network_disabled=True, remove=True,
            stdout=True, stderr=False)
    except Exception:      # the factor falls back to C and POSIX; the plan shows which
        return ()
    return image_locales(listing.decode("utf-8", "replace"))


def plan_for(prepared: PreparedRun, names: Sequence[str], seed: int,
             engine: Executor | None = None) -> VariationPlan:
    """`engine`: where the image's locales are read, when `locale` is asked for."""
    # A job built exactly as the runs' jobs are; only its values are read.
    preview = container_job(prepared.spec, run_id="preview", image_id=prepared.image.id,
                            seed=prepared.spec.seed, paths=RunPaths(Path("/nonexistent")))
    locales = locales_of_image(engine, prepared.image.id) if "locale" in names else ()
    return plan_variations(names, seed, host_context(prepared, locales), preview)


def verify_varied(prepared: PreparedRun, plan: VariationPlan, *, store: Store, engine: Executor,
                  observer: RunObserver, repeat: str = "",
                  side_by_side: bool = True) -> VariedVerification:
    """Control, varied run, and when they differ the culprit search. Runs that do not depend on
    each other go side by side when `side_by_side` and their CPUs (the CPU count is one of the
    things varied) fit the host's together; the answer is the same either way."""
    trials: list[TrialRun] = []
    observer.stage("vary", f"variation seed {plan.seed} (repeat with --vary-seed {plan.seed})")
    for v in plan.variations:
        observer.stage("vary", f"{v.factor}: {v.value.control} → {v.value.varied}")
    for s in plan.skipped:
        observer.stage("vary", f"{s.factor}: skipped, {s.reason}")
    searches = itertools.count(1)
    host_cpus = prepared.host.get("host_cpus")

    def fits(sets: Sequence[Sequence[str]]) -> bool:
        cpus = sum(run_cpus(prepared, plan, names) for names in sets)
        return side_by_side and bool(host_cpus) and cpus <= host_cpus

    def start(role: str, names: Sequence[str]) -> tuple[str, tuple[str, ...], str]:
        names = tuple(n for n in plan.names if n in set(names))
        label = role if role != "search" else f"search {next(searches)}"
        observer.stage(label, "varying " + (", ".join(names) or "nothing"))
        return role, names, label

    def record_of(planned: tuple[str, tuple[str, ...], str]) -> RunRecord:
        role, names, label = planned
        record = execute(prepared, store=store, engine=engine, observer=observer, label=label,
                         transform=plan.transform(names))
        if record.status == ERROR:
            # A lost engine says nothing about the factors: stop rather than blame one.
            raise InfrastructureError(f"run {record.id} ({label}) could not finish: "
                                      f"{record.outputs.message if record.outputs else 'engine error'}")
        return record

    def finish(planned: tuple[str, tuple[str, ...], str], record: RunRecord) -> TrialRun:
        role, names, label = planned
        comparison = compare_records(trials[0].record, record) if trials else None
        trial = TrialRun(role, names, record, comparison)
        trials.append(trial)
        if comparison is not None and role != "varied":
            observer.stage(label, f"{comparison.verdict} against the control"
                                  + (" (reproduces)" if trial.reproduces else ""))
        return trial

    def run_batch(items: Sequence[tuple[str, Sequence[str]]]) -> list[TrialRun]:
        planned = [start(role, names) for role, names in items]
        if len(planned) > 1:
            records = run_concurrently(record_of, planned, workers=len(planned), engine=engine)
        else:
            records = [record_of(p) for p in planned]
        return [finish(p, r) for p, r in zip(planned, records)]

    def run(role: str, names: Sequence[str]) -> TrialRun:
        return run_batch([(role, names)])[0]

    # The seed should change the result: it gets a run of its own, never a place in the search.
    names = tuple(n for n in plan.names if n != SEED)
    with_seed = SEED in plan.names
    first = run_batch([("control", ()), ("seed", (SEED,))] if with_seed and fits([(), (SEED,)])
                      else [("control", ())])
    control = first[0]
    if control.record.status != SUCCEEDED:
        return VariedVerification(plan, tuple(trials), None)
    seed_trial = first[1] if len(first) > 1 else (run("seed", (SEED,)) if with_seed else None)
    seed_finding = _seed_finding(seed_trial, plan) if seed_trial is not None else None
    if not names:
        trial = trials[-1]
        comparison = dataclasses.replace(
            trial.comparison, causes=(seed_finding, *trial.comparison.causes),
            extra={**trial.comparison.extra,
                   **_extra(plan, trials, seed_finding.summary.split(":")[0], None, repeat,
                            side_by_side=fits([(), ()]))})
        return VariedVerification(plan, tuple(trials), comparison)
    varied = run("varied", names)
    causes: list[Cause] = []
    outcome = f"{varied.comparison.verdict}: no factor changed the result"
    search: SearchResult | None = None
    if varied.reproduces:
        by_set: dict[frozenset, TrialRun] = {frozenset(names): varied}

        def oracle(sets: list) -> list[bool]:
            # The run with nothing varied is the search's known "no": run for real, it tells
            # nondeterminism apart from a dependence on the factors.
            got = run_batch([("fixed" if not varied_set else "search", tuple(varied_set))
                             for varied_set in sets])
            by_set.update(zip(sets, got))
            return [trial.reproduces for trial in got]

        # The factors that take more CPUs last: the halves without them can go side by side.
        order = sorted(names, key=lambda name: run_cpus(prepared, plan, (name,)))
        search, _ = search_side_by_side(order, oracle, fits, first=[frozenset()])
        fixed = by_set[frozenset()]
        if fixed.reproduces:
            search = None
            causes.append(_nondeterministic(fixed))
            outcome = "nondeterministic even with every factor fixed"
            if seed_finding is not None:
                seed_finding = Cause(
                    CAUSE_NONDETERMINISM,
                    "whether the job uses its seed cannot be told: it is nondeterministic even "
                    "with every factor fixed")
        else:
            spent = sum(t.role in ("fixed", "search") for t in trials)
            causes.extend(_culprit(plan, group, by_set[frozenset(group)], spent, len(names))
                          for group in search.groups if by_set[frozenset(group)].reproduces)
            if not causes:
                causes.append(Cause(
                    CAUSE_NONDETERMINISM,
                    "the varied run differs, but no factor reproduces the difference alone or "
                    "together: the job may be nondeterministic only some of the time"))
            outcome = "; ".join(c.summary.split(":")[0] for c in causes)
    if seed_finding is not None:
        causes.append(seed_finding)
    comparison = varied.comparison
    extra = {**comparison.extra,
             **_extra(plan, trials, outcome, search, repeat, side_by_side=fits([(), ()]))}
    # What the variation changed on purpose is no cause unless the search named it (above).
    kept = tuple(c for c in comparison.causes if c.kind not in (CAUSE_INPUT, CAUSE_ENVIRONMENT))
    comparison = dataclasses.replace(comparison, causes=(*causes, *kept), extra=extra)
    return VariedVerification(plan, tuple(trials), comparison)


def run_cpus(prepared: PreparedRun, plan: VariationPlan, names: Sequence[str]) -> float:
    """The CPUs a run with `names` varied takes: the spec's, or the varied CPU count."""
    if "cpus" in names:
        return float(plan.variation("cpus").value.varied.split()[0])
    return float(prepared.spec.resources.cpus)


# --- what the report says ---------------------------------------------------------------------

SEED = "seed"


def _seed_finding(trial: TrialRun, plan: VariationPlan) -> Cause:
    value = plan.variation(SEED).value
    if trial.reproduces:
        return Cause(CAUSE_NONDETERMINISM,
                     f"the seed reaches the job: with {value.varied} instead of {value.control} "
                     f"the results differ, as they should (run {trial.record.id})")
    entry = known_cause("seed-not-wired")
    return Cause(CAUSE_NONDETERMINISM,
                 f"the job ignores its seed: with {value.varied} instead of {value.control} the "
                 f"results were {trial.comparison.verdict} (run {trial.record.id})",
                 (f"known cause {entry.id}: {entry.fix} ({entry.source})",))


def _effects(comparison: Comparison, at_a: str, at_b: str) -> list[str]:
    effects = []
    for run in (comparison.a, comparison.b):
        if run.status != SUCCEEDED:
            where = at_a if run is comparison.a else at_b
            effects.append(f"the job {run.status}" + (f" ({run.reason})" if run.reason else "")
                           + f" at {where}")
    for m in comparison.sections.metrics:
        if m.status in (M_BEYOND, M_DIFFERS):
            ta, tb = (tell_apart(m.a, m.b) if m.kind == NUMBER
                      else (metric_value_text(m.a), metric_value_text(m.b)))
            effects.append(f"{m.name} {ta} at {at_a}, {tb} at {at_b}")
        elif m.status in (MISSING_A, MISSING_B):
            effects.append(f"{m.name} is reported only at {at_b if m.status == MISSING_A else at_a}")
    for f in comparison.sections.artifacts:
        if f.status == A_DIFFERS:
            effects.append(f"artifact {f.name} differs (sha256 {(f.a_sha256 or '')[:12]} at "
                           f"{at_a}, {(f.b_sha256 or '')[:12]} at {at_b})")
    return effects or [f"the results differ between {at_a} and {at_b}"]


def _joined(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _culprit(plan: VariationPlan, group: Sequence[str], trial: TrialRun, spent: int,
             factors: int) -> Cause:
    variations = [plan.variation(name) for name in group]
    what = _joined([v.label for v in variations]) + (" together" if len(group) > 1 else "")
    at_control = _joined([v.value.control for v in variations])
    at_varied = _joined([v.value.varied for v in variations])
    effects = _effects(trial.comparison, at_control, at_varied)
    deltas = [f"{m.name} changes by {m.delta:+.6g} ({m.tolerance} tolerance)"
              for m in trial.comparison.sections.metrics
              if m.status == M_BEYOND and m.delta is not None]
    varied_env = trial.record.environment
    known = [cited(entry, varied_env) for name in group
             for entry in for_factor(name, varied_env.python_distributions or {}, varied_env)]
    details = (
        *effects[2:],
        *deltas,
        *known,
        f"run {trial.record.id} varied only {_joined(list(group))}; everything else as in "
        f"the control run {trial.comparison.a.id}",
        _cost(spent, factors + 1, together=len(group) > 1),
    )
    return Cause(CAUSE_ENVIRONMENT, f"result depends on {what}: " + "; ".join(effects[:2]),
                 details)


def _cost(runs: int, one_at_a_time: int, *, together: bool) -> str:
    text = f"the culprit search took {runs} runs after the control and the varied run"
    if runs < one_at_a_time:
        return text + f" (one factor at a time: {one_at_a_time})"
    if together:
        return text + " (one factor at a time cannot find factors that act only together)"
    return text


def _nondeterministic(fixed: TrialRun) -> Cause:
    comparison = fixed.comparison
    effects = _effects(comparison, f"run {comparison.a.id}", f"run {comparison.b.id}")
    hints = [c.summary for c in comparison.causes
             if c.kind == CAUSE_NONDETERMINISM and not c.summary.startswith("nondeterministic")]
    return Cause(CAUSE_NONDETERMINISM,
                 f"nondeterministic even with every factor fixed: run {fixed.record.id}, with "
                 f"nothing varied, differs from the control run {comparison.a.id}",
                 (*effects, *hints))


def _extra(plan: VariationPlan, trials: Sequence[TrialRun], outcome: str,
           search: SearchResult | None, repeat: str, *, side_by_side: bool) -> dict:
    names = "all" if set(plan.requested) == set(FACTOR_NAMES) else ",".join(plan.requested)
    summary = [
        ["seed", str(plan.seed)],
        ["repeat with", f"{repeat} --vary {names} --vary-seed {plan.seed}".strip()],
        ["varied", ", ".join(plan.names) or "nothing"],
        ["skipped", ", ".join(s.factor for s in plan.skipped) or "nothing"],
        ["outcome", outcome],
        ["runs", f"{len(trials)} (control, varied"
                 + (", nothing varied" if len(trials) > 2 else "")
                 + (f", {sum(t.role == 'search' for t in trials)} for the culprit search"
                    if search else "") + ")"],
        ["side by side", "runs that do not depend on each other, where their CPUs fit the host"
                         if side_by_side else "no: one run after another"],
    ]
    factors = [[v.factor, v.label, "varied", v.value.control, v.value.varied, None]
               for v in plan.variations]
    factors += [[s.factor, factor(s.factor).label, "skipped", None, None, s.reason]
                for s in plan.skipped]
    steps = [[str(i), t.record.id, t.role, ", ".join(t.varied) or "nothing",
              "control" if t.comparison is None else t.comparison.verdict,
              "" if t.comparison is None else ("yes" if t.reproduces else "no")]
             for i, t in enumerate(trials, 1)]
    return {
        "variation": {"title": "Variation", "columns": ["", ""], "rows": summary},
        "variation_factors": {"title": "Varied factors",
                              "columns": ["factor", "what", "status", "control", "varied",
                                          "why skipped"],
                              "rows": factors},
        "variation_search": {"title": "Variation runs and culprit search",
                             "columns": ["step", "run", "role", "varied", "against control",
                                         "reproduces"],
                             "rows": steps},
    }
