"""Resolving a spec's image to the exact image that will run: pulled by digest, or built.

A pulled image is checked against its digest after the pull; a built image against the ID it was
locked to. Both the image ID and the repo digest go into the run record.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import docker
import docker.errors
import requests.exceptions

from orchestrator.errors import InfrastructureError, PinMismatch
from orchestrator.execution.local import engine_unreachable
from orchestrator.build_inputs import LABEL_BUILD_INPUTS, BuildInputs, build_inputs
from orchestrator.spec.model import ImageBuild

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
                  progress: ImageProgress | None = None,
                  builds: BuildCache | None = None,
                  leave_out: Iterable[Path] = ()) -> ResolvedImage:
    """`builds`: shared by the specs of one command, so that one context is built once.
    `leave_out`: reprun's own files in a build context (the spec, the store), not its inputs."""
    progress = progress or (lambda *_: None)
    try:
        if image_spec.ref:
            return _pull_pinned(client, image_spec.ref, progress)
        if image_spec.build is None:
            return _present(client, image_spec.digest)
        return _build(client, image_spec, spec_name, progress, builds, leave_out=leave_out)
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
    layers = LayerProgress()
    try:
        for event in client.api.pull(repository, tag=digest, stream=True, decode=True):
            if "error" in event:
                raise _pull_failure(repository, digest, event["error"])
            if layers.update(event):
                progress("pull", layers.done_bytes, layers.total_bytes, layers.summary())
    except docker.errors.APIError as exc:
        raise _pull_failure(repository, digest, exc.explanation or str(exc)) from None
    # Small layers arrive without byte counts; the image's own size closes the bar then.
    pulled = layers.done_bytes or _image_size(client, f"{repository}@{digest}")
    progress("pull", pulled, pulled, layers.summary())


def _image_size(client, reference: str) -> int:
    try:
        return int(client.images.get(reference).attrs.get("Size") or 0)
    except (docker.errors.DockerException, ValueError, TypeError):
        return 0


class LayerProgress:
    """Bytes of the layers an engine downloads, from its pull (or a build's FROM) events."""

    FINISHED = ("Download complete", "Pull complete", "Already exists")

    def __init__(self) -> None:
        self._sizes: dict[str, tuple[int, int]] = {}     # layer -> (bytes done, bytes in all)
        self._finished: set[str] = set()

    def update(self, event: dict) -> bool:
        """Take one event in; True when it said something about a layer."""
        layer, status = event.get("id"), event.get("status")
        if not (isinstance(layer, str) and isinstance(status, str)) or _names_the_image(layer):
            return False
        done, total = self._sizes.get(layer, (0, 0))
        detail = event.get("progressDetail") or {}
        if status == "Downloading" and isinstance(detail, dict):
            done = _count(detail.get("current"), done)
            total = _count(detail.get("total"), total)
        elif status in self.FINISHED:
            self._finished.add(layer)
            done = total
        self._sizes[layer] = (done, total)
        return True

    @property
    def done_bytes(self) -> int:
        return sum(done for done, _ in self._sizes.values())

    @property
    def total_bytes(self) -> int:
        """What is known of the total: layers still waiting have not said their size yet, so
        until every layer is finished the total stays above what is done."""
        total = sum(total for _, total in self._sizes.values())
        if len(self._finished) < len(self._sizes) and self.done_bytes >= total:
            return self.done_bytes + 1
        return total

    def summary(self) -> str:
        return f"{len(self._finished)}/{len(self._sizes)} layers"


def _names_the_image(layer: str) -> bool:
    """A status line about the image as a whole (its tag or digest), not one of its layers."""
    return ":" in layer or "@" in layer


def _count(value, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 \
        else fallback


def _pull_failure(repository: str, digest: str, message: str) -> Exception:
    if "manifest unknown" in message or "not found" in message.lower():
        return PinMismatch(
            f"the registry has no image {repository}@{digest} ({message}). The pinned digest is "
            "wrong, or the image was deleted; re-pin it with `reprun lock`, or replay from an "
            "archive.")
    return InfrastructureError(f"pulling {repository}@{digest} failed: {message}. Check that "
                               "the registry answers (`make engine` starts the local one).")


def resolve_for_lock(client: docker.DockerClient, image_spec, *, spec_name: str,
                     progress: ImageProgress | None = None,
                     builds: BuildCache | None = None,
                     leave_out: Iterable[Path] = ()) -> ResolvedImage:
    """For `lock` of a build: the pinned image while what went into it is unchanged, else a
    fresh build of the inputs as they are now (which `lock` then pins)."""
    try:
        return _build(client, image_spec, spec_name, progress or (lambda *_: None), builds,
                      relock=True, leave_out=leave_out)
    except requests.exceptions.ConnectionError as exc:
        raise engine_unreachable(exc) from None


def _build(client, image_spec, spec_name: str, progress: ImageProgress,
           builds: BuildCache | None = None, *, relock: bool = False,
           leave_out: Iterable[Path] = ()) -> ResolvedImage:
    """The image a spec's build pins: the pinned image itself while what went into it is
    unchanged (no rebuild: a rebuild without the build cache rarely gives the same ID), else a
    fresh build, which must give the pinned ID unless the spec is being locked again."""
    build = image_spec.build
    inputs = build_inputs(client, build, leave_out)
    unrecorded = False        # the pin is an image an older reprun built, without its inputs
    if image_spec.digest:
        pinned = _image_or_none(client, image_spec.digest)
        recorded = BuildInputs.from_label(pinned.labels.get(LABEL_BUILD_INPUTS)) \
            if pinned is not None else None
        if recorded is not None:
            if recorded.sha256 != inputs.sha256 and not relock:
                raise PinMismatch(
                    f"what goes into the build of {build.context} changed since the spec was "
                    f"locked to {image_spec.digest[:19]}: {'; '.join(inputs.changes_since(recorded))}. "
                    "The pinned image was built from the old inputs and is not run in their "
                    "place; run `reprun lock SPEC` to build and pin the new ones, or restore "
                    "the old files.")
            if recorded.sha256 == inputs.sha256:
                tag_by_id(client, pinned.id, spec_name)
                return _resolved_build(pinned, build)
        unrecorded = pinned is not None and recorded is None and not relock
    # Rebuilt as it was built, without the record of its inputs, the ID can still match.
    image_id = (builds or BuildCache()).build(client, build, inputs, spec_name, progress,
                                              record_inputs=not unrecorded)
    if image_spec.digest and image_id != image_spec.digest and not relock:
        if unrecorded:
            raise PinMismatch(
                f"building {build.context} produced image {image_id}, but the spec pins "
                f"{image_spec.digest}, which an older reprun built without recording what went "
                "into it, so what changed cannot be named. Inspect the build context, then "
                "re-pin with `reprun lock`, which records the inputs from then on.")
        raise PinMismatch(
            f"building {build.context} produced image {image_id}, but the spec pins "
            f"{image_spec.digest}, which is not in this engine to compare its inputs with. "
            "Restore the pinned image (`reprun rerun --from-archive`, `docker load`), or "
            "re-pin with `reprun lock` if the new build is intended.")
    return _resolved_build(client.images.get(image_id), build)


def _resolved_build(image, build: ImageBuild) -> ResolvedImage:
    digests = repo_digests(image)
    return ResolvedImage(id=image.id, ref=None, repo_digest=digests[0] if digests else None,
                         build_context=str(build.context))


def _image_or_none(client, image_id: str):
    try:
        return client.images.get(image_id)
    except docker.errors.ImageNotFound:
        return None


def id_tag(spec_name: str, image_id: str) -> str:
    """The tag that keeps a built image referenced: it names the image, so no later build
    moves it, and `docker image prune` never takes a pinned image for a dangling one."""
    return f"reprun/{spec_name}:{image_id.removeprefix('sha256:')[:12]}"


def tag_by_id(client, image_id: str, spec_name: str) -> None:
    repository, _, tag = id_tag(spec_name, image_id).rpartition(":")
    try:
        client.api.tag(image_id, repository, tag)
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"cannot tag the built image {image_id[:19]} as "
                                  f"{repository}:{tag}: {exc.explanation or exc}") from None


class BuildCache:
    """Builds each distinct build (context, Dockerfile, arguments, base) once and shares the
    image: `reprun check` over four specs of one context builds it once."""

    def __init__(self, built: dict[str, str] | None = None) -> None:
        self._built = built if built is not None else {}    # image IDs by build inputs

    def build(self, client, build: ImageBuild, inputs: BuildInputs, spec_name: str,
              progress: ImageProgress, *, record_inputs: bool = True) -> str:
        key = f"{inputs.sha256} {record_inputs}"
        image_id = self._built.get(key)
        if image_id is None or _image_or_none(client, image_id) is None:
            image_id = _run_build(client, build, inputs if record_inputs else None, progress)
            self._built[key] = image_id
        tag_by_id(client, image_id, spec_name)
        return image_id


def _step_words(instruction: str) -> str:
    # The legacy builder adds the label as a last step, whose text is the whole record.
    if instruction.startswith(f"LABEL {LABEL_BUILD_INPUTS}="):
        return "record what went into the build"
    return instruction


class FreshBuilds:
    """Builds without cache, each distinct build once, for `reprun check`: four specs over one
    context share one rebuild (also when checked in parallel), removed once all are compared."""

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.pinned: set[str] = set()      # images the checked specs pin: never removed

    def build(self, client, build: ImageBuild, progress: ImageProgress | None = None) -> str:
        inputs = build_inputs(client, build)
        with self._guard:
            lock = self._locks.setdefault(inputs.sha256, threading.Lock())
        with lock:
            if inputs.sha256 not in self._ids:
                self._ids[inputs.sha256] = _run_build(client, build, inputs,
                                                      progress or (lambda *_: None),
                                                      nocache=True)
            return self._ids[inputs.sha256]

    def remove(self, client) -> None:
        """The fresh layers must not become the build cache the pinned IDs are rebuilt from."""
        for image_id in set(self._ids.values()) - self.pinned:
            try:
                # force: a swarm backend tagged it when pushing it for its nodes.
                client.images.remove(image_id, noprune=False, force=True)
            except docker.errors.APIError:
                pass


def _run_build(client, build: ImageBuild, inputs: BuildInputs | None, progress: ImageProgress,
               *, nocache: bool = False) -> str:
    """The ID of a fresh build; `inputs` are written into the image (None: as older reprun
    built, so that its images can still be rebuilt to their pinned IDs)."""
    tail: list[str] = []
    image_id = None
    try:
        events = client.api.build(
            path=str(build.context), dockerfile=build.dockerfile, buildargs=dict(build.args),
            rm=True, forcerm=True, decode=True,
            labels={LABEL_BUILD_INPUTS: inputs.to_label()} if inputs is not None else None,
            nocache=nocache,
            network_mode="host")  # a build that fetches packages uses the host network
        base_layers = LayerProgress()     # a base the engine does not hold is pulled first
        for event in events:
            if "error" in event:
                raise InfrastructureError(
                    f"building {build.context} failed: {event['error'].strip()}",
                    details=tail[-10:])
            if base_layers.update(event):
                progress("pull", base_layers.done_bytes, base_layers.total_bytes,
                         base_layers.summary())
            line = (event.get("stream") or "").strip()
            if line:
                tail.append(line)
                step = re.match(r"Step (\d+)/(\d+) : (.*)", line)
                if step:
                    progress("build", int(step[1]), int(step[2]), _step_words(step[3]))
            if event.get("aux", {}).get("ID"):
                image_id = event["aux"]["ID"]
    except docker.errors.APIError as exc:
        raise InfrastructureError(f"building {build.context} failed: "
                                  f"{exc.explanation or exc}", details=tail[-10:]) from None
    except requests.exceptions.ConnectionError as exc:
        raise engine_unreachable(exc) from None
    if image_id is None:
        raise InfrastructureError(f"building {build.context} gave no image ID; the engine's "
                                  "answer ended early.", details=tail[-10:])
    return image_id
