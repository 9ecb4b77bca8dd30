"""Intervention runs: two runs under identical inputs differ, and `--diagnose` names the source
whose removal makes a pair agree — exactly one, with the fix for the libraries the job uses."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from orchestrator.execution.interventions import (INTERVENTION_NAMES, ImageTraits,
                                                  InterventionKit, intervene, seccomp_profile)
from orchestrator.records import EnvironmentManifest
from orchestrator.variations.diagnose import most_runs

JOBS = Path(__file__).parent / "jobs"
SOURCES = {
    "clock": "the job reads the wall clock: with the wall clock frozen, two runs were identical",
    "entropy": "the job draws unseeded randomness: with the entropy fixed, two runs were identical",
    "aslr": "the job depends on memory addresses (id() or object order): with address-space "
            "randomization off, two runs were identical",
    "threads": "the job races between threads",
}


def diagnosed(project, job: str, *args: str):
    project.dataset()
    project.spec(script=(JOBS / job).read_text())
    result = project.reprun("verify", "job.yaml", "--diagnose", *args, "--report", "r.json",
                            timeout=900)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads((project.root / "r.json").read_text())
    return result, report


def named_sources(report) -> list[str]:
    return [name for name, sentence in SOURCES.items()
            if any(c["summary"].startswith(sentence) for c in report["causes"])]


def recorded_interventions(project) -> list[list[str]]:
    with sqlite3.connect(project.store / "store.db") as db:
        rows = db.execute("SELECT record FROM runs ORDER BY started_at").fetchall()
    return [json.loads(r[0])["inputs"]["container"].get("interventions", {}).get("removed")
            for r in rows]


@pytest.mark.engine
def test_a_job_that_reads_the_clock_is_named_for_the_clock(project):
    result, report = diagnosed(project, "reads_clock.py")
    assert named_sources(report) == ["clock"], report["causes"][:2]
    assert report["causes"][0]["summary"] == SOURCES["clock"]
    assert any("known cause wall-clock-in-results" in d for d in report["causes"][0]["details"])


@pytest.mark.engine
@pytest.mark.parametrize("job", ["unseeded_random.py", "unseeded_urandom.py",
                                 "unseeded_numpy.py", "sklearn_random_state.py"])
def test_each_unseeded_randomness_api_is_named_for_the_entropy(project, job):
    result, report = diagnosed(project, job)
    assert named_sources(report) == ["entropy"], report["causes"][:2]
    details = report["causes"][0]["details"]
    # numpy and scikit-learn are in the manifest: their fixes are given.
    assert any("known cause numpy-rng-unseeded" in d for d in details), details
    assert any("known cause sklearn-random-state-none" in d for d in details), details


@pytest.mark.engine
def test_an_address_ordered_set_is_named_for_address_randomization(project):
    result, report = diagnosed(project, "address_order.py")
    assert named_sources(report) == ["aslr"], report["causes"][:2]


@pytest.mark.engine
def test_every_diagnosis_run_is_recorded_as_an_intervention_and_shown(project):
    # --verbose: the terminal's concise verdict leaves the extra tables to the full report.
    result, report = diagnosed(project, "unseeded_random.py", "--verbose")
    removed = recorded_interventions(project)
    assert removed[:2] == [None, None]           # the plain pair
    assert removed[2] == removed[3] == list(INTERVENTION_NAMES)   # everything removed first
    assert all(r for r in removed[2:])
    pairs = report["extra"]["diagnosis_pairs"]["rows"]
    assert len(removed) == 2 + 2 * len(pairs) <= 2 + most_runs(len(INTERVENTION_NAMES))
    assert [p[5] for p in pairs][0] == "yes"
    assert "diagnosis" in result.stdout.lower() and "Intervention pairs" in result.stdout


@pytest.mark.engine
def test_a_plain_verify_that_differs_suggests_the_diagnosis_with_its_cost(project):
    project.dataset()
    project.spec(script=(JOBS / "unseeded_random.py").read_text())
    result = project.reprun("verify", "job.yaml", "--report", "r.json")
    assert result.returncode == 1, result.stderr
    causes = json.loads((project.root / "r.json").read_text())["causes"]
    hint = [c["summary"] for c in causes if "--diagnose" in c["summary"]]
    assert hint and f"at most {most_runs(4)} runs, about" in hint[0], causes


@pytest.mark.engine
def test_a_job_reading_its_own_container_still_differs_and_the_report_says_what_remains(project):
    # No intervention removes it: the mount table names the container's own folders.
    script = ('import hashlib, json; digest = hashlib.sha256(open("/proc/self/mountinfo", "rb")'
              '.read()).digest(); json.dump({"mounts": int.from_bytes(digest[:6], "big")}, open("/out/metrics.json", "w"))')
    project.dataset()
    project.spec(script=script)
    result = project.reprun("verify", "job.yaml", "--diagnose", "--report", "r.json", timeout=900)
    assert result.returncode == 1, result.stderr
    first = json.loads((project.root / "r.json").read_text())["causes"][0]
    assert first["summary"].startswith("nondeterministic even with the wall clock frozen"), first
    assert any(d.startswith("what remains: GPU kernels") for d in first["details"])


def test_the_entropy_profile_answers_getrandom_with_enosys_and_the_aslr_one_allows_setarch():
    plain = seccomp_profile(fixed_entropy=False, allow_no_aslr=False)
    fixed = seccomp_profile(fixed_entropy=True, allow_no_aslr=True)
    allowed = lambda p: {n for r in p["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and
                         "args" not in r for n in r["names"]}
    assert "getrandom" in allowed(plain) and "getrandom" not in allowed(fixed)
    assert {"names": ["getrandom"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38} in fixed["syscalls"]
    personality = lambda p: {r["args"][0]["value"] for r in p["syscalls"]
                             if r["names"] == ["personality"]}
    assert 0x0040000 in personality(fixed) and 0x0040000 not in personality(plain)
    # What the engine's default refuses stays refused.
    assert not {"unshare", "setns", "keyctl", "userfaultfd", "mount", "ptrace"} & allowed(fixed)


def test_the_clock_is_not_frozen_in_an_image_without_glibc(tmp_path):
    kit = InterventionKit.prepare(tmp_path, 1)
    musl = ImageTraits.from_manifest(EnvironmentManifest(os_packages={"musl": "1.2"}))
    from orchestrator.execution.interventions import intervention
    reason = intervention("clock").unsupported(musl, kit)
    assert reason and "musl" in reason


def test_the_fixed_bytes_are_the_same_for_a_seed_and_differ_for_another(tmp_path):
    a, random = (p.read_bytes() for p in InterventionKit.prepare(tmp_path / "a", 1).entropy_files)
    b = InterventionKit.prepare(tmp_path / "b", 1).entropy_files[0].read_bytes()
    c = InterventionKit.prepare(tmp_path / "c", 2).entropy_files[0].read_bytes()
    assert a == b == random != c and len(set(a[:4096])) > 200


@pytest.mark.engine
def test_a_pdf_that_embeds_the_time_is_ranked_first(project):
    project.dataset()
    spec = project.spec(script=(JOBS / "pdf_timestamp.py").read_text())
    spec.write_text(spec.read_text().replace('["*.bin"]', '["*.bin", "*.pdf"]'))
    result = project.reprun("verify", "job.yaml", "--report", "r.json")
    assert result.returncode == 1, result.stderr
    causes = json.loads((project.root / "r.json").read_text())["causes"]
    assert causes[0]["summary"].startswith("only documents differ (report.pdf), the model and "
                                           "metrics agree: they embed the time"), causes[0]
    assert any("SOURCE_DATE_EPOCH" in d for d in causes[0]["details"])
    assert not any("REPRUN_SEED" in c["summary"] for c in causes), causes


@pytest.mark.engine
def test_every_run_gets_source_date_epoch_recorded_and_a_spec_can_set_another(project):
    project.dataset()
    script = ('import json, os; json.dump({"epoch": int(os.environ["SOURCE_DATE_EPOCH"])}, '
              'open("/out/metrics.json", "w"))')
    project.spec(name="default", script=script)
    project.spec(name="chosen", script=script, extra='env: {SOURCE_DATE_EPOCH: "1700000000"}\n')
    for name, epoch in (("default", 315532800), ("chosen", 1700000000)):
        result = project.reprun("run", f"{name}.yaml")
        assert result.returncode == 0, result.stderr
        with sqlite3.connect(project.store / "store.db") as db:
            records = [json.loads(text) for (text,) in db.execute("SELECT record FROM runs")]
        [record] = [r for r in records if r["inputs"]["spec_name"] == name]
        assert record["outputs"]["metrics"] == {"epoch": epoch}
        assert record["inputs"]["container"]["pinned_env"]["SOURCE_DATE_EPOCH"] == str(epoch)


# --- the knowledge base ---------------------------------------------------------------------

from orchestrator.knowledge.causes import CAUSES  # noqa: E402
from orchestrator.knowledge.document import causes_markdown  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_every_known_cause_has_a_fix_a_source_and_a_test_or_a_reason():
    ids = [c.id for c in CAUSES]
    assert len(ids) == len(set(ids)) >= 20
    for cause in CAUSES:
        assert cause.fix and cause.looks_like and cause.title, cause.id
        assert cause.source.startswith("https://"), cause.id
        assert bool(cause.test) != bool(cause.untested_because), cause.id
        if cause.on_cpu and not cause.test:
            assert "not in the example image" in cause.untested_because or \
                   "reliably" in cause.untested_because or "two hosts" in cause.untested_because \
                   or "tested through" in cause.untested_because, cause.id
        if not cause.on_cpu:
            assert cause.test is None and "GPU" in cause.untested_because, cause.id
        # The tests' torch image (reprun/torch) has torch: a CPU can show every such entry.
        if cause.on_cpu and "torch" in cause.libraries:
            assert cause.test and cause.test.startswith("tests/test_knowledge_torch.py::"), \
                cause.id


def test_every_test_a_known_cause_names_exists_and_runs_on_the_engine():
    for cause in CAUSES:
        if cause.test is None:
            continue
        path, _, name = cause.test.partition("::")
        source = (REPO / path).read_text()
        assert f"def {name}(" in source, f"{cause.id}: {cause.test} does not exist"


def test_the_knowledge_base_covers_the_causes_the_issue_lists():
    text = " ".join(f"{c.id} {c.fix}" for c in CAUSES)
    for needle in ("use_deterministic_algorithms", "cudnn.benchmark", "CUBLAS_WORKSPACE_CONFIG",
                   "worker_init_fn", "torch.set_num_threads", "enable_op_determinism",
                   "TF_DETERMINISTIC_OPS", "xla_gpu_deterministic_ops", "xgboost",
                   "force_row_wise", "random_state", "n_jobs", "OPENBLAS_NUM_THREADS",
                   "MKL_CBWR", "OPENBLAS_CORETYPE", "allow_tf32", "SOURCE_DATE_EPOCH",
                   "PYTHONHASHSEED", "seed-not-wired"):
        assert needle.lower() in text.lower(), needle


def test_docs_causes_md_is_generated_from_the_table_and_current():
    assert (REPO / "docs" / "causes.md").read_text() == causes_markdown(), \
        "run: python -m orchestrator.knowledge > docs/causes.md"
