"""The dataset hash cache: a file whose identity is unchanged since it was hashed is not read again.

A file's identity is (device, inode, size, mtime, ctime); the cache's tables are the store's
(store/schema.py), in its SQLite file, which several reprun processes may share.
"""
from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from pathlib import Path

from orchestrator.clock import utc_now
from orchestrator.dataset.digest import DatasetDigest, FileEntry
from orchestrator.errors import InfrastructureError
from orchestrator.store.schema import HASH_CACHE, connect, create_tables

# A file modified within one timestamp tick after we read it would keep its mtime, and the
# cache would then vouch for bytes it never saw. Files written this recently are hashed but
# not cached; 2 s covers the coarsest common timestamp granularity (FAT, some network mounts).
RACY_NS = 2_000_000_000


def _i64(n: int) -> int:
    # SQLite integers are signed 64-bit; some filesystems hand out device and inode numbers
    # above 2**63. Folding them keeps equality, which is all the cache needs.
    return n - (1 << 64) if n >= (1 << 63) else n


def file_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
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

    def entries(self, root: bytes, tree: bool) -> dict[bytes, tuple]:
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

    def update(self, fresh: list[tuple], stale: list[bytes]) -> None:
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
