"""Dataset hashing speed against the baselines anyone would reach for, measured in the same run.

Data: one 1 GiB file and a tree of 10,000 files x 100 KiB, generated under a temporary folder
(REPRUN_BENCH_DIR to choose where) that is removed afterwards. Baselines: coreutils `sha256sum`
(the pinned pipeline itself, for the tree) and Python's hashlib over the same bytes in one
stream, one file after the other. "Cold" runs follow a `drop_caches`, when this process may
write it (root outside a restricted container); otherwise only warm figures are given.

The contenders take turns, and each keeps its fastest of several runs, so that other work on
the machine disturbs them alike; how much CPU that other work took is reported too. Ratios are
baseline seconds / reprun seconds: above 1 means reprun is faster.
"""
from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from orchestrator.dataset import helper as hash_worker
from orchestrator.dataset.parallel import BLOCK
from orchestrator.dataset.tree import HashCache, hash_dataset, verify_dataset

BIG_FILE_BYTES = 1 << 30
TREE_FILES = 10_000
TREE_FILE_BYTES = 100 << 10
WARM_REPEATS = 5
COLD_REPEATS = 2
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def helper_peak_rss_bytes(paths: list[Path]) -> int:
    """The high-water mark of one hashing helper process that hashed every file of the tree,
    read from its /proc entry while it waits for more (its rusage would count the memory of the
    process it was forked from)."""
    helper = subprocess.Popen([sys.executable, "-I", "-S", hash_worker.__file__],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    frames = b"".join(hash_worker.FRAME.pack(len(raw), TREE_FILE_BYTES) + raw
                      for raw in map(os.fsencode, paths))
    writer = threading.Thread(target=lambda: (helper.stdin.write(frames + hash_worker.FRAME.pack(0, 0)),
                                              helper.stdin.flush()))
    writer.start()
    answered = helper.stdout.read(len(paths) * hash_worker.RECORD.size)
    writer.join()
    assert len(answered) == len(paths) * hash_worker.RECORD.size, "the hashing helper failed"
    with open(f"/proc/{helper.pid}/status") as status:
        peak = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    helper.stdin.close()
    helper.wait()
    return peak


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall seconds, CPU seconds (this process and its children) and the result."""
    cpu, start = cpu_seconds(), time.perf_counter()
    result = fn()
    return time.perf_counter() - start, cpu_seconds() - cpu, result


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


class Machine:
    """CPU time the rest of the machine used meanwhile: other work skews every figure."""

    def __init__(self):
        self.start = self._ticks()

    @staticmethod
    def _ticks() -> tuple[float, float]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        busy = sum(fields) - fields[3] - fields[4]          # all but idle and iowait
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system + own.children_user + own.children_system

    def others_share(self, seconds: float) -> float:
        (busy0, own0), (busy1, own1) = self.start, self._ticks()
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / (seconds * (os.cpu_count() or 1))


def best_of(contenders: dict[str, Callable[[], object]], *, repeats: int, cold: bool,
            peak: list[int]) -> dict[str, tuple[float, float, object]]:
    """Runs the contenders in turn, `repeats` rounds, and keeps each one's fastest run.

    Taking turns spreads any load from elsewhere on the machine over all of them; the fastest
    run is the one least disturbed. Returns (wall seconds, least CPU seconds, result) for each.
    reprun's own runs (the "reprun" key) also record peak RSS.
    """
    best: dict[str, tuple[float, float, object]] = {}
    if not cold:
        for fn in contenders.values():      # fill the page cache
            fn()
    for _ in range(repeats):
        for name, fn in contenders.items():
            if cold:
                drop_page_cache()
            ours = name == "reprun"
            if ours:
                reset_peak_rss()
            seconds, cpu, result = timed(fn)
            if ours:
                peak[0] = max(peak[0], peak_rss_bytes())
            if name not in best:
                best[name] = (seconds, cpu, result)
            best[name] = (min(seconds, best[name][0]), min(cpu, best[name][1]), result)
    return best


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
    can_drop = drop_page_cache()
    say("page cache dropped before each cold run" if can_drop
        else "drop_caches not writable: page cache warm, cold runs skipped")
    conditions = [("cold", True, COLD_REPEATS), ("warm", False, WARM_REPEATS)] if can_drop \
        else [("warm", False, WARM_REPEATS)]
    tree_files = sorted(tree.rglob("*.bin"), key=lambda p: os.fsencode(p))
    workers = len(os.sched_getaffinity(0))
    peak = [0]
    rows: list[tuple] = []
    started, machine = time.perf_counter(), Machine()

    expected = sha256sum_file(big)
    for label, cold, repeats in conditions:
        say(f"1 GiB file, {label} page cache, best of {repeats}")
        best = best_of({"sha256sum": lambda: sha256sum_file(big),
                        "hashlib": lambda: hashlib_stream([big])[0],
                        "reprun": lambda: hash_dataset(big).sha256},
                       repeats=repeats, cold=cold, peak=peak)
        assert {r for _, _, r in best.values()} == {expected}, "1 GiB file: hashes disagree"
        name = f"1 GiB file, {label} page cache"
        rows.append(row(name, best["reprun"][0], "hashlib, one stream", best["hashlib"][0], "≥ 0.9×", 0.9))
        rows.append(row(name, best["reprun"][0], "sha256sum", best["sha256sum"][0]))
        if not cold:
            one_stream_rate = BIG_FILE_BYTES / best["hashlib"][0]

    expected = sha256sum_tree(tree)
    for label, cold, repeats in conditions:
        say(f"tree of {TREE_FILES:,} files, {label} page cache, best of {repeats}")
        best = best_of({"sha256sum": lambda: sha256sum_tree(tree),
                        "hashlib": lambda: hashlib_stream(tree_files),
                        "reprun": lambda: hash_dataset(tree).sha256},
                       repeats=repeats, cold=cold, peak=peak)
        assert best["sha256sum"][2] == best["reprun"][2] == expected, "tree: hashes disagree"
        name = f"10,000 x 100 KiB, {label} page cache, {workers} workers"
        # ≥ 1.2×: the tree hash is retired on purpose at what it gives (docs/benchmarks.md).
        goal = ("≥ 1.2×", 1.2) if not cold else ()
        rows.append(row(name, best["reprun"][0], "hashlib, one stream, file after file", best["hashlib"][0], *goal))
        rows.append(row(name, best["reprun"][0], "sha256sum pipeline (the pin's definition)", best["sha256sum"][0]))
        if not cold:
            rows.append(row(name, best["reprun"][0], "hashlib one-stream rate of the 1 GiB file",
                            TREE_FILES * TREE_FILE_BYTES / one_stream_rate))
            # CPU time is what other load on the machine cannot inflate: with two free cores the
            # wall time approaches it halved, plus the short serial part.
            rows.append(row("10,000 x 100 KiB, warm, CPU seconds", best["reprun"][1],
                            "hashlib, one stream, file after file", best["hashlib"][1]))

    say("re-verify with the cache")
    cache = HashCache(root / "cache.sqlite")
    fill = best_of({"reprun": lambda: hash_dataset(tree, cache=cache)}, repeats=1, cold=can_drop, peak=peak)
    assert fill["reprun"][2].cache_hits == 0
    again = best_of({"reprun": lambda: verify_dataset(tree, expected, cache=cache)},
                    repeats=WARM_REPEATS, cold=False, peak=peak)
    seconds, _, digest = again["reprun"]
    assert digest.cache_hits == TREE_FILES and digest.bytes_read == 0, "re-verify read files again"
    rows.append(("10,000 files, re-verify unchanged (all cache hits)", seconds, None, None, None,
                 "< 0.3 s", seconds < 0.3))
    if can_drop:
        seconds = best_of({"reprun": lambda: verify_dataset(tree, expected, cache=cache)},
                          repeats=1, cold=True, peak=peak)["reprun"][0]
        rows.append(("10,000 files, re-verify unchanged, inodes not cached", seconds, None, None, None, "", None))

    # The helper processes that hash a tree's small files count too: `workers` of them at once.
    rss = peak[0] / (1 << 20)
    helper = helper_peak_rss_bytes(tree_files) / (1 << 20)
    total = rss + workers * helper
    rows.append((f"peak RSS while hashing: {total:.0f} MiB ({rss:.0f} MiB reprun, {workers} helpers "
                 f"of at most {helper:.0f} MiB)", None, None, None, None, "< 200 MiB", total < 200))
    share = machine.others_share(time.perf_counter() - started)
    rows.append((f"CPU used by other processes meanwhile: {share:.0%}", None, None, None, None, "", None))
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import run as harness
    sys.exit(harness.main(["hashing"]))
