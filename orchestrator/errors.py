"""Every failure reprun reports, each tied to the one exit code DESIGN gives it."""
from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    DIFFERS = 1
    INVALID = 2          # bad invocation or invalid spec
    PIN_MISMATCH = 3     # a pinned input does not match its pin; refused to run
    INFRASTRUCTURE = 4   # engine unreachable, pull or build failed
    JOB_FAILED = 5       # the training job failed: non-zero exit, timeout, OOM, bad outputs


class ReprunError(Exception):
    """An error meant for the user: one paragraph, no traceback."""

    exit_code: ExitCode = ExitCode.INVALID

    def __init__(self, message: str, *, details: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = list(details or [])

    def render(self) -> str:
        lines = [self.message, *("  " + d for d in self.details)]
        return "\n".join(lines)


class UsageError(ReprunError):
    exit_code = ExitCode.INVALID


class SpecError(ReprunError):
    exit_code = ExitCode.INVALID


class PinMismatch(ReprunError):
    exit_code = ExitCode.PIN_MISMATCH


class InfrastructureError(ReprunError):
    exit_code = ExitCode.INFRASTRUCTURE


class JobFailed(ReprunError):
    exit_code = ExitCode.JOB_FAILED
