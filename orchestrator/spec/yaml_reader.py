"""Reading YAML nodes into typed values, with every problem named FILE:LINE:COL.

The YAML is composed into nodes (never constructed into Python objects wholesale) so that every
problem can name where it is. One function, `scalar`, turns a node into a typed value; the small
factories below (`leaf`, `list_of`, `named`, `section`) build readers from it, and a `Reader`
collects every problem of a document so that all are raised together as one SpecError. Nothing
here knows the keys of a spec: they are declared in orchestrator.spec.v1_keys.
"""
from __future__ import annotations

import datetime
import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from orchestrator.errors import SpecError
from orchestrator.spec.units import MAX_INT

DOCUMENT = "the spec"
FAILED: Any = object()      # stands for a value whose problems are already reported
START = yaml.Mark("", 0, 0, 0, None, None)
_STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


class Problem(Exception):
    """One thing wrong with a value: what is wrong, how to fix it, and where (if not the node)."""

    def __init__(self, what: str, how: str, mark: yaml.Mark | None = None):
        super().__init__(what)
        self.what, self.how, self.mark = what, how, mark


class Reported(Exception):
    """A nested value was invalid and its problems are already recorded."""


@dataclass(frozen=True)
class Key:
    read: Callable[["Reader", yaml.Node, str], Any]
    required: bool = False
    example: str = ""               # shown when a required key is missing
    attr: str = ""                  # the dataclass field, when it differs from the key


@dataclass(frozen=True)
class ValueType:
    name: str
    types: tuple[type, ...]
    how: str
    # Read 1e-3 as the number YAML 1.2 and every ML config means, not as the string YAML 1.1
    # (PyYAML) makes of an exponent without a dot and a sign. Not where the text itself is
    # passed on (command arguments): 1e-3 must not reach the job as 0.001.
    exponent_floats: bool = False


STRING = ValueType("a string", (str,), "Quote it if YAML reads it as a number, date or boolean")
INTEGER = ValueType("an integer", (int,), "Write a whole number without quotes")
NUMBER = ValueType("a number", (int, float), "Write a number without quotes", exponent_floats=True)
BOOLEAN = ValueType("true or false", (bool,), "Write true or false")
ARGUMENT = ValueType("a string or a number", (str, int, float), "Quote it")
SCALAR = ValueType("a string, number or boolean", (str, int, float, bool),
                "Write a single value, not a list or a mapping", exponent_floats=True)
_EXPONENT_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")


class _SpecLoader(yaml.SafeLoader):
    """Composes nodes, refusing anchors and aliases: they allow exponential expansion."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise Problem(f"the spec uses a YAML alias (*{event.anchor})",
                           "Write the value out in full; anchors and aliases are not allowed",
                           event.start_mark)
        if getattr(event, "anchor", None) is not None:
            raise Problem(f"the spec uses a YAML anchor (&{event.anchor})",
                           "Write the value out in full; anchors and aliases are not allowed",
                           event.start_mark)
        return super().compose_node(parent, index)


class Reader:
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
            self.report(mark_at(data, exc.start), "the spec is not UTF-8 text",
                        "Save the file as UTF-8; a spec is YAML, not binary data")
            return None
        try:
            node = yaml.compose(text, Loader=_SpecLoader)
        except Problem as problem:
            self.report(problem.mark or START, problem.what, problem.how)
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark or START
            what = "; ".join(part for part in (exc.context, exc.problem) if part)
            self.report(mark, f"the YAML is malformed ({what})",
                        "Fix the syntax here: check indentation, colons and quotes")
            return None
        except yaml.reader.ReaderError as exc:
            character = exc.character if isinstance(exc.character, int) else ord(exc.character)
            self.report(mark_at(text, exc.position), "the spec contains a character YAML "
                        f"does not allow (U+{character:04X})", "Remove it; a spec is plain text")
            return None
        except yaml.YAMLError as exc:
            self.report(START, f"the YAML is malformed ({exc})", "Fix the YAML syntax")
            return None
        if node is None:
            self.report(START, "the spec is empty", "Start it with `version: 1`; see docs/spec.md")
        return node

    def value(self, node: yaml.Node, read: Callable[["Reader", yaml.Node, str], Any],
              where: str) -> Any:
        """read(node), or FAILED with the problem recorded against `where`."""
        try:
            return read(self, node, where)
        except Problem as problem:
            self.report(problem.mark or node.start_mark, f"{where} {problem.what}", problem.how)
        except Reported:
            pass
        return FAILED

    def pairs(self, node: yaml.Node, where: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """The (key, key node, value node) entries of a mapping; bad and repeated keys reported."""
        if not isinstance(node, yaml.MappingNode):
            raise Problem(f"must be a mapping, not {describe(node)}",
                           "Write it as `key: value` entries")
        check_tag(node, _MAP_TAG)
        first_seen: dict[str, int] = {}
        entries = []
        for key_node, value_node in node.value:
            if not (isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG):
                self.report(key_node.start_mark, f"{where} has a key that is not a string "
                            f"({describe(key_node)})", "Quote the key")
            elif key_node.value in first_seen:
                self.report(key_node.start_mark, f"{where} has the key `{key_node.value}` twice "
                            f"(first on line {first_seen[key_node.value]})", "Keep only one")
            else:
                first_seen[key_node.value] = key_node.start_mark.line + 1
                entries.append((key_node.value, key_node, value_node))
        return entries

    def mapping(self, node: yaml.Node, keys: dict[str, Key], where: str) -> dict[str, Any]:
        """Values of the keys present, by field name; FAILED where invalid or missing."""
        values: dict[str, Any] = {}
        entries = self.pairs(node, where)
        for name, key_node, value_node in entries:
            if name not in keys:
                self.report(key_node.start_mark, f"{where} has an unknown key `{name}`",
                            _suggest(name, keys))
                continue
            path = name if where == DOCUMENT else f"{where}.{name}"
            values[keys[name].attr or name] = self.value(value_node, keys[name].read, path)
        present = {name for name, _, _ in entries}
        for name, key in keys.items():
            if key.required and name not in present:
                self.report(node.start_mark, f"{where} is missing `{name}`",
                            f"Add it, for example `{key.example}`")
                values[key.attr or name] = FAILED
        return values


def complete(values: Any) -> Any:
    """Stop building a value whose parts had problems (they are already reported)."""
    parts = values.values() if isinstance(values, dict) else values
    if any(part is FAILED for part in parts):
        raise Reported
    return values


def check_tag(node: yaml.Node, expected: str) -> None:
    if node.tag != expected:
        raise Problem(f"uses the YAML tag {node.tag}, which a spec does not support",
                       "Remove the tag")


def construct(node: yaml.ScalarNode) -> Any:
    if node.tag == _STR_TAG:
        return node.value
    try:
        return yaml.constructor.SafeConstructor().construct_object(node)
    except yaml.constructor.ConstructorError:
        raise Problem(f"uses the YAML tag {node.tag}, which a spec does not support",
                       "Remove the tag") from None
    # Explicit tags hand arbitrary text to PyYAML's constructors, which fail in many ways
    # (ValueError for a 5000-digit int, KeyError for `!!bool maybe`, ...): all are one problem.
    except Exception:
        if node.tag == "tag:yaml.org,2002:int":
            raise Problem(f"is a number with too many digits ({short(node.value)})",
                           f"Write a number no larger than {MAX_INT}") from None
        raise Problem(f"cannot be read as a value ({short(node.value)})",
                       "Write an ordinary number or a quoted string") from None


def scalar(node: yaml.Node, expected: ValueType) -> Any:
    """The one place a node becomes a typed value."""
    if not isinstance(node, yaml.ScalarNode):
        check_tag(node, _MAP_TAG if isinstance(node, yaml.MappingNode) else _SEQ_TAG)
        raise Problem(f"must be {expected.name}, not {describe(node)}", expected.how)
    value = construct(node)
    if expected.exponent_floats and isinstance(value, str) and node.style is None \
            and _EXPONENT_FLOAT.fullmatch(value):
        value = float(value)
    wrong_bool = isinstance(value, bool) and bool not in expected.types
    if wrong_bool or not isinstance(value, expected.types):
        raise Problem(f"must be {expected.name}, not {_describe_value(value)}", expected.how)
    if isinstance(value, float) and not math.isfinite(value):
        raise Problem(f"must be a finite number, not {short(node.value)}",
                       "Write an ordinary number")
    return value


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    try:
        return _describe_value(construct(node))
    except Problem:
        return short(node.value)


def _describe_value(value: Any) -> str:
    if value is None:
        return "empty (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {brief(value)}"
    if isinstance(value, str):
        return f"the string {short(value)}"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    if isinstance(value, bytes):
        return "binary data"
    return type(value).__name__


def short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def brief(number: int | float, limit: int = 40) -> str:
    text = str(number)
    return text if len(text) <= limit else text[:limit] + "..."


def _suggest(name: str, keys: Iterable[str]) -> str:
    known = sorted(keys)
    close = difflib.get_close_matches(name, known, n=1)
    if close:
        return f"Did you mean `{close[0]}`?"
    return "Remove it; the known keys are " + ", ".join(known)


def mark_at(text: str | bytes, position: int) -> yaml.Mark:
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, position)
    column = position - (text.rfind(newline, 0, position) + 1)
    return yaml.Mark("", position, line, column, None, None)


def value_at(node: yaml.Node | None, *keys: str) -> yaml.Node | None:
    """The value node at keys (the first occurrence), or None."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value
                     if isinstance(k, yaml.ScalarNode) and k.value == key), None)
    return node



# --- readers: small factories over scalar --------------------------------------------------

Read = Callable[[Reader, yaml.Node, str], Any]


def leaf(expected: ValueType, check: Callable[[Any], Any] | None = None) -> Read:
    def read(reader: Reader, node: yaml.Node, where: str) -> Any:
        value = scalar(node, expected)
        return check(value) if check else value
    return read


def optional_pin(read: Read) -> Read:
    """A pin may be left empty (null) until `reprun lock` fills it in."""
    def read_pin(reader: Reader, node: yaml.Node, where: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG:
            return None
        return read(reader, node, where)
    return read_pin


def list_of(read_item: Read, *, non_empty: bool = False) -> Read:
    def read(reader: Reader, node: yaml.Node, where: str) -> tuple[Any, ...]:
        if not isinstance(node, yaml.SequenceNode):
            raise Problem(f"must be a list, not {describe(node)}",
                           "Write it as [a, b] or as `- item` lines")
        check_tag(node, _SEQ_TAG)
        if non_empty and not node.value:
            raise Problem("must not be empty", "Give at least one item")
        items = [reader.value(item, read_item, f"{where}[{index}]")
                 for index, item in enumerate(node.value)]
        return tuple(complete(items))
    return read


def named(read_name: Read, read_value: Read) -> Read:
    """A mapping whose keys the user chooses (params, env, metrics, build args)."""
    def read(reader: Reader, node: yaml.Node, where: str) -> dict[str, Any]:
        values = {}
        for name, key_node, value_node in reader.pairs(node, where):
            if reader.value(key_node, read_name, f"{where} key") is not FAILED:
                values[name] = reader.value(value_node, read_value, f"{where}.{name}")
        return complete(values)
    return read


def section(keys: dict[str, Key], build: Callable[..., Any]) -> Read:
    def read(reader: Reader, node: yaml.Node, where: str) -> Any:
        return build(**complete(reader.mapping(node, keys, where)))
    return read


def matching(pattern: str, what: str, how: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise Problem(f"{short(value)} {what}", how)
        return value
    return check


def one_of(*choices: str) -> Callable[[str], str]:
    options = ", ".join(choices[:-1]) + " or " + choices[-1]
    return matching("|".join(map(re.escape, choices)), f"is not one of {options}",
                     f"Use {options}")


def in_range(low: float, high: float | None = None, *,
              exclusive_low: bool = False) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        too_low = value < low or (exclusive_low and value == low)
        if too_low or (high is not None and value > high):
            bound = f"greater than {low}" if exclusive_low else f"at least {low}"
            bound += f" and at most {high}" if high is not None else ""
            raise Problem(f"is {brief(value)}, but must be {bound}",
                           "Pick a value in that range")
        return value
    return check

