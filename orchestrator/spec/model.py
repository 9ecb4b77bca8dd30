"""The run spec, version 1: one YAML file that pins a training job, read into frozen values.

The YAML is composed into nodes (never constructed into Python objects wholesale) so that every
problem can name FILE:LINE:COL. Each mapping of the format is a declared table of keys; one
function, `_scalar`, turns a node into a typed value. All problems in a document are collected and
raised together as one SpecError. The JSON Schema next to this module (spec-v1.schema.json)
describes the same format for editors and other tools; the tests keep the two in agreement.
"""
from __future__ import annotations

import datetime
import difflib
import errno
import hashlib
import math
import os
import posixpath
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from orchestrator.compare.tolerance import Tolerance
from orchestrator.errors import SpecError

SPEC_VERSION = 1
SCHEMA_FILE = Path(__file__).with_name("spec-v1.schema.json")
MAX_SPEC_BYTES = 1 << 20            # a spec is a page of YAML; anything bigger is not a spec
MAX_INT = 2**63 - 1                 # what SQLite and JSON consumers can store without loss
MAX_CPUS = 1024
MAX_TIMEOUT_S = 365 * 86400         # larger waits overflow timers in the engine client

# Patterns shared in meaning with spec-v1.schema.json (Python and ECMA-262 read them alike).
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
DATASET_SHA256_PATTERN = r"^(sha256:)?[0-9a-f]{64}$"
_HOST_PART = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
IMAGE_REF_PATTERN = rf"^{_REPOSITORY}(?::{_TAG})?@sha256:[0-9a-f]{{64}}$"
_UNPINNED_REF = rf"^{_REPOSITORY}(?::{_TAG})?$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PARAM_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESERVED_ENV_PREFIX = "REPRUN_"
CONTAINER_PATH_PATTERN = r"^/(?!(.*/)?\.\.(/|$)).+$"
RELATIVE_PATH_PATTERN = r"^(?!/)(?!(.*/)?\.\.(/|$)).+$"
USER_PATTERN = r"^[0-9]{1,10}:[0-9]{1,10}$"
SIZE_PATTERN = r"^(?=.*[1-9])[0-9]+[kmgtKMGT]?$"
DURATION_PATTERN = r"^(?=.*[1-9])[0-9]+(\.[0-9]+)?[smhd]?$"

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# `{{` and `}}` are literal braces; `{name}` is a placeholder; any other brace is a mistake.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


# --- the values other modules use -----------------------------------------------------------

@dataclass(frozen=True)
class ImageBuild:
    context: Path                   # absolute, resolved
    dockerfile: str = "Dockerfile"  # relative to the context
    args: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSpec:
    ref: str | None                 # name[:tag]@sha256:<64 hex>; the digest is mandatory
    build: ImageBuild | None        # exactly one of ref / build
    digest: str | None              # with build: the image ID the build must produce


@dataclass(frozen=True)
class DatasetSpec:
    path: Path                      # absolute, resolved
    sha256: str | None              # 64 hex; None only when loaded with require_pins=False
    mount: str = "/data"
    # A single file's name inside the mount: its own, unless a rerun found the pinned bytes
    # under another name, and the job still opens them by the name they were pinned with.
    file_name: str | None = None


@dataclass(frozen=True)
class OutputsSpec:
    dir: str = "/out"
    metrics: str = "metrics.json"
    artifacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class CompareSpec:
    metrics: dict[str, Tolerance]   # always contains "default"
    artifacts: str = "bitwise"      # or "ignore"

    def tolerance_for(self, metric: str) -> Tolerance:
        return self.metrics.get(metric) or self.metrics.get("default", Tolerance("exact"))


@dataclass(frozen=True)
class Resources:
    cpus: float = 1.0
    memory_bytes: int = 2 << 30
    timeout_s: float = 1800.0
    pids: int = 512


@dataclass(frozen=True)
class Hermetic:
    """Every default is the strict setting; the runner records any relaxation."""

    network: str = "none"           # "none" or "host"
    read_only_root: bool = True
    user: str = "65534:65534"
    tmp_size: str = "256m"


@dataclass(frozen=True)
class RunSpec:
    version: int
    name: str
    description: str
    image: ImageSpec
    dataset: DatasetSpec
    seed: int
    command: tuple[str, ...]        # raw, with placeholders
    params: dict[str, Any]
    env: dict[str, str]
    outputs: OutputsSpec
    compare: CompareSpec
    resources: Resources
    hermetic: Hermetic
    source: Path                    # the spec file, absolute
    source_sha256: str              # sha256 of the spec file's bytes
    # Variables whose values come from reprun's own environment when a run starts, never from
    # the spec file; their values never reach a record, a log kept by reprun or a report.
    secrets: tuple[str, ...] = ()

    def render_command(self, seed: int | None = None) -> list[str]:
        """The command with {seed} and {params.NAME} filled in; `{{`/`}}` become braces."""
        values = {"seed": str(self.seed if seed is None else seed)}
        values.update({f"params.{name}": _param_text(v) for name, v in self.params.items()})
        try:
            return [_substitute(arg, values) for arg in self.command]
        except (KeyError, ValueError) as exc:
            raise SpecError(f"spec {self.source} has a command that cannot be rendered: {exc}")


def load_spec(path: str | Path, *, require_pins: bool = True) -> RunSpec:
    """Read and check one spec file; raise SpecError listing every problem found."""
    label = str(path)
    data = read_spec_bytes(path)
    source = Path(path).resolve()       # read_spec_bytes resolved it already
    if len(data) > MAX_SPEC_BYTES:
        raise SpecError(f"spec {label} is invalid (1 problem)", details=[
            f"{label}:1:1: the file is larger than {MAX_SPEC_BYTES} bytes. "
            "A run spec is a short YAML file; point reprun at the spec, not at data."])
    reader = _Reader(label, source.parent, _repository_root(source.parent), require_pins)
    fields = _FAILED
    try:
        node = reader.compose(data)
        fields = reader.value(node, _read_document, _DOCUMENT) if node is not None else _FAILED
    except RecursionError:
        reader.report(_START, "the spec is nested too deeply to read", "Write a flat spec")
    if reader.problems:
        raise reader.error()
    return RunSpec(**fields, source=source, source_sha256=hashlib.sha256(data).hexdigest())


def read_spec_bytes(path: str | Path) -> bytes:
    """A spec file's bytes, at most one more than MAX_SPEC_BYTES; SpecError if it cannot be
    read (missing, a folder, no permission, a FIFO or device, which would block the read)."""
    label = str(path)
    try:
        source = Path(path).resolve()
        mode = os.stat(source).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):   # a folder: open() says so itself
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device)")
        with open(source, "rb") as handle:
            return handle.read(MAX_SPEC_BYTES + 1)
    except (OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise SpecError(f"cannot read spec {label}",
                        details=[f"{label}: {reason}. Check the path and its permissions."]) from None


def validate_specs(paths: Iterable[str | Path], *,
                   require_pins: bool = True) -> list[tuple[Path, SpecError | None]]:
    """Check each spec; the error (or None) for each path, in order. For `reprun validate`."""
    results: list[tuple[Path, SpecError | None]] = []
    for path in paths:
        try:
            load_spec(path, require_pins=require_pins)
            results.append((Path(path), None))
        except SpecError as exc:
            results.append((Path(path), exc))
    return results


def parse_size(text: str | int) -> int:
    """Bytes from "2g", "512m", "1024k" (binary units) or an int; ValueError unless positive."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text <= 0:
            raise ValueError(f"size {text} must be positive")
        return text
    if not isinstance(text, str) or not re.fullmatch(SIZE_PATTERN, text):
        raise ValueError(f"size {text!r} is not a positive size such as 2g, 512m or 1024k")
    unit = text[-1].lower() if text[-1].isalpha() else ""
    return int(text.rstrip("kmgtKMGT")) * _SIZE_UNITS[unit]


def parse_duration(text: str | int | float) -> float:
    """Seconds from "30m", "90s", "2h", "1d" or a number of seconds; ValueError unless positive."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not (math.isfinite(text) and text > 0):
            raise ValueError(f"duration {text} must be a positive number of seconds")
        return float(text)
    if not isinstance(text, str) or not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"duration {text!r} is not a positive duration such as 90s, 30m or 2h")
    unit = text[-1] if text[-1].isalpha() else ""
    return float(text.rstrip("smhd")) * _DURATION_UNITS[unit]


# --- reading nodes --------------------------------------------------------------------------

_DOCUMENT = "the spec"
_FAILED: Any = object()      # stands for a value whose problems are already reported
_START = yaml.Mark("", 0, 0, 0, None, None)
_STR_TAG = "tag:yaml.org,2002:str"
_NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class _Problem(Exception):
    """One thing wrong with a value: what is wrong, how to fix it, and where (if not the node)."""

    def __init__(self, what: str, how: str, mark: yaml.Mark | None = None):
        super().__init__(what)
        self.what, self.how, self.mark = what, how, mark


class _Reported(Exception):
    """A nested value was invalid and its problems are already recorded."""


@dataclass(frozen=True)
class _Key:
    read: Callable[["_Reader", yaml.Node, str], Any]
    required: bool = False
    example: str = ""               # shown when a required key is missing
    attr: str = ""                  # the dataclass field, when it differs from the key


@dataclass(frozen=True)
class _Type:
    name: str
    types: tuple[type, ...]
    how: str
    # Read 1e-3 as the number YAML 1.2 and every ML config means, not as the string YAML 1.1
    # (PyYAML) makes of an exponent without a dot and a sign. Not where the text itself is
    # passed on (command arguments): 1e-3 must not reach the job as 0.001.
    exponent_floats: bool = False


_STRING = _Type("a string", (str,), "Quote it if YAML reads it as a number, date or boolean")
_INTEGER = _Type("an integer", (int,), "Write a whole number without quotes")
_NUMBER = _Type("a number", (int, float), "Write a number without quotes", exponent_floats=True)
_BOOLEAN = _Type("true or false", (bool,), "Write true or false")
_ARGUMENT = _Type("a string or a number", (str, int, float), "Quote it")
_SCALAR = _Type("a string, number or boolean", (str, int, float, bool),
                "Write a single value, not a list or a mapping", exponent_floats=True)
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


class _SpecLoader(yaml.SafeLoader):
    """Composes nodes, refusing anchors and aliases: they allow exponential expansion."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _Problem(f"the spec uses a YAML alias (*{event.anchor})",
                           "Write the value out in full; anchors and aliases are not allowed",
                           event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise _Problem(f"the spec uses a YAML anchor (&{event.anchor})",
                           "Write the value out in full; anchors and aliases are not allowed",
                           event.start_mark)
        return super().compose_node(parent, index)


class _Reader:
    """Reads one document, collecting problems as FILE:LINE:COL sentences."""

    def __init__(self, label: str, spec_dir: Path, root: Path, require_pins: bool):
        self.label, self.spec_dir, self.root = label, spec_dir, root
        self.require_pins = require_pins
        self.problems: list[tuple[int, int, str]] = []

    def report(self, mark: yaml.Mark, what: str, how: str) -> None:
        line, column = mark.line + 1, mark.column + 1
        how = how if how.endswith(("?", ".")) else how + "."
        self.problems.append((line, column, f"{self.label}:{line}:{column}: {what}. {how}"))

    def error(self) -> SpecError:
        details = [text for _, _, text in sorted(self.problems, key=lambda p: p[:2])]
        count = f"{len(details)} problem" + ("" if len(details) == 1 else "s")
        return SpecError(f"spec {self.label} is invalid ({count})", details=details)

    def compose(self, data: bytes) -> yaml.Node | None:
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            self.report(_mark_at(data, exc.start), "the spec is not UTF-8 text",
                        "Save the file as UTF-8; a spec is YAML, not binary data")
            return None
        try:
            node = yaml.compose(text, Loader=_SpecLoader)
        except _Problem as problem:
            self.report(problem.mark or _START, problem.what, problem.how)
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark or _START
            what = "; ".join(part for part in (exc.context, exc.problem) if part)
            self.report(mark, f"the YAML is malformed ({what})",
                        "Fix the syntax here: check indentation, colons and quotes")
            return None
        except yaml.reader.ReaderError as exc:
            character = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.report(_mark_at(text, exc.position), "the spec contains a character YAML "
                        f"does not allow (U+{character:04X})", "Remove it; a spec is plain text")
            return None
        except yaml.YAMLError as exc:
            self.report(_START, f"the YAML is malformed ({exc})", "Fix the YAML syntax")
            return None
        if node is None:
            self.report(_START, "the spec is empty", "Start it with `version: 1`; see docs/spec.md")
        return node

    def value(self, node: yaml.Node, read: Callable[["_Reader", yaml.Node, str], Any],
              where: str) -> Any:
        """read(node), or _FAILED with the problem recorded against `where`."""
        try:
            return read(self, node, where)
        except _Problem as problem:
            self.report(problem.mark or node.start_mark, f"{where} {problem.what}", problem.how)
        except _Reported:
            pass
        return _FAILED

    def pairs(self, node: yaml.Node, where: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """The (key, key node, value node) entries of a mapping; bad and repeated keys reported."""
        if not isinstance(node, yaml.MappingNode):
            raise _Problem(f"must be a mapping, not {_describe(node)}",
                           "Write it as `key: value` entries")
        _check_tag(node, _MAP_TAG)
        first_seen: dict[str, int] = {}
        entries = []
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG):
                self.report(key_node.start_mark, f"{where} has a key that is not a string "
                            f"({_describe(key_node)})", "Quote the key")
            elif key_node.value in first_seen:
                self.report(key_node.start_mark, f"{where} has the key `{key_node.value}` twice "
                            f"(first on line {first_seen[key_node.value]})", "Keep only one")
            else:
                first_seen[key_node.value] = key_node.start_mark.line + 1
                entries.append((key_node.value, key_node, value_node))
        return entries

    def mapping(self, node: yaml.Node, keys: dict[str, _Key], where: str) -> dict[str, Any]:
        """Values of the keys present, by field name; _FAILED where invalid or missing."""
        values: dict[str, Any] = {}
        entries = self.pairs(node, where)
        for name, key_node, value_node in entries:
            if name not in keys:
                self.report(key_node.start_mark, f"{where} has an unknown key `{name}`",
                            _suggest(name, keys))
                continue
            path = name if where == _DOCUMENT else f"{where}.{name}"
            values[keys[name].attr or name] = self.value(value_node, keys[name].read, path)
        present = {name for name, _, _ in entries}
        for name, key in keys.items():
            if key.required and name not in present:
                self.report(node.start_mark, f"{where} is missing `{name}`",
                            f"Add it, for example `{key.example}`")
                values[key.attr or name] = _FAILED
        return values


def _complete(values: Any) -> Any:
    """Stop building a value whose parts had problems (they are already reported)."""
    parts = values.values() if isinstance(values, dict) else values
    if any(part is _FAILED for part in parts):
        raise _Reported
    return values


def _check_tag(node: yaml.Node, expected: str) -> None:
    if node.tag != expected:
        raise _Problem(f"uses the YAML tag {node.tag}, which a spec does not support",
                       "Remove the tag")


def _construct(node: yaml.ScalarNode) -> Any:
    if node.tag == _STR_TAG:
        return node.value
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.constructor.ConstructorError:
        raise _Problem(f"uses the YAML tag {node.tag}, which a spec does not support",
                       "Remove the tag") from None
    # Explicit tags hand arbitrary text to PyYAML's constructors, which fail in many ways
    # (ValueError for a 5000-digit int, KeyError for `!!bool maybe`, ...): all are one problem.
    except Exception:
        if node.tag == "tag:yaml.org,2002:int":
            raise _Problem(f"is a number with too many digits ({_short(node.value)})",
                           f"Write a number no larger than {MAX_INT}") from None
        raise _Problem(f"cannot be read as a value ({_short(node.value)})",
                       "Write an ordinary number or a quoted string") from None


def _scalar(node: yaml.Node, expected: _Type) -> Any:
    """The one place a node becomes a typed value."""
    if not isinstance(node, yaml.ScalarNode):
        _check_tag(node, _MAP_TAG if isinstance(node, yaml.MappingNode) else _SEQ_TAG)
        raise _Problem(f"must be {expected.name}, not {_describe(node)}", expected.how)
    value = _construct(node)
    if expected.exponent_floats and isinstance(value, str) and node.style is None \
            and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)
    wrong_bool = isinstance(value, bool) and bool not in expected.types
    if wrong_bool or not isinstance(value, expected.types):
        raise _Problem(f"must be {expected.name}, not {_describe_value(value)}", expected.how)
    if isinstance(value, float) and not math.isfinite(value):
        raise _Problem(f"must be a finite number, not {_short(node.value)}",
                       "Write an ordinary number")
    return value


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    try:
        return _describe_value(_construct(node))
    except _Problem:
        return _short(node.value)


def _describe_value(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {_brief(value)}"
    if isinstance(value, str):
        return f"the string {_short(value)}"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _brief(number: int | float, limit: int = 40) -> str:
    text = str(number)
    return text if len(text) <= limit else text[:limit] + "..."


def _suggest(name: str, keys: Iterable[str]) -> str:
    known = sorted(keys)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"Did you mean `{close[0]}`?"
    return "Remove it; the known keys are " + ", ".join(known)


def _mark_at(text: str | bytes, position: int) -> yaml.Mark:
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, position)
    column = position - (text.rfind(newline, 0, position) + 1)
    return yaml.Mark("", position, line, column, None, None)


def _value_at(node: yaml.Node | None, *keys: str) -> yaml.Node | None:
    """The value node at keys (the first occurrence), or None."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value
                     if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    return node


def _repository_root(start: Path) -> Path:
    for folder in (start, *start.parents):
        if (folder / ".git").exists():
            return folder
    return start


# --- readers: small factories over _scalar --------------------------------------------------

Read = Callable[[_Reader, yaml.Node, str], Any]


def _leaf(expected: _Type, check: Callable[[Any], Any] | None = None) -> Read:
    def read(reader: _Reader, node: yaml.Node, where: str) -> Any:
        value = _scalar(node, expected)
        return check(value) if check else value
    return read


def _optional_pin(read: Read) -> Read:
    """A pin may be left empty (null) until `reprun lock` fills it in."""
    def read_pin(reader: _Reader, node: yaml.Node, where: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG:
            return None
        return read(reader, node, where)
    return read_pin


def _list(read_item: Read, *, non_empty: bool = False) -> Read:
    def read(reader: _Reader, node: yaml.Node, where: str) -> tuple[Any, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise _Problem(f"must be a list, not {_describe(node)}",
                           "Write it as [a, b] or as `- item` lines")
        _check_tag(node, _SEQ_TAG)
        if non_empty and not node.value:
            raise _Problem("must not be empty", "Give at least one item")
        items = [reader.value(item, read_item, f"{where}[{index}]")
                 for index, item in enumerate(node.value)]
        return tuple(_complete(items))
    return read


def _named(read_name: Read, read_value: Read) -> Read:
    """A mapping whose keys the user chooses (params, env, metrics, build args)."""
    def read(reader: _Reader, node: yaml.Node, where: str) -> dict[str, Any]:
        values = {}
        for name, key_node, value_node in reader.pairs(node, where):
            if reader.value(key_node, read_name, f"{where} key") is not _FAILED:
                values[name] = reader.value(value_node, read_value, f"{where}.{name}")
        return _complete(values)
    return read


def _section(keys: dict[str, _Key], build: Callable[..., Any]) -> Read:
    def read(reader: _Reader, node: yaml.Node, where: str) -> Any:
        return build(**_complete(reader.mapping(node, keys, where)))
    return read


def _matching(pattern: str, what: str, how: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise _Problem(f"{_short(value)} {what}", how)
        return value
    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    options = ", ".join(choices[:-1]) + " or " + choices[-1]
    return _matching("|".join(map(re.escape, choices)), f"is not one of {options}",
                     f"Use {options}")


def _in_range(low: float, high: float | None = None, *,
              exclusive_low: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        too_low = value < low or (exclusive_low and value == low)
        if too_low or (high is not None and value > high):
            bound = f"greater than {low}" if exclusive_low else f"at least {low}"
            bound += f" and at most {high}" if high is not None else ""
            raise _Problem(f"is {_brief(value)}, but must be {bound}",
                           "Pick a value in that range")
        return value
    return check


def _image_ref(value: str) -> str:
    if re.fullmatch(IMAGE_REF_PATTERN, value):
        return value
    name, at, digest = value.partition("@")
    if not at and re.fullmatch(_UNPINNED_REF, value):
        tagged = ":" in value.rsplit("/", 1)[-1]
        raise _Problem(f"{_short(value)} has {'a tag but ' if tagged else ''}no digest",
                       "Run `reprun lock SPEC` to pin it, or add @sha256:<64 hex> to the reference")
    if at and not re.fullmatch(DIGEST_PATTERN, digest):
        raise _Problem(f"has a malformed digest {_short(digest)}",
                       "A digest is sha256: followed by 64 lowercase hex digits")
    raise _Problem(f"{_short(value)} is not a valid image reference",
                   "Write it as REGISTRY/NAME[:TAG]@sha256:<64 hex>")


def _dataset_sha256(value: str) -> str:
    if not re.fullmatch(DATASET_SHA256_PATTERN, value):
        raise _Problem(f"{_short(value)} is not a SHA-256 checksum",
                       "Give the 64 lowercase hex digits that sha256sum prints, "
                       "optionally after sha256:")
    return value.removeprefix("sha256:")


def _size(value: int | str) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        raise _Problem(f"{_short(str(value))} is not a size",
                       "Write a positive size such as 2g, 512m or 1024k, or a number of bytes")
    return _in_range(1, MAX_INT)(size)


def _tmp_size(value: int | str) -> str:
    _size(value)
    return str(value)


def _timeout(value: int | float | str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise _Problem(f"{_short(str(value))} is not a duration",
                       "Write a positive duration such as 90s, 30m or 2h, or a number of seconds")
    return _in_range(0, MAX_TIMEOUT_S, exclusive_low=True)(seconds)


def _cpus(value: int | float) -> float:
    return float(_in_range(0, MAX_CPUS, exclusive_low=True)(value))


def _container_path(value: str) -> str:
    if isinstance(value, str) and posixpath.normpath(value) in ("/", "//"):
        raise _Problem("'/' is the container's root, which the image itself fills",
                       "Write a folder of its own, such as /data")
    _matching(CONTAINER_PATH_PATTERN, "is not an absolute path inside the container",
              "Write an absolute path without `..`, such as /data")(value)
    return posixpath.normpath(value)


def _relative_path(value: str) -> str:
    return _matching(RELATIVE_PATH_PATTERN, "is not a relative path",
                     "Write a path relative to its folder, without a leading / or `..`")(value)


def _env_name(value: str) -> str:
    _matching(ENV_NAME_PATTERN, "is not a valid environment variable name",
              "Use letters, digits and underscores, not starting with a digit")(value)
    if value.startswith(RESERVED_ENV_PREFIX):
        raise _Problem(f"{_short(value)} starts with {RESERVED_ENV_PREFIX}, which reprun reserves",
                       "Pick another name; reprun sets REPRUN_* variables itself")
    return value


def _repository_path(*, directory: bool) -> Read:
    """A host path relative to the spec file that must exist inside the repository."""
    kind = "a directory" if directory else "a file or directory"

    def read(reader: _Reader, node: yaml.Node, where: str) -> Path:
        text = _scalar(node, _STRING)
        if not text or Path(text).is_absolute():
            raise _Problem(f"{_short(text)} is not a relative path",
                           "Give a path relative to the spec file, inside the repository")
        try:
            path = (reader.spec_dir / text).resolve()
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, RuntimeError, ValueError) as exc:
            raise _Problem(f"{_short(text)} cannot be resolved ({exc})",
                           "Check the path and any symbolic links on it") from None
        if not path.is_relative_to(reader.root):
            raise _Problem(f"{_short(text)} leaves the repository {reader.root} (it resolves "
                           f"to {path})", "Keep it inside the repository, next to the spec")
        if not exists or (directory and not is_dir):
            raise _Problem(f"{_short(text)} is not an existing {kind.removeprefix('a ')} "
                           f"(looked for {path})",
                           "Check the path; it is relative to the spec file")
        return path
    return read


# --- the format, one table per mapping ------------------------------------------------------

def _build_image_build(context: Path, dockerfile: str = "Dockerfile",
                       args: dict[str, str] | None = None) -> ImageBuild:
    if not (context / dockerfile).is_file():
        raise _Problem(f"has no Dockerfile {dockerfile} in {context}",
                       "Add it, or set `dockerfile:` to its path inside the context")
    return ImageBuild(context=context, dockerfile=dockerfile, args=args or {})


_BUILD_KEYS = {
    "context": _Key(_repository_path(directory=True), required=True,
                    example="context: ../images/sklearn"),
    "dockerfile": _Key(_leaf(_STRING, _relative_path)),
    "args": _Key(_named(_leaf(_STRING, _env_name), _leaf(_STRING))),
}


def _build_image(ref: str | None = None, build: ImageBuild | None = None,
                 digest: str | None = None) -> ImageSpec:
    if ref is not None and build is not None:
        raise _Problem("has both `ref` and `build`",
                       "Keep one: ref pulls a pinned image, build builds one from a Dockerfile")
    if ref is None and build is None:
        raise _Problem("needs `ref` (a pinned image) or `build` (a Dockerfile to build)",
                       "Add one of them")
    if ref is not None and digest is not None:
        raise _Problem("has `digest` next to `ref`",
                       "Remove digest; a ref carries its digest after @")
    return ImageSpec(ref=ref, build=build, digest=digest)


_IMAGE_KEYS = {
    "ref": _Key(_leaf(_STRING, _image_ref)),
    "build": _Key(_section(_BUILD_KEYS, _build_image_build)),
    "digest": _Key(_optional_pin(_leaf(_STRING, _matching(
        DIGEST_PATTERN, "is not an image ID",
        "An image ID is sha256: followed by 64 lowercase hex digits")))),
}

_DATASET_KEYS = {
    "path": _Key(_repository_path(directory=False), required=True,
                 example="path: data/digits.csv"),
    "sha256": _Key(_optional_pin(_leaf(_STRING, _dataset_sha256))),
    "mount": _Key(_leaf(_STRING, _container_path)),
}


def _read_dataset(reader: _Reader, node: yaml.Node, where: str) -> DatasetSpec:
    values = _complete(reader.mapping(node, _DATASET_KEYS, where))
    if values.get("sha256") is None and reader.require_pins:
        pin = _value_at(node, "sha256")
        raise _Problem("has no `sha256` pin", "Run `reprun lock SPEC` to fill it in, or add "
                       "`sha256: <64 hex>` as printed by sha256sum",
                       pin.start_mark if pin else None)
    return DatasetSpec(path=values["path"], sha256=values.get("sha256"),
                       mount=values.get("mount", DatasetSpec.mount))


_OUTPUTS_KEYS = {
    "dir": _Key(_leaf(_STRING, _container_path)),
    "metrics": _Key(_leaf(_STRING, _relative_path)),
    "artifacts": _Key(_list(_leaf(_STRING, _relative_path))),
}


def _read_tolerance(reader: _Reader, node: yaml.Node, where: str) -> Tolerance:
    how = "Write exact, ignore, {abs: 0.001} or {rel: 0.01}"
    if isinstance(node, yaml.MappingNode):
        bound = _leaf(_NUMBER, _in_range(0))
        values = _complete(reader.mapping(node, {"abs": _Key(bound), "rel": _Key(bound)}, where))
        if len(node.value) != 1:
            raise _Problem("must have exactly one of `abs` or `rel`", how)
        if not values:
            raise _Reported     # its one key was unknown, and said so
        (kind, value), = values.items()
        return Tolerance(kind, float(value))
    if not (isinstance(node, yaml.ScalarNode) and _construct(node) in ("exact", "ignore")):
        raise _Problem(f"must be a tolerance, not {_describe(node)}", how)
    return Tolerance(node.value)


def _build_compare(metrics: dict[str, Tolerance] | None = None,
                   artifacts: str = "bitwise") -> CompareSpec:
    return CompareSpec(metrics={"default": Tolerance("exact"), **(metrics or {})},
                       artifacts=artifacts)


_COMPARE_KEYS = {
    "metrics": _Key(_named(_leaf(_STRING, _matching(".+", "is empty", "Name the metric")),
                           _read_tolerance)),
    "artifacts": _Key(_leaf(_STRING, _one_of("bitwise", "ignore"))),
}

_RESOURCES_KEYS = {
    "cpus": _Key(_leaf(_NUMBER, _cpus)),
    "memory": _Key(_leaf(_ARGUMENT, _size), attr="memory_bytes"),
    "timeout": _Key(_leaf(_ARGUMENT, _timeout), attr="timeout_s"),
    "pids": _Key(_leaf(_INTEGER, _in_range(1, MAX_INT))),
}

_HERMETIC_KEYS = {
    "network": _Key(_leaf(_STRING, _one_of("none", "host"))),
    "read_only_root": _Key(_leaf(_BOOLEAN)),
    "user": _Key(_leaf(_STRING, _matching(USER_PATTERN, "is not a numeric uid:gid",
                                          "Write it as 65534:65534"))),
    "tmp_size": _Key(_leaf(_ARGUMENT, _tmp_size)),
}


def _version(value: int) -> int:
    if value != SPEC_VERSION:
        raise _Problem(f"is {value}, but this reprun reads version {SPEC_VERSION}",
                       f"Write `version: {SPEC_VERSION}`")
    return value


_SPEC_KEYS = {
    "version": _Key(_leaf(_INTEGER, _version), required=True, example="version: 1"),
    "name": _Key(_leaf(_STRING, _matching(NAME_PATTERN, "is not a valid name", "Use lowercase "
                 "letters, digits and dashes, starting with a letter or digit")),
                 required=True, example="name: digits-logreg"),
    "description": _Key(_leaf(_STRING)),
    "image": _Key(_section(_IMAGE_KEYS, _build_image), required=True,
                  example="image: {ref: REGISTRY/NAME@sha256:<64 hex>}"),
    "dataset": _Key(_read_dataset, required=True,
                    example="dataset: {path: data/digits.csv, sha256: <64 hex>}"),
    "seed": _Key(_leaf(_INTEGER, _in_range(0, MAX_INT)), required=True, example="seed: 42"),
    "command": _Key(_list(_leaf(_ARGUMENT, str), non_empty=True), required=True,
                    example='command: [python3, /app/train.py, --seed, "{seed}"]'),
    "params": _Key(_named(_leaf(_STRING, _matching(
        PARAM_NAME_PATTERN, "is not a valid parameter name",
        "Use letters, digits and underscores, not starting with a digit")), _leaf(_SCALAR))),
    "env": _Key(_named(_leaf(_STRING, _env_name), _leaf(_STRING))),
    "secrets": _Key(_list(_leaf(_STRING, _env_name))),
    "outputs": _Key(_section(_OUTPUTS_KEYS, OutputsSpec)),
    "compare": _Key(_section(_COMPARE_KEYS, _build_compare)),
    "resources": _Key(_section(_RESOURCES_KEYS, Resources)),
    "hermetic": _Key(_section(_HERMETIC_KEYS, Hermetic)),
}


def _read_document(reader: _Reader, node: yaml.Node, where: str) -> dict[str, Any]:
    """The RunSpec fields, with defaults for the optional sections and cross-key checks."""
    values = reader.mapping(node, _SPEC_KEYS, where)
    values = {"description": "", "params": {}, "env": {}, "secrets": (), "outputs": OutputsSpec(),
              "compare": _build_compare(), "resources": Resources(), "hermetic": Hermetic(),
              **values}
    _check_placeholders(reader, node, values["command"], values["params"])
    _check_mounts(reader, node, values["dataset"], values["outputs"])
    _check_secrets(reader, node, values["env"], values["secrets"])
    return _complete(values)


def _check_secrets(reader: _Reader, node: yaml.Node, env: Any, secrets: Any) -> None:
    if env is _FAILED or secrets is _FAILED:
        return
    for index, name in enumerate(secrets):
        item = _value_at(node, "secrets").value[index]
        if name in env:
            reader.report(item.start_mark, f"secrets[{index}] {name} also has a value under env",
                          "Remove it from env: a secret's value is read from reprun's own "
                          "environment when the run starts, so it never sits in the spec file")
        elif name in secrets[:index]:
            reader.report(item.start_mark, f"secrets[{index}] {name} is listed twice",
                          "List each secret once")


def _check_placeholders(reader: _Reader, node: yaml.Node, command: Any, params: Any) -> None:
    if command is _FAILED or params is _FAILED:
        return
    known = dict.fromkeys(["seed", *(f"params.{name}" for name in params)], "")
    for index, (argument, item) in enumerate(zip(command, _value_at(node, "command").value)):
        try:
            _substitute(argument, known)
        except KeyError as exc:
            reader.report(item.start_mark, f"command[{index}] uses the unknown placeholder "
                          f"{{{exc.args[0]}}}", "Use {seed} or {params.NAME} with NAME defined "
                          "under params; write {{ and }} for literal braces")
        except ValueError as exc:
            reader.report(item.start_mark, f"command[{index}] has {exc}",
                          "Write {{ or }} for a literal brace")


def _check_mounts(reader: _Reader, node: yaml.Node, dataset: Any, outputs: Any) -> None:
    if dataset is _FAILED or outputs is _FAILED:
        return
    mount, out = dataset.mount, outputs.dir
    if mount == out or mount.startswith(out.rstrip("/") + "/") or out.startswith(mount + "/"):
        located = _value_at(node, "outputs", "dir") or _value_at(node, "dataset", "mount") or node
        reader.report(located.start_mark, f"outputs.dir {out} overlaps dataset.mount {mount}",
                      "Give them separate folders; the dataset is mounted read-only")


def _substitute(text: str, values: dict[str, str]) -> str:
    """Fill `{name}` placeholders; KeyError for an unknown name, ValueError for a lone brace."""
    def one(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        if match.group(1) is None:
            raise ValueError(f"an unmatched {token!r}")
        return values[match.group(1)]
    return _PLACEHOLDER.sub(one, text)


def _param_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
