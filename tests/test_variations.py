"""`reprun verify --vary`: hidden dependencies exposed by varying the second run, and the
culprit search that names them — the stories of the variations issue."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from conftest import WRITE_METRICS
from orchestrator.variations.culprit import plan_for
from orchestrator.variations.factors import FACTOR_NAMES

pytestmark = pytest.mark.engine     # the pure search and planning: tests/unit/test_culprit_search.py

FACTORS = list(FACTOR_NAMES)   # with libfaketime on the host (scripts/test-deps.sh), all of them
SHARDS = {f"shard-{i}.csv": f"{i}\n".encode() for i in range(6)}

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
    steps = report["extra"]["variation_search"]["rows"]
    assert [step[2] for step in steps] == ["control", "seed", "varied"]
    assert report["causes"][0]["summary"].startswith("the seed reaches the job: with seed ")


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
    roles = [s[2] for s in report["extra"]["variation_search"]["rows"]]
    assert roles[:4] == ["control", "seed", "varied", "fixed"]
    # The search's first step may have run beside the run with nothing varied; none after it.
    assert roles[4:] in ([], ["search"]), roles
    # A job that differs with nothing varied says nothing about its seed.
    assert any(c["summary"].startswith("whether the job uses its seed cannot be told")
               for c in report["causes"])


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


# --- the factors reprotest varies besides the first nine ----------------------------------------

NEW_FACTOR_JOBS = {
    # factor: (what the job writes, the label the culprit carries)
    "time": ('int(time.time() // 86400)', "the wall-clock time"),
    "aslr": ('int(open("/proc/self/personality").read(), 16)', "address-space randomization"),
    "workdir": ('zlib.crc32(os.getcwd().encode())', "the working folder"),
    "home": ('zlib.crc32(os.path.expanduser("~").encode())', "HOME"),
    "path": ('zlib.crc32(os.environ["PATH"].encode())', "PATH"),
    "umask": ('os.stat(open("/tmp/made", "w").name).st_mode & 0o777', "the umask"),
}


@pytest.mark.parametrize("name", sorted(NEW_FACTOR_JOBS))
def test_each_new_factor_is_named_exactly_when_the_job_depends_on_it(project, name):
    expression, label = NEW_FACTOR_JOBS[name]
    script = ("import json, os, time, zlib\n"
              f"json.dump({{'seen': {expression}}}, open('/out/metrics.json', 'w'))\n")
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=script), f"{name},hostname,tz,user")
    assert result.returncode == 1, result.stderr
    assert culprits(report) == [report["causes"][0]["summary"]], report["causes"]
    assert report["causes"][0]["summary"].startswith(f"result depends on {label}: seen "), \
        report["causes"][0]


def test_umask_values_all_change_the_mode_of_a_regular_file():
    from orchestrator.variations.factors import UMASKS
    default = 0o666 & ~0o022
    assert all(0o666 & ~int(mask, 8) != default for mask in UMASKS)
    assert all(0o666 & ~int(mask, 8) & 0o004 for mask in UMASKS)   # still readable by others


def test_a_job_that_ignores_its_seed_is_named_by_the_seed_factor(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(
        script=(Path(__file__).parent / "jobs" / "ignores_seed.py").read_text()), "seed")
    first = report["causes"][0]
    assert first["summary"].startswith("the job ignores its seed: with seed "), first
    assert "instead of seed 7 the results were identical" in first["summary"]
    assert any("known cause seed-not-wired" in d for d in first["details"])


def test_a_job_that_uses_its_seed_is_told_so_and_the_seed_is_never_blamed(project):
    project.dataset(files=SHARDS)
    script = ("import json, sys, socket\n"
              "json.dump({'seed': int(sys.argv[1]), 'host': len(socket.gethostname())},"
              " open('/out/metrics.json', 'w'))\n")
    result, report = vary(project, project.spec(script=script), "seed,hostname,tz")
    assert result.returncode == 1, result.stderr
    summaries = [c["summary"] for c in report["causes"]]
    assert culprits(report) == [summaries[0]] and summaries[0].startswith(
        "result depends on the hostname: ")
    assert any(s.startswith("the seed reaches the job: with seed ") for s in summaries)
    assert not any("depends on the seed" in s for s in summaries)


def test_a_rerun_of_a_varied_run_replays_every_recorded_variation(project):
    project.dataset(files=SHARDS)
    observe = ("import json, os, socket, time, zlib\n"
               "code = lambda text: zlib.crc32(text.encode())\n"
               "json.dump({'host': code(socket.gethostname()), 'tz': time.localtime(0).tm_gmtoff,"
               " 'locale': code(os.environ['LC_ALL']), 'umask': os.umask(0), 'uid': os.getuid(),"
               " 'hash': code(','.join({f'w{i}' for i in range(16)})), 'cwd': code(os.getcwd()),"
               " 'home': code(os.environ['HOME'])}, open('/out/metrics.json', 'w'))\n")
    spec = project.spec(script=observe)
    names = "hostname,tz,locale,umask,user,hash-seed,workdir,home"
    result, report = vary(project, spec, names, "--vary-seed", "5")
    assert result.returncode == 1, result.stderr      # every metric moved with its factor
    varied_run = report["extra"]["variation_search"]["rows"][1][1]
    rerun = project.reprun("rerun", varied_run, "--report", "rerun.json")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    again = json.loads((project.root / "rerun.json").read_text())
    assert again["verdict"] == "identical"
    assert not [row for row in again["sections"]["inputs"] if not row["same"]]


# --- real locales, and the CPU set ----------------------------------------------------------

LOCALE_IMAGE = "reprun/sklearn-locales:latest"

# Sorted by the locale's collation: C sorts by code point (dotless ı last), tr_TR puts ı before
# i, et_EE puts z between s and t. The order is the metric.
LOCALE_SORT = """
import json, locale, zlib
locale.setlocale(locale.LC_ALL, "")
words = sorted(["z", "t", "s", "i", "\\u0131", "h", "j"], key=locale.strxfrm)
json.dump({"order": zlib.crc32(" ".join(words).encode())}, open("/out/metrics.json", "w"))
"""


@pytest.fixture(scope="module")
def locale_image(docker_client) -> str:
    """The example image as images/sklearn builds it (with its real locales), pushed under a
    name of its own so that no other image of the example's name is touched."""
    from conftest import REGISTRY
    context = Path(__file__).parents[1] / "images" / "sklearn"
    image, _ = docker_client.images.build(path=str(context), tag=LOCALE_IMAGE,
                                          network_mode="host", rm=True)
    image.tag(f"{REGISTRY}/{LOCALE_IMAGE}")
    docker_client.images.push(f"{REGISTRY}/{LOCALE_IMAGE}")
    image.reload()
    return next(d for d in image.attrs["RepoDigests"] if d.startswith(f"{REGISTRY}/"))


def test_a_sort_that_depends_on_the_locale_names_the_locale_at_a_real_one(project, locale_image):
    from orchestrator.variations.factors import REAL_LOCALES
    project.dataset(files=SHARDS)
    spec = project.spec(script=LOCALE_SORT, image=locale_image)
    result, report = vary(project, spec, "locale,hostname,tz,umask,user")
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit.startswith("result depends on the locale: order "), culprit
    varied = culprit.rsplit(" at LC_ALL=", 1)[1]
    assert varied in REAL_LOCALES, culprit


def test_the_locale_factor_picks_among_the_locales_the_image_lists(docker_client, locale_image):
    from orchestrator.variations.culprit import locales_of_image

    class Engine:
        client = docker_client
    assert locales_of_image(Engine(), locale_image) == ("tr_TR.UTF-8", "et_EE.UTF-8")


CPU_SET = """
import json, os
json.dump({"cpus_seen": len(os.sched_getaffinity(0))}, open("/out/metrics.json", "w"))
"""


def test_the_cpus_factor_changes_the_cpu_set_the_job_sees_and_is_named(project):
    project.dataset(files=SHARDS)
    result, report = vary(project, project.spec(script=CPU_SET), "cpus,hostname,tz,umask")
    assert result.returncode == 1, result.stderr
    [culprit] = culprits(report)
    assert culprit == "result depends on the CPU count: cpus_seen 1 at 1 CPU, 2 at 2 CPUs"
