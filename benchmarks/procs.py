"""Processes the harness starts itself: a private redis-server and raw Celery workers.

Every process is started with a parent-death signal (Linux) and stopped by
PID (a worker by its own process group, which holds its pool children).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .rawcelery import ENV_URL

ROOT = Path(__file__).resolve().parent.parent


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGKILL it when the harness dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server() -> str:
    """Path of the server the embedded cluster would start (PATH, else the bundled one)."""
    from celerynb.procs import find_redis_server

    return find_redis_server()


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free loopback port; returns it and its URL."""
    password = secrets.token_hex(16)
    port = free_port()
    conf = workdir / "redis.conf"
    conf.write_text(
        f'port {port}\nbind 127.0.0.1\nrequirepass "{password}"\nsave ""\nappendonly no\n'
        f'dir "{workdir}"\nlogfile "{workdir / "redis.log"}"\n'
        "client-output-buffer-limit pubsub 0 0 0\n"
    )
    proc = subprocess.Popen(
        [redis_server(), str(conf)], stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
    )
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise RuntimeError(f"redis-server did not start (see {workdir})") from None
            time.sleep(0.005)
        finally:
            client.close()
    return proc, url


def start_raw_worker(url: str, concurrency: int, workdir: Path) -> subprocess.Popen[bytes]:
    """``celery -A benchmarks.rawcelery worker`` (prefork, default flags) in its own group."""
    env = dict(os.environ, C_FORCE_ROOT="1", PYTHONPATH=str(ROOT))
    env[ENV_URL] = url
    args = [
        sys.executable, "-m", "celery", "-A", "benchmarks.rawcelery", "worker",
        "--pool", "prefork", "--concurrency", str(concurrency),
        "--hostname", f"bench-raw-{os.getpid()}@%h", "--loglevel", "WARNING",
    ]  # fmt: skip
    with open(workdir / "worker.log", "wb") as log:
        return subprocess.Popen(
            args,
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )


def stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """Stop ``proc`` (and its process group if it leads one), SIGKILL after ``grace`` s."""
    if proc is None:
        return
    try:
        leader = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        leader = False
    with contextlib.suppress(ProcessLookupError):
        if leader:  # a Celery worker: cold shutdown (SIGQUIT) of it and its pool
            os.killpg(proc.pid, signal.SIGQUIT)
        elif proc.poll() is None:
            proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if leader:  # pool children left behind
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
