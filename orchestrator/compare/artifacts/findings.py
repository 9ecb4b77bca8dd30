"""What comparing the contents of two artifacts found: the value every comparator returns."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Content statuses of one artifact (beside the row statuses ignored / missing-a / missing-b).
SAME = "identical"
EQUIVALENT = "equivalent"
DIFFERS = "differs"

# Status of one part (array, tensor, parameter).
PART_SAME = "identical"
PART_WITHIN = "within"
PART_BEYOND = "beyond"
PART_SHAPE = "shape"          # shapes or dtypes differ: no element-wise figures
PART_MISSING_A = "missing-a"
PART_MISSING_B = "missing-b"
PART_UNREADABLE = "unreadable"

EXCERPT_LINES = 12            # lines of a readable difference kept in a report
EXCERPT_LINE_CHARS = 200
PARTS_KEPT = 50               # parts listed per artifact; the rest are counted


class CannotCompare(Exception):
    """This comparator cannot read these files; the artifact is compared bitwise instead."""


@dataclass(frozen=True)
class PartFigures:
    """One array, tensor or model parameter of an artifact, in both runs."""
    name: str
    status: str
    shape_a: str | None = None       # "3x4"; "scalar" for 0-d
    shape_b: str | None = None
    dtype_a: str | None = None
    dtype_b: str | None = None
    elements: int | None = None
    differing: int | None = None
    max_abs: float | None = None
    max_rel: float | None = None

    @property
    def share_differing(self) -> float | None:
        if self.elements is None or self.differing is None:
            return None
        return self.differing / self.elements if self.elements else 0.0


@dataclass(frozen=True)
class ContentFindings:
    kind: str                        # numpy, safetensors, json, yaml, csv, text, predictions,
                                     # pickle, torch, xgboost, bytes
    status: str                      # SAME | EQUIVALENT | DIFFERS
    detail: str                      # one sentence
    parts: tuple[PartFigures, ...] = ()
    excerpt: tuple[str, ...] = ()    # a bounded readable difference
    fallback: str | None = None      # why the artifact was compared bitwise instead
    figures: dict[str, Any] | None = None   # kind-specific numbers (prediction churn)


def excerpt(lines: list[str] | tuple[str, ...], more: int = 0) -> tuple[str, ...]:
    """At most EXCERPT_LINES lines of at most EXCERPT_LINE_CHARS characters, and how many were
    left out, so that a report stays readable whatever a job wrote."""
    kept = [_cut(line) for line in list(lines)[:EXCERPT_LINES]]
    left = len(lines) - len(kept) + more
    if left > 0:
        kept.append(f"… {left} more line{'s' if left != 1 else ''}")
    return tuple(kept)


def _cut(line: str) -> str:
    line = line.rstrip("\n").replace("\t", "    ")
    line = "".join(ch if ch.isprintable() else "\\x%02x" % ord(ch) if ord(ch) < 256 else "?"
                   for ch in line)
    return line if len(line) <= EXCERPT_LINE_CHARS else line[:EXCERPT_LINE_CHARS - 1] + "…"


def shape_text(shape: Any) -> str:
    shape = tuple(shape)
    return "x".join(str(n) for n in shape) if shape else "scalar"


def part_from_figures(name: str, found: dict, *, tolerant: bool) -> PartFigures:
    """A part from `figures.compare_arrays`' answer (computed here or inside an image)."""
    shapes = dict(shape_a=shape_text(found["shape_a"]), shape_b=shape_text(found["shape_b"]),
                  dtype_a=str(found["dtype_a"]), dtype_b=str(found["dtype_b"]))
    if "unreadable" in found:
        return PartFigures(name, PART_UNREADABLE, **shapes)
    if "elements" not in found:
        return PartFigures(name, PART_SHAPE, **shapes)
    differing, beyond = int(found["differing"]), int(found["beyond"])
    status = (PART_SAME if differing == 0 else PART_BEYOND if beyond or not tolerant
              else PART_WITHIN)
    return PartFigures(name, status, **shapes, elements=int(found["elements"]),
                       differing=differing, max_abs=float(found["max_abs"]),
                       max_rel=float(found["max_rel"]))


def verdict_of_parts(parts: list[PartFigures]) -> str:
    statuses = {p.status for p in parts}
    if statuses <= {PART_SAME}:
        return SAME
    if statuses <= {PART_SAME, PART_WITHIN}:
        return EQUIVALENT
    return DIFFERS


def parts_detail(parts: list[PartFigures], noun: str) -> str:
    """One sentence over the parts: how many differ and the largest difference."""
    differing = [p for p in parts if p.status != PART_SAME]
    if not differing:
        return f"all {len(parts)} {noun}s hold the same values"
    figured = [p for p in differing if p.max_abs is not None]
    sentence = f"{len(differing)} of {len(parts)} {noun}s differ"
    if figured:
        worst = max(figured, key=lambda p: p.max_abs)
        sentence += (f"; largest |Δ| {worst.max_abs:.6g} in {worst.name} "
                     f"({worst.differing:,} of {worst.elements:,} elements differ)")
    other = [p for p in differing if p.max_abs is None]
    if other:
        sentence += f"; {other[0].name}: {_why(other[0])}"
    return sentence


def _why(part: PartFigures) -> str:
    if part.status == PART_MISSING_A:
        return "only in run b"
    if part.status == PART_MISSING_B:
        return "only in run a"
    if part.status == PART_UNREADABLE:
        return f"no numeric values ({part.dtype_a})"
    return f"{part.shape_a} {part.dtype_a} vs {part.shape_b} {part.dtype_b}"
