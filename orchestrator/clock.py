"""Times as reprun writes them: UTC with a Z, so that their text sorts as their time."""
from __future__ import annotations

from datetime import datetime, timezone


def utc_text(moment: datetime, timespec: str = "milliseconds") -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now(timespec: str = "milliseconds") -> str:
    return utc_text(datetime.now(timezone.utc), timespec)
