"""The environment manifest: facts read inside the training container, just before the job.

Each fact source is a small declared probe: a POSIX sh section that prints a raw fact (the
template execution/templates/probe-NAME.sh), and a parser that turns it into manifest fields.
The sections are part of the container's one entrypoint (execution/entrypoint.py), which runs
them before `exec`ing the job, so the facts are those the job saw. A probe whose
command fails or whose output cannot be parsed marks its fact missing; it never fails the run.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
import secrets as _secrets
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from orchestrator.records import EnvironmentManifest
from orchestrator.execution.entrypoint import entrypoint_script
from orchestrator.secrets import REDACTED, redact_env  # noqa: F401 (REDACTED: re-exported)


@dataclass(frozen=True)
class Probe:
    name: str                                   # its section: templates/probe-NAME.sh
    parse: Callable[[str], dict[str, Any]]      # raw text -> EnvironmentManifest fields


def _key_values(text: str, sep: str = "=") -> dict[str, str]:
    pairs = (line.split(sep, 1) for line in text.splitlines() if sep in line)
    return {k.strip(): v.strip().strip('"') for k, v in pairs}


def parse_os_release(text: str) -> dict[str, Any]:
    release = _key_values(text)
    wanted = ("ID", "VERSION_ID", "VERSION_CODENAME", "PRETTY_NAME")
    return {"os": {k.lower(): release[k] for k in wanted if k in release}}


def parse_dpkg(text: str) -> dict[str, Any]:
    packages, name, version, installed = {}, None, None, False
    # A stanza ends where the next begins (the probe keeps only three fields, no blank lines).
    for line in text.splitlines() + ["Package:"]:
        if line.startswith("Package:"):
            if name and version and installed:
                packages[name] = version
            name, version, installed = line.split(":", 1)[1].strip(), None, False
        elif line.startswith("Version:"):
            version = line.split(":", 1)[1].strip()
        elif line.startswith("Status:"):
            installed = line.rstrip().endswith(" installed")
    return {"os_packages": packages, "package_manager": "dpkg"} if packages else {}


def parse_apk(text: str) -> dict[str, Any]:
    packages, name = {}, None
    for line in text.splitlines():
        if line.startswith("P:"):
            name = line[2:]
        elif line.startswith("V:") and name:
            packages[name] = line[2:]
    return {"os_packages": packages, "package_manager": "apk"} if packages else {}


def parse_rpm(text: str) -> dict[str, Any]:
    pairs = (line.split(" ", 1) for line in text.splitlines() if " " in line)
    packages = {name: version for name, version in pairs}
    return {"os_packages": packages, "package_manager": "rpm"} if packages else {}


def parse_kernel(text: str) -> dict[str, Any]:
    return {"kernel": text.strip()} if text.strip() else {}


def parse_cpuinfo(text: str) -> dict[str, Any]:
    first = _key_values(text.split("\n\n", 1)[0], sep=":")
    cpu: dict[str, Any] = {}
    if "model name" in first:
        cpu["model"] = first["model name"]
    if "flags" in first:
        cpu["flags"] = sorted(first["flags"].split())
    return {"cpu": cpu} if cpu else {}


def parse_nproc(text: str) -> dict[str, Any]:
    return {"cpu": {"count": int(text.strip())}}


def parse_cgroup(text: str) -> dict[str, Any]:
    """cgroup v2 (cpu.max, memory.max, pids.max) or v1 (quota/period, limit_in_bytes)."""
    raw = _key_values(text)
    limits: dict[str, Any] = {}
    if raw.get("cpu.max") and raw["cpu.max"].split()[0] != "max":
        quota, period = raw["cpu.max"].split()
        limits["cpus"] = round(int(quota) / int(period), 3)
    elif raw.get("cfs_quota_us", "-1").lstrip("-").isdigit() and int(raw.get("cfs_quota_us", -1)) > 0:
        limits["cpus"] = round(int(raw["cfs_quota_us"]) / int(raw.get("cfs_period_us", 100000)), 3)
    memory = raw.get("memory.max") or raw.get("memory.limit_in_bytes")
    if memory and memory.isdigit() and int(memory) < 2**62:
        limits["memory_bytes"] = int(memory)
    pids = raw.get("pids.max")
    if pids and pids.isdigit():
        limits["pids"] = int(pids)
    fields: dict[str, Any] = {"limits": limits}
    if raw.get("cpuset"):
        # Which CPUs the run was placed on: a fact of where it ran, the count is the pin.
        fields["cpu"] = {"cpuset": raw["cpuset"]}
    return fields


_ID = re.compile(r"uid=(?P<uid>\d+)(?:\((?P<name>[^)]*)\))? gid=(?P<gid>\d+)")


def parse_identity(text: str) -> dict[str, Any]:
    """`id`'s first line (uid=N(name) gid=N(group) ...), then umask= and hostname= lines."""
    ids = _ID.search(text)
    raw = _key_values(text.split("\n", 1)[1] if "\n" in text else "")
    user = {"uid": int(ids["uid"]), "gid": int(ids["gid"])}
    if ids["name"]:
        user["name"] = ids["name"]
    fields: dict[str, Any] = {"user": user}
    if raw.get("umask"):
        fields["locale"] = {"umask": raw["umask"]}
    if raw.get("hostname"):
        fields["hostname"] = raw["hostname"]
    return fields


def parse_env(text: str) -> dict[str, Any]:
    env = dict(item.split("=", 1) for item in text.split("\0") if "=" in item)
    locale = {k: env[k] for k in ("LANG", "LC_ALL", "TZ") if k in env}
    return {"env": redact_env(env), "locale": locale}


_CUDA = re.compile(r"CUDA Version:\s*([0-9][0-9.]*)")


def parse_gpu(text: str) -> dict[str, Any]:
    """`nvidia-smi --query-gpu=... --format=csv` (a header, one line per GPU), then the banner
    line with the CUDA version the driver supports."""
    lines = text.strip().splitlines()
    rows = list(csv.reader([line for line in lines if not line.startswith("|")],
                           skipinitialspace=True))
    if not rows:
        return {}
    # "memory.total [MiB]": the unit goes with the name.
    header = [name.split(" [")[0].strip() for name in rows[0]]
    devices = []
    for row in rows[1:]:
        got = dict(zip(header, (value.strip() for value in row)))
        memory = got.get("memory.total", "").removesuffix(" MiB")
        devices.append({"index": int(got["index"]), "model": got["name"],
                        "memory_mib": int(memory) if memory.isdigit() else None,
                        "compute_mode": got.get("compute_mode"),
                        "ecc": got.get("ecc.mode.current", "").strip("[]") or None,
                        "driver": got.get("driver_version")})
    gpu: dict[str, Any] = {"count": len(devices), "devices": devices}
    drivers = {d["driver"] for d in devices}
    if len(drivers) == 1:          # one driver per machine: said once
        gpu["driver"] = drivers.pop()
        for device in devices:
            del device["driver"]
    cuda = _CUDA.search(text)
    if cuda:
        gpu["cuda"] = cuda.group(1)
    return {"gpu": gpu}


def parse_python(text: str) -> dict[str, Any]:
    facts = json.loads(text)
    fields: dict[str, Any] = {"python": facts["python"],
                              "python_distributions": facts.get("distributions", {}),
                              "blas": facts.get("blas", []),
                              "frameworks": facts.get("frameworks", {})}
    if facts.get("missing"):
        fields["missing"] = facts["missing"]
    return fields


PROBES: tuple[Probe, ...] = (
    Probe("os_release", parse_os_release),
    Probe("dpkg", parse_dpkg),
    Probe("apk", parse_apk),
    Probe("rpm", parse_rpm),
    Probe("kernel", parse_kernel),
    Probe("cpuinfo", parse_cpuinfo),
    Probe("nproc", parse_nproc),
    Probe("cgroup", parse_cgroup),
    Probe("identity", parse_identity),
    Probe("env", parse_env),
    Probe("gpu", parse_gpu),
    Probe("python", parse_python),
)
# Sources that only exist on some images: their absence is expected, not a missing fact.
_OPTIONAL = {"dpkg", "apk", "rpm"}
# Commands most containers lack: not found (127) is no missing fact, any other failure is.
_WHERE_INSTALLED = {"gpu"}
COMMAND_NOT_FOUND = 127
# Facts that belong to the image (and to the job's environment, which sets BLAS thread counts),
# not to the run: read once per image and configuration, then reused. They are the slow part of
# the probe (the Python probe imports numpy and scikit-learn).
IMAGE_BOUND_PROBES = frozenset({"os_release", "dpkg", "apk", "rpm", "python"})
IMAGE_BOUND_FIELDS = ("os", "os_packages", "package_manager", "python", "python_distributions",
                      "blas", "frameworks")
RUN_PROBES = tuple(p for p in PROBES if p.name not in IMAGE_BOUND_PROBES)


def image_facts_key(job, scope: str, secret_names=()) -> str:
    """What the image-bound facts depend on: the image, the job's environment, CPU limit and
    user, and the machine it runs on (`scope`, see Executor.facts_scope)."""
    env = {k: v for k, v in job.env.items() if k != "REPRUN_RUN_ID" and k not in secret_names}
    identity = json.dumps([scope, job.image_id, sorted(env.items()), job.nano_cpus, job.user])
    return hashlib.sha256(identity.encode()).hexdigest()


def image_facts(manifest: EnvironmentManifest) -> dict[str, Any] | None:
    """The image-bound part of a manifest, worth reusing only when every such probe succeeded."""
    if IMAGE_BOUND_PROBES & set(manifest.missing) or "container" in manifest.missing:
        return None
    return {name: getattr(manifest, name) for name in IMAGE_BOUND_FIELDS}


def wrapper_script(marker: str, probes: tuple[Probe, ...] = PROBES) -> str:
    """The container's entrypoint: every probe onto the start of its output, then the job.
    Sections are framed by a random marker so that nothing a probe prints can forge a section."""
    return entrypoint_script(marker, tuple(p.name for p in probes))


def new_marker() -> str:
    return "@@reprun-" + _secrets.token_hex(8)


def pyprobe_source() -> str:
    return resources.files(__package__).joinpath("pyprobe.py").read_text()


def write_probe(meta: Path, marker: str, probes: tuple[Probe, ...] = PROBES) -> None:
    """Put the entrypoint and the Python probe where the container mounts them (/reprun).

    Readable by all whatever the umask (077 is common on hardened hosts): the job's user is not
    the one who writes them.
    """
    for name, text in (("wrap.sh", wrapper_script(marker, probes)), ("pyprobe.py", pyprobe_source())):
        (meta / name).write_text(text)
        (meta / name).chmod(0o644)


# What is read of the probe's output at most: a manifest is some hundreds of kilobytes (dpkg's
# database, the Python distributions, /proc/cpuinfo of a big host); an image or a spec that makes
# a probe print without end must not take reprun's memory with it.
MAX_MANIFEST_BYTES = 8 << 20


class ManifestCapture:
    """Takes the manifest from the start of a run's stdout and passes the rest on to `sink`.

    The entrypoint prints every probe's section, then `MARKER end`, before it execs the job: what
    comes before that line is the probe's, what comes after is the job's. So the job can neither
    rewrite the manifest nor forge it (whatever it prints comes after the end line, even if it
    read the marker), and it never reaches the log. At most MAX_MANIFEST_BYTES are kept; the
    rest up to the end line is counted and dropped.
    """

    def __init__(self, marker: str, sink: Callable[[bytes, str], None],
                 limit: int = MAX_MANIFEST_BYTES):
        self._end = f"\n{marker} end\n".encode()
        self._sink, self.limit = sink, limit
        self._kept = bytearray()
        self._tail = b"\n"        # the stream's start counts as a line start
        self.seen = 0             # bytes of probe output, kept or not
        self.ended = False        # the end line came: the job started

    def feed(self, chunk: bytes, stream: str = "stdout") -> None:
        if self.ended or stream != "stdout":
            self._sink(chunk, stream)
            return
        window = self._tail + chunk
        found = window.find(self._end)
        if found < 0:
            self._keep(chunk)
            self._tail = window[-(len(self._end) - 1):]
            return
        cut = found + len(self._end) - len(self._tail)   # where the job's output starts
        self._keep(chunk[:cut])
        self.ended = True
        if chunk[cut:]:
            self._sink(chunk[cut:], stream)

    def _keep(self, data: bytes) -> None:
        self.seen += len(data)
        room = self.limit - len(self._kept)
        if room > 0:
            self._kept += data[:room]

    @property
    def cut(self) -> bool:
        return self.seen > self.limit

    @property
    def text(self) -> str | None:
        """The probe's output (without the end line); None: the container printed none."""
        if not self.seen:
            return None
        kept = bytes(self._kept)
        if self.ended and not self.cut:
            kept = kept[:len(kept) - len(self._end) + 1]
        return kept.decode("utf-8", "replace")


def split_sections(text: str, marker: str) -> dict[str, tuple[str, int | None]]:
    """Raw output per probe name, with the probe's exit status (None when it never finished)."""
    sections: dict[str, tuple[str, int | None]] = {}
    current, lines = None, []
    for line in text.split("\n"):
        if line.startswith(marker + " "):
            head = line[len(marker) + 1:].split(" ")
            if len(head) == 3 and head[1] == "exit" and head[0] == current:
                status = int(head[2]) if head[2].isdigit() else None
                sections[current] = ("\n".join(lines), status)
                current, lines = None, []
            else:
                current, lines = head[0], []
        elif current is not None:
            lines.append(line)
    if current is not None:
        sections[current] = ("\n".join(lines), None)
    return sections


def _merge(fields: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(fields.get(key), dict):
            fields[key] = {**fields[key], **value}
        else:
            fields[key] = value


def parse_manifest(text: str | None, marker: str, host: dict[str, Any],
                   probes: tuple[Probe, ...] = PROBES,
                   cached: dict[str, Any] | None = None,
                   cut_from: int | None = None) -> EnvironmentManifest:
    """`cached`: image-bound facts read by an earlier run, for probes left out of `probes`.
    `cut_from`: how many bytes the probe printed when only the first MAX_MANIFEST_BYTES were
    read (ManifestCapture)."""
    fields: dict[str, Any] = {"missing": {}, "host": host, **(cached or {})}
    if text is None:
        fields["missing"]["container"] = "the probe wrote no manifest (the job never started?)"
        return EnvironmentManifest(**fields)
    unfinished = "the probe did not finish"
    if cut_from is not None:
        fields["missing"]["manifest"] = (
            f"the probes printed {cut_from} bytes, over the {MAX_MANIFEST_BYTES} bytes reprun "
            "reads of them; the rest was cut")
        unfinished = "its output was cut at the manifest's size limit"
    sections = split_sections(text, marker)
    for probe in probes:
        raw, status = sections.get(probe.name, ("", None))
        if status != 0:
            if probe.name in _WHERE_INSTALLED and status == COMMAND_NOT_FOUND:
                continue
            if probe.name not in _OPTIONAL or (status is None and probe.name in sections):
                fields["missing"][probe.name] = (
                    unfinished if status is None
                    else f"the command failed in the image (exit {status})")
            continue
        try:
            _merge(fields, probe.parse(raw))
        except Exception as exc:  # a fact we cannot read must never fail the run
            fields["missing"][probe.name] = f"unreadable output ({type(exc).__name__}: {exc})"
    if "os_packages" not in fields:
        fields["missing"]["os_packages"] = "no dpkg, apk or rpm database in the image"
    return EnvironmentManifest(**fields)
