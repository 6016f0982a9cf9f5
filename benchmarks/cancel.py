"""How long a cancel keeps the next call waiting: cancel/submit pairs, p50/p99.

    PYTHONPATH=<checkout> python benchmarks/cancel.py [--pairs 200] [--on embedded,redis,amqp]

Each pair: a call of ``N_CHUNKS`` chunks of ``CHUNK_S`` s is cancelled ``CANCEL_AFTER_S``
into it, then a call of one chunk is submitted at once; the delay is from that submit to
its chunk's start on the worker (``future.stats()``, the worker's clock: one machine).
Clusters: the embedded one (its defaults), and deployments of two ``celerynb worker
--concurrency 1`` on the machine's Redis and on its RabbitMQ (Redis store), each on a
fresh queue that is removed afterwards. The checkout measured is the one on
``PYTHONPATH`` (its workers run it too).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import celerynb  # the checkout on PYTHONPATH (this file measures another's too)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import Deployment  # beside this file (not the other checkout's benchmarks)

N_CHUNKS = 40
CHUNK_S = 0.2
CANCEL_AFTER_S = 0.3


def nap(xs: list[int]) -> list[int]:
    time.sleep(CHUNK_S)
    return xs


def quick(xs: list[int]) -> list[int]:
    return xs


def pair(cluster: celerynb.Cluster) -> float:
    """Seconds from the submit after a cancel to the start of that call's chunk."""
    busy = celerynb.cmap_async(nap, list(range(N_CHUNKS)), chunks=N_CHUNKS, cluster=cluster,
                               progress=False)  # fmt: skip
    time.sleep(CANCEL_AFTER_S)
    busy.cancel()
    submitted = time.time()
    nxt = celerynb.cmap_async(quick, [1], chunks=1, cluster=cluster, progress=False)
    assert nxt.result(timeout=120) == [1]
    return float(nxt.stats()["start"].iloc[0].timestamp()) - submitted


def measure(cluster: celerynb.Cluster, pairs: int, log: bool) -> list[float]:
    celerynb.cmap(quick, [1, 2], cluster=cluster, progress=False)  # warm the pool
    delays = []
    for i in range(pairs):
        delays.append(pair(cluster))
        if log and (i + 1) % 50 == 0:
            print(f"    {i + 1} pairs, worst so far {max(delays):.3f} s", flush=True)
    return delays


def on(kind: str, pairs: int, log: bool) -> list[float]:
    if kind == "embedded":
        with celerynb.LocalCluster() as cluster:
            return measure(cluster, pairs, log)
    with tempfile.TemporaryDirectory(prefix="celerynb-cancel-") as logs:
        d = Deployment(kind, Path(logs))
        try:
            d.add("a")
            d.add("b")
            d.connect()
            d.ready(2)
            return measure(d.client, pairs, log)  # type: ignore[arg-type]
        finally:
            d.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--on", default="embedded,redis,amqp")
    args = parser.parse_args(argv)
    print(f"celerynb from {Path(celerynb.__file__).parent}; {args.pairs} cancel/submit pairs")
    print("| cluster | p50 | p99 | max | over 0.5 s |\n|---|---:|---:|---:|---:|")
    for kind in args.on.split(","):
        d = on(kind, args.pairs, log=False)
        over = sum(x > 0.5 for x in d)
        print(f"| {kind} | {statistics.median(d):.3f} s | {pct(d, 0.99):.3f} s | "
              f"{max(d):.3f} s | {over} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
