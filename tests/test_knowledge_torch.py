"""The knowledge base's PyTorch entries that a CPU can show, each triggered by a real job in the
image that has torch (reprun/torch, Debian's PyTorch) and named by reprun: unseeded generators
and DataLoader workers by the diagnosis's entropy, the intra-op thread count by --vary cpus; and
which entries a factor points to (pure)."""
from __future__ import annotations

import json
import sqlite3

import pytest

from orchestrator.knowledge import cited, for_factor, known_cause

RESOURCES = "{cpus: 1, memory: 1g, timeout: 5m}"
ENTROPY = "the job draws unseeded randomness: with the entropy fixed, two runs were identical"


def torch_spec(project, torch_ref, script: str, resources: str = RESOURCES):
    project.dataset()
    return project.spec(script=script, image=torch_ref, resources=resources)


def report_of(project, *args: str) -> tuple:
    report = project.root / "r.json"
    done = project.reprun(*args, "--report", str(report), timeout=900)
    assert report.exists(), done.stdout + done.stderr
    return done, json.loads(report.read_text())


def recorded_environments(project) -> list[dict]:
    with sqlite3.connect(project.store / "store.db") as db:
        rows = db.execute("SELECT record FROM runs ORDER BY started_at").fetchall()
    return [json.loads(r[0])["environment"] for r in rows]


# The model's weights come from torch's default generator, which this torch seeds afresh in
# every process.
UNSEEDED_TORCH = """
import json, torch
w = torch.randn(4, 4)
json.dump({"norm": float(w.norm())}, open("/out/metrics.json", "w"))
"""

# The model is seeded with its own generator; the workers' seeds are not: each DataLoader
# iteration draws its base seed from the unseeded default generator, and the workers' random
# augmentation follows it.
DATALOADER_WORKERS = """
import json, sys, torch
from torch.utils.data import DataLoader, Dataset

class Jittered(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.tensor(float(i)) + torch.rand(())

model = torch.randn(1, generator=torch.Generator().manual_seed(int(sys.argv[1])))
loader = DataLoader(Jittered(), batch_size=4, num_workers=2)
total = sum(float((batch * model).sum()) for batch in loader)
json.dump({"total": total}, open("/out/metrics.json", "w"))
"""


# Each job with its entry's fix applied, as the entry words it.
SEEDED_TORCH = UNSEEDED_TORCH.replace(
    "w = torch.randn", "import sys\ntorch.manual_seed(int(sys.argv[1]))\nw = torch.randn")
SEEDED_WORKERS = DATALOADER_WORKERS.replace(
    "num_workers=2)", "num_workers=2, generator=torch.Generator().manual_seed(int(sys.argv[1])))")


@pytest.mark.engine
@pytest.mark.parametrize("script, fixed, entry", [
    (UNSEEDED_TORCH, SEEDED_TORCH, "torch-manual-seed"),
    (DATALOADER_WORKERS, SEEDED_WORKERS, "torch-dataloader-workers")])
def test_unseeded_torch_randomness_is_named_for_the_entropy_with_its_entry(project, torch_ref,
                                                                          script, fixed, entry):
    assert fixed != script
    done, report = report_of(project, "verify", str(torch_spec(project, torch_ref, script)),
                             "--diagnose")
    assert done.returncode == 1, done.stdout + done.stderr
    first = report["causes"][0]
    assert first["summary"] == ENTROPY, report["causes"][:2]
    assert any(d.startswith(f"known cause {entry}: ") for d in first["details"]), first
    assert "Traceback" not in done.stdout + done.stderr
    # The entry's fix is what removes it: the same job with the fix reruns identically.
    done, report = report_of(project, "verify", str(torch_spec(project, torch_ref, fixed)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["verdict"] == "identical", report["causes"][:2]


# One partial sum per intra-op thread torch has, then the partials: the split decides the
# float32 rounding, so the result follows torch's thread count, which follows the CPUs.
TORCH_THREAD_SUM = """
import json, sys
import numpy as np
import torch
x = torch.rand(400_000, generator=torch.Generator().manual_seed(int(sys.argv[1])))
# A running float32 sum per part (torch's own cumsum accumulates in double).
partials = [np.cumsum(part.numpy(), dtype=np.float32)[-1]
            for part in torch.chunk(x, torch.get_num_threads())]
total = np.float32(0)
for p in partials:
    total += p
json.dump({"total": float(total)}, open("/out/metrics.json", "w"))
"""


@pytest.mark.engine
def test_a_sum_split_by_torchs_thread_count_is_named_for_the_cpu_count(project, torch_ref):
    spec = torch_spec(project, torch_ref, TORCH_THREAD_SUM)
    done, report = report_of(project, "verify", str(spec), "--vary", "cpus")
    assert done.returncode == 1, done.stdout + done.stderr
    summary = report["causes"][0]["summary"]
    assert summary.startswith("result depends on the CPU count: total "), report["causes"][:2]
    assert "at 1 CPU" in summary and "at 2 CPUs" in summary
    # The entry the factor points to, cited with the fact that shows it live at 2 CPUs.
    entry = known_cause("torch-set-num-threads")
    assert ("known cause torch-set-num-threads (the manifest shows frameworks.torch.num_threads"
            " = 2): ") in " ".join(report["causes"][0]["details"]), report["causes"][0]
    threads = [env["frameworks"]["torch"]["num_threads"] for env in recorded_environments(project)]
    assert 1 in threads and 2 in threads, threads
    at_two = next(env for env in recorded_environments(project)
                  if env["frameworks"]["torch"]["num_threads"] == 2)
    assert "the manifest shows frameworks.torch.num_threads = 2" in cited(entry, at_two)


def test_a_factor_points_to_the_entries_of_the_jobs_libraries_the_live_ones_first():
    with_torch = {"torch": "1.13", "numpy": "1.24"}
    two_threads = {"frameworks": {"torch": {"num_threads": 2}}}
    ids = [c.id for c in for_factor("cpus", with_torch, two_threads)]
    assert ids.index("torch-set-num-threads") < ids.index("blas-threads"), ids
    assert "parallel-reduction-order" in ids and "xgboost-threads" not in ids
    one_thread = [c.id for c in for_factor("cpus", with_torch,
                                           {"frameworks": {"torch": {"num_threads": 1}}})]
    assert one_thread.index("torch-set-num-threads") > one_thread.index("blas-threads")
    assert "torch-set-num-threads" not in [c.id for c in for_factor("cpus", {"numpy": "1.24"})]
    assert [c.id for c in for_factor("hash-seed", with_torch)] == ["pythonhashseed"]
