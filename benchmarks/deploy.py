"""A deployment for the reliability scripts: the machine's Redis or RabbitMQ broker (and
its Redis store), a fresh secret (so a fresh queue), ``celerynb worker`` processes that
can be killed, terminated and started again under their name, and the removal of
everything the queue left on the broker and in the store.

The celerynb the workers run is the one this process imports (``PYTHONPATH``), so a
script can measure another checkout's code.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis
from kombu import Connection

import celerynb
from celerynb.plane.keys import QueueKeys
from celerynb.settings import Settings

REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("CELERYNB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
CODE = Path(celerynb.__file__).resolve().parents[1]  # the checkout the workers run


def urls(broker: str) -> tuple[str, str]:
    """(broker URL, store URL) of the machine's services for ``broker`` (redis or amqp)."""
    return (AMQP, REDIS) if broker == "amqp" else (REDIS, REDIS)


@dataclass
class Worker:
    """One ``celerynb worker`` process group, by its ``--hostname``."""

    hostname: str
    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, env=self.env, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: signal.Signals, group: bool = True) -> None:
        """``sig`` to the whole process group (the main process and its pool), or with
        ``group=False`` to the main process only (a warm shutdown: its pool finishes)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout)


@dataclass
class Deployment:
    broker: str
    logs: Path
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    workers: list[Worker] = field(default_factory=list)
    client: celerynb.Cluster | None = None

    @property
    def settings(self) -> Settings:
        url, store = urls(self.broker)
        return Settings(url, secret=self.secret, backend_url=store)

    def add(self, name: str, concurrency: int = 1) -> Worker:
        url, store = urls(self.broker)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
        env.update(CELERYNB_SECRET=self.secret, C_FORCE_ROOT="1", PYTHONPATH=str(CODE))
        hostname = f"{name}-{secrets.token_hex(3)}@churn"
        args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", url, "--backend",
                store, "--concurrency", str(concurrency), "--hostname", hostname]  # fmt: skip
        w = Worker(hostname, args, env, self.logs / f"{hostname.split('@')[0]}.log")
        w.start()
        self.workers.append(w)
        return w

    def connect(self) -> celerynb.Cluster:
        url, store = urls(self.broker)
        self.client = celerynb.connect(url, store, secret=self.secret)
        return self.client

    def ready(self, n: int, timeout: float = 60.0) -> None:
        """Wait until ``n`` workers beat."""
        assert self.client is not None
        deadline = time.monotonic() + timeout
        while len(self.client.workers(max_age=0)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{n} workers did not beat within {timeout:.0f} s")
            time.sleep(0.05)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.client is not None:
            self.client.close()
        forget(self.settings)


def forget(settings: Settings) -> None:
    """Remove the queue's state: its broker queue, exchanges and bindings, kombu's
    unacked deliveries for it, and celerynb's registries of it in the store."""
    queue, keys = settings.queue, QueueKeys(settings.queue)
    store = redis.Redis.from_url(settings.backend_url)
    with contextlib.suppress(redis.RedisError):
        store.delete(keys.calls, keys.names, keys.beats, keys.info)
        store.close()
    if settings.broker_url.startswith("amqp"):
        with Connection(settings.broker_url, connect_timeout=3) as conn:
            channel = conn.channel()
            for delete, name in (
                (channel.queue_delete, queue),
                (channel.exchange_delete, queue),
                (channel.exchange_delete, f"{queue}.pidbox"),
                (channel.exchange_delete, f"reply.{queue}.pidbox"),
            ):
                try:
                    delete(name)
                except Exception:
                    channel = conn.channel()  # a failed delete closes the channel
        return
    client = redis.Redis.from_url(settings.broker_url)
    with contextlib.suppress(redis.RedisError):
        client.delete(queue, f"_kombu.binding.{queue}", f"_kombu.binding.{queue}.pidbox",
                      f"_kombu.binding.reply.{queue}.pidbox",
                      f"_kombu.binding_permanent.{queue}")  # fmt: skip
        for tag, raw in client.hscan_iter("unacked"):
            with contextlib.suppress(ValueError, TypeError):
                _, exchange, routing_key = json.loads(raw)
                if queue in (exchange, routing_key):
                    client.hdel("unacked", tag)
                    client.zrem("unacked_index", tag)
        client.close()
