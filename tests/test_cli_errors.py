"""What reprun says when something goes wrong around a command, against the real engine: each
failure with its documented exit code and one paragraph, never a traceback."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_verify import build_spec


def test_a_rebuild_that_fails_in_check_is_an_infrastructure_failure_exit_4(project):
    project.dataset()
    spec = build_spec(project, "1.0")
    assert project.reprun("lock", str(spec)).returncode == 0
    dockerfile = project.root / "image" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN echo the mirror is gone >&2; exit 3\n")
    result = project.reprun("check", str(spec), "-q", "--junit", "check.xml")
    assert result.returncode == 4, result.stdout + result.stderr
    assert " 4  building " in result.stdout            # the exit and first cause columns
    assert "Traceback" not in result.stdout + result.stderr
    junit = (project.root / "check.xml").read_text()
    assert "failed: The command" in junit and "the mirror is gone" in junit


# --- crash reports ------------------------------------------------------------------------------

# reprun with a bug planted: its command raises, as a bug in any command would.
BUGGY = """
import sys
import orchestrator.cli.app as app
def broken():
    raise RuntimeError("planted bug")
app.command = broken
sys.argv = ["reprun", "--version"]
app.main()
"""


def crash(tmp_path: Path, state: Path, *, private_tmp: Path | None = None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_STATE_HOME": str(state)}
    command = [sys.executable, "-c", BUGGY]
    if private_tmp is not None:
        # This test's own /tmp: the old fixed path is planted there, not in the machine's /tmp.
        # What the command needs from the real /tmp (a checkout, its venv, this test's folder)
        # is bound back at the same path first.
        keep = sorted({str(p) for p in (REPO, Path(sys.prefix), tmp_path)
                       if Path(p).resolve().is_relative_to("/tmp")})
        binds = "".join(f'mkdir -p "$0"/{shlex.quote(k[len("/tmp/"):])} && '
                        f'mount --bind {shlex.quote(k)} "$0"/{shlex.quote(k[len("/tmp/"):])} && '
                        for k in keep)
        command = ["unshare", "--mount", "sh", "-c",
                   f'mount --make-rprivate / && {binds}mount --rbind "$0" /tmp && exec "$@"',
                   str(private_tmp), *command]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


def test_a_crash_report_is_a_new_private_file_in_the_users_state_folder(tmp_path):
    state = tmp_path / "state"
    result = crash(tmp_path, state)
    assert result.returncode == 4, result.stderr
    assert "internal error (RuntimeError: planted bug)" in result.stderr
    (report,) = (state / "reprun" / "crashes").iterdir()
    assert f"the traceback is in {report}" in result.stderr
    assert "planted bug" in report.read_text()
    assert report.stat().st_mode & 0o777 == 0o600
    assert (state / "reprun" / "crashes").stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="a private /tmp needs root and unshare")
@pytest.mark.parametrize("planted", ["symlink", "folder"])
def test_what_is_planted_at_the_old_fixed_path_is_left_alone(tmp_path, planted):
    # Inside the command's mount namespace this folder is /tmp: every path below is given as
    # the command sees it.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    victim = private_tmp / "root-only-file"
    victim.write_text("precious\n")
    old = private_tmp / "reprun-crash.txt"
    old.symlink_to("/tmp/root-only-file") if planted == "symlink" else old.mkdir()
    result = crash(tmp_path, Path("/tmp/state"), private_tmp=private_tmp)
    assert result.returncode == 4, result.stderr
    assert "the traceback is in /tmp/state/reprun/crashes/" in result.stderr
    assert "Traceback" not in result.stderr
    assert victim.read_text() == "precious\n"
    assert old.is_symlink() if planted == "symlink" else list(old.iterdir()) == []
    (report,) = (private_tmp / "state" / "reprun" / "crashes").iterdir()
    assert "planted bug" in report.read_text()


@pytest.mark.parametrize("planted", ["symlink", "file"])
def test_a_link_or_file_planted_at_the_crash_folder_is_refused_and_the_exit_code_stays(
        tmp_path, planted):
    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere"
    (state / "reprun").mkdir(parents=True)
    elsewhere.mkdir()
    folder = state / "reprun" / "crashes"
    folder.symlink_to(elsewhere) if planted == "symlink" else folder.write_text("")
    result = crash(tmp_path, state)
    assert result.returncode == 4, result.stderr
    assert "its traceback could not be written" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(elsewhere.iterdir()) == []
