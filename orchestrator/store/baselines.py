"""Baselines: the run an operator accepted for a spec (say, the one behind the production model).

Approvals are appended, never edited: the latest approval of a spec names its baseline, and the
earlier ones stay as its history (who, when, why).
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass

from orchestrator.errors import UsageError
from orchestrator.records import SUCCEEDED
from orchestrator.store.db import Store, approval_link_id, approval_sha256, utc_now



@dataclass(frozen=True)
class Approval:
    spec: str
    run_id: str
    approved_by: str
    approved_at: str
    reason: str


def approve(store: Store, run_id: str, *, reason: str, by: str | None = None) -> Approval:
    if not reason.strip():      # the why is what an auditor reads later
        raise UsageError("an approval needs a reason: say why this run is the accepted one, "
                         "e.g. --reason \"model v3 in production\".")
    record = store.get(run_id)
    if record.status != SUCCEEDED:
        raise UsageError(f"run {record.id} {record.status}; only a succeeded run can be a baseline.")
    approval = Approval(spec=record.inputs.spec_name, run_id=record.id,
                        approved_by=by or getpass.getuser(), approved_at=utc_now(), reason=reason)
    fields = (approval.spec, approval.run_id, approval.approved_by, approval.approved_at,
              approval.reason)

    def insert(db, seq, previous):
        digest = approval_sha256(*fields, previous)
        cursor = db.execute("INSERT INTO approvals (spec, run_id, approved_by, approved_at, "
                            "reason, chain_seq, entry_sha256, previous_sha256) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", (*fields, seq, digest, previous))
        return digest, approval_link_id(cursor.lastrowid)
    store.append_link(insert)
    return approval


def baseline_of(store: Store, spec: str) -> Approval | None:
    with store.connect() as db:
        row = db.execute("SELECT spec, run_id, approved_by, approved_at, reason FROM approvals "
                         "WHERE spec = ? ORDER BY seq DESC LIMIT 1", (spec,)).fetchone()
    return Approval(*row) if row else None


def baseline_ids(store: Store) -> set[str]:
    with store.connect() as db:
        rows = db.execute("SELECT run_id FROM approvals a WHERE seq = "
                          "(SELECT MAX(seq) FROM approvals b WHERE b.spec = a.spec)").fetchall()
    return {r[0] for r in rows}


def approved_note(store: Store, run_ids) -> dict[str, str]:
    """A report note naming which of these runs is an approved baseline, if any is."""
    approved = baseline_ids(store) & set(run_ids)
    return {"approved baseline": ", ".join(sorted(approved))} if approved else {}
