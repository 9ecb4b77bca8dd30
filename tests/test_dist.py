"""Using reprun from one's own repository: the wheel `make dist` builds installs with pipx, and
the installed command scaffolds, locks and runs a spec against the real engine — so its shell
templates and JSON Schemas are inside the wheel, not only in this checkout."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from imagekit import import_tiny_image  # noqa: E402

pytestmark = [pytest.mark.engine, pytest.mark.xdist_group("dist")]


@pytest.fixture(scope="module")
def wheel() -> Path:
    built = subprocess.run(["make", "-C", str(REPO), "dist"], capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    wheels = sorted((REPO / "dist").glob("reprun-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """`reprun` as `pipx install` puts it on a user's PATH, away from this checkout."""
    if shutil.which("pipx") is None:
        pytest.skip("pipx is not installed; scripts/test-deps.sh installs it")
    home = tmp_path_factory.mktemp("pipx")
    env = {**os.environ, "PIPX_HOME": str(home / "home"), "PIPX_BIN_DIR": str(home / "bin")}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["pipx", "install", str(wheel)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return home / "bin" / "reprun"


def user_env(store: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "REPRUN_STORE": str(store)}


def test_the_wheel_carries_the_templates_and_schemas(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "orchestrator/spec/spec-v1.schema.json" in names
    assert "orchestrator/reports/report-v1.schema.json" in names
    shipped = {n for n in names if n.startswith("orchestrator/execution/templates/")}
    in_checkout = {f"orchestrator/execution/templates/{p.name}"
                   for p in (REPO / "orchestrator" / "execution" / "templates").glob("*.sh")}
    assert shipped == in_checkout and in_checkout


def test_a_pipx_installed_reprun_scaffolds_locks_and_runs_a_spec_in_another_repository(
        installed, tmp_path, docker_client):
    base = f"reprun-test/adopt-dist-{secrets.token_hex(4)}:1"
    import_tiny_image(docker_client, base)
    repository = tmp_path / "team-repo"
    (repository / ".git").mkdir(parents=True)
    (repository / "Dockerfile").write_text(f"FROM {base}\nCOPY train.sh /train.sh\n")
    (repository / "train.sh").write_text(
        "echo \"{\\\"seed\\\": $1}\" > /out/metrics.json\n")
    (repository / "data").mkdir()
    (repository / "data" / "rows.csv").write_text("x\n1\n")
    env = user_env(repository / ".reprun")
    try:
        version = subprocess.run([str(installed), "--version"], env=env, capture_output=True,
                                 text=True)
        assert version.returncode == 0 and version.stdout.startswith("reprun ")

        init = subprocess.run([str(installed), "init", "--dataset", "data",
                               "--command", "sh /train.sh {seed}"], cwd=repository, env=env,
                              capture_output=True, text=True, timeout=600)
        assert init.returncode == 0, init.stderr
        spec = repository / "reprun.yaml"
        text = spec.read_text()
        assert "# runs and baselines belong to this name" in text
        assert "digest: sha256:" in text and "sha256: null" not in text, "locked at once"
        assert ".reprun/" in (repository / ".dockerignore").read_text().splitlines()

        validated = subprocess.run([str(installed), "validate", str(spec)], env=env,
                                   capture_output=True, text=True)
        assert validated.returncode == 0, validated.stderr
        run = subprocess.run([str(installed), "run", "-q", str(spec)], cwd=repository, env=env,
                             capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr
        listed = subprocess.run([str(installed), "runs", "--json"], cwd=repository, env=env,
                                capture_output=True, text=True)
        run_id = json.loads(listed.stdout)[0]["id"]
        shown = subprocess.run([str(installed), "runs", "show", run_id, "--json"],
                               cwd=repository, env=env, capture_output=True, text=True)
        assert json.loads(shown.stdout)["outputs"]["metrics"] == {"seed": 42}

        completion = subprocess.run([str(installed), "--show-completion", "bash"], env=env,
                                    capture_output=True, text=True)
        assert completion.returncode == 0 and "_REPRUN_COMPLETE" in completion.stdout
    finally:
        for image in docker_client.api.images(name="reprun/team-repo"):
            docker_client.images.remove(image["Id"], force=True)
        docker_client.images.remove(base, force=True)


def test_init_refuses_to_overwrite_and_names_a_missing_dockerfile(installed, tmp_path):
    repository = tmp_path / "repo"
    (repository / ".git").mkdir(parents=True)
    env = user_env(repository / ".reprun")
    missing = subprocess.run([str(installed), "init"], cwd=repository, env=env,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "there is no Dockerfile at Dockerfile" in missing.stderr
    (repository / "reprun.yaml").write_text("# mine\n")
    (repository / "Dockerfile").write_text("FROM scratch\n")
    again = subprocess.run([str(installed), "init", "--no-lock"], cwd=repository, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert (repository / "reprun.yaml").read_text() == "# mine\n"
    assert "Traceback" not in missing.stderr + again.stderr
