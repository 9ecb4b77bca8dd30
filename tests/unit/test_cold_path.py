"""Commands that need no engine start cold without the Docker SDK: --version, --help, validate,
runs, runs show, diff, report and lock --check of a spec whose image is pinned by digest. Each runs as
the user runs it, in its own interpreter, with no engine to reach."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.workflows import verify as workflow
from unit.fake_executor import FakeExecutor

REPO = Path(__file__).resolve().parents[2]

# The command as `reprun` runs it; at its exit, whether the Docker SDK was ever loaded.
COMMAND = """
import atexit, sys
atexit.register(lambda: print("docker loaded" if "docker" in sys.modules else "no docker",
                              file=sys.stderr))
sys.argv = ["reprun", *sys.argv[1:]]
from orchestrator.cli.app import main
main()
"""


def reprun(unit, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPRUN_STORE": str(unit.store.root), "PYTHONPATH": str(REPO),
           "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.run([sys.executable, "-c", COMMAND, *args], cwd=unit.root, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def recorded(unit, quiet):
    """Two recorded runs of one spec and the report comparing them."""
    outcome = workflow.verify(unit.spec(), store=unit.store, engine=FakeExecutor(),
                              observer=quiet)
    (written,) = outcome.reports
    return written


def test_commands_that_need_no_engine_never_load_the_docker_sdk(unit, recorded):
    a, b = recorded.comparison.a.id, recorded.comparison.b.id
    spec = unit.spec_file()      # its image pinned by digest: lock --check has nothing to ask
    for args, code in ((["--version"], 0), (["--help"], 0), (["validate", str(spec)], 0),
                       (["runs"], 0), (["runs", "show", a], 0), (["diff", a, b], 0),
                       (["report", str(recorded.saved), "--format", "md"], 0),
                       (["lock", "--check", str(spec)], 0)):
        result = reprun(unit, *args)
        assert result.returncode == code, (args, result.stderr)
        assert result.stderr.rstrip().endswith("no docker"), (args, result.stderr)


def test_the_probe_sees_the_sdk_where_a_command_needs_the_engine(unit):
    # The check above could pass on a probe that never sees the SDK: `run` loads it.
    result = reprun(unit, "run", str(unit.spec_file()))
    assert result.returncode == 4, result.stderr
    assert result.stderr.rstrip().endswith("docker loaded"), result.stderr
