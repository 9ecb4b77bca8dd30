"""The `reprun` command: hands the command to a warm reprun process when one is up, else runs it.

Starting Python and importing reprun, the Docker SDK and Typer costs about 0.3 s before a command
does anything: more than a no-op container run. A warm process (`orchestrator.warm`) pays that
once; for each command it forks a copy that takes on this process's arguments, environment,
working folder, umask, limits and standard streams (the file descriptors themselves, so a
terminal stays a terminal) and sends its exit status back. Signals this process receives are
passed on to that copy. Whatever prevents the hand-over before the command has started makes the
command run here instead, so the warm process is only ever a shortcut, never a dependency.

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
REPLY = struct.Struct("<ci")  # a tag and a number
HEADER = struct.Struct("<I")  # length of the request that follows the descriptors
STARTED, EXITED, REFUSED = b"R", b"X", b"N"
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
             signal.SIGUSR1, signal.SIGUSR2)
LIMITS = ("RLIMIT_AS", "RLIMIT_CORE", "RLIMIT_CPU", "RLIMIT_DATA", "RLIMIT_FSIZE",
          "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_STACK")


class Lost(Exception):
    """The warm process went away after the command had started: its outcome is unknown."""


def identity() -> tuple[str, str]:
    """(address, fingerprint) of the warm process that may run this interpreter's commands.

    A warm process serves only commands that would have run the same code the same way: the same
    interpreter, flags, import path and reprun folder, and the same view of the machine (groups,
    which decide access to the engine's socket; mount and process namespaces; cgroup, which
    decides whose resources the run uses). It checks itself that its files have not changed
    since it imported them.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    fingerprint = repr((package, sys.executable, sys.flags, sys.warnoptions, sys.path[1:],
                        os.environ.get("REPRUN_WARM", ""), sorted(os.getgroups()), os.getgid(),
                        _read_link("/proc/self/ns/mnt"), _read_link("/proc/self/ns/pid"),
                        _read_text("/proc/self/cgroup")))
    digest = format(hash_text(fingerprint), "08x")
    # An abstract socket: nothing on disk to go stale when every process is killed.
    return f"\0reprun-warm-{os.getuid()}-{digest}", fingerprint


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
        conn.connect(address)
        if peer_uid(conn) != os.getuid():
            raise ConnectionRefusedError
    except OSError:
        conn.close()
        return None
    return conn


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


def send_request(conn: socket.socket, request: dict, fds: list[int]) -> None:
    body = marshal.dumps(request)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    conn.sendmsg([HEADER.pack(len(body))], rights)
    conn.sendall(body)


def read_reply(conn: socket.socket) -> tuple[bytes, int] | None:
    data = b""
    while len(data) < REPLY.size:
        chunk = conn.recv(REPLY.size - len(data))
        if not chunk:
            return None
        data += chunk
    return REPLY.unpack(data)


def request_here(fingerprint: str) -> dict:
    import resource
    umask = os.umask(0o22)
    os.umask(umask)
    limits = {name: resource.getrlimit(getattr(resource, name))
              for name in LIMITS if hasattr(resource, name)}
    return {"fingerprint": fingerprint, "argv": sys.argv, "cwd": os.getcwd(),
            "env": dict(os.environ), "umask": umask, "limits": limits}


class Forwarder:
    """Signals to this process, passed on to the command's process group once it has started.

    Installed before the hand-over begins, so that a Ctrl-C at any moment is either passed on
    or, before the command started, ends this process as an interrupted command would.
    """

    def __init__(self):
        self.pid: int | None = None
        self.pending: list[int] = []
        for signum in FORWARDED:
            signal.signal(signum, self._receive)

    def _receive(self, signum, frame) -> None:
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
        for signum in self.pending:
            self._send(signum)

    @staticmethod
    def uninstall() -> None:
        for signum in FORWARDED:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                          else signal.SIG_DFL)


def hand_over(address: str, fingerprint: str) -> int | None:
    """Run this command in the warm process: its exit status, or None if it did not start there."""
    forwarder = Forwarder()
    conn = connect(address)
    try:
        if conn is None:
            return None
        try:
            send_request(conn, request_here(fingerprint), [0, 1, 2])
            reply = read_reply(conn)
        except OSError:       # a closed standard stream, a process gone meanwhile: run it here
            return None
        if reply is None or reply[0] != STARTED:
            return None
        forwarder.started(reply[1])
        try:
            reply = read_reply(conn)
        except OSError:
            reply = None
        if reply is None or reply[0] != EXITED:
            raise Lost
        return reply[1]
    finally:
        if conn is not None:
            conn.close()
        if forwarder.pid is None:
            Forwarder.uninstall()
            if forwarder.pending:        # interrupted before anything started
                sys.stderr.write("reprun: interrupted before the command started.\n")
                sys.exit(INTERRUPTED)


def start_warm(address: str, fingerprint: str) -> None:
    """Start a warm process in the background for the next commands; any failure is ignored."""
    import subprocess
    try:
        path = log_path()
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        package = os.path.dirname(os.path.abspath(__file__))
        with open(path, "a") as log:
            # From the folder that holds this package, so that `-m` finds this very copy.
            subprocess.Popen(
                [sys.executable, *subprocess._args_from_interpreter_flags(),
                 "-m", "orchestrator.warm", address[1:], fingerprint],
                cwd=os.path.dirname(package), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
    except OSError:
        pass


def main() -> None:
    if os.environ.get("REPRUN_WARM") != OFF:
        address, fingerprint = identity()
        try:
            code = hand_over(address, fingerprint)
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
