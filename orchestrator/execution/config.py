"""Which backend a command uses, and the project's `reprun.toml`.

Which one: `--backend`, else REPRUN_BACKEND, else `backend` in the config file, else local.
The config file is `reprun.toml` in the current folder (REPRUN_CONFIG names another):

    backend = "swarm"
    [swarm]
    registry = "registry.example.org:5000"   # where images built here are pushed for the nodes
    artifacts = "/mnt/shared/reprun"          # on every node; each run writes <artifacts>/<run id>
    schedule_timeout = "10m"                  # how long a job may wait for a node
    constraints = ["node.labels.reprun == true"]
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from orchestrator.errors import UsageError
from orchestrator.spec.units import parse_duration

CONFIG_FILE = "reprun.toml"
BACKEND_NAMES = ("local", "swarm")


@dataclass(frozen=True)
class SwarmSettings:
    registry: str | None = None          # where images built here are pushed for every node
    artifacts: Path | None = None        # shared storage; None: the run's folder in the store
    schedule_timeout_s: float = 600.0    # how long a job may wait for a node
    constraints: tuple[str, ...] = ()    # placement constraints, as `docker service create`

    @classmethod
    def from_config(cls, table: Mapping[str, Any], source: Path | None = None) -> "SwarmSettings":
        where = f"{source}: [swarm]" if source else "[swarm]"
        known = {"registry", "artifacts", "schedule_timeout", "constraints"}
        unknown = sorted(set(table) - known)
        if unknown:
            raise UsageError(f"{where}: unknown setting {', '.join(unknown)}; the settings are "
                             f"{', '.join(sorted(known))}.")
        registry = table.get("registry")
        if registry is not None and (not isinstance(registry, str) or "/" in registry.strip("/")
                                     or not registry.strip()):
            raise UsageError(f"{where}: registry must be a host[:port], such as "
                             "registry.example.org:5000.")
        artifacts = table.get("artifacts")
        if artifacts is not None:
            if not isinstance(artifacts, str) or not artifacts:
                raise UsageError(f"{where}: artifacts must be a path on shared storage.")
            artifacts = Path(artifacts)
            if not artifacts.is_absolute():
                artifacts = ((source.parent if source else Path.cwd()) / artifacts)
            artifacts = artifacts.absolute()
        try:
            schedule = parse_duration(table.get("schedule_timeout", cls.schedule_timeout_s))
        except ValueError as exc:
            raise UsageError(f"{where}: schedule_timeout: {exc}.") from None
        constraints = table.get("constraints", [])
        if not isinstance(constraints, list) or not all(isinstance(c, str) for c in constraints):
            raise UsageError(f"{where}: constraints must be a list of strings such as "
                             "\"node.labels.reprun == true\".")
        return cls(registry=registry.strip("/") if registry else None, artifacts=artifacts,
                   schedule_timeout_s=schedule, constraints=tuple(constraints))


@dataclass(frozen=True)
class Config:
    backend: str = "local"
    swarm: SwarmSettings | None = None     # None: every default
    source: Path | None = None


def config_path() -> Path:
    return Path(os.environ.get("REPRUN_CONFIG") or CONFIG_FILE)


def load_config(path: Path | None = None) -> Config:
    """The project's config file; an absent one means every default. Mistakes are exit 2."""
    path = path or config_path()
    if not path.is_file():
        if os.environ.get("REPRUN_CONFIG"):
            raise UsageError(f"REPRUN_CONFIG names {path}, which is not a file.")
        return Config()
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot be read ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML ({exc}).") from None
    unknown = sorted(set(document) - {"backend", "swarm"})
    if unknown:
        raise UsageError(f"{path}: unknown setting {', '.join(unknown)}; the settings are "
                         "`backend` and the [swarm] table.")
    backend = document.get("backend", "local")
    _check_backend_name(backend, f"{path}: backend")
    swarm = document.get("swarm", {})
    if not isinstance(swarm, dict):
        raise UsageError(f"{path}: [swarm] must be a table of settings.")
    return Config(backend=backend, source=path.absolute(),
                  swarm=SwarmSettings.from_config(swarm, path.absolute()))


def _check_backend_name(name: Any, where: str) -> None:
    if name not in BACKEND_NAMES:
        raise UsageError(f"{where} is {name!r}; choose one of {', '.join(BACKEND_NAMES)}.")


def chosen_backend(option: str | None, config: Config) -> str:
    """--backend (or REPRUN_BACKEND, which the command line reads into it), else the file's."""
    name = option or config.backend
    # The command line reads REPRUN_BACKEND into --backend: name what the user actually set.
    from_environment = option is not None and os.environ.get("REPRUN_BACKEND") == option
    _check_backend_name(name, "REPRUN_BACKEND" if from_environment else "--backend")
    return name
