"""Pinned datasets: the sha256 of a file, or the tree hash of a folder, checked before a run.

The public entry points: `hash_dataset` and `verify_dataset`. What the hash is (the coreutils
pipeline anyone can run) lives in digest.py, the cache of file hashes in cache.py, the walk in
walk.py and the parallel reading in parallel.py.
"""
from __future__ import annotations

import functools
import gc
import os
import re
import stat
import time
from operator import attrgetter
from pathlib import Path
from typing import Callable

from orchestrator.dataset.cache import RACY_NS, HashCache, file_identity
from orchestrator.dataset.digest import (DatasetDigest, FileEntry, ManifestDiff, diff_manifests,
                                         tree_sha256, tree_sha256_of_lines)
from orchestrator.dataset.parallel import Listed, ParallelHashing, default_workers
from orchestrator.dataset.walk import (LISTED_PER_KIND, FoundFile, and_more, resolve_dataset,
                                       walk_dataset)
from orchestrator.errors import InfrastructureError, PinMismatch, SpecError

__all__ = ["DatasetDigest", "FileEntry", "HashCache", "ManifestDiff", "diff_manifests",
           "hash_dataset", "tree_sha256", "verify_dataset"]

Progress = Callable[[int, int], None]

_HEX64 = re.compile(r"[0-9a-f]{64}")
_by_rel = attrgetter("rel")      # byte order of the paths, as `LC_ALL=C sort -z`


def _collector_paused(fn):
    """Run fn with the cyclic garbage collector off. A tree's walk makes a few acyclic tuples
    per file, and every 700 of them set off a collection; one of those is a full pass over
    every object the process holds (about 20 ms of reprun's CPU per 10,000 files, against the
    helpers that hash). Reference counting still frees all of them."""
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:     # a concurrent call that found it off leaves it to the first
                gc.enable()
    return paused


@_collector_paused
def hash_dataset(path: Path, *, cache: HashCache | None = None, progress: Progress | None = None,
                 workers: int | None = None) -> DatasetDigest:
    """Hash a dataset file (as `sha256sum FILE`) or folder (the coreutils tree hash).

    With a cache, files unchanged since they were last hashed are not read, the new hashes are
    written back in one transaction, and the dataset's manifest is remembered. `progress` is
    called from this thread now and then with (bytes done, bytes in total), last with done ==
    total.
    """
    path = Path(path)
    started_ns = time.time_ns()
    root, st = resolve_dataset(path)
    if stat.S_ISDIR(st.st_mode):
        kind, found = "tree", walk_dataset(path, root)
    elif stat.S_ISREG(st.st_mode):
        kind, found = "file", iter([FoundFile(os.fsencode(path.name or os.path.basename(root)), root, st)])
    else:
        raise SpecError(f"the dataset {path} is neither a regular file nor a folder")

    cached = cache.entries(root, kind == "tree") if cache is not None else {}
    hashing = ParallelHashing(workers or default_workers(), not_after_ns=started_ns - RACY_NS)
    files: list[FoundFile] = []
    known: dict[int, str] = {}
    try:
        for i, f in enumerate(found):
            files.append(f)
            hit = cached.get(f.abs)
            if hit is not None and hit[1:6] == file_identity(f.st):
                known[i] = hit[6]
            else:
                hashing.submit(i, f)

        total = sum(f.st.st_size for f in files)
        hit_bytes = sum(files[i].st.st_size for i in known)

        def report(_: int) -> None:
            if progress is not None:
                progress(min(hit_bytes + hashing.bytes_read(), total), total)

        report(0)
        hashed = hashing.finish(report)
        if len(hashed) + len(known) != len(files):     # a digest must never skip a file
            raise InfrastructureError(f"hashing the dataset {path} lost track of "
                                      f"{len(files) - len(hashed) - len(known)} of its files")
    except BaseException:
        hashing.abandon()
        raise

    listed = sorted([*hashed.values(), *(Listed.of(files[i].rel, sha, files[i].st.st_size)
                                         for i, sha in known.items())],
                    key=_by_rel)
    digest = DatasetDigest(
        sha256=tree_sha256_of_lines([x.line for x in listed]) if kind == "tree" else listed[0].entry.sha256,
        kind=kind,
        files=tuple(x.entry for x in listed),
        bytes=sum(x.entry.size for x in listed),
        cache_hits=len(known),
        bytes_read=sum(h.entry.size for h in hashed.values()),
    )
    if progress is not None:
        progress(digest.bytes, digest.bytes)

    if cache is not None:
        fresh = [(files[i].abs, *file_identity(files[i].st), h.entry.sha256)
                 for i, h in hashed.items() if h.cacheable]
        present = {f.abs for f in files}
        cache.update(fresh, [p for p in cached if p not in present])
        cache.remember_manifest(digest)
    return digest


def verify_dataset(path: Path, expected_sha256: str, *, cache: HashCache | None = None,
                   progress: Progress | None = None, workers: int | None = None) -> DatasetDigest:
    """Hash the dataset and refuse it (PinMismatch, exit 3) unless it matches its pin."""
    expected = expected_sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(expected):
        raise SpecError(f"the pinned dataset sha256 {expected_sha256!r} is not 64 hex digits")
    digest = hash_dataset(path, cache=cache, progress=progress, workers=workers)
    if digest.sha256 == expected:
        return digest

    what = "tree hash" if digest.kind == "tree" else "sha256"
    message = (f"the dataset {path} does not match its pin: the spec pins {what} {expected}, "
               f"the {'folder' if digest.kind == 'tree' else 'file'} now hashes to {digest.sha256}")
    earlier = cache.manifest_for(expected) if cache is not None else None
    if earlier is None:
        details = ["No earlier manifest of the pinned dataset is known here, so the files that "
                   "differ cannot be named."]
    else:
        details = _describe(diff_manifests(earlier, digest.files))
    details.append("If the change is intended, pin the new hash with `reprun lock`.")
    raise PinMismatch(message, details=details)


def _describe(diff: ManifestDiff) -> list[str]:
    lines: list[str] = []
    for what, names in (("changed", diff.changed), ("added", diff.added), ("removed", diff.removed)):
        lines += [f"{what}: {name}" for name in names[:LISTED_PER_KIND]]
        lines += and_more(len(names), what)
    if not lines:
        lines.append("The same files with the same contents: the pin itself was edited.")
    return lines