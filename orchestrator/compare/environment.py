"""The environment section of a comparison: which manifest facts are compared, and how.

Each section is one declared line (`ENVIRONMENT_SECTIONS`): the manifest field it reads, how that
field becomes `{name: value}`, and how a cause names one of its facts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.compare.value import ABSENT, ADDED, CHANGED, REMOVED, EnvironmentRow, display_text
from orchestrator.records import EnvironmentManifest

# Environment variables that differ between any two containers by construction.
VOLATILE_ENV_VARIABLES = frozenset({"HOSTNAME", "REPRUN_RUN_ID"})

# Section name, the manifest field it reads, and how to turn that field into {name: value}.
# Declared once here so that a fact source is one line, not one function.
def _flat(mapping: Any) -> dict[str, Any]:
    return dict(mapping) if isinstance(mapping, dict) else {}


def _cpu_facts(cpu: Any) -> dict[str, Any]:
    # Clock speed is read live and wanders; it is not a fact of the machine's arithmetic.
    return {k: v for k, v in _flat(cpu).items()
            if k not in ("flags", "cpuset") and "mhz" not in k.lower() and "freq" not in k.lower()}


def _cpuset(cpu: Any) -> dict[str, Any]:
    # Which CPUs a run was pinned to differs between parallel runs by design; their count is
    # the fact that matters (`cpu` count), so the set is shown but never taken for a cause.
    cpuset = _flat(cpu).get("cpuset")
    return {} if cpuset is None else {"cpuset": cpuset}


def _cpu_flags(cpu: Any) -> dict[str, Any]:
    flags = _flat(cpu).get("flags") or []
    if isinstance(flags, str):
        flags = flags.split()
    return {flag: "present" for flag in flags}


def _gpu_facts(gpu: Any) -> dict[str, Any]:
    facts = {k: v for k, v in _flat(gpu).items() if k != "devices"}
    for device in _flat(gpu).get("devices") or []:
        if isinstance(device, dict):
            facts.update({f"gpu {device.get('index', '?')} {k}": v
                          for k, v in device.items() if k != "index"})
    return facts


def _blas_facts(libraries: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for lib in libraries or []:
        if not isinstance(lib, dict):
            continue
        label = f"{lib.get('internal_api', '?')} {lib.get('filepath', '?')}"
        for attr in ("version", "num_threads", "threading_layer", "architecture"):
            if attr in lib:
                facts[f"{label} {attr}"] = lib[attr]
    return facts


def _framework_facts(frameworks: Any) -> dict[str, Any]:
    """{"torch cudnn.benchmark": False, ...}: one fact per framework setting."""
    facts: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if "." in prefix or " " in prefix else f"{prefix} {key}",
                     inner)
        else:
            facts[prefix] = display_text(value) if isinstance(value, list) else value

    for name, settings in _flat(frameworks).items():
        walk(name, settings)
    return facts


def _host_facts(host: Any) -> dict[str, Any]:
    # Timestamps and durations differ on every run and say nothing about the engine; nor does
    # which earlier run the image's facts were read in (the facts themselves are compared).
    return {k: v for k, v in _flat(host).items()
            if not (k.endswith("_at") or "time" in k or "duration" in k
                    or k == "image_facts_from_run")}


def _env_facts(env: Any) -> dict[str, Any]:
    return {k: v for k, v in _flat(env).items() if k not in VOLATILE_ENV_VARIABLES}


def _scalar(name: str) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {} if value is None else {name: value}


@dataclass(frozen=True)
class _EnvironmentSection:
    section: str
    manifest_field: str
    facts: Callable[[Any], dict[str, Any]]
    label: str                       # how a cause names one fact of this section
    material: bool = True            # False: differs between any two containers, rarely a cause


ENVIRONMENT_SECTIONS = (
    _EnvironmentSection("python-distribution", "python_distributions", _flat,
                        "Python distribution"),
    _EnvironmentSection("blas", "blas", _blas_facts, "BLAS/OpenMP library"),
    _EnvironmentSection("framework", "frameworks", _framework_facts, "framework setting"),
    _EnvironmentSection("os-package", "os_packages", _flat, "OS package"),
    _EnvironmentSection("python", "python", _flat, "Python"),
    _EnvironmentSection("cpu", "cpu", _cpu_facts, "CPU"),
    _EnvironmentSection("cpu-flag", "cpu", _cpu_flags, "CPU flag"),
    _EnvironmentSection("cpuset", "cpu", _cpuset, "CPU set", material=False),
    _EnvironmentSection("gpu", "gpu", _gpu_facts, "GPU"),
    _EnvironmentSection("kernel", "kernel", _scalar("release"), "kernel"),
    _EnvironmentSection("os", "os", _flat, "OS release"),
    _EnvironmentSection("limits", "limits", _flat, "container limit"),
    _EnvironmentSection("engine", "host", _host_facts, "container engine"),
    _EnvironmentSection("env", "env", _env_facts, "environment variable"),
    _EnvironmentSection("locale", "locale", _flat, "locale setting"),
    _EnvironmentSection("user", "user", _flat, "user"),
    _EnvironmentSection("hostname", "hostname", _scalar("hostname"), "hostname",
                        material=False),
)
SECTION_BY_NAME = {s.section: s for s in ENVIRONMENT_SECTIONS}


def _absent_if_none(value: Any) -> Any:
    return ABSENT if value is None else value


def compare_environments(
    a: EnvironmentManifest, b: EnvironmentManifest, a_id: str = "a", b_id: str = "b",
) -> tuple[tuple[EnvironmentRow, ...], list[str]]:
    """Rows for every fact that was added, removed or changed; notes for facts not compared."""
    rows: list[EnvironmentRow] = []
    notes: list[str] = []
    for spec in ENVIRONMENT_SECTIONS:
        unread = [(run_id, manifest.missing[spec.manifest_field])
                  for run_id, manifest in ((a_id, a), (b_id, b))
                  if spec.manifest_field in (manifest.missing or {})]
        if unread:
            # A fact one side could not read would otherwise show as everything added/removed.
            if spec.section != "cpu-flag":
                why = "; ".join(f"run {run_id}: {reason}" for run_id, reason in unread)
                notes.append(f"{spec.manifest_field} not compared: could not be read ({why})")
            continue
        left = spec.facts(getattr(a, spec.manifest_field))
        right = spec.facts(getattr(b, spec.manifest_field))
        for name in sorted(set(left) | set(right), key=str):
            # A fact recorded as null (the engine did not say) is shown as absent, never "null".
            ta, tb = (display_text(_absent_if_none(side.get(name, ABSENT)))
                      for side in (left, right))
            if ta == tb:
                continue
            change = ADDED if ta is None else REMOVED if tb is None else CHANGED
            rows.append(EnvironmentRow(section=spec.section, name=str(name), a=ta, b=tb,
                                       change=change))
    return tuple(rows), notes


