"""Which CPUs a job sees: a cpuset of its CPU limit's size, and a CPU count that agrees.

A CPU quota alone (`resources.cpus: 1`) limits time, not what the job can count: inside it
`os.sched_getaffinity`, `nproc`, `os.cpu_count()` and `joblib.cpu_count()` would report every
CPU of the host, so a job with one worker per CPU trains differently on a bigger host. A run is
therefore pinned to ceil(cpus) CPUs (the engine's cpuset), which the affinity calls and `nproc`
read, and the file `os.cpu_count()` reads on Python 3.11 (glibc's online CPUs,
/sys/devices/system/cpu/online) is replaced by one that lists the same CPUs.
"""
from __future__ import annotations

import math
import threading
from collections import Counter

ONLINE_CPUS = "/sys/devices/system/cpu/online"


def cpus_needed(nano_cpus: int) -> int:
    return max(1, math.ceil(nano_cpus / 1e9 - 1e-9))


def cpuset_text(cpus: list[int]) -> str:
    """As the kernel writes a CPU list: ranges of consecutive CPUs, "0-1,3"."""
    ranges: list[list[int]] = []
    for cpu in sorted(set(cpus)):
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


def parse_cpuset(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


class CpuSets:
    """Hands out cpusets to the jobs an executor runs at once: the least used CPUs first, so
    parallel jobs get distinct sets while the host has room, and share the fewest otherwise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._taken: dict[str, list[int]] = {}

    def take(self, job_name: str, count: int, host_cpus: int) -> str:
        with self._lock:
            use = Counter(cpu for cpus in self._taken.values() for cpu in cpus)
            chosen = sorted(range(host_cpus), key=lambda cpu: (use[cpu], cpu))[:count]
            self._taken[job_name] = chosen
            return cpuset_text(chosen)

    def give_back(self, job_name: str) -> None:
        with self._lock:
            self._taken.pop(job_name, None)
