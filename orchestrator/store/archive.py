"""Self-contained archives of a run: the image saved by ID, the dataset, the record and the
run's artifacts (the model an auditor holds with its proof).

An archive outlives registries: `reprun rerun --from-archive` loads the image into the engine and
replays the run. Every member is hashed in a manifest written last; on load every hash is checked
before anything is used, and a damaged archive is refused with what is wrong.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import lzma
import os
import secrets
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
import zlib
from pathlib import Path
from typing import Any, Callable

import zstandard

from orchestrator.dataset.tree import hash_dataset
from orchestrator.errors import InfrastructureError, PinMismatch, UsageError
from orchestrator.outputs import sha256_file
from orchestrator.records import RunRecord
from orchestrator.store.db import Store, parse_record, record_json, utc_now

ARCHIVE_SCHEMA = "reprun.archive/1"
MANIFEST = "MANIFEST.json"
RECORD = "record.json"
IMAGE = "image.tar"
DATASET = "dataset"
NO_DATASET = "none"     # the manifest's dataset_kind for a run whose job made its own data
ARTIFACTS = "artifacts"

Progress = Callable[[str, int, int], None]
# Reads of the saved image from the engine: 16 MiB a read saves about a quarter of the time the
# SDK's 2 MiB take for the example image (fewer Python round trips per byte).
SAVE_CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class LoadedArchive:
    record: RunRecord
    dataset_path: Path | None        # None: the run had no dataset
    image_id: str
    accepted: Any = None        # what `accept` made of the record (the spec to replay)


# Reads the archived record before its image goes near the engine; raises to refuse it.
Accept = Callable[[RunRecord, Path], Any]


def _sha256_stream(chunks, sink) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
        sink.write(chunk)
    return digest.hexdigest(), size


def _recorded_dataset(record: RunRecord):
    """The run's dataset and its hash, checked against the record; (None, None) for a job
    that made its own data."""
    if record.inputs.dataset is None:
        return None, None
    dataset = Path(record.inputs.dataset.path)
    if not dataset.exists():
        raise UsageError(f"the dataset of run {record.id} is gone from {dataset}; an archive "
                         "needs it.")
    digest = hash_dataset(dataset)
    if digest.sha256 != record.inputs.dataset.sha256:
        raise PinMismatch(f"the dataset at {dataset} no longer matches run {record.id} "
                          f"(sha256 {digest.sha256}, recorded {record.inputs.dataset.sha256}); "
                          "refusing to archive a different dataset.")
    return dataset, digest


def write_archive(store: Store, run_id: str, output: Path, *, client,
                  progress: Progress | None = None) -> Path:
    import docker.errors    # the Docker SDK loads only where an archive meets the engine
    progress = progress or (lambda *_: None)
    refuse_output(output)
    record = store.get(run_id)
    dataset, digest = _recorded_dataset(record)
    artifacts = _artifacts_as_recorded(store, record)
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
            sha, size = _sha256_stream(image.save(chunk_size=SAVE_CHUNK_BYTES, named=False), sink)
        members[IMAGE] = {"sha256": sha, "size": size}
        progress("save image", 1, 1)
        written = _Written(size + (digest.bytes if digest else 0)
                           + sum(a.size for _, a in artifacts),
                           lambda done, total: progress("write", done, total))
        with _writing(partial, output) as tar:
            record_bytes = record_json(record).encode()
            _add_bytes(tar, RECORD, record_bytes)
            members[RECORD] = {"sha256": hashlib.sha256(record_bytes).hexdigest(),
                               "size": len(record_bytes)}
            written.add(tar, tmp_image, IMAGE)
            base = dataset if dataset is None or dataset.is_dir() else dataset.parent
            for entry in digest.files if digest else ():
                rel = entry.path.removeprefix("./") if dataset.is_dir() else dataset.name
                name = f"{DATASET}/{rel}"
                written.add(tar, base / rel, name)
                members[name] = {"sha256": entry.sha256, "size": entry.size}
            for file, artifact in artifacts:
                name = f"{ARTIFACTS}/{file.relative_to(store.run_dir(record.id) / 'out').as_posix()}"
                written.add(tar, file, name)
                members[name] = {"sha256": artifact.sha256, "size": artifact.size}
            manifest = {"schema": ARCHIVE_SCHEMA, "run_id": record.id, "created_at": utc_now(),
                        "dataset_kind": digest.kind if digest else NO_DATASET,
                        "members": members}
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


def _artifacts_as_recorded(store: Store, record) -> list[tuple[Path, object]]:
    """The run's artifact files, each checked against its recorded hash: an archive carries the
    model with its proof, never a file that was changed since."""
    out = store.run_dir(record.id) / "out"
    found = []
    for name, artifact in sorted((record.outputs.artifacts if record.outputs else {}).items()):
        file = out / name
        try:
            if file.is_symlink() or sha256_file(file) != (artifact.sha256, artifact.size):
                raise PinMismatch(f"the artifact {name} of run {record.id} no longer matches its "
                                  "record (`reprun runs verify` says more); refusing to archive it.")
        except OSError as exc:
            raise PinMismatch(f"the artifact {name} of run {record.id} cannot be read "
                              f"({exc.strerror or exc}); refusing to archive the run.") from None
        found.append((file, artifact))
    return found


# What _writing understands, and so what `reprun archive -o` accepts.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2", ".tar.zst")


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
            # From the open file, not the path: a dataset link is carried as the file the job
            # reads through it, so the archived dataset hashes to the same pin.
            tar.addfile(tar.gettarinfo(arcname=name, fileobj=source), _Reading(source, self._count))

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


@contextlib.contextmanager
def _writing(partial: Path, output: Path):
    """A tar compressed as the name says (.tar.gz or .tgz, .tar.xz, .tar.bz2, .tar.zst), else
    plain. gzip at level 6, gzip's own default: 0.29 of the example image's size, at 45 MB/s
    here. zstd at level 3 on every core: about gzip's size, several times its speed."""
    suffix = compression_of(output)
    if suffix == "zst":
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        with open(partial, "wb") as raw, compressor.stream_writer(raw, closefd=False) as packed, \
                tarfile.open(fileobj=packed, mode="w|") as tar:
            yield tar
        return
    modes = {"gz": {"mode": "w:gz", "compresslevel": 6}, "xz": {"mode": "w:xz"},
             "bz2": {"mode": "w:bz2"}}
    with tarfile.open(partial, **modes.get(suffix, {"mode": "w"})) as tar:
        yield tar


def compression_of(output: Path) -> str | None:
    """How an archive's name says it is compressed (gz, xz, bz2, zst), in any case; None: plain."""
    suffix = output.name.lower().rsplit(".", 1)[-1]
    return {"tgz": "gz"}.get(suffix, suffix) if suffix in ("gz", "tgz", "xz", "bz2", "zst") else None


ZSTD_LEVEL = 3


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


def _archived_dataset(path: Path, target: Path, manifest: dict, record: RunRecord) -> Path | None:
    """The extracted dataset, checked against the record; None for a job without one."""
    if record.inputs.dataset is None:
        if manifest.get("dataset_kind") != NO_DATASET or (target / DATASET).exists():
            raise _damaged(path, "it holds a dataset its record does not name")
        return None
    if manifest.get("dataset_kind") == NO_DATASET:
        raise _damaged(path, "it has no dataset")
    dataset = target / DATASET
    if manifest.get("dataset_kind") == "file":
        dataset = next(dataset.iterdir())
    if hash_dataset(dataset).sha256 != record.inputs.dataset.sha256:
        raise _damaged(path, "its dataset does not hash to the one its record names")
    return dataset


def load_archive(path: Path, store: Store, *, client, accept: Accept,
                 progress: Progress | None = None) -> LoadedArchive:
    """Check the archive's paths and sizes, extract it with a ceiling while hashing every
    member, let `accept` refuse the record, and only then load the image, without its tags.

    The extracted dataset stays under the store (the replayed record points at it); a refused
    archive leaves nothing behind, in the store or in the engine.
    """
    import docker.errors
    if not path.is_file():      # a wrong name is a bad invocation, not a damaged archive
        raise UsageError(f"there is no archive file at {path}"
                         + (" (it is a folder)" if path.is_dir() else "") + ".")
    progress = progress or (lambda *_: None)
    target = store.root / "archives" / f"{_safe_stem(path)}-{secrets.token_hex(3)}"
    target.mkdir(parents=True)
    loaded_image: list[str] = []
    try:
        manifest = _check_listing(path, store)
        _extract(path, target, manifest, progress)
        record = parse_record((target / RECORD).read_text(encoding="utf-8", errors="replace"),
                              f"the record in the archive {path}")
        dataset = _archived_dataset(path, target, manifest, record)
        accepted = accept(record, dataset)
        progress("load image", 0, 1)
        image_id = _load_image(path, target / IMAGE, record.inputs.image.id, client, loaded_image)
        progress("load image", 1, 1)
        return LoadedArchive(record=record, dataset_path=dataset, image_id=image_id,
                             accepted=accepted)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        for image_id in loaded_image:       # loaded by this call alone: nothing else knew it
            with contextlib.suppress(docker.errors.APIError):
                client.images.remove(image_id, force=True, noprune=False)
        raise
    finally:
        (target / IMAGE).unlink(missing_ok=True)   # in the engine now, or refused


# A member's declared sizes are what extraction may write: together they may not pass the free
# space of the store, nor this many times the archive's own size. Real runs compress 3-10x
# (images are tars of binaries, datasets are text); 100x is room enough and stops a bomb.
MAX_EXPANSION = 100
MAX_MANIFEST_BYTES = 16 << 20
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_COMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, zstandard.ZstdError)


def _safe_stem(path: Path) -> str:
    stem = path.name.split(".", 1)[0]
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:64] or "archive"


@contextlib.contextmanager
def _stream(path: Path):
    """The archive's members, read front to back once: tar, gz, xz, bz2 or zstd by its bytes."""
    with open(path, "rb") as raw:
        if raw.read(4) == _ZSTD_MAGIC:
            raw.seek(0)
            with zstandard.ZstdDecompressor().stream_reader(raw) as plain, \
                    tarfile.open(fileobj=plain, mode="r|") as tar:
                yield tar
        else:
            raw.seek(0)
            with tarfile.open(fileobj=raw, mode="r|*") as tar:
                yield tar


def _plain_name(name: str) -> bool:
    parts = name.split("/")
    return bool(name) and not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _check_listing(path: Path, store: Store) -> dict:
    """Read the headers (and the manifest) without writing anything: every entry a plain file or
    folder with a plain relative name, listed once, its size the manifest's, and all of them
    within the ceiling."""
    ceiling = min(MAX_EXPANSION * max(path.stat().st_size, 1 << 20), store.free_bytes())
    sizes: dict[str, int] = {}
    manifest_bytes = None
    total = 0
    try:
        with _stream(path) as tar:
            for member in tar:
                name = member.name.rstrip("/") if member.isdir() else member.name
                if not (member.isfile() or member.isdir()) or not _plain_name(name):
                    raise _damaged(path, f"it holds an unexpected entry {member.name!r}")
                if member.isdir():
                    continue
                if name in sizes:
                    raise _damaged(path, f"it holds {name!r} twice")
                sizes[name] = member.size
                total += member.size
                if total > ceiling:
                    raise _damaged(path, f"it would expand to more than {ceiling >> 20} MiB "
                                         f"(at most {MAX_EXPANSION}x its size, within the "
                                         "store's free space); it was not extracted")
                if name == MANIFEST:
                    if member.size > MAX_MANIFEST_BYTES:
                        raise _damaged(path, f"its {MANIFEST} is {member.size} bytes")
                    manifest_bytes = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError, *_COMPRESSION_ERRORS) as exc:
        raise _damaged(path, f"it cannot be read as an archive ({exc})") from None
    if manifest_bytes is None:
        raise _damaged(path, f"its {MANIFEST} is missing")
    try:
        manifest = json.loads(manifest_bytes)
    except ValueError:
        raise _damaged(path, f"its {MANIFEST} is unreadable") from None
    members = _members(path, manifest)
    for name, member in members.items():
        if not _plain_name(name) or not (name in (RECORD, IMAGE)
                                         or name.startswith((DATASET + "/", ARTIFACTS + "/"))):
            raise _damaged(path, f"its {MANIFEST} names {name!r}, which is no member an archive "
                                 "holds; nothing outside the archive is ever read")
        if name not in sizes:
            raise _damaged(path, f"{name} is missing")
        if sizes[name] != member["size"]:
            raise _damaged(path, f"{name} is {sizes[name]} bytes, its manifest says "
                                 f"{member['size']}")
    for required in (RECORD, IMAGE):
        if required not in members:
            raise _damaged(path, f"it has no {required}")
    if manifest.get("dataset_kind") != NO_DATASET and \
            not any(name.startswith(DATASET + "/") for name in members):
        raise _damaged(path, "it has no dataset")
    extra = set(sizes) - set(members) - {MANIFEST}
    if extra:
        raise _damaged(path, f"it holds files its manifest does not list: {', '.join(sorted(extra))}")
    return manifest


def _extract(path: Path, target: Path, manifest: dict, progress: Progress) -> None:
    """Write each listed member into `target`, never more than its declared size, hashing it
    on the way; a member whose bytes are not its manifest's is refused."""
    members = manifest["members"]
    done = 0
    try:
        with _stream(path) as tar:
            for member in tar:
                if not member.isfile() or member.name not in members:
                    continue
                expected = members[member.name]
                destination = target / member.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                digest, size = hashlib.sha256(), 0
                fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o644)
                with os.fdopen(fd, "wb") as sink:
                    while size < expected["size"] and (chunk := source.read(
                            min(1 << 20, expected["size"] - size))):
                        digest.update(chunk)
                        sink.write(chunk)
                        size += len(chunk)
                if size != expected["size"] or digest.hexdigest() != expected["sha256"]:
                    raise _damaged(path, f"{member.name} does not match its recorded sha256")
                done += 1
                progress("verify", done, len(members))
    except (tarfile.TarError, EOFError, *_COMPRESSION_ERRORS) as exc:
        raise _damaged(path, f"it cannot be read as an archive ({exc})") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InfrastructureError(f"the store has no room to extract the archive {path}: "
                                      f"{exc.strerror}.") from None
        raise _damaged(path, f"it cannot be extracted ({exc.strerror or exc})") from None
    if done != len(members):
        raise _damaged(path, "it ended before all its members were read")


def _image_tar_without_tags(path: Path, image_tar: Path, expected_id: str) -> Path:
    """A copy of the saved image that names no tag (manifest.json RepoTags, the legacy
    `repositories` file, OCI ref-name annotations), after checking that its one image's
    config hashes to the recorded ID: a load then changes no tag of the engine."""
    stripped = image_tar.with_name(image_tar.name + ".untagged")
    try:
        with tarfile.open(image_tar, "r:") as source:
            names = source.getnames()
            if "manifest.json" not in names:
                raise _damaged(path, "its image.tar has no manifest.json")
            manifest = json.loads(source.extractfile("manifest.json").read(MAX_MANIFEST_BYTES))
            if not (isinstance(manifest, list) and len(manifest) == 1
                    and isinstance(manifest[0], dict) and isinstance(manifest[0].get("Config"), str)):
                raise _damaged(path, "its image.tar does not hold exactly one image")
            config = source.extractfile(manifest[0]["Config"])
            if config is None:
                raise _damaged(path, "its image.tar names a config it does not hold")
            config_id = "sha256:" + hashlib.sha256(config.read()).hexdigest()
            if config_id != expected_id:
                raise _damaged(path, f"its image is {config_id}, not the recorded {expected_id}")
            manifest[0]["RepoTags"] = None
            with tarfile.open(stripped, "w:") as sink:
                for member in source:
                    if member.name in ("repositories",):
                        continue
                    if member.name == "manifest.json":
                        _add_bytes(sink, member.name, json.dumps(manifest).encode())
                    elif member.name == "index.json":
                        _add_bytes(sink, member.name, _index_without_names(
                            source.extractfile(member).read(MAX_MANIFEST_BYTES)))
                    else:
                        sink.addfile(member, source.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, KeyError, ValueError, OSError) as exc:
        stripped.unlink(missing_ok=True)
        raise _damaged(path, f"its image.tar cannot be read ({exc})") from None
    except BaseException:
        stripped.unlink(missing_ok=True)
        raise
    return stripped


_NAME_ANNOTATIONS = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


def _index_without_names(data: bytes) -> bytes:
    index = json.loads(data)
    for entry in index.get("manifests", []) if isinstance(index, dict) else []:
        annotations = entry.get("annotations") if isinstance(entry, dict) else None
        if isinstance(annotations, dict):
            for key in _NAME_ANNOTATIONS:
                annotations.pop(key, None)
    return json.dumps(index).encode()


def _load_image(path: Path, image_tar: Path, expected_id: str, client,
                loaded: list[str]) -> str:
    import docker.errors
    stripped = _image_tar_without_tags(path, image_tar, expected_id)
    try:
        had_it = _engine_has(client, expected_id)
        with open(stripped, "rb") as handle:
            images = client.images.load(handle)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"the engine could not load the archived image: {exc}") from None
    finally:
        stripped.unlink(missing_ok=True)
    ids = {image.id for image in images}
    if not had_it:
        loaded.extend(sorted(ids | {expected_id}))
    if ids - {expected_id} or not _engine_has(client, expected_id):
        raise _damaged(path, f"its image loaded as {', '.join(sorted(ids)) or 'nothing'}, not "
                             f"the recorded {expected_id}")
    loaded.clear()
    return expected_id


def _engine_has(client, image_id: str) -> bool:
    import docker.errors
    try:
        client.images.get(image_id)
        return True
    except docker.errors.ImageNotFound:
        return False
