"""Interventions: one source of nondeterminism removed from a run, to name the one that matters.

Where a factor (variations/factors.py) changes something that should not matter, an
intervention takes away something that makes two runs under identical inputs drift apart: the
wall clock, the kernel's entropy, address-space randomization, a second CPU. Each is a pure
function from one `ContainerJob` to another, so that any combination is their composition; what
they need on the host (a file of fixed bytes, libfaketime) is prepared once, before the runs,
in an `InterventionKit`.

The entrypoint applies what the job's configuration alone cannot: `REPRUN_NO_ASLR` makes it
start the job through `setarch -R` (see variations/factors.py, WRAPPER_BEFORE_EXEC).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from orchestrator.execution.hermetic import LABEL_INTERVENTIONS, THREAD_VARIABLES
from orchestrator.execution.job import ContainerJob, Mount

# Debian's libfaketime (package libfaketime); bound into the container at the same place.
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAKETIME_TARGET = "/reprun-faketime/libfaketime.so.1"
FROZEN_TIME = "2001-09-09 01:46:40"          # the epoch's billionth second, frozen
ENTROPY_BYTES = 4 << 20                        # far more than any seeding reads
ENTROPY_DEVICES = ("/dev/urandom", "/dev/random")

ENOSYS = 38
# personality(2) arguments: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26 and the query
# 0xffffffff are what the engine's default profile allows; ADDR_NO_RANDOMIZE (0x0040000) is
# what `setarch -R` asks for, and what it refuses.
_PERSONALITIES = (0x0, 0x0008, 0x20000, 0x20008, 0xFFFFFFFF)
ADDR_NO_RANDOMIZE = 0x0040000
# clone(2) flags that create namespaces: refused without CAP_SYS_ADMIN, as by the default.
_NAMESPACE_FLAGS = 0x7E020000


@dataclass(frozen=True)
class InterventionKit:
    """What the interventions need on the host, made once for every run of a diagnosis."""
    entropy_files: tuple[Path, ...]   # fixed bytes, one per entropy device (ENTROPY_DEVICES)
    faketime_library: Path | None  # None: not installed on this host

    @classmethod
    def prepare(cls, folder: Path, seed: int) -> "InterventionKit":
        folder.mkdir(parents=True, exist_ok=True)
        # One file per device, with the same bytes: an engine binds a host path once.
        entropy = tuple(folder / f"entropy-{seed}-{Path(device).name}.bin"
                        for device in ENTROPY_DEVICES)
        for path in entropy:
            if not path.is_file() or path.stat().st_size != ENTROPY_BYTES:
                path.write_bytes(_fixed_bytes(seed, ENTROPY_BYTES))
            path.chmod(0o444)
        library = FAKETIME_LIBRARY if FAKETIME_LIBRARY.is_file() else None
        return cls(entropy, library)


def _fixed_bytes(seed: int, size: int) -> bytes:
    # Not zeros: code that rejects an all-zero key or retries until it sees a nonzero byte
    # would otherwise behave unlike a real entropy source.
    blocks = (hashlib.sha256(f"reprun-entropy/{seed}/{i}".encode()).digest()
              for i in range(-(-size // 32)))
    return b"".join(blocks)[:size]


@dataclass(frozen=True)
class ImageTraits:
    """What decides whether an intervention can act inside this image, from its manifest."""
    libc: str | None               # "glibc", "musl" or None when the manifest cannot tell
    has_setarch: bool | None

    @classmethod
    def from_manifest(cls, manifest) -> "ImageTraits":
        packages = manifest.os_packages or {}
        if "libc6" in packages or "glibc" in packages:
            libc = "glibc"
        elif "musl" in packages:
            libc = "musl"
        else:
            libc = None
        setarch = ("util-linux" in packages or "util-linux-misc" in packages
                   or "util-linux-core" in packages) if packages else None
        return cls(libc, setarch)


Apply = Callable[[ContainerJob, InterventionKit], ContainerJob]


@dataclass(frozen=True)
class Intervention:
    name: str
    label: str                 # "the entropy fixed"
    source: str                # the source it removes, as the cause names it
    apply: Apply
    unsupported: Callable[[ImageTraits, InterventionKit], str | None]


def _env(job: ContainerJob, **changes: str) -> ContainerJob:
    return dataclasses.replace(job, env={**job.env, **changes})


def freeze_clock(job: ContainerJob, kit: InterventionKit) -> ContainerJob:
    assert kit.faketime_library is not None
    mounts = (*job.mounts, Mount(str(kit.faketime_library), FAKETIME_TARGET, read_only=True))
    preload = " ".join(p for p in (FAKETIME_TARGET, job.env.get("LD_PRELOAD")) if p)
    # The monotonic clock stays real: timeouts and sleeps in the job must still end.
    return _env(dataclasses.replace(job, mounts=mounts), LD_PRELOAD=preload,
                FAKETIME=FROZEN_TIME, FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_DONT_RESET="1")


def _clock_unsupported(image: ImageTraits, kit: InterventionKit) -> str | None:
    if kit.faketime_library is None:
        return (f"libfaketime is not installed on this host ({FAKETIME_LIBRARY}; Debian's "
                "package libfaketime)")
    if image.libc == "musl":
        return "the image's C library is musl, which cannot load Debian's libfaketime (glibc)"
    if image.libc is None:
        return "the manifest does not show the image's C library; libfaketime needs glibc"
    return None


def fix_entropy(job: ContainerJob, kit: InterventionKit) -> ContainerJob:
    mounts = (*job.mounts, *(Mount(str(path), device, read_only=True)
                             for path, device in zip(kit.entropy_files, ENTROPY_DEVICES)))
    return dataclasses.replace(job, mounts=mounts, labels=_with_seccomp_need(job, "entropy"))


def no_aslr(job: ContainerJob, kit: InterventionKit) -> ContainerJob:
    return dataclasses.replace(_env(job, REPRUN_NO_ASLR="1"),
                               labels=_with_seccomp_need(job, "aslr"))


def without_aslr(job: ContainerJob) -> ContainerJob:
    """Address randomization off, with the profile that allows it: for the `aslr` factor."""
    profile = seccomp_profile(fixed_entropy=False, allow_no_aslr=True)
    return dataclasses.replace(
        _env(job, REPRUN_NO_ASLR="1"),
        security_opt=(*job.security_opt, "seccomp=" + json.dumps(profile, separators=(",", ":"))))


def _aslr_unsupported(image: ImageTraits, kit: InterventionKit) -> str | None:
    if image.has_setarch is False:
        return "the image has no setarch (util-linux), which turns address randomization off"
    return None


def one_thread(job: ContainerJob, kit: InterventionKit) -> ContainerJob:
    # A CPU limit of one gets a cpuset of one CPU and an online-CPU file that says so from the
    # executor (execution/cpus.py): os.cpu_count(), nproc and the affinity calls all say 1.
    return dataclasses.replace(job, nano_cpus=int(1e9),
                               env={**job.env, **{v: "1" for v in THREAD_VARIABLES}})


def _always(image: ImageTraits, kit: InterventionKit) -> str | None:
    return None


INTERVENTIONS: tuple[Intervention, ...] = (
    Intervention("clock", "the wall clock frozen", "the job reads the wall clock",
                 freeze_clock, _clock_unsupported),
    Intervention("entropy", "the entropy fixed", "the job draws unseeded randomness",
                 fix_entropy, _always),
    Intervention("aslr", "address-space randomization off",
                 "the job depends on memory addresses (id() or object order)",
                 no_aslr, _aslr_unsupported),
    Intervention("threads", "one thread",
                 "the job races between threads (a parallel reduction, say)",
                 one_thread, _always),
)
INTERVENTION_NAMES = tuple(i.name for i in INTERVENTIONS)
_BY_NAME = {i.name: i for i in INTERVENTIONS}


def intervention(name: str) -> Intervention:
    return _BY_NAME[name]


def intervene(job: ContainerJob, names: Iterable[str], kit: InterventionKit) -> ContainerJob:
    """The job with every named intervention applied, labelled so that its record says so."""
    chosen = [n for n in INTERVENTION_NAMES if n in set(names)]
    for name in chosen:
        job = intervention(name).apply(job, kit)
    needs = set(json.loads(job.labels.get(_SECCOMP_NEEDS, "[]")))
    labels = {k: v for k, v in job.labels.items() if k != _SECCOMP_NEEDS}
    labels[LABEL_INTERVENTIONS] = json.dumps({"removed": chosen}, sort_keys=True)
    security = job.security_opt
    if needs:
        profile = seccomp_profile(fixed_entropy="entropy" in needs, allow_no_aslr="aslr" in needs)
        security = (*security, "seccomp=" + json.dumps(profile, separators=(",", ":")))
    return dataclasses.replace(job, labels=labels, security_opt=security)


# Interventions that change the seccomp profile say so through a transient label, so that the
# profile is written once for the combination (an engine takes one profile per container).
_SECCOMP_NEEDS = "io.reprun.seccomp-needs"


def _with_seccomp_need(job: ContainerJob, need: str) -> dict[str, str]:
    needs = set(json.loads(job.labels.get(_SECCOMP_NEEDS, "[]"))) | {need}
    return {**job.labels, _SECCOMP_NEEDS: json.dumps(sorted(needs))}


# --- the seccomp profile ------------------------------------------------------------------------

# The system calls the engine's default profile allows to a container without capabilities, on
# x86-64 and its 32-bit compatibility names; names the engine's libseccomp does not know are
# skipped by it. Left out, as by the default: the calls that need a capability reprun drops
# anyway (mount, ptrace, bpf, kexec, module loading, clock setting, reboot...) and the ones the
# default refuses to everyone (keyctl, add_key, request_key, userfaultfd, unshare, setns,
# perf_event_open, personality beyond the values below, clone with namespace flags).
DEFAULT_ALLOWED = """
accept accept4 access adjtimex alarm arch_prctl bind brk cachestat capget capset chdir chmod
chown chown32 clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range
creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
epoll_wait epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2
fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchmodat2 fchown fchown32
fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock fork fremovexattr fsetxattr fstat
fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate ftruncate64 futex futex_requeue
futex_time64 futex_wait futex_waitv futex_wake futimesat get_mempolicy get_robust_list
get_thread_area getcpu getcwd getdents getdents64 getegid getegid32 geteuid geteuid32 getgid
getgid32 getgroups getgroups32 getitimer getpeername getpgid getpgrp getpid getppid getpriority
getrandom getresgid getresgid32 getresuid getresuid32 getrlimit getrusage getsid getsockname
getsockopt gettid gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents
io_pgetevents_time64 io_setup io_submit io_uring_enter io_uring_register io_uring_setup ioctl
ioprio_get ioprio_set ipc kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr lseek
lsetxattr lstat lstat64 madvise map_shadow_stack mbind membarrier memfd_create memfd_secret
mincore mkdir mkdirat mknod mknodat mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr
mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap name_to_handle_at
nanosleep newfstatat _newselect open openat openat2 pause pidfd_getfd pidfd_open
pidfd_send_signal pipe pipe2 pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
pread64 preadv preadv2 prlimit64 process_mrelease pselect6 pselect6_time64 pwrite64 pwritev
pwritev2 read readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64
recvmsg remap_file_pages removexattr rename renameat renameat2 restart_syscall rmdir rseq
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler
sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
sched_setparam sched_setscheduler sched_yield seccomp select semctl semget semop semtimedop
semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto set_mempolicy
set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid
setgid32 setgroups setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid
setresgid32 setresuid setresuid32 setreuid setreuid32 setrlimit setsid setsockopt setuid
setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd signalfd4
sigprocmask sigreturn socket socketcall socketpair splice stat stat64 statfs statfs64 statx
symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create
timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64
timerfd_create timerfd_gettime timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill
truncate truncate64 ugetrlimit umask uname unlink unlinkat utime utimensat utimensat_time64
utimes vfork vmsplice wait4 waitid waitpid write writev
""".split()


def seccomp_profile(*, fixed_entropy: bool, allow_no_aslr: bool) -> dict:
    """The engine's default rules, plus `getrandom` answered with ENOSYS (so that every reader
    falls back to /dev/urandom, which the entropy intervention binds to fixed bytes) and
    personality(ADDR_NO_RANDOMIZE) allowed (what `setarch -R` asks)."""
    allowed = [n for n in DEFAULT_ALLOWED if not (fixed_entropy and n == "getrandom")]
    personalities = (*_PERSONALITIES, *((ADDR_NO_RANDOMIZE,) if allow_no_aslr else ()))
    syscalls = [
        {"names": allowed, "action": "SCMP_ACT_ALLOW"},
        *({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
           "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]}
          for value in personalities),
        {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": _NAMESPACE_FLAGS, "valueTwo": 0,
                   "op": "SCMP_CMP_MASKED_EQ"}]},
        # clone3's flags sit in memory a filter cannot read: ENOSYS sends the C library back
        # to clone, as the default profile does.
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    if fixed_entropy:
        syscalls.append({"names": ["getrandom"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS})
    return {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
            "syscalls": syscalls}
