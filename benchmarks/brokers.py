"""Redis vs RabbitMQ as celerynb's broker: per-chunk overhead and throughput, side by side.

Starts one ``celerynb worker`` per broker (``--concurrency`` = cores), connects
a client, and runs the same workloads on each:

- ``tiny``: 500 chunks of one item each, ``sum`` -- nearly pure overhead;
- ``latency``: one chunk, one item -- the round trip of a single call;
- ``cpu``: a pure-Python per-row function over a frame, 4 chunks per core;
- ``data``: a 64 MB float64 frame, ``chunk * 2`` (bytes go through Redis in both cases).

The result backend (and data plane) is Redis in both cases. Usage::

    python benchmarks/brokers.py [--repeat 5] [--redis URL] [--amqp URL]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.settings import Settings


def score_rows(chunk: pd.DataFrame) -> pd.Series:
    """A CPU-bound pure-Python per-row function (the README's demo kind)."""
    out = []
    for a, b in zip(chunk["a"].to_numpy(), chunk["b"].to_numpy(), strict=True):
        x = 0.0
        for k in range(40):
            x += (a * k) % 7 + b / (k + 1)
        out.append(x)
    return pd.Series(out, index=chunk.index)


@contextlib.contextmanager
def deployment(broker: str, backend: str, concurrency: int) -> Iterator[celerynb.Cluster]:
    """One worker on ``broker`` with a fresh secret, and a client; all removed afterwards."""
    secret = new_secret()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
    env.update(CELERYNB_SECRET=secret, C_FORCE_ROOT="1")
    args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", broker,
            "--concurrency", str(concurrency)]  # fmt: skip
    if backend:
        args += ["--backend", backend]
    log = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # fmt: skip
    settings = Settings(broker, secret=secret, backend_url=backend)
    client = celerynb.Cluster(settings)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(Exception):
                if client.workers(max_age=0):
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise RuntimeError(f"worker did not start:\n{log.read().decode()}")
            time.sleep(0.1)
        celerynb.cmap(len, list(range(100)), chunks=50, cluster=client, progress=False)  # warm
        yield client
    finally:
        client.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        _delete_queue(settings)


def _delete_queue(settings: Settings) -> None:
    """Remove the benchmark's queue, exchanges and binding keys from the broker."""
    queue = settings.queue
    if settings.broker_url.startswith("amqp"):
        from kombu.connection import Connection

        with Connection(settings.broker_url) as conn:
            for kind, name in (("queue", queue), ("exchange", queue),
                               ("exchange", f"{queue}.pidbox"),
                               ("exchange", f"reply.{queue}.pidbox")):  # fmt: skip
                with contextlib.suppress(Exception):
                    channel = conn.channel()
                    getattr(channel, f"{kind}_delete")(name)
                    channel.close()
    else:
        import redis

        client = redis.Redis.from_url(settings.broker_url)
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall seconds of ``fn()`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def workloads(c: celerynb.Cluster) -> dict[str, Callable[[], Any]]:
    """The workloads, each a call on cluster ``c``."""
    frame = pd.DataFrame({"a": np.arange(60_000), "b": np.linspace(0, 1, 60_000)})
    big = pd.DataFrame(np.random.default_rng(0).random((4_000_000, 2)), columns=["x", "y"])
    tiny = list(range(500))
    return {
        "tiny": lambda: celerynb.cmap(sum, tiny, chunks=500, cluster=c, progress=False),
        "latency": lambda: celerynb.cmap(sum, [1], chunks=1, cluster=c, progress=False),
        "cpu": lambda: celerynb.cmap(score_rows, frame, cluster=c, progress=False),
        "data": lambda: celerynb.cmap(_double, big, cluster=c, progress=False),
    }


def _double(chunk: pd.DataFrame) -> pd.DataFrame:
    return chunk * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per workload (default 5)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672//", help="AMQP URL")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    frame = pd.DataFrame({"a": np.arange(60_000), "b": np.linspace(0, 1, 60_000)})
    serial = timed(lambda: score_rows(frame), 3)
    load_before = os.getloadavg()[0]
    times: dict[str, dict[str, list[float]]] = {"Redis": {}, "RabbitMQ": {}}
    with contextlib.ExitStack() as stack:
        clusters = {
            "Redis": stack.enter_context(deployment(args.redis, "", cores)),
            "RabbitMQ": stack.enter_context(deployment(args.amqp, args.redis, cores)),
        }
        calls = {name: workloads(c) for name, c in clusters.items()}
        for workload in ("tiny", "latency", "cpu", "data"):
            runs = args.repeat * (4 if workload == "latency" else 1)
            for _ in range(runs):  # interleaved, so background load hits both alike
                for name in clusters:
                    started = time.perf_counter()
                    calls[name][workload]()
                    times[name].setdefault(workload, []).append(time.perf_counter() - started)
    r = {k: statistics.median(v) for k, v in times["Redis"].items()}
    q = {k: statistics.median(v) for k, v in times["RabbitMQ"].items()}
    print(
        f"\n{cores} worker processes, median of {args.repeat} interleaved runs "
        f"({args.repeat * 4} for the round trip); load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after\n"
    )
    print("| workload | Redis broker | RabbitMQ broker |")
    print("|---|---|---|")
    print(f"| 500 tiny chunks, wall | {r['tiny']:.3f} s | {q['tiny']:.3f} s |")
    print(f"| per chunk (wall / 500) | {r['tiny'] * 2:.2f} ms | {q['tiny'] * 2:.2f} ms |")
    print(f"| throughput, tiny chunks | {500 / r['tiny']:.0f} /s | {500 / q['tiny']:.0f} /s |")
    print(
        f"| one-chunk call round trip | {r['latency'] * 1e3:.1f} ms | {q['latency'] * 1e3:.1f} ms |"
    )
    print(
        f"| CPU-bound, {serial:.2f} s serial, wall | {r['cpu']:.2f} s ({serial / r['cpu']:.2f}x) "
        f"| {q['cpu']:.2f} s ({serial / q['cpu']:.2f}x) |"
    )
    print(f"| 64 MB frame, chunk * 2 | {r['data']:.2f} s | {q['data']:.2f} s |")


if __name__ == "__main__":
    main()
