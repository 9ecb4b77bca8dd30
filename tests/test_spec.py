"""The run spec: what a user writes, what reprun accepts, and what it says when it refuses."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import ExitCode, SpecError
from orchestrator.spec.load import load_spec, validate_specs
from orchestrator.spec.model import (ALL_GPUS, DEFAULT_SHM_BYTES, CompareSpec, GpuRequest, Hermetic,
                                     ImageBuild, Resources, Tolerance)
from orchestrator.spec.units import MAX_INT, parse_duration, parse_size
from orchestrator.spec.v1_keys import SCHEMA_FILE

DIGEST = "sha256:" + "ab" * 32
REF = f"127.0.0.1:5000/reprun/sklearn@{DIGEST}"
DATA_SHA = "cd" * 32
DROP = object()   # in a change table: remove this key


def base_doc() -> dict:
    return {
        "version": 1,
        "name": "digits-logreg",
        "image": {"ref": REF},
        "dataset": {"path": "data.csv", "sha256": DATA_SHA},
        "seed": 42,
        "command": ["python3", "/app/train.py", "--seed", "{seed}"],
    }


def changed(changes: dict) -> dict:
    """The base document with dotted keys set (or dropped with DROP)."""
    doc = copy.deepcopy(base_doc())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        target = doc
        for key in parents:
            target = target.setdefault(key, {})
        if value is DROP:
            target.pop(last, None)
        else:
            target[last] = value
    return doc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with a small dataset and a build context, as a spec's neighbours."""
    (tmp_path / "data.csv").write_text("x,y\n1,2\n")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\n")
    return tmp_path


def write(folder: Path, content: str | bytes | dict | list, name: str = "spec.yaml") -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")
    return path


def problems(path: Path, **kwargs) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(path, **kwargs)
    assert caught.value.exit_code == ExitCode.INVALID
    return caught.value.details


def only_problem(path: Path, **kwargs) -> str:
    found = problems(path, **kwargs)
    assert len(found) == 1, found
    return found[0]


# --- a good spec -----------------------------------------------------------------------------

def test_a_minimal_pinned_spec_loads_with_strict_defaults(project):
    path = write(project, base_doc())
    spec = load_spec(path)

    assert spec.name == "digits-logreg" and spec.version == 1 and spec.description == ""
    assert spec.image.ref == REF and spec.image.build is None and spec.image.digest is None
    assert spec.dataset.path == project / "data.csv" and spec.dataset.mount == "/data"
    assert spec.dataset.sha256 == DATA_SHA
    assert spec.command == ("python3", "/app/train.py", "--seed", "{seed}")
    assert spec.params == {} and spec.env == {}
    assert spec.hermetic == Hermetic(network="none", read_only_root=True, user="65534:65534",
                                     tmp_size="256m")
    assert spec.resources == Resources(cpus=1.0, memory_bytes=2 << 30, timeout_s=1800.0, pids=512)
    assert isinstance(load_spec(write(project, changed({"resources.cpus": 2}))).resources.cpus,
                      float), "records never differ between cpus 2 and 2.0"
    assert spec.compare.metrics == {"default": Tolerance("exact")}
    assert spec.compare.artifacts == "bitwise"
    assert spec.source == path and spec.source.is_absolute()
    assert re.fullmatch(r"[0-9a-f]{64}", spec.source_sha256)


def test_gpus_are_read_as_a_count_every_gpu_or_named_devices(project):
    def gpus(value):
        return load_spec(write(project, changed({"resources.gpus": value}))).resources.gpus

    assert load_spec(write(project, base_doc())).resources.gpus is None, "no GPU unless asked"
    assert gpus(2) == GpuRequest(count=2)
    assert gpus("all") == GpuRequest(count=ALL_GPUS)
    assert gpus([0, "GPU-8f2b"]) == GpuRequest(device_ids=("0", "GPU-8f2b"))


def test_a_gpu_key_is_not_mistaken_for_cpus(project):
    message = only_problem(write(project, changed({"resources.gpus": 0})))
    assert "resources.gpus is 0, but must be at least 1" in message
    assert "cpus" not in message
    message = only_problem(write(project, changed({"resources.gpus": "one"})))
    assert "not a number of GPUs" in message and "did you mean" not in message.lower()


def test_shared_memory_defaults_to_more_than_dockers_64_megabytes(project):
    assert load_spec(write(project, base_doc())).resources.shm_bytes == DEFAULT_SHM_BYTES > 64 << 20
    spec = load_spec(write(project, changed({"resources.shm": "8g"})))
    assert spec.resources.shm_bytes == 8 << 30


def test_a_working_folder_is_kept_normalised_and_defaults_to_the_images_own(project):
    assert load_spec(write(project, base_doc())).workdir is None
    assert load_spec(write(project, changed({"workdir": "/out/run/"}))).workdir == "/out/run"


def test_a_spec_without_a_dataset_loads_with_none(project):
    spec = load_spec(write(project, changed({"dataset": DROP})))
    assert spec.dataset is None


def test_a_folder_dataset_without_its_pin_is_told_the_tree_hash_command(project):
    (project / "tree").mkdir()
    (project / "tree" / "a.txt").write_text("a")
    message = only_problem(write(project, changed({"dataset": {"path": "tree"}})))
    assert "LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum" in message
    assert f"cd {project / 'tree'}" in message
    message = only_problem(write(project, changed({"dataset.sha256": DROP})))
    assert f"`sha256sum {project / 'data.csv'}`" in message


def test_the_spec_hash_changes_when_one_byte_of_the_file_changes(project):
    first = load_spec(write(project, base_doc())).source_sha256
    second = load_spec(write(project, changed({"seed": 43}))).source_sha256
    assert first != second


def test_a_full_spec_reads_every_section(project):
    path = write(project, f"""
version: 1
name: digits-logreg
description: Logistic regression on the digits
image:
  build: {{context: ctx, args: {{PY_VERSION: "3.11"}}}}
  digest: {DIGEST}
dataset: {{path: data.csv, sha256: "sha256:{DATA_SHA}", mount: /input/}}
seed: 7
command: [python3, train.py, --C, "{{params.C}}", --epochs, 3, --rate, 0.5]
params: {{C: 1.0, solver: lbfgs, verbose: true, max_iter: 100}}
env: {{OMP_PROC_BIND: "true"}}
outputs: {{dir: /results, metrics: m/metrics.json, artifacts: ["*.pkl", "plots/*.png"]}}
compare:
  metrics: {{default: ignore, accuracy: {{abs: 1.0e-9}}, loss: {{rel: 0.01}}, fit_seconds: ignore}}
  artifacts: ignore
resources: {{cpus: 0.5, memory: 512m, timeout: 1.5h, pids: 64}}
hermetic: {{network: host, read_only_root: false, user: "0:0", tmp_size: 1g}}
""")
    spec = load_spec(path)

    assert spec.image.build == ImageBuild(context=project / "ctx", dockerfile="Dockerfile",
                                          args={"PY_VERSION": "3.11"})
    assert spec.image.digest == DIGEST and spec.image.ref is None
    assert spec.dataset.sha256 == DATA_SHA, "a sha256: prefix is normalised away"
    assert spec.dataset.mount == "/input"
    assert spec.command[-4:] == ("--epochs", "3", "--rate", "0.5"), "numbers become strings"
    assert spec.params == {"C": 1.0, "solver": "lbfgs", "verbose": True, "max_iter": 100}
    assert spec.outputs.artifacts == ("*.pkl", "plots/*.png") and spec.outputs.dir == "/results"
    assert spec.compare.tolerance_for("accuracy") == Tolerance("abs", 1e-9)
    assert spec.compare.tolerance_for("loss") == Tolerance("rel", 0.01)
    assert spec.compare.tolerance_for("anything-else") == Tolerance("ignore")
    assert spec.compare.artifacts == "ignore"
    assert spec.resources == Resources(cpus=0.5, memory_bytes=512 << 20, timeout_s=5400.0, pids=64)
    assert spec.hermetic == Hermetic(network="host", read_only_root=False, user="0:0",
                                     tmp_size="1g")


def test_the_command_is_rendered_with_the_seed_and_params_and_literal_braces(project):
    doc = changed({"command": ["run", "--seed={seed}", "{params.C}", "{params.on}", "{{seed}}", 5],
                   "params": {"C": 0.5, "on": False}})
    spec = load_spec(write(project, doc))

    assert spec.render_command() == ["run", "--seed=42", "0.5", "false", "{seed}", "5"]
    assert spec.render_command(seed=7)[1] == "--seed=7", "a rerun can hand another seed"
    assert spec.command[1] == "--seed={seed}", "the raw command keeps its placeholders"


def test_metrics_without_their_own_tolerance_fall_back_to_the_default():
    compare = CompareSpec(metrics={"default": Tolerance("exact"), "f1": Tolerance("abs", 0.1)})
    assert compare.tolerance_for("f1") == Tolerance("abs", 0.1)
    assert compare.tolerance_for("accuracy") == Tolerance("exact")


# --- refused, with a sentence that says how to fix it -----------------------------------------

def test_an_image_tag_without_a_digest_is_rejected_and_the_message_says_how_to_pin_it(project):
    path = write(project, "version: 1\nname: demo\nimage:\n  ref: reprun/sklearn:1.0\n"
                          f"dataset: {{path: data.csv, sha256: {DATA_SHA}}}\nseed: 1\n"
                          "command: [train]\n")
    message = only_problem(path)

    assert message.startswith(f"{path}:4:8: image.ref 'reprun/sklearn:1.0' has a tag but no digest")
    assert "reprun lock" in message and "@sha256:" in message


@pytest.mark.parametrize("digest", ["sha256:" + "AB" * 32, "sha256:abc", "md5:" + "ab" * 32])
def test_a_malformed_digest_is_rejected(project, digest):
    assert "digest" in only_problem(write(project, changed({"image.ref": f"reprun/x@{digest}"})))
    message = only_problem(write(project, changed({"image": {"build": {"context": "ctx"},
                                                               "digest": digest}})))
    assert "image.digest" in message and "64 lowercase hex" in message


def test_an_image_needs_exactly_one_of_ref_or_build(project):
    both = only_problem(write(project, changed({"image.build": {"context": "ctx"}})))
    neither = only_problem(write(project, changed({"image": {}})))
    ref_and_digest = only_problem(write(project, changed({"image.digest": DIGEST})))

    assert "has both `ref` and `build`" in both
    assert "needs `ref`" in neither and "`build`" in neither
    assert "has `digest` next to `ref`" in ref_and_digest


def test_a_build_without_its_dockerfile_is_rejected(project):
    message = only_problem(write(project, changed(
        {"image": {"build": {"context": "ctx", "dockerfile": "gpu.Dockerfile"}}})))
    assert "image.build has no Dockerfile gpu.Dockerfile" in message


def test_an_unknown_key_is_rejected_with_the_closest_known_key_suggested(project):
    doc = base_doc()
    doc["sede"] = 1
    doc["dataset"]["mnt"] = "/data"
    found = problems(write(project, doc))

    assert any("the spec has an unknown key `sede`. Did you mean `seed`?" in p for p in found)
    assert any("dataset has an unknown key `mnt`. Did you mean `mount`?" in p for p in found)


def test_a_key_nothing_resembles_lists_the_known_keys(project):
    message = only_problem(write(project, changed({"hermetic.gpu": True})))
    assert "Remove it; the known keys are network, read_only_root, tmp_size, user" in message


def test_a_repeated_key_is_rejected_and_the_first_one_is_named(project):
    text = yaml.safe_dump(base_doc(), sort_keys=False) + "seed: 43\n"
    message = only_problem(write(project, text))
    assert "the key `seed` twice (first on line" in message and "Keep only one" in message


def test_wrong_types_are_rejected_with_what_was_found(project):
    found = problems(write(project, changed({
        "seed": "42", "version": True, "command": "python3 train.py", "env": {"N": 4}})))
    text = "\n".join(found)

    assert "seed must be an integer, not the string '42'" in text
    assert "version must be an integer, not the boolean true" in text
    assert "command must be a list, not the string" in text
    assert "env.N must be a string, not the number 4. Quote it" in text


def test_every_problem_in_a_document_is_reported_at_once_in_file_order(project):
    path = write(project, f"""version: 2
name: Not_Valid
image: {{ref: "x:latest"}}
dataset: {{path: data.csv, sha256: {DATA_SHA}}}
seed: -1
command: []
""")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    error = caught.value

    assert error.message == f"spec {path} is invalid (5 problems)"
    lines = [int(re.match(rf"{re.escape(str(path))}:(\d+):\d+: ", d).group(1))
             for d in error.details]
    assert lines == [1, 2, 3, 5, 6]
    for detail in error.details:   # FILE:LINE:COL: what is wrong. How to fix it.
        assert re.fullmatch(rf"{re.escape(str(path))}:\d+:\d+: [^\n]+\. [A-Z][^\n]*[.?]", detail)


def test_the_spec_summary_says_1_problem_in_the_singular(project):
    with pytest.raises(SpecError) as caught:
        load_spec(write(project, changed({"seed": -1})))
    assert caught.value.message.endswith("(1 problem)")


def test_yaml_anchors_and_aliases_are_refused(project):
    text = yaml.safe_dump(base_doc(), sort_keys=False) + "params: &p {C: 1}\nenv: *p\n"
    message = only_problem(write(project, text))
    assert "YAML anchor (&p)" in message and "Write the value out in full" in message

    lone_alias = yaml.safe_dump(base_doc(), sort_keys=False) + "env: *p\n"
    assert "YAML alias (*p)" in only_problem(write(project, lone_alias))


def test_an_alias_bomb_is_refused_quickly_without_expanding(project):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    assert "anchors and aliases are not allowed" in only_problem(write(project, bomb))


def test_a_dataset_outside_the_repository_is_rejected(project):
    (project / "repo").mkdir()
    (project / "repo" / ".git").mkdir()
    (project / "repo" / "specs").mkdir()
    (project / "repo" / "data.csv").write_text("a\n")
    specs = project / "repo" / "specs"

    inside = load_spec(write(specs, changed({"dataset.path": "../data.csv"})))
    assert inside.dataset.path == project / "repo" / "data.csv", "`..` inside the repo is fine"

    escaped = only_problem(write(specs, changed({"dataset.path": "../../data.csv"})))
    assert "dataset.path '../../data.csv' leaves the repository" in escaped

    absolute = only_problem(write(specs, changed({"dataset.path": str(project / "data.csv")})))
    assert "is not a relative path" in absolute


def test_a_symlink_that_points_out_of_the_repository_is_rejected(project):
    outside = project / "outside"
    outside.mkdir()
    (outside / "secret.csv").write_text("a\n")
    repo = project / "repo"
    repo.mkdir()
    (repo / "data.csv").symlink_to(outside / "secret.csv")
    (repo / "ctx").symlink_to(project / "ctx")

    (repo / "real.csv").write_text("a\n")

    assert "leaves the repository" in only_problem(write(repo, changed({})))
    message = only_problem(write(repo, changed({"dataset.path": "real.csv",
                                                "image": {"build": {"context": "ctx"}}})))
    assert "image.build.context 'ctx' leaves the repository" in message


def test_a_missing_dataset_or_build_context_is_rejected(project):
    found = problems(write(project, changed({
        "dataset.path": "nope.csv", "image": {"build": {"context": "data.csv"}}})))
    text = "\n".join(found)
    assert "dataset.path 'nope.csv' is not an existing file or directory" in text
    assert "image.build.context 'data.csv' is not an existing directory" in text


@pytest.mark.parametrize("argument, expected", [
    ("{sed}", "unknown placeholder {sed}"),
    ("{params.lr}", "unknown placeholder {params.lr}"),
    ("{seed:03d}", "unknown placeholder {seed:03d}"),
    ("--json={", "an unmatched '{'"),
    ("}", "an unmatched '}'"),
])
def test_an_unknown_command_placeholder_is_rejected(project, argument, expected):
    message = only_problem(write(project, changed({"command": ["train", argument],
                                                   "params": {"C": 1}})))
    assert f"command[1] {'uses the' if 'unknown' in expected else 'has'} {expected}" in message
    assert "{{" in message


def test_a_dataset_without_a_checksum_is_refused_until_it_is_locked(project):
    path = write(project, changed({"dataset.sha256": DROP}))
    message = only_problem(path)
    assert "dataset has no `sha256` pin" in message and "reprun lock" in message

    unlocked = load_spec(path, require_pins=False)
    assert unlocked.dataset.sha256 is None
    assert load_spec(write(project, changed({"dataset.sha256": None})),
                     require_pins=False).dataset.sha256 is None


def test_an_image_ref_needs_its_digest_even_when_pins_are_not_required(project):
    message = only_problem(write(project, changed({"image.ref": "reprun/sklearn"})),
                           require_pins=False)
    assert "'reprun/sklearn' has no digest" in message


def test_reprun_variables_are_reserved(project):
    message = only_problem(write(project, changed({"env": {"REPRUN_SEED": "1"}})))
    assert "env key 'REPRUN_SEED' starts with REPRUN_, which reprun reserves" in message


def test_the_dataset_mount_and_the_outputs_folder_must_not_overlap(project):
    message = only_problem(write(project, changed({"outputs": {"dir": "/data/out"}})))
    assert "outputs.dir /data/out overlaps dataset.mount /data" in message


def test_the_dataset_mounted_over_the_containers_root_is_refused_for_what_it_is(project):
    message = only_problem(write(project, changed({"dataset.mount": "/"})))
    assert "'/' is the container's root" in message and "not an absolute path" not in message


def test_an_exponent_without_a_dot_is_a_number_where_a_number_is_meant(project):
    """PyYAML reads `1e-3` as a string; ML configs mean 0.001. Quoted, it stays text; in the
    command, whose text reaches the job as written, it stays `1e-3`."""
    text = yaml.safe_dump(base_doc(), sort_keys=False) + (
        'params: {lr: 1e-3, big: 1.0e300, quoted: "1e-3", word: e5}\n'
        "compare: {metrics: {default: {abs: 1e-9}}}\n")
    spec = load_spec(write(project, text.replace("- '{seed}'", "- '{seed}'\n- 1e-3")))
    assert spec.params == {"lr": 0.001, "big": 1e300, "quoted": "1e-3", "word": "e5"}
    assert spec.command[-1] == "1e-3"
    assert spec.compare.metrics["default"].value == 1e-9


def test_a_spec_of_another_version_is_rejected(project):
    assert "this reprun reads version 1" in only_problem(write(project, changed({"version": 2})))


# --- junk never escapes as anything but SpecError --------------------------------------------

JUNK = {   # content, and what the (first relevant) problem says
    "empty file": (b"", "the spec is empty"),
    "only a comment": (b"# nothing here\n", "the spec is empty"),
    "a list": (b"- version: 1\n", "the spec must be a mapping, not a list"),
    "a string": (b"hello\n", "the spec must be a mapping, not the string 'hello'"),
    "binary": (bytes(range(256)) * 4, "the spec is not UTF-8 text"),
    "not utf-8": (b"name: caf\xe9\n", "1:10: the spec is not UTF-8 text"),
    "utf-16": ("version: 1\n".encode("utf-16"), "the spec is not UTF-8 text"),
    "nul byte": (b"version: 1\x00\n", "1:11: the spec contains a character YAML does not "
                 "allow (U+0000)"),
    "tab indent": (b"image:\n\tref: x\n", "2:1: the YAML is malformed"),
    "unclosed flow": (b"image: {ref: [\n", "the YAML is malformed"),
    "two documents": (b"version: 1\n---\nversion: 1\n", "expected a single document"),
    "deep nesting": (b"[" * 20000, "nested too deeply"),
    "deep mappings": (b"a: " + b"{a: " * 5000, "nested too deeply"),
    "huge integer": (b"seed: " + b"9" * 5000 + b"\n", "seed is a number with too many digits"),
    "huge float": (b"seed: 1.0e+999999\n", "seed must be an integer, not the number inf"),
    "nan": (b"resources: {cpus: .nan}\n", "resources.cpus must be a finite number"),
    "python tag": (b"seed: !!python/object/apply:os.system [echo hi]\n",
                   "seed uses the YAML tag tag:yaml.org,2002:python/object/apply:os.system"),
    "bad bool tag": (b"seed: !!bool maybe\n", "seed cannot be read as a value ('maybe')"),
    "bad timestamp tag": (b"seed: !!timestamp x\n", "seed cannot be read as a value ('x')"),
    "set": (b"params: !!set {a, b}\n", "params uses the YAML tag tag:yaml.org,2002:set"),
    "complex key": (b"? [a, b]\n: 1\n", "the spec has a key that is not a string (a list)"),
    "null key": (b"~: 1\n", "the spec has a key that is not a string (empty (null))"),
    "date": (b"description: 2024-01-01\n", "description must be a string, not a date"),
}


@pytest.mark.parametrize("content, expected", JUNK.values(), ids=JUNK.keys())
def test_junk_is_rejected_as_an_invalid_spec_with_a_located_reason(tmp_path, content, expected):
    path = write(tmp_path, content)
    found = problems(path)
    assert all(re.match(rf"{re.escape(str(path))}:\d+:\d+: ", d) for d in found)
    assert any(expected in d for d in found), found


def test_a_missing_file_or_a_folder_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path)


def test_a_huge_file_is_refused_before_parsing(tmp_path):
    message = only_problem(write(tmp_path, b"# " + b"x" * (1 << 20) + b"\n"))
    assert "larger than" in message


def test_validate_reports_each_file(project):
    good = write(project, base_doc(), "good.yaml")
    bad = write(project, changed({"seed": -1}), "bad.yaml")
    results = validate_specs([good, str(bad)])

    assert [path for path, _ in results] == [good, bad]
    assert results[0][1] is None and isinstance(results[1][1], SpecError)


@pytest.mark.parametrize("text, size", [
    ("2g", 2 << 30), ("512m", 512 << 20), ("1024k", 1 << 20), ("1T", 1 << 40), (4096, 4096),
    ("100", 100)])
def test_sizes_use_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text, seconds", [
    ("30m", 1800.0), ("90s", 90.0), ("2h", 7200.0), ("1d", 86400.0), ("0.5s", 0.5),
    (600, 600.0), ("45", 45.0)])
def test_durations_read_as_seconds(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "2GB", "-1m", "", "1.5g", True, 0, -5, None])
def test_a_size_that_is_not_positive_or_not_a_size_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("text", ["0s", "30 minutes", "1h30m", "-1", True, 0, float("nan")])
def test_a_duration_that_is_not_positive_or_not_a_duration_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_duration(text)


# --- the published schema and the loader agree ------------------------------------------------

@pytest.fixture(scope="module")
def schema_validator():
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


VALID = {
    "minimal": {},
    "build": {"image": {"build": {"context": "ctx"}}},
    "build with digest": {"image": {"build": {"context": "ctx", "dockerfile": "Dockerfile",
                                               "args": {"A": "1"}}, "digest": DIGEST}},
    "build digest left empty": {"image": {"build": {"context": "ctx"}, "digest": None}},
    "tag and digest": {"image.ref": f"registry.example.com:5000/a/b-c:1.2.3@{DIGEST}"},
    "short ref": {"image.ref": f"sklearn@{DIGEST}"},
    "prefixed checksum": {"dataset.sha256": "sha256:" + DATA_SHA},
    "mount": {"dataset.mount": "/mnt/in"},
    "numbers in command": {"command": ["train", 3, 0.5]},
    "description": {"description": "anything at all"},
    "params": {"params": {"C": 1.0, "n": 3, "solver": "lbfgs", "flag": True, "_x": "y"}},
    "env": {"env": {"OMP_PROC_BIND": "true", "_private": ""}},
    "outputs": {"outputs": {"dir": "/o", "metrics": "a/m.json", "artifacts": ["*.pkl", "x/**"]}},
    "empty artifacts": {"outputs.artifacts": []},
    "tolerances": {"compare": {"metrics": {"default": "ignore", "a": {"abs": 0},
                                           "b": {"rel": 0.5}, "c": "exact"},
                               "artifacts": "ignore"}},
    "resources as strings": {"resources": {"cpus": 2, "memory": "4G", "timeout": "1.5h",
                                           "pids": 1}},
    "resources as numbers": {"resources": {"cpus": 0.25, "memory": 1 << 30, "timeout": 600}},
    "relaxed hermetic": {"hermetic": {"network": "host", "read_only_root": False,
                                      "user": "1000:1000", "tmp_size": 1 << 20}},
    "gpu count": {"resources.gpus": 2},
    "every gpu": {"resources.gpus": "all"},
    "gpu device ids": {"resources.gpus": [0, "GPU-8f2b1c3d-aaaa-bbbb-cccc-0123456789ab"]},
    "shared memory": {"resources.shm": "8g"},
    "shared memory in bytes": {"resources.shm": 1 << 28},
    "working folder": {"workdir": "/out"},
    "no dataset": {"dataset": DROP},
    "largest seed": {"seed": MAX_INT},
    "seed zero": {"seed": 0},
}

INVALID = {
    "version 2": {"version": 2},
    "version as string": {"version": "1"},
    "name with capitals": {"name": "Digits"},
    "name starting with a dash": {"name": "-x"},
    "description as number": {"description": 3},
    "no seed": {"seed": DROP},
    "no image": {"image": DROP},
    "no command": {"command": DROP},
    "no dataset checksum": {"dataset.sha256": DROP},
    "null dataset checksum": {"dataset.sha256": None},
    "unknown top-level key": {"seeds": 1},
    "unknown image key": {"image.tag": "1.0"},
    "unknown dataset key": {"dataset.mnt": "/data"},
    "unknown build key": {"image": {"build": {"context": "ctx", "target": "x"}}},
    "tag without digest": {"image.ref": "reprun/sklearn:1.0"},
    "uppercase digest": {"image.ref": "reprun/sklearn@sha256:" + "AB" * 32},
    "short digest": {"image.ref": "reprun/sklearn@sha256:abc"},
    "capitals in repository": {"image.ref": f"reprun/Sklearn@{DIGEST}"},
    "infinite cpus": {"resources.cpus": float("inf")},
    "ref and build": {"image.build": {"context": "ctx"}},
    "neither ref nor build": {"image": {}},
    "ref with digest": {"image.digest": DIGEST},
    "malformed build digest": {"image": {"build": {"context": "ctx"}, "digest": "sha256:x"}},
    "build without context": {"image": {"build": {"dockerfile": "Dockerfile"}}},
    "build arg as number": {"image": {"build": {"context": "ctx", "args": {"A": 1}}}},
    "malformed checksum": {"dataset.sha256": "xyz"},
    "uppercase checksum": {"dataset.sha256": "CD" * 32},
    "relative mount": {"dataset.mount": "data"},
    "negative seed": {"seed": -1},
    "seed as string": {"seed": "42"},
    "seed as boolean": {"seed": True},
    "seed too large": {"seed": MAX_INT + 1},
    "empty command": {"command": []},
    "command as string": {"command": "python3 train.py"},
    "boolean in command": {"command": ["train", True]},
    "mapping in command": {"command": ["train", {"a": 1}]},
    "null param": {"params": {"C": None}},
    "list param": {"params": {"C": [1, 2]}},
    "param name with a dash": {"params": {"learning-rate": 0.1}},
    "env value as number": {"env": {"N": 4}},
    "reserved env name": {"env": {"REPRUN_SEED": "1"}},
    "env name with a digit first": {"env": {"1X": "a"}},
    "relative outputs dir": {"outputs.dir": "out"},
    "root outputs dir": {"outputs.dir": "/"},
    "outputs dir with ..": {"outputs.dir": "/out/../etc"},
    "absolute metrics": {"outputs.metrics": "/out/metrics.json"},
    "metrics outside outputs": {"outputs.metrics": "../metrics.json"},
    "artifacts as string": {"outputs.artifacts": "*.pkl"},
    "artifact with ..": {"outputs.artifacts": ["../*.pkl"]},
    "unknown tolerance": {"compare.metrics": {"accuracy": "approx"}},
    "number as tolerance": {"compare.metrics": {"accuracy": 0.01}},
    "negative tolerance": {"compare.metrics": {"accuracy": {"abs": -1}}},
    "two tolerances": {"compare.metrics": {"accuracy": {"abs": 1, "rel": 1}}},
    "empty tolerance": {"compare.metrics": {"accuracy": {}}},
    "unknown artifacts mode": {"compare.artifacts": "fuzzy"},
    "unknown compare key": {"compare.tolerance": "exact"},
    "zero cpus": {"resources.cpus": 0},
    "cpus as string": {"resources.cpus": "2"},
    "too many cpus": {"resources.cpus": 5000},
    "memory with GB": {"resources.memory": "2GB"},
    "zero memory": {"resources.memory": 0},
    "fractional memory": {"resources.memory": 1.5},
    "zero timeout": {"resources.timeout": "0s"},
    "timeout in words": {"resources.timeout": "30 minutes"},
    "negative timeout": {"resources.timeout": -5},
    "timeout over a year": {"resources.timeout": 10**9},
    "zero pids": {"resources.pids": 0},
    "fractional pids": {"resources.pids": 1.5},
    "unknown resource": {"resources.tpus": 1},
    "zero gpus": {"resources.gpus": 0},
    "gpus as fraction": {"resources.gpus": 0.5},
    "gpus in words": {"resources.gpus": "some"},
    "gpus as boolean": {"resources.gpus": True},
    "empty gpu list": {"resources.gpus": []},
    "negative gpu index": {"resources.gpus": [-1]},
    "gpu id with a space": {"resources.gpus": ["GPU 0"]},
    "zero shared memory": {"resources.shm": 0},
    "shared memory in words": {"resources.shm": "lots"},
    "relative workdir": {"workdir": "out"},
    "workdir with ..": {"workdir": "/out/../etc"},
    "workdir as number": {"workdir": 3},
    "workdir at the root": {"workdir": "/"},
    "dataset as string": {"dataset": "data.csv"},
    "bridge network": {"hermetic.network": "bridge"},
    "read_only_root as string": {"hermetic.read_only_root": "yes"},
    "user by name": {"hermetic.user": "root"},
    "tmp_size in words": {"hermetic.tmp_size": "big"},
    "unknown hermetic key": {"hermetic.privileged": True},
}

# What only the loader can check: the disk, the command's placeholders, YAML itself, and
# distinctions JSON does not make. The schema accepts each of these; the loader refuses them.
LOADER_ONLY = {
    "dataset missing on disk": {"dataset.path": "nope.csv"},
    "dataset outside the repository": {"dataset.path": "../elsewhere.csv"},
    "build context missing on disk": {"image": {"build": {"context": "nope"}}},
    "unknown placeholder": {"command": ["train", "{sed}"]},
    "lone brace": {"command": ["train", "{"]},
    "seed written as a float": {"seed": 42.0},
    "cpus not a number": {"resources.cpus": float("nan")},
    "memory larger than 2**63": {"resources.memory": "99999999999t"},
    "timeout string over a year": {"resources.timeout": "1000d"},
    "overlapping mounts": {"outputs.dir": "/data"},
    "a gpu listed twice": {"resources.gpus": [0, "0"]},
}


def documents(table):
    return pytest.mark.parametrize("changes", table.values(), ids=table.keys())


@documents(VALID)
def test_a_valid_document_passes_both_the_schema_and_the_loader(project, schema_validator, changes):
    doc = changed(changes)
    schema_validator.validate(doc)
    load_spec(write(project, doc))


@documents(INVALID)
def test_an_invalid_document_is_rejected_by_both_the_schema_and_the_loader(
        project, schema_validator, changes):
    doc = changed(changes)
    assert not schema_validator.is_valid(doc)
    assert problems(write(project, doc))


@pytest.mark.parametrize("doc", [[base_doc()], "version: 1", 1, None], ids=str)
def test_a_document_that_is_not_a_mapping_is_rejected_by_both(project, schema_validator, doc):
    assert not schema_validator.is_valid(doc)
    assert problems(write(project, yaml.safe_dump(doc)))


@documents(LOADER_ONLY)
def test_what_the_schema_cannot_see_the_loader_still_refuses(project, schema_validator, changes):
    doc = changed(changes)
    assert schema_validator.is_valid(doc), "the schema learned this check: move it to INVALID"
    assert problems(write(project, doc))


def test_the_schema_is_shipped_inside_the_package():
    assert SCHEMA_FILE.parent.parent.name == "orchestrator" and SCHEMA_FILE.suffix == ".json"
    assert json.loads(SCHEMA_FILE.read_text())["$schema"].endswith("/draft/2020-12/schema")


# --- fuzzing: whatever the bytes, the answer is a spec or a SpecError -------------------------

KEYS = ["version", "name", "image", "ref", "build", "context", "digest", "dataset", "path",
        "sha256", "mount", "seed", "command", "params", "env", "outputs", "compare", "metrics",
        "default", "abs", "rel", "resources", "memory", "timeout", "hermetic", "network"]
SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.sampled_from(["{seed}", "{params.C}", "{", "data.csv", "ctx", "../x", "/abs",
                              "2g", "30m", DIGEST, REF, DATA_SHA, "exact", "ignore", "host"]))
TREES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5), max_leaves=25)
VALID_TEXT = yaml.safe_dump(changed({"params": {"C": 1}, "outputs": {"artifacts": ["*.pkl"]}}),
                            sort_keys=False)


@st.composite
def mutated_spec(draw):
    """A valid spec with a few characters deleted, inserted or replaced."""
    text = VALID_TEXT
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        cut = draw(st.integers(0, 3))
        text = text[:at] + draw(st.text(max_size=3)) + text[at + cut:]
    return text


def yaml_of(tree, draw_flow):
    try:
        return yaml.safe_dump(tree, default_flow_style=draw_flow, allow_unicode=True)
    except (yaml.YAMLError, ValueError):
        return ""


def over_base(tree):
    return {**base_doc(), **tree} if isinstance(tree, dict) else tree


FUZZ = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400),
    mutated_spec(),
    st.builds(yaml_of, TREES, st.booleans()),
    st.builds(yaml_of, TREES.map(over_base), st.booleans()),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=FUZZ, require_pins=st.booleans())
def test_no_document_makes_the_loader_fail_with_anything_but_a_spec_error(
        project, content, require_pins):
    path = write(project, content)
    try:
        load_spec(path, require_pins=require_pins)
    except SpecError as error:
        assert error.details and all(isinstance(d, str) for d in error.details)
