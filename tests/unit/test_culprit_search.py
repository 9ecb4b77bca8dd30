"""The culprit search and the choice of variations, as pure logic: which factor sets are tried,
what each factor changes in a job, what is skipped and why (no engine; the real runs that expose
each hidden dependency are in tests/test_variations.py)."""
from __future__ import annotations

import json
import random
from itertools import combinations
from pathlib import Path

import pytest

from orchestrator.errors import UsageError
from orchestrator.execution.hermetic import LABEL_VARIATIONS
from orchestrator.variations.culprit import search_culprits, search_side_by_side
from orchestrator.variations.factors import (FACTOR_NAMES, HostContext, parse_vary, plan_variations,
                                             vary_job)

FACTORS = [name for name in FACTOR_NAMES if name != "time"]   # the nine that can be varied
SHARDS = {f"shard-{i}.csv": f"{i}\n".encode() for i in range(6)}


# --- the search, over a fake oracle -------------------------------------------------------------

def search(clauses, factors=FACTORS):
    """The result depends on the factors of any one clause being varied together."""
    asked = []

    def oracle(varied):
        asked.append(varied)
        return any(clause <= varied for clause in clauses)

    result = search_culprits(factors, oracle)
    assert len(asked) == len(set(asked)) == result.runs, "every set is run at most once"
    assert frozenset() not in asked and frozenset(factors) not in asked, "both are known"
    return result


@pytest.mark.parametrize("culprit", FACTORS)
def test_one_culprit_among_nine_takes_fewer_runs_than_one_factor_at_a_time(culprit):
    result = search([{culprit}])
    assert result.groups == ((culprit,),)
    assert result.runs <= 6 < len(FACTORS)


def test_one_culprit_among_sixteen_takes_a_logarithmic_number_of_runs():
    factors = [f"f{i}" for i in range(16)]
    for culprit in factors:
        result = search([{culprit}], factors)
        assert result.groups == ((culprit,),) and result.runs <= 6


@pytest.mark.parametrize("pair", list(combinations(FACTORS, 2)), ids="+".join)
def test_two_factors_that_matter_only_together_are_named_together(pair):
    result = search([set(pair)])
    assert result.groups == (pair,)


@pytest.mark.parametrize("pair", list(combinations(FACTORS, 2)), ids="+".join)
def test_two_independent_culprits_are_both_named(pair):
    result = search([{pair[0]}, {pair[1]}])
    assert set(result.groups) == {(pair[0],), (pair[1],)}


def test_a_lone_culprit_and_an_interacting_pair_are_all_found():
    result = search([{"cpus"}, {"tz", "hostname"}])
    assert sorted(result.groups) == [("cpus",), ("hostname", "tz")]


def test_a_single_factor_needs_no_search_run():
    result = search([{"tz"}], ["tz"])
    assert result.groups == (("tz",),) and result.runs == 0


# --- choosing the variations ------------------------------------------------------------------

def test_vary_all_or_names_and_an_unknown_name_is_refused_with_the_list():
    assert parse_vary("all") == FACTOR_NAMES
    assert parse_vary("tz, cpus,tz") == ("cpus", "tz")
    with pytest.raises(UsageError) as info:
        parse_vary("cpus,moon-phase")
    assert "moon-phase" in info.value.message and "file-order" in info.value.message


def context(tmp_path: Path, **changes) -> HostContext:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    for name, content in SHARDS.items():
        (data / name).write_bytes(content)
    values = dict(host_cpus=2, dataset_path=data, dataset_kind="tree", dataset_bytes=12,
                  dataset_files=6, memory_bytes=512 << 20)
    return HostContext(**{**values, **changes})


def preview_job(tmp_path: Path):
    from orchestrator.execution.job import ContainerJob, Mount
    return ContainerJob(
        name="reprun-x", image_id="sha256:" + "0" * 64, entrypoint=("/bin/sh", "/reprun/wrap.sh"),
        command=("true",), env={"PYTHONHASHSEED": "0", "TZ": "UTC", "LC_ALL": "C.UTF-8",
                                "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"},
        mounts=(Mount(str(tmp_path / "data"), "/data"), Mount("/o", "/out", False),
                Mount("/m", "/reprun", False)),
        hostname="reprun", user="65534:65534", network="none", read_only_root=True,
        tmpfs={}, cap_drop=("ALL",), security_opt=(), nano_cpus=10 ** 9, memory_bytes=512 << 20,
        pids=64, timeout_s=60)


def test_the_same_seed_chooses_the_same_values_and_another_seed_others(tmp_path):
    ctx, job = context(tmp_path), preview_job(tmp_path)
    first = plan_variations(FACTOR_NAMES, 1234, ctx, job)
    assert first == plan_variations(FACTOR_NAMES, 1234, ctx, job)
    other = plan_variations(FACTOR_NAMES, 99, ctx, job)
    assert first.variation("hostname") != other.variation("hostname")
    assert vary_job(job, first.names, 1234) == vary_job(job, first.names, 1234)


def test_what_cannot_be_varied_here_is_skipped_with_the_reason(tmp_path):
    ctx, job = context(tmp_path, host_cpus=1, dataset_kind="file"), preview_job(tmp_path)
    plan = plan_variations(FACTOR_NAMES, 5, ctx, job)
    reasons = {s.factor: s.reason for s in plan.skipped}
    from orchestrator.execution.interventions import FAKETIME_LIBRARY
    faketime = FAKETIME_LIBRARY.is_file()     # the `time` factor preloads it
    assert set(reasons) == {"cpus", "file-order"} | (set() if faketime else {"time"})
    assert "1 CPU" in reasons["cpus"] and "single file" in reasons["file-order"]
    assert faketime or "libfaketime" in reasons["time"]
    assert set(plan.names) == set(FACTOR_NAMES) - set(reasons)


def test_each_factor_changes_only_its_own_part_of_the_job(tmp_path):
    ctx, job = context(tmp_path), preview_job(tmp_path)
    plan = plan_variations(FACTORS, 3, ctx, job)
    cpus = plan.transform(["cpus"])(job)
    assert cpus.nano_cpus == 2 * 10 ** 9 and cpus.env["OMP_NUM_THREADS"] == "2"
    assert cpus.hostname == job.hostname and cpus.user == job.user
    hashed = plan.transform(["hash-seed"])(job)
    assert hashed.env["PYTHONHASHSEED"] != "0" and hashed.env["TZ"] == "UTC"
    files = plan.transform(["file-order"])(job)
    assert files.mounts[0].target == "/reprun-dataset" and "/data" in files.tmpfs
    assert "uid=65534" in files.tmpfs["/data"]
    none = plan.transform([])(job)
    assert (none.env, none.mounts, none.hostname) == (job.env, job.mounts, job.hostname)


def test_the_variable_order_the_plan_shows_is_the_one_every_run_varying_it_gets(tmp_path):
    ctx, job = context(tmp_path), preview_job(tmp_path)
    plan = plan_variations(FACTORS, 8, ctx, job)
    shown = plan.variation("env-order").value.varied.removeprefix("variable order ")
    shown_names = [n for n in shown.split(", ") if n != "..."]
    assert len(shown_names) >= 3
    for names in (["env-order"], plan.names, ["umask", "hash-seed", "env-order"]):
        varied = plan.transform(names)(job).env["REPRUN_ENV_ORDER"].split()
        assert [n for n in varied if n in job.env][:len(shown_names)] == shown_names, names


# --- the search side by side: the same answer, in fewer rounds ---------------------------------

def side_by_side(clauses, width, factors=FACTORS):
    rounds, asked = [], []

    def run_batch(sets):
        rounds.append(list(sets))
        asked.extend(sets)
        return [any(clause <= varied for clause in clauses) for varied in sets]

    result, _ = search_side_by_side(factors, run_batch, lambda sets: len(sets) <= width)
    assert len(asked) == len(set(asked)), "every set is run at most once"
    return result, rounds


CASES = ([[{f}] for f in FACTORS] + [[set(p)] for p in combinations(FACTORS, 2)]
         + [[{a}, {b}] for a, b in combinations(FACTORS, 2)] + [[{"tz"}, {"user", "aslr"}]])


@pytest.mark.parametrize("width", [1, 2, 3])
def test_the_search_side_by_side_gives_the_sequential_answer_and_steps(width):
    for clauses in CASES:
        sequential = search(clauses)
        parallel, rounds = side_by_side(clauses, width)
        assert parallel == sequential, clauses
        assert all(len(r) <= width for r in rounds)
        if width == 1:
            assert len(rounds) == sequential.runs


def test_two_runs_at_a_time_take_fewer_rounds_than_one_at_a_time():
    factors = [f"f{i}" for i in range(14)]
    one = [len(side_by_side([{c}], 1, factors)[1]) for c in factors]
    two = [len(side_by_side([{c}], 2, factors)[1]) for c in factors]
    assert all(b <= a for a, b in zip(one, two)) and sum(two) < sum(one)


def test_a_run_with_nothing_varied_that_reproduces_stops_the_search():
    result, known = search_side_by_side(FACTORS, lambda sets: [True] * len(sets),
                                        lambda sets: len(sets) <= 2, first=[frozenset()])
    assert result.groups == () and known[frozenset()] is True and len(known) <= 2


def test_the_locale_factor_chooses_a_real_locale_the_image_has_and_a_replay_the_same(tmp_path):
    from orchestrator.variations.factors import image_locales, replay_transform, vary_locale
    listing = "C\nC.utf8\nPOSIX\net_EE.utf8\nfr_FR.utf8\n"
    assert image_locales(listing) == ("et_EE.UTF-8",)
    assert image_locales("C\nPOSIX\n") == ()
    job = preview_job(tmp_path)
    _, value = vary_locale(job, random.Random(1), ("et_EE.UTF-8",))
    assert value.varied == "LC_ALL=et_EE.UTF-8"
    _, fallback = vary_locale(job, random.Random(1))
    assert fallback.varied in ("LC_ALL=C", "LC_ALL=POSIX")
    varied = vary_job(job, ["locale"], 5, ("tr_TR.UTF-8",))
    recorded = json.loads(varied.labels[LABEL_VARIATIONS])
    assert recorded["locales"] == ["tr_TR.UTF-8"]
    replay, unknown = replay_transform(recorded)
    assert replay(job).env["LC_ALL"] == "tr_TR.UTF-8" and unknown == []
