"""Comparing two run records: the verdict, the differences, and the likely causes."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from orchestrator.compare.comparison import combined_verdict, compare_many, compare_records
from orchestrator.compare.tolerance import Tolerance, parse_tolerances
from orchestrator.compare.value import Comparison, EnvironmentRow, MetricRow, Verdict
from orchestrator.errors import ExitCode, UsageError
from orchestrator.execution.hermetic import THREAD_VARIABLES
from orchestrator.records import (Artifact, DatasetFacts, EnvironmentManifest, ImageFacts, Inputs,
                                  Outputs, RunRecord)

IMAGE_A = "sha256:" + "a" * 64
IMAGE_B = "sha256:" + "b" * 64
DATA = "d" * 64
PINNED_ENV = {
    **{name: "1" for name in THREAD_VARIABLES},
    "PYTHONHASHSEED": "0", "REPRUN_SEED": "42", "TZ": "UTC", "LC_ALL": "C.UTF-8",
}
TOLERANCES = {
    "metrics": {
        "default": {"kind": "exact", "value": 0.0},
        "accuracy": {"kind": "abs", "value": 1e-9},
        "fit_seconds": {"kind": "ignore", "value": 0},
    },
    "artifacts": "bitwise",
}


def make_record(run_id: str = "run-a", **changes) -> RunRecord:
    """A succeeded, fully pinned run; `changes` replace nested fields: inputs__seed=2."""
    record = RunRecord(
        id=run_id,
        status="succeeded",
        started_at="2024-05-01T10:00:00Z",
        finished_at="2024-05-01T10:01:00Z",
        inputs=Inputs(
            spec_name="digits-logreg", spec_path="specs/digits-logreg.yaml", spec_sha256="e" * 64,
            seed=42, command=["python3", "/app/train.py", "--seed", "42"], params={"C": 1.0},
            env={}, resources={"cpus": 1, "memory_bytes": 2 << 30, "timeout_s": 1800},
            container={"network": "none", "read_only": True},
            image=ImageFacts(id=IMAGE_A, repo_digest="127.0.0.1:5000/reprun/sklearn@" + IMAGE_A),
            dataset=DatasetFacts(path="/specs/data/digits.csv", sha256=DATA, kind="file",
                                 files=1, bytes=1234, mount="/data"),
        ),
        environment=EnvironmentManifest(
            os={"ID": "debian", "VERSION_ID": "12"},
            os_packages={"libc6": "2.36-9", "libopenblas0-pthread": "0.3.21+ds-4"},
            package_manager="dpkg",
            python={"version": "3.11.2", "executable": "/usr/bin/python3"},
            python_distributions={"numpy": "1.24.2", "scikit-learn": "1.2.1"},
            blas=[{"user_api": "blas", "internal_api": "openblas", "version": "0.3.21",
                   "num_threads": 1, "filepath": "/usr/lib/libopenblas.so.0"}],
            cpu={"model": "Intel Xeon", "flags": ["sse2", "avx2"], "count": 2},
            limits={"cpus": 1.0, "memory_bytes": 2 << 30, "pids": 256},
            kernel="6.1.0-18-amd64",
            locale={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC", "umask": "0022"},
            user={"uid": 65534, "gid": 65534, "name": "nobody"},
            hostname="reprun",
            env=dict(PINNED_ENV),
            host={"engine_version": "20.10.24", "storage_driver": "overlay2"},
        ),
        outputs=Outputs(
            exit_code=0, reason="ok", duration_s=60.0,
            metrics={"accuracy": 0.9533333333333334, "loss": 0.125, "fit_seconds": 12.5},
            artifacts={"model.pkl": Artifact(sha256="f" * 64, size=4096)},
            log_sha256="0" * 64, log_bytes=100, log_truncated=False,
        ),
        compare=TOLERANCES,
        reprun_version="0.1.0",
    )
    return replaced(record, **changes)


def replaced(obj, **changes):
    for path, value in changes.items():
        obj = _replace_path(obj, path.split("__"), value)
    return obj


def _replace_path(obj, parts, value):
    if len(parts) == 1:
        return dataclasses.replace(obj, **{parts[0]: value})
    inner = _replace_path(getattr(obj, parts[0]), parts[1:], value)
    return dataclasses.replace(obj, **{parts[0]: inner})


def with_metrics(record: RunRecord, **metrics: float) -> RunRecord:
    return replaced(record, outputs__metrics={**record.outputs.metrics, **metrics})


def metric(comparison: Comparison, name: str) -> MetricRow:
    return next(row for row in comparison.sections.metrics if row.name == name)


def summaries(comparison: Comparison) -> list[str]:
    return [cause.summary for cause in comparison.causes]


# --- verdicts -------------------------------------------------------------------------------

def test_identical_records_are_identical_with_nothing_to_explain():
    a, b = make_record("run-a"), make_record("run-b")
    comparison = compare_records(a, b)
    assert comparison.verdict == "identical"
    assert comparison.verdict.exit_code == ExitCode.OK == 0
    assert comparison.causes == ()
    assert comparison.sections.environment == ()
    assert all(row.same for row in comparison.sections.inputs)
    assert {row.status for row in comparison.sections.metrics} == {"identical", "ignored"}
    assert [row.status for row in comparison.sections.artifacts] == ["identical"]
    assert comparison.summary.startswith("identical:")


def test_a_metric_within_abs_1e9_is_equivalent_the_same_without_tolerance_differs():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b"), accuracy=0.9533333333333334 + 4e-16)

    tolerant = compare_records(a, b)
    assert metric(tolerant, "accuracy").status == "within"
    assert metric(tolerant, "accuracy").tolerance == "abs 1e-09"
    assert tolerant.verdict == "equivalent"
    assert tolerant.verdict.exit_code == 0

    exact = compare_records(a, b, tolerances={"metrics": {"default": "exact"}})
    assert metric(exact, "accuracy").status == "beyond"
    assert metric(exact, "accuracy").tolerance == "exact"
    assert exact.verdict == "differs"
    assert exact.verdict.exit_code == ExitCode.DIFFERS == 1


def test_a_metric_further_than_its_abs_tolerance_is_beyond():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b"), accuracy=0.96)
    row = metric(compare_records(a, b), "accuracy")
    assert row.status == "beyond"
    assert row.delta == pytest.approx(0.96 - 0.9533333333333334)


def test_a_relative_tolerance_scales_with_the_larger_value():
    a = with_metrics(make_record("run-a"), loss=100.0)
    b = with_metrics(make_record("run-b"), loss=100.5)
    within = compare_records(a, b, tolerances={"metrics": {"loss": {"rel": 0.01}}})
    assert metric(within, "loss").status == "within"
    assert metric(within, "loss").tolerance == "rel 0.01"
    beyond = compare_records(a, b, tolerances={"metrics": {"loss": {"kind": "rel",
                                                                     "value": 0.001}}})
    assert metric(beyond, "loss").status == "beyond"


def test_which_run_first_read_the_image_facts_is_not_an_environment_change():
    # The second run of a verify reuses the facts the first read; that is bookkeeping, not drift.
    a = make_record("run-a")
    b = make_record("run-b", environment__host={**a.environment.host,
                                                 "image_facts_from_run": "run-a"})
    comparison = compare_records(a, b)
    assert comparison.verdict == "identical" and comparison.sections.environment == ()
    engine = make_record("run-c", environment__host={**a.environment.host,
                                                      "engine_version": "24.0.5"})
    assert compare_records(a, engine).sections.environment     # a real host change still shows


def test_an_ignored_metric_may_differ_or_be_missing_without_changing_the_verdict():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b"), fit_seconds=99.0)
    comparison = compare_records(a, b)
    assert metric(comparison, "fit_seconds").status == "ignored"
    assert metric(comparison, "fit_seconds").tolerance == "ignore"
    assert comparison.verdict == "identical"

    metrics = dict(a.outputs.metrics)
    del metrics["fit_seconds"]
    c = replaced(make_record("run-c"), outputs__metrics=metrics)
    assert compare_records(a, c).verdict == "identical"


def test_nan_in_both_runs_is_identical_and_the_note_says_so():
    a = with_metrics(make_record("run-a"), loss=math.nan)
    b = with_metrics(make_record("run-b"), loss=float("nan"))
    comparison = compare_records(a, b)
    row = metric(comparison, "loss")
    assert row.status == "identical"
    assert row.delta == 0.0
    assert comparison.verdict == "identical"
    assert any("NaN in both runs" in note and "loss" in note for note in comparison.notes)


def test_nan_against_a_number_is_beyond_any_tolerance():
    a = with_metrics(make_record("run-a"), accuracy=math.nan)
    b = make_record("run-b")
    comparison = compare_records(a, b, tolerances={"metrics": {"accuracy": {"abs": 1e9}}})
    row = metric(comparison, "accuracy")
    assert row.status == "beyond"
    assert math.isnan(row.delta)
    assert comparison.verdict == "differs"


def test_equal_infinities_are_identical_and_opposite_ones_beyond():
    a = with_metrics(make_record("run-a"), loss=math.inf, accuracy=-math.inf)
    same = with_metrics(make_record("run-b"), loss=math.inf, accuracy=-math.inf)
    comparison = compare_records(a, same)
    assert metric(comparison, "loss").status == "identical"
    assert metric(comparison, "accuracy").status == "identical"
    assert comparison.verdict == "identical"

    opposite = with_metrics(make_record("run-c"), loss=-math.inf)
    assert metric(compare_records(a, opposite), "loss").status == "beyond"


def test_infinity_against_a_number_is_beyond_even_a_generous_relative_tolerance():
    a = with_metrics(make_record("run-a"), loss=math.inf)
    b = make_record("run-b")
    comparison = compare_records(a, b, tolerances={"metrics": {"loss": {"rel": 10.0}}})
    assert metric(comparison, "loss").status == "beyond"


def test_a_metric_reported_by_one_run_only_is_missing_on_the_other_side():
    a = with_metrics(make_record("run-a"), f1=0.9)
    b = with_metrics(make_record("run-b"), recall=0.8)
    comparison = compare_records(a, b)
    assert metric(comparison, "f1").status == "missing-b"
    assert metric(comparison, "f1").b is None and metric(comparison, "f1").delta is None
    assert metric(comparison, "recall").status == "missing-a"
    assert comparison.verdict == "differs"


# --- artifacts ------------------------------------------------------------------------------

def test_artifacts_that_differ_or_are_missing_make_the_runs_differ():
    a = make_record("run-a")
    b = replaced(make_record("run-b"), outputs__artifacts={
        "model.pkl": Artifact(sha256="1" * 64, size=4097),
        "scaler.pkl": Artifact(sha256="2" * 64, size=10),
    })
    comparison = compare_records(a, b)
    rows = {row.name: row for row in comparison.sections.artifacts}
    assert rows["model.pkl"].status == "differs"
    assert (rows["model.pkl"].a_size, rows["model.pkl"].b_size) == (4096, 4097)
    assert rows["scaler.pkl"].status == "missing-a"
    assert comparison.verdict == "differs"


def test_artifacts_compared_with_ignore_are_ignored():
    a = make_record("run-a")
    b = replaced(make_record("run-b"),
                 outputs__artifacts={"model.pkl": Artifact(sha256="1" * 64, size=1)})
    comparison = compare_records(a, b, tolerances={**TOLERANCES, "artifacts": "ignore"})
    assert [row.status for row in comparison.sections.artifacts] == ["ignored"]
    assert comparison.verdict == "identical"


# --- incomplete runs ------------------------------------------------------------------------

def test_a_run_that_failed_makes_the_comparison_incomplete_with_the_job_failure_exit_code():
    a = make_record("run-a")
    b = replaced(make_record("run-b"), status="failed",
                 outputs__reason="timeout", outputs__message="killed after 30m",
                 outputs__metrics={})
    comparison = compare_records(a, b)
    assert comparison.verdict == "incomplete"
    assert comparison.verdict.exit_code == ExitCode.JOB_FAILED == 5
    assert comparison.b.status == "failed" and comparison.b.reason == "timeout"
    assert comparison.causes[0].kind == "run"
    assert "run-b did not succeed: failed, timeout" in comparison.causes[0].summary
    assert comparison.causes[0].details == ("killed after 30m",)


def test_a_run_without_outputs_is_incomplete_not_a_crash():
    a = make_record("run-a")
    b = replaced(make_record("run-b"), status="interrupted", outputs=None)
    comparison = compare_records(a, b)
    assert comparison.verdict == "incomplete"
    assert {row.status for row in comparison.sections.metrics} <= {"missing-b", "ignored"}


# --- causes: inputs -------------------------------------------------------------------------

def test_different_seeds_yield_a_cause_that_names_the_seed():
    a = make_record("run-a", inputs__seed=1)
    b = with_metrics(make_record("run-b", inputs__seed=2), loss=0.2)
    comparison = compare_records(a, b)
    assert comparison.verdict == "differs"
    assert comparison.causes[0].kind == "input"
    assert comparison.causes[0].summary == "the seed differs: 1 vs 2"
    seed_row = next(row for row in comparison.sections.inputs if row.field == "seed")
    assert (seed_row.a, seed_row.b, seed_row.same) == ("1", "2", False)
    # Different inputs explain the difference; no nondeterminism is suspected.
    assert all(cause.kind != "nondeterminism" for cause in comparison.causes)


def test_a_different_dataset_is_named_with_both_checksums():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b", inputs__dataset__sha256="c" * 64), loss=0.3)
    cause = compare_records(a, b).causes[0]
    assert cause.summary == "the dataset differs"
    assert cause.details == (f"sha256 {DATA} vs {'c' * 64}",)


def test_changed_params_are_named_key_by_key():
    a = make_record("run-a")
    b = make_record("run-b", inputs__params={"C": 2.0, "max_iter": 100})
    comparison = compare_records(a, b)
    assert [c.summary for c in comparison.causes] == ["the params differ"]
    assert comparison.causes[0].details == ("params.C: 1.0 vs 2.0",
                                            "params.max_iter: (absent) vs 100")


def test_two_runs_whose_images_differ_by_one_installed_package_yield_an_environment_diff_naming_that_package_with_both_versions_listed_among_the_causes():  # noqa: E501
    a = make_record("run-a")
    b = make_record(
        "run-b",
        inputs__image=ImageFacts(id=IMAGE_B, repo_digest="127.0.0.1:5000/reprun/sklearn@"
                                 + IMAGE_B),
        environment__python_distributions={"numpy": "1.26.4", "scikit-learn": "1.2.1"},
    )
    b = with_metrics(b, accuracy=0.95)
    comparison = compare_records(a, b)

    assert comparison.verdict == "differs"
    assert comparison.sections.environment == (
        EnvironmentRow(section="python-distribution", name="numpy", a="1.24.2", b="1.26.4",
                       change="changed"),
    )
    assert summaries(comparison)[0] == f"the image differs: {IMAGE_A} vs {IMAGE_B}"
    assert "Python distribution numpy changed: 1.24.2 → 1.26.4" in summaries(comparison)


def test_an_os_package_added_removed_or_upgraded_is_named_with_its_versions():
    a = make_record("run-a")
    b = make_record("run-b", environment__os_packages={
        "libc6": "2.36-9+deb12u4", "libgomp1": "12.2.0-14"})
    comparison = compare_records(a, b)
    rows = {(row.name, row.change): (row.a, row.b) for row in comparison.sections.environment}
    assert rows == {
        ("libc6", "changed"): ("2.36-9", "2.36-9+deb12u4"),
        ("libgomp1", "added"): (None, "12.2.0-14"),
        ("libopenblas0-pthread", "removed"): ("0.3.21+ds-4", None),
    }
    assert summaries(comparison) == [
        "OS package libc6 changed: 2.36-9 → 2.36-9+deb12u4",
        "OS package libgomp1 added: 12.2.0-14",
        "OS package libopenblas0-pthread removed (was 0.3.21+ds-4)",
    ]


def test_many_changes_in_one_section_become_one_cause_that_lists_them_all():
    a = make_record("run-a")
    packages = {f"pkg{i}": "2.0" for i in range(10)}
    b = make_record("run-b", environment__python_distributions=packages)
    comparison = compare_records(a, b)
    cause = comparison.causes[0]
    assert cause.summary == "12 Python distribution facts differ (10 added, 2 removed)"
    assert "Python distribution numpy removed (was 1.24.2)" in cause.details
    assert len(cause.details) == 12


def test_blas_libraries_are_compared_by_library_with_version_and_threads():
    a = make_record("run-a")
    b = make_record("run-b", environment__blas=[
        {"user_api": "blas", "internal_api": "openblas", "version": "0.3.26",
         "num_threads": 2, "filepath": "/usr/lib/libopenblas.so.0"},
        {"user_api": "openmp", "internal_api": "openmp", "version": None,
         "num_threads": 2, "filepath": "/usr/lib/libgomp.so.1"},
    ])
    comparison = compare_records(a, b)
    rows = {row.name: (row.a, row.b, row.change) for row in comparison.sections.environment
            if row.section == "blas"}
    assert rows["openblas /usr/lib/libopenblas.so.0 version"] == ("0.3.21", "0.3.26", "changed")
    assert rows["openblas /usr/lib/libopenblas.so.0 num_threads"] == ("1", "2", "changed")
    assert rows["openmp /usr/lib/libgomp.so.1 num_threads"] == (None, "2", "added")


def test_cpu_flags_added_and_removed_and_the_cpu_model_are_listed():
    a = make_record("run-a")
    b = make_record("run-b", environment__cpu={"model": "AMD EPYC", "flags": "sse2 avx512f",
                                                "count": 2, "mhz": 2999.1})
    comparison = compare_records(a, b)
    rows = {(row.section, row.name): row.change for row in comparison.sections.environment}
    assert rows == {("cpu", "model"): "changed", ("cpu-flag", "avx2"): "removed",
                    ("cpu-flag", "avx512f"): "added"}
    assert "CPU flag avx512f added" in summaries(comparison)


def test_kernel_engine_limits_locale_user_and_env_changes_are_rows():
    a = make_record("run-a")
    b = make_record(
        "run-b",
        environment__kernel="6.6.0",
        environment__host={"engine_version": "26.1.0", "storage_driver": "overlay2",
                           "captured_at": "2024-05-02T00:00:00Z"},
        environment__limits={"cpus": 2.0, "memory_bytes": 2 << 30, "pids": 256},
        environment__locale={"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TZ": "UTC",
                             "umask": "0077"},
        environment__user={"uid": 0, "gid": 65534, "name": "nobody"},
        environment__env={**PINNED_ENV, "EXTRA": "1", "HOSTNAME": "0123abcd"},
    )
    comparison = compare_records(a, b)
    got = {(row.section, row.name, row.a, row.b) for row in comparison.sections.environment}
    assert got == {
        ("kernel", "release", "6.1.0-18-amd64", "6.6.0"),
        ("engine", "engine_version", "20.10.24", "26.1.0"),
        ("limits", "cpus", "1.0", "2.0"),
        ("locale", "umask", "0022", "0077"),
        ("user", "uid", "65534", "0"),
        ("env", "EXTRA", None, "1"),
    }


def test_a_fact_one_run_could_not_read_is_not_reported_as_everything_removed():
    a = make_record("run-a")
    b = make_record("run-b", environment__os_packages={},
                    environment__missing={"os_packages": "no dpkg, apk or rpm in the image"})
    comparison = compare_records(a, b)
    assert comparison.sections.environment == ()
    assert any("os_packages not compared" in note and "no dpkg" in note
               for note in comparison.notes)


def test_environment_differs_but_results_agree_lists_the_causes_as_informational():
    a = make_record("run-a")
    b = make_record("run-b", environment__kernel="6.6.0")
    comparison = compare_records(a, b)
    assert comparison.verdict == "identical"
    assert summaries(comparison) == ["kernel release changed: 6.1.0-18-amd64 → 6.6.0"]
    assert any("results agree" in note for note in comparison.notes)


# --- causes: nondeterminism -----------------------------------------------------------------

def test_different_results_under_identical_inputs_suggest_nondeterminism_with_hints():
    unpinned = {"REPRUN_SEED": "42"}
    openblas = {"internal_api": "openblas", "num_threads": 4, "version": "0.3.21",
                "filepath": "/usr/lib/libopenblas.so.0"}
    changes = dict(environment__env=unpinned, environment__limits={"cpus": 4.0},
                   environment__blas=[openblas])
    a = make_record("run-a", **changes)
    b = with_metrics(make_record("run-b", **changes), loss=0.1250000001)
    comparison = compare_records(a, b)
    assert comparison.verdict == "differs"
    kinds = {cause.kind for cause in comparison.causes}
    assert kinds == {"nondeterminism"}
    text = summaries(comparison)
    assert text[0].startswith("nondeterministic under identical inputs")
    assert any(s.startswith("threads are not pinned") for s in text)
    assert any(s.startswith("more than one CPU") for s in text)
    assert "the job may draw randomness that does not come from REPRUN_SEED/{seed}" in text
    assert any(s.startswith("PYTHONHASHSEED is not set") for s in text)
    threads = next(c for c in comparison.causes if c.summary.startswith("threads"))
    assert f"run run-a: {', '.join(THREAD_VARIABLES)} not set" in threads.details
    assert any("openblas" in d and "4 threads" in d for d in threads.details)


def test_a_pinned_run_that_still_differs_only_suspects_its_own_randomness():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b"), loss=0.13)
    text = summaries(compare_records(a, b))
    assert text == [
        "nondeterministic under identical inputs: the same image, dataset, seed and "
        "environment gave different results",
        "the job may draw randomness that does not come from REPRUN_SEED/{seed}",
    ]


def test_variables_the_probe_could_not_read_are_not_reported_as_unset():
    unread = dict(environment__env={}, environment__missing={"env": "permission denied"})
    a = make_record("run-a", **unread)
    b = with_metrics(make_record("run-b", **unread), loss=0.13)
    text = summaries(compare_records(a, b))
    assert not any(s.startswith(("threads are not pinned", "PYTHONHASHSEED")) for s in text)


def test_no_cpu_limit_on_a_machine_with_several_cpus_is_a_hint():
    a = make_record("run-a", environment__limits={}, inputs__resources={})
    b = with_metrics(make_record("run-b", environment__limits={}, inputs__resources={}),
                     loss=0.13)
    cause = next(c for c in compare_records(a, b).causes
                 if c.summary.startswith("more than one CPU"))
    assert "run run-a: no CPU limit, 2 CPUs visible" in cause.details


def test_artifacts_that_differ_while_metrics_match_point_at_serialisation():
    a = make_record("run-a")
    b = replaced(make_record("run-b"),
                 outputs__artifacts={"model.pkl": Artifact(sha256="1" * 64, size=4096)})
    comparison = compare_records(a, b)
    assert comparison.verdict == "differs"
    assert summaries(comparison)[1] == ("artifacts differ while metrics match: artifact "
                                        "serialisation embeds time or randomness")
    assert comparison.causes[1].details == ("artifact model.pkl differs",)


def test_a_different_hostname_alone_does_not_hide_the_nondeterminism():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b", environment__hostname="0123abcd"), loss=0.13)
    text = summaries(compare_records(a, b))
    assert text[0].startswith("nondeterministic under identical inputs")
    assert text[-1] == "hostname hostname changed: reprun → 0123abcd"


# --- tolerances -----------------------------------------------------------------------------

def test_tolerances_come_from_run_a_unless_given_and_a_mismatch_is_noted():
    a = make_record("run-a")
    b = with_metrics(make_record("run-b", compare={"metrics": {"default": "exact"}}),
                     accuracy=0.9533333333333334 + 4e-16)
    comparison = compare_records(a, b)
    assert comparison.verdict == "equivalent"
    assert any("different tolerances" in note for note in comparison.notes)
    assert compare_records(b, a).verdict == "differs"


def test_tolerances_are_read_in_the_record_form_and_the_spec_form():
    parsed = parse_tolerances({"metrics": {"default": {"kind": "exact", "value": 0.0},
                                           "a": {"abs": 1e-9}, "b": "ignore",
                                           "c": {"kind": "rel", "value": 0.01}}})
    assert parsed.for_metric("a").text == "abs 1e-09"
    assert parsed.for_metric("b").text == "ignore"
    assert parsed.for_metric("c").text == "rel 0.01"
    assert parsed.for_metric("other").text == "exact"
    assert parsed.artifacts.default.how == "bitwise"


@pytest.mark.parametrize("bad", [
    {"metrics": {"x": "fuzzy"}},
    {"metrics": {"x": {"abs": -1}}},
    {"metrics": {"x": {"abs": "small"}}},
    {"metrics": {"x": {"abs": 1, "rel": 1}}},
    {"artifacts": "roughly"},
])
def test_a_malformed_tolerance_is_a_usage_error(bad):
    with pytest.raises(UsageError) as info:
        parse_tolerances(bad)
    assert info.value.exit_code == ExitCode.INVALID


# --- several runs, baselines ----------------------------------------------------------------

def test_compare_many_compares_the_first_run_with_each_other_and_the_worst_verdict_wins():
    base = make_record("run-1")
    same = make_record("run-2")
    close = with_metrics(make_record("run-3"), accuracy=0.9533333333333334 + 4e-16)
    far = with_metrics(make_record("run-4"), loss=1.0)
    comparisons = compare_many([base, same, close, far])
    assert [(c.a.id, c.b.id) for c in comparisons] == [
        ("run-1", "run-2"), ("run-1", "run-3"), ("run-1", "run-4")]
    assert all(c.baseline == "run-1" for c in comparisons)
    assert [c.verdict for c in comparisons] == ["identical", "equivalent", "differs"]
    assert combined_verdict(comparisons) == "differs"
    assert combined_verdict(comparisons[:2]) == "equivalent"
    failed = compare_records(base, replaced(make_record("run-5"), status="failed"))
    assert combined_verdict([*comparisons, failed]) == "incomplete"
    assert combined_verdict(comparisons).exit_code == 1


def test_compare_many_needs_two_runs_and_combined_verdict_needs_one_comparison():
    with pytest.raises(UsageError):
        compare_many([make_record()])
    with pytest.raises(UsageError):
        combined_verdict([])


def test_the_baseline_is_run_a_unless_named():
    a, b = make_record("run-a"), make_record("run-b")
    assert compare_records(a, b).baseline == "run-a"
    assert compare_records(a, b, baseline_id="run-b").baseline == "run-b"
    with pytest.raises(UsageError):
        compare_records(a, b, baseline_id="run-z")


# --- the value itself -----------------------------------------------------------------------

def test_a_comparison_is_frozen():
    comparison = compare_records(make_record("run-a"), make_record("run-b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        comparison.verdict = "differs"  # type: ignore[misc]


def test_to_dict_and_from_dict_round_trip_exactly_with_nan_and_infinities():
    a = with_metrics(make_record("run-a", inputs__seed=1), loss=math.nan, accuracy=math.inf,
                     f1=0.5)
    b = with_metrics(make_record("run-b", inputs__seed=2, environment__kernel="6.6"),
                     loss=1.0, accuracy=-math.inf, recall=0.25)
    comparison = compare_records(a, b, extra={"variations": [{"name": "tz", "value": "UTC"}]})
    data = comparison.to_dict()
    text = json.dumps(data, allow_nan=False)  # valid JSON: no NaN or Infinity tokens
    rows = {row["name"]: row for row in data["sections"]["metrics"]}
    assert (rows["loss"]["a"], rows["loss"]["delta"]) == ("NaN", "NaN")
    assert (rows["accuracy"]["a"], rows["accuracy"]["b"], rows["accuracy"]["delta"]) == (
        "Infinity", "-Infinity", "-Infinity")

    again = Comparison.from_dict(json.loads(text))
    assert again == comparison
    assert again.to_dict() == data
    assert isinstance(again.causes, tuple) and isinstance(again.sections.metrics, tuple)
    assert again.extra == {"variations": [{"name": "tz", "value": "UTC"}]}


def test_from_dict_refuses_something_that_is_not_a_report():
    with pytest.raises(UsageError):
        Comparison.from_dict({"schema": "reprun.run/1"})


def test_each_verdict_maps_to_one_exit_code_as_the_readme_says():
    assert {v.value: v.exit_code for v in Verdict} == {
        "identical": 0, "equivalent": 0, "flaky": 1, "differs": 1, "incomplete": 5}


def test_a_run_that_pins_only_three_of_the_six_thread_variables_is_told_which_are_missing():
    three = {k: v for k, v in PINNED_ENV.items()
             if k not in ("NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "BLIS_NUM_THREADS")}
    a = make_record("run-a", environment__env=three)
    b = with_metrics(make_record("run-b", environment__env=three), loss=0.13)
    threads = next(c for c in compare_records(a, b).causes if c.summary.startswith("threads"))
    assert threads.details[:2] == (
        "run run-a: NUMEXPR_NUM_THREADS, VECLIB_MAXIMUM_THREADS, BLIS_NUM_THREADS not set",
        "run run-b: NUMEXPR_NUM_THREADS, VECLIB_MAXIMUM_THREADS, BLIS_NUM_THREADS not set")
    assert threads.details[2].startswith("known cause blas-threads: pin OMP_NUM_THREADS")


def test_the_spec_and_the_comparison_share_one_tolerance():
    from orchestrator.spec import model
    assert model.Tolerance is Tolerance
    assert parse_tolerances({"metrics": {"loss": {"rel": 0.01}}}).for_metric("loss") == \
        Tolerance("rel", 0.01)


# --- metrics beyond numbers -----------------------------------------------------------------

def test_text_booleans_and_null_are_compared_exactly_and_a_differing_text_differs():
    a = with_metrics(make_record("run-a"), optimizer="sgd", converged=True, best=None)
    same = with_metrics(make_record("run-b"), optimizer="sgd", converged=True, best=None)
    rows = {m.name: m for m in compare_records(a, same).sections.metrics}
    assert (rows["optimizer"].kind, rows["optimizer"].status) == ("text", "identical")
    assert (rows["converged"].kind, rows["best"].kind) == ("boolean", "null")
    other = with_metrics(make_record("run-b"), optimizer="adam", converged=1.0, best=None)
    comparison = compare_records(a, other)
    rows = {m.name: m for m in comparison.sections.metrics}
    assert (rows["optimizer"].status, rows["optimizer"].tolerance) == ("differs", "exact")
    # True is not the number 1: the kinds differ, so the values do.
    assert (rows["converged"].kind, rows["converged"].status) == ("mixed", "differs")
    assert comparison.verdict == "differs"


def test_a_list_metric_is_a_curve_compared_step_by_step_under_its_tolerance():
    a = with_metrics(make_record("run-a"), curve=[0.5, 0.4, 0.3, 0.2])
    close = with_metrics(make_record("run-b"), curve=[0.5, 0.4, 0.3 + 1e-12, 0.2])
    comparison = compare_records(a, close, tolerances={"metrics": {"curve": {"abs": 1e-9}}})
    assert comparison.verdict == "equivalent"
    assert comparison.sections.series[0].status == "within"
    short = with_metrics(make_record("run-b"), curve=[0.5, 0.4, 0.3])
    row, = compare_records(a, short).sections.series
    assert (row.status, row.agree_until, row.first_differ) == ("beyond", 2, 3)
    assert "run a has 4 steps, run b 3" in row.summary


def test_metric_names_sort_naturally():
    a = with_metrics(make_record("run-a"), **{"round.10": 1.0, "round.2": 1.0, "round.1": 1.0})
    names = [m.name for m in compare_records(a, a).sections.metrics]
    assert names.index("round.1") < names.index("round.2") < names.index("round.10")


def test_a_metrics_file_of_text_lists_and_null_is_read_not_refused():
    from orchestrator.outputs import parse_metrics
    metrics = parse_metrics(json.dumps({"opt": "sgd", "ok": False, "best": None,
                                        "curve": [1, 2.5], "tags": ["a", 1],
                                        "n": {"deep": 3}}).encode(), "metrics.json")
    assert metrics == {"opt": "sgd", "ok": False, "best": None, "curve": [1.0, 2.5],
                       "tags": '["a", 1]', "n.deep": 3.0}


def test_a_steps_file_is_read_bounded_and_odd_lines_are_counted_not_fatal():
    from orchestrator.steps import MAX_STEPS_BYTES, parse_steps
    raw = b"\n".join([b'{"step": 0, "loss": 1.0, "name": "x"}', b'{"step": 1, "loss": 0.5}',
                      b'{"step": "2", "loss": 0.4}', b"[1, 2]", b'{"step": 1, "loss": 0.45}',
                      b'{"step": 3, "lo'])
    stream = parse_steps(raw, "steps.jsonl")
    assert stream.series == {"loss": [(0, 1.0), (1, 0.45)]}
    assert stream.latest == (1, {"loss": 0.45})
    assert any("3 line(s)" in note for note in stream.notes)
    huge = b'{"step": 1, "loss": 0.5}\n' * (MAX_STEPS_BYTES // 20)
    capped = parse_steps(huge, "steps.jsonl")
    assert capped.series == {"loss": [(1, 0.5)]} and "capped" in capped.notes[0]


def test_a_version_1_report_is_still_read_and_rendered():
    from orchestrator.reports import render, validation_errors
    old = {"schema": "reprun.report/1", "created_at": "2024-05-01T11:00:00Z",
           "a": {"run_id": "r1", "spec_name": "s", "status": "succeeded",
                 "started_at": "t", "image_id": IMAGE_A, "baseline": True, "reason": "ok"},
           "b": {"run_id": "r2", "spec_name": "s", "status": "succeeded",
                 "started_at": "t", "image_id": IMAGE_A, "baseline": False, "reason": "ok"},
           "sections": {"inputs": [], "environment": [], "artifacts": [],
                        "metrics": [{"name": "loss", "a": 0.5, "b": "NaN", "delta": "NaN",
                                     "tolerance": "exact", "status": "beyond"}]},
           "verdict": "differs", "summary": "differs", "causes": [], "notes": [], "extra": {}}
    assert validation_errors(old) == []
    comparison = Comparison.from_dict(old)
    assert (comparison.a.id, comparison.baseline, comparison.schema) == ("r1", "r1",
                                                                       "reprun.report/2")
    assert math.isnan(comparison.sections.metrics[0].b)
    assert "r1 (baseline)" in render(comparison, "terminal", verbose=True)


# --- a verdict from N runs ------------------------------------------------------------------

def runs_scoring(*scores: float, test_examples: int | None = None,
                 tolerance: dict | None = None) -> list:
    compare = {"metrics": {"default": tolerance or {"kind": "exact", "value": 0.0}},
               "artifacts": "bitwise"}
    if test_examples is not None:
        compare["test_examples"] = test_examples
    return [dataclasses.replace(with_metrics(make_record(f"run-{i}"), accuracy=s),
                                compare=compare) for i, s in enumerate(scores)]


def test_some_pairs_agreeing_and_others_not_is_flaky_and_exits_1():
    from orchestrator.compare.spread import spread_of
    spread = spread_of(runs_scoring(0.95, 0.95, 0.96, 0.95, 0.96))
    assert (spread.verdict, spread.pairs, spread.agreeing_pairs) == ("flaky", 10, 4)
    assert spread.verdict.exit_code == 1
    assert spread_of(runs_scoring(0.95, 0.95, 0.95)).verdict == "identical"
    assert spread_of(runs_scoring(0.93, 0.94, 0.95)).verdict == "differs"


def test_the_spread_gives_mean_deviation_range_and_a_suggested_tolerance_by_the_rule():
    from orchestrator.compare.spread import spread_of
    spread = spread_of(runs_scoring(0.950, 0.954, 0.952, 0.950, 0.951))
    accuracy = next(m for m in spread.metrics if m.name == "accuracy")
    assert accuracy.mean == pytest.approx(0.9514) and accuracy.stdev == pytest.approx(0.00167332)
    assert (accuracy.low, accuracy.high, accuracy.agree) == (0.950, 0.954, False)
    # Twice the largest difference seen (0.004), to two significant digits, rounded up.
    assert accuracy.suggested == Tolerance("abs", 0.008)
    block = spread.suggested_block()
    assert "    accuracy: {abs: 0.008}\n" in block and block.startswith("compare:\n  metrics:\n")
    import yaml
    assert yaml.safe_load(block)["compare"]["metrics"]["accuracy"] == {"abs": 0.008}


def test_an_accuracy_measured_on_450_examples_is_set_beside_its_binomial_standard_error():
    from orchestrator.compare.spread import spread_of
    spread = spread_of(runs_scoring(0.950, 0.954, 0.952, test_examples=450))
    accuracy = next(m for m in spread.metrics if m.name == "accuracy")
    assert accuracy.binomial_se == pytest.approx(math.sqrt(0.952 * 0.048 / 450))   # 0.01008
    assert "within the 0.010077 expected from the test set" in accuracy.spread_text
    # The test set's own noise is larger than what was seen: the suggestion covers it.
    assert accuracy.suggested == Tolerance("abs", 0.021)
    assert "  test_examples: 450" in spread.suggested_block()
    loss = next(m for m in spread.metrics if m.name == "loss")
    assert loss.binomial_se is None


# --- the spec keys the comparison reads ---------------------------------------------------

@pytest.mark.parametrize("outputs, compare, problem", [
    ({"steps": "/abs/steps.jsonl"}, {}, "outputs.steps"),
    ({"steps": 3}, {}, "outputs.steps"),
    ({}, {"test_examples": 0}, "compare.test_examples"),
    ({}, {"test_examples": "450"}, "compare.test_examples"),
], ids=["absolute-steps", "steps-not-text", "no-examples", "examples-as-text"])
def test_a_bad_steps_file_or_test_set_size_is_refused_by_validate(tmp_path, outputs, compare,
                                                                   problem):
    import subprocess
    import sys
    import yaml
    from orchestrator.spec.load import load_spec
    (tmp_path / "data.csv").write_text("x\n1\n")
    good = {"version": 1, "name": "job", "image": {"ref": "127.0.0.1:5000/x@sha256:" + "a" * 64},
            "dataset": {"path": "data.csv", "sha256": "b" * 64}, "seed": 1,
            "command": ["true"], "outputs": {"steps": "steps.jsonl"},
            "compare": {"test_examples": 450}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(good))
    spec = load_spec(path)
    assert (spec.outputs.steps, spec.compare.test_examples) == ("steps.jsonl", 450)
    bad = {**good, "outputs": outputs or good["outputs"], "compare": compare or good["compare"]}
    path.write_text(yaml.safe_dump(bad))
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "validate", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and problem in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
