"""`reprun lock`: fill in or update a spec's pins, touching nothing else in the file.

The pins are written by editing the text at the positions the YAML parser reports, so the user's
comments, key order and formatting survive untouched.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .dataset import hash_dataset
from .engine import LocalEngine
from .errors import SpecError
from .images import resolve_image
from .spec import load_spec


def _child(mapping: yaml.MappingNode, key: str):
    for key_node, value_node in mapping.value:
        if key_node.value == key:
            return key_node, value_node
    return None


def _set_scalar(text: str, root: yaml.Node, path: tuple[str, ...], value: str,
                source: Path) -> tuple[str, str | None]:
    """The text with mapping[path] set to value, and the old value (None when added)."""
    parent = root
    for key in path[:-1]:
        found = _child(parent, key)
        if found is None or not isinstance(found[1], yaml.MappingNode):
            raise SpecError(f"{source}: cannot pin {'.'.join(path)}: {key} is not a mapping")
        parent = found[1]
    if parent.flow_style:
        raise SpecError(f"{source}:{parent.start_mark.line + 1}: cannot pin {'.'.join(path)} inside "
                        "a flow-style mapping ({...}); write that mapping in block style.")
    found = _child(parent, path[-1])
    if found is not None:
        node = found[1]
        old = node.value if isinstance(node, yaml.ScalarNode) else None
        return text[:node.start_mark.index] + value + text[node.end_mark.index:], old
    # Add the key after the mapping's last entry, indented like its first key.
    first_key = parent.value[0][0]
    indent = " " * first_key.start_mark.column
    last_value = parent.value[-1][1]
    line_end = text.find("\n", last_value.end_mark.index - 1)
    at = len(text) if line_end < 0 else line_end + 1
    prefix = "" if at == 0 or text[at - 1] == "\n" else "\n"
    return text[:at] + f"{prefix}{indent}{path[-1]}: {value}\n" + text[at:], None


def lock_spec(path: Path, *, engine: LocalEngine, write: bool = True) -> list[str]:
    """Bring the pins of one spec up to date; returns what changed (or would change)."""
    spec = load_spec(path, require_pins=False)
    text = path.read_text()
    changes: list[str] = []
    digest = hash_dataset(spec.dataset.path)
    wanted = [(("dataset", "sha256"), digest.sha256)]
    image = resolve_image(engine.client, _unpinned(spec.image), spec_name=spec.name)
    if spec.image.build is not None:
        wanted.append((("image", "digest"), image.id))
    for key_path, value in wanted:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        text, old = _set_scalar(text, root, key_path, value, path)
        old_bare = (old or "").removeprefix("sha256:") if key_path[0] == "dataset" else old
        if old_bare != value.removeprefix("sha256:" if key_path[0] == "dataset" else ""):
            changes.append(f"{'.'.join(key_path)}: {old or '(unset)'} -> {value}")
    if changes and write:
        path.write_text(text)
    return changes


def _unpinned(image_spec):
    """The image spec without its ID pin, so that locking resolves what is there now."""
    from dataclasses import replace
    return replace(image_spec, digest=None) if image_spec.build is not None else image_spec
