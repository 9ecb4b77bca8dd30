"""A run record read back: the same value, the same JSON; one from a newer reprun is refused
with the field it does not know, never a TypeError."""
from __future__ import annotations

import json

import pytest

from orchestrator.errors import ExitCode
from orchestrator.records import FAILED, NewerRecord, OutcomeReason, RunRecord, RunStatus
from orchestrator.workflows import verify as workflow
from unit.fake_executor import FakeExecutor, Job


@pytest.fixture
def record(unit, quiet) -> RunRecord:
    return workflow.run_once(unit.spec(), store=unit.store, engine=FakeExecutor(), observer=quiet)


def test_statuses_and_reasons_are_enums_that_write_the_same_json(unit, quiet, record):
    assert record.status is RunStatus.SUCCEEDED
    data = json.loads(record.to_json())
    assert data["status"] == "succeeded" and data["outputs"]["reason"] == "ok"
    again = RunRecord.from_json(record.to_json())
    assert again.to_json() == record.to_json() and again.status is RunStatus.SUCCEEDED
    failed = workflow.run_once(unit.spec(), store=unit.store, observer=quiet,
                               engine=FakeExecutor([Job(metrics=None)]))
    assert failed.status == FAILED and failed.outputs.reason == OutcomeReason.OUTPUTS


@pytest.mark.parametrize("where", ["", "inputs", "outputs", "environment", "inputs.image"])
def test_a_field_from_a_newer_reprun_is_named_not_a_type_error(record, where):
    data = record.to_dict()
    part = data
    for key in filter(None, where.split(".")):
        part = part[key]
    part["gpu_clock"] = 1
    with pytest.raises(NewerRecord) as info:
        RunRecord.from_dict(data)
    field = f"{where}.gpu_clock" if where else "gpu_clock"
    assert info.value.message.startswith(f"record written by a newer reprun (field {field})")
    assert info.value.exit_code == ExitCode.INVALID


def test_a_status_from_a_newer_reprun_is_named(record):
    data = {**record.to_dict(), "status": "quarantined"}
    with pytest.raises(NewerRecord, match="newer reprun .status 'quarantined'"):
        RunRecord.from_dict(data)
