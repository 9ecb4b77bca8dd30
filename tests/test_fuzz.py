"""Bad input: whatever a job writes as its metrics, whatever bytes a spec holds, and whichever way
a symlink points, reprun answers with a clear error and its exit code — never a traceback."""
from __future__ import annotations

import json
import math
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import WRITE_METRICS
from orchestrator.errors import SpecError
from orchestrator.outputs import MAX_METRICS_BYTES, OutputsError, read_metrics
from orchestrator.spec.load import load_spec

# `make test` tries every example; `make test-fast` a tenth of them (REPRUN_FUZZ_SHARE=0.1), so
# that the fast run stays fast and still meets each property.
FUZZ_SHARE = float(os.environ.get("REPRUN_FUZZ_SHARE", "1"))
METRICS_EXAMPLES = max(100, int(3000 * FUZZ_SHARE))
SPEC_EXAMPLES = max(100, int(1500 * FUZZ_SHARE))

# --- the metrics reader ------------------------------------------------------------------------

LEAVES = (st.none() | st.booleans() | st.integers()
          | st.integers(min_value=-(10 ** 400), max_value=10 ** 400)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30))
TREES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=6), max_leaves=60)


def as_json(tree) -> bytes:
    try:
        return json.dumps(tree, allow_nan=True).encode()
    except (ValueError, RecursionError):
        return b"{}"


def nested(opening: bytes, closing: bytes):
    return st.integers(1, 200_000).map(lambda n: b'{"a": ' + opening * n + b"1" + closing * n + b"}")


@st.composite
def mutated(draw):
    """A valid metrics document with a few bytes deleted, inserted or replaced."""
    data = bytearray(as_json(draw(st.dictionaries(st.text(max_size=8), LEAVES, max_size=6))))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, len(data)))
        data[at:at + draw(st.integers(0, 3))] = draw(st.binary(max_size=3))
    return bytes(data)


METRICS_DOCUMENTS = st.one_of(
    TREES.map(as_json),
    st.dictionaries(st.text(max_size=12), TREES, max_size=8).map(as_json),
    st.binary(max_size=2000),
    mutated(),
    nested(b'{"a": ', b"}"),                                   # nested objects
    nested(b"[", b"]"),                                        # nested lists
    st.integers(1, 100_000).map(lambda n: b'{"big": 1' + b"0" * n + b"}"),
    st.integers(1, 100_000).map(lambda n: b'{"big": 1e' + b"9" * n + b"}"),
    st.sampled_from([b'{"nan": NaN, "inf": Infinity, "ninf": -Infinity}', b"\xef\xbb\xbf{}",
                     '{"a": 1}'.encode("utf-16"), b'{"a": 1}\x00', b"[1, 2]", b'"text"', b"",
                     b'{"a": true}', b'{"a": {"b": {"c": "x"}}}', b'{"\\ud800": 1}']),
)


@pytest.fixture(scope="module")
def outputs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("out")


@settings(max_examples=METRICS_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=METRICS_DOCUMENTS)
def test_any_metrics_file_gives_metric_values_or_a_clear_outputs_error(outputs_dir, document):
    path = outputs_dir / "metrics.json"
    path.write_bytes(document)
    try:
        metrics = read_metrics(path, root=outputs_dir)
    except OutputsError as error:
        message = str(error)
        assert message.startswith("the ") and "metrics.json" in message and len(message) < 1000
        return
    assert isinstance(metrics, dict)
    # A number is a float; text, booleans and null are kept; a list of numbers is a curve.
    assert all(isinstance(k, str) and (type(v) in (float, str, bool, type(None)) or (
        type(v) is list and all(type(x) is float for x in v))) for k, v in metrics.items())
    json.dumps(metrics, allow_nan=True)        # it can go into a record


def test_a_metrics_file_over_the_size_limit_is_refused_without_reading_it(tmp_path):
    path = tmp_path / "metrics.json"
    with open(path, "wb") as handle:
        handle.truncate(MAX_METRICS_BYTES + 1)
    with pytest.raises(OutputsError, match="over the"):
        read_metrics(path, root=tmp_path)


def test_huge_and_special_numbers_are_kept_as_floats(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"big": 1' + "0" * 400 + ', "nan": NaN, "small": 1e-400, "deep": {"x": -1e999}}')
    metrics = read_metrics(path, root=tmp_path)
    assert metrics["big"] == math.inf and math.isnan(metrics["nan"])
    assert metrics["small"] == 0.0 and metrics["deep.x"] == -math.inf


def test_a_metrics_fifo_is_refused_instead_of_blocking(tmp_path):
    os.mkfifo(tmp_path / "metrics.json")
    with pytest.raises(OutputsError, match="not a regular file"):
        read_metrics(tmp_path / "metrics.json", root=tmp_path)


def test_a_metrics_file_behind_a_symlinked_folder_is_refused(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "metrics.json").write_text('{"stolen": 1}')
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    with pytest.raises(OutputsError, match="outside the outputs folder"):
        read_metrics(out / "sub" / "metrics.json", root=out)


# --- the spec loader ---------------------------------------------------------------------------

SPEC_BASE = textwrap.dedent("""\
    version: 1
    name: fuzzed
    image:
      ref: 127.0.0.1:5000/reprun/sklearn@sha256:{digest}
    dataset:
      path: data.csv
      sha256: {sha}
    seed: 42
    command: [python3, train.py, "{{seed}}"]
    resources: {{cpus: 1, memory: 2g, timeout: 30m}}
    """).format(digest="a" * 64, sha="b" * 64)
# Nesting past the interpreter's recursion limit costs the loader about a second to refuse, so
# the fuzz stays under it and the CLI test below goes far past it.
HOSTILE_YAML = st.one_of(
    st.integers(1, 900).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 900).map(lambda n: "{a: " * n + "1" + "}" * n),
    st.integers(1, 5_000).map(lambda n: "9" * n),
    st.sampled_from([".nan", ".inf", "-.inf", "1e999", "0x_ff", "~", "!!binary aGVsbG8=",
                     "!!python/object:os.system ls", "&a [*a]", "*undefined", "2001-01-01",
                     "|\n  block", "? complex\n: key", "!!set {a, b}", '"\\x00\\ud800"']),
    st.text(max_size=80),
    st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
)
SPEC_KEYS = ["version", "name", "image", "dataset", "seed", "command", "resources", "env",
             "secrets", "params", "outputs", "compare", "hermetic", "description"]


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("specs")
    (folder / ".git").mkdir()
    (folder / "data.csv").write_text("x,y\n1,2\n")
    return folder


@settings(max_examples=SPEC_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(key=st.sampled_from(SPEC_KEYS), value=HOSTILE_YAML, replace=st.booleans())
def test_a_spec_with_any_hostile_value_is_a_spec_or_a_spec_error(spec_dir, key, value, replace):
    lines = [line for line in SPEC_BASE.splitlines()
             if not (replace and line.startswith(f"{key}:"))]
    if replace and key in ("image", "dataset"):
        lines = [line for line in lines if not line.startswith("  ")]
    text = "\n".join(lines) + f"\n{key}: {value}\n"
    path = spec_dir / "fuzzed.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_spec(path)
    except SpecError as error:
        assert error.details and all(isinstance(d, str) and d for d in error.details)


@pytest.mark.parametrize("hostile", [
    "seed: " + "[" * 20_000 + "]" * 20_000,
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(20)),
    "seed: 1" + "0" * 5000,
    "resources: {cpus: .nan, memory: 2g, timeout: 30m}",
    "\x00\xff\xfe garbage",
], ids=["deep-nesting", "alias-bomb", "huge-int", "nan-cpus", "binary"])
def test_reprun_validate_answers_a_hostile_spec_with_exit_2_and_no_traceback(project, hostile):
    path = project.root / "hostile.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((SPEC_BASE + hostile + "\n").encode("utf-8", "surrogateescape")
                     if not hostile.startswith("\x00") else hostile.encode("latin-1"))
    result = project.reprun("validate", str(path), timeout=60)
    assert result.returncode == 2, result.stderr
    assert "hostile.yaml" in result.stderr and "Traceback" not in result.stderr


# --- symlinks out of the outputs folder, and out of the dataset --------------------------------

@pytest.mark.engine
@pytest.mark.parametrize("script, words", [
    # An artifact that is a link is never followed, wherever it points, and no longer fails the
    # run (tests/test_outputs.py: test_a_link_to_a_host_file_is_never_read and the engine tests).
    ("import os\nos.symlink('/etc/passwd', '/out/metrics.json')",
     "the metrics file metrics.json is a symlink"),
    ("import os\nos.mkfifo('/out/metrics.json')",
     "the metrics file metrics.json is not a regular file"),
], ids=["metrics-link", "metrics-fifo"])
def test_outputs_that_reach_outside_the_outputs_folder_are_refused_with_exit_5(
        project, script, words):
    project.dataset()
    result = project.reprun("run", str(project.spec(script=script)))
    assert result.returncode == 5, result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


@pytest.mark.engine
@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside.csv", "/"],
                         ids=["absolute-file", "relative-escape", "root-folder"])
def test_a_dataset_symlink_that_leaves_the_dataset_is_refused_before_anything_runs(
        project, target):
    folder = project.dataset()
    (project.root / "outside.csv").write_text("secret,1\n")
    (folder / "leak.csv").symlink_to(target)
    spec = project.spec(script=WRITE_METRICS, sha256="c" * 64)
    result = project.reprun("run", str(spec))
    assert result.returncode == 2, result.stderr
    assert f"leak.csv -> {target}" in result.stderr and "Traceback" not in result.stderr
    assert json.loads(project.reprun("runs", "--json").stdout) == []
