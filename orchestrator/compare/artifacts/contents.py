"""The comparators, declared, and the one place a comparator gives way to bitwise."""
from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from orchestrator.compare.artifacts import arrays, predictions, text
from orchestrator.compare.artifacts.diffoscope import readable_diff
from orchestrator.compare.artifacts.findings import (
    DIFFERS, CannotCompare, ContentFindings, excerpt)
from orchestrator.compare.artifacts.in_image import InImageComparator
from orchestrator.compare.artifacts.policy import BITWISE, PREDICTIONS, ArtifactPolicy
from orchestrator.errors import ReprunError
from orchestrator.execution.hermetic import RunPaths
from orchestrator.execution.job import Executor
from orchestrator.records import RunRecord

HostCompare = Callable[[Path, Path, ArtifactPolicy], ContentFindings]


@dataclass(frozen=True)
class Comparator:
    kind: str
    patterns: tuple[str, ...]        # file names it claims, case-insensitive
    on_host: HostCompare | None = None
    in_image: bool = False           # a program, not data: loaded only inside the job's image


COMPARATORS = (
    Comparator("numpy", ("*.npz",), on_host=arrays.compare_npz),
    Comparator("numpy", ("*.npy",), on_host=arrays.compare_npy),
    Comparator("safetensors", ("*.safetensors",), on_host=arrays.compare_safetensors),
    Comparator("json", ("*.json",), on_host=text.compare_json),
    Comparator("yaml", ("*.yaml", "*.yml"), on_host=text.compare_yaml),
    Comparator("csv", ("*.csv", "*.tsv"), on_host=text.compare_csv),
    Comparator("text", ("*.txt", "*.log", "*.md", "*.jsonl", "*.ndjson"),
               on_host=text.compare_text),
    Comparator("torch", ("*.pt", "*.pth"), in_image=True),
    Comparator("pickle", ("*.pkl", "*.pickle", "*.joblib"), in_image=True),
    Comparator("xgboost", ("*.ubj",), in_image=True),
)
PREDICTIONS_COMPARATOR = Comparator("predictions", (), on_host=predictions.compare_predictions)


def comparator_for(name: str, policy: ArtifactPolicy) -> Comparator | None:
    if policy.how == PREDICTIONS:
        return PREDICTIONS_COMPARATOR
    base = name.rsplit("/", 1)[-1].lower()
    return next((c for c in COMPARATORS if any(fnmatch.fnmatch(base, p) for p in c.patterns)),
                None)


class ArtifactContents:
    """Reads two runs' artifacts out of the store to compare what they hold.

    `folder_of` gives a run's outputs folder; `in_image`, when given, compares model files
    inside the job's image (without it they are compared bitwise, and the report says why).
    """

    def __init__(self, folder_of: Callable[[str], Path],
                 in_image: InImageComparator | None = None):
        self.folder_of = folder_of
        self.in_image = in_image

    def compare(self, name: str, a: RunRecord, b: RunRecord,
                policy: ArtifactPolicy) -> ContentFindings:
        """The findings for one artifact whose bytes differ between the runs."""
        comparator = comparator_for(name, policy)
        if comparator is None:
            return self._bitwise(name, a, b, "no comparator reads this kind of file")
        if policy.how == BITWISE and comparator.in_image:
            return self._bitwise(name, a, b, "its policy is bitwise, so the model is not "
                                 "loaded to compare its parameters")
        try:
            path_a, path_b = self._file(a, name), self._file(b, name)
            if comparator.in_image:
                if self.in_image is None:
                    raise CannotCompare(f"a {comparator.kind} file is a program; it is loaded "
                                        "only inside the job's image, and no engine was given "
                                        "to run one")
                found = self.in_image.compare(comparator.kind, name, path_a, path_b, a, b,
                                              policy)
            else:
                found = comparator.on_host(path_a, path_b, policy)
        except CannotCompare as reason:
            return self._bitwise(name, a, b, str(reason), kind=comparator.kind)
        except ReprunError as error:
            return self._bitwise(name, a, b, error.message, kind=comparator.kind)
        except (OSError, MemoryError, RecursionError, ValueError) as exc:
            return self._bitwise(name, a, b, f"{type(exc).__name__}: {exc}", kind=comparator.kind)
        if policy.how == BITWISE:
            # The comparator explains; the policy still asks for the same bytes.
            return replace(found, status=DIFFERS)
        return found

    def _file(self, record: RunRecord, name: str) -> Path:
        """The artifact in the run's outputs folder, refused if anything on its way is a link:
        the record names it, but the store's folder is not trusted to still hold that file."""
        folder = self.folder_of(record.id)
        path = folder
        for part in Path(name).parts:
            if part in ("..", "/"):
                raise CannotCompare(f"the artifact name {name!r} leaves the outputs folder")
            path = path / part
            if path.is_symlink():
                raise CannotCompare(f"run {record.id}'s {name} is now a link; refused")
        try:
            mode = os.stat(path, follow_symlinks=False).st_mode
        except FileNotFoundError:
            raise CannotCompare(f"run {record.id}'s {name} is no longer in the store") from None
        if not stat.S_ISREG(mode):
            raise CannotCompare(f"run {record.id}'s {name} is no longer a regular file")
        return path

    def _bitwise(self, name: str, a: RunRecord, b: RunRecord, reason: str,
                 kind: str = "bytes") -> ContentFindings:
        lines: list[str] = []
        try:
            lines, missing = readable_diff(self._file(a, name), self._file(b, name))
        except CannotCompare as why:
            missing = str(why)
        detail = "the bytes differ" + (f"; {missing}" if missing and kind == "bytes" else "")
        return ContentFindings(kind, DIFFERS, detail, excerpt=excerpt(lines),
                               fallback=reason)


def contents_in_store(store, open_executor: Callable[[], Executor] | None = None
                      ) -> ArtifactContents:
    """Artifacts read from the store's run folders; model files compared in their image on the
    local engine (where the store's folders can be mounted), opened when first needed."""
    def local_engine() -> Executor:
        from orchestrator.execution.local import LocalEngine
        return LocalEngine()
    return ArtifactContents(lambda run_id: RunPaths(store.run_dir(run_id)).outputs,
                            InImageComparator(open_executor or local_engine))
