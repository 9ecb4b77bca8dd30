"""store.db: every table reprun keeps in it, and the one way to open it.

The runs and their chain, the approvals, the cached image facts, the built images, the saved
reports and the dataset hash cache all live in one SQLite file, opened with one set of pragmas
so that no writer runs with weaker durability than another.
"""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator

RUNS = """
CREATE TABLE IF NOT EXISTS runs (
    id            TEXT PRIMARY KEY,
    spec          TEXT NOT NULL,
    status        TEXT NOT NULL,
    started_at    TEXT NOT NULL,
    finished_at   TEXT,
    duration_s    REAL,
    image_id      TEXT,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    record        TEXT,
    record_sha256 TEXT,
    note          TEXT,
    seq           INTEGER,          -- position in the hash chain, in commit order
    previous_sha256 TEXT            -- the record_sha256 of seq - 1
);
CREATE INDEX IF NOT EXISTS runs_spec_started ON runs (spec, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE TRIGGER IF NOT EXISTS runs_are_immutable BEFORE UPDATE ON runs
WHEN OLD.status != 'running'
BEGIN SELECT RAISE(ABORT, 'run records are immutable once finished'); END;
CREATE TRIGGER IF NOT EXISTS runs_are_kept BEFORE DELETE ON runs
WHEN OLD.status = 'running'
BEGIN SELECT RAISE(ABORT, 'a running run cannot be deleted'); END;
CREATE TABLE IF NOT EXISTS built_images (
    image_id  TEXT PRIMARY KEY,     -- images reprun built, so that `gc` knows which are its own
    spec      TEXT NOT NULL,
    built_at  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS image_facts (
    key         TEXT PRIMARY KEY,   -- image ID + job configuration (probe.image_facts_key)
    image_id    TEXT NOT NULL,
    facts       TEXT NOT NULL,      -- JSON: the image-bound manifest fields
    source_run  TEXT NOT NULL,      -- the run whose probe read them
    seq         INTEGER,            -- in the hash chain, as approvals and run records are
    entry_sha256 TEXT,
    previous_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS reports (
    id         TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    runs       TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    path       TEXT NOT NULL
);
"""

APPROVALS = """
CREATE TABLE IF NOT EXISTS approvals (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    spec        TEXT NOT NULL,
    run_id      TEXT NOT NULL,
    approved_by TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    reason      TEXT NOT NULL,
    chain_seq   INTEGER,            -- in the hash chain, as run records are
    entry_sha256 TEXT,
    previous_sha256 TEXT
);
CREATE INDEX IF NOT EXISTS approvals_spec ON approvals (spec, seq);
"""

# Only a cache: losing it costs a re-hash, never a wrong answer (the key is the file's identity).
HASH_CACHE = """
CREATE TABLE IF NOT EXISTS hash_cache (
    path      BLOB PRIMARY KEY,     -- absolute path, raw bytes
    device    INTEGER NOT NULL,
    inode     INTEGER NOT NULL,
    size      INTEGER NOT NULL,
    mtime_ns  INTEGER NOT NULL,
    ctime_ns  INTEGER NOT NULL,
    sha256    TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dataset_manifests (
    sha256      TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    files       INTEGER NOT NULL,
    bytes       INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    manifest    TEXT NOT NULL       -- JSON list of [path, sha256, size]
);
"""

SCHEMA = RUNS + APPROVALS + HASH_CACHE

# What an auditor reads besides the records joins their chain; added to stores made before.
LEDGER_COLUMNS = {
    "runs": {"seq": "INTEGER", "previous_sha256": "TEXT"},
    "approvals": {"chain_seq": "INTEGER", "entry_sha256": "TEXT", "previous_sha256": "TEXT"},
    "image_facts": {"seq": "INTEGER", "entry_sha256": "TEXT", "previous_sha256": "TEXT"},
}
LEDGER_SCHEMA = """
CREATE UNIQUE INDEX IF NOT EXISTS runs_seq ON runs (seq);
CREATE UNIQUE INDEX IF NOT EXISTS approvals_chain_seq ON approvals (chain_seq);
CREATE UNIQUE INDEX IF NOT EXISTS image_facts_seq ON image_facts (seq);
CREATE TRIGGER IF NOT EXISTS chained_runs_are_kept BEFORE DELETE ON runs
WHEN OLD.seq IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a recorded run cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS approvals_are_kept BEFORE DELETE ON approvals
BEGIN SELECT RAISE(ABORT, 'an approval cannot be deleted'); END;
CREATE TRIGGER IF NOT EXISTS approvals_are_immutable BEFORE UPDATE ON approvals
WHEN OLD.chain_seq IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'an approval cannot be changed'); END;
CREATE TRIGGER IF NOT EXISTS image_facts_are_immutable BEFORE UPDATE ON image_facts
WHEN OLD.seq IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'recorded image facts cannot be changed'); END;
"""


@contextlib.contextmanager
def connect(db_path: Path) -> Iterator[sqlite3.Connection]:
    """One short-lived connection: safe across threads and processes. WAL lets readers go on
    while one writer commits; writers wait for the lock (a minute) instead of failing."""
    db = sqlite3.connect(db_path, timeout=60, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 60000")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        yield db
    finally:
        db.close()


@contextlib.contextmanager
def connect_read_only(db_path: Path) -> Iterator[sqlite3.Connection]:
    """For a disk with no room left: WAL readers must create the -shm file, which needs space.
    With no -wal content pending, the database file alone is the whole truth, and is opened as
    immutable (no -shm, no locks); else read-only, through the -shm the writer keeps."""
    wal = Path(f"{db_path}-wal")
    pending = wal.exists() and wal.stat().st_size > 0
    uri = f"{Path(db_path).absolute().as_uri()}?mode=ro" + ("" if pending else "&immutable=1")
    db = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout = 60000")
        yield db
    finally:
        db.close()


def create_tables(db_path: Path, schema: str = SCHEMA) -> None:
    """The store's tables, or one part of them (the hash cache alone, for `lock`)."""
    with connect(db_path) as db:
        db.executescript(schema)
