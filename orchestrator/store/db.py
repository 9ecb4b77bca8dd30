"""The run store: an SQLite database plus one folder per run (DESIGN's embedded default).

A run gets a row (`running`) the moment it starts, so a crash leaves a trace; its record is
written once, when it ends, and a trigger refuses any later change. The record file in the run
folder is written atomically first, so the next command can finish the job if reprun died
between the two.

Records form a hash chain in commit order: each record names the hash of the one committed
before it (`previous`), gets the next sequence number, and the newest link is also kept in the
`chain-head` file. All three are written under one `BEGIN IMMEDIATE` transaction, so concurrent
writers queue instead of forking the chain; `integrity.audit_store` walks it. Approvals and the
cached image facts records are built from are links of the same chain, since an auditor reads
them too.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.clock import utc_now, utc_text  # noqa: F401  (utc_text: the store's time format)
from orchestrator.errors import InfrastructureError, UsageError
from orchestrator.execution.owners import process_alive
from orchestrator.records import (FINAL_STATUSES, INTERRUPTED, RUNNING, NewerRecord, RunRecord,
                                  RunSummary, unknown_record_field)
from orchestrator.store.schema import (LEDGER_COLUMNS, LEDGER_SCHEMA, SCHEMA, connect,
                                       connect_read_only)

CHAIN_HEAD = "chain-head"
RESERVE_FILE = ".reserve"
# Held in the run folder while the job runs, released just before the record is written: a job
# that fills the store's disk still leaves room for its own record.
DEFAULT_RESERVE_BYTES = 8 << 20


def record_sha256(text: str) -> str:
    """The hash of a record's JSON: canonical form (sorted keys, no spaces), so that it covers
    the document as written whatever reprun version reads it back."""
    canonical = json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _canonical_sha256(document: dict) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=True).encode()).hexdigest()


def approval_sha256(spec, run_id, approved_by, approved_at, reason, previous) -> str:
    """An approval's link in the chain: who approved which run of which spec, when, why."""
    return _canonical_sha256({"kind": "approval", "spec": spec, "run_id": run_id,
                              "approved_by": approved_by, "approved_at": approved_at,
                              "reason": reason, "previous": previous})


def image_facts_sha256(key, image_id, facts, source_run, previous) -> str:
    """The link of image facts that later records are built from (`facts` as stored, JSON)."""
    return _canonical_sha256({"kind": "image_facts", "key": key, "image_id": image_id,
                              "facts": facts, "source_run": source_run, "previous": previous})


def approval_link_id(approval_seq: int) -> str:
    return f"approval:{approval_seq}"


def image_facts_link_id(key: str) -> str:
    return "image-facts:" + hashlib.sha256(key.encode()).hexdigest()[:16]


def _ledger_head(db: sqlite3.Connection) -> tuple[int, str | None]:
    """The newest link of the chain, whatever it records: (seq, its hash), or (0, None)."""
    row = db.execute(
        "SELECT seq, sha FROM (SELECT seq, record_sha256 AS sha FROM runs WHERE seq IS NOT NULL "
        "UNION ALL SELECT chain_seq, entry_sha256 FROM approvals WHERE chain_seq IS NOT NULL "
        "UNION ALL SELECT seq, entry_sha256 FROM image_facts WHERE seq IS NOT NULL) "
        "ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, None)


_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def record_json(record: RunRecord) -> str:
    """A record as the store writes it: standard JSON (no bare NaN/Infinity), sorted keys."""
    return record.to_standard_json()


def _metrics_as_numbers(data) -> None:
    """Metrics written as "NaN"/"Infinity" text are the floats they stand for again."""
    outputs = data.get("outputs") if isinstance(data, dict) else None
    metrics = outputs.get("metrics") if isinstance(outputs, dict) else None
    if isinstance(metrics, dict):
        for name, value in metrics.items():
            if isinstance(value, str) and value in _NON_FINITE:
                metrics[name] = _NON_FINITE[value]


def parse_record(text: str, source: str) -> RunRecord:
    """A record read back from a file or a row; `source` says which, for the one-sentence error
    a damaged or newer record gives instead of a crash."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{source} is not a run record (not JSON: {exc}).") from None
    unknown = unknown_record_field(data)
    _metrics_as_numbers(data)
    if unknown:
        raise UsageError(f"{source} was written by a newer reprun (field {unknown}); upgrade "
                         "reprun to read it.")
    try:
        return RunRecord.from_dict(data)
    except NewerRecord as exc:
        raise UsageError(f"{source}: {exc.message}") from None
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise UsageError(f"{source} is not a complete run record (missing or malformed "
                         f"{exc}).") from None


@dataclass(frozen=True)
class ChainSnapshot:
    runs: list[tuple]           # id, status, seq, record, record_sha256, previous_sha256
    approvals: list[tuple]      # seq, spec, run_id, approved_by, approved_at, reason, chain link
    image_facts: list[tuple]    # key, image_id, facts, source_run, chain link
    head: str | None            # the chain-head file's text


@dataclass(frozen=True)
class ChainHead:
    seq: int
    sha256: str
    run_id: str

    @classmethod
    def parse(cls, text: str) -> "ChainHead | None":
        parts = text.split()
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        return cls(int(parts[0]), parts[1], parts[2])


def default_store_root() -> Path:
    return Path(os.environ.get("REPRUN_STORE", ".reprun"))


class Store:
    def __init__(self, root: Path | str | None = None):
        self.root = (Path(root) if root is not None else default_store_root()).absolute()
        self.runs_dir = self.root / "runs"
        self.reports_dir = self.root / "reports"
        self.db_path = self.root / "store.db"
        # A full disk still lets every reading command answer; anything that writes says why not.
        self.read_only = False
        try:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            self.reports_dir.mkdir(parents=True, exist_ok=True)
            with self.connect() as db:
                db.executescript(SCHEMA)
                _add_chain_columns(db)
        except (OSError, sqlite3.Error) as exc:
            if not self._open_on_a_full_disk():
                reason = getattr(exc, "strerror", None) or str(exc)
                raise InfrastructureError(
                    f"the store at {self.root} cannot be opened ({reason}); point REPRUN_STORE "
                    "or --store at a folder reprun can write, or restore its store.db.") from None

    def _open_on_a_full_disk(self) -> bool:
        try:
            if not self.db_path.is_file() or shutil.disk_usage(self.root).free >= self.reserve_bytes():
                return False
            with connect_read_only(self.db_path) as db:
                db.execute("SELECT COUNT(*) FROM runs").fetchone()
        except (OSError, sqlite3.Error, UsageError):
            return False
        self.read_only = True
        return True

    def connect(self) -> "contextlib.AbstractContextManager[sqlite3.Connection]":
        if self.read_only:
            return connect_read_only(self.db_path)
        return connect(self.db_path)

    # -- writing ---------------------------------------------------------------------------

    def new_run(self, spec_name: str) -> tuple[str, Path, str]:
        """Reserve an ID and folder for a run that starts now; its row says `running`.
        Refused when the disk cannot keep the reserve: the run would end without a record."""
        self.refuse_without_room()
        started_at = utc_now()
        for _ in range(10):
            run_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
            try:
                with self.connect() as db:
                    db.execute(
                        "INSERT INTO runs (id, spec, status, started_at, host, pid) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (run_id, spec_name, RUNNING, started_at, socket.gethostname(), os.getpid()))
            except sqlite3.IntegrityError:
                continue
            run_dir = self.runs_dir / run_id
            run_dir.mkdir(parents=True)
            return run_id, run_dir, started_at
        # 16 million IDs a second: ten collisions in a row mean the store itself misbehaves.
        raise InfrastructureError(f"the store at {self.root} gave no unique run ID in ten tries; "
                                  "check that store.db is not shared with a copy of itself.")

    def finish(self, record: RunRecord) -> RunRecord:
        """Seal the record into the chain: record file, row and chain head, none changes again.

        Returns the record as stored, naming its predecessor."""
        if record.status not in FINAL_STATUSES:
            raise ValueError(f"cannot finish a run with status {record.status!r}")
        _return_to_caller(self.run_dir(record.id))
        if record.outputs is not None:
            record = dataclasses.replace(record, outputs=dataclasses.replace(
                record.outputs, kept_files=kept_files(self.run_dir(record.id), record)))
        return self._seal(record)

    def _seal(self, record: RunRecord) -> RunRecord:
        outputs = record.outputs
        with self.connect() as db:
            # IMMEDIATE takes the write lock before reading the head: two writers can never
            # both extend the same link.
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT status FROM runs WHERE id = ?", (record.id,)).fetchone()
                if row is None or row[0] != RUNNING:
                    db.execute("ROLLBACK")
                    return record
                head_seq, previous = _ledger_head(db)
                seq = head_seq + 1
                sealed = dataclasses.replace(record, previous=previous)
                text = record_json(sealed)
                digest = record_sha256(text)
                # The file first: a crash before COMMIT leaves it for `repair` to adopt.
                _write_atomically(self.run_dir(record.id) / "record.json", text)
                db.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, duration_s = ?, image_id = ?, "
                    "record = ?, record_sha256 = ?, seq = ?, previous_sha256 = ? "
                    "WHERE id = ? AND status = 'running'",
                    (record.status, record.finished_at, outputs.duration_s if outputs else None,
                     record.inputs.image.id, text, digest, seq, previous, record.id))
                _write_atomically(self.root / CHAIN_HEAD, f"{seq} {digest} {record.id}\n")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return sealed

    def append_link(self, insert) -> int:
        """Add an approval or image facts to the chain: `insert(db, seq, previous)` writes the
        row and returns its hash and link ID, under the same write lock as records."""
        with self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                head_seq, previous = _ledger_head(db)
                digest, link_id = insert(db, head_seq + 1, previous)
                if digest is not None:
                    _write_atomically(self.root / CHAIN_HEAD,
                                      f"{head_seq + 1} {digest} {link_id}\n")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        return head_seq + 1

    def chain_snapshot(self) -> "ChainSnapshot":
        """Every run row, approval and image facts row, and the chain-head file's text, read
        under the write lock so no commit falls between."""
        with self.connect() as db:
            db.execute("BEGIN" if self.read_only else "BEGIN IMMEDIATE")   # nobody writes then
            try:
                rows = db.execute(
                    "SELECT id, status, seq, record, record_sha256, previous_sha256 FROM runs "
                    "ORDER BY seq IS NULL, seq, id").fetchall()
                approvals = db.execute(
                    "SELECT seq, spec, run_id, approved_by, approved_at, reason, chain_seq, "
                    "entry_sha256, previous_sha256 FROM approvals ORDER BY seq").fetchall()
                facts = db.execute(
                    "SELECT key, image_id, facts, source_run, seq, entry_sha256, previous_sha256 "
                    "FROM image_facts ORDER BY seq IS NULL, seq, key").fetchall()
                try:
                    head = (self.root / CHAIN_HEAD).read_text()
                except FileNotFoundError:
                    head = None
            finally:
                db.execute("ROLLBACK")
        return ChainSnapshot(rows, approvals, facts, head)

    def chain_head(self) -> ChainHead | None:
        try:
            return ChainHead.parse((self.root / CHAIN_HEAD).read_text())
        except OSError:
            return None

    def reserve_bytes(self) -> int:
        text = os.environ.get("REPRUN_RESERVE_BYTES", str(DEFAULT_RESERVE_BYTES))
        try:
            return max(int(text), 0)
        except ValueError:
            raise UsageError(f"REPRUN_RESERVE_BYTES={text!r} is not a number of bytes.") from None

    def free_bytes(self) -> int:
        """What may still be written here and leave the disk reserve for a run's record."""
        return max(shutil.disk_usage(self.root).free - self.reserve_bytes(), 0)

    def refuse_without_room(self) -> None:
        free, reserve = shutil.disk_usage(self.root).free, self.reserve_bytes()
        if free < reserve:
            raise InfrastructureError(
                f"the store at {self.root} has {free >> 20} MiB free, less than the "
                f"{reserve >> 20} MiB reprun keeps for a run's record; free some space "
                "(`reprun gc`) before starting a run.")

    def reserve_space(self, run_id: str) -> "SpaceReserve":
        return SpaceReserve.take(self.run_dir(run_id) / RESERVE_FILE, self.reserve_bytes())

    def note_built_image(self, image_id: str, spec_name: str) -> None:
        with self.connect() as db:
            db.execute("INSERT OR IGNORE INTO built_images (image_id, spec, built_at) "
                       "VALUES (?, ?, ?)", (image_id, spec_name, utc_now()))

    def built_images_without_runs(self) -> dict[str, str]:
        """Images reprun built that no recorded run ran on: image ID -> spec name."""
        with self.connect() as db:
            return dict(db.execute(
                "SELECT image_id, spec FROM built_images WHERE image_id NOT IN "
                "(SELECT image_id FROM runs WHERE image_id IS NOT NULL)").fetchall())

    def forget_built_image(self, image_id: str) -> None:
        with self.connect() as db:
            db.execute("DELETE FROM built_images WHERE image_id = ?", (image_id,))

    def remove_unrecorded_run_folders(self) -> list[str]:
        """Folders of runs a crash interrupted before any record was written: nothing in them is
        covered by a record, and the row (status `interrupted`, with a note) stays."""
        with self.connect() as db:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM runs WHERE status = ? AND record IS NULL", (INTERRUPTED,))]
        removed = []
        for run_id in ids:
            folder = self.run_dir(run_id)
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(run_id)
        return removed

    def image_facts(self, key: str) -> tuple[dict, str] | None:
        """Image-bound manifest facts read before under this key, and the run that read them."""
        with self.connect() as db:
            row = db.execute("SELECT facts, source_run FROM image_facts WHERE key = ?",
                             (key,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def remember_image_facts(self, key: str, image_id: str, facts: dict, run_id: str) -> None:
        text = json.dumps(facts, sort_keys=True, allow_nan=False)

        def insert(db, seq, previous):
            if db.execute("SELECT 1 FROM image_facts WHERE key = ?", (key,)).fetchone():
                return None, None       # read before, by another run: the first one stays
            digest = image_facts_sha256(key, image_id, text, run_id, previous)
            db.execute("INSERT INTO image_facts (key, image_id, facts, source_run, seq, "
                       "entry_sha256, previous_sha256) VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key, image_id, text, run_id, seq, digest, previous))
            return digest, image_facts_link_id(key)
        self.append_link(insert)

    def save_report(self, run_ids: list[str], verdict: str, text: str) -> Path:
        report_id = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(3)
        path = self.reports_dir / f"{report_id}.json"
        _write_atomically(path, text)
        with self.connect() as db:
            db.execute("INSERT INTO reports (id, created_at, runs, verdict, path) VALUES (?,?,?,?,?)",
                       (report_id, utc_now(), json.dumps(run_ids), verdict, str(path)))
        return path

    # -- reading ---------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.runs_dir / run_id

    def resolve_id(self, id_or_prefix: str) -> str:
        with self.connect() as db:
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
        with self.connect() as db:
            status, text = db.execute("SELECT status, record FROM runs WHERE id = ?",
                                      (run_id,)).fetchone()
        if text is None:
            raise UsageError(
                f"run {run_id} is {status} and has no complete record "
                + ("yet (it is still going)." if status == RUNNING
                   else "(reprun stopped before writing it)."))
        return parse_record(text, f"the record of run {run_id}")

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
        with self.connect() as db:
            return [RunSummary(*row) for row in db.execute(sql, args)]

    def latest_succeeded(self, spec: str) -> RunRecord | None:
        """The newest succeeded run of `spec` made as the spec says: the varied runs of
        `verify --vary` changed its conditions on purpose, and are no reference for it."""
        with self.connect() as db:
            rows = db.execute("SELECT record FROM runs WHERE spec = ? AND status = 'succeeded' "
                              "ORDER BY started_at DESC", (spec,))
            for (text,) in rows:
                record = parse_record(text, "a stored record")
                if not (record.inputs.container.get("variations") or {}).get("varied"):
                    return record
        return None

    # -- repair ----------------------------------------------------------------------------

    def repair(self) -> list[str]:
        """Runs left `running` by a reprun process that is gone: adopt or mark interrupted."""
        if self.read_only:
            return []       # on a full disk: the next command with room does it
        repaired = []
        with self.connect() as db:
            rows = db.execute("SELECT id, host, pid FROM runs WHERE status = 'running'").fetchall()
        for run_id, host, pid in rows:
            if host == socket.gethostname() and process_alive(pid):
                continue
            with contextlib.suppress(OSError):
                (self.run_dir(run_id) / RESERVE_FILE).unlink()
            record = self._record_file(run_id)
            if record is not None and record.status in FINAL_STATUSES and record.id == run_id:
                # Re-sealed at the chain's current head: others may have committed meanwhile.
                self._seal(record)
                repaired.append(f"{run_id}: record file adopted ({record.status})")
                continue
            with self.connect() as db:
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
            return parse_record(path.read_text(encoding="utf-8"), str(path))
        except (OSError, ValueError, UsageError):
            return None


class SpaceReserve:
    """A file of zeros that holds disk space for later; `release` gives it back."""

    def __init__(self, path: Path | None):
        self.path = path

    @classmethod
    def take(cls, path: Path, size: int) -> "SpaceReserve":
        if size <= 0:
            return cls(None)
        try:
            with open(path, "wb") as handle:
                try:
                    os.posix_fallocate(handle.fileno(), 0, size)
                except OSError:
                    handle.write(b"\0" * size)   # filesystems without fallocate
            return cls(path)
        except OSError:
            # Already full: the run goes on; writing its record may then fail loudly.
            with contextlib.suppress(OSError):
                path.unlink()
            return cls(None)

    def release(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.path = None


def _add_chain_columns(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        for table, columns in LEDGER_COLUMNS.items():
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            for column, kind in columns.items():
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        _chain_older_rows(db)
        for statement in filter(str.strip, LEDGER_SCHEMA.split(";\n")):
            db.execute(statement)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _chain_older_rows(db: sqlite3.Connection) -> None:
    """Approvals and image facts written before they joined the chain are adopted into it, once,
    when the store is first opened by a reprun that chains them (the head file follows on the
    next commit)."""
    for row in db.execute("SELECT seq, spec, run_id, approved_by, approved_at, reason "
                          "FROM approvals WHERE chain_seq IS NULL ORDER BY seq").fetchall():
        head_seq, previous = _ledger_head(db)
        db.execute("UPDATE approvals SET chain_seq = ?, entry_sha256 = ?, previous_sha256 = ? "
                   "WHERE seq = ?", (head_seq + 1, approval_sha256(*row[1:], previous), previous,
                                     row[0]))
    for row in db.execute("SELECT key, image_id, facts, source_run FROM image_facts "
                          "WHERE seq IS NULL ORDER BY key").fetchall():
        head_seq, previous = _ledger_head(db)
        db.execute("UPDATE image_facts SET seq = ?, entry_sha256 = ?, previous_sha256 = ? "
                   "WHERE key = ?", (head_seq + 1, image_facts_sha256(*row, previous), previous,
                                     row[0]))


# Written by the store itself, or covered by the record's own hashes.
_COVERED_ELSEWHERE = {"record.json", "log.txt", RESERVE_FILE}


# A kept file recorded by its size alone: hashing it would have gone past the run's budget.
UNHASHED = ""


def kept_files(run_dir: Path, record: RunRecord) -> dict:
    """Every regular file of the run folder that no other hash of the record covers, by its path
    in the folder: what the job left besides its artifacts, and the probe's manifest.txt.

    Hashed while their sizes add up to no more than the run's outputs.max_size, as artifacts
    are: a job that leaves an 8 GiB sparse file must not buy minutes of hashing after its end
    and at every `runs verify`. The rest are recorded by size (sha256 UNHASHED)."""
    from orchestrator.outputs import DEFAULT_MAX_ARTIFACT_BYTES, sha256_file
    from orchestrator.records import Artifact
    artifacts = {f"out/{name}" for name in (record.outputs.artifacts if record.outputs else {})}
    budget = (record.inputs.outputs or {}).get("max_size") or DEFAULT_MAX_ARTIFACT_BYTES
    budget = budget if isinstance(budget, int) else DEFAULT_MAX_ARTIFACT_BYTES
    kept = {}
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder, name)
            rel = path.relative_to(run_dir).as_posix()
            if rel in _COVERED_ELSEWHERE or rel in artifacts or path.is_symlink() \
                    or not path.is_file():
                continue
            with contextlib.suppress(OSError):
                size = path.lstat().st_size
                if size > budget:
                    kept[rel] = Artifact(UNHASHED, size)
                    continue
                sha, size = sha256_file(path)
                budget -= size
                kept[rel] = Artifact(sha, size)
    return kept


def _return_to_caller(run_dir: Path) -> None:
    """The job wrote its outputs as its own user (65534 by default): once it is over, the run's
    folder belongs to whoever ran reprun again, links included and never followed."""
    uid, gid = os.getuid(), os.getgid()
    if os.geteuid() != 0:
        return      # only root could have given the folder away, and only root takes it back
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        for name in (folder, *(os.path.join(folder, n) for n in dirs + files)):
            with contextlib.suppress(OSError):
                st = os.lstat(name)
                if (st.st_uid, st.st_gid) != (uid, gid):
                    os.lchown(name, uid, gid)


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
