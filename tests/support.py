"""Helpers shared by tests: the machine's Redis, and ``celerynb worker`` subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import redis

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
    """Delete a finished test's queue, kombu's bindings for it and its unacked messages
    (a stopped worker's deliveries, which kombu would restore into the queue) from a
    shared Redis."""
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.delete(
            queue,
            f"_kombu.binding.{queue}",
            f"_kombu.binding_permanent.{queue}",
            f"_kombu.binding.{queue}.pidbox",
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
