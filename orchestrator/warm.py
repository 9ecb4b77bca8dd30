"""The warm process: reprun with its imports already paid, forking one copy per command.

Started in the background by `orchestrator.launch` the first time a command finds none, as
`python -m orchestrator.warm ADDRESS`, with the fingerprint of the commands it may serve in
REPRUN_WARM_FINGERPRINT and no other variables than those start-up reads. It binds its abstract
socket first, so that of several started at once all but one leave at once, then imports
everything a command may need. For each connection it forks a *session*, which forks the
*command* (launch describes the exchange): the command takes on the client's streams, folder,
environment, umask, limits, I/O priority and ignored signals and runs `reprun` as a fresh
process would, in its own process group (the client passes signals on to it). The session waits
for it and sends back how it ended; if the client goes away first, the command gets SIGTERM, as
a run whose terminal closed, and records itself interrupted.

The warm process itself never runs a command and never opens the store or the engine, so every
command starts from the same state. It leaves when idle for IDLE_S, and when any file of
reprun's or the folder of installed packages changes, so that an upgrade or an edit is never
served by old code.
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import io
import marshal
import os
import resource
import select
import signal
import socket
import sys
import time
import traceback

from .launch import (EXITED, GO, HEADER, INTERRUPTED, KILLED, READY, REFUSED, REPLY, STARTED,
                     peer_credentials, peer_uid, read_exactly)

IDLE_S = 600.0
PR_SET_PDEATHSIG = 1
LIBC = ctypes.CDLL(None, use_errno=True)
IOPRIO_WHO_PROCESS = 1
# (ioprio_get, ioprio_set): no C library wraps them, and their numbers differ by architecture.
IOPRIO_SYSCALLS = {"x86_64": (252, 251), "aarch64": (31, 30), "riscv64": (31, 30)}
# Signals a fresh interpreter starts with at their default action (SIGINT has Python's handler).
RESET = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
         signal.SIGCHLD, signal.SIGTSTP, signal.SIGCONT, signal.SIGWINCH)


def _startup_stream(stream, line_buffering: bool) -> tuple[str, str, bool, bool]:
    if stream is None:
        return "utf-8", "strict", line_buffering, False
    return stream.encoding, stream.errors, line_buffering, stream.write_through


# How this interpreter set up its standard streams, from the same start-up variables as the
# client's: commands' streams are made the same way. stderr is always line-buffered.
STARTUP_STREAMS = {0: _startup_stream(sys.stdin, False), 1: _startup_stream(sys.stdout, False),
                   2: _startup_stream(sys.stderr, True)}
# Everything a command may import; the probe and hash-worker scripts run when imported, so they
# are not here (they run in containers and helper processes, never in reprun's own).
PRELOAD = ("docker", "requests", "yaml", "tabulate", "sqlite3", "typer",
           "orchestrator.cli", "orchestrator.runner", "orchestrator.engine", "orchestrator.swarm",
           "orchestrator.backends", "orchestrator.spec", "orchestrator.store", "orchestrator.events",
           "orchestrator.verify", "orchestrator.compare", "orchestrator.culprit",
           "orchestrator.variations", "orchestrator.check", "orchestrator.reports",
           "orchestrator.archive", "orchestrator.rerun", "orchestrator.show",
           "orchestrator.baselines", "orchestrator.dataset", "orchestrator.images",
           "orchestrator.outputs", "orchestrator.records", "orchestrator.integrity",
           "orchestrator.hermetic", "orchestrator.probe", "orchestrator.redact",
           "orchestrator.lock")


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} [{os.getpid()}] {message}", flush=True)


def sources() -> dict[str, int]:
    """Modification times of reprun's files (all of them: some are imported only by the commands
    that need them) and of the folder of installed packages, which changes on any (un)install."""
    package = os.path.dirname(os.path.abspath(__file__))
    paths = {os.path.join(folder, name) for folder, _, names in os.walk(package)
             for name in names if name.endswith((".py", ".json"))}
    paths |= {os.path.dirname(os.path.dirname(os.path.abspath(importlib.import_module(name).__file__)))
              for name in ("docker", "typer", "yaml")}
    return {path: _mtime(path) for path in paths}


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return -1


def serve(address: str, fingerprint: str) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + address)
    except OSError:
        return                  # another warm process has this address: it serves
    listener.listen(64)
    package = os.path.dirname(os.path.abspath(__file__))
    if not fingerprint.startswith(f"({package!r}, "):   # see launch.identity
        log(f"not serving: this copy of reprun is in {package}, not where the command runs from")
        return
    seen = sources()        # before the imports: an edit made during them is noticed
    for name in PRELOAD:
        importlib.import_module(name)
    from .cli import command
    command()
    # Objects that exist now are never collected: the collector would otherwise touch them all
    # in every command, copying the pages fork shares.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)    # sessions are reaped by the kernel
    log(f"serving {address} (reprun in {package})")
    listener.settimeout(IDLE_S)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            log(f"leaving: idle for {IDLE_S:.0f} s")
            return
        if peer_uid(conn) != os.getuid():
            conn.close()
            continue
        now = sources()
        if now != seen:
            listener.close()                  # the next command starts a fresh warm process
            changed = sorted(path for path in seen.keys() | now.keys() if seen.get(path) != now.get(path))
            log(f"leaving: reprun's files changed since they were imported ({', '.join(changed[:3])})")
            _reply(conn, REFUSED, 0)
            return
        try:
            if os.fork() == 0:
                listener.close()
                _session(conn, fingerprint)   # never returns
        except OSError as exc:                # no process to spare: that client runs it itself
            log(f"could not fork a session: {exc}")
        conn.close()


def _reply(conn: socket.socket, tag: bytes, number: int) -> bool:
    try:
        conn.sendall(REPLY.pack(tag, number))
    except OSError:
        return False
    return True


def _receive(conn: socket.socket) -> dict:
    conn.settimeout(10)     # a client sends everything at once; one that does not is dropped
    size, = HEADER.unpack(_exactly(conn, HEADER.size))
    request = marshal.loads(_exactly(conn, size))
    conn.settimeout(None)
    return request


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = read_exactly(conn, size)
    if data is None:
        raise ConnectionError("the client left in the middle of its request")
    return data


def _session(conn: socket.socket, fingerprint: str) -> None:
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request = _receive(conn)
        if request.get("fingerprint") != fingerprint:
            _reply(conn, REFUSED, 0)
            return
        request["client_pid"] = peer_credentials(conn)[0]
        _reply(conn, READY, 0)
        fds = _go_ahead(conn)
        if len(fds) != 3:           # the client gave up waiting and runs it itself
            for fd in fds:
                os.close(fd)
            return
        pid, command = _start_command(request, fds, conn)
        for fd in fds:
            os.close(fd)
        if command is None:         # it could not become the client's process: the client runs it
            os.waitpid(pid, 0)
            _reply(conn, REFUSED, 0)
            return
        if not _reply(conn, STARTED, pid):
            return                  # the client left: the command, never told to go, leaves too
        command.sendall(b"go")
        command.close()
        tag, number = _wait(pid, conn)
        log(f"{' '.join(request['argv'][1:3])}: " +
            (f"exit {number}" if tag == EXITED else f"killed by signal {number}"))
        _reply(conn, tag, number)
    except BaseException:
        log("session failed:\n" + traceback.format_exc())
        code = 1
    finally:
        os._exit(code)


def _go_ahead(conn: socket.socket) -> list[int]:
    """The client's standard streams, sent with GO; none if it gave up waiting."""
    conn.settimeout(10)
    try:
        data, fds, _flags, _address = socket.recv_fds(conn, 1, 3)
    except OSError:
        return []
    finally:
        conn.settimeout(None)
    if data != GO:
        for fd in fds:
            os.close(fd)
        return []
    return fds


def _start_command(request: dict, fds: list[int],
                   conn: socket.socket) -> tuple[int, socket.socket | None]:
    """Fork the command: its pid, and a line to it once it has taken on the client's state
    (None if it could not).

    The command then waits for "go", sent only once the client knows it started: if this
    session dies before, the client runs the command itself, and this copy must never run too.
    """
    here, there = socket.socketpair()
    session = os.getpid()
    pid = os.fork()
    if pid == 0:
        here.close()
        conn.close()
        _command(request, fds, session, there)       # never returns
    there.close()
    try:
        # As the command does itself: whichever runs first, the group exists before the client
        # learns the pid and passes signals to it.
        os.setpgid(pid, pid)
    except OSError:
        pass
    if _exactly_or_none(here, 5) == b"ready":
        return pid, here
    here.close()
    return pid, None


def _exactly_or_none(conn: socket.socket, size: int) -> bytes | None:
    try:
        return read_exactly(conn, size)
    except OSError:
        return None


def _wait(pid: int, conn: socket.socket) -> tuple[bytes, int]:
    """How the command ended: (EXITED, code) or (KILLED, signal); SIGTERM to it if the client
    goes away first."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):     # before Linux 5.3: no watching the client
        return _ending(os.waitpid(pid, 0)[1])
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN | select.POLLHUP)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            break
        if conn.fileno() in ready and _client_left(conn):
            poller.unregister(conn)
            try:
                os.killpg(pid, signal.SIGTERM)
                os.killpg(pid, signal.SIGCONT)     # a stopped command (Ctrl-Z) must take it too
            except ProcessLookupError:
                pass
    os.close(pidfd)
    return _ending(os.waitpid(pid, 0)[1])


def _client_left(conn: socket.socket) -> bool:
    """The client sends nothing after GO: only the end of the connection wakes us."""
    try:
        return conn.recv(64) == b""
    except OSError:
        return True


def _ending(status: int) -> tuple[bytes, int]:
    return (EXITED, os.WEXITSTATUS(status)) if os.WIFEXITED(status) \
        else (KILLED, os.WTERMSIG(status))


def _command(request: dict, fds: list[int], session: int, line: socket.socket) -> None:
    try:
        os.setpgid(0, 0)
        _end_with_session(session)
        _adopt(request, fds)
        line.sendall(b"ready")
        if _exactly_or_none(line, 2) != b"go":
            os._exit(1)         # the session is gone: the client runs the command itself
        line.close()
    except BaseException:       # noqa: BLE001 (the client then runs the command itself)
        os._exit(1)
    code = 1
    try:
        from .cli import main
        main()
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except KeyboardInterrupt:   # before cli.main took over signals
        sys.stderr.write("reprun: interrupted before the command started; nothing ran.\n")
        code = INTERRUPTED
    except BaseException:       # noqa: BLE001 (cli.main reports its own errors; this is a bug)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:   # noqa: BLE001 (a closed pipe: nothing more to say)
                pass
        os._exit(code)


def _end_with_session(session: int) -> None:
    """SIGTERM when the session dies: a command nobody waits for must not run on unseen."""
    LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != session:     # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _adopt(request: dict, fds: list[int]) -> None:
    """Become the process the client would have been: its streams, folder, environment, limits,
    and signal dispositions as a fresh interpreter has them."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for name, limit in request["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), tuple(limit))
        except (ValueError, OSError):
            pass                      # above this process's hard limit: keep the lower one
    _take_io_priority(request["client_pid"])
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()                      # the client's TZ, not the one this process started with
    sys.argv = list(request["argv"])
    for signum in RESET:
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in request["ignored"]:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, request["blocked"])
    sys.stdin = sys.__stdin__ = _stream(0, "r")
    sys.stdout = sys.__stdout__ = _stream(1, "w")
    sys.stderr = sys.__stderr__ = _stream(2, "w")


def _take_io_priority(client: int) -> None:
    """The client's I/O scheduling class and level (`ionice -c3 reprun verify` on a shared
    disk), which a copy of this process would not have. Raises OSError where it cannot be read
    or set: the client then runs the command itself, with its own."""
    calls = IOPRIO_SYSCALLS.get(os.uname().machine)
    if calls is None:
        raise OSError(f"no known ioprio system calls on {os.uname().machine}")
    get, set_ = calls
    priority = LIBC.syscall(get, IOPRIO_WHO_PROCESS, client)
    if priority < 0 or LIBC.syscall(set_, IOPRIO_WHO_PROCESS, 0, priority) < 0:
        raise OSError(ctypes.get_errno(), "the client's I/O priority")


def _stream(fd: int, mode: str):
    """A text stream on `fd` as Python opened this process's own at start-up (same encoding,
    error handler and buffering: start-up variables are part of the fingerprint), line-buffered
    on a terminal."""
    encoding, errors, line_buffering, write_through = STARTUP_STREAMS[fd]
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                            line_buffering=line_buffering or os.isatty(fd),
                            write_through=write_through)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1], os.environ.pop("REPRUN_WARM_FINGERPRINT", ""))
