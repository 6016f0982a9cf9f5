"""One thread per cluster: reads the records of every running call and routes them.

Each tick is one Redis round trip for all calls in flight: a blocking pop
over their ``done`` lists (up to ``TICK`` s), then the rest of each list and
its count of running chunks (and each call's sign of life for its workers).
The supervisor also starts waiting calls once a worker appears, times calls
out, watches the workers' heartbeats (a remote worker that stops beating:
its chunks run elsewhere) or the embedded worker's process (replaced if it
dies), fails the calls when the store has been unreachable for
``broker_timeout`` s, and sweeps deferred key deletions. A call never polls
Redis on its own thread.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from typing import TYPE_CHECKING

from ..call import CallState
from ..errors import ClusterError
from ..plane.keys import wake_key
from ..plane.store import StoreError, StoreUnreachable

if TYPE_CHECKING:
    from ..runner import CallRunner
    from .connection import Cluster

TICK = 0.08  # seconds a poll waits for news before the displays are refreshed
ROLL_EVERY = 0.5  # seconds between two looks at the workers' heartbeats (remote clusters)
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
        self._wake_key = wake_key(uuid.uuid4().hex)
        self._unreachable_since: float | None = None
        self._next_roll = 0.0
        self._dead_handled: set[str] = set()

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
            with contextlib.suppress(StoreError):
                self._cluster.store.wake(self._wake_key)

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
        cluster, now = self._cluster, time.monotonic()
        if cluster.ensure_worker():
            for runner in runners:
                runner.worker_restarted()
        if cluster.elastic and now >= self._next_roll:
            self._watch_workers(runners)
            self._next_roll = now + ROLL_EVERY
        waiting = [r for r in runners if r.call.state is CallState.WAITING]
        for runner in waiting:
            runner.poll_waiting(now)
        runners = [r for r in runners if r not in waiting and not r.call.check_deadline(now)]
        if not runners:
            self._wake.wait(TICK)
            self._wake.clear()
            return
        requests = [runner.poll_request() for runner in runners]
        try:
            replies = cluster.store.poll(requests, self._wake_key, TICK)
        except StoreUnreachable as exc:
            self._unreachable(runners, exc)
            return
        self._unreachable_since = None
        for runner, reply in zip(runners, replies, strict=True):
            try:
                runner.receive(reply)
            except Exception as exc:
                runner.call.fail(exc)
        cluster.sweep()

    def _watch_workers(self, runners: list[CallRunner]) -> None:
        """Workers that stopped beating: their calls' chunks run elsewhere (once per death)."""
        try:
            roll = self._cluster.roll()
        except StoreError:
            return
        self._dead_handled &= set(roll.dead)  # a worker that beats again may die again
        fresh = sorted(set(roll.dead) - self._dead_handled)
        if not fresh:
            return
        self._dead_handled.update(fresh)
        for runner in runners:
            try:
                runner.workers_lost(fresh)
            except Exception as exc:
                runner.call.fail(exc)

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
