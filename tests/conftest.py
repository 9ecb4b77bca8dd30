"""Shared fixtures: a throwaway repository with specs and datasets, a store, the real engine."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REPRUN = [sys.executable, "-m", "orchestrator.cli"]
REGISTRY = os.environ.get("REPRUN_REGISTRY", "127.0.0.1:5000")
EXAMPLE_IMAGE = f"{REGISTRY}/reprun/sklearn:latest"
TORCH_IMAGE = f"{REGISTRY}/reprun/torch:latest"


@pytest.fixture(scope="session")
def docker_client():
    import docker
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as exc:  # pragma: no cover - the suite needs `make engine`
        pytest.fail(f"no Docker engine answers ({exc}); run `make engine images` first")
    return client


def registry_ref(docker_client, image_name: str) -> str:
    """An image of scripts/images.sh by its digest in the local registry, as a pinned spec
    refers to it."""
    try:
        image = docker_client.images.get(image_name)
    except Exception:  # pragma: no cover - the suite needs `make images`
        pytest.fail(f"no {image_name} in the engine; run `make images` first")
    digests = [d for d in image.attrs["RepoDigests"] if d.startswith(f"{REGISTRY}/")]
    assert digests, f"{image_name} was never pushed; run `make images`"
    return digests[0]


@pytest.fixture(scope="session")
def example_ref(docker_client) -> str:
    """The example image by registry digest."""
    return registry_ref(docker_client, EXAMPLE_IMAGE)


@pytest.fixture(scope="session")
def torch_ref(docker_client) -> str:
    """The image with Debian's PyTorch (images/torch) by registry digest."""
    return registry_ref(docker_client, TORCH_IMAGE)


def containers(client, *, running: bool = False, **filters) -> list:
    """Containers matching the engine's filters (label=..., id=...); one that another process
    removes while they are listed is left out, not an error."""
    if running:
        filters["status"] = "running"
    return client.containers.list(all=not running, ignore_removed=True, filters=filters)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Project:
    """A scratch repository holding specs and datasets, with its own store."""

    def __init__(self, root: Path, image_ref: str):
        self.root = root
        self.image_ref = image_ref
        (root / ".git").mkdir(parents=True, exist_ok=True)
        self.store = root / ".reprun"

    def dataset(self, name: str = "data", files: dict[str, bytes] | None = None) -> Path:
        folder = self.root / name
        for rel, content in (files or {"train.csv": b"x,y\n1,2\n3,4\n"}).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(content)
        return folder

    def spec(self, *, name: str = "job", script: str = "", command: list[str] | None = None,
             dataset: str = "data", sha256: str | None = None, extra: str = "",
             image: str | None = None, filename: str | None = None, resources: str | None = None,
             compare: str = "{metrics: {default: exact}, artifacts: bitwise}") -> Path:
        """A spec whose job runs `script` (Python) in the example image."""
        from orchestrator.dataset.tree import hash_dataset
        if sha256 is None:
            sha256 = hash_dataset(self.root / dataset).sha256
        if command is None:
            literal = textwrap.dedent(script).replace("{", "{{").replace("}", "}}")
            command = ["python3", "-c", literal, "{seed}"]
        text = textwrap.dedent(f"""\
            version: 1
            name: {name}
            image:
              ref: {image or self.image_ref}
            dataset:
              path: {dataset}
              sha256: {sha256}
              mount: /data
            seed: 7
            command: {json.dumps(command)}
            outputs: {{dir: /out, metrics: metrics.json, artifacts: ["*.bin"]}}
            compare: {compare}
            resources: {resources or '{cpus: 1, memory: 512m, timeout: 2m}'}
            """) + extra
        path = self.root / (filename or f"{name}.yaml")
        path.write_text(text)
        return path

    def reprun(self, *args: str, timeout: float = 300, extra_env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
        env = {**os.environ, "REPRUN_STORE": str(self.store), "PYTHONPATH": str(REPO),
               **(extra_env or {})}
        return subprocess.run([*REPRUN, *args], cwd=self.root, env=env, capture_output=True,
                              text=True, timeout=timeout, **kwargs)


@pytest.fixture
def project(tmp_path, example_ref) -> Project:
    return Project(tmp_path / "repo", example_ref)


# A job that trains nothing but writes deterministic metrics and an artifact from its seed.
WRITE_METRICS = """
import json, sys
seed = int(sys.argv[1])
json.dump({"score": seed / 10, "nested": {"loss": 0.25}}, open("/out/metrics.json", "w"))
open("/out/model.bin", "wb").write(bytes([seed]) * 16)
"""


# A test that asks for the engine (directly or through a project) is an engine test, marked or
# not: `make test-fast` (-m 'not engine') then runs exactly the tests that need no engine.
ENGINE_FIXTURES = frozenset({"docker_client", "example_ref", "project"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if ENGINE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.engine)
