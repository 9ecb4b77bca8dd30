"""The `reprun` command handed to a warm process: same outcome, streams, signals, exit codes.

Every test has its own warm process (REPRUN_WARM names it) and its own log (under TMPDIR), and
stops it at the end. They run one after another: one of them edits a file of reprun, which
retires every warm process that sees it.
"""
from __future__ import annotations

import os
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import REPO, WRITE_METRICS, containers

COMMAND = str(Path(sys.executable).with_name("reprun"))     # the console script users run
SLEEPER = "import time; print('started', flush=True); time.sleep(120)"
pytestmark = pytest.mark.xdist_group("warm")


class Warm:
    """One test's warm process: its environment, its log, and the commands run through it."""

    def __init__(self, project):
        self.project = project
        self.tmp = Path(tempfile.mkdtemp(prefix="rw"))
        self.env = {**os.environ, "REPRUN_STORE": str(project.store), "TMPDIR": str(self.tmp),
                    "REPRUN_WARM": f"test-{uuid.uuid4().hex[:8]}"}
        self.env.pop("PYTHONPATH", None)
        self.log = self.tmp / f"reprun-warm-{os.getuid()}" / "warm.log"

    def run(self, *args: str, warm: bool = True, **kwargs) -> subprocess.CompletedProcess:
        env = self.env if warm else {**self.env, "REPRUN_WARM": "0"}
        return subprocess.run([COMMAND, *args], cwd=self.project.root, env=env, text=True,
                              stdout=kwargs.pop("stdout", subprocess.PIPE),
                              stderr=kwargs.pop("stderr", subprocess.PIPE), timeout=300, **kwargs)

    def popen(self, *args: str, **kwargs) -> subprocess.Popen:
        return subprocess.Popen([COMMAND, *args], cwd=self.project.root, env=self.env,
                                text=True, **kwargs)

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def serving(self) -> list[int]:
        return [int(m[1]) for m in (re.search(r"\[(\d+)\] serving ", line) for line in self.lines())
                if m]

    def up(self) -> int:
        """Start it (a first command does) and wait until it serves: its pid."""
        assert self.run("--version").returncode == 0
        deadline = time.monotonic() + 60
        while not self.serving():
            assert time.monotonic() < deadline, f"no warm process came up: {self.lines()}"
            time.sleep(0.1)
        return self.serving()[-1]

    def assert_served(self, words: str) -> None:
        """The warm process ran a command whose log line has these words (the whole log if not)."""
        if not self.served(words):
            pytest.fail(f"the warm process did not run {words!r}; its log:\n" + "\n".join(self.lines()))

    def served(self, words: str) -> list[str]:
        """Commands the warm process ran (it logs each before its caller learns the outcome)."""
        return [line for line in self.lines() if words in line
                and (": exit " in line or ": killed by signal " in line)]

    def stop(self) -> None:
        for pid in self.serving():
            try:            # only if it is still ours: a pid that left may have been reused
                if b"orchestrator.warm" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGTERM)
            except (OSError, ProcessLookupError):
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture
def warm(project):
    handle = Warm(project)
    yield handle
    handle.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and \
                    int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def sockets_of(pid: int) -> list[str]:
    found = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd).startswith("socket:"):
                found.append(fd.name)
        except OSError:
            pass
    return found


def ignores(pid: int, signum: int) -> bool:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)", status, re.M)[1], 16)
    return bool(mask >> (signum - 1) & 1)


def record_of(project, run_id: str) -> dict:
    import json
    with sqlite3.connect(project.store / "store.db") as db:
        row = db.execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
    return json.loads(row[0]) if row else {}


def wait_for_container(docker_client, name: str):
    deadline, running = time.monotonic() + 60, []
    while not running and time.monotonic() < deadline:
        running = containers(docker_client, running=True, label=f"io.reprun.spec={name}")
        time.sleep(0.2)
    assert running, "the job's container never started"
    return running[0]


def test_a_warm_process_runs_a_command_as_the_command_would_have(project, warm):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS).name          # relative: the client's folder counts
    warm.up()
    result = warm.run("run", spec)
    assert result.returncode == 0, result.stderr
    warm.assert_served("run job.yaml: exit 0")
    run_id = re.search(r"run (\S+): succeeded", result.stdout)[1]
    assert record_of(project, run_id)["outputs"]["metrics"]["score"] == 0.7


def test_errors_and_exit_codes_are_the_same_warm_or_not(project, warm):
    warm.up()
    here, there = warm.run("run", "no-such.yaml", warm=False), warm.run("run", "no-such.yaml")
    assert there.returncode == here.returncode == 2
    assert there.stderr == here.stderr and "no-such.yaml" in there.stderr
    warm.assert_served("run no-such.yaml: exit 2")


def test_with_REPRUN_WARM_0_no_warm_process_is_started(project, warm):
    assert warm.run("--version", warm=False).returncode == 0
    time.sleep(1)
    assert not warm.log.exists()


def test_the_command_sees_the_terminal_it_was_started_from(project, warm):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS).name
    warm.up()
    leader, follower = os.openpty()
    try:
        result = warm.run("run", spec, stderr=follower, stdout=subprocess.PIPE)
        os.close(follower)
        seen, deadline = b"", time.monotonic() + 30
        while time.monotonic() < deadline:      # a writer left holding it must fail, not hang
            if not select.select([leader], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:        # EIO: every writer has closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        else:
            pytest.fail("the terminal was still held open 30 s after the command ended")
    finally:
        os.close(leader)
    assert result.returncode == 0
    warm.assert_served("run job.yaml: exit 0")
    assert b"\r\x1b[K" in seen, seen[-500:]          # drawn as on a terminal, not plain lines


def test_an_edit_to_reprun_retires_the_warm_process(project, warm):
    first = warm.up()
    source = REPO / "orchestrator" / "lock.py"
    before = source.stat()
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    try:
        assert warm.run("--version").returncode == 0    # refused, so run by the command itself
    finally:
        os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert any("leaving: reprun's files changed" in line for line in warm.lines())
    deadline = time.monotonic() + 60
    while warm.serving()[-1] == first:                  # and a fresh one was started
        assert time.monotonic() < deadline, warm.lines()
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_command_reaches_the_run(project, warm, docker_client, signum):
    project.dataset()
    name = f"warm-signal-{uuid.uuid4().hex[:6]}"
    spec = project.spec(name=name, script=SLEEPER)
    warm.up()
    process = warm.popen("run", str(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    container = wait_for_container(docker_client, name)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    warm.assert_served(": exit 130")     # run by the warm process, signal passed on
    run_id = container.labels["io.reprun.run-id"]
    assert not containers(docker_client, label=f"io.reprun.run-id={run_id}")
    assert record_of(project, run_id)["status"] == "interrupted"


@pytest.mark.parametrize("victim", ["client", "session"])
def test_a_run_nobody_waits_for_any_more_is_stopped_and_recorded(project, warm, docker_client,
                                                                 victim):
    """The `reprun` process killed outright (a CI timeout), or the warm session serving it."""
    project.dataset()
    name = f"warm-orphan-{uuid.uuid4().hex[:6]}"
    spec = project.spec(name=name, script=SLEEPER)
    server = warm.up()
    process = warm.popen("run", str(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    container = wait_for_container(docker_client, name)
    if victim == "client":
        process.kill()
    else:
        sessions = children(server)
        assert len(sessions) == 1, sessions
        os.kill(sessions[0], signal.SIGKILL)
    _, stderr = process.communicate(timeout=60)
    if victim == "session":
        assert process.returncode == 4
        assert "went away before it finished" in stderr and "Traceback" not in stderr
    run_id = container.labels["io.reprun.run-id"]
    deadline = time.monotonic() + 60
    while record_of(project, run_id).get("status") != "interrupted":
        assert time.monotonic() < deadline, record_of(project, run_id)
        time.sleep(0.2)
    assert not containers(docker_client, label=f"io.reprun.run-id={run_id}")
    if victim == "client":
        deadline = time.monotonic() + 30
        while not warm.served(": exit 130"):          # SIGTERM from its session
            assert time.monotonic() < deadline, warm.lines()
            time.sleep(0.1)


def test_the_command_takes_on_the_callers_environment_umask_and_folder(project, warm):
    """The warm process was started by another command, under another store."""
    warm.up()
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    other = project.root / "elsewhere"
    result = subprocess.run(f"umask 077 && exec {COMMAND} run {spec.name}", shell=True,
                            cwd=project.root, env={**warm.env, "REPRUN_STORE": str(other)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warm.assert_served(f"run {spec.name}: exit 0")
    records = list(other.glob("runs/*/record.json"))
    assert len(records) == 1 and not project.store.exists()
    assert records[0].stat().st_mode & 0o777 == 0o600


def test_a_stopped_warm_process_is_waited_for_briefly_then_the_command_runs_here(project, warm):
    server = warm.up()
    os.kill(server, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = warm.run("--version")
        waited = time.monotonic() - started
        assert result.returncode == 0 and "reprun" in result.stdout
        assert waited < 20, waited
        interrupted = warm.popen("--version", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not sockets_of(interrupted.pid):    # connected: its handlers are in place
            assert time.monotonic() < deadline
            time.sleep(0.05)
        interrupted.send_signal(signal.SIGINT)
        _, stderr = interrupted.communicate(timeout=20)
        assert interrupted.returncode == 130 and "nothing ran" in stderr, stderr
    finally:
        os.kill(server, signal.SIGCONT)
    time.sleep(2)      # it now answers the two requests whose clients gave up: neither may run
    assert not warm.served("--version"), warm.lines()


def test_a_signal_the_caller_ignores_is_ignored_by_the_command(project, warm, docker_client):
    """`nohup reprun run ...`: the hang-up at logout must not end the run."""
    project.dataset()
    name = f"warm-nohup-{uuid.uuid4().hex[:6]}"
    spec = project.spec(name=name, script="import time; time.sleep(3)\n" + WRITE_METRICS)
    server = warm.up()
    process = warm.popen("run", str(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for_container(docker_client, name)
    session, = children(server)
    command, = children(session)
    assert ignores(command, signal.SIGHUP) and not ignores(command, signal.SIGINT)
    os.killpg(command, signal.SIGHUP)          # the hang-up, as the terminal's group gets it
    process.send_signal(signal.SIGHUP)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    warm.assert_served(f"run {spec}: exit 0")


def test_the_command_runs_at_its_callers_io_priority(project, warm, docker_client):
    """`ionice -c3 reprun run ...` on a shared disk; the warm process was started without."""
    project.dataset()
    name = f"warm-ionice-{uuid.uuid4().hex[:6]}"
    spec = project.spec(name=name, script="import time; time.sleep(3)\n" + WRITE_METRICS)
    server = warm.up()
    process = subprocess.Popen(["ionice", "-c", "3", COMMAND, "run", str(spec)],
                               cwd=project.root, env=warm.env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for_container(docker_client, name)
    session, = children(server)
    command, = children(session)
    assert io_class(command) == "idle" and io_class(server) != "idle"
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    warm.assert_served(f"run {spec}: exit 0")


def io_class(pid: int) -> str:
    return subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True,
                          check=True).stdout.split(":")[0].strip()


def test_a_command_killed_by_a_signal_ends_its_caller_the_same_way(project, warm):
    """Killed while it hashes a big dataset, before any container exists to leave behind."""
    big = project.root / "big"
    big.mkdir(parents=True)
    with open(big / "zeros.bin", "wb") as f:
        f.truncate(16 << 30)                   # sparse: 16 GiB to hash, nothing on disk
    spec = project.spec(dataset="big", sha256="a" * 64)
    server = warm.up()
    process = warm.popen("run", str(spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        assert time.monotonic() < deadline and process.poll() is None
        sessions = children(server)
        commands = children(sessions[0]) if sessions else []
        if commands and bytes_read(commands[0]) > 256 << 20:
            break
        time.sleep(0.05)
    os.kill(commands[0], signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    warm.assert_served("killed by signal 9")


def bytes_read(pid: int) -> int:
    try:
        io = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    return int(re.search(r"^rchar: (\d+)", io, re.M)[1])


def test_commands_started_together_start_one_warm_process_and_all_succeed(project, warm):
    first = [warm.popen("--version", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in first)
    deadline = time.monotonic() + 60
    while not warm.serving():
        assert time.monotonic() < deadline, warm.lines()
        time.sleep(0.1)
    time.sleep(1)              # any other would have bound by now, or left
    assert len(warm.serving()) == 1, warm.lines()
    assert warm.run("--version").returncode == 0
    warm.assert_served("--version: exit 0")


def test_a_command_started_with_a_closed_stream_runs_in_its_own_process(project, warm):
    """A closed descriptor 0-2 would be taken by the connection and handed over as a stream."""
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    warm.up()
    result = subprocess.run(f"exec {COMMAND} run {spec.name} 2>&- <&-", shell=True,
                            cwd=project.root, env=warm.env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout
    assert "succeeded" in result.stdout
    assert not warm.served("run"), warm.lines()
