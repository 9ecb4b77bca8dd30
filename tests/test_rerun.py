"""Coming back later: rerun from the record, lock, baselines, archives, the rebuild check."""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile

import docker.errors
import pytest
import requests

from conftest import REGISTRY, REPO, WRITE_METRICS
from imagekit import import_tiny_image, push
from test_verify import build_spec, fake_distribution

pytestmark = pytest.mark.engine


def run_ids(project) -> list[str]:
    runs = json.loads(project.reprun("runs", "--json").stdout)
    return [r["id"] for r in sorted(runs, key=lambda r: r["started_at"])]


def test_a_run_reruns_as_recorded_after_its_spec_file_was_edited(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    spec.write_text(spec.read_text().replace("seed: 7", "seed: 8"))   # no longer what ran
    [original] = run_ids(project)
    result = project.reprun("rerun", original, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("IDENTICAL")
    replay = json.loads(project.reprun("runs", "show", run_ids(project)[-1], "--json").stdout)
    assert replay["inputs"]["seed"] == 7 and replay["outputs"]["metrics"]["score"] == 0.7


def test_a_rerun_takes_secrets_from_its_environment_never_from_the_record(project):
    project.dataset()
    # The job checks the secret by its length: its value must appear nowhere but the environment.
    spec = project.spec(script=WRITE_METRICS + "\nimport os; assert len(os.environ['API_TOKEN']) == 12",
                        extra="secrets: [API_TOKEN]\n")
    assert project.reprun("run", str(spec), "-q", extra_env={"API_TOKEN": "s3cr3t-value"}).returncode == 0
    [original] = run_ids(project)
    assert "s3cr3t-value" not in (project.store / "runs" / original / "record.json").read_text()
    missing = project.reprun("rerun", original, "-q")
    assert missing.returncode == 2 and "API_TOKEN" in missing.stderr
    replay = project.reprun("rerun", original, "-q", extra_env={"API_TOKEN": "s3cr3t-value"})
    assert replay.returncode == 0, replay.stderr


def test_a_rerun_whose_dataset_changed_is_refused_naming_the_file(project):
    project.dataset(files={"a.csv": b"1\n", "b.csv": b"2\n"})
    assert project.reprun("run", str(project.spec(script=WRITE_METRICS)), "-q").returncode == 0
    (project.root / "data" / "b.csv").write_bytes(b"3\n")
    result = project.reprun("rerun", run_ids(project)[0], "-q")
    assert result.returncode == 3 and "b.csv" in result.stderr, result.stderr


def test_a_rerun_can_take_the_dataset_from_a_new_place(project):
    project.dataset()
    assert project.reprun("run", str(project.spec(script=WRITE_METRICS)), "-q").returncode == 0
    moved = project.root / "moved"
    shutil.move(project.root / "data", moved)
    gone = project.reprun("rerun", run_ids(project)[0], "-q")
    assert gone.returncode == 2 and "--dataset" in gone.stderr
    assert project.reprun("rerun", run_ids(project)[0], "-q", "--dataset", str(moved)).returncode == 0


def test_a_single_file_found_under_another_name_is_shown_to_the_job_by_its_pinned_name(project):
    project.dataset(files={"digits.csv": b"1,2\n"})
    single = project.root / "data" / "digits.csv"
    spec = project.spec(dataset="data/digits.csv", script=WRITE_METRICS
                        + "\nassert open('/data/digits.csv').read() == '1,2\\n'")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    renamed = project.root / "copy-of-digits.csv"
    shutil.move(single, renamed)
    replay = project.reprun("rerun", run_ids(project)[0], "-q", "--dataset", str(renamed))
    assert replay.returncode == 0, replay.stderr
    assert replay.stdout.startswith("IDENTICAL")


def test_lock_keeps_comments_and_lock_check_notices_a_stale_pin(project):
    project.dataset()
    spec = build_spec(project, "1.0")
    text = spec.read_text()
    text = "# my precious comment\n" + text.replace("seed: 7", "seed: 7   # the answer, nearly")
    text = text.replace("  build: {context: image}\n", "  build: {context: image}\n  digest: sha256:" + "0" * 64 + "\n")
    spec.write_text(text)
    assert project.reprun("lock", "--check", str(spec)).returncode == 1
    assert project.reprun("lock", str(spec)).returncode == 0
    locked = spec.read_text()
    assert "# my precious comment" in locked and "# the answer, nearly" in locked
    assert "0" * 64 not in locked
    assert project.reprun("lock", "--check", str(spec)).returncode == 0
    (project.root / "data" / "train.csv").write_bytes(b"changed\n")
    stale = project.reprun("lock", "--check", str(spec))
    assert stale.returncode == 1 and "dataset.sha256" in stale.stderr


def test_an_approved_baseline_is_shown_and_used_by_check(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    assert project.reprun("run", str(spec), "-q").returncode == 0
    first, second = run_ids(project)
    assert project.reprun("runs", "approve", first, "--reason", "in production").returncode == 0
    shown = project.reprun("runs", "show", first).stdout
    assert "THIS RUN is the baseline" in shown and "in production" in shown
    assert f"run {first}" in project.reprun("runs", "show", second).stdout
    result = project.reprun("check", str(spec), "-q", "--junit", "check.xml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "baseline" in result.stdout
    report = json.loads(sorted((project.store / "reports").glob("*.json"))[-1].read_text())
    assert report["a"]["id"] == first and report["baseline"] == first


def delete_from_registry(reference: str) -> None:
    repository, digest = reference.split("@")
    name = repository.split("/", 1)[1]
    response = requests.delete(f"http://{REGISTRY}/v2/{name}/manifests/{digest}", timeout=10)
    assert response.status_code == 202, response.text


def unique_tag(kind: str) -> str:
    """A tag no other test process uses: each test deletes its image from the registry."""
    return f"{REGISTRY}/reprun-test/{kind}-{os.getpid()}-{secrets.token_hex(4)}:1"


METRICS_SH = ["sh", "-c", 'echo "{{\\"score\\": $0}}" > /out/metrics.json; echo model > /out/model.bin', "{seed}"]


@pytest.mark.parametrize("name, magic", [("run.tar", None), ("run.tar.gz", b"\x1f\x8b"),
                                         ("run.tar.xz", b"\xfd7zXZ"),
                                         ("run.tar.zst", b"\x28\xb5\x2f\xfd")])
def test_an_archive_replays_after_the_image_left_the_engine_and_the_registry(
        project, docker_client, tmp_path, name, magic):
    tag = unique_tag("archive")
    image = import_tiny_image(docker_client, tag)
    reference = push(docker_client, tag)
    project.dataset()
    spec = project.spec(command=METRICS_SH, image=reference)
    assert project.reprun("run", str(spec), "-q").returncode == 0, project.reprun("run", str(spec)).stderr
    [original] = run_ids(project)
    archive = project.root / name
    written = project.reprun("archive", original, "-o", str(archive))
    assert written.returncode == 0, written.stderr
    assert "[archive] write" in written.stderr and "archive written" in written.stdout
    if magic:
        assert archive.read_bytes()[:len(magic)] == magic
    else:
        assert tarfile.is_tarfile(archive) and archive.read_bytes()[257:262] == b"ustar"
    delete_from_registry(reference)
    docker_client.images.remove(image.id, force=True)
    assert project.reprun("rerun", original, "-q").returncode in (3, 4)   # nowhere to get it
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("IDENTICAL")


def test_a_tampered_archive_is_refused_with_what_is_wrong(project, docker_client, tmp_path):
    tag = unique_tag("tamper")
    import_tiny_image(docker_client, tag)
    project.dataset(files={"train.csv": b"a,b\n" * 100})
    spec = project.spec(command=METRICS_SH, image=push(docker_client, tag))
    assert project.reprun("run", str(spec), "-q").returncode == 0
    archive = project.root / "run.tar"
    assert project.reprun("archive", run_ids(project)[0], "-o", str(archive)).returncode == 0
    data = bytearray(archive.read_bytes())
    at = data.find(b"a,b\na,b\n")
    data[at] ^= 0x01
    archive.write_bytes(bytes(data))
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 3, result.stderr
    assert "damaged" in result.stderr and "dataset/train.csv" in result.stderr
    assert not list((project.store / "archives").iterdir())   # nothing left behind


def test_a_truncated_compressed_archive_is_refused_and_leaves_nothing(project, docker_client, tmp_path):
    tag = unique_tag("cut")
    import_tiny_image(docker_client, tag)
    project.dataset()
    spec = project.spec(command=METRICS_SH, image=push(docker_client, tag))
    assert project.reprun("run", str(spec), "-q").returncode == 0
    archive = project.root / "run.tgz"
    assert project.reprun("archive", run_ids(project)[0], "-o", str(archive)).returncode == 0
    archive.write_bytes(archive.read_bytes()[:-4096])
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 3, result.stderr
    assert "damaged" in result.stderr and "cannot be read as an archive" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((project.store / "archives").iterdir())


def test_check_reports_no_drift_for_the_examples(project):
    result = project.reprun("check", str(REPO / "specs" / "digits.yaml"), "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "none" in result.stdout and "identical" in result.stdout


def test_check_reports_drift_when_the_dockerfile_gains_a_package(project):
    project.dataset()
    spec = build_spec(project, "1.0")
    assert project.reprun("lock", str(spec)).returncode == 0
    dockerfile = project.root / "image" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text()
                          + fake_distribution("9.9").replace("fakepkg", "extrapkg") + "\n")
    result = project.reprun("check", str(spec), "-q", "--junit", "check.xml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "extrapkg" in result.stdout and "drifted" in result.stdout
    assert "<failure" in (project.root / "check.xml").read_text()


def test_lock_pins_an_image_tag_to_the_digest_it_points_at(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS, image=f"{REGISTRY}/reprun/sklearn:latest")
    assert project.reprun("validate", str(spec)).returncode == 2      # a tag alone is no pin
    assert project.reprun("lock", "--check", str(spec)).returncode == 1
    assert project.reprun("lock", str(spec)).returncode == 0
    pinned_digest = project.image_ref.partition("@")[2]
    assert f"ref: {REGISTRY}/reprun/sklearn:latest@{pinned_digest}" in spec.read_text()
    assert project.reprun("validate", str(spec)).returncode == 0
    assert project.reprun("lock", "--check", str(spec)).returncode == 0
    assert project.reprun("run", "-q", str(spec)).returncode == 0


def test_a_dataset_changed_after_lock_is_refused_naming_the_file_without_any_earlier_run(project):
    project.dataset(files={"a.csv": b"1\n", "b.csv": b"2\n"})
    spec = project.spec(script=WRITE_METRICS, sha256="f" * 64)
    assert project.reprun("lock", "-q", str(spec)).returncode == 0
    (project.root / "data" / "a.csv").write_bytes(b"9\n")
    result = project.reprun("run", "-q", str(spec))
    assert result.returncode == 3 and "a.csv" in result.stderr and "b.csv" not in result.stderr


# --- an archive is data, not orders (issue 14.1, 14.2) -----------------------------------------

def archived_run(project, docker_client, kind: str):
    """A succeeded run on a tiny image, archived as a plain tar; the image then leaves the
    engine, so only the archive can bring it back."""
    tag = unique_tag(kind)
    image = import_tiny_image(docker_client, tag)
    project.dataset()
    spec = project.spec(command=METRICS_SH, image=push(docker_client, tag))
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [original] = run_ids(project)
    archive = project.root / "run.tar"
    assert project.reprun("archive", original, "-o", str(archive)).returncode == 0
    for reference in [tag, *image.attrs["RepoDigests"]]:
        docker_client.images.remove(reference, force=True)
    return archive, original, image.id


def forge(archive, *, record=None, image_tar=None, drop=(), manifest_members=None):
    """Rewrite an archive as an attacker would: edit its members, then re-hash its manifest so
    that every hash matches again."""
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar
                   if m.isfile() and not m.name.startswith(tuple(drop))}
    if record is not None:
        document = json.loads(members["record.json"])
        record(document)
        members["record.json"] = json.dumps(document).encode()
    if image_tar is not None:
        members["image.tar"] = image_tar(members["image.tar"])
    manifest = json.loads(members.pop("MANIFEST.json"))
    manifest["members"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                           for name, data in members.items()}
    if manifest_members is not None:
        manifest_members(manifest["members"])
    members["MANIFEST.json"] = json.dumps(manifest).encode()
    with tarfile.open(archive, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def hermetic(**settings):
    return lambda document: document["inputs"]["hermetic"].update(settings)


@pytest.mark.parametrize("settings, named", [
    ({"network": "host"}, "network=host"),
    ({"user": "0:0"}, "user=0:0"),
    ({"read_only_root": False}, "writable-root"),
], ids=["host-network", "root-user", "writable-root"])
def test_an_archive_asking_for_a_relaxed_hermetic_setting_is_refused_unless_allowed_by_name(
        project, docker_client, settings, named):
    archive, original, image_id = archived_run(project, docker_client, "relax")
    forge(archive, record=hermetic(**settings))
    refused = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert refused.returncode == 2, refused.stderr
    assert named in refused.stderr and f"--allow {named}" in refused.stderr
    assert run_ids(project) == [original]                     # nothing ran
    with pytest.raises(docker.errors.ImageNotFound):          # the image never reached the engine
        docker_client.images.get(image_id)
    assert not list((project.store / "archives").iterdir())
    allowed = project.reprun("rerun", "--from-archive", str(archive), "-q", "--allow", named)
    assert allowed.returncode in (0, 1), allowed.stderr
    replay = json.loads(project.reprun("runs", "show", run_ids(project)[-1], "--json").stdout)
    assert all(replay["inputs"]["hermetic"][k] == v for k, v in settings.items())


def resources(**values):
    return lambda document: document["inputs"]["resources"].update(values)


@pytest.mark.parametrize("edit, named", [
    (resources(cpus=0), "cpus"),
    (resources(memory_bytes=0), "memory"),
    (resources(pids=-1), "pids"),
    (resources(timeout_s=1e300), "timeout"),
    (hermetic(privileged=True), "privileged"),
    (lambda d: d["inputs"].update(spec_name="\x1b]0;owned\x07job"), "name"),
], ids=["no-cpus", "no-memory", "no-pid-limit", "timeout-1e300", "unknown-hermetic-key",
        "name-with-escapes"])
def test_an_archive_whose_record_breaks_a_spec_rule_is_refused_as_a_spec_would_be(
        project, docker_client, edit, named):
    archive, original, image_id = archived_run(project, docker_client, "limits")
    forge(archive, record=edit)
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "\x1b" not in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    assert run_ids(project) == [original]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image_id)


def test_a_redacted_value_is_never_filled_from_the_callers_environment_unless_named(
        project, docker_client):
    archive, original, _ = archived_run(project, docker_client, "secret")
    forge(archive, record=lambda d: d["inputs"]["env"].update(CI_TOKEN="<redacted>"))
    caller = {"CI_TOKEN": "ci-secret-of-the-caller"}
    refused = project.reprun("rerun", "--from-archive", str(archive), "-q", extra_env=caller)
    assert refused.returncode == 2, refused.stderr
    assert "--env-from-caller CI_TOKEN" in refused.stderr
    assert run_ids(project) == [original]
    named = project.reprun("rerun", "--from-archive", str(archive), "-q",
                           "--env-from-caller", "CI_TOKEN", extra_env=caller)
    assert named.returncode in (0, 1), named.stderr
    assert len(run_ids(project)) == 2


def test_an_archived_run_is_filed_under_where_it_came_from_never_as_another_specs_run(
        project, docker_client):
    archive, original, _ = archived_run(project, docker_client, "name")
    # Named after a spec of this store: it must not become that spec's reference for `check`.
    forge(archive, record=lambda d: d["inputs"].update(spec_name="job"))
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 0, result.stderr
    runs = {r["id"]: r["spec"] for r in json.loads(project.reprun("runs", "--json").stdout)}
    [replay] = set(runs) - {original}
    assert runs[replay] == "job@archive" and runs[original] == "job"
    assert [r["id"] for r in json.loads(
        project.reprun("runs", "--spec", "job", "--json").stdout)] == [original]


def test_an_archived_image_tagged_as_another_image_leaves_that_tag_where_it_was(
        project, docker_client):
    archive, original, image_id = archived_run(project, docker_client, "tags")
    victim = "reprun/base:bookworm"
    before = docker_client.images.get(victim).id

    def tag_as_victim(data: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            files = {m.name: (m, tar.extractfile(m).read() if m.isfile() else None) for m in tar}
        manifest = json.loads(files["manifest.json"][1])
        manifest[0]["RepoTags"] = [victim]
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for name, (member, content) in files.items():
                if name == "manifest.json":
                    content = json.dumps(manifest).encode()
                    member.size = len(content)
                tar.addfile(member, io.BytesIO(content) if content is not None else None)
        return out.getvalue()

    forge(archive, image_tar=tag_as_victim)
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 0, result.stderr
    assert docker_client.images.get(victim).id == before
    assert docker_client.images.get(image_id).tags == []


def test_an_archive_carries_the_runs_artifacts_with_their_recorded_hashes(project, docker_client):
    archive, original, _ = archived_run(project, docker_client, "model")
    record = json.loads(project.reprun("runs", "show", original, "--json").stdout)
    with tarfile.open(archive) as tar:
        model = tar.extractfile("artifacts/model.bin").read()
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())
    assert hashlib.sha256(model).hexdigest() == record["outputs"]["artifacts"]["model.bin"]["sha256"]
    assert manifest["members"]["artifacts/model.bin"]["size"] == len(model)


@pytest.mark.parametrize("host_path", ["/etc/hostname", "/proc/self/pagemap", "../../etc/hostname"])
def test_an_archive_manifest_naming_a_host_file_is_refused_and_the_file_never_read(
        project, docker_client, host_path):
    archive, original, _ = archived_run(project, docker_client, "hostpath")
    hostname = open("/etc/hostname", "rb").read()
    forge(archive, manifest_members=lambda members: members.update(
        {host_path: {"sha256": hashlib.sha256(hostname).hexdigest(), "size": len(hostname)}}))
    result = project.reprun("rerun", "--from-archive", str(archive), "-q", timeout=120)
    assert result.returncode == 3, result.stderr
    assert "nothing outside the archive is ever read" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_ids(project) == [original]


def test_a_small_archive_that_would_expand_to_gibibytes_is_refused_before_extracting(project):
    import gzip
    bomb = project.root / "bomb.tar.gz"
    header = tarfile.TarInfo("dataset/zeros.bin")
    header.size = 4 << 30
    with gzip.open(bomb, "wb") as packed:
        packed.write(header.tobuf(format=tarfile.GNU_FORMAT))
        for _ in range(16):
            packed.write(bytes(1 << 20))
    assert bomb.stat().st_size < 1 << 20
    result = project.reprun("rerun", "--from-archive", str(bomb), "-q")
    assert result.returncode == 3, result.stderr
    assert "would expand to more than" in result.stderr and "was not extracted" in result.stderr
    assert not list((project.store / "archives").iterdir())


@pytest.mark.parametrize("member, said", [("record.json", "it has no record.json"),
                                          ("image.tar", "it has no image.tar"),
                                          ("dataset/", "it has no dataset")])
def test_an_archive_missing_a_member_is_one_sentence_with_exit_3(
        project, docker_client, member, said):
    archive, original, _ = archived_run(project, docker_client, "missing")
    forge(archive, drop=(member,))
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 3, result.stderr
    assert said in result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
