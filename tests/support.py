"""Helpers shared by tests: the machine's Redis, ``celerynb worker`` subprocesses, and a
real kernel whose iopub messages are sorted by cell."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from jupyter_client.manager import KernelManager

from celerynb.plane.keys import QueueKeys

SYSTEM_REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")


def system_redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


class WorkerProcess:
    """A ``celerynb worker`` subprocess against an existing broker."""

    def __init__(self, broker: str, secret: str, tmp: Path, *extra: str, backend: str = "") -> None:
        self.log = tmp / f"worker-{time.monotonic_ns()}.log"
        env = dict(os.environ, CELERYNB_SECRET=secret, PYTHONPATH=os.getcwd())
        env.pop("CELERYNB_BROKER_URL", None)
        args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", broker]
        if backend:
            args += ["--backend", backend]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [*args, "--concurrency", "2", *extra],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
        self.proc.wait(10)


def forget_queue(url: str, queue: str) -> None:
    """Delete a finished test's queue, kombu's bindings for it, its unacked messages
    (a stopped worker's deliveries, which kombu would restore into the queue) and
    celerynb's registries of the queue's calls, names and workers from a shared Redis."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    workers = QueueKeys(queue)
    try:
        client.delete(
            queue,
            f"_kombu.binding.{queue}",
            f"_kombu.binding_permanent.{queue}",
            f"_kombu.binding.{queue}.pidbox",
            workers.calls,
            workers.names,
            workers.beats,
            workers.info,
        )
        for tag, raw in client.hscan_iter("unacked"):
            try:
                _, exchange, routing_key = json.loads(raw)
            except (ValueError, TypeError):
                continue
            if queue in (exchange, routing_key):
                client.hdel("unacked", tag)
                client.zrem("unacked_index", tag)
    except redis.RedisError:
        pass
    finally:
        client.close()


@dataclass
class Cell:
    """What one executed cell sent on iopub."""

    msg_id: str = ""
    stdout: str = ""
    stderr: str = ""
    displays: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    error: list[str] = field(default_factory=list)


class Kernel:
    """A real kernel and a thread that sorts its iopub messages by the cell they belong to."""

    def __init__(self, cwd: Path, **extra_env: str) -> None:
        self.km = KernelManager(kernel_name="python3")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), **extra_env)
        env.pop("CELERYNB_BROKER_URL", None)
        self.km.start_kernel(cwd=str(cwd), env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        self.cells: dict[str, Cell] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            parent = msg["parent_header"].get("msg_id", "")
            cell = self.cells.setdefault(parent, Cell(parent))
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                if content["name"] == "stdout":
                    cell.stdout += content["text"]
                else:
                    cell.stderr += content["text"]
            elif kind == "display_data":
                cell.displays.append(content["data"])
            elif kind == "execute_result":
                cell.results.append(content["data"])
            elif kind == "error":
                cell.error = content["traceback"]

    def run(self, code: str, timeout: float = 120) -> Cell:
        msg_id = self.kc.execute(textwrap.dedent(code))
        reply = self.kc.get_shell_msg(timeout=timeout)
        while reply["parent_header"].get("msg_id") != msg_id:
            reply = self.kc.get_shell_msg(timeout=timeout)
        time.sleep(0.3)  # the last iopub messages of the cell
        return self.cells.setdefault(msg_id, Cell(msg_id))

    def start(self, code: str) -> str:
        return str(self.kc.execute(textwrap.dedent(code)))

    @property
    def pid(self) -> int:
        return int(self.run("import os; print(os.getpid())").stdout.strip())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 30.0, every: float = 0.02) -> T:
    """``check()``'s first truthy value within ``timeout`` s (its last value if none: the
    caller's assertion then says what was missing). For what a call does on a thread of
    its own after ``cmap_async`` returns (its chunks are stored as the workers take them)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
