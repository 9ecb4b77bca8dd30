"""The one entrypoint of every run's container, rendered from the shell templates beside it.

All the shell reprun runs in a container lives in execution/templates/ as files that shellcheck
reads (tests/test_entrypoint.py): the entrypoint (entrypoint.sh), one section per environment
probe (probe-NAME.sh, framed by probe-frame.sh), the variation hooks (hook-NAME.sh) and the
Swarm hand-back wrapper (handback*.sh, see execution/handback.py). Each ": @SLOT@" line of a
template is where its parts go. Python only fills in values; it assembles no shell of its own.

A new probe is a template `probe-NAME.sh` and a `Probe(NAME, parser)` in manifest/probes.py.

A hook is declared here by its name and the stage it acts at: a factor that needs the
entrypoint's help adds a template `hook-NAME.sh` and one `Hook` line to HOOKS. A normal run
sets none of the hooks' variables, so the hooks do nothing there.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

SETUP = "setup"              # before the probes: the manifest records what the job will see
BEFORE_EXEC = "before-exec"  # after the probes, just before the job is exec'd
STAGES = (SETUP, BEFORE_EXEC)


@dataclass(frozen=True)
class Hook:
    name: str       # templates/hook-NAME.sh
    stage: str      # SETUP or BEFORE_EXEC

    @property
    def template(self) -> str:
        return f"hook-{self.name}.sh"


# In the order they act. Each belongs to a variation factor (variations/factors.py).
HOOKS: tuple[Hook, ...] = (
    Hook("umask", SETUP),
    Hook("home", SETUP),
    Hook("path", SETUP),
    Hook("workdir", SETUP),
    Hook("dataset-copy", SETUP),
    Hook("env-order", BEFORE_EXEC),
    Hook("no-aslr", BEFORE_EXEC),      # after env-order: setarch starts `env -i …`
)


@cache
def template(name: str) -> str:
    """A template's text, as shipped in the package."""
    return resources.files(__package__).joinpath("templates", name).read_text()


def without_comments(text: str) -> str:
    """The template without its comment lines: they would be repeated in every probe's section,
    and the Swarm hand-back ships the script inside the service spec, whose size is capped.
    Shellcheck directives stay, so the rendered script is checked as its parts are."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.lstrip().startswith("#") or line.startswith("#!")
                   or line.lstrip().startswith("# shellcheck"))


def template_names() -> tuple[str, ...]:
    folder = resources.files(__package__).joinpath("templates")
    return tuple(sorted(entry.name for entry in folder.iterdir() if entry.name.endswith(".sh")))


def code(name: str) -> str:
    """A template as it goes into a container: without its comments."""
    return without_comments(template(name))


def _fill(text: str, slot: str, parts: list[str]) -> str:
    line = f": @{slot}@\n"
    if line not in text:
        raise ValueError(f"the template has no {slot} slot")
    return text.replace(line, "".join(part if part.endswith("\n") else part + "\n"
                                      for part in parts))


def probe_section(name: str) -> str:
    """One probe's framed section: templates/probe-NAME.sh inside probe-frame.sh."""
    return _fill(code("probe-frame.sh").replace("@NAME@", name), "PROBE",
                 [code(f"probe-{name}.sh")])


def entrypoint_script(marker: str, probe_names: tuple[str, ...],
                      hooks: tuple[Hook, ...] = HOOKS) -> str:
    """The container's entrypoint: hooks, the named probes into the manifest, then the job."""
    if "'" in marker:
        raise ValueError("a marker is a plain word")
    text = code("entrypoint.sh").replace("@MARKER@", marker)
    for stage, slot in ((SETUP, "SETUP_HOOKS"), (BEFORE_EXEC, "BEFORE_EXEC_HOOKS")):
        text = _fill(text, slot, [code(h.template) for h in hooks if h.stage == stage])
    return _fill(text, "PROBES", [probe_section(name) for name in probe_names])
