"""Self-contained archives of a run: the image saved by ID, the dataset, and the record.

An archive outlives registries: `reprun rerun --from-archive` loads the image into the engine and
replays the run. Every member is hashed in a manifest written last; on load every hash is checked
before anything is used, and a damaged archive is refused with what is wrong.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import docker.errors

from orchestrator.dataset.tree import hash_dataset
from orchestrator.errors import InfrastructureError, PinMismatch, UsageError
from orchestrator.outputs import sha256_file
from orchestrator.records import RunRecord
from orchestrator.store.db import Store, parse_record, utc_now

ARCHIVE_SCHEMA = "reprun.archive/1"
MANIFEST = "MANIFEST.json"
RECORD = "record.json"
IMAGE = "image.tar"
DATASET = "dataset"

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LoadedArchive:
    record: RunRecord
    dataset_path: Path
    image_id: str


def _sha256_stream(chunks, sink) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        sink.write(chunk)
    return digest.hexdigest(), size


def write_archive(store: Store, run_id: str, output: Path, *, client,
                  progress: Progress | None = None) -> Path:
    progress = progress or (lambda *_: None)
    refuse_output(output)
    record = store.get(run_id)
    dataset = Path(record.inputs.dataset.path)
    if not dataset.exists():
        raise UsageError(f"the dataset of run {record.id} is gone from {dataset}; an archive "
                         "needs it.")
    digest = hash_dataset(dataset)
    if digest.sha256 != record.inputs.dataset.sha256:
        raise PinMismatch(f"the dataset at {dataset} no longer matches run {record.id} "
                          f"(sha256 {digest.sha256}, recorded {record.inputs.dataset.sha256}); "
                          "refusing to archive a different dataset.")
    members: dict[str, dict] = {}
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp_image = Path(tempfile.mkstemp(prefix="reprun-image-", suffix=".tar",
                                          dir=output.parent)[1])
    except OSError as exc:
        raise UsageError(f"cannot write the archive {output}: {exc.strerror or exc}") from None
    partial = output.with_name(f".{output.name}.{secrets.token_hex(4)}.partial")
    try:
        try:
            image = client.images.get(record.inputs.image.id)
        except docker.errors.ImageNotFound:
            raise PinMismatch(f"the image {record.inputs.image.id} of run {record.id} is no "
                              "longer in the engine; it cannot be archived.") from None
        progress("save image", 0, 1)
        with open(tmp_image, "wb") as sink:
            sha, size = _sha256_stream(image.save(named=False), sink)
        members[IMAGE] = {"sha256": sha, "size": size}
        progress("save image", 1, 1)
        written = _Written(size + digest.bytes, lambda done, total: progress("write", done, total))
        with tarfile.open(partial, **_write_mode(output)) as tar:
            record_bytes = record.to_json().encode()
            _add_bytes(tar, RECORD, record_bytes)
            members[RECORD] = {"sha256": hashlib.sha256(record_bytes).hexdigest(),
                               "size": len(record_bytes)}
            written.add(tar, tmp_image, IMAGE)
            base = dataset if dataset.is_dir() else dataset.parent
            for entry in digest.files:
                rel = entry.path.removeprefix("./") if dataset.is_dir() else dataset.name
                name = f"{DATASET}/{rel}"
                written.add(tar, base / rel, name)
                members[name] = {"sha256": entry.sha256, "size": entry.size}
            manifest = {"schema": ARCHIVE_SCHEMA, "run_id": record.id, "created_at": utc_now(),
                        "dataset_kind": digest.kind, "members": members}
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        os.replace(partial, output)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise InfrastructureError(f"cannot write the archive {output}: {exc.strerror or exc}",
                                  details=[f"Free space in {output.parent} and run again."]) from None
    finally:
        partial.unlink(missing_ok=True)
        tmp_image.unlink(missing_ok=True)
    return output


# What _write_mode understands, and so what `reprun archive -o` accepts.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")


def refuse_output(output: Path) -> None:
    """Before an image of hundreds of MiB is saved: a name that says another format, a folder,
    or a path through a file."""
    from orchestrator.files import refuse_unwritable_file
    refuse_unwritable_file(output, "archive")
    if not output.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise UsageError(f"the archive {output} must end in {', '.join(ARCHIVE_SUFFIXES)}: "
                         "its name says how it is compressed.")


class _Written:
    """Adds files to the archive and reports the bytes written so far, compression included."""

    def __init__(self, total: int, progress: Callable[[int, int], None]):
        self.done, self.total, self.progress = 0, total, progress

    def add(self, tar: tarfile.TarFile, path: Path, name: str) -> None:
        with open(path, "rb") as source:
            tar.addfile(tar.gettarinfo(path, arcname=name), _Reading(source, self._count))

    def _count(self, n: int) -> None:
        self.done += n
        self.progress(self.done, self.total)


class _Reading:
    """A file as tarfile reads it, telling `on_read` how many bytes each read brought."""

    def __init__(self, source, on_read: Callable[[int], None]):
        self.source, self.on_read = source, on_read

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(n)
        self.on_read(len(data))
        return data


def _write_mode(output: Path) -> dict:
    """Compressed as the name says (.tar.gz or .tgz, .tar.xz, .tar.bz2), else a plain tar.
    gzip at level 6, gzip's own default: 0.29 of the example image's size, at 45 MB/s here."""
    gzip = {"mode": "w:gz", "compresslevel": 6}
    suffixes = {".gz": gzip, ".tgz": gzip, ".xz": {"mode": "w:xz"}, ".bz2": {"mode": "w:bz2"}}
    return suffixes.get(output.suffix.lower(), {"mode": "w"})


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _damaged(path: Path, what: str) -> PinMismatch:
    return PinMismatch(f"the archive {path} is damaged and was refused: {what}.")


def _members(path: Path, manifest) -> dict[str, dict]:
    """The manifest's members, each a name with a sha256 and a size, or the archive is damaged."""
    if not isinstance(manifest, dict) or manifest.get("schema") != ARCHIVE_SCHEMA:
        raise _damaged(path, f"its {MANIFEST} is not a {ARCHIVE_SCHEMA} manifest")
    members = manifest.get("members")
    if not isinstance(members, dict):
        raise _damaged(path, f"its {MANIFEST} lists no members")
    for name, member in members.items():
        if not (isinstance(member, dict) and isinstance(member.get("sha256"), str)
                and isinstance(member.get("size"), int) and member["size"] >= 0):
            raise _damaged(path, f"its {MANIFEST} gives {name!r} no sha256 and size")
    return members


def load_archive(path: Path, store: Store, *, client,
                 progress: Progress | None = None) -> LoadedArchive:
    """Extract, verify every hash, load the image; only then is anything used.

    The extracted dataset stays under the store (the replayed record points at it); a refused
    archive leaves nothing behind.
    """
    if not path.is_file():      # a wrong name is a bad invocation, not a damaged archive
        raise UsageError(f"there is no archive file at {path}"
                         + (" (it is a folder)" if path.is_dir() else "") + ".")
    target = store.root / "archives" / f"{path.stem}-{secrets.token_hex(3)}"
    target.mkdir(parents=True)
    try:
        return _load_into(path, target, client, progress or (lambda *_: None))
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise


def _load_into(path: Path, target: Path, client, progress: Progress) -> LoadedArchive:
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not (member.isfile() or member.isdir()) or member.name.startswith("/") \
                        or ".." in Path(member.name).parts:
                    raise _damaged(path, f"it holds an unexpected entry {member.name!r}")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _damaged(path, f"it cannot be read as an archive ({exc})") from None
    try:
        manifest = json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        raise _damaged(path, f"its {MANIFEST} is missing or unreadable") from None
    members = _members(path, manifest)
    present = {p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()}
    extra = present - set(members) - {MANIFEST}
    if extra:
        raise _damaged(path, f"it holds files its manifest does not list: {', '.join(sorted(extra))}")
    for done, (name, expected) in enumerate(sorted(members.items()), 1):
        file = target / name
        if not file.is_file():
            raise _damaged(path, f"{name} is missing")
        if sha256_file(file)[0] != expected["sha256"]:
            raise _damaged(path, f"{name} does not match its recorded sha256")
        progress("verify", done, len(members))
    record = parse_record((target / RECORD).read_text(encoding="utf-8", errors="replace"),
                          f"the record in the archive {path}")
    dataset = target / DATASET
    if manifest.get("dataset_kind") == "file":
        dataset = next(dataset.iterdir())
    if hash_dataset(dataset).sha256 != record.inputs.dataset.sha256:
        raise _damaged(path, "its dataset does not hash to the one its record names")
    progress("load image", 0, 1)
    try:
        with open(target / IMAGE, "rb") as handle:
            images = client.images.load(handle)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"the engine could not load the archived image: {exc}") from None
    finally:
        (target / IMAGE).unlink(missing_ok=True)   # loaded into the engine; the copy is not needed
    ids = {image.id for image in images}
    if record.inputs.image.id not in ids:
        raise _damaged(path, f"its image loaded as {', '.join(ids)}, not the recorded "
                             f"{record.inputs.image.id}")
    progress("load image", 1, 1)
    return LoadedArchive(record=record, dataset_path=dataset, image_id=record.inputs.image.id)
