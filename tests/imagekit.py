"""Tiny images for tests that remove, damage or vary images without touching the shared ones.

A statically linked busybox and its applets, imported with `docker import`: a couple of MiB,
no Python, made in a second and unique per call (the import time is part of the image ID).
"""
from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "echo", "printf", "grep", "uname", "env", "id", "hostname", "nproc",
           "sleep", "ls", "mkdir", "cp", "true", "false", "head", "tail", "dd", "sha256sum")


def tiny_rootfs_tar(files: dict[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("bin", "tmp", "etc", "out", "data"):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if folder == "tmp" else 0o755
            tar.addfile(info)
        tar.add(BUSYBOX, arcname="bin/busybox")
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        passwd = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n"
        for name, content in {"etc/passwd": passwd, "etc/os-release": b'ID=tiny\nPRETTY_NAME="tiny busybox"\n',
                              **(files or {})}.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def import_tiny_image(client, tag: str, files: dict[str, bytes] | None = None):
    """A fresh tiny image tagged `tag` (repository:tag)."""
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(tiny_rootfs_tar(files), repository=repository, tag=version)
    return client.images.get(tag)


def push(client, tag: str) -> str:
    """Push to the local registry; the pinned reference `repo@sha256:…` it got there."""
    repository, _, version = tag.rpartition(":")
    for event in client.api.push(repository, tag=version, stream=True, decode=True):
        if "error" in event:
            raise RuntimeError(event["error"])
    image = client.images.get(tag)
    return next(d for d in image.attrs["RepoDigests"] if d.startswith(repository + "@"))
