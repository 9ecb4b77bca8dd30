"""Built images against the real engine: what went into a build is recorded with it, a pinned
image is run as long as its inputs are unchanged, a changed input is named, no tag ever leaves
a pinned image, and `check` rebuilds one context once."""
from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from imagekit import import_tiny_image  # noqa: E402

pytestmark = pytest.mark.engine

JOB = "echo '{\"score\": 1}' > /out/metrics.json\n"


@pytest.fixture
def tiny_base(docker_client):
    """A base image of a few MiB, unique to the test, removed afterwards."""
    tag = f"reprun-test/adopt-base-{secrets.token_hex(4)}:1"
    image = import_tiny_image(docker_client, tag)
    yield tag
    try:
        docker_client.images.remove(image.id, force=True)
    except Exception:
        pass


@pytest.fixture
def built_specs(docker_client):
    """Spec names whose built images the test removes at the end."""
    names: list[str] = []
    yield names
    # The raw listing: other tests remove images meanwhile, which a listing of objects trips on.
    ours = {f"reprun/{n}" for n in names}
    for image in docker_client.api.images():
        if any(tag.rpartition(":")[0] in ours for tag in image.get("RepoTags") or ()):
            try:
                docker_client.images.remove(image["Id"], force=True)
            except Exception:
                pass


def context(project, base: str, *, dockerfile_tail: str = "", files: dict | None = None) -> Path:
    folder = project.root / "ctx"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Dockerfile").write_text(f"FROM {base}\nCOPY job.sh /job.sh\n{dockerfile_tail}")
    for name, text in {"job.sh": JOB, **(files or {})}.items():
        (folder / name).write_text(text)
    return folder


def build_spec(project, name: str, built_specs: list, args: str = "") -> Path:
    project.dataset()
    built_specs.append(name)
    path = project.root / f"{name}.yaml"
    path.write_text(f"""version: 1
name: {name}
image:
  build:
    context: ctx
{args}dataset:
  path: data
seed: 7
command: [sh, /job.sh]
resources: {{cpus: 1, memory: 256m, timeout: 2m}}
""")
    return path


def pinned_id(spec: Path) -> str:
    return re.search(r"digest: (sha256:[0-9a-f]{64})", spec.read_text())[1]


def id_tag(name: str, image_id: str) -> str:
    return f"reprun/{name}:{image_id.removeprefix('sha256:')[:12]}"


def runs(project) -> list[dict]:
    return json.loads(project.reprun("runs", "--json").stdout)


def test_a_restored_image_with_unchanged_inputs_runs_without_a_rebuild(
        project, docker_client, tiny_base, built_specs):
    """rerun --from-archive brings the image back, not its build cache: a rebuild would give
    another ID; the pinned image, whose recorded inputs still match, is what runs."""
    context(project, tiny_base)
    spec = build_spec(project, "restored", built_specs)
    locked = project.reprun("lock", str(spec))
    assert locked.returncode == 0, locked.stderr
    pinned = pinned_id(spec)
    saved = b"".join(docker_client.images.get(pinned).save(named=False))
    docker_client.images.remove(pinned, force=True)      # the image and its build cache gone
    docker_client.images.load(saved)                     # as an archive restores it: by ID
    assert docker_client.images.get(pinned).tags == []

    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    assert "build [" not in result.stderr, "nothing was rebuilt"
    record = json.loads(project.reprun("runs", "show", runs(project)[0]["id"], "--json").stdout)
    assert record["inputs"]["image"]["id"] == pinned
    assert id_tag("restored", pinned) in docker_client.images.get(pinned).tags


def test_a_changed_build_input_is_named_and_the_spec_sent_to_lock(
        project, docker_client, tiny_base, built_specs):
    context(project, tiny_base)
    spec = build_spec(project, "changed", built_specs)
    assert project.reprun("lock", str(spec)).returncode == 0
    (project.root / "ctx" / "job.sh").write_text(JOB + "echo changed\n")
    (project.root / "ctx" / "extra.txt").write_text("new\n")

    result = project.reprun("run", str(spec))
    assert result.returncode == 3, result.stderr
    assert "job.sh changed" in result.stderr and "extra.txt was added" in result.stderr
    assert "reprun lock" in result.stderr
    assert "base" not in result.stderr, "nothing about the base changed"
    assert runs(project) == [], "the old image is never run in place of the new inputs"


def test_a_changed_build_argument_is_named(project, docker_client, tiny_base, built_specs):
    context(project, tiny_base, dockerfile_tail="ARG LEVEL\n")
    spec = build_spec(project, "argument", built_specs, args="    args: {LEVEL: '1'}\n")
    assert project.reprun("lock", str(spec)).returncode == 0
    spec.write_text(spec.read_text().replace("LEVEL: '1'", "LEVEL: '2'"))
    result = project.reprun("run", str(spec))
    assert result.returncode == 3, result.stderr
    assert "the build argument LEVEL is now 2 (was 1)" in result.stderr


def test_lock_check_says_when_the_pins_are_current(project, docker_client, tiny_base, built_specs):
    context(project, tiny_base)
    spec = build_spec(project, "current", built_specs)
    assert project.reprun("lock", str(spec)).returncode == 0
    checked = project.reprun("lock", "--check", str(spec))
    assert checked.returncode == 0, checked.stderr
    assert f"{spec}: pins are current" in checked.stdout


def test_prune_after_a_rebuild_keeps_the_pinned_image(project, docker_client, tiny_base,
                                                      built_specs):
    """A rebuild used to move `reprun/<spec>:built` to the new image, leaving the pinned one
    dangling, and a routine prune deleted it."""
    token = secrets.token_hex(4)
    context(project, tiny_base, dockerfile_tail=f"LABEL io.reprun.test={token}\n")
    spec = build_spec(project, "pruned", built_specs)
    assert project.reprun("lock", str(spec)).returncode == 0
    pinned = pinned_id(spec)
    (project.root / "ctx" / "job.sh").write_text(JOB + "echo v2\n")
    checked = project.reprun("lock", "--check", str(spec))     # builds v2, pins nothing
    assert checked.returncode == 1, checked.stderr
    rebuilt = re.search(r"-> (sha256:[0-9a-f]{64})", checked.stderr)[1]
    assert rebuilt != pinned

    # Scoped to this test's images: other tests on the engine keep their dangling images.
    subprocess.run(["docker", "image", "prune", "-f", "--filter", f"label=io.reprun.test={token}"],
                   check=True, capture_output=True)
    image = docker_client.images.get(pinned)
    assert id_tag("pruned", pinned) in image.tags
    assert id_tag("pruned", rebuilt) in docker_client.images.get(rebuilt).tags
    result = project.reprun("run", str(spec))
    assert result.returncode == 3 and "job.sh changed" in result.stderr, result.stderr


class BuildCounter:
    """Counts the builds that run the Dockerfile's RUN step: each one connects here (the build
    uses the host network; this listens on the loopback address only)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.count = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.count += 1
            connection.close()

    def close(self) -> None:
        self.server.close()


def test_check_over_four_specs_of_one_context_rebuilds_it_once(project, docker_client, tiny_base,
                                                               built_specs):
    counter = BuildCounter()
    try:
        context(project, tiny_base, dockerfile_tail=(
            "ARG PORT\nRUN /bin/busybox timeout 10 /bin/busybox nc 127.0.0.1 $PORT "
            "</dev/null || true\n"))
        specs = [build_spec(project, f"shared-{i}", built_specs,
                            args=f"    args: {{PORT: '{counter.port}'}}\n") for i in range(4)]
        locked = project.reprun("lock", *map(str, specs))
        assert locked.returncode == 0, locked.stderr
        assert len({pinned_id(s) for s in specs}) == 1, "one build, one ID for the four"
        time.sleep(0.5)
        counter.count = 0

        checked = project.reprun("check", *map(str, specs), timeout=900)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        time.sleep(0.5)
        assert counter.count == 1, f"the context was rebuilt {counter.count} times"
    finally:
        counter.close()


# --- progress of pulls and builds ------------------------------------------------------------

@pytest.fixture
def pushed_tiny(docker_client):
    """A tiny image in the local registry and not in the engine: the next run pulls it."""
    import requests
    from imagekit import push
    from conftest import REGISTRY
    tag = f"{REGISTRY}/reprun-test/adopt-pull-{secrets.token_hex(4)}:1"
    image = import_tiny_image(docker_client, tag)
    ref = push(docker_client, tag)
    docker_client.images.remove(image.id, force=True)
    yield ref
    try:
        docker_client.images.remove(ref, force=True)
    except Exception:
        pass
    repository, digest = ref.split("@")
    requests.delete(f"http://{REGISTRY}/v2/{repository.split('/', 1)[1]}/manifests/{digest}",
                    timeout=10)


SHELL_JOB = ["sh", "-c", "echo '{{\"score\": 1}}' > /out/metrics.json"]


def test_a_pull_shows_the_bytes_of_its_layers(project, pushed_tiny):
    project.dataset()
    spec = project.spec(command=SHELL_JOB, image=pushed_tiny)
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    pulls = [line for line in result.stderr.splitlines() if line.startswith("[prepare] pull ")]
    assert pulls, result.stderr
    assert re.search(r"\[#{24}\] [0-9.]+ (KiB|MiB) / [0-9.]+ (KiB|MiB) 1/1 layers", pulls[-1]), pulls


def test_quiet_silences_the_pull_progress(project, pushed_tiny):
    project.dataset()
    spec = project.spec(command=SHELL_JOB, image=pushed_tiny)
    result = project.reprun("run", "-q", str(spec))
    assert result.returncode == 0, result.stderr
    assert "pull" not in result.stderr and "layers" not in result.stderr


def test_lock_shows_the_steps_of_a_build_and_quiet_silences_them(project, tiny_base, built_specs):
    context(project, tiny_base, dockerfile_tail="RUN echo built > /built\n")
    spec = build_spec(project, "steps", built_specs)
    shown = project.reprun("lock", str(spec))
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^\[steps\] build .* 1/4 FROM reprun-test/", shown.stderr, re.M), shown.stderr
    assert re.search(r"^\[steps\] build \[#{24}\] 4/4 record what went into the build$",
                     shown.stderr, re.M), shown.stderr
    (project.root / "ctx" / "job.sh").write_text(JOB + "echo again\n")
    quiet = project.reprun("lock", "-q", str(spec))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


def test_a_context_holding_the_spec_and_the_store_is_not_made_stale_by_them(
        project, docker_client, tiny_base, built_specs):
    """The repository itself as the build context: `lock` rewrites the spec and every run
    writes the store, both inside it; neither is an input of the build."""
    context(project, tiny_base)
    folder = project.root / "ctx"
    (folder / "data").mkdir()
    (folder / "data" / "rows.csv").write_text("1\n")
    built_specs.append("in-context")
    spec = folder / "in-context.yaml"
    spec.write_text("version: 1\nname: in-context\nimage:\n  build:\n    context: .\n"
                    "dataset:\n  path: data\nseed: 7\ncommand: [sh, /job.sh]\n")
    env = {"REPRUN_STORE": str(folder / ".reprun")}
    assert project.reprun("lock", str(spec), extra_env=env).returncode == 0
    for _ in range(2):
        result = project.reprun("run", "-q", str(spec), extra_env=env)
        assert result.returncode == 0, result.stderr
    assert (folder / ".reprun" / "store.db").is_file()
