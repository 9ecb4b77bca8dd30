"""The knowledge base of known causes of nondeterminism in ML training, declared as data.

One `KnownCause` per cause (causes.py): what it looks like in a run's manifest or in a diff, the
fix, and where the fix is documented. reprun's causes cite the entry they come from by its id,
and docs/causes.md is generated from the table (`python -m orchestrator.knowledge`).
"""
from __future__ import annotations

from typing import Any

from orchestrator.knowledge.causes import CAUSES, KnownCause

_BY_ID = {cause.id: cause for cause in CAUSES}


def known_cause(cause_id: str) -> KnownCause:
    return _BY_ID[cause_id]


def shown_by(distributions: dict[str, str]) -> list[KnownCause]:
    """The entries whose library the manifest's Python distributions show."""
    names = {name.lower().replace("_", "-") for name in distributions}
    return [c for c in CAUSES if c.libraries and names & set(c.libraries)]


_UNREAD = object()
_TESTS = {"==": lambda fact, value: fact == value,
          ">": lambda fact, value: isinstance(fact, (int, float)) and fact > value}


def manifest_fact(manifest: Any, path: str) -> Any:
    """The fact at a dotted path of a manifest (EnvironmentManifest or its dict); _UNREAD when
    the manifest does not hold it (an older record, a framework the probe could not import)."""
    value = manifest
    for part in path.split("."):
        value = (value.get(part, _UNREAD) if isinstance(value, dict)
                 else getattr(value, part, _UNREAD))
        if value is _UNREAD:
            return _UNREAD
    return value


def live_in(cause: KnownCause, manifest: Any) -> bool | None:
    """Whether the manifest shows the cause live: None when it has no such fact to say."""
    if cause.shows is None or manifest is None:
        return None
    path, test, value = cause.shows
    fact = manifest_fact(manifest, path)
    return None if fact is _UNREAD else _TESTS[test](fact, value)


def shown_in(manifest: Any) -> list[KnownCause]:
    """The entries whose manifest fact says they are live in this run."""
    return [c for c in CAUSES if live_in(c, manifest)]


def for_intervention(name: str, distributions: dict[str, str],
                     manifest: Any = None) -> list[KnownCause]:
    """The entries an intervention's success points to: the general one first, then those of
    the libraries the job's image carries; those the manifest shows live come first among them.
    None is left out for a fact that says not live: the probe reads the settings before the job
    starts, and the job may change them (`torch.set_num_threads(8)`)."""
    names = {n.lower().replace("_", "-") for n in distributions}
    found = [c for c in CAUSES if name in c.interventions
             and (not c.libraries or names & set(c.libraries))]
    return sorted(found, key=lambda c: c.libraries != () and not live_in(c, manifest))


def for_factor(name: str, distributions: dict[str, str], manifest: Any = None) -> list[KnownCause]:
    """The entries a --vary factor that changed the result points to, ordered as for an
    intervention: the general ones and those the manifest shows live first."""
    names = {n.lower().replace("_", "-") for n in distributions}
    found = [c for c in CAUSES if name in c.factors
             and (not c.libraries or names & set(c.libraries))]
    return sorted(found, key=lambda c: c.libraries != () and not live_in(c, manifest))


def cited(cause: KnownCause, manifest: Any = None) -> str:
    shown = ""
    if live_in(cause, manifest):
        path, test, value = cause.shows
        shown = f" (the manifest shows {path} = {manifest_fact(manifest, path)!r})"
    return f"known cause {cause.id}{shown}: {cause.fix} ({cause.source})"
