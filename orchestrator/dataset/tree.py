"""Pinned datasets: the sha256 of a file, or the tree hash of a directory, checked before a run.

The tree hash is defined by a coreutils pipeline, so anyone can check a pin without reprun:

    (cd DIR && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum

This module produces exactly those bytes, only faster: files are hashed in parallel — big ones
by threads (hashlib releases the GIL on large updates), the many small files of a tree by helper
processes — each streamed through a reusable buffer so memory stays bounded whatever the size,
and a file whose identity (device, inode, size, mtime, ctime) is unchanged since it was last
hashed is not read again.
"""
from __future__ import annotations

import collections
import functools
import gc
import hashlib
import json
import os
import queue
import re
import select
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import contextlib
from contextlib import suppress
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from orchestrator.clock import utc_now
from orchestrator.errors import InfrastructureError, PinMismatch, SpecError
from orchestrator.dataset.helper import FRAME as _FRAME, RECORD as _RECORD
from orchestrator.store.schema import HASH_CACHE, connect, create_tables

Progress = Callable[[int, int], None]

BLOCK = 1 << 20                    # read size; per worker, so memory is workers x BLOCK
READ_AHEAD_FROM = 64 << 20         # files this big are read by a second thread while hashed
PROGRESS_INTERVAL = 0.1            # seconds between progress calls
HELPERS_FROM = 64                  # small files to hash before helper processes pay their start
WORKER_SCRIPT = Path(__file__).with_name("helper.py")
LISTED_PER_KIND = 20               # files named per kind (added/removed/changed) on a mismatch

# A file modified within one timestamp tick after we read it would keep its mtime, and the
# cache would then vouch for bytes it never saw. Files written this recently are hashed but
# not cached; 2 s covers the coarsest common timestamp granularity (FAT, some network mounts).
RACY_NS = 2_000_000_000

# What `xargs -0 sha256sum` prints for an empty directory: with no names, GNU xargs still runs
# sha256sum once, which then hashes its (empty) stdin. The pinned tree hash includes that line.
_EMPTY_TREE_LINE = hashlib.sha256(b"").hexdigest().encode() + b"  -\n"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_FS_ENCODING = sys.getfilesystemencoding()     # os.fsdecode's


class FileEntry(NamedTuple):      # a tuple, not a dataclass: there is one per file
    path: str       # "./"-prefixed as `find .` prints it (a single-file dataset: its name)
    sha256: str
    size: int


@dataclass(frozen=True)
class DatasetDigest:
    sha256: str                     # bare hex: the file hash, or the tree hash of a directory
    kind: str                       # "file" | "tree"
    files: tuple[FileEntry, ...]    # sorted as the tree hash sorts them
    bytes: int
    cache_hits: int                 # files whose hash came from the cache, unread
    bytes_read: int = 0             # bytes actually read from disk for this digest


@dataclass(frozen=True)
class ManifestDiff:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


# --------------------------------------------------------------------------- tree hash

def _sha256sum_line(hex_digest: str, name: bytes) -> bytes:
    # GNU sha256sum (9.1) escapes a name holding a backslash, newline or carriage return and
    # flags the line with a leading backslash, so one name is always one line.
    if b"\\" in name or b"\n" in name or b"\r" in name:
        name = name.replace(b"\\", b"\\\\").replace(b"\n", b"\\n").replace(b"\r", b"\\r")
        return b"\\" + hex_digest.encode() + b"  " + name + b"\n"
    return hex_digest.encode() + b"  " + name + b"\n"


def tree_sha256(entries: Iterable[FileEntry]) -> str:
    """The tree hash of these files, byte-identical to the coreutils pipeline above."""
    named = sorted((os.fsencode(e.path), e.sha256) for e in entries)
    return _tree_sha256([_sha256sum_line(digest, name) for name, digest in named])


def _tree_sha256(lines: list[bytes]) -> str:
    """`lines`: what sha256sum prints for each file, sorted by path bytes as `sort -z` does."""
    return hashlib.sha256(b"".join(lines) if lines else _EMPTY_TREE_LINE).hexdigest()


def diff_manifests(old: Iterable[FileEntry], new: Iterable[FileEntry]) -> ManifestDiff:
    before = {e.path: e for e in old}
    after = {e.path: e for e in new}
    key = os.fsencode
    return ManifestDiff(
        added=tuple(sorted(after.keys() - before.keys(), key=key)),
        removed=tuple(sorted(before.keys() - after.keys(), key=key)),
        changed=tuple(sorted((p for p in before.keys() & after.keys()
                              if (before[p].sha256, before[p].size) != (after[p].sha256, after[p].size)),
                             key=key)),
    )


# --------------------------------------------------------------------------- the cache

def _i64(n: int) -> int:
    # SQLite integers are signed 64-bit; some filesystems hand out device and inode numbers
    # above 2**63. Folding them keeps equality, which is all the cache needs.
    return n - (1 << 64) if n >= (1 << 63) else n


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    # ctime as well as mtime: tools that restore mtime after writing (rsync -t --inplace,
    # touch -r) cannot set ctime, so a rewritten file is never mistaken for the one we hashed.
    return (_i64(st.st_dev), _i64(st.st_ino), st.st_size, st.st_mtime_ns, st.st_ctime_ns)




class HashCache:
    """Cache of file hashes in an SQLite file, keyed by (device, inode, size, mtime_ns) (plus the path).

    ctime_ns is part of the key too. Several processes may use one file at once: it runs in WAL
    mode, waits for locks instead of failing, and writes each dataset's entries in one
    transaction. It also keeps the per-file manifest of every dataset hash it has seen, so that
    a later mismatch can name the files that differ.
    """

    def __init__(self, db_path: Path):
        self.db_path = Path(db_path)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            create_tables(self.db_path, HASH_CACHE)
        except (OSError, sqlite3.Error) as exc:
            raise self._broken(exc) from exc

    def _connect(self) -> "contextlib.AbstractContextManager[sqlite3.Connection]":
        # One short-lived connection per operation (the store's): the cost, well under a
        # millisecond, is paid once per dataset, not per file.
        return connect(self.db_path)

    def _broken(self, exc: Exception) -> InfrastructureError:
        return InfrastructureError(
            f"the dataset hash cache {self.db_path} cannot be used: {exc}",
            details=["Delete that file (it is only a cache) or run without the cache."])

    def _load(self, root: bytes, tree: bool) -> dict[bytes, tuple]:
        """Every cached entry for one file, or for everything under one directory, in one read."""
        columns = "path, device, inode, size, mtime_ns, ctime_ns, sha256"
        try:
            with self._connect() as db:
                if tree:
                    low = root if root.endswith(b"/") else root + b"/"
                    high = low[:-1] + b"0"      # "0" is the byte after "/"
                    rows = db.execute(f"SELECT {columns} FROM hash_cache WHERE path >= ? AND path < ?",
                                      (low, high)).fetchall()
                else:
                    rows = db.execute(f"SELECT {columns} FROM hash_cache WHERE path = ?",
                                      (root,)).fetchall()
        except sqlite3.Error as exc:
            raise self._broken(exc) from exc
        return {r[0]: r for r in rows}      # (path, *identity, sha256)

    def _store(self, fresh: list[tuple], stale: list[bytes]) -> None:
        if not fresh and not stale:
            return
        try:
            with self._connect() as db:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany("DELETE FROM hash_cache WHERE path = ?", ((p,) for p in stale))
                    db.executemany("INSERT OR REPLACE INTO hash_cache VALUES (?, ?, ?, ?, ?, ?, ?)", fresh)
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            raise self._broken(exc) from exc

    def remember_manifest(self, digest: DatasetDigest) -> None:
        """Keep the per-file manifest of this dataset hash (once; the hash determines it)."""
        try:
            with self._connect() as db:
                if db.execute("SELECT 1 FROM dataset_manifests WHERE sha256 = ?",
                              (digest.sha256,)).fetchone():
                    return
                manifest = json.dumps([[e.path, e.sha256, e.size] for e in digest.files],
                                      separators=(",", ":"))
                db.execute("INSERT OR IGNORE INTO dataset_manifests VALUES (?, ?, ?, ?, ?, ?)",
                           (digest.sha256, digest.kind, len(digest.files), digest.bytes,
                            utc_now("seconds"), manifest))
        except sqlite3.Error as exc:
            raise self._broken(exc) from exc

    def manifest_for(self, sha256: str) -> tuple[FileEntry, ...] | None:
        try:
            with self._connect() as db:
                row = db.execute("SELECT manifest FROM dataset_manifests WHERE sha256 = ?",
                                 (sha256.lower(),)).fetchone()
        except sqlite3.Error as exc:
            raise self._broken(exc) from exc
        if row is None:
            return None
        return tuple(FileEntry(path, digest, size) for path, digest, size in json.loads(row[0]))


# --------------------------------------------------------------------------- finding files

class _File(NamedTuple):     # tuples, not dataclasses: there is one per file, and they add up
    rel: bytes          # "./a/b" (a single-file dataset: its name)
    abs: bytes
    st: os.stat_result


def _resolve(path: Path) -> tuple[bytes, os.stat_result]:
    # Resolved like `cd DIR` and `sha256sum FILE` would: the dataset path itself may be a link.
    try:
        root = os.fsencode(os.path.realpath(path, strict=True))
        return root, os.stat(root)
    except FileNotFoundError:
        raise SpecError(f"the dataset {path} does not exist",
                        details=["Check dataset.path in the spec; it is relative to the spec file."]) from None
    except OSError as exc:
        raise SpecError(f"the dataset {path} cannot be read: {exc.strerror}") from None


def _inside(target: bytes, root: bytes) -> bool:
    return root == b"/" or target == root or target.startswith(root + b"/")


def _walk(path: Path, root: bytes) -> Iterator[_File]:
    """Regular files under root as `find . -type f` lists them; refuses links that leave it.

    A link that resolves outside the dataset would be dangling (or worse, a host file) once the
    folder is mounted into the container, and its target is not covered by the pin. The refusal
    comes after the last file, so that it can name every such link.
    """
    escaping: list[tuple[str, str]] = []
    pending = [b"."]
    while pending:
        rel_dir = pending.pop()
        abs_dir = root + rel_dir[1:]
        try:
            with os.scandir(abs_dir) as listing:
                for entry in listing:
                    rel = rel_dir + b"/" + entry.name
                    # Regular files first: they are nearly every entry, and one test settles them.
                    if entry.is_file(follow_symlinks=False):
                        yield _File(rel, entry.path, entry.stat(follow_symlinks=False))
                    elif entry.is_symlink():
                        target = os.path.realpath(entry.path)
                        if not _inside(target, root):
                            escaping.append((os.fsdecode(rel), os.fsdecode(os.readlink(entry.path))))
                    elif entry.is_dir(follow_symlinks=False):
                        pending.append(rel)
        except OSError as exc:
            raise SpecError(f"the dataset folder {os.fsdecode(abs_dir)} cannot be listed: "
                            f"{exc.strerror}") from None
    if escaping:
        link, target = escaping[0]
        raise SpecError(
            f"the dataset {path} contains a symbolic link that leads outside it: {link} -> {target}",
            details=[f"{link} -> {target}" for link, target in escaping[:LISTED_PER_KIND]]
            + _and_more(len(escaping), "links")
            + ["Copy the target into the dataset folder, or point dataset.path at a folder "
               "that contains it."])


# --------------------------------------------------------------------------- reading files

class _Stopped(Exception):
    pass


class _Listed(NamedTuple):
    """One file's part in the digest. Built by the thread that hashed it, not in a serial tail."""
    rel: bytes
    entry: FileEntry
    line: bytes           # its line in the tree hash input
    cacheable: bool       # unchanged while read, and not written too recently

    @classmethod
    def of(cls, rel: bytes, sha256: str, size: int, cacheable: bool = False) -> _Listed:
        # rel.decode as os.fsdecode does, without its call per file.
        return cls(rel, FileEntry(rel.decode(_FS_ENCODING, "surrogateescape"), sha256, size),
                   _sha256sum_line(sha256, rel), cacheable)


class _Workers:
    """Threads that hash the files handed to them, while the walk is still finding more.

    The caller's thread walks, submits and reports progress; it never hashes. Files of
    READ_AHEAD_FROM bytes and more jump the queue, so that one big file does not start last
    while the other threads sit idle.
    """

    def __init__(self, workers: int, not_after_ns: int):
        self.workers = max(1, workers)
        self.not_after_ns = not_after_ns
        self.pending: collections.deque[tuple[int, _File]] = collections.deque()
        self.ready: queue.SimpleQueue = queue.SimpleQueue()   # one token per pending file
        self.results: dict[int, _Listed] = {}
        self.read = [0] * self.workers      # bytes read, one slot per thread: no lock needed
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def submit(self, i: int, job: _File) -> None:
        if job.st.st_size >= READ_AHEAD_FROM:
            self.pending.appendleft((i, job))
        else:
            self.pending.append((i, job))
        self.ready.put(True)
        if len(self.threads) < self.workers:
            thread = threading.Thread(target=self._work, args=(len(self.threads),), daemon=True,
                                      name=f"reprun-hash-{len(self.threads)}")
            self.threads.append(thread)
            thread.start()

    def finish(self, report: Callable[[int], None]) -> dict[int, _Listed]:
        for _ in self.threads:
            self.ready.put(None)
        try:
            for thread in self.threads:
                while thread.is_alive():
                    thread.join(PROGRESS_INTERVAL)
                    report(sum(self.read))
        finally:
            self.stop.set()
        if self.failures:
            raise self.failures[0]
        return self.results

    def abandon(self) -> None:
        self.stop.set()
        for _ in self.threads:
            self.ready.put(None)
        for thread in self.threads:
            thread.join()

    def _work(self, slot: int) -> None:
        view = memoryview(bytearray(BLOCK))
        job = None
        try:
            while self.ready.get() is not None and not self.stop.is_set():
                i, job = self.pending.popleft()
                self.results[i] = self._hash(job, view, slot)
        except _Stopped:
            pass
        except OSError as exc:
            self.failures.append(SpecError(
                f"the dataset file {os.fsdecode(job.abs)} cannot be read: {exc.strerror}"))
            self.stop.set()
        except BaseException as exc:
            self.failures.append(exc)
            self.stop.set()

    def _hash(self, job: _File, view: memoryview, slot: int) -> _Listed:
        # O_NOFOLLOW: a file swapped for a link since the walk is not followed out of the dataset.
        fd = os.open(job.abs, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            if job.st.st_size >= READ_AHEAD_FROM:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                digest, size = self._read_ahead(fd, slot)
                after = os.fstat(fd)
            else:
                # Read the size the walk saw, then let fstat say whether that was all, rather
                # than one more read to meet the end: one system call fewer per small file.
                digest, size = hashlib.sha256(), 0
                expected = job.st.st_size
                while size < expected and (n := os.readv(fd, [view])):
                    digest.update(view[:n])
                    size += n
                    self.read[slot] += n
                    if self.stop.is_set():
                        raise _Stopped
                after = os.fstat(fd)
                if after.st_size != size:       # it grew meanwhile: hash to the end, as sha256sum
                    while n := os.readv(fd, [view]):
                        digest.update(view[:n])
                        size += n
                        self.read[slot] += n
        finally:
            os.close(fd)
        unchanged = size == job.st.st_size and _identity(after) == _identity(job.st)
        settled = job.st.st_mtime_ns < self.not_after_ns
        return _Listed.of(job.rel, digest.hexdigest(), size, unchanged and settled)

    def _read_ahead(self, fd: int, slot: int):
        # One thread copies the next blocks out of the page cache (or waits on the disk) while
        # this one hashes: about 10% faster than one stream for a big file, nothing for a small.
        free: queue.SimpleQueue = queue.SimpleQueue()
        full: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(3):
            free.put(bytearray(BLOCK))

        def read() -> None:
            try:
                while (buf := free.get()) is not None:
                    n = os.readv(fd, [buf])
                    full.put((buf, n))
                    if n == 0:
                        return
            except OSError as exc:
                full.put((exc, 0))

        reader = threading.Thread(target=read, daemon=True, name=f"reprun-read-{slot}")
        reader.start()
        digest, size = hashlib.sha256(), 0
        try:
            while True:
                buf, n = full.get()
                if isinstance(buf, OSError):
                    raise buf
                if n == 0:
                    return digest, size
                digest.update(memoryview(buf)[:n])
                size += n
                self.read[slot] += n
                if self.stop.is_set():
                    raise _Stopped
                free.put(buf)
        finally:
            free.put(None)
            reader.join()   # before the caller closes fd: the reader must be done with it


class _Helpers:
    """Helper processes for the many small files of a tree, each hashing the files sent to it.

    For a 100 KiB file, the interpreter's own work per file (open, read, fstat, the digest's
    line) is a good part of the cost, and threads take turns for it under the GIL; processes do
    not. Files go to them in batches while the walk is still finding more. Same interface as
    _Workers; big files stay with the threads, which read ahead.

    All the talking is done by the caller's thread, through non-blocking pipes and poll(), in
    between the files the walk finds: reader threads would take turns with the walk for the
    GIL, which on two cores cost more than they saved.
    """

    BATCH = 64      # files per message; progress moves per batch

    def __init__(self, count: int, not_after_ns: int):
        self.not_after_ns = not_after_ns
        self.procs: list[subprocess.Popen] = []
        self.sent: list[collections.deque[tuple[int, _File]]] = [collections.deque() for _ in range(count)]
        self.outbox = [bytearray() for _ in range(count)]
        self.inbox = [b""] * count
        self.open = [True] * count              # its answers have not ended yet
        self.closing = False                    # every file sent: close stdin once written
        self.batch: list[tuple[int, _File]] = []
        self.read = [0] * count
        self.results: dict[int, _Listed] = {}
        self.failures: list[BaseException] = []
        self.poller = select.poll()
        self.slot_of: dict[int, int] = {}
        try:    # an interrupt half-way must not leave helpers behind, which ignore signals
            for slot in range(count):
                # stderr: a helper that fails is reported by the files it left unanswered,
                # never by a traceback of its own.
                proc = subprocess.Popen([sys.executable, "-I", "-S", str(WORKER_SCRIPT)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
                self.procs.append(proc)
                for pipe in (proc.stdin, proc.stdout):
                    os.set_blocking(pipe.fileno(), False)
                    self.slot_of[pipe.fileno()] = slot
                self.poller.register(proc.stdout, select.POLLIN)
        except BaseException:
            self.abandon()
            raise

    @classmethod
    def start(cls, count: int, not_after_ns: int) -> _Helpers | None:
        """Helpers, or None where processes cannot be started (threads then do it all)."""
        if count < 2 or not sys.executable or not WORKER_SCRIPT.is_file():
            return None     # one CPU, or a frozen build with no interpreter and script to start
        try:
            return cls(count, not_after_ns)
        except OSError:
            return None

    def submit(self, i: int, job: _File) -> None:
        if self.failures:       # stop at the first unreadable file, as the threads do
            raise self.failures[0]
        self.batch.append((i, job))
        if len(self.batch) >= self.BATCH:
            self._send()
            self._exchange(timeout_ms=0)

    def finish(self, report: Callable[[int], None]) -> dict[int, _Listed]:
        try:
            self._send()
            self.closing = True
            for slot in range(len(self.procs)):
                if not self.outbox[slot]:
                    self._close_stdin(slot)
            reported = time.monotonic()
            while any(self.open):
                self._exchange(timeout_ms=int(PROGRESS_INTERVAL * 1000))
                if time.monotonic() - reported >= PROGRESS_INTERVAL:
                    report(sum(self.read))
                    reported = time.monotonic()
            if not self.failures:
                self._check_all_answered()
        finally:
            self.abandon()
        if self.failures:
            raise self.failures[0]
        return self.results

    def _check_all_answered(self) -> None:
        for proc, unanswered in zip(self.procs, self.sent):
            if unanswered:
                raise InfrastructureError(
                    f"a dataset hashing helper process ended with exit code {proc.wait()} before "
                    f"it had hashed {len(unanswered)} of its files",
                    details=["Run again; if it recurs, look in the system log for the "
                             "out-of-memory killer or a resource limit."])

    def abandon(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                with suppress(OSError):
                    pipe.close()

    def _send(self) -> None:
        # To the helper with the fewest files still to hash: balanced by how fast each really
        # goes, whatever the file sizes.
        batch, self.batch = self.batch, []
        if not batch:
            return
        slot = min(range(len(self.procs)), key=lambda n: len(self.sent[n]) if self.open[n] else 1 << 62)
        self.sent[slot].extend(batch)
        self.outbox[slot] += b"".join(_FRAME.pack(len(job.abs), job.st.st_size) + job.abs
                                      for _, job in batch)
        self.outbox[slot] += _FRAME.pack(0, 0)
        self.poller.register(self.procs[slot].stdin, select.POLLOUT)

    def _exchange(self, timeout_ms: int) -> None:
        """Write what each helper can take, read what each has answered; wait at most timeout."""
        for fd, events in self.poller.poll(timeout_ms):
            slot = self.slot_of[fd]
            proc = self.procs[slot]
            if fd == proc.stdout.fileno():
                self._take(slot)
            else:
                self._give(slot)

    def _give(self, slot: int) -> None:
        if not self.outbox[slot]:   # its helper ended earlier in the same poll
            return
        stdin = self.procs[slot].stdin
        try:
            written = os.write(stdin.fileno(), self.outbox[slot])
        except BlockingIOError:
            return
        except OSError:         # the helper died; its answers ending tells what it left undone
            written = len(self.outbox[slot])
        del self.outbox[slot][:written]
        if not self.outbox[slot]:
            self.poller.unregister(stdin)
            if self.closing:
                self._close_stdin(slot)

    def _close_stdin(self, slot: int) -> None:
        """No more files for this helper: it answers what it has, then ends."""
        with suppress(OSError):
            self.procs[slot].stdin.close()

    def _take(self, slot: int) -> None:
        stdout = self.procs[slot].stdout
        try:
            chunk = os.read(stdout.fileno(), 1 << 16)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:           # the helper ended: whatever it did not answer stays in `sent`
            self.poller.unregister(stdout)
            self.open[slot] = False
            if self.outbox[slot]:
                self.outbox[slot].clear()
                self.poller.unregister(self.procs[slot].stdin)
            return
        size, sent = _RECORD.size, self.sent[slot]
        pending = self.inbox[slot] + chunk
        whole = len(pending) - len(pending) % size
        for record in _RECORD.iter_unpack(pending[:whole]):
            i, job = sent.popleft()
            try:
                self.results[i] = self._listed(job, record)
            except Exception as exc:    # noqa: BLE001 (raised by submit or finish)
                self.failures.append(exc)
            self.read[slot] += record[1]
        self.inbox[slot] = pending[whole:]

    def _listed(self, job: _File, record: tuple) -> _Listed:
        # Once per file of the tree, in reprun's own process: kept to plain comparisons.
        digest, size, dev, ino, st_size, mtime_ns, ctime_ns, errno = record
        if errno:
            raise SpecError(f"the dataset file {os.fsdecode(job.abs)} cannot be read: "
                            f"{os.strerror(errno)}")
        st = job.st
        cacheable = (size == st_size == st.st_size and mtime_ns == st.st_mtime_ns < self.not_after_ns
                     and ctime_ns == st.st_ctime_ns and ino == st.st_ino and dev == st.st_dev)
        return _Listed.of(job.rel, digest.hex(), size, cacheable)


_by_rel = attrgetter("rel")      # byte order of the paths, as `LC_ALL=C sort -z`


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))    # honours CPU pinning and container cpusets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _collector_paused(fn):
    """Run fn with the cyclic garbage collector off. A tree's walk makes a few acyclic tuples
    per file, and every 700 of them set off a collection; one of those is a full pass over
    every object the process holds (about 20 ms of reprun's CPU per 10,000 files, against the
    helpers that hash). Reference counting still frees all of them."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:     # a concurrent call that found it off leaves it to the first
                gc.enable()
    return paused


# --------------------------------------------------------------------------- public entry points

@_collector_paused
def hash_dataset(path: Path, *, cache: HashCache | None = None, progress: Progress | None = None,
                 workers: int | None = None) -> DatasetDigest:
    """Hash a dataset file (as `sha256sum FILE`) or folder (the coreutils tree hash).

    With a cache, files unchanged since they were last hashed are not read, the new hashes are
    written back in one transaction, and the dataset's manifest is remembered. `progress` is
    called from this thread now and then with (bytes done, bytes in total), last with done ==
    total.
    """
    path = Path(path)
    started_ns = time.time_ns()
    root, st = _resolve(path)
    if stat.S_ISDIR(st.st_mode):
        kind, found = "tree", _walk(path, root)
    elif stat.S_ISREG(st.st_mode):
        kind, found = "file", iter([_File(os.fsencode(path.name or os.path.basename(root)), root, st)])
    else:
        raise SpecError(f"the dataset {path} is neither a regular file nor a folder")

    cached = cache._load(root, kind == "tree") if cache is not None else {}
    workers = workers or _default_workers()
    not_after_ns = started_ns - RACY_NS
    pool = _Workers(workers, not_after_ns=not_after_ns)
    helpers: _Helpers | None = None
    small = 0
    files: list[_File] = []
    known: dict[int, str] = {}
    try:
        for i, f in enumerate(found):
            files.append(f)
            hit = cached.get(f.abs)
            if hit is not None and hit[1:6] == _identity(f.st):
                known[i] = hit[6]
                continue
            if f.st.st_size >= READ_AHEAD_FROM:
                pool.submit(i, f)
                continue
            small += 1
            if small == HELPERS_FROM:
                helpers = _Helpers.start(workers, not_after_ns)
            (helpers or pool).submit(i, f)

        total = sum(f.st.st_size for f in files)
        hit_bytes = sum(files[i].st.st_size for i in known)

        def report(_: int) -> None:
            if progress is not None:
                done = sum(pool.read) + (sum(helpers.read) if helpers else 0)
                progress(min(hit_bytes + done, total), total)

        report(0)
        hashed = pool.finish(report)
        if helpers:
            hashed.update(helpers.finish(report))
        if len(hashed) + len(known) != len(files):     # a digest must never skip a file
            raise InfrastructureError(f"hashing the dataset {path} lost track of "
                                      f"{len(files) - len(hashed) - len(known)} of its files")
    except BaseException:
        pool.abandon()
        if helpers:
            helpers.abandon()
        raise

    listed = sorted([*hashed.values(), *(_Listed.of(files[i].rel, sha, files[i].st.st_size)
                                         for i, sha in known.items())],
                    key=_by_rel)
    digest = DatasetDigest(
        sha256=_tree_sha256([x.line for x in listed]) if kind == "tree" else listed[0].entry.sha256,
        kind=kind,
        files=tuple(x.entry for x in listed),
        bytes=sum(x.entry.size for x in listed),
        cache_hits=len(known),
        bytes_read=sum(h.entry.size for h in hashed.values()),
    )
    if progress is not None:
        progress(digest.bytes, digest.bytes)

    if cache is not None:
        fresh = [(files[i].abs, *_identity(files[i].st), h.entry.sha256) for i, h in hashed.items() if h.cacheable]
        present = {f.abs for f in files}
        cache._store(fresh, [p for p in cached if p not in present])
        cache.remember_manifest(digest)
    return digest


def verify_dataset(path: Path, expected_sha256: str, *, cache: HashCache | None = None,
                   progress: Progress | None = None, workers: int | None = None) -> DatasetDigest:
    """Hash the dataset and refuse it (PinMismatch, exit 3) unless it matches its pin."""
    expected = expected_sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(expected):
        raise SpecError(f"the pinned dataset sha256 {expected_sha256!r} is not 64 hex digits")
    digest = hash_dataset(path, cache=cache, progress=progress, workers=workers)
    if digest.sha256 == expected:
        return digest

    what = "tree hash" if digest.kind == "tree" else "sha256"
    message = (f"the dataset {path} does not match its pin: the spec pins {what} {expected}, "
               f"the {'folder' if digest.kind == 'tree' else 'file'} now hashes to {digest.sha256}")
    earlier = cache.manifest_for(expected) if cache is not None else None
    if earlier is None:
        details = ["No earlier manifest of the pinned dataset is known here, so the files that "
                   "differ cannot be named."]
    else:
        details = _describe(diff_manifests(earlier, digest.files))
    details.append("If the change is intended, pin the new hash with `reprun lock`.")
    raise PinMismatch(message, details=details)


def _and_more(count: int, what: str) -> list[str]:
    return [f"... and {count - LISTED_PER_KIND} more {what}"] if count > LISTED_PER_KIND else []


def _describe(diff: ManifestDiff) -> list[str]:
    lines: list[str] = []
    for what, names in (("changed", diff.changed), ("added", diff.added), ("removed", diff.removed)):
        lines += [f"{what}: {name}" for name in names[:LISTED_PER_KIND]]
        lines += _and_more(len(names), what)
    if not lines:
        lines.append("The same files with the same contents: the pin itself was edited.")
    return lines
