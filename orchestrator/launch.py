"""The `reprun` command: hands the command to a warm reprun process when one is up, else runs it.

Starting Python and importing reprun, the Docker SDK and Typer costs about 0.3 s before a command
does anything: more than a no-op container run. A warm process (`orchestrator.warm`) pays that
once; for each command it forks a copy that takes on this process's arguments, environment,
working folder, umask, limits, ignored signals and standard streams (the file descriptors
themselves, so a terminal stays a terminal) and sends its exit status back. Signals this process
receives are passed on to that copy. Whatever prevents the hand-over before the command has
started makes the command run here instead, so the warm process is only ever a shortcut, never a
dependency.

The hand-over, on one connection: the request; READY from the warm process; GO from here with
the three descriptors (or nothing, if we gave up waiting: then it never starts the command, so a
command never runs twice, and our streams never sit in the queue of a process that does not
read it, which would keep a pipe reader waiting for its end); STARTED with the command's pid
once it has taken everything on (or REFUSED); last EXITED with its exit code, or KILLED with the
signal that ended it.

This module is all a warm command imports: the interpreter's own C modules (`_socket` and
`_signal` rather than `socket` and `signal`, which import `enum`: a third of this module's start).
"""
from __future__ import annotations

import _signal as signal
import _socket as socket
import array
import marshal
import os
import struct
import sys

OFF = "0"                    # REPRUN_WARM=0: every command runs in its own process
INFRASTRUCTURE, INTERRUPTED = 4, 130    # exit codes, as orchestrator.errors and cli define them
PATIENCE_S = 3.0             # for the warm process to answer before the command runs here
REPLY = struct.Struct("<ci")  # a tag and a number
HEADER = struct.Struct("<I")  # length of the request that follows the descriptors
READY, GO, STARTED, REFUSED, EXITED, KILLED = b"Y", b"G", b"R", b"N", b"X", b"K"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
JOB_CONTROL = (signal.SIGTSTP, signal.SIGCONT, signal.SIGWINCH)
LIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE",
          "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_STACK")
# Read by the interpreter or by libraries as they are imported: a warm process started under
# other values would not behave as a fresh one, so they are part of its identity.
STARTUP_VARIABLES = ("PYTHON", "LC_", "LANG", "TYPER_")


class Lost(Exception):
    """The warm process went away after the command had started: its outcome is unknown."""


def identity() -> tuple[str, str]:
    """(address, fingerprint) of the warm process that may run this interpreter's commands.

    A warm process serves only commands that would have run the same code the same way: the same
    interpreter, flags, import path, reprun folder and start-up variables (locale, PYTHON*), and
    the same view of the machine (groups, which decide access to the engine's socket; mount and
    process namespaces; cgroup, which decides whose resources the run uses), and the same
    standing in it: what a command could not set back once forked from it (niceness, OOM score,
    hard limits) and the CPUs it may use, which size its worker pools. It checks itself that its
    files have not changed since it imported them.
    """
    import resource
    package = os.path.dirname(os.path.abspath(__file__))
    fingerprint = repr((package, sys.executable, sys.flags, sys.warnoptions, sys.path[1:],
                        sorted(startup_environment().items()), sorted(os.getgroups()),
                        os.getgid(), _read_link("/proc/self/ns/mnt"),
                        _read_link("/proc/self/ns/pid"), _read_text("/proc/self/cgroup"),
                        os.getpriority(os.PRIO_PROCESS, 0), _read_text("/proc/self/oom_score_adj"),
                        sorted(os.sched_getaffinity(0)),
                        [resource.getrlimit(getattr(resource, name))[1] for name in LIMITS
                         if hasattr(resource, name)]))
    digest = format(hash_text(fingerprint), "08x")
    # An abstract socket: nothing on disk to go stale when every process is killed.
    return f"\0reprun-warm-{os.getuid()}-{digest}", fingerprint


def startup_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if name.startswith(STARTUP_VARIABLES) or name == "REPRUN_WARM"}


def _read_link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _read_text(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def hash_text(text: str) -> int:
    import zlib
    return zlib.crc32(text.encode("utf-8", "surrogateescape"))


def log_path() -> str:
    folder = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"reprun-warm-{os.getuid()}")
    return os.path.join(folder, "warm.log")


def connect(address: str) -> socket.socket | None:
    """A connection to the warm process at `address`, or None when none answers there.

    An abstract socket has no file permissions, so the peer's user is checked: a process of
    another user must never receive our streams.
    """
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(PATIENCE_S)     # a full backlog makes even a local connect wait
        conn.connect(address)
        if peer_uid(conn) != os.getuid():
            raise ConnectionRefusedError
    except OSError:
        conn.close()
        return None
    return conn


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """pid, uid and gid of the process at the other end."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def peer_uid(conn: socket.socket) -> int:
    return peer_credentials(conn)[1]


def send_request(conn: socket.socket, request: dict) -> None:
    body = marshal.dumps(request)
    conn.sendall(HEADER.pack(len(body)) + body)


def send_go(conn: socket.socket, fds: list[int]) -> None:
    conn.sendmsg([GO], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def read_exactly(conn: socket.socket, size: int) -> bytes | None:
    """`size` bytes from `conn`, or None if it ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_reply(conn: socket.socket) -> tuple[bytes, int] | None:
    data = read_exactly(conn, REPLY.size)
    return REPLY.unpack(data) if data is not None else None


def ignored_signals() -> list[int]:
    """Signals this process was started ignoring (nohup, `&` in a script): the command ignores
    them too, and they are not passed on."""
    return [signum for signum in FORWARDED + JOB_CONTROL
            if signal.getsignal(signum) == signal.SIG_IGN]


def request_here(fingerprint: str, ignored: list[int]) -> dict:
    import resource
    umask = os.umask(0o22)
    os.umask(umask)
    limits = {name: resource.getrlimit(getattr(resource, name))
              for name in LIMITS if hasattr(resource, name)}
    return {"fingerprint": fingerprint, "argv": sys.argv, "cwd": os.getcwd(),
            "env": dict(os.environ), "umask": umask, "limits": limits, "ignored": ignored,
            "blocked": sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))}


def streams_open() -> bool:
    """Whether descriptors 0, 1 and 2 are open. If one is closed, the connection would take its
    number and be handed over as a stream: such a command runs here."""
    try:
        for fd in (0, 1, 2):
            os.fstat(fd)
    except OSError:
        return False
    return True


class Interrupted(Exception):
    """A signal came before the command started: nothing ran."""


class Forwarder:
    """Signals to this process, passed on to the command's process group once it has started.

    Before GO is sent, a signal ends the hand-over (nothing has run); between GO and STARTED it
    waits, and is passed on as soon as the command can take it.
    """

    def __init__(self, ignored: list[int]):
        self.ignored = ignored
        self.committed = False
        self.pid: int | None = None
        self.pending: list[int] = []
        for signum in FORWARDED:
            if signum not in ignored:
                signal.signal(signum, self._receive)

    def _receive(self, signum, frame) -> None:
        if not self.committed:
            raise Interrupted
        if self.pid is None:
            self.pending.append(signum)
        else:
            self._send(signum)

    def _send(self, signum: int) -> None:
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def started(self, pid: int) -> None:
        self.pid = pid
        for signum in JOB_CONTROL:
            if signum not in self.ignored:
                signal.signal(signum, self._job_control)
        for signum in self.pending:
            self._send(signum)

    def _job_control(self, signum, frame) -> None:
        self._send(signum)
        if signum == signal.SIGTSTP:    # Ctrl-Z: the command stops, then so do we
            os.kill(os.getpid(), signal.SIGSTOP)

    def uninstall(self) -> None:
        for signum in FORWARDED:
            if signum not in self.ignored:
                signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                              else signal.SIG_DFL)


def hand_over(address: str, fingerprint: str) -> int | None:
    """Run this command in the warm process: its exit status, or None if it did not start there.

    Raises Interrupted when a signal came before the command started, Lost when the warm
    process went away after.
    """
    if not streams_open():
        return here_because("a standard stream is closed")
    ignored = ignored_signals()
    forwarder = Forwarder(ignored)
    conn = None
    try:
        conn = connect(address)          # with PATIENCE_S for every step until GO
        if conn is None:
            return here_because("no warm process answers")
        try:
            send_request(conn, request_here(fingerprint, ignored))
            reply = read_reply(conn)
            if reply is None or reply[0] != READY:
                return here_because("the warm process refused the command" if reply else
                                    "the warm process closed the connection")
            forwarder.committed = True
            send_go(conn, [0, 1, 2])
        except OSError as exc:      # a timeout (a stopped or stuck warm process), a process gone
            if forwarder.pending:
                raise Interrupted from None
            return here_because(f"no answer from the warm process ({exc or type(exc).__name__})")
        conn.settimeout(None)
        try:
            reply = read_reply(conn)
        except OSError:
            reply = None
        if reply is None or reply[0] != STARTED:
            if forwarder.pending:
                raise Interrupted
            # It could not take the command on; nothing ran there.
            return here_because("the warm process could not take the command on")
        forwarder.started(reply[1])
        try:
            reply = read_reply(conn)
        except OSError:
            reply = None
        if reply is None or reply[0] not in (EXITED, KILLED):
            raise Lost
        if reply[0] == KILLED:
            die_by(reply[1])
        return reply[1]
    finally:
        if conn is not None:
            conn.close()
        if forwarder.pid is None:
            forwarder.uninstall()


def here_because(why: str) -> None:
    """Note in the warm process's log why this command runs in its own process; None."""
    try:
        with open(log_path(), "a") as log:
            log.write(f"[{os.getpid()}] {' '.join(sys.argv[1:3])}: runs in its own process: {why}\n")
    except OSError:
        pass
    return None


def die_by(signum: int) -> None:
    """End as the command ended, killed by `signum`, so that a shell or a parent process sees it."""
    sys.stdout.flush()
    try:
        signal.signal(signum, signal.SIG_DFL)
    except (OSError, ValueError):   # SIGKILL and SIGSTOP have no handler to reset
        pass
    os.kill(os.getpid(), signum)
    sys.exit(128 + signum)      # a signal whose default is not to end the process


def start_warm(address: str, fingerprint: str) -> None:
    """Start a warm process in the background for the next commands; any failure is ignored.

    It gets only the variables start-up reads: the environment of each command reaches the copy
    that runs it, and nothing else (no secret) stays behind in the warm process.
    """
    import subprocess
    try:
        path = log_path()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        package = os.path.dirname(os.path.abspath(__file__))
        with open(path, "a") as log:
            # From the folder that holds this package, so that `-m` finds this very copy.
            subprocess.Popen(
                [sys.executable, *subprocess._args_from_interpreter_flags(),
                 "-m", "orchestrator.warm", address[1:]],
                cwd=os.path.dirname(package), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                env={**startup_environment(), "REPRUN_WARM_FINGERPRINT": fingerprint,
                     **{name: os.environ[name] for name in ("PATH", "HOME", "TMPDIR")
                        if name in os.environ}})
    except OSError:
        pass


def warm_identity() -> tuple[str, str] | None:
    """identity(), or None when this command is to have no warm process."""
    if os.environ.get("REPRUN_WARM") == OFF:
        return None
    try:
        return identity()
    except (OSError, AttributeError):   # a system without these facts (no sched_getaffinity)
        return None


def main() -> None:
    found = warm_identity()
    if found is not None:
        address, fingerprint = found
        try:
            code = hand_over(address, fingerprint)
        except Interrupted:
            sys.stderr.write("reprun: interrupted before the command started; nothing ran.\n")
            sys.exit(INTERRUPTED)
        except Lost:
            sys.stderr.write(
                "reprun: the warm reprun process running this command went away before it "
                f"finished, so its outcome is unknown (its log: {log_path()}). Run it again, or "
                "set REPRUN_WARM=0 to run every command in its own process.\n")
            sys.exit(INFRASTRUCTURE)
        if code is not None:
            sys.exit(code)
        start_warm(address, fingerprint)
    from .cli import main as run_here
    run_here()


if __name__ == "__main__":
    main()
