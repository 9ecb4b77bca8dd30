"""`reprun runs`: which runs a listing asks for, and the store audit as JSON."""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from orchestrator.errors import UsageError
from orchestrator.records import FINAL_STATUSES, RUNNING

_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class RunFilter:
    spec: str | None = None
    status: str | None = None
    since: str | None = None     # as the store writes times: UTC, milliseconds, Z
    until: str | None = None

    @property
    def narrows(self) -> bool:
        return any(x is not None for x in (self.spec, self.status, self.since, self.until))


def run_filter(*, spec: str | None, status: str | None, since: str | None,
               until: str | None) -> RunFilter:
    """The filters of `reprun runs` as typed, checked: a known status, times that parse, and
    a --since before the --until."""
    if status is not None and status not in (RUNNING, *FINAL_STATUSES):
        raise UsageError(f"--status {status!r} is not a status; use one of "
                         f"{', '.join((*FINAL_STATUSES, RUNNING))}.")
    start = None if since is None else moment(since, "--since")
    end = None if until is None else moment(until, "--until")
    if start is not None and end is not None and start >= end:
        raise UsageError(f"--since {since} is not before --until {until}: no run can lie "
                         "between them (--until is the first moment not included).")
    return RunFilter(spec=spec, status=status, since=start, until=end)


def moment(text: str, option: str) -> str:
    """A time as the store writes it (UTC, milliseconds, Z), from an ISO date or date-time (a
    space or T between; UTC unless it has an offset) or a time ago (30m, 12h, 7d, 2w)."""
    from orchestrator.store.db import utc_text
    ago = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text)
    try:
        if ago:
            when = datetime.now(timezone.utc) - timedelta(seconds=int(ago[1]) * _AGO[ago[2]])
        else:
            when = datetime.fromisoformat(text.strip())
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        raise UsageError(f"{option} {text!r} is not a time: give a date (2026-11-27), a date and "
                         "time in UTC (2026-11-27 16:52:42, or with an offset such as +02:00), "
                         "or a time ago (30m, 12h, 7d, 2w).") from None
    return utc_text(when)


def audit_as_dict(audit, repaired: list[str]) -> dict:
    """`reprun runs verify --json`: the audit with what the repair before it did."""
    return {
        "store": str(audit.root), "intact": audit.intact, "records": audit.records,
        "head": {"seq": audit.head_seq, "sha256": audit.head_sha256, "run": audit.head_run},
        "logs": audit.logs, "artifacts": audit.artifacts, "repaired": repaired,
        "running": audit.running, "unrecorded": audit.unrecorded,
        "problems": [{"run": p.run_id, "what": p.what} for p in audit.problems]}
