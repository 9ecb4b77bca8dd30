"""Pinned datasets: the hash anyone can recompute with coreutils, the cache, and refusals."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orchestrator.dataset import parallel, tree as dataset
from orchestrator.dataset.tree import (DatasetDigest, FileEntry, HashCache, ManifestDiff,
                                       diff_manifests, hash_dataset, tree_sha256, verify_dataset)
from orchestrator.errors import ExitCode, InfrastructureError, PinMismatch, SpecError

AN_HOUR_AGO = time.time() - 3600


def coreutils_tree_hash(folder: Path) -> str:
    out = subprocess.run(
        ["bash", "-c",
         '(cd "$1" && find -L . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum',
         "tree-hash", str(folder)],
        check=True, capture_output=True,
    )
    return out.stdout.split()[0].decode()


def coreutils_file_hash(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], check=True, capture_output=True).stdout.split()[0].decode()


def written_an_hour_ago(root: Path) -> Path:
    """Datasets are usually old; files written this very second are deliberately not cached."""
    for folder, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(folder, name), (AN_HOUR_AGO, AN_HOUR_AGO), follow_symlinks=False)
    return root


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    return root


@pytest.fixture
def digits(tmp_path: Path) -> Path:
    return written_an_hour_ago(make_tree(tmp_path / "digits", {
        "train/part-0.csv": b"0,1,2\n" * 500,
        "train/part-1.csv": b"3,4,5\n" * 500,
        "test.csv": b"6,7,8\n" * 100,
        "README": b"UCI digits\n",
    }))


@pytest.fixture
def cache(tmp_path: Path) -> HashCache:
    return HashCache(tmp_path / "cache" / "hashes.sqlite")


# --------------------------------------------------------------------------- the coreutils contract

def test_the_tree_hash_is_the_one_coreutils_computes_for_awkward_names(tmp_path: Path):
    tree = make_tree(tmp_path / "awkward", {
        "a/b/c/deep.bin": os.urandom(3000),
        "a-b/next-to-a.txt": b"sorts before a/ in the C locale\n",
        "empty": b"",
        "sub/also-empty": b"",
        "données/été.csv": "unicode\n".encode(),
        "with space.txt": b"spaces\n",
        "back\\slash": b"backslash\n",
        "new\nline": b"newline\n",
        "carriage\rreturn": b"cr\n",
        "Upper": b"upper sorts before lower\n",
        "big.bin": os.urandom(3 * parallel.BLOCK + 17),
    })
    (tree / "empty-folder").mkdir()
    (tree / "a" / "empty-folder").mkdir()
    (tree / "link-inside").symlink_to("with space.txt")
    (tree / "folder-link").symlink_to("données")

    digest = hash_dataset(tree)

    assert digest.kind == "tree"
    assert digest.sha256 == coreutils_tree_hash(tree)
    listed = {e.path: e.sha256 for e in digest.files}
    assert listed["./link-inside"] == listed["./with space.txt"]     # what the job reads
    assert listed["./folder-link/été.csv"] == listed["./données/été.csv"]
    assert digest.bytes == sum(e.size for e in digest.files)


def test_a_name_that_is_not_utf8_hashes_as_coreutils_does(tmp_path: Path):
    tree = tmp_path / "latin1"
    tree.mkdir()
    with open(os.fsencode(tree) + b"/caf\xe9.csv", "wb") as f:     # Latin-1, as old tools wrote
        f.write(b"1,2\n")
    assert hash_dataset(tree).sha256 == coreutils_tree_hash(tree)


def test_an_empty_folder_hashes_as_coreutils_does(tmp_path: Path):
    # GNU xargs runs sha256sum once even with no names; that stdin line is part of the pin.
    (tmp_path / "nothing").mkdir()
    digest = hash_dataset(tmp_path / "nothing")
    assert digest.sha256 == coreutils_tree_hash(tmp_path / "nothing")
    assert digest.files == () and digest.bytes == 0


def test_a_single_file_hashes_as_sha256sum_does(tmp_path: Path):
    data = tmp_path / "digits.csv"
    data.write_bytes(os.urandom(2 * parallel.BLOCK + 5))
    digest = hash_dataset(data)
    assert digest.kind == "file"
    assert digest.sha256 == coreutils_file_hash(data)
    assert digest.files == (FileEntry("digits.csv", digest.sha256, data.stat().st_size),)


def test_a_big_file_read_ahead_hashes_the_same(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(parallel, "READ_AHEAD_FROM", 1)
    data = tmp_path / "big.bin"
    data.write_bytes(os.urandom(5 * parallel.BLOCK + 3))
    assert hash_dataset(data).sha256 == coreutils_file_hash(data)


def test_a_tree_of_big_and_small_files_hashes_the_same_whichever_thread_reads_them(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(parallel, "READ_AHEAD_FROM", 2 * parallel.BLOCK)
    tree = make_tree(tmp_path / "mixed", {
        **{f"small/{i:03}.csv": os.urandom(1000 + i) for i in range(50)},
        **{f"big/{i}.bin": os.urandom(3 * parallel.BLOCK + i) for i in range(3)},
    })
    digest = hash_dataset(tree, workers=3)
    assert digest.sha256 == coreutils_tree_hash(tree)
    assert digest.bytes_read == digest.bytes


def test_tree_sha256_does_not_depend_on_the_order_it_is_given():
    entries = [FileEntry("./b", "1" * 64, 1), FileEntry("./a/x", "2" * 64, 2), FileEntry("./a-x", "3" * 64, 3)]
    assert tree_sha256(entries) == tree_sha256(reversed(entries))


def test_the_hash_is_the_same_with_one_worker_or_many(digits: Path):
    assert hash_dataset(digits, workers=1).sha256 == hash_dataset(digits, workers=8).sha256


# --------------------------------------------------------------------------- helper processes

@pytest.fixture
def helpers(monkeypatch) -> list:
    """Helper processes from the first file on; each started HelperProcesses is appended."""
    started = []
    real_start = parallel.HelperProcesses.start.__func__

    def start(cls, count, not_after_ns):
        made = real_start(cls, count, not_after_ns)
        started.append(made)
        return made

    monkeypatch.setattr(parallel, "HELPERS_FROM", 1)
    monkeypatch.setattr(parallel.HelperProcesses, "start", classmethod(start))
    return started


def many_files(root: Path, count: int = 300) -> Path:
    return written_an_hour_ago(make_tree(root, {
        f"part-{i % 7}/sample-{i:04}.bin": os.urandom(500 + 37 * i) for i in range(count)}))


def test_helper_processes_hash_a_tree_as_coreutils_does(tmp_path: Path, helpers: list, cache: HashCache):
    tree = many_files(tmp_path / "tree")
    digest = hash_dataset(tree, workers=2, cache=cache)
    assert helpers and helpers[0] is not None and len(helpers[0].procs) == 2
    assert all(proc.returncode is not None for proc in helpers[0].procs)    # none left running
    assert digest.sha256 == coreutils_tree_hash(tree)
    assert digest.bytes_read == digest.bytes and digest.cache_hits == 0
    again = hash_dataset(tree, workers=2, cache=cache)
    assert again.sha256 == digest.sha256 and again.cache_hits == 300 and again.bytes_read == 0


def test_a_file_gone_before_its_helper_reads_it_is_named(tmp_path: Path, helpers: list, monkeypatch):
    tree = many_files(tmp_path / "tree", count=100)
    real_walk = dataset.walk_dataset

    def walk_then_lose_the_last(path, root):
        found = list(real_walk(path, root))
        yield from found
        os.unlink(found[-1].abs)    # still in the batch not yet sent to a helper

    monkeypatch.setattr(dataset, "walk_dataset", walk_then_lose_the_last)
    with pytest.raises(SpecError, match=r"sample-\d{4}.bin cannot be read: No such file or directory"):
        hash_dataset(tree, workers=2)
    assert all(proc.returncode is not None for proc in helpers[0].procs)


def test_files_that_grow_or_shrink_before_their_helper_reads_them_hash_as_they_are_then(
        tmp_path: Path, helpers: list, monkeypatch, cache: HashCache):
    tree = many_files(tmp_path / "tree", count=100)
    (tree / "block.bin").write_bytes(os.urandom(parallel.BLOCK))   # the helper's read stops at
    written_an_hour_ago(tree)                                     # the size the walk saw
    real_walk = dataset.walk_dataset

    def walk_then_change(path, root):
        found = list(real_walk(path, root))
        yield from found
        grown, shrunk = tree / "block.bin", tree / "part-0" / "sample-0000.bin"
        with open(grown, "ab") as f:        # both still in the batch not yet sent
            f.write(b"more")
        os.truncate(shrunk, 3)
        for changed in (grown, shrunk):     # old enough to cache, as the rest
            os.utime(changed, (AN_HOUR_AGO, AN_HOUR_AGO))

    monkeypatch.setattr(dataset, "walk_dataset", walk_then_change)
    digest = hash_dataset(tree, workers=2, cache=cache)
    assert digest.sha256 == coreutils_tree_hash(tree)
    sizes = {entry.path: entry.size for entry in digest.files}
    assert sizes["./block.bin"] == parallel.BLOCK + 4 and sizes["./part-0/sample-0000.bin"] == 3
    monkeypatch.setattr(dataset, "walk_dataset", real_walk)
    again = hash_dataset(tree, workers=2, cache=cache)     # the two are read again, only they
    assert again.cache_hits == 99 and again.sha256 == digest.sha256


def test_unreadable_files_in_every_helper_stop_the_hash_at_once_instead_of_hanging(
        tmp_path: Path, helpers: list, monkeypatch):
    # Enough files that a helper whose answers went unread would fill its pipe and block.
    tree = many_files(tmp_path / "tree", count=6000)
    real_walk = dataset.walk_dataset

    def walk_with_missing_files(path, root):
        for n, found in enumerate(real_walk(path, root)):
            if n in (100, 200, 300, 400):     # spread over both helpers' batches
                found = found._replace(abs=found.abs + b".gone")
            yield found

    monkeypatch.setattr(dataset, "walk_dataset", walk_with_missing_files)
    outcome: list[BaseException] = []

    def hash_it() -> None:
        try:
            hash_dataset(tree, workers=2)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=hash_it, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "hashing hung on unreadable files"
    assert isinstance(outcome[0], SpecError) and "cannot be read: No such file" in str(outcome[0])
    assert all(proc.returncode is not None for proc in helpers[0].procs)


def test_big_files_stay_with_the_threads_that_read_ahead_once_helpers_run(
        tmp_path: Path, helpers: list, monkeypatch):
    monkeypatch.setattr(parallel, "READ_AHEAD_FROM", 2 * parallel.BLOCK)
    tree = many_files(tmp_path / "tree", count=100)
    (tree / "part-3" / "big.bin").write_bytes(os.urandom(3 * parallel.BLOCK))
    to_helpers: list[bytes] = []
    real_submit = parallel.HelperProcesses.submit
    monkeypatch.setattr(parallel.HelperProcesses, "submit",
                        lambda self, i, job: (to_helpers.append(job.rel), real_submit(self, i, job)))
    assert hash_dataset(tree, workers=2).sha256 == coreutils_tree_hash(tree)
    assert len(to_helpers) > 0 and b"./part-3/big.bin" not in to_helpers


def test_an_interrupt_while_helpers_start_leaves_none_running(tmp_path: Path, helpers: list,
                                                              monkeypatch):
    tree = many_files(tmp_path / "tree", count=100)
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen

    def popen_then_interrupt(*args, **kwargs):
        if started:
            raise KeyboardInterrupt
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(parallel.subprocess, "Popen", popen_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hash_dataset(tree, workers=2)
    assert started and started[0].returncode is not None


def test_a_helper_that_dies_is_an_infrastructure_error(tmp_path: Path, helpers: list, monkeypatch):
    tree = many_files(tmp_path / "tree", count=100)
    monkeypatch.setattr(parallel.sys, "executable", "/bin/false")    # exits at once, reads nothing
    with pytest.raises(InfrastructureError, match=r"hashing helper process ended with exit code 1 ") as caught:
        hash_dataset(tree, workers=2)
    assert caught.value.exit_code == ExitCode.INFRASTRUCTURE


def test_where_helpers_cannot_start_threads_hash_it_all(tmp_path: Path, helpers: list, monkeypatch):
    tree = many_files(tmp_path / "tree", count=100)
    monkeypatch.setattr(parallel.sys, "executable", str(tmp_path / "no-such-python"))
    assert hash_dataset(tree, workers=2).sha256 == coreutils_tree_hash(tree)
    assert helpers == [None]


def test_an_interrupt_while_helpers_hash_leaves_none_running(tmp_path: Path, helpers: list):
    tree = many_files(tmp_path / "tree")

    def interrupt(done: int, total: int) -> None:
        if helpers:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hash_dataset(tree, workers=2, progress=interrupt)
    assert all(proc.returncode is not None for proc in helpers[0].procs)


def test_one_cpu_gets_no_helpers(tmp_path: Path, helpers: list):
    tree = many_files(tmp_path / "tree", count=50)
    assert hash_dataset(tree, workers=1).sha256 == coreutils_tree_hash(tree)
    assert helpers == [None]


# --------------------------------------------------------------------------- pins

def test_a_dataset_that_matches_its_pin_is_accepted(digits: Path):
    digest = verify_dataset(digits, coreutils_tree_hash(digits))
    assert isinstance(digest, DatasetDigest) and len(digest.files) == 4


def test_a_dataset_with_one_changed_byte_is_refused_and_the_file_is_named(digits: Path, cache: HashCache):
    pin = verify_dataset(digits, coreutils_tree_hash(digits), cache=cache).sha256
    part = digits / "train" / "part-1.csv"
    content = bytearray(part.read_bytes())
    content[100] ^= 1
    part.write_bytes(bytes(content))

    with pytest.raises(PinMismatch) as refused:
        verify_dataset(digits, pin, cache=cache)

    error = refused.value
    assert error.exit_code == ExitCode.PIN_MISMATCH == 3
    assert str(digits) in error.message and pin in error.message
    assert hash_dataset(digits).sha256 in error.message
    assert "changed: ./train/part-1.csv" in error.details
    assert not any(d.startswith(("added", "removed")) for d in error.details)


def test_files_added_and_removed_are_named_and_long_lists_are_cut(digits: Path, cache: HashCache):
    pin = verify_dataset(digits, coreutils_tree_hash(digits), cache=cache).sha256
    (digits / "README").unlink()
    for n in range(25):
        (digits / f"extra-{n:02}.csv").write_bytes(b"%d\n" % n)

    with pytest.raises(PinMismatch) as refused:
        verify_dataset(digits, pin, cache=cache)

    details = refused.value.details
    assert "removed: ./README" in details
    assert sum(d.startswith("added: ") for d in details) == 20
    assert "... and 5 more added" in details


def test_without_an_earlier_manifest_the_refusal_says_so(digits: Path):
    with pytest.raises(PinMismatch) as refused:
        verify_dataset(digits, "0" * 64)
    assert any("No earlier manifest" in d for d in refused.value.details)
    assert "0" * 64 in refused.value.message


def test_a_changed_single_file_is_refused_and_named(tmp_path: Path, cache: HashCache):
    data = tmp_path / "digits.csv"
    data.write_bytes(b"0,1\n" * 100)
    pin = verify_dataset(data, coreutils_file_hash(data), cache=cache).sha256
    data.write_bytes(b"0,1\n" * 99 + b"0,2\n")
    with pytest.raises(PinMismatch) as refused:
        verify_dataset(data, pin, cache=cache)
    assert str(data) in refused.value.message
    assert "changed: digits.csv" in refused.value.details


def test_a_pin_that_is_not_a_sha256_is_a_spec_error(digits: Path):
    with pytest.raises(SpecError):
        verify_dataset(digits, "not-a-hash")


def test_diff_manifests_sorts_names_as_the_tree_hash_does():
    old = [FileEntry("./a", "1" * 64, 1), FileEntry("./b", "2" * 64, 1)]
    new = [FileEntry("./b", "3" * 64, 1), FileEntry("./c/x", "4" * 64, 1), FileEntry("./c-x", "5" * 64, 1)]
    assert diff_manifests(old, new) == ManifestDiff(added=("./c-x", "./c/x"), removed=("./a",), changed=("./b",))


# --------------------------------------------------------------------------- the cache

def test_an_unchanged_dataset_is_not_read_again(digits: Path, cache: HashCache):
    first = hash_dataset(digits, cache=cache)
    again = hash_dataset(digits, cache=cache)
    assert first.cache_hits == 0 and first.bytes_read == first.bytes
    assert again.cache_hits == 4 and again.bytes_read == 0
    assert again == DatasetDigest(first.sha256, "tree", first.files, first.bytes, cache_hits=4, bytes_read=0)


def test_without_a_cache_every_byte_is_read_again(digits: Path, cache: HashCache):
    hash_dataset(digits, cache=cache)
    uncached = hash_dataset(digits, cache=None)
    assert uncached.cache_hits == 0
    assert uncached.bytes_read == uncached.bytes == sum((p.stat().st_size for p in digits.rglob("*") if p.is_file()))


def test_only_the_file_that_changed_is_read_again(digits: Path, cache: HashCache):
    hash_dataset(digits, cache=cache)
    changed = digits / "test.csv"
    changed.write_bytes(b"9,9,9\n" * 100)                 # same size, new mtime and ctime
    os.utime(changed, (AN_HOUR_AGO + 60, AN_HOUR_AGO + 60))  # ...edited a while ago
    again = hash_dataset(digits, cache=cache)
    assert again.cache_hits == 3
    assert again.bytes_read == 600
    assert again.sha256 == coreutils_tree_hash(digits)


def test_a_rewrite_that_restores_the_mtime_is_still_noticed(digits: Path, cache: HashCache):
    hash_dataset(digits, cache=cache)
    part = digits / "train" / "part-0.csv"
    before = part.stat()
    part.write_bytes(b"9,9,9\n" * 500)
    os.utime(part, ns=(before.st_atime_ns, before.st_mtime_ns))     # as rsync -t would; ctime moves
    again = hash_dataset(digits, cache=cache)
    assert again.sha256 == coreutils_tree_hash(digits)
    assert again.cache_hits == 3


def test_a_file_written_just_now_is_read_again_next_time(tmp_path: Path, cache: HashCache):
    # It could still change within the same timestamp tick, unseen by its mtime.
    fresh = make_tree(tmp_path / "fresh", {"a.csv": b"1\n", "b.csv": b"2\n"})
    hash_dataset(fresh, cache=cache)
    assert hash_dataset(fresh, cache=cache).cache_hits == 0


def test_files_that_disappear_are_dropped_from_the_cache(digits: Path, cache: HashCache):
    hash_dataset(digits, cache=cache)
    (digits / "README").unlink()
    hash_dataset(digits, cache=cache)
    with sqlite3.connect(cache.db_path) as db:
        cached = {row[0] for row in db.execute("SELECT path FROM hash_cache")}
    assert cached == {os.fsencode(p.resolve()) for p in digits.rglob("*") if p.is_file()}


def test_the_manifest_of_a_hashed_dataset_is_remembered(digits: Path, cache: HashCache):
    digest = hash_dataset(digits, cache=cache)
    assert cache.manifest_for(digest.sha256) == digest.files
    assert cache.manifest_for("f" * 64) is None


def test_a_cache_survives_reopening_and_lives_alongside_other_tables(tmp_path: Path, digits: Path):
    db = tmp_path / "store.sqlite"
    with sqlite3.connect(db) as other:
        other.execute("CREATE TABLE runs (id TEXT PRIMARY KEY)")
    hash_dataset(digits, cache=HashCache(db))
    assert hash_dataset(digits, cache=HashCache(db)).cache_hits == 4
    with sqlite3.connect(db) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_several_processes_can_fill_one_cache_at_once(tmp_path: Path):
    trees = [written_an_hour_ago(make_tree(tmp_path / f"t{n}", {f"f{i}": os.urandom(64) for i in range(200)}))
             for n in range(4)]
    db = tmp_path / "shared.sqlite"
    script = ("import sys; from pathlib import Path; from orchestrator.dataset.tree import HashCache, hash_dataset;"
              "hash_dataset(Path(sys.argv[1]), cache=HashCache(Path(sys.argv[2])))")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(t), str(db)]) for t in trees for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0] * len(procs)
    assert all(hash_dataset(t, cache=HashCache(db)).cache_hits == 200 for t in trees)


# --------------------------------------------------------------------------- links and missing paths

def test_a_link_that_leads_outside_the_dataset_is_refused_and_named(digits: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host file\n")
    (digits / "train" / "leak.csv").symlink_to(secret)
    threads_before = threading.active_count()
    with pytest.raises(SpecError) as refused:
        hash_dataset(digits, workers=4)
    assert "./train/leak.csv" in refused.value.message and str(secret) in refused.value.message
    assert refused.value.exit_code == ExitCode.INVALID
    assert threading.active_count() == threads_before      # no hashing thread left behind


def test_a_dangling_link_to_outside_is_refused(digits: Path):
    (digits / "gone").symlink_to("/nonexistent/elsewhere")
    with pytest.raises(SpecError, match=r"\./gone"):
        hash_dataset(digits)


def test_a_link_to_a_folder_outside_via_dotdot_is_refused(digits: Path):
    (digits / "up").symlink_to("../..")
    with pytest.raises(SpecError, match=r"\./up"):
        hash_dataset(digits)


def test_links_that_stay_inside_are_hashed_as_what_they_lead_to(digits: Path):
    before = hash_dataset(digits).sha256
    (digits / "latest.csv").symlink_to("train/part-1.csv")
    (digits / "train-again").symlink_to("train")
    after = hash_dataset(digits)
    assert after.sha256 != before and after.sha256 == coreutils_tree_hash(digits)
    assert {"./latest.csv", "./train-again/part-0.csv", "./train-again/part-1.csv"} <= \
        {e.path for e in after.files}


def test_re_pointing_a_link_changes_the_pin_and_names_the_link(digits: Path, cache: HashCache):
    (digits / "current.csv").symlink_to("train/part-0.csv")
    pinned = hash_dataset(digits, cache=cache).sha256
    (digits / "current.csv").unlink()
    (digits / "current.csv").symlink_to("train/part-1.csv")
    with pytest.raises(PinMismatch) as refused:
        verify_dataset(digits, pinned, cache=cache)
    assert refused.value.details[0] == "changed: ./current.csv"


@pytest.mark.parametrize("make, named", [
    (lambda d: (d / "train" / "dangling").symlink_to("not-yet-there"),
     "./train/dangling -> not-yet-there (it leads nowhere)"),
    (lambda d: (d / "train" / "again").symlink_to(".."), "./train/again -> .. (a loop"),
    (lambda d: (d / "self").symlink_to("self"), "./self -> self (a loop of links)"),
    (lambda d: os.mkfifo(d / "train" / "queue"), "./train/queue (a FIFO)"),
    (lambda d: (d / "pipe").symlink_to("train/queue") or os.mkfifo(d / "train" / "queue"),
     "./pipe -> train/queue (a FIFO)"),
], ids=["dangling-link", "folder-loop", "link-loop", "fifo", "link-to-fifo"])
def test_what_a_job_cannot_read_as_a_file_is_refused_with_its_name(digits: Path, make, named):
    make(digits)
    with pytest.raises(SpecError) as refused:
        hash_dataset(digits)
    assert named in refused.value.message or named in refused.value.details
    assert refused.value.exit_code == ExitCode.INVALID


def test_a_device_or_socket_in_a_dataset_is_refused_with_its_name(digits: Path):
    import socket
    import stat as stat_
    try:
        os.mknod(digits / "train" / "null", stat_.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(digits / "control.sock"))
    try:
        with pytest.raises(SpecError) as refused:
            hash_dataset(digits)
    finally:
        listening.close()
    assert {"./train/null (a character device)", "./control.sock (a socket)"} <= \
        set(refused.value.details)


def test_a_dataset_path_that_is_itself_a_link_is_followed(digits: Path, tmp_path: Path):
    (tmp_path / "current").symlink_to(digits)
    assert hash_dataset(tmp_path / "current").sha256 == coreutils_tree_hash(digits)


def test_a_missing_dataset_is_a_spec_error_that_names_it(tmp_path: Path):
    with pytest.raises(SpecError, match="does not exist") as refused:
        hash_dataset(tmp_path / "no-such-data")
    assert str(tmp_path / "no-such-data") in refused.value.message


def test_an_unreadable_file_is_named(digits: Path, monkeypatch):
    # Simulated: the tests may run as root, who can read any file.
    real_open = os.open

    def refuse_readme(path, flags, *args, **kwargs):
        if os.fsdecode(path).endswith("/README"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(dataset.os, "open", refuse_readme)
    with pytest.raises(SpecError, match=r"README cannot be read: Permission denied"):
        hash_dataset(digits, workers=2)


# --------------------------------------------------------------------------- progress

def test_progress_reaches_the_total(digits: Path, cache: HashCache):
    calls: list[tuple[int, int]] = []
    digest = hash_dataset(digits, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (digest.bytes, digest.bytes)
    assert all(0 <= done <= total for done, total in calls)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_progress_is_called_from_the_callers_thread(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(parallel, "PROGRESS_INTERVAL", 0.001)
    big = make_tree(tmp_path / "big", {f"f{i}": os.urandom(parallel.BLOCK) for i in range(16)})
    threads = set()
    hash_dataset(big, progress=lambda done, total: threads.add(threading.get_ident()), workers=2)
    assert threads == {threading.get_ident()}


def test_cache_hits_count_as_done_from_the_start(digits: Path, cache: HashCache):
    first = hash_dataset(digits, cache=cache)
    calls: list[tuple[int, int]] = []
    hash_dataset(digits, cache=cache, progress=lambda done, total: calls.append((done, total)))
    assert calls[0] == (first.bytes, first.bytes)


def test_every_file_in_the_manifest_carries_its_own_sha256(digits: Path):
    digest = hash_dataset(digits)
    for entry in digest.files:
        assert entry.sha256 == hashlib.sha256((digits / entry.path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- links, against the engine

READ_CURRENT = ["sh", "-c", 'read first < /data/current.csv; '
                'echo "{{\\"score\\": $first}}" > /out/metrics.json']


def linked_dataset(project) -> Path:
    folder = project.dataset(files={"a.csv": b"1\n", "b.csv": b"2\n"})
    (folder / "current.csv").symlink_to("a.csv")
    return folder


@pytest.mark.engine
def test_re_pointing_current_csv_to_another_file_breaks_the_pin_naming_it(project):
    import json
    folder = linked_dataset(project)
    spec = project.spec(command=READ_CURRENT)
    first = project.reprun("run", str(spec), "-q")
    assert first.returncode == 0, first.stderr
    (folder / "current.csv").unlink()
    (folder / "current.csv").symlink_to("b.csv")        # same names, same bytes in every file
    refused = project.reprun("run", str(spec), "-q")
    assert refused.returncode == 3, refused.stderr
    assert "changed: ./current.csv" in refused.stderr and "Traceback" not in refused.stderr
    assert len(json.loads(project.reprun("runs", "--json").stdout)) == 1    # nothing ran on it


@pytest.mark.engine
def test_an_archive_carries_a_dataset_link_and_replays_from_it(project, docker_client):
    import json
    from imagekit import import_tiny_image, push
    from test_rerun import delete_from_registry, unique_tag
    linked_dataset(project)
    tag = unique_tag("linked")
    image = import_tiny_image(docker_client, tag)
    reference = push(docker_client, tag)
    spec = project.spec(command=READ_CURRENT, image=reference)
    assert project.reprun("run", str(spec), "-q").returncode == 0
    [run] = json.loads(project.reprun("runs", "--json").stdout)
    archive = project.root / "run.tar"
    written = project.reprun("archive", run["id"], "-o", str(archive))
    assert written.returncode == 0, written.stderr
    delete_from_registry(reference)
    docker_client.images.remove(image.id, force=True)
    result = project.reprun("rerun", "--from-archive", str(archive), "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("IDENTICAL")
