"""Where runs execute: one interface, several backends, one chosen per command or per project.

The interface is `Executor`: `run(job, on_output, on_event)` takes a resolved, hermetic
`engine.ContainerJob` and returns an `engine.ContainerOutcome` — exit status, reason, duration,
and, from a backend that shares no filesystem with reprun, the job's results as `Collected`.
Everything above it (runner, verify, check, rerun) is written against this interface alone.

Backends:
  local   the Docker engine reprun talks to (engine.LocalEngine); results are read from the
          run's folders in the store, which are bind mounted into the container
  swarm   a Docker Swarm, each run a `replicated-job` service (swarm.SwarmBackend); results
          come back through the service's logs, artifacts go to a configured shared location

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
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Callable, Protocol

from .errors import UsageError
from .outputs import OutputsError, parse_metrics
from .records import Artifact

if TYPE_CHECKING:  # the job and outcome types live with the local engine
    import docker

    from .engine import ContainerJob, ContainerOutcome, LogSink
    from .swarm import SwarmSettings

CONFIG_FILE = "reprun.toml"
BACKEND_NAMES = ("local", "swarm")

# Progress of a job in the backend's own words ("running on node n1", "retrying once: …").
EventSink = Callable[[str], None]


@dataclass(frozen=True)
class ToCollect:
    """What a backend hands back besides the exit status, and the pin it checks where the data
    is read. A backend that shares the store's folders with the container may ignore it: reprun
    then reads the run's folders itself."""
    outputs_dir: str                 # in the container
    metrics: str                     # the metrics file, relative to outputs_dir
    artifacts: tuple[str, ...]       # globs, relative to outputs_dir
    manifest: str                    # where the probe writes the environment manifest
    dataset_source: str              # the dataset's path on the host: the source of its mount
    dataset_sha256: str              # its pin: file hash, or tree hash of a directory


@dataclass(frozen=True)
class Collected:
    """A job's results as read where it ran, handed back without a shared filesystem."""
    manifest: str | None = None                      # the probe's raw text
    metrics: bytes | None = None                     # the metrics file's bytes
    metrics_problem: str | None = None               # why they could not be read
    artifacts: dict[str, Artifact] = field(default_factory=dict)   # hashed where written
    artifacts_problem: str | None = None
    host: dict[str, Any] = field(default_factory=dict)             # the machine it ran on

    def results(self, metrics_file: str) -> tuple[dict[str, float], dict[str, Artifact]]:
        """Metrics and artifact hashes, or OutputsError with the sentence a local run gives."""
        name = PurePosixPath(metrics_file).name
        if self.metrics_problem:
            raise OutputsError(self.metrics_problem)
        if self.metrics is None:
            raise OutputsError(f"the job wrote no metrics file ({name} is missing from its "
                               "outputs)")
        metrics = parse_metrics(self.metrics, name)
        if self.artifacts_problem:
            raise OutputsError(self.artifacts_problem)
        return metrics, dict(self.artifacts)


class Executor(Protocol):
    """Runs one resolved job; the rest of reprun does not know where."""

    @property
    def client(self) -> "docker.DockerClient":
        """The engine where images are resolved (pulled, built, loaded from archives)."""

    def run(self, job: "ContainerJob", on_output: "LogSink",
            on_event: EventSink | None = None) -> "ContainerOutcome":
        """Run the job to its end: output streamed to on_output as it comes, the outcome back.
        Leaves nothing running behind, also when interrupted (KeyboardInterrupt re-raised)."""

    def interrupt(self) -> None:
        """Stop every job under way (from another thread); each run ends `interrupted`."""

    def host_facts(self) -> dict[str, Any]:
        """Facts of where jobs run, for the record; a backend may refine them per run
        (`Collected.host`). `host_cpus` is the capacity parallel runs may share."""


@dataclass(frozen=True)
class Config:
    backend: str = "local"
    swarm: "SwarmSettings | None" = None     # None: every default
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
    from .swarm import SwarmSettings      # checked whichever backend is chosen: typos show
    return Config(backend=backend, source=path.absolute(),
                  swarm=SwarmSettings.from_config(swarm, path.absolute()))


def _check_backend_name(name: Any, where: str) -> None:
    if name not in BACKEND_NAMES:
        raise UsageError(f"{where} is {name!r}; choose one of {', '.join(BACKEND_NAMES)}.")


def chosen_backend(option: str | None, config: Config) -> str:
    """--backend (or REPRUN_BACKEND, which the command line reads into it), else the file's."""
    name = option or config.backend
    _check_backend_name(name, "--backend")
    return name


def open_backend(option: str | None = None, config: Config | None = None) -> Executor:
    """The executor a command uses; nothing is contacted until it is first used."""
    config = config if config is not None else load_config()
    name = chosen_backend(option, config)
    if name == "swarm":
        from .swarm import SwarmBackend
        return SwarmBackend(config.swarm)
    from .engine import LocalEngine
    return LocalEngine()
