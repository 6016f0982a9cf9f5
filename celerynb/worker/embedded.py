"""The embedded cluster's worker: started without Celery's CLI, it reports when it is ready.

``python -m celerynb.worker.embedded --hostname NAME --concurrency N`` runs the worker of
a :class:`~celerynb.cluster.LocalCluster` (settings from the ``CELERYNB_*``
variables, see :class:`~celerynb.settings.WorkerEnv`). Given a ready pipe, each pool
process writes its :class:`~celerynb.plane.records.ReadyLine` to it once initialised,
and the main process writes its own once it consumes the queue; then each closes
it. The driver reads these lines instead of polling the worker with pings.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import socket
import stat
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from celery import signals

from .. import worker
from ..plane.records import ReadyKind, ReadyLine
from ..settings import Settings

_fd: int | None = None


def _report(line: str) -> None:
    """Write ``line`` to the ready pipe and close this process's end of it."""
    global _fd
    fd, _fd = _fd, None
    if fd is None:
        return
    with contextlib.suppress(OSError):  # the driver gone or not listening: nothing to tell
        os.set_blocking(fd, False)
        os.write(fd, f"{line}\n".encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def ready_pipe(value: int | str) -> int | None:
    """The file descriptor ``value`` if it is an open pipe (else None)."""
    try:
        fd = int(value)
        return fd if stat.S_ISFIFO(os.fstat(fd).st_mode) else None
    except (ValueError, OSError):
        return None


def _child_ready(**_: object) -> None:
    _report(ReadyLine(ReadyKind.POOL, pid=os.getpid()).encode())


def _ready_reporter(settings: Settings) -> Callable[..., None]:
    def ready(sender: object = None, **_: object) -> None:
        _report(settings.ready_line(str(getattr(sender, "hostname", ""))).encode())

    return ready


def await_redis(url: str, timeout: float = 10.0) -> None:
    """Wait up to ``timeout`` s until something listens at a ``redis://`` URL's address.

    The embedded redis-server starts alongside this worker; should it not
    come up, Celery's own connection retries report why.
    """
    parts = urlsplit(url)
    if parts.scheme != "redis" or not parts.port:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((parts.hostname or "127.0.0.1", parts.port), 1.0).close()
            return
        except OSError:
            time.sleep(0.005)


def freeze_before_fork(**_: object) -> None:
    """Move what exists before the first pool process forks out of the GC's reach.

    Celery runs a full ``gc.collect()`` before each fork, ~50 ms each once
    pandas is loaded; frozen objects are skipped (and their pages stay shared
    with the pool processes instead of being touched by their collections).
    Only the first time: later forks replace dead pool processes.
    """
    if not gc.get_freeze_count():
        gc.freeze()


def main(argv: list[str] | None = None) -> int:
    """Run the embedded worker until it is stopped; its exit code."""
    global _fd
    parser = argparse.ArgumentParser(prog="python -m celerynb.worker.embedded")
    parser.add_argument("--hostname", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--loglevel", default="WARNING")
    args = parser.parse_args(argv)

    try:
        runtime = worker.start()
    except ValueError as exc:
        print(f"celerynb worker cannot start: {exc}", file=sys.stderr)
        return 2
    _fd = ready_pipe(runtime.env.ready_fd)
    signals.worker_process_init.connect(_child_ready, weak=False)
    signals.worker_ready.connect(_ready_reporter(runtime.settings), weak=False)
    signals.worker_before_create_process.connect(freeze_before_fork, weak=False)
    node = worker.app.Worker(
        hostname=args.hostname,
        pool_cls="prefork",
        concurrency=args.concurrency,
        queues=[runtime.settings.queue],
        loglevel=args.loglevel.upper(),
        without_mingle=True,
        without_gossip=True,
        without_heartbeat=True,
    )
    await_redis(runtime.settings.broker_url)
    node.start()
    return int(node.exitcode or 0)


if __name__ == "__main__":
    sys.exit(main())
