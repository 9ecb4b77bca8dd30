"""verify, verify --vary, rerun and check, told as the user meets them, on the scripted
executor: which runs are made, what is compared with what, and the exit code it ends with."""
from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest

from unit.fake_executor import FakeExecutor, Job, seeded
from orchestrator.errors import JobFailed, PinMismatch
from orchestrator.execution.hermetic import LABEL_VARIATIONS
from orchestrator.variations.factors import FACTOR_NAMES
from orchestrator.parallel import RunPlan, fits_in_parallel, run_all, run_concurrently
from orchestrator.runner import prepare
from orchestrator.store.baselines import approve
from orchestrator.workflows import check as check_workflow
from orchestrator.workflows import verify as workflow


def verify(unit, executor, quiet, **kwargs):
    return workflow.verify(unit.spec(), store=unit.store, engine=executor,
                           observer=quiet, **kwargs)


# --- parallel runs ----------------------------------------------------------------------------

def test_runs_go_side_by_side_only_when_their_cpus_fit_the_host():
    assert fits_in_parallel(1, 2, 2) and not fits_in_parallel(1.5, 2, 2)
    assert not fits_in_parallel(1, 2, None)


def test_parallel_runs_come_back_in_the_order_they_were_planned(unit, quiet):
    started = threading.Barrier(3, timeout=10)     # all three are under way at once

    def together(job):
        started.wait()
        return seeded(job)

    executor = FakeExecutor(together)
    prepared = prepare(unit.spec(), store=unit.store, engine=executor, observer=quiet)
    plans = [RunPlan(f"run {i}/3", seed=i) for i in (1, 2, 3)]
    records = run_all(prepared, plans, store=unit.store, engine=executor, observer=quiet,
                      parallel=True)
    assert [r.inputs.seed for r in records] == [1, 2, 3]
    assert [r.outputs.metrics["score"] for r in records] == [0.1, 0.2, 0.3]


def test_ctrl_c_during_parallel_runs_stops_every_job_under_way_then_goes_on():
    stopped = threading.Event()
    both_started = threading.Barrier(2, timeout=10)
    finished = []

    class Engine:
        def interrupt(self):
            stopped.set()

    def work(item):
        both_started.wait()
        if item == 1:
            time.sleep(0.2)               # the caller is waiting for both by now
            # Ctrl-C: a SIGINT for the main thread; worker threads never see it.
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        assert stopped.wait(10), "the engine was never told to stop"
        finished.append(item)             # each job still ends (and writes its record)
        return item

    with pytest.raises(KeyboardInterrupt):
        run_concurrently(work, [1, 2], workers=2, engine=Engine())
    assert sorted(finished) == [1, 2]


# --- verify -----------------------------------------------------------------------------------

def test_two_runs_of_a_deterministic_job_are_identical_and_exit_0(unit, fake, quiet):
    outcome = verify(unit, fake, quiet)
    assert len(fake.jobs) == 2 and outcome.exit_code == 0
    (written,) = outcome.reports
    assert written.comparison.verdict == "identical" and written.saved.exists()


def test_a_job_whose_metric_changes_between_runs_differs_and_exits_1(unit, quiet):
    executor = FakeExecutor([Job(metrics={"score": 0.5}), Job(metrics={"score": 0.75})])
    outcome = verify(unit, executor, quiet)
    assert outcome.exit_code == 1
    assert outcome.reports[0].comparison.verdict == "differs"


def test_times_n_compares_every_run_with_the_first_and_names_each_report(unit, fake, quiet,
                                                                           tmp_path):
    outcome = verify(unit, fake, quiet, times=3, report_paths=[tmp_path / "r.json"])
    assert len(outcome.reports) == 2
    second, third = (r.comparison.b.id for r in outcome.reports)
    assert {p.name for r in outcome.reports for p in r.files} == {f"r-{second}.json",
                                                                  f"r-{third}.json"}


def test_a_failed_run_in_verify_is_the_job_failure_with_its_log_tail(unit, quiet):
    executor = FakeExecutor([Job(), Job(metrics=None, exit_code=1, reason="exit",
                                        output=b"Traceback\nValueError: bad shape\n",
                                        message="the job exited with status 1")])
    with pytest.raises(JobFailed) as info:
        verify(unit, executor, quiet, sequential=True)
    assert "exited with status 1" in info.value.message
    assert any("bad shape" in line for line in info.value.details)


# --- verify --vary: the culprit search on scripted jobs -----------------------------------------

def depends_on_the_time_zone(job):
    return Job(metrics={"score": 1.0 if job.env.get("TZ") == "UTC" else 2.0})


def test_a_job_that_reads_the_time_zone_is_blamed_on_tz_alone(unit, quiet):
    executor = FakeExecutor(depends_on_the_time_zone)
    outcome = verify(unit, executor, quiet, vary=("hostname", "tz", "umask", "hash-seed"),
                     vary_seed=11, sequential=True)
    comparison = outcome.reports[0].comparison
    assert outcome.exit_code == 1
    culprits = [c.summary for c in comparison.causes if c.summary.startswith("result depends")]
    assert len(culprits) == 1 and culprits[0].startswith("result depends on the time zone")
    # control, varied, fixed, then a search of at most four runs over four factors
    assert 4 <= len(executor.jobs) <= 7


class DependsOnTheUmask:
    """A job whose model is written with the umask's mode bits: the one culprit among all
    factors. Counts how many of its runs are under way at once."""

    def __init__(self):
        self.lock, self.running, self.most = threading.Lock(), 0, 0

    def __call__(self, job):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)          # long enough for a run beside it to start
        with self.lock:
            self.running -= 1
        return Job(metrics={"score": 1.0 if "REPRUN_UMASK" not in job.env else 2.0})


def culprit_search(unit, quiet, *, sequential):
    job = DependsOnTheUmask()
    executor = FakeExecutor(job, host_cpus=2)
    outcome = verify(unit, executor, quiet, vary=FACTOR_NAMES, vary_seed=5, sequential=sequential)
    comparison = outcome.reports[0].comparison
    named = [(re.sub(r"\d{8}-\d{6}-[0-9a-f]+", "RUN", c.summary), c.details)
             for c in comparison.causes]
    searched = {frozenset(json.loads(j.labels[LABEL_VARIATIONS])["varied"])
                for j in executor.jobs}
    return named, searched, job.most, comparison.extra["variation_search"]["rows"]


def test_the_culprit_search_side_by_side_names_what_the_sequential_one_names(unit, quiet):
    named, searched, most, rows = culprit_search(unit, quiet, sequential=True)
    named_parallel, searched_parallel, most_parallel, rows_parallel = culprit_search(
        unit, quiet, sequential=False)
    assert most == 1 and most_parallel == 2      # two 1-CPU runs fit the two CPUs
    umask = [summary for summary, _ in named_parallel if summary.startswith("result depends")]
    assert umask == ["result depends on the umask: score 1 at umask 0022 (the engine's "
                     "default), 2 at umask 0000"]
    # Everything but the runs' cost is the same; the sequential search's runs are among them.
    assert [s for s, _ in named] == [s for s, _ in named_parallel]
    assert searched <= searched_parallel
    assert [r[2:] for r in rows if r[2] != "search"] == [
        r[2:] for r in rows_parallel if r[2] != "search"]


def test_a_job_that_depends_on_nothing_varied_is_identical_in_two_runs(unit, fake, quiet):
    outcome = verify(unit, fake, quiet, vary=("hostname", "tz"), vary_seed=3)
    assert outcome.exit_code == 0 and len(fake.jobs) == 2


def test_a_job_that_differs_even_with_every_factor_fixed_is_called_nondeterministic(unit, quiet):
    scores = iter([1.0, 2.0, 3.0, 4.0])
    executor = FakeExecutor(lambda job: Job(metrics={"score": next(scores)}))
    outcome = verify(unit, executor, quiet, vary=("tz",), vary_seed=3)
    summaries = " ".join(c.summary for c in outcome.reports[0].comparison.causes)
    assert "nondetermin" in summaries and len(executor.jobs) == 3


# --- rerun ------------------------------------------------------------------------------------

def test_a_rerun_replays_the_recorded_seed_and_command_and_compares(unit, fake, quiet):
    first = workflow.run_once(unit.spec(), store=unit.store, engine=fake, observer=quiet, seed=5)
    outcome = workflow.rerun(unit.store, fake, quiet, run_id=first.id)
    assert fake.jobs[-1].command == ("train", "5")
    assert outcome.exit_code == 0
    assert [r.id for r in outcome.records][0] == first.id


def test_a_rerun_that_resolves_to_another_image_is_refused_before_running(unit, fake, quiet):
    from unit.fake_executor import FakeClient
    first = workflow.run_once(unit.spec(), store=unit.store, engine=fake, observer=quiet)
    elsewhere = FakeExecutor(client=FakeClient(image_id="sha256:" + "9" * 64))
    with pytest.raises(PinMismatch):
        workflow.rerun(unit.store, elsewhere, quiet, run_id=first.id)
    assert elsewhere.jobs == []


# --- check ------------------------------------------------------------------------------------

def test_check_without_a_baseline_trains_twice_and_compares_the_two(unit, fake, quiet):
    (result,) = check_workflow.check_all([unit.spec_file()], store=unit.store, engine=fake,
                                         observer=quiet)
    assert result.compared_with == "second run" and len(fake.jobs) == 2
    assert result.exit_code == 0 and result.drift is None


def test_check_compares_one_new_run_with_the_approved_baseline(unit, quiet):
    executor = FakeExecutor([Job(metrics={"score": 0.5}), Job(metrics={"score": 0.9}),
                             Job(metrics={"score": 0.5})])
    spec = unit.spec()
    base = workflow.run_once(spec, store=unit.store, engine=executor, observer=quiet)
    workflow.run_once(spec, store=unit.store, engine=executor, observer=quiet)  # latest, unapproved
    approve(unit.store, base.id, reason="signed off")
    (result,) = check_workflow.check_all([unit.spec_file()], store=unit.store, engine=executor,
                                         observer=quiet)
    assert result.compared_with == "baseline"
    assert result.comparison.a.id == base.id and result.exit_code == 0
    assert len(executor.jobs) == 3


def test_check_reports_a_spec_that_cannot_be_read_and_goes_on_with_the_rest(unit, fake, quiet):
    broken = unit.root / "broken.yaml"
    broken.write_text("version: 1\nname: [\n")
    results = check_workflow.check_all([broken, unit.spec_file()], store=unit.store, engine=fake,
                                       observer=quiet)
    assert [r.exit_code for r in results] == [2, 0]
    assert check_workflow.overall_exit(results) == 2
    assert results[0].error and results[1].comparison.verdict == "identical"
