"""Proving the store was not altered: walk the record chain and re-hash every file it covers.

Each committed record carries the hash of the record before it, and covers its own inputs,
environment manifest, metrics, artifact hashes and log hash. So re-hashing the record texts in
commit order, then the files they name, shows whether any stored record, log or artifact was
altered or removed since it was written, and which. The newest link is also kept outside the
database (`chain-head`): removing the last record, or the whole table, is caught too; an
auditor who notes the head hash printed here can later prove nothing before it was rewritten.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.outputs import sha256_file
from orchestrator.records import INTERRUPTED, RUNNING
from orchestrator.store.db import (ChainHead, Store, approval_link_id, approval_sha256,
                                   UNHASHED, image_facts_sha256, record_sha256)


@dataclass(frozen=True)
class Problem:
    run_id: str | None
    what: str

    def __str__(self) -> str:
        return f"run {self.run_id}: {self.what}" if self.run_id else self.what


@dataclass
class StoreAudit:
    root: Path
    records: int = 0                     # records in the chain
    head_seq: int = 0
    head_sha256: str | None = None
    head_run: str | None = None
    logs: int = 0                        # log files re-hashed
    artifacts: int = 0                   # artifact files re-hashed
    running: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)   # interrupted before a record existed
    problems: list[Problem] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Row:
    id: str
    status: str
    seq: int | None
    record: str | None
    record_sha256: str | None
    previous_sha256: str | None


@dataclass(frozen=True)
class _Link:
    """One link of the chain as the store holds it: a run record, an approval or image facts."""
    seq: int
    id: str                       # run ID, approval:N or image-facts:…
    what: str                     # how a problem names it
    stored_sha256: str | None     # the hash it was committed with
    actual_sha256: str | None     # its content's hash now; None when it cannot be read
    names_previous: str | None    # the predecessor its content names
    row_previous: str | None      # the predecessor its row was committed with


def audit_store(store: Store) -> StoreAudit:
    audit = StoreAudit(root=store.root)
    snapshot = store.chain_snapshot()
    rows = [_Row(*r) for r in snapshot.runs]
    chained: list[_Row] = []
    for row in rows:
        if row.status == RUNNING:
            audit.running.append(row.id)
        elif row.record is None:
            if row.status == INTERRUPTED:
                audit.unrecorded.append(row.id)
            else:
                audit.problems.append(Problem(row.id, f"is {row.status} but its record is gone "
                                                      "from the store"))
        elif row.seq is None:
            audit.problems.append(Problem(row.id, "has a record outside the chain (written "
                                                  "before the chain existed, or inserted by hand)"))
        else:
            chained.append(row)
    links = [_record_link(row, audit) for row in chained]
    links += _approval_links(snapshot.approvals, audit) + _facts_links(snapshot.image_facts, audit)
    _check_chain(links, snapshot.head, audit)
    for row in chained:
        _check_files(store, row, audit)
    _check_folders(store, {row.id for row in rows}, audit)
    return audit


def _record_link(row: _Row, audit: StoreAudit) -> _Link:
    seq = row.seq
    try:
        document = json.loads(row.record)
        actual = record_sha256(row.record)
    except (ValueError, TypeError):
        audit.problems.append(Problem(row.id, f"record #{seq} is no longer valid JSON"))
        return _Link(seq, row.id, f"record #{seq}", row.record_sha256, None, row.previous_sha256,
                     row.previous_sha256)
    if not isinstance(document, dict):
        document = {}
    if document.get("id") != row.id or document.get("status") != row.status:
        audit.problems.append(Problem(row.id, f"record #{seq} no longer matches its row "
                                              "(id or status changed)"))
    return _Link(seq, row.id, f"record #{seq}", row.record_sha256, actual,
                 document.get("previous"), row.previous_sha256)


def _approval_links(approvals: list[tuple], audit: StoreAudit) -> list[_Link]:
    links = []
    for own_seq, spec, run_id, by, at, reason, seq, stored, previous in approvals:
        link_id = approval_link_id(own_seq)
        if seq is None:
            audit.problems.append(Problem(run_id, f"its approval ({link_id}) is outside the chain "
                                                  "(inserted by hand)"))
            continue
        links.append(_Link(seq, run_id, f"its approval (record #{seq})", stored,
                           approval_sha256(spec, run_id, by, at, reason, previous), previous,
                           previous))
    return links


def _facts_links(rows: list[tuple], audit: StoreAudit) -> list[_Link]:
    links = []
    for key, image_id, facts, source_run, seq, stored, previous in rows:
        if seq is None:
            audit.problems.append(Problem(source_run, f"the image facts it read for {image_id} "
                                                      "are outside the chain (inserted by hand)"))
            continue
        links.append(_Link(seq, source_run, f"the image facts it read (record #{seq})", stored,
                           image_facts_sha256(key, image_id, facts, source_run, previous),
                           previous, previous))
    return links


def _check_chain(links: list[_Link], head_text: str | None, audit: StoreAudit) -> None:
    by_seq: dict[int, _Link] = {}
    for link in links:
        if link.seq in by_seq:
            audit.problems.append(Problem(link.id, f"{link.what} shares its place in the chain "
                                                   "with another link (inserted by hand)"))
        by_seq.setdefault(link.seq, link)
    expected_previous: str | None = None
    last_seq = max(by_seq, default=0)
    for seq in range(1, last_seq + 1):
        link = by_seq.get(seq)
        if link is None:
            audit.problems.append(Problem(None, f"record #{seq} of the chain was removed from "
                                                "the store"))
            expected_previous = None
            continue
        audit.records += 1
        if link.actual_sha256 is None:
            expected_previous = link.stored_sha256
            continue
        if link.actual_sha256 != link.stored_sha256:
            audit.problems.append(Problem(link.id, f"{link.what} was altered in the store "
                                                   f"(its hash is now {link.actual_sha256[:16]}…, "
                                                   "it was committed as "
                                                   f"{str(link.stored_sha256)[:16]}…)"))
        if link.names_previous != link.row_previous:
            audit.problems.append(Problem(link.id, f"{link.what} names a predecessor other than "
                                                   "the one its row was committed with"))
        if seq > 1 and by_seq.get(seq - 1) is not None and link.names_previous != expected_previous:
            audit.problems.append(Problem(
                link.id, f"{link.what} names {str(link.names_previous)[:16]}… as the record "
                         f"before it, but record #{seq - 1} hashes to "
                         f"{str(expected_previous)[:16]}…: one of the two was rewritten"))
        expected_previous = link.stored_sha256
    if by_seq:
        last = by_seq[last_seq]
        audit.head_seq, audit.head_sha256, audit.head_run = last_seq, last.stored_sha256, last.id
    head = ChainHead.parse(head_text) if head_text is not None else None
    if head_text is None:
        if by_seq:
            audit.problems.append(Problem(None, "the chain-head file was removed"))
    elif head is None:
        audit.problems.append(Problem(None, "the chain-head file was altered (unreadable)"))
    elif head.seq not in by_seq:
        audit.problems.append(Problem(head.run_id, f"record #{head.seq}, the newest the store "
                                                   "committed, was removed"))
    elif by_seq[head.seq].stored_sha256 != head.sha256:
        audit.problems.append(Problem(head.run_id, f"record #{head.seq}, the newest the store "
                                                   "committed, was replaced"))
    elif head.seq != last_seq:
        audit.problems.append(Problem(None, f"the chain-head file names record #{head.seq}, but "
                                            f"the chain goes on to #{last_seq}: the head was "
                                            "rewound to an older link"))


def _check_files(store: Store, row: _Row, audit: StoreAudit) -> None:
    run_dir = store.run_dir(row.id)
    record_file = run_dir / "record.json"
    try:
        if record_sha256(record_file.read_text(encoding="utf-8")) != row.record_sha256:
            audit.problems.append(Problem(row.id, "its record file record.json was altered"))
    except FileNotFoundError:
        audit.problems.append(Problem(row.id, "its record file record.json was removed"))
    except (OSError, ValueError):
        audit.problems.append(Problem(row.id, "its record file record.json was altered "
                                              "(unreadable)"))
    try:
        outputs = json.loads(row.record).get("outputs") or {}
    except ValueError:
        return
    if outputs.get("log_sha256"):
        audit.logs += 1
        _check_file(run_dir / "log.txt", "log.txt", outputs["log_sha256"], None, row.id, audit)
    for name, artifact in sorted((outputs.get("artifacts") or {}).items()):
        audit.artifacts += 1
        _check_file(run_dir / "out" / name, f"artifact {name}", artifact.get("sha256"),
                    artifact.get("size"), row.id, audit)
    if "kept_files" not in outputs:
        return      # sealed by a reprun that did not yet hash the rest of the folder
    kept = outputs.get("kept_files") or {}
    for name, file in sorted(kept.items()):
        _check_file(run_dir / name, f"file {name}", file.get("sha256"), file.get("size"),
                    row.id, audit)
    covered = {"record.json", "log.txt", *kept,
               *(f"out/{name}" for name in outputs.get("artifacts") or {})}
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if (path.is_file() or path.is_symlink()) and rel not in covered:
            audit.problems.append(Problem(row.id, f"its folder holds {rel}, which no hash of "
                                                  "its record covers (added after the run)"))


def _check_file(path: Path, what: str, sha256: str | None, size: int | None, run_id: str,
                audit: StoreAudit) -> None:
    if path.is_symlink() or (path.exists() and not path.is_file()):
        audit.problems.append(Problem(run_id, f"its {what} was replaced by something that is "
                                              "not a file"))
        return
    if sha256 == UNHASHED:      # recorded by size: over the run's hashing budget
        try:
            if path.lstat().st_size != size:
                audit.problems.append(Problem(run_id, f"its {what} changed size"))
        except FileNotFoundError:
            audit.problems.append(Problem(run_id, f"its {what} was removed"))
        return
    try:
        actual, actual_size = sha256_file(path)
    except FileNotFoundError:
        audit.problems.append(Problem(run_id, f"its {what} was removed"))
        return
    except OSError as exc:
        audit.problems.append(Problem(run_id, f"its {what} cannot be read ({exc.strerror})"))
        return
    if actual != sha256 or (size is not None and actual_size != size):
        audit.problems.append(Problem(run_id, f"its {what} was altered (sha256 {actual[:16]}…, "
                                              f"recorded {str(sha256)[:16]}…)"))


def _check_folders(store: Store, known: set[str], audit: StoreAudit) -> None:
    try:
        names = sorted(os.listdir(store.runs_dir))
    except FileNotFoundError:
        return
    for name in names:
        if name not in known and (store.runs_dir / name).is_dir():
            audit.problems.append(Problem(name, "has a run folder but no row in the store "
                                                "(its record was removed?)"))
