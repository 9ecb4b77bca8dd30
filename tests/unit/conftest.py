"""Unit-test fixtures: a scratch project on disk, a real store file, and the fake executor."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from orchestrator.events import RunObserver
from unit.fake_executor import REPO_DIGEST, FakeExecutor


class UnitProject:
    """Spec files and a dataset in a scratch folder, with a store; jobs run on the fake."""

    def __init__(self, root: Path):
        self.root = root
        (root / ".git").mkdir(parents=True)     # the repository a spec's paths stay inside
        self.data = root / "data"
        self.data.mkdir(parents=True)
        (self.data / "train.csv").write_bytes(b"x,y\n1,2\n")
        from orchestrator.store.db import Store
        self.store = Store(root / ".reprun")

    def spec_file(self, name: str = "job", *, seed: int = 7, extra: str = "",
                  cpus: float = 1) -> Path:
        from orchestrator.dataset.tree import hash_dataset
        text = textwrap.dedent(f"""\
            version: 1
            name: {name}
            image:
              ref: {REPO_DIGEST}
            dataset:
              path: data
              sha256: {hash_dataset(self.data).sha256}
              mount: /data
            seed: {seed}
            command: ["train", "{{seed}}"]
            outputs: {{dir: /out, metrics: metrics.json, artifacts: ["*.bin"]}}
            compare: {{metrics: {{default: exact}}, artifacts: bitwise}}
            resources: {{cpus: {cpus}, memory: 512m, timeout: 2m}}
            """) + extra
        path = self.root / f"{name}.yaml"
        path.write_text(text)
        return path

    def spec(self, name: str = "job", **kwargs):
        from orchestrator.spec.load import load_spec
        return load_spec(self.spec_file(name, **kwargs))


@pytest.fixture
def unit(tmp_path) -> UnitProject:
    return UnitProject(tmp_path / "repo")


@pytest.fixture
def quiet() -> RunObserver:
    return RunObserver()


@pytest.fixture
def fake() -> FakeExecutor:
    return FakeExecutor()
