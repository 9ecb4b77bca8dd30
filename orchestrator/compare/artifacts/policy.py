"""How each artifact is compared: the `compare.artifacts` setting of a spec, read once.

`bitwise` or `ignore` alone applies to every artifact. A mapping gives a policy per pattern
(matched like `outputs.artifacts`, against the artifact's path or its name; the first pattern
that matches wins, in the order written; artifacts no pattern matches are compared bitwise):

    "*.pdf": ignore
    "model.pt": bitwise
    "weights.npz": {abs: 1.0e-6}          # by content, equivalent within the tolerance
    "predictions.csv": predictions        # prediction churn, columns id and prediction
    "scores.jsonl": {predictions: {id: example, predicted: label, truth: target, churn: 0.01}}
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any

BITWISE = "bitwise"
IGNORE = "ignore"
TOLERANCE = "tolerance"
PREDICTIONS = "predictions"

HOW_TO_WRITE = ("Write bitwise, ignore, {abs: 1.0e-6}, {rel: 0.01}, predictions, or "
                "{predictions: {id: ID, predicted: COLUMN, truth: COLUMN, churn: 0.01, abs: 0.5}}")
PREDICTION_KEYS = ("id", "predicted", "truth", "churn", "abs")


class PolicyError(ValueError):
    """What is wrong with a policy, and how to write it (a spec shows both at the key's line)."""

    def __init__(self, what: str, how: str = HOW_TO_WRITE):
        super().__init__(f"{what}. {how}")
        self.what, self.how = what, how


@dataclass(frozen=True)
class PredictionColumns:
    id: str = "id"
    predicted: str = "prediction"
    truth: str | None = None         # the true label; per-class accuracy deltas when given


@dataclass(frozen=True)
class ArtifactPolicy:
    how: str = BITWISE               # bitwise | ignore | tolerance | predictions
    abs: float | None = None         # tolerance on values (arrays, numbers, predicted values)
    rel: float | None = None
    columns: PredictionColumns | None = None
    churn: float = 0.0               # share of examples that may change prediction

    @property
    def text(self) -> str:
        if self.how == TOLERANCE:
            return f"abs {self.abs!r}" if self.abs is not None else f"rel {self.rel!r}"
        if self.how == PREDICTIONS:
            return "predictions" + (f" (churn ≤ {self.churn!r})" if self.churn else "")
        return self.how


@dataclass(frozen=True)
class ArtifactPolicies:
    default: ArtifactPolicy = ArtifactPolicy()
    by_pattern: tuple[tuple[str, ArtifactPolicy], ...] = ()

    def for_artifact(self, name: str) -> ArtifactPolicy:
        base = name.rsplit("/", 1)[-1]
        for pattern, policy in self.by_pattern:
            if fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(base, pattern):
                return policy
        return self.default


def parse_policies(raw: Any) -> ArtifactPolicies:
    """Read `compare.artifacts` as a spec writes it or a record keeps it; ValueError says why
    a value cannot be a policy."""
    if raw is None or raw == "":
        return ArtifactPolicies()
    if isinstance(raw, str):
        if raw not in (BITWISE, IGNORE):
            raise PolicyError(f"compare.artifacts is {raw!r}; alone it is bitwise or ignore, or "
                             "a mapping of artifact pattern to policy")
        return ArtifactPolicies(default=ArtifactPolicy(raw))
    if not isinstance(raw, dict):
        raise PolicyError(f"compare.artifacts must be bitwise, ignore or a mapping of pattern to "
                         f"policy, not {type(raw).__name__}")
    patterns = []
    for pattern, value in raw.items():
        if not isinstance(pattern, str) or not pattern:
            raise PolicyError(f"compare.artifacts has a pattern {pattern!r} that is not text")
        patterns.append((pattern, parse_policy(value, pattern)))
    return ArtifactPolicies(by_pattern=tuple(patterns))


def parse_policy(value: Any, pattern: str = "") -> ArtifactPolicy:
    where = f"the policy for {pattern!r}" if pattern else ""
    if value in (BITWISE, IGNORE):
        return ArtifactPolicy(value)
    if value == PREDICTIONS:
        return ArtifactPolicy(PREDICTIONS, columns=PredictionColumns())
    if isinstance(value, dict) and len(value) == 1 and set(value) <= {"abs", "rel"}:
        (kind, bound), = value.items()
        return ArtifactPolicy(TOLERANCE, **{kind: _bound(bound, f"{where}: {kind}")})
    if isinstance(value, dict) and set(value) == {PREDICTIONS}:
        return _predictions(value[PREDICTIONS], where)
    raise PolicyError(f"{where} is {value!r}, which is not a policy")


def _predictions(value: Any, where: str) -> ArtifactPolicy:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: predictions takes a mapping of {', '.join(PREDICTION_KEYS)}")
    unknown = sorted(set(map(str, value)) - set(PREDICTION_KEYS))
    if unknown:
        raise PolicyError(f"{where}: predictions has no key {unknown[0]!r}; it takes "
                         f"{', '.join(PREDICTION_KEYS)}")
    names = {}
    for key in ("id", "predicted", "truth"):
        if key in value:
            if not isinstance(value[key], str) or not value[key]:
                raise PolicyError(f"{where}: predictions.{key} must name a column")
            names[key] = value[key]
    columns = PredictionColumns(**names)
    if columns.id == columns.predicted:
        raise PolicyError(f"{where}: the id and predicted columns are both {columns.id!r}")
    churn = _bound(value.get("churn", 0.0), f"{where}: predictions.churn")
    if churn > 1:
        raise PolicyError(f"{where}: predictions.churn is a share of examples, at most 1")
    value_bound = value.get("abs")
    return ArtifactPolicy(PREDICTIONS, columns=columns, churn=churn,
                          abs=None if value_bound is None
                          else _bound(value_bound, f"{where}: predictions.abs"))


def _bound(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise PolicyError(f"{where} must be a number of at least 0, not {value!r}")
    return float(value)

