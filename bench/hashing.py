"""Dataset hashing speed against the baselines anyone would reach for, measured in the same run.

Data: one 1 GiB file and a tree of 10,000 files x 100 KiB, generated under a temporary folder
(REPRUN_BENCH_DIR to choose where) that is removed afterwards. Baselines: coreutils `sha256sum`
(the pinned pipeline itself, for the tree) and Python's hashlib over the same bytes in one
stream, one file after the other. "Cold" runs follow a `drop_caches`, when this process may
write it (root outside a restricted container); otherwise only warm figures are given.

Ratios are baseline seconds / reprun seconds: above 1 means reprun is faster.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from orchestrator.dataset import BLOCK, HashCache, hash_dataset, verify_dataset

BIG_FILE_BYTES = 1 << 30
TREE_FILES = 10_000
TREE_FILE_BYTES = 100 << 10
WARM_REPEATS = 3
AN_HOUR_AGO = time.time() - 3600

PIPELINE = '(cd "$1" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum'


def say(text: str) -> None:
    print(f"[hashing] {text}", file=sys.stderr, flush=True)


def drop_page_cache() -> bool:
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")          # page cache, dentries and inodes: the tree's stats go cold too
        return True
    except OSError:
        return False


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5\n")          # resets VmHWM (Linux >= 4.0)
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def generate(root: Path) -> tuple[Path, Path]:
    big = root / "big.bin"
    with open(big, "wb") as f:
        for _ in range(BIG_FILE_BYTES // (4 << 20)):
            f.write(os.urandom(4 << 20))
    tree = root / "tree"
    for i in range(TREE_FILES):
        folder = tree / f"part-{i // 100:03}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"sample-{i:05}.bin").write_bytes(os.urandom(TREE_FILE_BYTES))
    # Real datasets are old; files written in the last seconds are deliberately not cached.
    for path in [big, *tree.rglob("*.bin")]:
        os.utime(path, (AN_HOUR_AGO, AN_HOUR_AGO))
    os.sync()
    return big, tree


def hashlib_stream(paths: list[Path]) -> list[str]:
    """One thread, one file after the other, the same 1 MiB reusable buffer reprun uses."""
    view = memoryview(bytearray(BLOCK))
    out = []
    for path in paths:
        digest = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(view):
                digest.update(view[:n])
        out.append(digest.hexdigest())
    return out


def sha256sum_file(path: Path) -> str:
    return subprocess.run(["sha256sum", str(path)], check=True, capture_output=True).stdout.split()[0].decode()


def sha256sum_tree(tree: Path) -> str:
    return subprocess.run(["bash", "-c", PIPELINE, "bench", str(tree)],
                          check=True, capture_output=True).stdout.split()[0].decode()


class Measure:
    def __init__(self, cold: bool):
        self.cold = cold
        self.peak_rss = 0

    def once(self, fn: Callable[[], object], *, cold: bool, ours: bool = False) -> tuple[float, object]:
        if cold:
            drop_page_cache()
        if ours:
            reset_peak_rss()
        seconds, result = timed(fn)
        if ours:
            self.peak_rss = max(self.peak_rss, peak_rss_bytes())
        return seconds, result

    def warm(self, fn: Callable[[], object], *, ours: bool = False) -> tuple[float, object]:
        self.once(fn, cold=False, ours=ours)      # fills the page cache
        runs = [self.once(fn, cold=False, ours=ours) for _ in range(WARM_REPEATS)]
        return statistics.median(s for s, _ in runs), runs[-1][1]


def row(name: str, seconds: float | None, baseline: str | None, baseline_seconds: float | None,
        goal: str = "", minimum: float | None = None) -> tuple:
    ratio = baseline_seconds / seconds if seconds and baseline_seconds else None
    met = None if minimum is None or ratio is None else ratio >= minimum
    return (name, seconds, baseline, baseline_seconds, ratio, goal, met)


def run() -> list[tuple]:
    parent = os.environ.get("REPRUN_BENCH_DIR")
    root = Path(tempfile.mkdtemp(prefix="reprun-bench-", dir=parent))
    try:
        return _run(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(root: Path) -> list[tuple]:
    say(f"generating 1 GiB file and {TREE_FILES:,} x {TREE_FILE_BYTES >> 10} KiB files under {root}")
    big, tree = generate(root)
    cold = drop_page_cache()
    say("page cache dropped before each cold run" if cold
        else "drop_caches not writable: page cache warm, cold runs skipped")
    m = Measure(cold)
    tree_files = sorted(tree.rglob("*.bin"), key=lambda p: os.fsencode(p))
    rows: list[tuple] = []

    say("1 GiB file")
    expected = sha256sum_file(big)
    for label, is_cold in (("cold", True), ("warm", False)) if cold else (("warm", False),):
        run_once = (lambda fn, ours=False: m.once(fn, cold=True, ours=ours)) if is_cold else m.warm
        t_sum, got_sum = run_once(lambda: sha256sum_file(big))
        t_lib, got_lib = run_once(lambda: hashlib_stream([big])[0])
        t_us, digest = run_once(lambda: hash_dataset(big), ours=True)
        assert got_sum == got_lib == digest.sha256 == expected, "1 GiB file: hashes disagree"
        rows.append(row(f"1 GiB file, {label} page cache", t_us, "hashlib, one stream", t_lib,
                        "≥ 0.9×", 0.9))
        rows.append(row(f"1 GiB file, {label} page cache", t_us, "sha256sum", t_sum))
        if not is_cold:
            big_stream_rate = BIG_FILE_BYTES / t_lib

    say(f"tree of {TREE_FILES:,} files")
    expected = sha256sum_tree(tree)
    for label, is_cold in (("cold", True), ("warm", False)) if cold else (("warm", False),):
        run_once = (lambda fn, ours=False: m.once(fn, cold=True, ours=ours)) if is_cold else m.warm
        t_sum, got_sum = run_once(lambda: sha256sum_tree(tree))
        t_lib, _ = run_once(lambda: hashlib_stream(tree_files))
        t_us, digest = run_once(lambda: hash_dataset(tree), ours=True)
        assert got_sum == digest.sha256 == expected, "tree: hashes disagree"
        name = f"tree 10k x 100 KiB, {label} page cache, {os.cpu_count()} workers"
        rows.append(row(name, t_us, "hashlib, one stream, file after file", t_lib,
                        *(("≥ 1.6×", 1.6) if not is_cold else ("",))))
        rows.append(row(name, t_us, "sha256sum pipeline (the pin's definition)", t_sum))
        if not is_cold:
            rows.append(row(name, t_us, "hashlib one-stream rate on the 1 GiB file",
                            TREE_FILES * TREE_FILE_BYTES / big_stream_rate))

    say("re-verify with the cache")
    cache = HashCache(root / "cache.sqlite")
    t_fill, filled = m.once(lambda: hash_dataset(tree, cache=cache), cold=cold, ours=True)
    assert filled.cache_hits == 0
    rows.append(row(f"tree, first hash filling the cache, {'cold' if cold else 'warm'} page cache",
                    t_fill, None, None))
    t_warm, again = m.warm(lambda: verify_dataset(tree, expected, cache=cache), ours=True)
    assert again.cache_hits == TREE_FILES and again.bytes_read == 0, "re-verify read files again"
    rows.append(("tree, re-verify unchanged (all cache hits)", t_warm, None, None, None, "< 0.3 s",
                 t_warm < 0.3))
    if cold:
        t_meta, _ = m.once(lambda: verify_dataset(tree, expected, cache=cache), cold=True, ours=True)
        rows.append(("tree, re-verify unchanged, inodes not cached", t_meta, None, None, None, "", None))

    rss = m.peak_rss / (1 << 20)
    rows.append((f"peak RSS while hashing: {rss:.0f} MiB", None, None, None, None, "< 200 MiB", rss < 200))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as harness
    sys.exit(harness.main(["hashing"]))
