"""Artifacts compared by what they are: arrays, tensors, predictions and models, on the real
engine, with the job's own image for the files that are programs."""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from orchestrator.compare.artifacts.contents import ArtifactContents
from orchestrator.compare.artifacts.policy import parse_policies, parse_policy
from orchestrator.reports import validation_errors

# One job that writes every kind of artifact from two params: `delta` moves one weight (and
# one tensor element, and the data a scaler is fitted on) by exactly that much; `flips` turns
# the first N of 20 predictions wrong.
WRITE_ARTIFACTS = """
import json, os, pickle, struct
import numpy as np
from sklearn.preprocessing import StandardScaler
p = json.loads(os.environ["REPRUN_PARAMS"])
d, flips = float(p["delta"]), int(p["flips"])
w = np.arange(12, dtype=np.float64).reshape(3, 4)
w[1, 2] += d
np.savez("/out/weights.npz", w=w, bias=np.zeros(4))
t = np.arange(6, dtype="<f4")
t[5] += d
header = json.dumps({"t": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
                     "__metadata__": {"format": "pt"}}).encode()
open("/out/weights.safetensors", "wb").write(struct.pack("<Q", len(header)) + header + t.tobytes())
rows = ["id,prediction,label"] + [f"{i},{(i % 2) ^ (i < flips)},{i % 2}" for i in range(20)]
open("/out/predictions.csv", "w").write("\\n".join(rows) + "\\n")
pickle.dump(StandardScaler().fit(np.array([[0.0], [2.0 + d]])), open("/out/scaler.pkl", "wb"))
json.dump({"score": 1.0}, open("/out/metrics.json", "w"))
"""

POLICIES = ('{metrics: {default: exact}, artifacts: {"*.npz": {abs: 0.1}, '
            '"*.safetensors": {abs: 0.1}, "*.pkl": {abs: 0.1}, '
            '"predictions.csv": {predictions: {id: id, predicted: prediction, truth: label}}}}')


def artifacts_spec(project, script: str, patterns: list[str], compare: str, params: dict,
                   name: str = "artifacts") -> Path:
    spec = project.spec(name=name, script=script, compare=compare,
                        extra=f"params: {json.dumps(params)}\n")
    spec.write_text(spec.read_text().replace('artifacts: ["*.bin"]',
                                             f"artifacts: {json.dumps(patterns)}"))
    return spec


def run(project, spec: Path) -> str:
    done = project.reprun("run", str(spec), "-q")
    assert done.returncode == 0, done.stderr
    runs = json.loads(project.reprun("runs", "--json").stdout)
    return max(runs, key=lambda r: r["started_at"])["id"]


def diff(project, a: str, b: str, *formats: str):
    reports = [project.root / f"report.{fmt}" for fmt in formats]
    done = project.reprun("diff", a, b, *(arg for r in reports for arg in ("--report", str(r))))
    return done, {fmt: r.read_text() for fmt, r in zip(formats, reports)}


def artifact(report: dict, name: str) -> dict:
    return next(row for row in report["sections"]["artifacts"] if row["name"] == name)


def part(row: dict, name: str) -> dict:
    return next(p for p in row["parts"] if p["name"] == name)


@pytest.mark.engine
def test_arrays_tensors_predictions_and_a_pickled_model_are_compared_by_content(project):
    project.dataset()
    patterns = ["*.npz", "*.safetensors", "*.csv", "*.pkl"]
    base = run(project, artifacts_spec(project, WRITE_ARTIFACTS, patterns, POLICIES,
                                       {"delta": 0, "flips": 0}))
    near = run(project, artifacts_spec(project, WRITE_ARTIFACTS, patterns, POLICIES,
                                       {"delta": 0.05, "flips": 0}))
    far = run(project, artifacts_spec(project, WRITE_ARTIFACTS, patterns, POLICIES,
                                      {"delta": 0.5, "flips": 3}))

    # Within every tolerance: the bytes differ, the verdict is equivalent (exit 0).
    done, reports = diff(project, base, near, "json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(reports["json"])
    assert report["verdict"] == "equivalent"
    assert {artifact(report, n)["status"] for n in ("weights.npz", "weights.safetensors",
                                                     "scaler.pkl")} == {"equivalent"}
    assert part(artifact(report, "weights.npz"), "w")["status"] == "within"
    assert artifact(report, "predictions.csv")["status"] == "identical"

    # Beyond them: differs (exit 1), with the known figures reported exactly.
    done, reports = diff(project, base, far, "json", "md", "html")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(reports["json"])
    assert validation_errors(report) == []
    assert report["verdict"] == "differs"

    npz = artifact(report, "weights.npz")
    assert (npz["kind"], npz["status"]) == ("numpy", "differs")
    w = part(npz, "w")
    assert (w["max_abs"], w["differing"], w["elements"], w["shape_a"], w["status"]) == (
        0.5, 1, 12, "3x4", "beyond")
    assert w["max_rel"] == pytest.approx(0.5 / 6.5)
    assert part(npz, "bias")["status"] == "identical"

    tensors = artifact(report, "weights.safetensors")
    t = part(tensors, "t")
    assert (tensors["kind"], t["max_abs"], t["differing"], t["elements"], t["shape_a"],
            t["dtype_a"]) == ("safetensors", 0.5, 1, 6, "2x3", "<f4")

    churn = artifact(report, "predictions.csv")
    assert churn["kind"] == "predictions"
    assert (churn["figures"]["churn"], churn["figures"]["churn_share"],
            churn["figures"]["examples"]) == (3, 0.15, 20)
    by_class = {c["class"]: c for c in churn["figures"]["classes"]}
    assert (by_class["0"]["accuracy_a"], by_class["0"]["accuracy_b"]) == (1.0, 0.8)
    assert by_class["1"]["delta"] == pytest.approx(-0.1)

    scaler = artifact(report, "scaler.pkl")
    assert scaler["kind"] == "pickle" and "inside the job's image" in scaler["detail"]
    assert part(scaler, "mean_")["max_abs"] == 0.25
    assert part(scaler, "n_samples_seen_")["status"] == "identical"

    # The default terminal verdict says what each artifact's contents say; -v shows it all.
    concise = done.stdout
    assert "prediction churn 15.00%" in concise and "0.5 in w (1 of 12" in concise
    verbose = project.reprun("diff", base, far, "-v").stdout
    for text in (reports["md"], reports["html"], verbose):
        assert "prediction churn 15.00%" in text
        assert "0.5 in w (1 of 12 elements differ)" in text
        assert "0.5 in t (1 of 6 elements differ)" in text
        assert "compared inside the job's image" in text.replace("&#x27;", "'")


EVIL_PICKLE = """
import json, os, pickle
p = json.loads(os.environ["REPRUN_PARAMS"])
class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {p['marker']}",))
open("/out/model.pkl", "wb").write(pickle.dumps([Evil(), p["n"]]))
open("/out/model.pt", "wb").write(bytes([p["n"]]) * 64)
json.dump({"score": 1.0}, open("/out/metrics.json", "w"))
"""


@pytest.mark.engine
def test_a_malicious_pickle_is_never_loaded_on_the_host(project):
    project.dataset()
    marker = project.root / "the-host-ran-the-pickle"
    compare = '{metrics: {default: exact}, artifacts: {"*": {abs: 0.0}}}'
    runs = [run(project, artifacts_spec(project, EVIL_PICKLE, ["*.pkl", "*.pt"], compare,
                                        {"marker": str(marker), "n": n})) for n in (1, 2)]
    done, reports = diff(project, *runs, "json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert not marker.exists()
    report = json.loads(reports["json"])
    model = artifact(report, "model.pkl")
    # Loaded inside the job's image, where the command it carries ran against a read-only
    # root without the host's folders: the list it unpickles to is what was compared.
    assert (model["kind"], model["status"], model["fallback"]) == ("pickle", "differs", None)
    assert "compared inside the job's image" in model["detail"]
    assert (part(model, "(value)")["max_abs"], part(model, "(value)")["differing"]) == (1.0, 1)
    torch = artifact(report, "model.pt")
    assert "has no torch" in torch["fallback"], torch
    assert "Traceback" not in done.stdout + done.stderr

    # With no engine to load it in, the pickle is compared bitwise and is still not loaded.
    from orchestrator.store.db import Store
    store = Store(project.store)
    contents = ArtifactContents(lambda run_id: store.run_dir(run_id) / "out")
    found = contents.compare("model.pkl", store.get(runs[0]), store.get(runs[1]),
                             parse_policy({"abs": 0.0}))
    assert "loaded only inside the job's image" in found.fallback
    assert not marker.exists()


# --- hostile files, read on the host --------------------------------------------------------

def _two_runs(tmp_path: Path, name: str, a: bytes, b: bytes):
    """Two run folders holding `name`, and records that name them."""
    from test_compare import make_record
    folders = {}
    for run_id, content in (("run-a", a), ("run-b", b)):
        folders[run_id] = tmp_path / run_id
        folders[run_id].mkdir()
        (folders[run_id] / name).write_bytes(content)
    return ArtifactContents(folders.__getitem__), make_record("run-a"), make_record("run-b")


def _safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_safetensors_offsets_outside_the_file_are_refused_with_the_reason(tmp_path):
    good = _safetensors({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8)
    forged = _safetensors({"t": {"dtype": "F32", "shape": [2 ** 40],
                                 "data_offsets": [0, 2 ** 42]}}, b"\1" * 8)
    contents, a, b = _two_runs(tmp_path, "w.safetensors", good, forged)
    found = contents.compare("w.safetensors", a, b, parse_policy({"abs": 1.0}))
    assert found.status == "differs"
    assert "data offsets [0, 4398046511104] outside the file's 8 data bytes" in found.fallback
    (tmp_path / "huge").mkdir()
    contents, a, b = _two_runs(tmp_path / "huge", "w.safetensors", good,
                               struct.pack("<Q", 2 ** 63) + b"{}")
    found = contents.compare("w.safetensors", a, b, parse_policy({"abs": 1.0}))
    assert "declares a header of" in found.fallback


def test_an_object_array_in_an_npz_is_named_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    def npz(values: dict) -> bytes:
        target = tmp_path / "x.npz"
        np.savez(target, **values)
        return target.read_bytes()

    a = npz({"w": np.zeros(3), "o": np.array([1], dtype=object)})
    b = npz({"w": np.ones(3), "o": np.array([Evil()], dtype=object)})
    contents, ra, rb = _two_runs(tmp_path, "weights.npz", a, b)
    found = contents.compare("weights.npz", ra, rb, parse_policy({"abs": 2.0}))
    assert not marker.exists()
    statuses = {p.name: p.status for p in found.parts}
    assert statuses == {"o": "unreadable", "w": "within"}
    assert found.status == "differs"      # what cannot be read is not called equivalent


def test_an_npz_whose_array_is_shorter_than_its_header_falls_back_with_the_reason(tmp_path):
    good = tmp_path / "good.npz"
    np.savez(good, w=np.zeros(1000))
    data = good.read_bytes()
    truncated = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(truncated, "w") as target:
        target.writestr("w.npy", source.read("w.npy")[:500])
    contents, a, b = _two_runs(tmp_path, "weights.npz", data, truncated.read_bytes())
    found = contents.compare("weights.npz", a, b, parse_policy({"abs": 1.0}))
    assert found.status == "differs" and "more than its" in found.fallback


def test_predictions_that_name_an_example_twice_are_compared_bitwise(tmp_path):
    contents, a, b = _two_runs(tmp_path, "predictions.csv", b"id,prediction\n1,a\n2,b\n",
                               b"id,prediction\n1,a\n1,b\n")
    found = contents.compare("predictions.csv", a, b, parse_policy("predictions"))
    assert found.kind == "predictions" and "'1' more than once" in found.fallback


def test_regression_predictions_report_the_largest_value_differences(tmp_path):
    a = "id,prediction\n" + "".join(f"{i},{i / 10}\n" for i in range(10))
    b = "id,prediction\n" + "".join(f"{i},{i / 10 + (0.5 if i == 7 else 0)}\n"
                                    for i in reversed(range(10)))
    contents, ra, rb = _two_runs(tmp_path, "p.csv", a.encode(), b.encode())
    found = contents.compare("p.csv", ra, rb, parse_policy(
        {"predictions": {"abs": 0.1}}))
    assert found.figures["churn"] == 1 and found.figures["largest"][0]["id"] == "7"
    assert found.figures["max_abs"] == pytest.approx(0.5)
    assert found.status == "differs"


def test_a_pickle_policy_of_bitwise_is_never_sent_to_an_image(tmp_path):
    contents, a, b = _two_runs(tmp_path, "model.pkl", pickle.dumps(1), pickle.dumps(2))
    found = contents.compare("model.pkl", a, b, parse_policy("bitwise"))
    assert found.status == "differs" and "policy is bitwise" in found.fallback


def test_patterns_pick_the_first_policy_that_matches_and_the_rest_are_bitwise():
    policies = parse_policies({"*.pdf": "ignore", "model.pt": "bitwise",
                               "weights.npz": {"abs": 1e-6}, "predictions.csv": "predictions",
                               "*.npz": {"rel": 0.5}})
    assert policies.for_artifact("report/summary.pdf").how == "ignore"
    assert policies.for_artifact("weights.npz").abs == 1e-6
    assert policies.for_artifact("sub/other.npz").rel == 0.5
    assert policies.for_artifact("predictions.csv").columns.id == "id"
    assert policies.for_artifact("notes.txt").how == "bitwise"
    assert parse_policies("ignore").for_artifact("x").how == "ignore"


def test_a_spec_with_a_policy_that_is_no_policy_is_refused_at_its_line(project):
    project.dataset()
    spec = project.spec(compare='{artifacts: {"*.npz": {abs: -1}, "p.csv": '
                                '{predictions: {idd: x}}}}')
    done = project.reprun("validate", str(spec))
    said = done.stdout + done.stderr
    assert done.returncode == 2
    assert "compare.artifacts.*.npz abs must be a number of at least 0, not -1" in said
    assert "predictions has no key 'idd'" in said
    assert "Traceback" not in done.stdout + done.stderr


# --- PyTorch, inside an image that has it -----------------------------------------------------


WRITE_STATE_DICT = """
import json, os, torch
d = float(json.loads(os.environ["REPRUN_PARAMS"])["delta"])
w = torch.arange(8, dtype=torch.float32).reshape(2, 4)
w[1, 3] += d
torch.save({"layer.weight": w, "layer.bias": torch.zeros(4)}, "/out/model.pt")
json.dump({"score": 1.0}, open("/out/metrics.json", "w"))
"""


@pytest.mark.engine
def test_a_state_dict_is_compared_inside_the_image_that_has_torch(project, torch_ref):
    project.dataset()
    compare = '{metrics: {default: exact}, artifacts: {"model.pt": {abs: 0.1}}}'

    def spec(delta: float) -> Path:
        path = artifacts_spec(project, WRITE_STATE_DICT, ["*.pt"], compare, {"delta": delta})
        path.write_text(path.read_text().replace(project.image_ref, torch_ref))
        return path

    base, near, far = (run(project, spec(d)) for d in (0, 0.05, 0.5))
    done, reports = diff(project, base, near, "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert artifact(json.loads(reports["json"]), "model.pt")["status"] == "equivalent"

    done, reports = diff(project, base, far, "json")
    assert done.returncode == 1, done.stdout + done.stderr
    model = artifact(json.loads(reports["json"]), "model.pt")
    assert (model["kind"], model["fallback"]) == ("torch", None)
    assert "inside the job's image" in model["detail"]
    weight = part(model, "layer.weight")
    assert (weight["max_abs"], weight["differing"], weight["elements"], weight["shape_a"]) == (
        0.5, 1, 8, "2x4")
    assert part(model, "layer.bias")["status"] == "identical"


# --- readable differences --------------------------------------------------------------------

def test_json_yaml_and_text_say_where_they_first_differ_within_a_bounded_excerpt(tmp_path):
    a = {"loss": 0.25, "layers": [{"units": 64}, {"units": 32}], "name": "m"}
    b = {"loss": 0.2500001, "layers": [{"units": 64}, {"units": 16}], "name": "m"}
    contents, ra, rb = _two_runs(tmp_path, "summary.json", json.dumps(a).encode(),
                                 json.dumps(b).encode())
    found = contents.compare("summary.json", ra, rb, parse_policy({"abs": 1e-3}))
    assert (found.kind, found.status) == ("json", "differs")
    assert found.excerpt == ("$.loss: 0.25 vs 0.2500001 (within tolerance)",
                             "$.layers[1].units: 32 vs 16")

    (tmp_path / "y").mkdir()
    contents, ra, rb = _two_runs(tmp_path / "y", "config.yaml", b"lr: 0.1\nsteps: 10\n",
                                 b"lr: 0.1\nsteps: 10\n# rewritten\n")
    found = contents.compare("config.yaml", ra, rb, parse_policy({"abs": 0.0}))
    assert (found.kind, found.status) == ("yaml", "identical")

    (tmp_path / "t").mkdir()
    long_a = "".join(f"line {i}\n" for i in range(1000))
    long_b = long_a.replace("line 500\n", "line five hundred\n").replace("line 9", "LINE 9")
    contents, ra, rb = _two_runs(tmp_path / "t", "train.log", long_a.encode(), long_b.encode())
    found = contents.compare("train.log", ra, rb, parse_policy("bitwise"))
    assert found.detail.startswith("first differ at line 10 of 1,000")
    assert "-line 9" in found.excerpt and "+LINE 9" in found.excerpt
    assert found.detail.endswith("; 112 lines differ by position")   # 9, 90-99, 500, 900-999
    assert len(found.excerpt) <= 13


def test_anything_else_is_bitwise_with_diffoscope_text_when_it_is_installed(tmp_path):
    import shutil
    if shutil.which("diffoscope") is None:
        pytest.fail("diffoscope is missing; `make test-deps` installs it")
    contents, ra, rb = _two_runs(tmp_path, "model.bin", b"\x00" * 64 + b"A" + b"\x00" * 64,
                                 b"\x00" * 64 + b"B" + b"\x00" * 64)
    found = contents.compare("model.bin", ra, rb, parse_policy({"abs": 1.0}))
    assert (found.kind, found.status) == ("bytes", "differs")
    assert found.fallback == "no comparator reads this kind of file"
    assert any("41" in line for line in found.excerpt)
    assert any("42" in line for line in found.excerpt)


class _ScriptedEngine:
    """Answers as a comparator in an image would; what it says is the test's."""

    def __init__(self, stdout: bytes):
        self.stdout = stdout
        self.jobs = []

    def run(self, job, on_output, on_event=None):
        from orchestrator.execution.job import ContainerOutcome
        self.jobs.append(job)
        on_output(self.stdout, "stdout")
        return ContainerOutcome(exit_code=0, reason="ok", duration_s=0.1)


@pytest.mark.parametrize("answer, reason", [
    (b"no answer at all\n", "gave no answer"),
    (b"REPRUN-ANSWER [1, 2]\n", "could not be read"),
    (b'REPRUN-ANSWER {"parts": {"w": {"shape_a": "3", "shape_b": [3], "dtype_a": "<f8", '
     b'"dtype_b": "<f8", "elements": 3, "differing": 1, "beyond": 0, "max_abs": 1.0, '
     b'"max_rel": 1.0}}}\n', "figures for 'w' could not be read"),
    (b'REPRUN-ANSWER {"parts": {"w": {"shape_a": [3], "shape_b": [3], "dtype_a": "<f8", '
     b'"dtype_b": "<f8", "elements": 3, "differing": -1, "beyond": 0, "max_abs": 1.0, '
     b'"max_rel": 1.0}}}\n', "figures for 'w' could not be read"),
    (b'REPRUN-ANSWER {"unavailable": "xgboost"}\n', "has no xgboost"),
])
def test_a_forged_answer_from_the_image_is_compared_bitwise_with_the_reason(tmp_path, answer,
                                                                            reason):
    from orchestrator.compare.artifacts.in_image import InImageComparator
    engine = _ScriptedEngine(answer)
    contents, ra, rb = _two_runs(tmp_path, "model.ubj", b"a", b"b")
    contents.in_image = InImageComparator(lambda: engine)
    found = contents.compare("model.ubj", ra, rb, parse_policy({"abs": 1.0}))
    assert found.status == "differs" and reason in found.fallback, found.fallback
    [job] = engine.jobs
    assert (job.network, job.read_only_root, job.cap_drop) == ("none", True, ("ALL",))
    assert all(m.read_only for m in job.mounts)


def test_values_that_differ_are_not_blamed_on_serialisation(tmp_path):
    from test_compare import make_record, replaced
    from orchestrator.compare.comparison import compare_records
    from orchestrator.outputs import sha256_file
    from orchestrator.records import Artifact
    records = []
    for run_id, delta in (("run-a", 0.0), ("run-b", 0.5)):
        (tmp_path / run_id).mkdir()
        w = np.arange(12.0).reshape(3, 4)
        w[1, 2] += delta
        np.savez(tmp_path / run_id / "weights.npz", w=w)
        (tmp_path / run_id / "model.bin").write_bytes(bytes([int(delta * 10)]) * 8)
        records.append(replaced(make_record(run_id), outputs__artifacts={
            name: Artifact(*sha256_file(tmp_path / run_id / name))
            for name in ("weights.npz", "model.bin")}))
    comparison = compare_records(*records, tolerances={"artifacts": {"*.npz": {"abs": 0.1}}},
                                 contents=ArtifactContents(lambda run_id: tmp_path / run_id))
    causes = {c.summary: c.details for c in comparison.causes}
    assert causes["artifacts hold different values while metrics match"] == (
        "artifact weights.npz: 1 of 1 arrays differ; largest |Δ| 0.5 in w "
        "(1 of 12 elements differ)",)
    assert causes["artifacts differ while metrics match: artifact serialisation embeds time "
                  "or randomness"] == ("artifact model.bin differs",)
