"""Reaching the engine: an address reprun cannot read is one sentence, exit 4."""
from __future__ import annotations

import pytest


@pytest.mark.engine
@pytest.mark.parametrize("address", ["tcp://[::1", "tcp://localhost:port"])
def test_a_malformed_docker_host_is_one_sentence_with_exit_4(project, address):
    project.dataset()
    spec = project.spec(script="print('never runs')")
    for command in (["run", str(spec)], ["gc"]):
        result = project.reprun(*command, extra_env={"DOCKER_HOST": address})
        assert result.returncode == 4, (command, result.stderr)
        said = result.stderr.strip().splitlines()[-1]
        assert said.startswith(f"reprun: DOCKER_HOST={address!r} is not an engine address")
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert not list(project.store.glob("runs/*/record.json"))
