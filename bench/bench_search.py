"""The culprit search against reprotest, and what a diagnosis costs against a plain verify.

- search: `reprun verify --vary all` on a job whose result depends on the umask alone, side by
  side with reprotest 0.7.23 `--auto-build --variations=+all,-user_group` on the same script
  (reprotest runs it on the host, as its null virtual server does; reprun in the example image);
  each must name the umask. Also `verify --vary all --sequential`, and the runs each made.
- diagnosis: `reprun verify --diagnose` on a job that draws unseeded randomness against the
  plain `reprun verify` of the same job.
reprotest and what its variations need (disorderfs, fuse3, faketime) are installed from Debian
by scripts/test-deps.sh. reprotest's user_group variation is dropped: it needs two existing
users on the host to build as, which a benchmark has no business creating.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from turns import fastest_in_turns

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
REPRUN = [str(Path(sys.executable).with_name("reprun"))]
EXAMPLE = "reprun/sklearn:latest"
REPROTEST_PACKAGES = ("reprotest", "disorderfs", "fuse3", "faketime")
REPROTEST_VARIATIONS = "+all,-user_group"
TRIES = 2

# The one culprit: a file the job makes gets the umask's mode bits, and the metric is the mode.
UMASK_JOB = """\
import json, os, sys
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
open(os.path.join(out, "made"), "w").close()
json.dump({"mode": os.stat(os.path.join(out, "made")).st_mode & 0o777},
          open(os.path.join(out, "metrics.json"), "w"))
"""
UNSEEDED_JOB = """\
import json, random
json.dump({"loss": random.random()}, open("/out/metrics.json", "w"))
"""


def _install_reprotest() -> str | None:
    """Why reprotest cannot run here, or None."""
    subprocess.run(["bash", str(REPO / "scripts" / "test-deps.sh"), *REPROTEST_PACKAGES],
                   capture_output=True, text=True)
    missing = [tool for tool in ("reprotest", "disorderfs", "faketime") if not shutil.which(tool)]
    return f"not installed: {', '.join(missing)}" if missing else None


def _project(root: Path, command: list[str]) -> Path:
    import docker
    sys.path.insert(0, str(REPO))
    from orchestrator.dataset.tree import hash_dataset
    client = docker.from_env(version="auto")
    ref = next(d for d in client.images.get(EXAMPLE).attrs["RepoDigests"] if "@sha256:" in d)
    (root / ".git").mkdir(parents=True)
    (root / "data").mkdir()
    for i in range(4):                    # two entries or more: the listing order is varied too
        (root / "data" / f"shard-{i}.csv").write_text(f"{i}\n")
    spec = root / "job.yaml"
    spec.write_text(f"""version: 1
name: bench-search
image: {{ref: {ref}}}
dataset: {{path: data, sha256: {hash_dataset(root / 'data').sha256}, mount: /data}}
seed: 1
command: {json.dumps([arg.replace("{", "{{").replace("}", "}}") for arg in command])}
outputs: {{dir: /out, metrics: metrics.json}}
compare: {{metrics: {{default: exact}}}}
resources: {{cpus: 1, memory: 512m, timeout: 5m}}
""")
    return spec


def _reprun(root: Path, *args: str) -> dict:
    """`reprun ARGS --report` in a fresh store each time; the report it wrote."""
    store = root / f".reprun-{time.monotonic_ns()}"
    report = root / "report.json"
    env = {**os.environ, "REPRUN_STORE": str(store)}
    done = subprocess.run([*REPRUN, *args, "--report", str(report)], cwd=root, env=env,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"reprun {' '.join(args)} failed: {done.stderr[-2000:]}")
    result = json.loads(report.read_text())
    result["_runs"] = _store_runs(store)
    return result


def _store_runs(store: Path) -> int:
    import sqlite3
    with sqlite3.connect(store / "store.db") as db:
        return db.execute("SELECT count(*) FROM runs").fetchone()[0]


def _reprotest(root: Path) -> tuple[list[str], int]:
    """reprotest on the same script: the variations it blames and the builds it made."""
    source = root / "reprotest-src"
    source.mkdir(exist_ok=True)
    (source / "train.py").write_text(UMASK_JOB)
    done = subprocess.run(
        ["reprotest", "--verbosity", "1", "--auto-build", f"--variations={REPROTEST_VARIATIONS}",
         "--build-command", "python3 train.py out", str(source), "out/metrics.json"],
        cwd=root, capture_output=True, text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    said = done.stdout + done.stderr
    lines = said.splitlines()
    head = "Observed unreproducibility when varying each of the following:"
    blamed = []
    if head in lines:
        for line in lines[lines.index(head) + 1:]:
            if not line.strip() or line.startswith("The build"):
                break
            blamed.append(line.strip())
    builds = sum(line.startswith('INFO:reprotest:build "') for line in lines)
    return blamed, builds


def _culprits(report: dict) -> list[str]:
    return [c["summary"] for c in report["causes"] if c["summary"].startswith("result depends")]


def bench_search(scratch: Path) -> list[tuple]:
    root = scratch / "search"
    spec = _project(root, ["python3", "-c", UMASK_JOB, "/out"])
    why_not = _install_reprotest()
    runs: dict[str, int] = {}

    def vary_all(name: str, *args: str):
        def go() -> None:
            report = _reprun(root, "verify", str(spec), "--vary", "all", "--vary-seed", "3",
                             *args)
            assert [c.split(":")[0] for c in _culprits(report)] == [
                "result depends on the umask"], report["causes"][:2]
            runs[name] = report["_runs"]
        return go

    def reprotest() -> None:
        blamed, runs["reprotest"] = _reprotest(root)
        assert blamed == ["umask"], blamed

    contenders = {"parallel": vary_all("parallel"),
                  "sequential": vary_all("sequential", "--sequential")}
    if why_not is None:
        contenders["reprotest"] = reprotest
    best = fastest_in_turns(contenders, TRIES)
    factors = 15
    most = math.log2(factors) + 3
    rows = [
        ("`verify --vary all`, one culprit (umask) of 15 factors, side by side",
         best["parallel"], "the same, --sequential", best["sequential"],
         best["sequential"] / best["parallel"], None, None),
        (f"runs of `verify --vary all` side by side: {runs['parallel']} "
         f"(--sequential: {runs['sequential']})", None, "log2(15)+3 = 6.9", None, None,
         "≤ 6.9 runs", runs["parallel"] <= most),
    ]
    if why_not is None:
        rows.append((
            "`verify --vary all` against reprotest --auto-build --variations=+all,-user_group "
            f"({runs['reprotest']} builds)", best["parallel"], "reprotest 0.7.23",
            best["reprotest"], best["reprotest"] / best["parallel"], "≤ 0.35× reprotest",
            best["parallel"] <= 0.35 * best["reprotest"]))
    else:
        rows.append((f"reprotest side by side: left out ({why_not})", None, None, None, None,
                     None, None))
    return rows


def bench_diagnosis(scratch: Path) -> list[tuple]:
    root = scratch / "diagnosis"
    spec = _project(root, ["python3", "-c", UNSEEDED_JOB])
    runs: dict[str, int] = {}

    def verify(name: str, *args: str):
        def go() -> None:
            runs[name] = _reprun(root, "verify", str(spec), *args)["_runs"]
        return go

    best = fastest_in_turns({"plain": verify("plain"), "diagnose": verify("diagnose",
                                                                           "--diagnose")}, TRIES)
    return [(f"`verify --diagnose`, unseeded randomness ({runs['diagnose']} runs)",
             best["diagnose"], f"plain `verify` ({runs['plain']} runs)", best["plain"],
             best["plain"] / best["diagnose"], None, None)]


def run() -> list[tuple]:
    scratch = Path(tempfile.mkdtemp(prefix="reprun-bench-search-"))
    try:
        return bench_search(scratch) + bench_diagnosis(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
