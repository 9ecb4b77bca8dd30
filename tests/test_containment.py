"""Containment, proven from inside the container, and secrets that never leave it: what a job
cannot reach, cannot change, cannot become — and what reprun never writes down."""
from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import jsonschema
import pytest

from conftest import REPO

from orchestrator.compare.comparison import compare_records
from orchestrator.execution.cpus import parse_cpuset
from orchestrator.records import (Artifact, DatasetFacts, EnvironmentManifest, ImageFacts, Inputs,
                                  Outputs, RunRecord)
from orchestrator.reports import render

PROBE = """
import ctypes, errno, json, os, socket, sys
port = int(sys.argv[2])
facts = {}

def refused(action):
    try:
        action()
        return 0
    except OSError:
        return 1

def connect(host, port):
    socket.create_connection((host, port), timeout=3).close()

facts["only_loopback_interface"] = int(sorted(os.listdir("/sys/class/net")) == ["lo"])
facts["host_loopback_service_unreachable"] = refused(lambda: connect("127.0.0.1", port))
facts["registry_unreachable"] = refused(lambda: connect("127.0.0.1", 5000))
facts["dns_fails"] = refused(lambda: socket.getaddrinfo("deb.debian.org", 80))

def write(path):
    with open(path, "a") as handle:
        handle.write("x")

facts["dataset_file_not_writable"] = refused(lambda: write("/data/train.csv"))
facts["dataset_dir_not_writable"] = refused(lambda: write("/data/new.csv"))
facts["root_fs_not_writable"] = refused(lambda: write("/etc/reprun-was-here"))
facts["usr_not_writable"] = refused(lambda: write("/usr/bin/reprun-was-here"))
facts["outputs_writable"] = 1 - refused(lambda: write("/out/probe.txt"))
facts["tmp_writable"] = 1 - refused(lambda: write("/tmp/probe.txt"))

facts["uid"] = os.getuid()
facts["euid"] = os.geteuid()
facts["gid"] = os.getgid()
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
for field in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
    facts[field] = int(status[field].strip(), 16)
facts["NoNewPrivs"] = int(status["NoNewPrivs"].strip())
facts["Seccomp"] = int(status["Seccomp"].strip())
facts["setuid_root_refused"] = refused(lambda: os.setuid(0))
facts["chroot_refused"] = refused(lambda: os.chroot("/tmp"))

libc = ctypes.CDLL(None, use_errno=True)
facts["mount_refused"] = int(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None) != 0)

sockets = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
           "/var/run/docker/containerd/containerd.sock"]
facts["engine_socket_absent"] = int(not any(os.path.exists(p) for p in sockets))
facts["engine_socket_not_mounted"] = int("docker.sock" not in open("/proc/self/mountinfo").read())
def engine_over_unix():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect("/var/run/docker.sock")
facts["engine_socket_unreachable"] = refused(engine_over_unix)
facts["engine_tcp_unreachable"] = refused(lambda: connect("127.0.0.1", 2375))
json.dump(facts, open("/out/metrics.json", "w"))
"""


@pytest.fixture
def host_service():
    """A TCP service on the host's loopback; the job must not reach it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted = []

    def serve():
        try:
            while True:
                connection, _ = server.accept()
                accepted.append(connection)
                connection.close()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()


@pytest.mark.engine
def test_from_inside_the_job_cannot_reach_change_or_become_anything(project, host_service):
    port, accepted = host_service
    socket.create_connection(("127.0.0.1", port), timeout=3).close()    # it does answer here
    project.dataset()
    spec = project.spec(command=["python3", "-c", PROBE.replace("{", "{{").replace("}", "}}"),
                                 "{seed}", str(port)])
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    run_id = json.loads(project.reprun("runs", "--json").stdout)[0]["id"]
    facts = json.loads(project.reprun("runs", "show", run_id, "--json").stdout)["outputs"]["metrics"]
    expected_true = [
        "only_loopback_interface", "host_loopback_service_unreachable", "registry_unreachable",
        "dns_fails", "dataset_file_not_writable", "dataset_dir_not_writable",
        "root_fs_not_writable", "usr_not_writable", "outputs_writable", "tmp_writable",
        "setuid_root_refused", "chroot_refused", "mount_refused", "engine_socket_absent",
        "engine_socket_not_mounted", "engine_socket_unreachable", "engine_tcp_unreachable",
    ]
    assert {k: facts[k] for k in expected_true} == dict.fromkeys(expected_true, 1.0)
    assert facts["uid"] == facts["euid"] == facts["gid"] == 65534
    assert {k: facts[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == \
        dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), 0.0)
    assert facts["NoNewPrivs"] == 1 and facts["Seccomp"] == 2
    assert len(accepted) == 1          # only the test's own check above ever got through


# --- secrets -----------------------------------------------------------------------------------

LEAK_EVERYTHING = """
import json, os, sys
names = ["API_TOKEN", "DB_PASSWORD", "UPLOAD_TARGET"]
values = [os.environ[n] for n in names]
for value in values:
    print("stdout:", value, flush=True)
    print("stderr:", value, file=sys.stderr, flush=True)
    # split across two writes, so that it reaches reprun in two chunks
    sys.stdout.write(value[:5]); sys.stdout.flush(); sys.stdout.write(value[5:] + "\\n")
metrics = {"score": int(sys.argv[1]) % 2, **{"leak_" + v: 1 for v in values}}
json.dump(metrics, open("/out/metrics.json", "w"))
os.environ["COPIED"] = values[0]
sys.exit(0)
"""


@pytest.mark.engine
def test_secret_values_never_reach_records_logs_the_store_or_reports(project, tmp_path):
    # A value written in the spec is in the repository, not a secret: it is recorded as written
    # (tests/test_redact.py). What is secret is what the spec declares under `secrets:`.
    token, password, target = (f"{kind}-{secrets.token_hex(8)}" for kind in ("tok", "pw", "dst"))
    project.dataset()
    spec = project.spec(script=LEAK_EVERYTHING, extra=(
        f"env: {{API_TOKEN: {token}, DB_PASSWORD: {password}, PLAIN_SETTING: visible}}\n"
        "secrets: [UPLOAD_TARGET]\n"))
    reports = [tmp_path / f"report.{ext}" for ext in ("md", "html", "json", "xml")]
    args = ["verify", str(spec), "--sequential"] + [f"--report={p}" for p in reports]
    missing = project.reprun(*args)
    assert missing.returncode == 2 and "UPLOAD_TARGET" in missing.stderr
    assert "not set" in missing.stderr.replace("does not set", "not set")

    os.environ["UPLOAD_TARGET"] = target
    try:
        result = project.reprun(*args)
    finally:
        del os.environ["UPLOAD_TARGET"]
    assert result.returncode == 0, result.stderr
    assert "<redacted>" in result.stderr           # the live log, as the user sees it
    runs = json.loads(project.reprun("runs", "--json").stdout)
    records = [project.reprun("runs", "show", r["id"], "--json").stdout for r in runs]
    shown = [project.reprun("runs", "show", r["id"]).stdout for r in runs]
    texts = {"stdout": result.stdout, "stderr": result.stderr,
             **{f"record {i}": text for i, text in enumerate(records + shown)},
             **{p.name: p.read_text() for p in reports}}
    for path in project.store.rglob("*"):
        # The job's own outputs folder is kept byte for byte, as the job wrote it: a model is
        # compared bitwise, and reprun cannot tell which of its bytes are a secret.
        if path.is_file() and "out" not in path.relative_to(project.store).parts:
            texts[str(path.relative_to(project.store))] = path.read_bytes().decode("latin-1")
    for value in (target,):
        leaks = [where for where, text in texts.items() if value in text]
        assert not leaks, f"{value[:4]}… leaked into {leaks}"
    record = json.loads(records[0])
    assert record["inputs"]["env"] == {"API_TOKEN": token, "DB_PASSWORD": password,
                                       "PLAIN_SETTING": "visible", "UPLOAD_TARGET": "<redacted>"}
    assert record["environment"]["env"]["UPLOAD_TARGET"] == "<redacted>"
    assert "leak_<redacted>" in record["outputs"]["metrics"]
    log = (project.store / "runs" / runs[0]["id"] / "log.txt").read_text()
    assert log.count("<redacted>") == 3


# --- every report format escapes what a job controls -------------------------------------------

HOSTILE = {
    "html": "<script>document.title='pwned'</script>",
    "img": "<img src=x onerror=alert(1)>",
    "markdown": "a|b`c`*d*[e](http://x)",
    "xml": "</testcase><injected/>]]>",
    "terminal": "\x1b]0;pwned\x07\x1b[2J\x1b[31mred",
}


def hostile_record(run_id: str, score: float) -> RunRecord:
    names = {f"{kind} {text}": score for kind, text in HOSTILE.items()}
    return RunRecord(
        id=run_id, status="succeeded", started_at="2024-05-01T10:00:00Z",
        finished_at="2024-05-01T10:01:00Z",
        inputs=Inputs(spec_name="job", spec_path="job.yaml", spec_sha256="e" * 64, seed=7,
                      command=["train"], params={"note": HOSTILE["html"] + str(score)},
                      env={"LOG_LINE": HOSTILE["terminal"] + str(score)}, resources={},
                      container={}, image=ImageFacts(id="sha256:" + "a" * 64),
                      dataset=DatasetFacts(path="data", sha256="d" * 64, kind="tree", files=1,
                                           bytes=3, mount="/data")),
        environment=EnvironmentManifest(
            os_packages={HOSTILE["img"]: f"1.{score}", HOSTILE["xml"]: f"2.{score}"},
            python_distributions={HOSTILE["markdown"]: f"3.{score}",
                                  HOSTILE["terminal"]: f"4.{score}"},
            env={"MESSAGE": HOSTILE["xml"] + str(score)}),
        outputs=Outputs(exit_code=0, reason="ok", duration_s=1.0, metrics=names,
                        artifacts={f"{HOSTILE['img']}.bin": Artifact(str(score)[-1] * 64, 3)},
                        log_sha256=None, log_bytes=0, log_truncated=False),
        compare={"metrics": {"default": {"kind": "exact", "value": 0.0}},
                 "artifacts": "bitwise"},
        reprun_version="test")


@pytest.fixture(scope="module")
def hostile_comparison():
    return compare_records(hostile_record("run-a", 1.0), hostile_record("run-b", 2.0))


class Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_the_html_report_shows_job_strings_as_text_never_as_markup(hostile_comparison):
    page = render(hostile_comparison, "html")
    parser = Elements()
    parser.feed(page)
    assert not parser.tags & {"script", "img", "injected", "a"}
    text = "".join(parser.text)
    assert HOSTILE["html"] in text and HOSTILE["img"] in text


def test_the_markdown_report_escapes_job_strings(hostile_comparison):
    text = render(hostile_comparison, "md")
    for raw in ("<script>", "<img", "<injected/>", "](http://x)", "a|b"):
        assert raw not in text.replace("\\" + raw[0], ""), raw      # only escaped forms
    assert "\x1b" not in text and "\x07" not in text


def test_the_junit_report_is_valid_xml_whatever_the_job_wrote(hostile_comparison):
    text = render(hostile_comparison, "junit")
    root = ET.fromstring(text.encode())
    assert root.find(".//injected") is None
    names = {case.get("name") for case in root.iter("testcase")}
    assert any(HOSTILE["xml"] in (name or "") for name in names)


def test_the_terminal_report_prints_no_control_sequence_from_the_job(hostile_comparison):
    text = render(hostile_comparison, "terminal")
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]0;pwned\\x07" in text
    coloured = render(hostile_comparison, "terminal", color=True)
    assert "\x1b]" not in coloured and "\x1b[2J" not in coloured and "\x07" not in coloured


def test_the_json_report_keeps_job_strings_exactly(hostile_comparison):
    document = json.loads(render(hostile_comparison, "json"))
    flat = json.dumps(document)
    for raw in HOSTILE.values():
        assert json.dumps(raw)[1:-1] in flat


# --- the environment record is out of the job's reach -----------------------------------------

FORGE_THE_MANIFEST = r"""
import json, re, sys
# The marker framing the probe's sections is in the entrypoint the job can read.
marker = re.search(r"reprun_marker='([^']+)'", open("/reprun/wrap.sh").read()).group(1)
forged = (f"{marker} os_release\nID=ubuntu\nVERSION_ID=99.04\n"
          f"PRETTY_NAME=\"Ubuntu 99.04 SPOOFED\"\n{marker} os_release exit 0\n{marker} end\n")
tries = {}
for path in ("/reprun/manifest.txt", "/reprun/wrap.sh", "/reprun/forged.txt"):
    try:
        with open(path, "w") as handle:
            handle.write(forged)
        tries[path] = "written"
    except OSError as exc:
        tries[path] = exc.strerror
sys.stdout.write(forged)
sys.stdout.flush()
json.dump({"score": 1.0, "tries": len(tries)}, open("/out/metrics.json", "w"))
print(json.dumps(tries))
"""


@pytest.mark.engine
def test_a_job_cannot_rewrite_or_forge_the_environment_manifest(project):
    project.dataset()
    result = project.reprun("run", str(project.spec(script=FORGE_THE_MANIFEST)))
    assert result.returncode == 0, result.stderr
    run, = json.loads(project.reprun("runs", "--json").stdout)
    record = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)
    assert record["environment"]["os"]["id"] == "debian", record["environment"]["os"]
    assert "SPOOFED" not in json.dumps(record["environment"])
    folder = project.store / "runs" / run["id"]
    assert "SPOOFED" not in (folder / "reprun" / "manifest.txt").read_text()
    log = (folder / "log.txt").read_text()
    # What the job printed is its output, kept in the log; every write under /reprun failed.
    assert "Ubuntu 99.04 SPOOFED" in log
    tries = json.loads(log.strip().splitlines()[-1])
    assert set(tries.values()) == {"Read-only file system"}, tries
    assert not (folder / "reprun" / "forged.txt").exists()


WRITE_METRICS_AND_PRINT = """
import json
import math
json.dump({"score": 1.0}, open("/out/metrics.json", "w"))
print("trained")
"""


FLOOD_THE_PROBE = b"""
import sys
if sys.argv[0].endswith("pyprobe.py"):     # the environment probe, not the job
    block = b"x" * (1 << 20) + b"\\n"
    for _ in range(48):
        sys.stdout.buffer.write(block)
    sys.stdout.flush()
"""


@pytest.mark.engine
def test_a_probe_that_floods_its_output_is_cut_and_the_run_is_recorded(project):
    # The dataset carries a sitecustomize that the spec's PYTHONPATH makes the probe's Python
    # import: 48 MiB printed where the manifest is read.
    project.dataset(files={"train.csv": b"x,y\n1,2\n", "sitecustomize.py": FLOOD_THE_PROBE})
    spec = project.spec(script=WRITE_METRICS_AND_PRINT, extra="env: {PYTHONPATH: /data}\n")
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    run, = json.loads(project.reprun("runs", "--json").stdout)
    record = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)
    missing = record["environment"]["missing"]
    assert "cut" in missing["manifest"] and "cut" in missing["python"], missing
    assert record["environment"]["os"]["id"] == "debian"      # read before the flood
    folder = project.store / "runs" / run["id"]
    assert (folder / "reprun" / "manifest.txt").stat().st_size <= 8 << 20
    assert (folder / "log.txt").read_text() == "trained\n"    # none of it is the job's output


# --- the CPU count the job can read is the pinned one -----------------------------------------

COUNT_CPUS = """
import json, os, subprocess
counts = {"sched_getaffinity": len(os.sched_getaffinity(0)), "os_cpu_count": os.cpu_count()}
# nproc honours OMP_NUM_THREADS, which reprun pins too: the affinity is what is checked here.
plain = {k: v for k, v in os.environ.items() if not k.startswith("OMP_")}
counts["nproc"] = int(subprocess.run(["nproc"], capture_output=True, text=True, env=plain).stdout)
try:
    import joblib
    counts["joblib_cpu_count"] = joblib.cpu_count()
except ImportError:
    counts["joblib_cpu_count"] = -1
json.dump(counts, open("/out/metrics.json", "w"))
"""


@pytest.fixture(scope="module")
def cpu_counts(tmp_path_factory, example_ref, docker_client):
    """What each API says inside a run with `resources.cpus` 1, and 1.5 (a cpuset of 2) where
    the host has two CPUs: {cpus: (metrics, record)}."""
    from conftest import Project
    host_cpus = docker_client.info()["NCPU"]
    seen = {}
    for cpus in (1, 1.5) if host_cpus >= 2 else (1,):
        project = Project(tmp_path_factory.mktemp("cpus") / "repo", example_ref)
        project.dataset()
        spec = project.spec(script=COUNT_CPUS,
                            resources=f"{{cpus: {cpus}, memory: 512m, timeout: 2m}}")
        result = project.reprun("run", str(spec))
        assert result.returncode == 0, result.stderr
        run, = json.loads(project.reprun("runs", "--json").stdout)
        record = json.loads(project.reprun("runs", "show", run["id"], "--json").stdout)
        seen[cpus] = (record["outputs"]["metrics"], record)
    return seen


@pytest.mark.engine
@pytest.mark.parametrize("api", ["sched_getaffinity", "nproc", "os_cpu_count",
                                 "joblib_cpu_count"])
def test_the_cpu_count_the_job_reads_is_its_pinned_cpuset(cpu_counts, api):
    for cpus, (metrics, record) in cpu_counts.items():
        if metrics[api] == -1:
            pytest.skip(f"{api.split('_')[0]} is not installed in the example image")
        assert metrics[api] == math.ceil(cpus), (api, cpus, metrics)
        cpuset = record["environment"]["cpu"]["cpuset"]
        assert len(parse_cpuset(cpuset)) == math.ceil(cpus), cpuset
        assert record["environment"]["cpu"]["count"] == math.ceil(cpus)


@pytest.mark.engine
def test_parallel_runs_get_distinct_cpusets_and_the_diff_shows_them(project, docker_client,
                                                                    tmp_path):
    if docker_client.info()["NCPU"] < 2:
        pytest.skip("the host has one CPU: two runs cannot have distinct cpusets")
    project.dataset()
    spec = project.spec(script=COUNT_CPUS)
    result = project.reprun("verify", str(spec))
    assert result.returncode == 0, result.stderr
    runs = json.loads(project.reprun("runs", "--json").stdout)
    records = [json.loads(project.reprun("runs", "show", r["id"], "--json").stdout)
               for r in runs]
    cpusets = {r["environment"]["cpu"]["cpuset"] for r in records}
    assert len(cpusets) == 2, cpusets
    report = tmp_path / "diff.json"
    diff = project.reprun("diff", runs[0]["id"], runs[1]["id"], f"--report={report}")
    assert diff.returncode == 0, diff.stderr
    shown = json.loads(report.read_text())
    schema = REPO / "orchestrator" / "reports" / "report-v2.schema.json"
    jsonschema.validate(shown, json.loads(schema.read_text()))
    rows = shown["sections"]["environment"]
    assert [(r["section"], r["name"]) for r in rows] == [("cpuset", "cpuset")], rows
    # Incidental: the runs are still identical, and no input is said to differ.
    assert shown["verdict"] == "identical"
    assert all(row["same"] for row in shown["sections"]["inputs"])
