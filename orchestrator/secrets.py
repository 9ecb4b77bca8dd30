"""Keeping secrets out of everything reprun keeps: records, the job's log, the raw probe, reports.

A secret is the value of a variable the spec lists under `secrets:` (read from reprun's own
environment when the run starts, never from the spec file), or of a variable in the container's
environment that the spec does not set and whose name ends like a credential (SECRET_NAME).

Redaction is by key, never by searching the whole record: a secret's value is replaced by
`<redacted>` at the variable that holds it, in the record's `env` maps. What the spec file sets
under `env` is in the repository, so it is no secret: it is recorded as written, and a rerun
reproduces it. Only the values of declared secrets are also searched for, and only in what the
job itself produces: its log (live and stored), its metric names, its failure message and the
raw probe output.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, Mapping

from orchestrator.errors import UsageError

REDACTED = "<redacted>"

# A credential's name ends with the noun for it: HF_TOKEN, GITHUB_TOKEN, AWS_SESSION_TOKEN,
# DB_PASSWORD, PGPASSWORD, MYSQL_PWD, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, CLIENT_SECRET. A name
# that merely contains such a word names a setting about it: TOKENIZERS_PARALLELISM, AUTH_MODE,
# MAX_TOKENS, KEY_COLUMN, SSH_AUTH_SOCK, and PWD (the working folder) are not secrets.
SECRET_NAME = re.compile(
    r"(?:^|_)(?:TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIALS?|API_?KEY|PRIVATE_?KEY"
    r"|SECRET_?(?:ACCESS_?)?KEY)$|PASSWORD$|._PWD$",
    re.IGNORECASE)

# Shorter declared values are still never recorded as a variable's value, but are not searched
# for in free text: replacing every "1" or "on" in a log would destroy it and protect nothing.
MIN_SEARCHED_CHARS = 4


def looks_secret(name: str) -> bool:
    """Whether a variable's name ends like a credential's (SECRET_NAME)."""
    return bool(SECRET_NAME.search(name))


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """The container's environment with the values of credential-like names redacted."""
    return {k: (REDACTED if looks_secret(k) else v) for k, v in env.items()}


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


def recorded_inputs_env(spec_env: Mapping[str, str], declared: Iterable[str]) -> dict[str, str]:
    """The record's `inputs.env`: the spec's values as written, every declared secret redacted."""
    return {**spec_env, **{name: REDACTED for name in declared}}


def recorded_environment_env(seen: Mapping[str, str], *, set_by_reprun: Mapping[str, str],
                             spec_env: Mapping[str, str], declared: Iterable[str]) -> dict[str, str]:
    """The record's `environment.env`, from what the probe saw (`seen`, already redacted by
    name): a variable the spec sets is recorded with the value reprun gave the job, a declared
    secret is redacted whatever its name."""
    declared = set(declared)
    env = dict(seen)
    for name in env:
        if name in declared:
            env[name] = REDACTED
        elif name in spec_env and name in set_by_reprun:
            env[name] = set_by_reprun[name]
    return env


class Redactor:
    """Replaces the values of declared secrets in what a job produces: text, bytes, names."""

    def __init__(self, values: Iterable[str]):
        unique = {v for v in values if len(v) >= MIN_SEARCHED_CHARS}
        # Longest first, so that a secret containing another is replaced whole.
        self.values = sorted(unique, key=len, reverse=True)
        self._encoded = [v.encode("utf-8", "surrogateescape") for v in self.values]

    @classmethod
    def for_run(cls, spec, secrets: Mapping[str, str]) -> "Redactor":
        """`secrets`: the declared secrets' values; the spec's own `env` values are not secret."""
        return cls(secrets.values())

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

    def keys(self, mapping: Mapping[str, object]) -> dict[str, object]:
        """A mapping whose names the job chose (metric names), with secrets replaced in them."""
        return {self.text(k): v for k, v in mapping.items()}

    def stream(self) -> "StreamRedactor":
        return StreamRedactor(self)


class StreamRedactor:
    """Redacts a byte stream that arrives in chunks: a secret split between two chunks is still
    caught, because the last bytes of each chunk wait for the next (at most the longest secret).
    Whoever feeds it must pass on what `flush` returns at the end: that is the stream's tail."""

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
