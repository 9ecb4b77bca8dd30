"""Faults survived and nothing lost: each story injects one fault and checks what is left behind —
no stray container, a complete record with the right status, the documented exit code — and that
the store can still prove no record, log or artifact was altered or removed."""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, REPRUN, WRITE_METRICS, containers
from orchestrator.outputs import sha256_file
from orchestrator.records import (Artifact, DatasetFacts, EnvironmentManifest, ImageFacts, Inputs,
                                  Outputs, RunRecord)
from orchestrator.store.db import Store, record_sha256

TESTS = Path(__file__).resolve().parent
CONCURRENT_WRITERS = 16
RECORDS_PER_WRITER = 25


# --- a store filled without an engine ----------------------------------------------------------

def write_run(store: Store, *, spec: str = "job", score: float = 0.5, log: bytes = b"trained\n",
              artifact: bytes = b"\x01" * 16, container: dict | None = None) -> RunRecord:
    """One finished run, its log and artifact on disk, committed as a real run would be."""
    run_id, run_dir, started_at = store.new_run(spec)
    (run_dir / "out").mkdir()
    (run_dir / "out" / "model.bin").write_bytes(artifact)
    (run_dir / "out" / "notes.txt").write_text("written by the job, no artifact\n")
    (run_dir / "meta").mkdir()
    (run_dir / "meta" / "manifest.txt").write_text("os: Debian GNU/Linux 12\n")
    (run_dir / "log.txt").write_bytes(log)
    log_sha, log_size = sha256_file(run_dir / "log.txt")
    art_sha, art_size = sha256_file(run_dir / "out" / "model.bin")
    record = RunRecord(
        id=run_id, status="succeeded", started_at=started_at, finished_at=started_at,
        inputs=Inputs(spec_name=spec, spec_path=f"{spec}.yaml", spec_sha256="e" * 64, seed=7,
                      command=["train"], params={}, env={}, resources={},
                      container=container or {},
                      image=ImageFacts(id="sha256:" + "a" * 64),
                      dataset=DatasetFacts(path="data", sha256="d" * 64, kind="tree", files=1,
                                           bytes=3, mount="/data")),
        environment=EnvironmentManifest(python={"version": "3.11.2"}),
        outputs=Outputs(exit_code=0, reason="ok", duration_s=1.0, metrics={"score": score},
                        artifacts={"model.bin": Artifact(art_sha, art_size)},
                        log_sha256=log_sha, log_bytes=log_size, log_truncated=False),
        compare={}, reprun_version="test")
    return store.finish(record)


def write_runs(root: str, count: int) -> None:
    """Run by each concurrent writer process."""
    store = Store(root)
    for i in range(count):
        write_run(store, spec=f"writer-{os.getpid()}", score=i)


def reprun_in(store_root: Path, *args: str, env: dict | None = None,
              cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*REPRUN, *args], cwd=cwd or store_root.parent, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "REPRUN_STORE": str(store_root),
                               "PYTHONPATH": str(REPO), **(env or {})})


def verify_json(store_root: Path) -> tuple[int, dict]:
    result = reprun_in(store_root, "runs", "verify", "--json")
    return result.returncode, json.loads(result.stdout)


def unprotected(db_path: Path) -> sqlite3.Connection:
    """The database as someone with write access to it sees it: triggers dropped."""
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("DROP TRIGGER IF EXISTS runs_are_immutable")
    db.execute("DROP TRIGGER IF EXISTS chained_runs_are_kept")
    return db


# --- the chain ---------------------------------------------------------------------------------

def test_each_record_names_the_hash_of_the_one_committed_before_it(tmp_path):
    store = Store(tmp_path / "store")
    records = [write_run(store, score=i) for i in range(3)]
    assert records[0].previous is None
    assert records[1].previous == record_sha256(records[0].to_json())
    assert records[2].previous == record_sha256(records[1].to_json())
    code, audit = verify_json(store.root)
    assert code == 0 and audit["intact"], audit
    assert audit["records"] == 3 and audit["logs"] == 3 and audit["artifacts"] == 3
    assert audit["head"] == {"seq": 3, "sha256": record_sha256(records[2].to_json()),
                             "run": records[2].id}


def test_the_record_hash_covers_inputs_manifest_metrics_and_artifact_hashes(tmp_path):
    record = write_run(Store(tmp_path / "store"))
    base = record_sha256(record.to_json())
    document = json.loads(record.to_json())
    for path in (("inputs", "seed"), ("environment", "python"), ("outputs", "metrics"),
                 ("outputs", "artifacts"), ("outputs", "log_sha256"), ("previous",)):
        changed = json.loads(json.dumps(document))
        target = changed
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = "something else"
        assert record_sha256(json.dumps(changed)) != base, path


def tamper_record_in_db(store, runs):
    db = unprotected(store.db_path)
    text = db.execute("SELECT record FROM runs WHERE id = ?", (runs[1].id,)).fetchone()[0]
    db.execute("UPDATE runs SET record = ? WHERE id = ?",
               (text.replace('"score": 1.0', '"score": 0.99'), runs[1].id))
    return runs[1].id, "altered in the store"


def tamper_record_and_its_hash(store, runs):
    db = unprotected(store.db_path)
    text = db.execute("SELECT record FROM runs WHERE id = ?", (runs[1].id,)).fetchone()[0]
    forged = text.replace('"score": 1.0', '"score": 0.99')
    db.execute("UPDATE runs SET record = ?, record_sha256 = ? WHERE id = ?",
               (forged, record_sha256(forged), runs[1].id))
    (store.run_dir(runs[1].id) / "record.json").write_text(forged)
    return runs[2].id, "one of the two was rewritten"


def tamper_record_file(store, runs):
    path = store.run_dir(runs[0].id) / "record.json"
    path.write_text(path.read_text().replace('"seed": 7', '"seed": 8'))
    return runs[0].id, "record.json was altered"


def tamper_log(store, runs):
    (store.run_dir(runs[1].id) / "log.txt").write_bytes(b"trained, honestly\n")
    return runs[1].id, "log.txt was altered"


def remove_log(store, runs):
    (store.run_dir(runs[1].id) / "log.txt").unlink()
    return runs[1].id, "log.txt was removed"


def tamper_artifact(store, runs):
    (store.run_dir(runs[2].id) / "out" / "model.bin").write_bytes(b"\x02" * 16)
    return runs[2].id, "artifact model.bin was altered"


def remove_artifact(store, runs):
    (store.run_dir(runs[0].id) / "out" / "model.bin").unlink()
    return runs[0].id, "artifact model.bin was removed"


def remove_middle_record(store, runs):
    unprotected(store.db_path).execute("DELETE FROM runs WHERE id = ?", (runs[1].id,))
    import shutil
    shutil.rmtree(store.run_dir(runs[1].id))
    return None, "record #2 of the chain was removed"


def remove_newest_record(store, runs):
    unprotected(store.db_path).execute("DELETE FROM runs WHERE id = ?", (runs[2].id,))
    import shutil
    shutil.rmtree(store.run_dir(runs[2].id))
    return runs[2].id, "record #3, the newest the store committed, was removed"


def remove_row_keep_folder(store, runs):
    unprotected(store.db_path).execute("DELETE FROM runs WHERE id = ?", (runs[0].id,))
    return runs[0].id, "has a run folder but no row"


def edit_an_approval(store, runs):
    """`runs show` would then say "approved by ceo … signed off by legal"."""
    from orchestrator.store.baselines import approve
    approve(store, runs[0].id, reason="model v3 in production", by="alice")
    db = unprotected(store.db_path)
    db.execute("DROP TRIGGER IF EXISTS approvals_are_immutable")
    db.execute("UPDATE approvals SET approved_by = 'ceo', reason = 'signed off by legal'")
    return runs[0].id, "its approval (record #4) was altered"


def edit_an_approval_and_its_hash(store, runs):
    from orchestrator.store.baselines import approve
    from orchestrator.store.db import approval_sha256
    approve(store, runs[0].id, reason="model v3 in production", by="alice")
    approve(store, runs[1].id, reason="model v4", by="bob")
    db = unprotected(store.db_path)
    db.execute("DROP TRIGGER IF EXISTS approvals_are_immutable")
    spec, run_id, at, previous = db.execute(
        "SELECT spec, run_id, approved_at, previous_sha256 FROM approvals WHERE seq = 1").fetchone()
    db.execute("UPDATE approvals SET approved_by = 'ceo', entry_sha256 = ? WHERE seq = 1",
               (approval_sha256(spec, run_id, "ceo", at, "model v3 in production", previous),))
    return runs[1].id, "one of the two was rewritten"


def edit_image_facts(store, runs):
    store.remember_image_facts("key-1", "sha256:" + "a" * 64, {"os": {"id": "debian"}}, runs[2].id)
    db = unprotected(store.db_path)
    db.execute("DROP TRIGGER IF EXISTS image_facts_are_immutable")
    db.execute("""UPDATE image_facts SET facts = '{"os": {"id": "ubuntu"}}'""")
    return runs[2].id, "the image facts it read (record #4) was altered"


def tamper_manifest(store, runs):
    path = store.run_dir(runs[1].id) / "meta" / "manifest.txt"
    path.write_text(path.read_text().replace("Debian", "Ubuntu 99.04 SPOOFED"))
    return runs[1].id, "file meta/manifest.txt was altered"


def add_a_file_to_out(store, runs):
    (store.run_dir(runs[0].id) / "out" / "backdoor.pkl").write_bytes(b"cos\nsystem\n")
    return runs[0].id, "holds out/backdoor.pkl, which no hash of its record covers"


def tamper_an_extra_output(store, runs):
    (store.run_dir(runs[2].id) / "out" / "notes.txt").write_text("rewritten\n")
    return runs[2].id, "file out/notes.txt was altered"


def rewind_chain_head(store, runs):
    db = sqlite3.connect(store.db_path)
    sha = db.execute("SELECT record_sha256 FROM runs WHERE id = ?", (runs[1].id,)).fetchone()[0]
    (store.root / "chain-head").write_text(f"2 {sha} {runs[1].id}\n")
    return None, "rewound to an older link"


@pytest.mark.parametrize("tamper", [
    tamper_record_in_db, tamper_record_and_its_hash, tamper_record_file, tamper_log, remove_log,
    tamper_artifact, remove_artifact, remove_middle_record, remove_newest_record,
    remove_row_keep_folder, edit_an_approval, edit_an_approval_and_its_hash, edit_image_facts,
    rewind_chain_head, tamper_manifest, add_a_file_to_out, tamper_an_extra_output,
], ids=lambda f: f.__name__.replace("_", "-"))
def test_runs_verify_names_whatever_was_altered_or_removed(tmp_path, tamper):
    store = Store(tmp_path / "store")
    runs = [write_run(store, score=float(i)) for i in range(3)]
    assert reprun_in(store.root, "runs", "verify").returncode == 0
    run_id, words = tamper(store, runs)
    result = reprun_in(store.root, "runs", "verify")
    assert result.returncode == 1, result.stdout + result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert any(words in line and (run_id is None or run_id in line) for line in problems), \
        result.stderr
    assert "Traceback" not in result.stderr


def test_one_store_db_holds_runs_approvals_and_the_hash_cache_with_one_set_of_pragmas(tmp_path):
    from orchestrator.dataset.tree import HashCache, hash_dataset
    store = Store(tmp_path / "store")
    tables = {row[0] for row in sqlite3.connect(store.db_path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"runs", "approvals", "image_facts", "hash_cache", "dataset_manifests"} <= tables
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_bytes(b"1\n")
    cache = HashCache(store.db_path)
    cache.remember_manifest(hash_dataset(tmp_path / "data", cache=cache))
    with store.connect() as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT files FROM dataset_manifests").fetchall() == [(1,)]


def test_a_record_written_by_a_newer_reprun_is_named_by_its_field_not_a_crash(tmp_path):
    store = Store(tmp_path / "store")
    run = write_run(store)
    document = json.loads(run.to_json())
    document["inputs"]["gpus"] = 2
    unprotected(store.db_path).execute("UPDATE runs SET record = ? WHERE id = ?",
                                       (json.dumps(document), run.id))
    result = reprun_in(store.root, "runs", "show", run.id)
    assert result.returncode == 2, result.stderr
    assert "written by a newer reprun (field inputs.gpus)" in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def test_run_ids_that_run_out_are_an_infrastructure_error_not_a_usage_error(tmp_path, monkeypatch):
    from orchestrator.errors import InfrastructureError
    import orchestrator.store.db as db_module
    store = Store(tmp_path / "store")
    monkeypatch.setattr(db_module.secrets, "token_hex", lambda n: "abcdef")
    monkeypatch.setattr(db_module.time, "gmtime", lambda: time.struct_time((2026, 1, 1, 0, 0, 0, 3, 1, 0)))
    store.new_run("job")
    with pytest.raises(InfrastructureError, match="no unique run ID"):
        store.new_run("job")


def test_a_nan_metric_is_stored_as_standard_json_and_read_back_as_nan(tmp_path):
    import math
    store = Store(tmp_path / "store")
    run = write_run(store, score=float("nan"))

    def refuse(token):
        raise ValueError(f"bare {token} is not JSON")
    on_disk = json.loads((store.run_dir(run.id) / "record.json").read_text(), parse_constant=refuse)
    assert on_disk["outputs"]["metrics"]["score"] == "NaN"
    shown = reprun_in(store.root, "runs", "show", run.id, "--json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout, parse_constant=refuse)["outputs"]["metrics"]["score"] == "NaN"
    assert math.isnan(store.get(run.id).outputs.metrics["score"])
    assert reprun_in(store.root, "runs", "verify").returncode == 0


@pytest.mark.parametrize("break_it", ["a-file", "not-a-database"])
def test_a_store_reprun_cannot_open_is_one_sentence_with_exit_4(tmp_path, break_it):
    root = tmp_path / "store"
    if break_it == "a-file":
        root.write_text("not a folder\n")
    else:
        root.mkdir()
        (root / "store.db").write_bytes(b"\x00garbage" * 512)
    for command in (["runs"], ["runs", "verify"]):
        result = reprun_in(root, *command)
        assert result.returncode == 4, result.stderr
        assert "cannot be opened" in result.stderr
        assert "internal error" not in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


def test_a_store_below_its_disk_reserve_refuses_a_run_and_still_answers_read_only_commands(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    full = {"REPRUN_RESERVE_BYTES": str(1 << 60)}    # more than any disk has free
    refused = project.reprun("run", str(spec), "-q", extra_env=full)
    assert refused.returncode == 4, refused.stderr
    assert "less than" in refused.stderr and "internal error" not in refused.stderr
    assert len(json.loads(project.reprun("runs", "--json", extra_env=full).stdout)) == 1
    for command in (["runs"], ["runs", "show", run["id"]], ["runs", "verify"]):
        result = project.reprun(*command, extra_env=full)
        assert result.returncode == 0, (command, result.stderr)


def test_a_run_folder_belongs_to_the_user_who_ran_reprun_after_the_run(project):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS + "\nopen('/out/model.bin', 'wb').write(b'm')")
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    folder = project.store / "runs" / run["id"]
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in [folder, *folder.rglob("*")]}
    assert owners == {(os.getuid(), os.getgid())}, owners
    assert (folder / "out" / "model.bin").exists()


def test_a_stored_record_cannot_be_deleted_through_the_database(tmp_path):
    store = Store(tmp_path / "store")
    run = write_run(store)
    with sqlite3.connect(store.db_path) as db, pytest.raises(sqlite3.DatabaseError,
                                                             match="cannot be deleted"):
        db.execute("DELETE FROM runs WHERE id = ?", (run.id,))


def test_sixteen_concurrent_writers_lose_nothing_and_keep_one_chain(tmp_path):
    root = tmp_path / "store"
    Store(root)
    code = f"import test_reliability as t; t.write_runs({str(root)!r}, {RECORDS_PER_WRITER})"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}"}
    writers = [subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
               for _ in range(CONCURRENT_WRITERS)]
    for writer in writers:
        assert writer.wait(timeout=300) == 0, writer.stderr.read().decode()
    with sqlite3.connect(root / "store.db") as db:
        rows = db.execute("SELECT seq, spec, status FROM runs ORDER BY seq").fetchall()
    total = CONCURRENT_WRITERS * RECORDS_PER_WRITER
    assert [r[0] for r in rows] == list(range(1, total + 1))        # one chain, no fork, no gap
    assert len({r[1] for r in rows}) == CONCURRENT_WRITERS
    assert all(r[2] == "succeeded" for r in rows)
    code, audit = verify_json(root)
    assert code == 0 and audit["records"] == total and audit["artifacts"] == total, audit


CRASH_AFTER_RECORD_FILE = """
import os, signal, sys
sys.path[:0] = [{tests!r}]
import orchestrator.store.db as store_module
import test_reliability as t
real = store_module._write_atomically
def write_then_die(path, text):
    real(path, text)
    if path.name == "record.json":
        os.kill(os.getpid(), signal.SIGKILL)     # between the run's files and its row
store_module._write_atomically = write_then_die
t.write_run(store_module.Store({root!r}), score=2.0)
"""


def test_a_crash_between_the_record_file_and_the_row_is_repaired_by_the_next_command(tmp_path):
    root = tmp_path / "store"
    first = write_run(Store(root), score=1.0)
    crashed = subprocess.run(
        [sys.executable, "-c", CRASH_AFTER_RECORD_FILE.format(tests=str(TESTS), root=str(root))],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    with sqlite3.connect(root / "store.db") as db:
        (run_id, status), = db.execute("SELECT id, status FROM runs WHERE id != ?", (first.id,))
    assert status == "running"                     # the half-written run is not shown as whole
    result = reprun_in(root, "runs", "verify")
    assert result.returncode == 0, result.stderr
    assert f"repaired {run_id}: record file adopted (succeeded)" in result.stdout
    record = json.loads(reprun_in(root, "runs", "show", run_id, "--json").stdout)
    assert record["outputs"]["metrics"] == {"score": 2.0}
    assert record["previous"] == record_sha256(first.to_json())


def test_a_crash_before_any_record_leaves_an_interrupted_row_that_verify_reports(tmp_path):
    store = Store(tmp_path / "store")
    write_run(store)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run_id, run_dir, _ = store.new_run("job")
    with sqlite3.connect(store.db_path) as db:
        db.execute("UPDATE runs SET pid = ? WHERE id = ?", (dead.pid, run_id))
    (run_dir / "log.txt").write_bytes(b"half a log")
    code, audit = verify_json(store.root)
    assert code == 0, audit
    assert audit["unrecorded"] == [run_id] and audit["repaired"] == [
        f"{run_id}: marked interrupted (no record was written)"]
    shown = reprun_in(store.root, "runs", "show", run_id)
    assert shown.returncode == 2 and "no complete record" in shown.stderr


# --- faults around a real run ------------------------------------------------------------------

engine = pytest.mark.engine


class Started:
    """A reprun process whose stderr is read as it comes, so a test can act at a given stage."""

    def __init__(self, project, *args: str, env: dict | None = None, argv: list[str] | None = None):
        import threading
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [*(argv or REPRUN), *args], cwd=project.root, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, errors="replace",
            env={**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO),
                 **(env or {})})
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)

    def wait_for(self, words: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not any(words in line for line in self.lines):
            assert self.process.poll() is None, f"reprun ended early: {''.join(self.lines)[-3000:]}"
            assert time.monotonic() < deadline, f"never saw {words!r}: {''.join(self.lines)[-3000:]}"
            time.sleep(0.05)

    def finish(self, timeout: float = 120) -> tuple[int, str, str]:
        stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code, stdout, "".join(self.lines)


def containers_of(client, pid: int) -> list:
    import socket
    return containers(client, label=f"io.reprun.owner={socket.gethostname()}:{pid}")


def wait_for_container(client, pid: int, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [c for c in containers_of(client, pid) if c.status == "running"]
        if running:
            return running[0]
        time.sleep(0.1)
    raise AssertionError("the job's container never started")


def runs_in(project) -> list[dict]:
    return json.loads(project.reprun("runs", "--json").stdout)


def record_of(project, run_id: str) -> dict:
    return json.loads(project.reprun("runs", "show", run_id, "--json").stdout)


def assert_store_intact(project) -> dict:
    result = project.reprun("runs", "verify", "--json")
    audit = json.loads(result.stdout)
    assert result.returncode == 0 and audit["intact"], audit
    return audit


@engine
def test_an_engine_that_does_not_answer_is_said_clearly_with_exit_4(project, tmp_path):
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    nowhere = f"unix://{tmp_path}/nothing-listens.sock"
    started = Started(project, "run", str(spec), env={"DOCKER_HOST": nowhere})
    code, _, stderr = started.finish()
    result = subprocess.CompletedProcess([], code, "", stderr)
    assert result.returncode == 4, result.stderr
    assert f"cannot reach the Docker engine at {nowhere}" in result.stderr
    assert "make engine" in result.stderr and "Traceback" not in result.stderr
    assert runs_in(project) == []            # nothing started, so nothing is recorded as run


# SIGINT and SIGTERM at each stage. Before the run starts nothing is recorded (no run exists yet);
# once it has started the record says `interrupted`; a finished run stays what it was.

SLOW_COMPARE = """
import sys, time
import orchestrator.compare.comparison as compare
real = compare.compare_records
def slow(*args, **kwargs):
    print("comparing the runs", file=sys.stderr, flush=True)
    time.sleep(60)
    return real(*args, **kwargs)
compare.compare_records = slow
from orchestrator.cli.app import main
main()
"""


@pytest.fixture(scope="module")
def slow_pull_ref(docker_client):
    """An image in the registry that this engine does not hold: pulling it takes a few seconds."""
    sys.path.insert(0, str(TESTS))
    from imagekit import import_tiny_image, push
    tag = f"127.0.0.1:5000/reprun-test/pull-{os.getpid()}:big"
    import_tiny_image(docker_client, tag, files={"big.bin": os.urandom(128 << 20)})
    ref = push(docker_client, tag)
    yield ref
    for name in (ref, tag):
        try:
            docker_client.images.remove(name, force=True)
        except Exception:
            pass


@pytest.fixture(scope="module")
def tiny_ref(docker_client) -> str:
    """A busybox image without Python, pinned by its registry digest."""
    sys.path.insert(0, str(TESTS))
    from imagekit import import_tiny_image, push
    tag = f"127.0.0.1:5000/reprun-test/tiny-{os.getpid()}:1"
    import_tiny_image(docker_client, tag)
    return push(docker_client, tag)


def start_at_stage(project, stage: str, docker_client, request) -> tuple[Started, str]:
    """Start reprun and return once it is in `stage`; the words that show it got there."""
    if stage == "hash":
        folder = project.root / "big-data"
        folder.mkdir(parents=True)
        with open(folder / "huge.bin", "wb") as handle:    # sparse: no disk, all reading
            handle.truncate(64 << 30)
        spec = project.spec(script=WRITE_METRICS, dataset="big-data", sha256="f" * 64)
        started = Started(project, "run", "--no-cache", str(spec))
        started.wait_for("hash ")
        return started, "hash"
    project.dataset()
    if stage == "pull":
        ref = request.getfixturevalue("slow_pull_ref")
        for name in (ref, ref.split("@")[0] + ":big"):
            try:
                docker_client.images.remove(name, force=True)
            except Exception:
                pass
        spec = project.spec(command=["sh", "-c", "true"], image=ref)
        started = Started(project, "run", str(spec))
        started.wait_for("pull ")
        return started, "pull"
    if stage == "build":
        tiny = request.getfixturevalue("tiny_ref")
        context = project.root / "ctx"
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {tiny}\nRUN sleep 45.{os.getpid()}\n")
        spec = project.spec(command=["sh", "-c", "true"], image="unused@sha256:" + "0" * 64)
        text = spec.read_text().replace(f"  ref: unused@sha256:{'0' * 64}\n",
                                        f"  build: {{context: ctx}}\n  digest: sha256:{'0' * 64}\n")
        spec.write_text(text)
        started = Started(project, "run", str(spec))
        started.wait_for("build ")
        time.sleep(1)
        return started, "build"
    if stage == "run":
        spec = project.spec(script="import time; print('started', flush=True); time.sleep(120)")
        started = Started(project, "run", str(spec))
        wait_for_container(docker_client, started.process.pid)
        return started, "run"
    if stage == "compare":
        spec = project.spec(script=WRITE_METRICS)
        started = Started(project, "verify", "--sequential", str(spec),
                          argv=[sys.executable, "-c", SLOW_COMPARE])
        started.wait_for("comparing the runs", timeout=300)
        return started, "compare"
    raise AssertionError(stage)


def hashing_helpers_of(pid: int) -> list[int]:
    helpers = []
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if f"\nPPid:\t{pid}\n" in status and b"dataset/helper.py" in cmdline:
            helpers.append(int(entry.name))
    return helpers


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_to_the_process_group_while_helpers_hash_leaves_no_helper(project, signum):
    folder = project.root / "many"
    folder.mkdir()
    for i in range(300):                        # sparse: gigabytes to read, no disk used
        with open(folder / f"part-{i:03}.bin", "wb") as handle:
            handle.truncate(60 << 20)
    spec = project.spec(script=WRITE_METRICS, dataset="many", sha256="f" * 64)
    started = Started(project, "run", "--no-cache", str(spec))
    started.wait_for("hash ")
    deadline = time.monotonic() + 60
    while not (helpers := hashing_helpers_of(started.process.pid)):
        assert time.monotonic() < deadline, "no hashing helper process started"
        time.sleep(0.05)
    for pid in helpers:         # as a terminal's Ctrl-C reaches them all; reprun last, since
        os.kill(pid, signum)    # it kills and reaps its helpers as soon as it has the signal
    started.process.send_signal(signum)
    code, _, stderr = started.finish()
    assert code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    for pid in helpers:
        assert not Path(f"/proc/{pid}").exists(), f"hashing helper {pid} outlived reprun"
    assert runs_in(project) == []


@engine
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("stage", ["hash", "pull", "build", "run", "compare"])
def test_a_signal_at_any_stage_ends_with_130_no_container_and_a_true_record(
        project, docker_client, request, stage, signum):
    started, _ = start_at_stage(project, stage, docker_client, request)
    started.process.send_signal(signum)
    code, _, stderr = started.finish()
    assert code == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    time.sleep(0.5)
    assert containers_of(docker_client, started.process.pid) == []
    if stage == "build":     # the engine cancels the build and removes its step container
        deadline = time.monotonic() + 30
        while any(f"sleep 45.{os.getpid()}" in " ".join(c.attrs["Config"]["Cmd"] or [])
                  for c in containers(docker_client)):
            assert time.monotonic() < deadline, "the build's step container was left behind"
            time.sleep(0.5)
    runs = runs_in(project)
    if stage in ("hash", "pull", "build"):
        assert runs == []
    elif stage == "run":
        assert [r["status"] for r in runs] == ["interrupted"]
        record = record_of(project, runs[0]["id"])
        assert record["outputs"]["reason"] == "interrupted" and record["inputs"]["image"]["id"]
    else:
        assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    assert_store_intact(project)


@engine
@pytest.mark.parametrize("command, resources, words, exit_code", [
    (["sh", "-c", "python3 -c 'import os; os.kill(os.getpid(), 9)'; exit $?"], None,
     "killed by signal 9", 137),
    (["python3", "-c", "x = bytearray(400 << 20); y = bytearray(400 << 20)"],
     "{cpus: 1, memory: 256m, timeout: 2m}", "out of memory", 137),
    (["sleep", "60"], "{cpus: 1, memory: 256m, timeout: 2s}", "ran past its timeout", None),
], ids=["kill-9", "oom", "timeout"])
def test_a_job_killed_leaves_a_failed_record_exit_5_and_no_container(
        project, docker_client, command, resources, words, exit_code):
    project.dataset()
    started = Started(project, "run", str(project.spec(command=command, resources=resources)))
    code, _, stderr = started.finish()
    assert code == 5, stderr
    assert words in stderr and "Traceback" not in stderr
    assert containers_of(docker_client, started.process.pid) == []
    run, = runs_in(project)
    record = record_of(project, run["id"])
    assert record["status"] == "failed" and words in record["outputs"]["message"]
    assert record["outputs"]["exit_code"] == exit_code
    assert_store_intact(project)


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@engine
def test_a_full_store_disk_refuses_a_run_and_still_answers_read_only_commands(project, small_disk):
    project.store = small_disk / "store"
    project.dataset()
    spec = project.spec(script=WRITE_METRICS)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    with open(small_disk / "filler.bin", "wb") as filler:
        with pytest.raises(OSError):
            while True:
                filler.write(b"x" * (1 << 16))
                filler.flush()
    refused = project.reprun("run", str(spec), "-q")
    assert refused.returncode == 4, refused.stderr
    assert "less than" in refused.stderr and "internal error" not in refused.stderr
    for command in (["runs"], ["runs", "show", run["id"]], ["runs", "show", run["id"], "--json"],
                    ["runs", "verify"]):
        result = project.reprun(*command)
        assert result.returncode == 0, (command, result.stderr)
    assert len(json.loads(project.reprun("runs", "--json").stdout)) == 1


FILL_THE_DISK = """
import sys
written = 0
try:
    with open("/out/filler.bin", "wb") as handle:
        while True:
            handle.write(b"x" * (1 << 20))
            handle.flush()
            written += 1
except OSError as exc:
    print(f"disk full after {written} MiB: {exc}", flush=True)
    sys.exit(28)
"""


@engine
def test_a_job_that_fills_the_store_disk_still_gets_its_complete_record(
        project, docker_client, small_disk):
    project.store = small_disk / "store"
    project.dataset()
    started = Started(project, "run", str(project.spec(script=FILL_THE_DISK)))
    code, _, stderr = started.finish()
    assert code == 5, stderr
    assert "No space left on device" in stderr and "Traceback" not in stderr
    assert containers_of(docker_client, started.process.pid) == []
    run, = runs_in(project)
    record = record_of(project, run["id"])
    assert record["status"] == "failed" and record["outputs"]["exit_code"] == 28
    assert "the store's disk filled while the job ran" in record["outputs"]["message"]
    assert "disk full after" in (project.store / "runs" / run["id"] / "log.txt").read_text()
    assert_store_intact(project)


@engine
def test_gigabytes_of_log_are_capped_said_in_the_record_and_memory_stays_bounded(
        project, docker_client):
    project.dataset()
    gib = 2
    script = f"""
import json, sys
line = b"x" * 1023 + b"\\n"
block = line * 1024
for _ in range({gib} * 1024):
    sys.stdout.buffer.write(block)
json.dump({{"done": 1}}, open("/out/metrics.json", "w"))
"""
    cap = 1 << 20
    process = subprocess.Popen(
        [*REPRUN, "run", str(project.spec(script=script, resources="{cpus: 1, memory: 512m, timeout: 10m}"))],
        cwd=project.root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "REPRUN_STORE": str(project.store), "PYTHONPATH": str(REPO),
             "REPRUN_LOG_CAP": str(cap)})
    peak_kib = 0
    while process.poll() is None:
        try:
            status = Path(f"/proc/{process.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError):
            pass
        time.sleep(0.2)
    assert process.returncode == 0
    run, = runs_in(project)
    outputs = record_of(project, run["id"])["outputs"]
    assert outputs["log_truncated"] is True and outputs["log_bytes"] == gib << 30
    assert f"the log was capped at {cap} bytes; the job printed {gib << 30}" in outputs["message"]
    assert (project.store / "runs" / run["id"] / "log.txt").stat().st_size == cap
    assert 0 < peak_kib < 200 * 1024, f"reprun peaked at {peak_kib} KiB"
    assert_store_intact(project)


NOT_UTF8 = b"caf\xe9 \xff\xfe \xc3\x28 \x1b[31mred\x1b[0m\n"


@engine
def test_output_that_is_not_utf8_is_kept_byte_for_byte_and_shown_without_a_crash(project):
    project.dataset()
    script = f"""
import sys
sys.stdout.buffer.write({NOT_UTF8!r}); sys.stdout.flush()
sys.stderr.buffer.write({NOT_UTF8!r}); sys.stderr.flush()
sys.exit(3)
"""
    result = project.reprun("run", str(project.spec(script=script)))
    assert result.returncode == 5 and "Traceback" not in result.stderr
    assert "caf\ufffd" in result.stderr.split("last lines of the log")[1]
    run, = runs_in(project)
    assert (project.store / "runs" / run["id"] / "log.txt").read_bytes() == NOT_UTF8 * 2
    assert record_of(project, run["id"])["outputs"]["exit_code"] == 3
    shown = project.reprun("runs", "show", run["id"])
    assert shown.returncode == 0, shown.stderr


@engine
def test_an_artifact_whose_name_is_not_utf8_is_refused_with_exit_5(project):
    project.dataset()
    script = """
import json, os
json.dump({"score": 1}, open("/out/metrics.json", "w"))
open(os.fsencode("/out/") + b"caf\\xe9.bin", "wb").write(b"model")
"""
    result = project.reprun("run", str(project.spec(script=script)))
    assert result.returncode == 5, result.stderr
    assert "caf\\xe9.bin has a name that is not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


# --- a second engine, started by the test, that the test may kill ------------------------------

class SecondEngine:
    """A dockerd of our own (own data, exec root, socket; no network), so that killing and
    restarting an engine mid-run never touches the shared one."""

    def __init__(self, base: Path):
        self.base = base
        self.socket = base / "docker.sock"
        self.host = f"unix://{self.socket}"
        (base / "daemon.json").write_text("{}")
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.base / "dockerd.log", "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--data-root", str(self.base / "data"), "--exec-root",
             str(self.base / "exec"), "--pidfile", str(self.base / "docker.pid"), "-H", self.host,
             "--bridge=none", "--iptables=false", "--ip6tables=false", "--storage-driver=vfs",
             "--config-file", str(self.base / "daemon.json")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.answers():
            assert self.process.poll() is None, (self.base / "dockerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the second engine did not answer in 60 s"
            time.sleep(0.2)

    def answers(self) -> bool:
        return subprocess.run(["docker", "-H", self.host, "version"], capture_output=True,
                              timeout=30).returncode == 0

    def client(self):
        import docker
        return docker.DockerClient(base_url=self.host, version="auto")

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def crash(self, container_ids: tuple[str, ...] = ()) -> None:
        """Everything of this engine dies at once, as in a power cut: dockerd, its containerd
        and shims, and the processes of the given containers."""
        self.kill()
        self._kill_own_processes()
        # A killed process can linger as a zombie where nothing reaps orphans, and dockerd would
        # take its pid file for a live containerd (scripts/engine.sh clears them the same way).
        for stale in (self.base / "exec" / "containerd" / "containerd.pid", self.base / "docker.pid"):
            stale.unlink(missing_ok=True)
        for container_id in container_ids:
            procs = Path(f"/sys/fs/cgroup/pids/docker/{container_id}/cgroup.procs")
            for pid in (procs.read_text().split() if procs.exists() else []):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def cleanup(self) -> None:
        self.stop()
        self._kill_own_processes()
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                  if line.split()[1].startswith(str(self.base))]
        for mount in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        subprocess.run(["rm", "-rf", str(self.base)], check=False)

    def _kill_own_processes(self) -> None:
        # Its containerd and shims were started by it and outlive a killed dockerd; they are
        # found by their command lines, which name this engine's own folders.
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if str(self.base).encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def second_engine():
    import shutil
    import tempfile
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        pytest.skip("needs dockerd and root to start a second engine")
    # Unix socket paths are short: keep the folder directly under /tmp.
    engine = SecondEngine(Path(tempfile.mkdtemp(prefix="rr2-", dir="/tmp")))
    try:
        engine.start()
        yield engine
    finally:
        engine.cleanup()


@engine
@pytest.mark.xdist_group("second-engine")
def test_image_facts_are_scoped_to_the_engine_that_ran_the_job(second_engine, docker_client):
    # Which BLAS kernels an image's libraries pick depends on the machine's CPU. (Docker 20.10
    # derives an engine's ID from its host's key, so two engines on one host share the scope.)
    from orchestrator.execution.local import LocalEngine
    for client in (docker_client, second_engine.client()):
        assert LocalEngine(client).facts_scope() == f"engine {client.info()['ID']}"


@engine
@pytest.mark.xdist_group("second-engine")
@pytest.mark.parametrize("how", ["graceful-restart", "crash-and-restart"])
def test_an_engine_restarted_mid_run_gives_an_error_record_exit_4_and_no_container(
        project, second_engine, tiny_ref, how):
    project.dataset()
    spec = project.spec(command=["sh", "-c", "echo started; sleep 120"], image=tiny_ref)
    started = Started(project, "run", str(spec), env={"DOCKER_HOST": second_engine.host})
    client = second_engine.client()
    container = wait_for_container(client, started.process.pid)
    if how == "graceful-restart":
        second_engine.stop()        # the engine stops its containers on the way down
    else:
        second_engine.crash((container.id,))
    second_engine.start()
    code, _, stderr = started.finish(timeout=180)
    assert code == 4, stderr
    assert "lost the engine during the run" in stderr and "Traceback" not in stderr
    client = second_engine.client()
    assert containers(client, id=container.id) == []
    run, = runs_in(project)
    record = record_of(project, run["id"])
    assert record["status"] == "error" and record["outputs"]["reason"] == "engine"
    assert_store_intact(project)


@engine
@pytest.mark.xdist_group("second-engine")
def test_an_engine_that_stays_away_leaves_a_container_that_gc_removes_once_it_is_back(
        project, second_engine, tiny_ref):
    project.dataset()
    spec = project.spec(command=["sh", "-c", "echo started; sleep 120"], image=tiny_ref)
    env = {"DOCKER_HOST": second_engine.host, "REPRUN_ENGINE_PATIENCE": "2"}
    started = Started(project, "run", str(spec), env=env)
    container = wait_for_container(second_engine.client(), started.process.pid)
    second_engine.crash((container.id,))
    code, _, stderr = started.finish(timeout=180)
    assert code == 4, stderr
    assert "`reprun gc` removes it once the engine is back" in stderr
    second_engine.start()
    client = second_engine.client()
    assert containers(client, id=container.id)   # still there
    gc = subprocess.run([*REPRUN, "gc"], cwd=project.root, capture_output=True, text=True,
                        env={**os.environ, **env, "REPRUN_STORE": str(project.store),
                             "PYTHONPATH": str(REPO)}, timeout=120)
    assert gc.returncode == 0, gc.stderr
    assert f"removed container {container.name}" in gc.stdout
    assert containers(client, id=container.id) == []


@engine
def test_the_manifest_of_an_image_without_python_lists_what_is_missing_and_the_run_succeeds(
        project, tiny_ref):
    project.dataset()
    spec = project.spec(command=["sh", "-c", 'echo \'{{"score": 1}}\' > /out/metrics.json'],
                        image=tiny_ref)
    result = project.reprun("run", str(spec))
    assert result.returncode == 0, result.stderr
    run, = runs_in(project)
    env = record_of(project, run["id"])["environment"]
    assert set(env["missing"]) >= {"python", "os_packages"}
    assert env["python"] == {} and env["python_distributions"] == {}
    assert env["os"]["id"] == "tiny" and env["kernel"] and env["user"]["uid"] == 65534
    assert env["limits"]["memory_bytes"] == 512 << 20 and env["env"]["REPRUN_SEED"] == "7"


def build_spec(project, tiny_ref: str, version: str) -> Path:
    """A spec whose image reprun builds from a Dockerfile, locked to what it built."""
    context = project.root / "ctx"
    context.mkdir(exist_ok=True)
    (context / "Dockerfile").write_text(f"FROM {tiny_ref}\nRUN echo {version} > /version\n")
    spec = project.spec(command=["sh", "-c", "echo started; sleep 120"], image=tiny_ref)
    spec.write_text(spec.read_text().replace(f"  ref: {tiny_ref}\n", "  build: {context: ctx}\n"))
    locked = project.reprun("lock", str(spec))
    assert locked.returncode == 0, locked.stderr
    return spec


@engine
@pytest.mark.xdist_group("gc")     # gc removes every leftover on the engine, not just this test's
def test_reprun_killed_mid_run_is_repaired_next_time_and_gc_removes_only_what_it_left(
        project, docker_client, tiny_ref):
    import socket
    sys.path.insert(0, str(TESTS))
    from imagekit import import_tiny_image
    project.dataset()
    started = Started(project, "run", str(build_spec(project, tiny_ref, "v1")))
    container = wait_for_container(docker_client, started.process.pid)
    first_build = container.attrs["Image"]
    started.process.kill()                       # SIGKILL: no handler, no cleanup
    started.finish()
    run, = runs_in(project)                      # the next command repairs the store first
    assert run["status"] == "interrupted" and "reprun stopped before" in run["note"]
    assert assert_store_intact(project)["unrecorded"] == [run["id"]]
    build_spec(project, tiny_ref, "v2")          # a rebuild never moves a tag off v1
    v1_tag = f"reprun/job:{first_build.removeprefix('sha256:')[:12]}"
    assert docker_client.images.get(first_build).tags == [v1_tag]
    docker_client.images.remove(v1_tag, force=True)   # the user drops the old pin's tag
    assert docker_client.images.get(first_build).tags == []

    # What reprun does not own, or what a living reprun still uses, must survive gc.
    mine = f"reprun-test/not-reprun-{os.getpid()}:1"
    dangling = import_tiny_image(docker_client, mine)
    import_tiny_image(docker_client, mine)           # the first one is now dangling, not reprun's
    unlabelled = docker_client.containers.create(tiny_ref, ["sleep", "60"])
    in_use = docker_client.containers.create(tiny_ref, ["sleep", "60"], labels={
        "io.reprun": "1", "io.reprun.run-id": "a-live-run",
        "io.reprun.owner": f"{socket.gethostname()}:{os.getpid()}"})
    try:
        gc = project.reprun("gc")
        assert gc.returncode == 0, gc.stderr
        said = gc.stdout.splitlines()
        assert f"removed run folder {project.store / 'runs' / run['id']} (interrupted before a " \
               "record was written)" in said
        assert any(line.startswith(f"removed container {container.name} (run {run['id']}")
                   for line in said), said
        assert f"removed image {first_build[:19]} (an untagged build of spec job that no " \
               "recorded run used)" in said
        assert len(said) == 3, said
        assert not containers(docker_client, id=container.id)
        assert not (project.store / "runs" / run["id"]).exists()
        for survivor in (unlabelled, in_use):
            survivor.reload()
        assert docker_client.images.get(dangling.id).tags == []
        v2 = re.search(r"digest: (sha256:[0-9a-f]{64})",
                       (project.root / "job.yaml").read_text())[1]
        assert docker_client.images.get(f"reprun/job:{v2.removeprefix('sha256:')[:12]}")
        again = project.reprun("gc")
        assert again.stdout.strip() == "nothing to remove: reprun left nothing behind"
        assert_store_intact(project)
    finally:
        for leftover in (unlabelled, in_use):
            leftover.remove(force=True)
        for image in (dangling.id, mine):
            try:
                docker_client.images.remove(image, force=True)
            except Exception:
                pass


@engine
@pytest.mark.xdist_group("gc")
def test_gc_survives_a_container_that_another_reprun_removes_while_gc_lists_them(
        docker_client, tiny_ref, monkeypatch):
    from orchestrator.execution.job import LABEL, LABEL_OWNER, LABEL_RUN
    from orchestrator.execution.owners import owner_label
    from orchestrator.execution.leftovers import remove_leftovers
    # Owned by this living process, so that a gc elsewhere leaves them to this test.
    labels = {LABEL: "1", LABEL_OWNER: owner_label()}
    gone = docker_client.containers.create(tiny_ref, ["true"],
                                           labels={**labels, LABEL_RUN: "vanishing"})
    leftover = docker_client.containers.create(tiny_ref, ["true"],
                                               labels={**labels, LABEL_RUN: "finished"})
    inspect = docker_client.api.inspect_container

    def removed_by_someone_else_first(container_id):
        if container_id == gone.id:
            docker_client.api.remove_container(gone.id, force=True)
        return inspect(container_id)

    monkeypatch.setattr(docker_client.api, "inspect_container", removed_by_someone_else_first)
    removed = remove_leftovers(docker_client, finished_runs={"finished", "vanishing"})
    assert removed == [f"{leftover.name} (run finished: run finished is already over in the store)"]
    assert not containers(docker_client, id=leftover.id)
