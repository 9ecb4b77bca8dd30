"""Variations: facts that should not matter to a training result, changed on purpose.

`reprun verify SPEC --vary LIST` runs a control with the pinned defaults and a second run in
which each listed factor differs. A factor is a small pure function from one `ContainerJob` to
another that also says which value it chose (`VariationValue`); factors compose because each one
only touches its own part of the job. Random choices come from one seed, split per factor, so a
variation run can be repeated exactly (`--vary-seed`).

Some factors need the container's entrypoint to cooperate (umask, dataset listing order,
environment order): the job only carries a variable, and the container's entrypoint applies it
with the factor's hook (execution/templates/hook-*.sh, declared in execution/entrypoint.py)
before it `exec`s the job. A normal run sets none of those variables, so the hooks do nothing.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from orchestrator.execution.job import ContainerJob, Mount
from orchestrator.errors import UsageError
from orchestrator.execution.hermetic import (LABEL_VARIATIONS, META_MOUNT, THREAD_VARIABLES,
                                             thread_count)
from orchestrator.execution.interventions import (FAKETIME_LIBRARY, FAKETIME_TARGET,
                                                  without_aslr)

# Where the read-only dataset is mounted when the job sees a reordered copy at its usual place.
DATASET_SOURCE = "/reprun-dataset"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_PREVIEW = 4   # listing entries or variable names shown in a value

# POSIX TZ strings: they work without zoneinfo files in the image, so a varied time zone is
# never silently UTC. Offsets that are not whole hours catch more date arithmetic.
TIME_ZONES = ("NPT-5:45", "ACST-9:30", "NST3:30", "HST10", "CHAST-12:45")
# Real locales whose collation and case differ from C's (Turkish dotted and dotless i, Estonian
# z between s and t): the locale factor picks among those the image has (`locale -a`), and falls
# back to the two every C library has; another name would silently fall back to C.
REAL_LOCALES = ("tr_TR.UTF-8", "et_EE.UTF-8")
LOCALES = ("C", "POSIX")
# Each gives regular files another mode than the default 0022 does (0644): 0666, 0664, 0646;
# each keeps the outputs readable by reprun when it does not run as root.
UMASKS = ("0000", "0002", "0020")
# How far `time` moves the wall clock (libfaketime's relative offsets): far enough to cross a
# year, a month and a day boundary.
CLOCK_SHIFTS = ("+400d", "-400d", "+1000d", "+3653d")


@dataclass(frozen=True)
class VariationValue:
    """The value a factor had in the control run and the one it chose for the varied run,
    each phrased to follow "at": "1 CPU", "TZ=UTC", "hostname reprun"."""
    control: str
    varied: str


@dataclass(frozen=True)
class HostContext:
    """What decides whether a factor can be varied on this engine, for this spec."""
    host_cpus: int | None
    dataset_path: Path | None       # None: the job has no dataset
    dataset_kind: str               # "file" or "tree"
    dataset_bytes: int
    dataset_files: int
    memory_bytes: int
    image_locales: tuple[str, ...] = ()     # of REAL_LOCALES, those the image has


Vary = Callable[[ContainerJob, random.Random], "tuple[ContainerJob, VariationValue]"]


@dataclass(frozen=True)
class Factor:
    name: str
    label: str                                        # "the CPU count": "result depends on ..."
    vary: Vary | None                                 # None: cannot be varied honestly at all
    unsupported: Callable[[HostContext], str | None]  # why not here, or None


def _always(context: HostContext) -> str | None:
    return None


def _env(job: ContainerJob, **changes: str) -> ContainerJob:
    return dataclasses.replace(job, env={**job.env, **changes})


# --- the factors ------------------------------------------------------------------------------

def _cpus_text(cpus: float) -> str:
    return f"{cpus:g} CPU" + ("" if cpus == 1 else "s")


def vary_cpus(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    before = job.nano_cpus / 1e9
    after = 1.0 if before >= 2 else 2.0
    threads = str(thread_count(after))
    varied = dataclasses.replace(job, nano_cpus=int(after * 1e9),
                                 env={**job.env, **{v: threads for v in THREAD_VARIABLES}})
    return varied, VariationValue(_cpus_text(before), _cpus_text(after))


def _needs_two_cpus(context: HostContext) -> str | None:
    if context.host_cpus is None:
        return "the engine did not say how many CPUs the host has"
    if context.host_cpus < 2:
        return f"the host has {context.host_cpus} CPU; another CPU count needs at least 2"
    return None


def vary_hostname(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    name = f"host-{rng.randrange(16 ** 6):06x}"
    return (dataclasses.replace(job, hostname=name),
            VariationValue(f"hostname {job.hostname}", f"hostname {name}"))


def _choose_other(rng: random.Random, choices: Iterable[str], current: str | None) -> str:
    return rng.choice([c for c in choices if c != current])


def vary_tz(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    before = job.env.get("TZ")
    after = _choose_other(rng, TIME_ZONES, before)
    return _env(job, TZ=after), VariationValue(f"TZ={before or '(unset)'}", f"TZ={after}")


def vary_locale(job: ContainerJob, rng: random.Random,
                locales: tuple[str, ...] = ()) -> tuple[ContainerJob, VariationValue]:
    """`locales`: the real ones the image has (`image_locales`); without any, C or POSIX."""
    before = job.env.get("LC_ALL") or job.env.get("LANG")
    after = _choose_other(rng, locales or LOCALES, before)
    return (_env(job, LC_ALL=after, LANG=after),
            VariationValue(f"LC_ALL={before or '(unset)'}", f"LC_ALL={after}"))


def vary_umask(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    before = job.env.get("REPRUN_UMASK")
    after = _choose_other(rng, UMASKS, before or "0022")
    return (_env(job, REPRUN_UMASK=after),
            VariationValue(f"umask {before}" if before else "umask 0022 (the engine's default)",
                           f"umask {after}"))


def image_locales(listing: str) -> tuple[str, ...]:
    """Of REAL_LOCALES, those `locale -a` lists (it spells them tr_TR.utf8)."""
    listed = {line.strip().lower().replace("-", "") for line in listing.splitlines()}
    return tuple(name for name in REAL_LOCALES if name.lower().replace("-", "") in listed)


def vary_user(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    # No name in /etc/passwd for these ids: a job that needs one fails, which is worth knowing.
    uid, _, gid = job.user.partition(":")
    new_uid, new_gid = uid, gid
    while new_uid == uid:
        new_uid = str(rng.randrange(1000, 60000))
    while new_gid in (gid, new_uid):
        new_gid = str(rng.randrange(1000, 60000))
    after = f"{new_uid}:{new_gid}"
    return dataclasses.replace(job, user=after), VariationValue(f"user {job.user}", f"user {after}")


def vary_hash_seed(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    before = job.env.get("PYTHONHASHSEED")
    after = before
    while after == before:
        after = str(rng.randrange(1, 2 ** 32))
    return (_env(job, PYTHONHASHSEED=after),
            VariationValue(f"PYTHONHASHSEED={before or '(unset)'}", f"PYTHONHASHSEED={after}"))


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_PREVIEW])
    return shown + (", ..." if len(names) > _PREVIEW else "")


def first_listing(root: Path) -> tuple[str, list[str]] | None:
    """The first folder (top down) that lists two entries or more, in the order the file system
    lists them: that order is what the job sees through the read-only bind mount."""
    for folder, dirs, files in os.walk(root):
        entries = os.listdir(folder)
        if len(entries) >= 2:
            return os.path.relpath(folder, root), entries
    return None


def vary_file_order(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    # The dataset is the one read-only mount that is not reprun's own.
    dataset = next(m for m in job.mounts if m.read_only and m.target != META_MOUNT)
    uid, _, gid = job.user.partition(":")
    root = Path(dataset.source)
    tree = [(Path(folder), names) for folder, dirs, names in os.walk(root)]
    entries = sum(len(names) + 1 for _, names in tree)
    size = sum((folder / name).stat().st_size for folder, names in tree for name in names)
    # Room for every file rounded up to a page, plus slack for the folders.
    tmpfs_bytes = size + 4096 * entries + (1 << 20)
    mounts = tuple(Mount(m.source, DATASET_SOURCE, read_only=True) if m is dataset else m
                   for m in job.mounts)
    varied = dataclasses.replace(
        job, mounts=mounts,
        tmpfs={**job.tmpfs,
               dataset.target: f"rw,nosuid,nodev,noexec,size={tmpfs_bytes},mode=0755,"
                               f"uid={uid},gid={gid or uid}"},
        env={**job.env, "REPRUN_DATASET_SOURCE": DATASET_SOURCE,
             "REPRUN_DATASET_COPY": dataset.target})
    listed = first_listing(root)
    where, names = listed if listed else (".", [])
    prefix = "" if where == "." else f"{where}/: "
    return varied, VariationValue(f"listing order {prefix}{_listing(names)}",
                                  f"listing order {prefix}{_listing(names[::-1])}")


def _dataset_copyable(context: HostContext) -> str | None:
    if context.dataset_path is None:
        return "the job has no dataset: there is no listing order to vary"
    if context.dataset_kind != "tree":
        return "the dataset is a single file: there is no listing order to vary"
    if first_listing(context.dataset_path) is None:
        return "no folder of the dataset lists two entries: there is no order to vary"
    for folder, dirs, files in os.walk(context.dataset_path):
        if any("\n" in name for name in dirs + files):
            return "a file name in the dataset contains a newline, which the copy cannot carry"
    budget = context.memory_bytes // 2
    if context.dataset_bytes + 4096 * context.dataset_files > budget:
        return (f"the dataset ({context.dataset_bytes} bytes) does not fit in half the memory "
                f"limit ({budget} bytes); the reordered copy lives in memory")
    return None


def vary_env_order(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    # Each name gets a rank from the seed and the name alone, not a shuffle of whatever names
    # the job has: the factors varied before this one add or change variables, and the order
    # the plan shows must be the order every run with this factor gets, whichever others vary.
    salt = rng.getrandbits(64)
    names = list(job.env)
    order = sorted(names, key=lambda name: hashlib.sha256(f"{salt}/{name}".encode()).digest())
    if order == names:
        order.reverse()
    ordered = [n for n in order if _ENV_NAME.match(n)]
    env = {name: job.env[name] for name in order}
    env["REPRUN_ENV_ORDER"] = " ".join(ordered)
    return (dataclasses.replace(job, env=env),
            VariationValue("the variable order the entrypoint shell gives",
                           f"variable order {_listing(ordered)}"))


def vary_time(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    shift = rng.choice(CLOCK_SHIFTS)
    mounts = (*job.mounts, Mount(str(FAKETIME_LIBRARY), FAKETIME_TARGET, read_only=True))
    preload = " ".join(p for p in (FAKETIME_TARGET, job.env.get("LD_PRELOAD")) if p)
    # The monotonic clock stays real: timeouts and sleeps in the job still end.
    varied = dataclasses.replace(job, mounts=mounts, env={
        **job.env, "LD_PRELOAD": preload, "FAKETIME": shift,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_DONT_RESET": "1"})
    return varied, VariationValue("the host's clock", f"the clock shifted {shift[:-1]} days")


def _time_unsupported(context: HostContext) -> str | None:
    if not FAKETIME_LIBRARY.is_file():
        return (f"libfaketime is not installed on this host ({FAKETIME_LIBRARY}; Debian's "
                "package libfaketime), and a container reads the host kernel's wall clock")
    return None


def vary_aslr(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    return without_aslr(job), VariationValue("address randomization on",
                                             "address randomization off")


def vary_seed(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    # The seed reaches the job as REPRUN_SEED and as every command argument `{seed}` became.
    before = job.env.get("REPRUN_SEED", "")
    after = before
    while after == before:
        after = str(rng.randrange(1, 2 ** 31))
    command = tuple(after if arg == before else arg for arg in job.command)
    return (dataclasses.replace(job, command=command, env={**job.env, "REPRUN_SEED": after}),
            VariationValue(f"seed {before}", f"seed {after}"))


def vary_workdir(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    folder = f"/tmp/reprun-work-{rng.randrange(16 ** 6):06x}"
    return (_env(job, REPRUN_WORKDIR=folder),
            VariationValue("the image's working folder", f"working folder {folder}"))


def vary_home(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    before = job.env.get("HOME")
    after = f"/tmp/reprun-home-{rng.randrange(16 ** 6):06x}"
    return (_env(job, HOME=after, REPRUN_MAKE_HOME="1"),
            VariationValue(f"HOME={before or '(unset)'}", f"HOME={after}"))


def vary_path(job: ContainerJob, rng: random.Random) -> tuple[ContainerJob, VariationValue]:
    folder = f"/tmp/reprun-bin-{rng.randrange(16 ** 6):06x}"
    return (_env(job, REPRUN_PATH_FIRST=folder),
            VariationValue("the image's PATH", f"PATH with {folder} first"))


FACTORS: tuple[Factor, ...] = (
    Factor("cpus", "the CPU count", vary_cpus, _needs_two_cpus),
    Factor("hostname", "the hostname", vary_hostname, _always),
    Factor("tz", "the time zone", vary_tz, _always),
    Factor("locale", "the locale", vary_locale, _always),
    Factor("umask", "the umask", vary_umask, _always),
    Factor("user", "the user", vary_user, _always),
    Factor("hash-seed", "the Python hash seed", vary_hash_seed, _always),
    Factor("time", "the wall-clock time", vary_time, _time_unsupported),
    Factor("aslr", "address-space randomization", vary_aslr, _always),
    Factor("workdir", "the working folder", vary_workdir, _always),
    Factor("home", "HOME", vary_home, _always),
    Factor("path", "PATH", vary_path, _always),
    # Not a culprit like the others: the result should change with it (see culprit.py).
    Factor("seed", "the seed", vary_seed, _always),
    # After the factors that add variables or change the user: it reads both.
    Factor("file-order", "the dataset's listing order", vary_file_order, _dataset_copyable),
    Factor("env-order", "the order of the environment variables", vary_env_order, _always),
)
FACTOR_NAMES = tuple(f.name for f in FACTORS)
_BY_NAME = {f.name: f for f in FACTORS}


def factor(name: str) -> Factor:
    return _BY_NAME[name]


def parse_vary(text: str) -> tuple[str, ...]:
    """`all` or comma-separated factor names, in the registry's order."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    if not words:
        raise UsageError(f"--vary needs `all` or factor names: {', '.join(FACTOR_NAMES)}")
    if "all" in words:
        return FACTOR_NAMES
    unknown = [w for w in words if w not in _BY_NAME]
    if unknown:
        raise UsageError(f"unknown factor {', '.join(map(repr, unknown))} in --vary; use `all` "
                         f"or some of: {', '.join(FACTOR_NAMES)}")
    return tuple(name for name in FACTOR_NAMES if name in words)


def new_seed() -> int:
    return secrets.randbelow(2 ** 31)


def factor_rng(seed: int, name: str) -> random.Random:
    # One stream per factor: adding or dropping a factor never changes another's choice.
    return random.Random(f"{seed}/{name}")


# --- a plan: what is varied, to what, and what is skipped --------------------------------------

@dataclass(frozen=True)
class Variation:
    factor: str
    label: str
    value: VariationValue


@dataclass(frozen=True)
class Skipped:
    factor: str
    reason: str


@dataclass(frozen=True)
class VariationPlan:
    seed: int
    requested: tuple[str, ...]
    variations: tuple[Variation, ...]
    skipped: tuple[Skipped, ...]
    locales: tuple[str, ...] = ()      # the real locales the image has, for `locale`

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.factor for v in self.variations)

    def variation(self, name: str) -> Variation:
        return next(v for v in self.variations if v.factor == name)

    def transform(self, names: Iterable[str]) -> Callable[[ContainerJob], ContainerJob]:
        """The job with exactly `names` varied (all others at their control value), labelled
        with what was varied so that the run record keeps it."""
        chosen = set(names)
        unknown = chosen - set(self.names)
        if unknown:
            raise ValueError(f"not part of this plan: {sorted(unknown)}")

        def apply(job: ContainerJob) -> ContainerJob:
            return vary_job(job, [n for n in self.names if n in chosen], self.seed, self.locales)
        return apply


def _vary(name: str, locales: tuple[str, ...]) -> Vary:
    return (lambda job, rng: vary_locale(job, rng, locales)) if name == "locale" \
        else factor(name).vary


def vary_job(job: ContainerJob, names: Iterable[str], seed: int,
             locales: tuple[str, ...] = ()) -> ContainerJob:
    varied: dict[str, str] = {}
    for name in names:
        job, value = _vary(name, locales)(job, factor_rng(seed, name))
        varied[name] = value.varied
    recorded: dict = {"seed": seed, "varied": varied}
    if "locale" in varied and locales:
        recorded["locales"] = list(locales)     # what the choice was made among, for a replay
    label = json.dumps(recorded, sort_keys=True)
    return dataclasses.replace(job, labels={**job.labels, LABEL_VARIATIONS: label})


def plan_variations(names: Iterable[str], seed: int, context: HostContext,
                    preview: ContainerJob) -> VariationPlan:
    """Which of `names` can be varied here and to what; the values come from applying each
    factor to `preview`, a job built exactly as the runs' jobs are."""
    requested = tuple(names)
    variations, skipped = [], []
    for name in requested:
        f = factor(name)
        reason = f.unsupported(context)
        if reason is not None or f.vary is None:
            skipped.append(Skipped(name, reason or "not supported"))
            continue
        _, value = _vary(name, context.image_locales)(preview, factor_rng(seed, name))
        variations.append(Variation(name, f.label, value))
    return VariationPlan(seed=seed, requested=requested, variations=tuple(variations),
                         skipped=tuple(skipped), locales=context.image_locales)


# --- replaying a recorded variation (`reprun rerun` of a --vary run) -----------------------------

def replay_transform(recorded: dict | None) -> tuple[Callable[[ContainerJob], ContainerJob] | None,
                                                    list[str]]:
    """The transform that gives a rerun every variation its record shows, with the values it
    had (each factor draws from the recorded seed), and the factors it cannot replay."""
    if not recorded or not recorded.get("varied"):
        return None, []
    seed, varied = recorded.get("seed"), dict(recorded["varied"])
    locales = tuple(name for name in recorded.get("locales") or () if name in REAL_LOCALES)
    known = [name for name in FACTOR_NAMES if name in varied]
    unknown = sorted(set(varied) - set(known))
    if not isinstance(seed, int):
        return None, sorted(varied)

    def apply(job: ContainerJob) -> ContainerJob:
        return vary_job(job, known, seed, locales)
    return apply, unknown
