"""The container's one entrypoint: shipped shell templates, each checked by shellcheck, rendered
into the scripts every run and every Swarm task start with."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from orchestrator.execution import entrypoint
from orchestrator.execution.entrypoint import HOOKS, Hook, entrypoint_script, template_names
from orchestrator.execution.handback import WrapperPlan, wrapper_script
from orchestrator.manifest.probes import (MAX_MANIFEST_BYTES, PROBES, ManifestCapture, parse_gpu,
                                          parse_manifest, wrapper_script as run_entrypoint)

REPO = Path(__file__).resolve().parent.parent
PROBE_BY_NAME = {p.name: p for p in PROBES}
TEMPLATES = REPO / "orchestrator" / "execution" / "templates"

needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck is not installed (scripts/test-deps.sh installs Debian's package)")


def shellcheck(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["shellcheck", "--shell=sh", "--severity=style", str(path)],
                          capture_output=True, text=True)


def swarm_plan(**changes) -> WrapperPlan:
    values = dict(marker="@@reprun-end-0123456789abcdef", workdir="/reprun",
                  shipped={"/reprun/wrap.sh": run_entrypoint("@@reprun-x").encode()},
                  dataset_target="/data", dataset_sha256="0" * 64, outputs_dir="/out",
                  metrics="metrics.json", artifacts=("*.bin", "model dir/*"),
                  no_network=True, no_new_privileges=True,
                  timeout_s=1.5)
    return WrapperPlan(**{**values, **changes})


@needs_shellcheck
@pytest.mark.parametrize("name", template_names())
def test_every_shell_template_passes_shellcheck(name):
    result = shellcheck(TEMPLATES / name)
    assert result.returncode == 0, result.stdout


@needs_shellcheck
@pytest.mark.parametrize("script", ["run", "swarm"])
def test_the_rendered_entrypoints_pass_shellcheck(tmp_path, script):
    text = (run_entrypoint("@@reprun-0123456789abcdef", PROBES) if script == "run"
            else wrapper_script(swarm_plan()))
    (tmp_path / "entrypoint.sh").write_text(text)
    result = shellcheck(tmp_path / "entrypoint.sh")
    assert result.returncode == 0, result.stdout


def test_shellcheck_finds_a_real_mistake_in_a_template(tmp_path):
    # The check above is worth something only if it fails on a broken template.
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    (tmp_path / "bad.sh").write_text('#!/bin/sh\nfor f in $(ls *.txt); do rm $f; done\n')
    assert shellcheck(tmp_path / "bad.sh").returncode != 0


def test_every_probe_and_hook_has_its_template_and_no_template_is_left_unused():
    names = set(template_names())
    used = ({"entrypoint.sh", "probe-frame.sh", "handback.sh", "handback-artifacts.sh"}
            | {f"probe-{p.name}.sh" for p in PROBES} | {h.template for h in HOOKS})
    assert used == names


def test_a_hook_is_one_declared_template_placed_at_its_stage(tmp_path, monkeypatch):
    # How a factor adds a hook: a template file and one Hook in the declaration.
    (tmp_path / "hook-demo.sh").write_text('echo "demo hook ran"\n')
    real = entrypoint.template.__wrapped__

    def template(name):
        return (tmp_path / name).read_text() if name == "hook-demo.sh" else real(name)
    monkeypatch.setattr(entrypoint, "template", template)
    script = entrypoint_script("@@m", ("kernel",), HOOKS + (Hook("demo", entrypoint.SETUP),))
    assert script.index("demo hook ran") < script.index("$reprun_marker kernel")
    later = entrypoint_script("@@m", ("kernel",), (Hook("demo", entrypoint.BEFORE_EXEC),))
    assert (later.index("$reprun_marker kernel") < later.index("demo hook ran")
            < later.index('exec "$@"'))


def test_the_rendered_entrypoint_prints_the_probes_then_runs_the_job(tmp_path):
    script = tmp_path / "wrap.sh"
    script.write_text(entrypoint_script("@@m", ("kernel",)))
    result = subprocess.run(["/bin/sh", str(script), "echo", "the job"], capture_output=True,
                            env={"PATH": "/usr/bin:/bin", "REPRUN_UMASK": "0027"})
    job_output = []
    capture = ManifestCapture("@@m", lambda chunk, stream: job_output.append(chunk))
    capture.feed(result.stdout)
    assert b"".join(job_output) == b"the job\n"
    lines = capture.text.splitlines()
    assert lines[0] == "@@m kernel" and lines[-1] == "@@m kernel exit 0"


def test_a_built_wheel_carries_every_template(tmp_path):
    """The templates are package data: an installed reprun has them, not only a checkout."""
    source = tmp_path / "src"     # a copy: building leaves build/ and egg-info behind
    shutil.copytree(REPO / "orchestrator", source / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                             str(tmp_path), str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"no wheel could be built here: {result.stderr.strip()[-300:]}")
    wheel, = tmp_path.glob("reprun-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    for name in template_names():
        assert f"orchestrator/execution/templates/{name}" in shipped
    assert "orchestrator/manifest/pyprobe.py" in shipped


# --- the manifest, taken from the start of the container's output -----------------------------

def test_the_manifest_is_taken_from_the_start_of_stdout_however_the_output_is_chunked():
    probe = b"@@m kernel\n6.1.0\n\n@@m kernel exit 0\n"
    # A job that read the marker and prints a forged section and end line: its output.
    job = b"@@m kernel\nforged\n@@m kernel exit 0\n@@m end\ntrained\n"
    stream = probe + b"@@m end\n" + job
    for size in (1, 2, 3, 7, 8, 9, 64, len(stream)):
        out = []
        capture = ManifestCapture("@@m", lambda chunk, stream: out.append((stream, chunk)))
        for i in range(0, len(stream), size):
            capture.feed(stream[i:i + size])
            capture.feed(b"on stderr\n", "stderr")
        assert capture.ended and capture.text == probe.decode(), size
        assert b"".join(c for s, c in out if s == "stdout") == job, size
        assert all(c == b"on stderr\n" for s, c in out if s == "stderr")


def test_a_stream_without_the_end_line_is_all_probe_output_and_none_of_it_is_logged():
    out = []
    capture = ManifestCapture("@@m", lambda chunk, stream: out.append(chunk))
    capture.feed(b"@@m kernel\n6.1")
    assert not capture.ended and capture.text == "@@m kernel\n6.1" and not out
    assert ManifestCapture("@@m", print).text is None


def test_a_probe_that_prints_a_gibibyte_is_read_only_up_to_the_limit_and_the_record_says_so():
    out = []
    capture = ManifestCapture("@@m", lambda chunk, stream: out.append(chunk))
    capture.feed(b"@@m os_release\n")
    chunk = b"x" * (1 << 20)
    for _ in range(1024):
        capture.feed(chunk)
    capture.feed(b"\n@@m os_release exit 0\n@@m end\nthe job\n")
    assert capture.ended and capture.cut and b"".join(out) == b"the job\n"
    assert capture.seen > 1 << 30
    assert len(capture.text) == MAX_MANIFEST_BYTES
    manifest = parse_manifest(capture.text, "@@m", {}, cut_from=capture.seen)
    assert str(capture.seen) in manifest.missing["manifest"]
    assert "cut" in manifest.missing["os_release"]


# --- GPU facts, from nvidia-smi ----------------------------------------------------------------

RECORDED = Path(__file__).resolve().parent / "data" / "nvidia-smi"


def test_the_gpu_facts_of_two_recorded_nvidia_smi_outputs():
    two = parse_gpu((RECORDED / "a100x2.txt").read_text())["gpu"]
    assert (two["count"], two["driver"], two["cuda"]) == (2, "535.104.05", "12.2")
    assert two["devices"][1] == {"index": 1, "model": "NVIDIA A100-SXM4-80GB",
                                 "memory_mib": 81920, "compute_mode": "Exclusive_Process",
                                 "ecc": "Enabled"}
    one = parse_gpu((RECORDED / "rtx3090.txt").read_text())["gpu"]
    assert (one["count"], one["driver"], one["cuda"]) == (1, "470.199.02", "11.4")
    assert one["devices"][0]["model"] == "NVIDIA GeForce RTX 3090"
    assert one["devices"][0]["memory_mib"] == 24268 and one["devices"][0]["ecc"] == "N/A"


def section(name: str, raw: str, status: int) -> str:
    return f"@@m {name}\n{raw}\n@@m {name} exit {status}\n"


def test_no_nvidia_smi_is_no_missing_fact_and_a_failing_one_is_said():
    absent = parse_manifest(section("gpu", "", 127), "@@m", {}, probes=(PROBE_BY_NAME["gpu"],))
    assert absent.gpu == {} and "gpu" not in absent.missing
    failed = parse_manifest(section("gpu", "NVIDIA-SMI has failed because it couldn't "
                                           "communicate with the NVIDIA driver.", 9),
                            "@@m", {}, probes=(PROBE_BY_NAME["gpu"],))
    assert failed.gpu == {} and "exit 9" in failed.missing["gpu"]
    junk = parse_manifest(section("gpu", "index, name\nnot-a-number, x", 0), "@@m", {},
                          probes=(PROBE_BY_NAME["gpu"],))
    assert junk.gpu == {} and "unreadable" in junk.missing["gpu"]


def test_two_machines_gpus_differ_in_the_environment_diff():
    from orchestrator.compare.environment import compare_environments
    from orchestrator.records import EnvironmentManifest
    a = EnvironmentManifest(**parse_gpu((RECORDED / "a100x2.txt").read_text()))
    b = EnvironmentManifest(**parse_gpu((RECORDED / "rtx3090.txt").read_text()))
    rows = {(r.section, r.name): (r.a, r.b) for r in compare_environments(a, b)[0]}
    assert rows[("gpu", "gpu 0 model")] == ("NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 3090")
    assert rows[("gpu", "driver")] == ("535.104.05", "470.199.02")
    assert rows[("gpu", "cuda")] == ("12.2", "11.4")


FAKE_NVIDIA_SMI = """#!/bin/sh
# Prints what the recorded nvidia-smi printed: the CSV for --query-gpu, the banner otherwise.
case "$1" in
  --query-gpu=*) grep -v '^|' /data/recorded.txt ;;
  *) grep '^|' /data/recorded.txt ;;
esac
"""


@pytest.mark.engine
def test_a_run_without_nvidia_smi_has_no_gpu_and_misses_nothing(project):
    from conftest import WRITE_METRICS
    project.dataset()
    result = project.reprun("run", str(project.spec(script=WRITE_METRICS)))
    assert result.returncode == 0, result.stderr
    run, = json.loads(project.reprun("runs", "--json").stdout)
    environment = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)[
        "environment"]
    assert environment["gpu"] == {} and "gpu" not in environment["missing"]


@pytest.mark.engine
def test_the_gpu_facts_reach_the_record_from_nvidia_smi_in_the_container(project):
    # The example image has no GPU: a stand-in nvidia-smi on the job's PATH prints a recorded
    # output, read by the same probe section a GPU host runs.
    from conftest import WRITE_METRICS
    project.dataset(files={"train.csv": b"x\n1\n", "nvidia-smi": FAKE_NVIDIA_SMI.encode(),
                           "recorded.txt": (RECORDED / "a100x2.txt").read_bytes()})
    (project.root / "data" / "nvidia-smi").chmod(0o755)
    spec = project.spec(script=WRITE_METRICS,
                        extra="env: {PATH: /data:/usr/local/bin:/usr/bin:/bin}\n")
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    run, = json.loads(project.reprun("runs", "--json").stdout)
    gpu = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)[
        "environment"]["gpu"]
    assert gpu == parse_gpu((RECORDED / "a100x2.txt").read_text())["gpu"]
