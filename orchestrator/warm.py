"""The warm process: reprun with its imports already paid, forking one copy per command.

Started in the background by `orchestrator.launch` the first time a command finds none, as
`python -m orchestrator.warm ADDRESS FINGERPRINT`. It binds its abstract socket first, so that of
several started at once all but one leave at once, then imports everything a command may need.
For each connection it forks a *session*, which forks the *command*: the command takes on the
client's streams, folder, environment, umask and limits and runs `reprun` as a fresh process
would, in its own process group (the client passes signals on to it). The session waits for it
and sends the exit status back; if the client goes away first, the command gets SIGTERM, as a
run whose terminal closed, and records itself interrupted.

The warm process itself never runs a command and never opens the store or the engine, so every
command starts from the same state. It leaves when idle for IDLE_S, and when any file it
imported from reprun's folder or the folder of installed packages changes, so that an upgrade
or an edit is never served by old code.
"""
from __future__ import annotations

import gc
import importlib
import io
import marshal
import os
import select
import signal
import socket
import sys
import time
import traceback

from .launch import EXITED, HEADER, REFUSED, REPLY, STARTED, peer_uid

IDLE_S = 600.0
PR_SET_PDEATHSIG = 1
# Everything a command may import; the probe and hash-worker scripts run when imported, so they
# are not here (they run in containers and helper processes, never in reprun's own).
PRELOAD = ("ctypes", "docker", "requests", "yaml", "tabulate", "sqlite3", "typer",
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


def sources() -> dict[str, float]:
    """Modification times of what this process imported that an upgrade or an edit would change."""
    package = os.path.dirname(os.path.abspath(__file__))
    paths = {module.__file__ for module in list(sys.modules.values())
             if getattr(module, "__file__", None) and module.__file__.startswith(package)}
    paths |= {os.path.dirname(os.path.dirname(os.path.abspath(importlib.import_module(name).__file__)))
              for name in ("docker", "typer", "yaml")}   # site-packages: changes on (un)install
    return {path: _mtime(path) for path in paths}


def _mtime(path: str) -> float:
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
    for name in PRELOAD:
        importlib.import_module(name)
    from .cli import command
    command()
    # Objects that exist now are never collected: the collector would otherwise touch them all
    # in every command, copying the pages fork shares.
    gc.freeze()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)    # sessions are reaped by the kernel
    seen = sources()
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
        if sources() != seen:
            listener.close()                  # the next command starts a fresh warm process
            _reply(conn, REFUSED, 0)
            log("leaving: reprun's files changed since they were imported")
            return
        if os.fork() == 0:
            listener.close()
            _session(conn, fingerprint)       # never returns
        conn.close()


def _reply(conn: socket.socket, tag: bytes, number: int) -> None:
    try:
        conn.sendall(REPLY.pack(tag, number))
    except OSError:
        pass


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    conn.settimeout(10)     # a client sends everything at once; one that does not is dropped
    data, fds, _flags, _addr = socket.recv_fds(conn, HEADER.size, 3)
    if len(data) < HEADER.size:
        raise ConnectionError("short request")
    size, = HEADER.unpack(data)
    body = bytearray()
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ConnectionError("short request")
        body += chunk
    conn.settimeout(None)
    return marshal.loads(bytes(body)), fds


def _session(conn: socket.socket, fingerprint: str) -> None:
    code = 0
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        request, fds = _receive(conn)
        if request.get("fingerprint") != fingerprint:
            _reply(conn, REFUSED, 0)
        elif len(fds) != 3:
            _reply(conn, REFUSED, 0)
        else:
            session = os.getpid()
            pid = os.fork()
            if pid == 0:
                conn.close()
                _command(request, fds, session)  # never returns
            for fd in fds:
                os.close(fd)
            _reply(conn, STARTED, pid)
            status = _wait(pid, conn)
            _reply(conn, EXITED, status)
            log(f"{' '.join(request['argv'][1:3])}: exit {status}")
    except BaseException:
        log("session failed:\n" + traceback.format_exc())
        code = 1
    finally:
        os._exit(code)


def _wait(pid: int, conn: socket.socket) -> int:
    """The command's exit status; SIGTERM to it if the client goes away first."""
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):     # before Linux 5.3: no watching the client
        return _status(os.waitpid(pid, 0)[1])
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(conn, select.POLLIN | select.POLLHUP)
    while True:
        ready = dict(poller.poll())
        if pidfd in ready:
            break
        if conn.fileno() in ready:
            poller.unregister(conn)
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    os.close(pidfd)
    return _status(os.waitpid(pid, 0)[1])


def _status(status: int) -> int:
    """An exit code as a shell reports it: 128 + N for a command killed by signal N."""
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _command(request: dict, fds: list[int], session: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        _end_with_session(session)
        _adopt(request, fds)
        from .cli import main
        main()
        code = 0
    except SystemExit as exit_:
        code = _exit_code(exit_.code)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _end_with_session(session: int) -> None:
    """SIGTERM when the session dies: a command nobody waits for must not run on unseen."""
    import ctypes
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != session:     # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _adopt(request: dict, fds: list[int]) -> None:
    """Become the process the client would have been: its streams, folder, environment, limits."""
    import resource
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    for name, limit in request["limits"].items():
        try:
            resource.setrlimit(getattr(resource, name), tuple(limit))
        except (ValueError, OSError):
            pass                      # above this process's hard limit: keep the lower one
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    time.tzset()                      # the client's TZ, not the one this process started with
    sys.argv = list(request["argv"])
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                   signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.stdin = sys.__stdin__ = _stream(0, "r")
    sys.stdout = sys.__stdout__ = _stream(1, "w")
    sys.stderr = sys.__stderr__ = _stream(2, "w", errors="backslashreplace", line_buffering=True)


def _stream(fd: int, mode: str, errors: str = "strict", line_buffering: bool = False):
    """A text stream on `fd` as Python would have opened it at start-up: line-buffered on a tty."""
    encoding = os.environ.get("PYTHONIOENCODING", "").split(":")[0] or "utf-8"
    raw = io.FileIO(fd, mode, closefd=False)
    buffered = io.BufferedReader(raw) if mode == "r" else io.BufferedWriter(raw)
    return io.TextIOWrapper(buffered, encoding=encoding, errors=errors,
                            line_buffering=line_buffering or os.isatty(fd))


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
