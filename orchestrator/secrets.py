"""Keeping secrets out of everything reprun keeps: records, the job's log, the raw probe, reports.

A secret is the value of a variable whose name looks like one (token, key, password, …) or that
the spec lists under `secrets` (those values come from reprun's own environment, never from the
spec file). Names are kept, values are replaced by `<redacted>` wherever they appear — also when
the job prints them, or writes them into a metric name.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping

from orchestrator.errors import UsageError
from orchestrator.manifest.probes import REDACTED, looks_secret

# Shorter values are still never recorded as a variable's value, but are not searched for in
# free text: replacing every "1" or "on" in a log would destroy it and protect nothing.
MIN_SEARCHED_CHARS = 4


def secret_values(spec, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values of the spec's `secrets`, read from reprun's environment; exit 2 if one is unset."""
    environ = os.environ if environ is None else environ
    missing = [name for name in getattr(spec, "secrets", ()) if name not in environ]
    if missing:
        raise UsageError(
            f"the spec {spec.name} lists the secret{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}, but reprun's environment does not set "
            f"{'them' if len(missing) > 1 else 'it'}. Export the value before running reprun; "
            "it is handed to the job and never recorded.")
    return {name: environ[name] for name in getattr(spec, "secrets", ())}


class Redactor:
    """Replaces known secret values in text, bytes and JSON-like trees."""

    def __init__(self, values: Iterable[str]):
        unique = {v for v in values if len(v) >= MIN_SEARCHED_CHARS}
        # Longest first, so that a secret containing another is replaced whole.
        self.values = sorted(unique, key=len, reverse=True)
        self._encoded = [v.encode("utf-8", "surrogateescape") for v in self.values]

    @classmethod
    def for_run(cls, spec, secrets: Mapping[str, str]) -> "Redactor":
        named = [value for name, value in spec.env.items() if looks_secret(name)]
        return cls([*named, *secrets.values()])

    def __bool__(self) -> bool:
        return bool(self.values)

    def text(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, REDACTED)
        return text

    def bytes(self, data: bytes) -> bytes:
        for value in self._encoded:
            if value in data:
                data = data.replace(value, REDACTED.encode())
        return data

    def tree(self, node: Any) -> Any:
        if isinstance(node, str):
            return self.text(node)
        if isinstance(node, dict):
            return {self.tree(k) if isinstance(k, str) else k: self.tree(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(self.tree(v) for v in node)
        return node

    def stream(self) -> "StreamRedactor":
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream that arrives in chunks: a secret split between two chunks is still
    caught, because the last bytes of each chunk wait for the next (at most the longest secret)."""

    def __init__(self, redactor: Redactor):
        self.redactor = redactor
        self.hold = max((len(v) for v in redactor._encoded), default=1) - 1
        self.pending = b""

    def feed(self, chunk: bytes) -> bytes:
        if not self.redactor:
            return chunk
        data = self.pending + chunk
        cut = max(0, len(data) - self.hold)
        # Keep back raw bytes, never part of a replacement: a secret that straddles the cut
        # waits whole for the next chunk, so what is emitted is final and redacted.
        moved = True
        while moved:
            moved = False
            for secret in self.redactor._encoded:
                start = data.find(secret, max(0, cut - len(secret) + 1))
                if start != -1 and start < cut:
                    cut, moved = start, True
        self.pending = data[cut:]
        return self.redactor.bytes(data[:cut])

    def flush(self) -> bytes:
        out, self.pending = self.pending, b""
        return self.redactor.bytes(out) if self.redactor else out
