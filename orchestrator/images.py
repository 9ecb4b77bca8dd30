"""Resolving a spec's image to the exact image that will run: pulled by digest, or built.

A pulled image is checked against its digest after the pull; a built image against the ID it was
locked to. Both the image ID and the repo digest go into the run record.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import docker
import docker.errors
import requests.exceptions

from orchestrator.execution.local import engine_unreachable
from orchestrator.errors import InfrastructureError, PinMismatch

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# (phase, done, total, text): e.g. ("pull", 3, 8, "layer 1a2b… downloading")
ImageProgress = Callable[[str, int, int, str], None]


@dataclass(frozen=True)
class ResolvedImage:
    id: str
    ref: str | None
    repo_digest: str | None
    build_context: str | None


def split_reference(ref: str) -> tuple[str, str]:
    """`registry/name[:tag]@sha256:…` into (repository, digest); the digest wins over a tag."""
    name, _, digest = ref.partition("@")
    head, slash, last = name.rpartition("/")
    repository = f"{head}{slash}{last.partition(':')[0]}"
    return repository, digest


def repo_digests(image) -> list[str]:
    return list(image.attrs.get("RepoDigests") or [])


def resolve_image(client: docker.DockerClient, image_spec, *, spec_name: str,
                  progress: ImageProgress | None = None) -> ResolvedImage:
    progress = progress or (lambda *_: None)
    try:
        if image_spec.ref:
            return _pull_pinned(client, image_spec.ref, progress)
        if image_spec.build is None:
            return _present(client, image_spec.digest)
        return _build(client, image_spec, spec_name, progress)
    except requests.exceptions.ConnectionError as exc:
        raise engine_unreachable(exc) from None


def _pull_pinned(client, ref: str, progress: ImageProgress) -> ResolvedImage:
    repository, digest = split_reference(ref)
    try:
        image = client.images.get(ref)
    except docker.errors.ImageNotFound:
        image = None
    if image is None:
        _pull(client, repository, digest, progress)
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise PinMismatch(f"pulled {ref}, but the engine holds no image under that digest "
                              "afterwards; the registry served something else.") from None
    wanted = f"{repository}@{digest}"
    if wanted not in repo_digests(image):
        raise PinMismatch(
            f"the image {ref} does not carry the pinned digest: its repo digests are "
            f"{', '.join(repo_digests(image)) or 'none'}.")
    return ResolvedImage(id=image.id, ref=ref, repo_digest=wanted, build_context=None)


def _present(client, image_id: str) -> ResolvedImage:
    """An image known only by its ID (a locally built one, replayed): it must still be here."""
    try:
        image = client.images.get(image_id)
    except docker.errors.ImageNotFound:
        raise PinMismatch(
            f"the image {image_id} is no longer in the engine and was never pushed to a "
            "registry, so it cannot be fetched again. Replay the run from an archive "
            "(`reprun archive`, then `reprun rerun --from-archive`).") from None
    digests = repo_digests(image)
    return ResolvedImage(id=image.id, ref=None, repo_digest=digests[0] if digests else None,
                         build_context=None)


def _pull(client, repository: str, digest: str, progress: ImageProgress) -> None:
    layers: dict[str, str] = {}
    try:
        for event in client.api.pull(repository, tag=digest, stream=True, decode=True):
            if "error" in event:
                raise _pull_failure(repository, digest, event["error"])
            if event.get("id") and event.get("status"):
                layers[event["id"]] = event["status"]
                done = sum(1 for s in layers.values() if s in ("Pull complete", "Already exists"))
                progress("pull", done, len(layers), f"{event['id']} {event['status']}")
    except docker.errors.APIError as exc:
        raise _pull_failure(repository, digest, exc.explanation or str(exc)) from None


def _pull_failure(repository: str, digest: str, message: str) -> Exception:
    if "manifest unknown" in message or "not found" in message.lower():
        return PinMismatch(
            f"the registry has no image {repository}@{digest} ({message}). The pinned digest is "
            "wrong, or the image was deleted; re-pin it with `reprun lock`, or replay from an "
            "archive.")
    return InfrastructureError(f"pulling {repository}@{digest} failed: {message}. Check that "
                               "the registry answers (`make engine` starts the local one).")


def _build(client, image_spec, spec_name: str, progress: ImageProgress) -> ResolvedImage:
    build = image_spec.build
    tag = f"reprun/{spec_name}:built"
    image_id = build_image(client, build, tag=tag, progress=progress)
    if image_spec.digest and image_id != image_spec.digest:
        raise PinMismatch(
            f"building {build.context} produced image {image_id}, but the spec pins "
            f"{image_spec.digest}. The build context or its base changed; inspect it, then "
            "re-pin with `reprun lock` if the change is intended.")
    image = client.images.get(image_id)
    digests = repo_digests(image)
    return ResolvedImage(id=image_id, ref=None, repo_digest=digests[0] if digests else None,
                         build_context=str(build.context))


def build_image(client, build, *, tag: str | None = None, nocache: bool = False,
                progress: ImageProgress | None = None) -> str:
    """Build a spec's `image.build` and return the image ID; a failed build (or an engine that
    refuses it) is an infrastructure error (exit 4) with the build's last lines."""
    progress = progress or (lambda *_: None)
    tail: list[str] = []
    image_id = None
    try:
        events = client.api.build(
            path=str(build.context), dockerfile=build.dockerfile, buildargs=dict(build.args),
            tag=tag, nocache=nocache, rm=True, forcerm=True, decode=True,
            network_mode="host")  # a build that fetches packages uses the host network
        for event in events:
            if "error" in event:
                raise InfrastructureError(
                    f"building {build.context} failed: {event['error'].strip()}",
                    details=tail[-10:])
            line = (event.get("stream") or "").strip()
            if line:
                tail.append(line)
                step = re.match(r"Step (\d+)/(\d+) : (.*)", line)
                if step:
                    progress("build", int(step[1]), int(step[2]), step[3])
            if event.get("aux", {}).get("ID"):
                image_id = event["aux"]["ID"]
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"building {build.context} failed: "
                                  f"{exc.explanation or exc}", details=tail[-10:]) from None
    except requests.exceptions.ConnectionError as exc:
        raise engine_unreachable(exc) from None
    if image_id is None and tag is not None:
        image_id = client.images.get(tag).id
    if image_id is None:
        raise InfrastructureError(f"building {build.context} gave no image ID; the engine's "
                                  "answer ended early.", details=tail[-10:])
    return image_id
