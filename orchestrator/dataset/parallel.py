"""Hashing a dataset's files in parallel, while the walk is still finding more.

Big files go to threads (hashlib releases the GIL on large updates), which read ahead; the many
small files of a tree go to helper processes (helper.py) once there are enough of them to pay
for their start. Each streams through a reusable buffer, so memory stays bounded whatever the
size.
"""
from __future__ import annotations

import collections
import hashlib
import os
import queue
import select
import subprocess
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Callable, NamedTuple

from orchestrator.dataset.cache import file_identity
from orchestrator.dataset.digest import FileEntry, sha256sum_line
from orchestrator.dataset.helper import FRAME as _FRAME, RECORD as _RECORD
from orchestrator.dataset.walk import FoundFile
from orchestrator.errors import InfrastructureError, SpecError

BLOCK = 1 << 20                    # read size; per worker, so memory is workers x BLOCK
READ_AHEAD_FROM = 64 << 20         # files this big are read by a second thread while hashed
PROGRESS_INTERVAL = 0.1            # seconds between progress calls
HELPERS_FROM = 64                  # small files to hash before helper processes pay their start
WORKER_SCRIPT = Path(__file__).with_name("helper.py")
_FS_ENCODING = sys.getfilesystemencoding()     # os.fsdecode's


class _Stopped(Exception):
    pass


class Listed(NamedTuple):
    """One file's part in the digest. Built by the thread that hashed it, not in a serial tail."""
    rel: bytes
    entry: FileEntry
    line: bytes           # its line in the tree hash input
    cacheable: bool       # unchanged while read, and not written too recently

    @classmethod
    def of(cls, rel: bytes, sha256: str, size: int, cacheable: bool = False) -> Listed:
        # rel.decode as os.fsdecode does, without its call per file.
        return cls(rel, FileEntry(rel.decode(_FS_ENCODING, "surrogateescape"), sha256, size),
                   sha256sum_line(sha256, rel), cacheable)


class HashingThreads:
    """Threads that hash the files handed to them, while the walk is still finding more.

    The caller's thread walks, submits and reports progress; it never hashes. Files of
    READ_AHEAD_FROM bytes and more jump the queue, so that one big file does not start last
    while the other threads sit idle.
    """

    def __init__(self, workers: int, not_after_ns: int):
        self.workers = max(1, workers)
        self.not_after_ns = not_after_ns
        self.pending: collections.deque[tuple[int, FoundFile]] = collections.deque()
        self.ready: queue.SimpleQueue = queue.SimpleQueue()   # one token per pending file
        self.results: dict[int, Listed] = {}
        self.read = [0] * self.workers      # bytes read, one slot per thread: no lock needed
        self.stop = threading.Event()
        self.failures: list[BaseException] = []
        self.threads: list[threading.Thread] = []

    def submit(self, i: int, job: FoundFile) -> None:
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

    def finish(self, report: Callable[[int], None]) -> dict[int, Listed]:
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

    def _hash(self, job: FoundFile, view: memoryview, slot: int) -> Listed:
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
        unchanged = size == job.st.st_size and file_identity(after) == file_identity(job.st)
        settled = job.st.st_mtime_ns < self.not_after_ns
        return Listed.of(job.rel, digest.hexdigest(), size, unchanged and settled)

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


class HelperProcesses:
    """Helper processes for the many small files of a tree, each hashing the files sent to it.

    For a 100 KiB file, the interpreter's own work per file (open, read, fstat, the digest's
    line) is a good part of the cost, and threads take turns for it under the GIL; processes do
    not. Files go to them in batches while the walk is still finding more. Same interface as
    HashingThreads; big files stay with the threads, which read ahead.

    All the talking is done by the caller's thread, through non-blocking pipes and poll(), in
    between the files the walk finds: reader threads would take turns with the walk for the
    GIL, which on two cores cost more than they saved.
    """

    BATCH = 64      # files per message; progress moves per batch

    def __init__(self, count: int, not_after_ns: int):
        self.not_after_ns = not_after_ns
        self.procs: list[subprocess.Popen] = []
        self.sent: list[collections.deque[tuple[int, FoundFile]]] = [collections.deque() for _ in range(count)]
        self.outbox = [bytearray() for _ in range(count)]
        self.inbox = [b""] * count
        self.open = [True] * count              # its answers have not ended yet
        self.closing = False                    # every file sent: close stdin once written
        self.batch: list[tuple[int, FoundFile]] = []
        self.read = [0] * count
        self.results: dict[int, Listed] = {}
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
    def start(cls, count: int, not_after_ns: int) -> HelperProcesses | None:
        """Helpers, or None where processes cannot be started (threads then do it all)."""
        if count < 2 or not sys.executable or not WORKER_SCRIPT.is_file():
            return None     # one CPU, or a frozen build with no interpreter and script to start
        try:
            return cls(count, not_after_ns)
        except OSError:
            return None

    def submit(self, i: int, job: FoundFile) -> None:
        if self.failures:       # stop at the first unreadable file, as the threads do
            raise self.failures[0]
        self.batch.append((i, job))
        if len(self.batch) >= self.BATCH:
            self._send()
            self._exchange(timeout_ms=0)

    def finish(self, report: Callable[[int], None]) -> dict[int, Listed]:
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

    def _listed(self, job: FoundFile, record: tuple) -> Listed:
        # Once per file of the tree, in reprun's own process: kept to plain comparisons.
        digest, size, dev, ino, st_size, mtime_ns, ctime_ns, errno = record
        if errno:
            raise SpecError(f"the dataset file {os.fsdecode(job.abs)} cannot be read: "
                            f"{os.strerror(errno)}")
        st = job.st
        cacheable = (size == st_size == st.st_size and mtime_ns == st.st_mtime_ns < self.not_after_ns
                     and ctime_ns == st.st_ctime_ns and ino == st.st_ino and dev == st.st_dev)
        return Listed.of(job.rel, digest.hex(), size, cacheable)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))    # honours CPU pinning and container cpusets
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class ParallelHashing:
    """Where each file found is hashed: big ones by threads that read ahead, small ones by
    helper processes once HELPERS_FROM of them show that a tree is worth their start."""

    def __init__(self, workers: int, not_after_ns: int):
        self.workers = workers
        self.not_after_ns = not_after_ns
        self.threads = HashingThreads(workers, not_after_ns=not_after_ns)
        self.helpers: HelperProcesses | None = None
        self.small = 0

    def submit(self, i: int, found: FoundFile) -> None:
        if found.st.st_size >= READ_AHEAD_FROM:
            self.threads.submit(i, found)
            return
        self.small += 1
        if self.small == HELPERS_FROM:
            self.helpers = HelperProcesses.start(self.workers, self.not_after_ns)
        (self.helpers or self.threads).submit(i, found)

    def bytes_read(self) -> int:
        return sum(self.threads.read) + (sum(self.helpers.read) if self.helpers else 0)

    def finish(self, report: Callable[[int], None]) -> dict[int, Listed]:
        """Every file's part, by the index it was submitted with; `report` gets bytes read."""
        hashed = self.threads.finish(report)
        if self.helpers:
            hashed.update(self.helpers.finish(report))
        return hashed

    def abandon(self) -> None:
        self.threads.abandon()
        if self.helpers:
            self.helpers.abandon()
