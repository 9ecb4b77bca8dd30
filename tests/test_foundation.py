"""The ground everything stands on: the engine bring-up, the offline base image, the registry."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from conftest import REGISTRY, REPO

pytestmark = pytest.mark.engine


def engine_script(*, env: dict | None = None, user: str | None = None) -> subprocess.Popen:
    script = REPO / "scripts" / "engine.sh"
    if user:
        # The checkout may sit in a folder only root can enter: give the other user a copy.
        folder = Path(tempfile.mkdtemp(prefix="reprun-engine-sh-"))
        folder.chmod(0o755)
        script = Path(shutil.copy(script, folder / "engine.sh"))
        script.chmod(0o755)
    command = ["bash", str(script)]
    if user:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def dockerd_pids() -> list[str]:
    return subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout.split()


def test_make_engine_twice_at_once_reuses_the_running_engine_and_registry():
    before = dockerd_pids()
    first, second = engine_script(), engine_script()
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert first.returncode == second.returncode == 0, outputs
    assert all("already answers" in err or "using the engine" in err for _, err in outputs)
    assert dockerd_pids() == before


def test_without_root_and_without_an_engine_it_says_what_to_do():
    process = engine_script(env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                                 "DOCKER_HOST": "unix:///nonexistent/docker.sock"}, user="65534")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 4
    assert "not root" in err and "DOCKER_HOST" in err


def test_the_registry_answers_on_loopback_only():
    with urllib.request.urlopen(f"http://{REGISTRY}/v2/_catalog", timeout=5) as response:
        catalog = json.load(response)
    assert {"reprun/base", "reprun/sklearn"} <= set(catalog["repositories"])
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout
    port = REGISTRY.rsplit(":", 1)[1]
    binds = [line.split()[3] for line in listening.splitlines() if line.split()[3].endswith(f":{port}")]
    assert binds == [REGISTRY]


def test_the_engine_has_no_bridge_network(docker_client):
    names = {n.name for n in docker_client.networks.list()}
    assert "bridge" not in names


def test_the_base_image_has_what_the_example_needs(docker_client):
    out = docker_client.containers.run(
        "reprun/base:bookworm", ["python3", "-c",
                                 "import numpy, sklearn, scipy, threadpoolctl; print(sklearn.__version__)"],
        network_mode="none", remove=True)
    assert out.decode().strip().startswith("1.")


def test_the_base_image_is_pushed_and_referable_by_digest(docker_client):
    image = docker_client.images.get("reprun/base:bookworm")
    digests = [d for d in image.attrs["RepoDigests"] if d.startswith(f"{REGISTRY}/reprun/base@sha256:")]
    assert digests
    assert docker_client.images.get(digests[0]).id == image.id
