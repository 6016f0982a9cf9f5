"""One thread per cluster: reads the records of every running call and routes them.

Each tick is one Redis round trip for all calls in flight: a blocking pop
over their ``done`` lists (up to ``TICK`` s), then the rest of each list and
its count of running chunks. The supervisor also times calls out, replaces
a dead embedded worker (then its calls re-send what it held), fails the
calls when the store has been unreachable for ``broker_timeout`` s, and
sweeps deferred key deletions. A call never polls Redis on its own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING

import redis

from ..errors import ClusterError

if TYPE_CHECKING:
    from ..runner import CallRunner
    from .connection import Cluster

TICK = 0.08  # seconds a poll waits for news before the displays are refreshed
IDLE = 1.0  # seconds between sweeps while no call runs


class Supervisor:
    """The record router of one cluster (started on its first call, stopped on close)."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self._runners: dict[str, CallRunner] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._in_tick = False
        self._wake_key = f"celerynb:wake:{uuid.uuid4().hex}"
        self._unreachable_since: float | None = None

    def __repr__(self) -> str:
        return f"<Supervisor of {len(self._runners)} call(s)>"

    def add(self, runner: CallRunner) -> None:
        """Route ``runner``'s records from now on."""
        with self._lock:
            if self._stopped:
                raise ClusterError(f"{self._cluster!r} is closed: start a new one")
            self._runners[runner.call.id] = runner
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="celerynb-supervisor", daemon=True
                )
                self._thread.start()
            busy = self._in_tick
        self._wake.set()
        if busy:  # it blocks on the other calls' lists: end that wait
            with contextlib.suppress(redis.RedisError):
                self._cluster.redis.rpush(self._wake_key, 1)

    def remove(self, runner: CallRunner) -> None:
        with self._lock:
            self._runners.pop(runner.call.id, None)

    def running(self) -> list[CallRunner]:
        with self._lock:
            return list(self._runners.values())

    def stop(self) -> None:
        """Stop the thread (after its current tick)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(TICK * 4 + 1)

    # -- the loop ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped:
            runners = self.running()
            if not runners:
                self._wake.wait(IDLE)
                self._wake.clear()
                self._cluster.sweep()
                continue
            with self._lock:
                self._in_tick = True
            try:
                self._tick(runners)
            except Exception as exc:  # never leave a waiter hanging
                for runner in runners:
                    runner.call.fail(exc)
            finally:
                with self._lock:
                    self._in_tick = False

    def _tick(self, runners: list[CallRunner]) -> None:
        cluster = self._cluster
        if cluster.ensure_worker():
            for runner in runners:
                runner.worker_restarted()
        now = time.monotonic()
        runners = [r for r in runners if not r.call.check_deadline(now)]
        pipe = cluster.redis.pipeline(transaction=False)
        for runner in runners:
            runner.before_poll(pipe)
        skip = len(pipe)
        pipe.blpop([r.keys.done for r in runners] + [self._wake_key], timeout=TICK)
        for runner in runners:
            pipe.lpop(runner.keys.done, 1000)
            pipe.hlen(runner.keys.running)
        try:
            replies = pipe.execute()[skip:]
        except redis.ConnectionError as exc:
            self._unreachable(runners, exc)
            return
        self._unreachable_since = None
        first, rest = replies[0], replies[1:]
        popped = first[0].decode() if first is not None else ""
        for i, runner in enumerate(runners):
            blobs = [first[1]] if popped == runner.keys.done else []
            blobs += rest[2 * i] or []
            try:
                runner.receive(blobs, int(rest[2 * i + 1] or 0))
            except Exception as exc:
                runner.call.fail(exc)
        cluster.sweep()

    def _unreachable(self, runners: list[CallRunner], exc: Exception) -> None:
        now = time.monotonic()
        self._unreachable_since = self._unreachable_since or now
        limit = self._cluster.broker_timeout
        if now - self._unreachable_since <= limit:
            time.sleep(min(TICK, 0.5))
            return
        error = ClusterError(
            f"the broker / result store has been unreachable for {limit:.0f} s ({exc}); "
            "the call is abandoned"
        )
        for runner in runners:
            runner.call.fail(error)
