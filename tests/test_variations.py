"""`reprun verify --vary`: hidden dependencies exposed by varying the second run, and the
culprit search that names them — the stories of the variations issue."""
from __future__ import annotations

import json
import shlex
from itertools import combinations
from pathlib import Path

import pytest

from conftest import WRITE_METRICS
from orchestrator.variations.culprit import plan_for, search_culprits
from orchestrator.errors import UsageError
from orchestrator.variations.factors import (FACTOR_NAMES, HostContext, parse_vary, plan_variations,
                                             vary_job)

pytestmark = pytest.mark.engine

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
    assert set(reasons) == {"cpus", "file-order", "time"}
    assert "1 CPU" in reasons["cpus"] and "single file" in reasons["file-order"]
    assert "libfaketime" in reasons["time"]
    assert set(plan.names) == set(FACTORS) - {"cpus", "file-order"}


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


# --- real runs --------------------------------------------------------------------------------

def vary(project, spec: Path, names: str = "all", *extra: str) -> tuple:
    report = project.root / "report.json"
    result = project.reprun("verify", str(spec), "--vary", names, "--report", str(report),
                            *extra, timeout=600)
    assert report.exists(), result.stderr
    return result, json.loads(report.read_text())


def culprits(report: dict) -> list[str]:
    return [c["summary"] for c in report["causes"] if c["summary"].startswith("result depends")]


CPU_SUM = """
import json, os, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
seed, threads = int(sys.argv[1]), int(os.environ["OMP_NUM_THREADS"])
x = np.random.default_rng(seed).random(200_000, dtype=np.float32)
# One running float32 sum per thread, then the partial sums: the split decides the rounding.
with ThreadPoolExecutor(threads) as pool:
    partial = list(pool.map(lambda part: np.cumsum(part, dtype=np.float32)[-1],
                            np.array_split(x, threads)))
total = np.float32(0)
for p in partial:
    total += p
json.dump({"total": float(total)}, open("/out/metrics.json", "w"))
"""


def test_a_parallel_float32_sum_depends_on_the_cpu_count_and_nothing_else(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=CPU_SUM))
    assert result.returncode == 1, result.stderr
    assert report["verdict"] == "differs"
    assert culprits(report) == [report["causes"][0]["summary"]]
    summary = report["causes"][0]["summary"]
    assert summary.startswith("result depends on the CPU count: total ")
    assert "at 1 CPU" in summary and "at 2 CPUs" in summary
    assert "variation seed" in result.stderr


HOSTNAME_SEED = """
import json, random, socket, sys
rng = random.Random(f"{sys.argv[1]}-{socket.gethostname()}")
json.dump({"loss": rng.random()}, open("/out/metrics.json", "w"))
"""


def test_a_seed_mixed_with_the_hostname_names_the_hostname(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=HOSTNAME_SEED))
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the hostname: loss ")
    assert "at hostname reprun" in culprit and "at hostname host-" in culprit


LOCAL_HOUR = """
import json, time
json.dump({"hour": time.localtime(1_700_000_000).tm_hour}, open("/out/metrics.json", "w"))
"""


def test_a_job_that_reads_local_time_names_the_time_zone(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=LOCAL_HOUR))
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the time zone: hour 22 at TZ=UTC, ")


SHARD_ORDER = """
import json, os
import numpy as np
names = os.listdir("/data")
order = [int(name.split("-")[1].split(".")[0]) + 1 for name in names]
total = np.float32(0)
for weight, name in enumerate(names, 1):
    total = total * np.float32(0.5) + np.float32(int(open(f"/data/{name}").read()) * weight)
json.dump({"order": int("".join(map(str, order))), "total": float(total)},
          open("/out/metrics.json", "w"))
"""


def test_the_listing_order_of_dataset_shards_changes_and_is_named(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=SHARD_ORDER))
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the dataset's listing order: ")
    # What the job saw: os.listdir in the varied run is the control's listing, reversed.
    metrics = {m["name"]: m for m in report["sections"]["metrics"]}
    control, varied = (str(int(metrics["order"][side])) for side in "ab")
    assert sorted(control) == list("123456") and varied == control[::-1]


# The whole iteration order, not just its first word: two hash seeds agree on the first of 32
# words one time in 32, but on the order of all of them practically never.
HASH_ORDER = """
import hashlib, json
words = {f"word{i}" for i in range(32)}
order = hashlib.sha256(",".join(words).encode()).hexdigest()
json.dump({"set_order": int(order[:8], 16)}, open("/out/metrics.json", "w"))
"""


def test_set_iteration_order_names_the_hash_seed(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=HASH_ORDER))
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the Python hash seed: set_order ")
    assert "at PYTHONHASHSEED=0" in culprit


def test_a_job_that_depends_on_nothing_is_identical_under_every_variation(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=WRITE_METRICS))
    assert result.returncode == 0, result.stderr
    assert report["verdict"] == "identical" and not culprits(report)
    factors = {row[0]: row for row in report["extra"]["variation_factors"]["rows"]}
    assert {name for name, row in factors.items() if row[2] == "varied"} == set(FACTORS)
    assert factors["time"][2] == "skipped" and "libfaketime" in factors["time"][5]
    steps = report["extra"]["variation_search"]["rows"]
    assert [step[2] for step in steps] == ["control", "varied"]


IGNORES_SEED = """
import json, os
json.dump({"score": int.from_bytes(os.urandom(4), "big")}, open("/out/metrics.json", "w"))
"""


def test_a_job_that_ignores_its_seed_is_nondeterministic_even_with_every_factor_fixed(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=IGNORES_SEED))
    assert result.returncode == 1, result.stderr
    first = report["causes"][0]
    assert first["kind"] == "nondeterminism"
    assert first["summary"].startswith("nondeterministic even with every factor fixed")
    assert not culprits(report)
    assert [s[2] for s in report["extra"]["variation_search"]["rows"]] == [
        "control", "varied", "fixed"]


TZ_AND_HOSTNAME = """
import json, os, socket
both = os.environ["TZ"] != "UTC" and socket.gethostname() != "reprun"
json.dump({"drift": 1.0 if both else 0.0}, open("/out/metrics.json", "w"))
"""


def test_two_factors_that_matter_only_together_are_both_named(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=TZ_AND_HOSTNAME))
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the hostname and the time zone together: "
                              "drift 0 at hostname reprun and TZ=UTC, 1 at hostname host-")
    runs = report["extra"]["variation_search"]["rows"]
    # Every run of the search is a run like any other, in the store.
    listed = json.loads(project.reprun("runs", "--json").stdout)
    assert {row[1] for row in runs} <= {run["id"] for run in listed}


def test_the_same_vary_seed_repeats_the_same_variations(project):
    project.dataset(files=SHARDS)
    spec = project.spec(script=WRITE_METRICS, filename="my job.yaml")
    _, first = vary(project, spec, "hostname,tz,user", "--vary-seed", "4242")
    _, again = vary(project, spec, "hostname,tz,user", "--vary-seed", "4242")
    assert first["extra"]["variation_factors"] == again["extra"]["variation_factors"]
    seed_row = dict(first["extra"]["variation"]["rows"])
    assert seed_row["seed"] == "4242" and "--vary-seed 4242" in seed_row["repeat with"]
    assert shlex.split(seed_row["repeat with"])[:3] == ["reprun", "verify", str(spec)]  # pastes


def test_every_factor_reaches_the_job(project):
    """One control and one varied run, through the library: each observed fact changes."""
    from orchestrator.execution.local import LocalEngine
    from orchestrator.events import RunObserver
    from orchestrator.runner import execute, prepare
    from orchestrator.spec.load import load_spec
    from orchestrator.store.db import Store
    project.dataset(files={**SHARDS, "nested/a.csv": b"a\n", "nested/b.csv": b"b\n"})
    observe = """
    import json, os, socket, time, zlib
    def code(text):
        return zlib.crc32(text.encode())
    os.makedirs("/tmp/x", exist_ok=True)
    json.dump({
        "threads": int(os.environ["OMP_NUM_THREADS"]),
        "hostname": code(socket.gethostname()),
        "utc_offset": time.localtime(0).tm_gmtoff,
        "locale": code(os.environ["LC_ALL"]),
        "umask": os.umask(0),
        "uid": os.getuid(),
        "gid": os.getgid(),
        "env_order": code(",".join(n for n in os.environ if n in (
            "TZ", "HOME", "REPRUN_SEED", "PYTHONHASHSEED", "OMP_NUM_THREADS", "REPRUN_PARAMS"))),
        "listing": code(",".join(os.listdir("/data"))),
        "nested_listing": code(",".join(os.listdir("/data/nested"))),
        "hash_order": code(",".join({f"w{i}" for i in range(16)})),
        "dataset_writable": int(os.access("/data", os.W_OK)),
    }, open("/out/metrics.json", "w"))
    """
    spec = load_spec(project.spec(script=observe))
    store, engine, observer = Store(project.store), LocalEngine(), RunObserver()
    prepared = prepare(spec, store=store, engine=engine, observer=observer)
    plan = plan_for(prepared, FACTOR_NAMES, seed=11)
    control = execute(prepared, store=store, engine=engine, observer=observer,
                      transform=plan.transform([]))
    varied = execute(prepared, store=store, engine=engine, observer=observer,
                     transform=plan.transform(plan.names))
    a, b = control.outputs.metrics, varied.outputs.metrics
    assert control.status == varied.status == "succeeded", (control.outputs, varied.outputs)
    same = {name for name in a if a[name] == b[name]}
    assert same == {"dataset_writable"}, same
    assert a["dataset_writable"] == 0
    assert varied.inputs.container["variations"]["seed"] == 11
    assert set(varied.inputs.container["variations"]["varied"]) == set(FACTORS)
    assert control.inputs.container["variations"] == {"seed": 11, "varied": {}}
