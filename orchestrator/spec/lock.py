"""`reprun lock`: fill in or update a spec's pins, touching nothing else in the file.

The pins are written by editing the text at the positions the YAML parser reports, so the user's
comments, key order and formatting survive untouched.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import yaml

from orchestrator.execution.job import Executor
from orchestrator.dataset.tree import HashCache, hash_dataset
from orchestrator.errors import InfrastructureError, SpecError
from orchestrator.spec.load import MAX_SPEC_BYTES, load_spec, read_spec_bytes


def _key_and_value(mapping: yaml.MappingNode, key: str):
    for key_node, value_node in mapping.value:
        if key_node.value == key:
            return key_node, value_node
    return None


def _set_scalar(text: str, root: yaml.Node, path: tuple[str, ...], value: str,
                source: Path) -> tuple[str, str | None]:
    """The text with mapping[path] set to value, and the old value (None when added)."""
    parent = root
    for key in path[:-1]:
        found = _key_and_value(parent, key)
        if found is None or not isinstance(found[1], yaml.MappingNode):
            raise SpecError(f"{source}: cannot pin {'.'.join(path)}: {key} is not a mapping")
        parent = found[1]
    if parent.flow_style:
        value = json.dumps(value)   # PyYAML reads `sha256:…` inside braces as a second key
    found = _key_and_value(parent, path[-1])
    if found is not None:
        node = found[1]
        old = node.value if isinstance(node, yaml.ScalarNode) else None
        return text[:node.start_mark.index] + value + text[node.end_mark.index:], old
    if parent.flow_style:
        return _add_to_flow_mapping(text, parent, path[-1], value), None
    # Add the key after the mapping's last entry, indented like its first key.
    first_key = parent.value[0][0]
    indent = " " * first_key.start_mark.column
    last_value = parent.value[-1][1]
    line_end = text.find("\n", last_value.end_mark.index - 1)
    at = len(text) if line_end < 0 else line_end + 1
    prefix = "" if at == 0 or text[at - 1] == "\n" else "\n"
    return text[:at] + f"{prefix}{indent}{path[-1]}: {value}\n" + text[at:], None


def _add_to_flow_mapping(text: str, mapping: yaml.MappingNode, key: str, value: str) -> str:
    """`{path: d.csv}` → `{path: d.csv, sha256: …}`: the entry goes before the closing brace."""
    close = text.rindex("}", mapping.start_mark.index, mapping.end_mark.index)
    before = text[:close].rstrip()
    separator = "" if before.endswith("{") else " " if before.endswith(",") else ", "
    return f"{before}{separator}{key}: {value}{text[close:]}"


def _raw_ref(text: str) -> str | None:
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    image = _key_and_value(root, "image") if isinstance(root, yaml.MappingNode) else None
    ref = _key_and_value(image[1], "ref") if image and isinstance(image[1], yaml.MappingNode) else None
    return ref[1].value if ref and isinstance(ref[1], yaml.ScalarNode) else None


def resolve_tag(client, ref: str) -> str | None:
    """`name:tag[@digest]` → `name:tag@<the digest the tag points at now>`; None without a tag."""
    name = ref.partition("@")[0]
    repository, _, tag = name.rpartition(":")
    if not tag or "/" in tag:
        return None
    import docker.errors    # only where a tag is resolved: lock --check of a digest needs no engine
    try:
        image = client.images.pull(repository, tag=tag)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot resolve {name} to a digest: "
                                  f"{exc.explanation or exc}") from None
    digests = [d for d in image.attrs.get("RepoDigests") or [] if d.startswith(repository + "@")]
    if not digests:
        raise InfrastructureError(f"the registry gave {name} no digest; push it first.")
    return f"{name}@{digests[0].partition('@')[2]}"


def _load_as(path: Path, text: str):
    """The spec `text` would be, were it the file at `path` (relative paths resolve the same)."""
    draft = path.with_name(f".{path.name}.lock-draft")
    try:
        draft.write_text(text)
    except OSError as exc:
        raise SpecError(f"cannot lock {path}: its folder is not writable ({exc.strerror or exc})") from None
    try:
        return load_spec(draft, require_pins=False)
    except SpecError as error:   # speak of the user's file, not of the draft
        raise SpecError(error.message.replace(str(draft), str(path)),
                        details=[d.replace(str(draft), str(path)) for d in error.details]) from None
    finally:
        draft.unlink(missing_ok=True)


def lock_spec(path: Path, *, engine: Executor, write: bool = True,
              cache: HashCache | None = None,
              progress: Callable[[str, int, int, str], None] | None = None,
              builds: dict[str, str] | None = None,
              store_root: Path | None = None) -> list[str]:
    """Bring the pins of one spec up to date; returns what changed (or would change).

    With a cache, the per-file manifest of the pinned dataset is remembered, so that a later
    mismatch can name the files that changed. `builds`: image IDs by build inputs, shared by
    the specs of one `lock` so that one context is built once.
    """
    text = _read(path)
    changes: list[str] = []

    def pin(key_path: tuple[str, ...], value: str, same) -> None:
        nonlocal text
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        new_text, old = _set_scalar(text, root, key_path, value, path)
        if old is None or not same(old, value):
            changes.append(f"{'.'.join(key_path)}: {old or '(unset)'} -> {value}")
            text = new_text

    ref = _raw_ref(text)
    if ref is not None and (resolved := resolve_tag(engine.client, ref)) is not None:
        pin(("image", "ref"), resolved, str.__eq__)     # the tag may have moved since
    spec = _load_as(path, text)
    if spec.dataset is not None:
        pin(("dataset", "sha256"), hash_dataset(spec.dataset.path, cache=cache).sha256,
            lambda old, new: old.removeprefix("sha256:") == new)
    if spec.image.build is not None:
        from orchestrator.images import BuildCache, resolve_for_lock   # it loads the Docker SDK
        image = resolve_for_lock(engine.client, spec.image, spec_name=spec.name,
                                 progress=progress, builds=BuildCache(builds),
                                 leave_out=(path, *([store_root] if store_root else [])))
        pin(("image", "digest"), image.id, str.__eq__)
    if changes and write:
        try:
            path.write_text(text)
        except OSError as exc:
            raise SpecError(f"cannot write the new pins into {path}: {exc.strerror or exc}") from None
    return changes


def _read(path: Path) -> str:
    """The spec's text; a file that cannot be read, is too big, is not UTF-8 or is malformed
    YAML is told as `run` tells it (exit 2), not met halfway through locking. Unpinned tags are
    fine: they are what lock pins."""
    data = read_spec_bytes(path)
    try:
        if len(data) > MAX_SPEC_BYTES:
            raise ValueError("too big")
        text = data.decode("utf-8")
        yaml.compose(text, Loader=yaml.SafeLoader)
    except (ValueError, yaml.YAMLError) as exc:     # UnicodeDecodeError is a ValueError
        load_spec(path, require_pins=False)      # says where and what, as for any spec
        raise SpecError(f"spec {path} cannot be locked: {exc}") from None
    return text
