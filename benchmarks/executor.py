"""Executor overhead: celerynb's Executor against ProcessPoolExecutor and dask's.

    python benchmarks/executor.py [--workers 2] [--items 1000] [--repeat 3]

In one process, each executor with the same number of worker processes runs:

- ``map``: ``list(ex.map(f, range(items)))`` for a cheap ``f`` (``chunksize=1``, the
  standard library's default, and ``chunksize=50``);
- ``submit``: one ``ex.submit(f, 1).result()`` round trip (median of 20).

Reported in seconds (best of ``repeat``) and as ratios to ProcessPoolExecutor.
celerynb runs on an embedded ``LocalCluster``; dask on a ``distributed.LocalCluster``
of worker processes through ``Client.get_executor()``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUND_TRIPS = 20  # submit round trips per measurement


def cheap(x: int) -> int:
    return x + 1


@contextmanager
def process_pool(workers: int) -> Iterator[cf.Executor]:
    with cf.ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(cheap, range(workers * 2)))  # the processes are up
        yield ex


@contextmanager
def celerynb_executor(workers: int) -> Iterator[cf.Executor]:
    import celerynb

    with celerynb.LocalCluster(n_workers=workers) as cluster, cluster.executor() as ex:
        ex.submit(cheap, 0).result()
        yield ex


@contextmanager
def dask_executor(workers: int) -> Iterator[cf.Executor]:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        ex = client.get_executor()
        ex.submit(cheap, 0).result()
        yield ex


def _best(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(ex: cf.Executor, items: int, repeat: int) -> dict[str, float]:
    def round_trip() -> None:
        ex.submit(cheap, 1).result()

    def submits() -> float:
        each = []
        for _ in range(ROUND_TRIPS):
            start = time.perf_counter()
            round_trip()
            each.append(time.perf_counter() - start)
        return statistics.median(each)

    return {
        "map_s": _best(lambda: list(ex.map(cheap, range(items))), repeat),
        "map_chunked_s": _best(lambda: list(ex.map(cheap, range(items), chunksize=50)), repeat),
        "submit_s": min(submits() for _ in range(repeat)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    found: dict[str, dict[str, float]] = {}
    for name, make in (
        ("ProcessPoolExecutor", process_pool),
        ("celerynb Executor", celerynb_executor),
        ("dask get_executor", dask_executor),
    ):
        try:
            with make(args.workers) as ex:
                found[name] = measure(ex, args.items, args.repeat)
        except ImportError as exc:
            print(f"{name}: skipped ({exc})")
    base = found["ProcessPoolExecutor"]
    print(f"{args.items} items, {args.workers} worker processes, best of {args.repeat}")
    print(f"{'executor':22} {'map':>16} {'map chunksize=50':>18} {'submit round trip':>20}")
    for name, row in found.items():
        cells = [
            f"{row[key] * 1000:8.1f} ms x{row[key] / base[key]:5.1f}"
            for key in ("map_s", "map_chunked_s", "submit_s")
        ]
        print(f"{name:22} {cells[0]:>16} {cells[1]:>18} {cells[2]:>20}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
