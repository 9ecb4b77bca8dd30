"""One run, start to finish, on the scripted executor: what each way a job ends is recorded as."""
from __future__ import annotations

import pytest

from unit.fake_executor import FakeExecutor, Job
from orchestrator.errors import InfrastructureError, PinMismatch
from orchestrator.records import ERROR, FAILED, INTERRUPTED, RUNNING, SUCCEEDED
from orchestrator.runner import execute, prepare


def run_once(unit, executor, observer, **kwargs):
    prepared = prepare(unit.spec(), store=unit.store, engine=executor, observer=observer)
    return execute(prepared, store=unit.store, engine=executor, observer=observer, **kwargs)


def test_a_job_that_writes_its_metrics_is_recorded_succeeded_with_them(unit, fake, quiet):
    record = run_once(unit, fake, quiet)
    assert record.status == SUCCEEDED
    assert record.outputs.metrics == {"score": 0.7}
    assert set(record.outputs.artifacts) == {"model.bin"}
    assert unit.store.get(record.id).outputs.metrics == {"score": 0.7}


def test_the_seed_given_to_a_run_reaches_the_job_and_the_record(unit, fake, quiet):
    record = run_once(unit, fake, quiet, seed=6)
    assert fake.jobs[-1].command == ("train", "6")
    assert record.inputs.seed == 6 and record.outputs.metrics == {"score": 0.6}


def test_a_job_that_exits_non_zero_is_recorded_failed_with_its_reason(unit, quiet):
    record = run_once(unit, FakeExecutor([Job(metrics=None, exit_code=3, reason="exit",
                                              message="the job exited with status 3")]), quiet)
    assert record.status == FAILED and record.outputs.reason == "exit"
    assert unit.store.get(record.id).status == FAILED


def test_a_job_that_writes_no_metrics_is_a_failed_outputs_record(unit, quiet):
    record = run_once(unit, FakeExecutor([Job(metrics=None)]), quiet)
    assert record.status == FAILED and record.outputs.reason == "outputs"
    assert "metrics" in record.outputs.message


def test_the_engine_going_away_is_an_error_record_not_a_job_failure(unit, quiet):
    gone = InfrastructureError("the Docker engine stopped answering")
    record = run_once(unit, FakeExecutor([Job(raises=gone)]), quiet)
    assert record.status == ERROR and record.outputs.reason == "engine"
    assert "stopped answering" in record.outputs.message


def test_a_bug_in_reprun_stays_a_bug_and_is_not_blamed_on_the_engine(unit, quiet):
    with pytest.raises(ZeroDivisionError):
        run_once(unit, FakeExecutor([Job(raises=ZeroDivisionError("a bug"))]), quiet)
    (summary,) = unit.store.list()
    # Not an `error` record: left running, for the repair of the next reprun to mark it.
    assert summary.status == RUNNING


def test_an_interrupt_is_recorded_interrupted_and_goes_on(unit, quiet):
    with pytest.raises(KeyboardInterrupt):
        run_once(unit, FakeExecutor([Job(raises=KeyboardInterrupt())]), quiet)
    (summary,) = unit.store.list()
    assert summary.status == INTERRUPTED


def test_a_pin_refused_where_the_job_ran_is_recorded_then_refused(unit, quiet):
    with pytest.raises(PinMismatch):
        run_once(unit, FakeExecutor([Job(metrics=None, exit_code=None, reason="pin",
                                         message="the dataset changed on the node")]), quiet)
    (summary,) = unit.store.list()
    assert summary.status == FAILED


def test_the_job_output_is_kept_in_the_log_and_shown_to_the_observer(unit, quiet):
    seen = []

    class Listening(type(quiet)):
        def output(self, label, chunk):
            seen.append((label, chunk))

    record = run_once(unit, FakeExecutor([Job(output=b"epoch 1\n")]), Listening(), label="run 1/1")
    assert seen == [("run 1/1", b"epoch 1\n")]
    assert unit.store.run_dir(record.id).joinpath("log.txt").read_bytes() == b"epoch 1\n"
