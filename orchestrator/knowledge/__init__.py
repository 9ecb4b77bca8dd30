"""The knowledge base of known causes of nondeterminism in ML training, declared as data.

One `KnownCause` per cause (causes.py): what it looks like in a run's manifest or in a diff, the
fix, and where the fix is documented. reprun's causes cite the entry they come from by its id,
and docs/causes.md is generated from the table (`python -m orchestrator.knowledge`).
"""
from __future__ import annotations

from orchestrator.knowledge.causes import CAUSES, KnownCause

_BY_ID = {cause.id: cause for cause in CAUSES}


def known_cause(cause_id: str) -> KnownCause:
    return _BY_ID[cause_id]


def shown_by(distributions: dict[str, str]) -> list[KnownCause]:
    """The entries whose library the manifest's Python distributions show."""
    names = {name.lower().replace("_", "-") for name in distributions}
    return [c for c in CAUSES if c.libraries and names & set(c.libraries)]


def for_intervention(name: str, distributions: dict[str, str]) -> list[KnownCause]:
    """The entries an intervention's success points to: the general one first, then those of
    the libraries the job's image carries."""
    names = {n.lower().replace("_", "-") for n in distributions}
    return [c for c in CAUSES if name in c.interventions
            and (not c.libraries or names & set(c.libraries))]


def cited(cause: KnownCause) -> str:
    return f"known cause {cause.id}: {cause.fix} ({cause.source})"
