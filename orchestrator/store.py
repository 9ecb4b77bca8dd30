"""The run store: an SQLite database plus one folder per run (DESIGN's embedded default).

A run gets a row (`running`) the moment it starts, so a crash leaves a trace; its record is
written once, when it ends, and a trigger refuses any later change. The record file in the run
folder is written atomically first, so the next command can finish the job if reprun died
between the two.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from .errors import UsageError
from .records import FINAL_STATUSES, INTERRUPTED, RUNNING, RunRecord

SCHEMA = """
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
    note          TEXT
);
CREATE INDEX IF NOT EXISTS runs_spec_started ON runs (spec, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
CREATE TRIGGER IF NOT EXISTS runs_are_immutable BEFORE UPDATE ON runs
WHEN OLD.status != 'running'
BEGIN SELECT RAISE(ABORT, 'run records are immutable once finished'); END;
CREATE TRIGGER IF NOT EXISTS runs_are_kept BEFORE DELETE ON runs
WHEN OLD.status = 'running'
BEGIN SELECT RAISE(ABORT, 'a running run cannot be deleted'); END;
CREATE TABLE IF NOT EXISTS reports (
    id         TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    runs       TEXT NOT NULL,
    verdict    TEXT NOT NULL,
    path       TEXT NOT NULL
);
"""


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunSummary:
    id: str
    spec: str
    status: str
    started_at: str
    finished_at: str | None
    duration_s: float | None
    image_id: str | None
    note: str | None


def default_store_root() -> Path:
    return Path(os.environ.get("REPRUN_STORE", ".reprun"))


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = (Path(root) if root is not None else default_store_root()).absolute()
        self.runs_dir = self.root / "runs"
        self.reports_dir = self.root / "reports"
        self.db_path = self.root / "store.db"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.db_path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 60000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            yield db
        finally:
            db.close()

    # -- writing ---------------------------------------------------------------------------

    def new_run(self, spec_name: str) -> tuple[str, Path, str]:
        """Reserve an ID and folder for a run that starts now; its row says `running`."""
        started_at = utc_now()
        for _ in range(10):
            run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
            try:
                with self._connect() as db:
                    db.execute(
                        "INSERT INTO runs (id, spec, status, started_at, host, pid) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (run_id, spec_name, RUNNING, started_at, socket.gethostname(), os.getpid()))
            except sqlite3.IntegrityError:
                continue
            run_dir = self.runs_dir / run_id
            run_dir.mkdir(parents=True)
            return run_id, run_dir, started_at
        raise UsageError("could not allocate a unique run ID in the store")  # pragma: no cover

    def finish(self, record: RunRecord) -> None:
        """Write the record file atomically, then the row; neither changes again."""
        if record.status not in FINAL_STATUSES:
            raise ValueError(f"cannot finish a run with status {record.status!r}")
        text = record.to_json()
        _write_atomically(self.run_dir(record.id) / "record.json", text)
        self._commit_record(record, text)

    def _commit_record(self, record: RunRecord, text: str) -> None:
        outputs = record.outputs
        with self._connect() as db:
            db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, duration_s = ?, image_id = ?, "
                "record = ?, record_sha256 = ? WHERE id = ? AND status = 'running'",
                (record.status, record.finished_at, outputs.duration_s if outputs else None,
                 record.inputs.image.id, text, record.content_sha256(), record.id))

    def save_report(self, run_ids: list[str], verdict: str, text: str) -> Path:
        report_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        path = self.reports_dir / f"{report_id}.json"
        _write_atomically(path, text)
        with self._connect() as db:
            db.execute("INSERT INTO reports (id, created_at, runs, verdict, path) VALUES (?,?,?,?,?)",
                       (report_id, utc_now(), json.dumps(run_ids), verdict, str(path)))
        return path

    # -- reading ---------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def resolve_id(self, id_or_prefix: str) -> str:
        with self._connect() as db:
            rows = db.execute("SELECT id FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' ORDER BY id LIMIT 3",
                              (id_or_prefix, _like_prefix(id_or_prefix))).fetchall()
        ids = [r[0] for r in rows]
        if id_or_prefix in ids:
            return id_or_prefix
        if not ids:
            raise UsageError(f"no run {id_or_prefix!r} in the store at {self.root}; "
                             "`reprun runs` lists the runs it holds.")
        if len(ids) > 1:
            raise UsageError(f"{id_or_prefix!r} matches more than one run ({', '.join(ids[:2])}, …); "
                             "give more of the ID.")
        return ids[0]

    def get(self, id_or_prefix: str) -> RunRecord:
        run_id = self.resolve_id(id_or_prefix)
        with self._connect() as db:
            status, text = db.execute("SELECT status, record FROM runs WHERE id = ?",
                                      (run_id,)).fetchone()
        if text is None:
            raise UsageError(
                f"run {run_id} is {status} and has no complete record "
                + ("yet (it is still going)." if status == RUNNING
                   else "(reprun stopped before writing it)."))
        return RunRecord.from_json(text)

    def list(self, *, spec: str | None = None, status: str | None = None,
             since: str | None = None, until: str | None = None,
             limit: int | None = None) -> list[RunSummary]:
        clauses, args = [], []
        for column, op, value in (("spec", "=", spec), ("status", "=", status),
                                  ("started_at", ">=", since), ("started_at", "<", until)):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (f"SELECT id, spec, status, started_at, finished_at, duration_s, image_id, note "
               f"FROM runs {where} ORDER BY started_at DESC, id DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._connect() as db:
            return [RunSummary(*row) for row in db.execute(sql, args)]

    def latest_succeeded(self, spec: str) -> RunRecord | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM runs WHERE spec = ? AND status = 'succeeded' "
                             "ORDER BY started_at DESC LIMIT 1", (spec,)).fetchone()
        return RunRecord.from_json(row[0]) if row else None

    # -- repair ----------------------------------------------------------------------------

    def repair(self) -> list[str]:
        """Runs left `running` by a reprun process that is gone: adopt or mark interrupted."""
        repaired = []
        with self._connect() as db:
            rows = db.execute("SELECT id, host, pid FROM runs WHERE status = 'running'").fetchall()
        for run_id, host, pid in rows:
            if host == socket.gethostname() and _alive(pid):
                continue
            record = self._record_file(run_id)
            if record is not None and record.status in FINAL_STATUSES:
                self._commit_record(record, record.to_json())
                repaired.append(f"{run_id}: record file adopted ({record.status})")
                continue
            with self._connect() as db:
                db.execute("UPDATE runs SET status = ?, finished_at = ?, note = ? "
                           "WHERE id = ? AND status = 'running'",
                           (INTERRUPTED, utc_now(),
                            "reprun stopped before the run finished; no record was written",
                            run_id))
            repaired.append(f"{run_id}: marked interrupted (no record was written)")
        return repaired

    def _record_file(self, run_id: str) -> RunRecord | None:
        path = self.run_dir(run_id) / "record.json"
        try:
            return RunRecord.from_json(path.read_text())
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
