"""Adaptive vs fixed default chunking, side by side in one run.

    python benchmarks/adaptive.py [--rows N] [--repeats K]

Workloads: ``uniform`` (every row costs the same), ``skewed`` (the last 10%
of rows cost 20x: the fixed rule puts them into one straggler chunk) and
``cheap`` (a vectorized function on a large frame: per-chunk overhead matters).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import pandas as pd

import celerynb


def _cost(n: int) -> float:
    acc = 0.0
    for i in range(1, n):
        acc += math.sin(i) / i
    return acc


def uniform(df: pd.DataFrame) -> pd.Series:
    return df["w"].map(lambda w: _cost(60))


def skewed(df: pd.DataFrame) -> pd.Series:
    return df["w"].map(lambda w: _cost(60 * int(w)))


def cheap(df: pd.DataFrame) -> pd.DataFrame:
    return df * 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    frame = pd.DataFrame({"w": np.ones(args.rows)})
    frame.loc[frame.index[-args.rows // 10 :], "w"] = 20.0
    plain = pd.DataFrame({"w": np.ones(args.rows)})
    big = pd.DataFrame(np.random.default_rng(0).normal(size=(4_000_000, 2)), columns=["a", "b"])
    cases = [("uniform", uniform, plain), ("skewed", skewed, frame), ("cheap", cheap, big)]
    with celerynb.LocalCluster() as cluster:
        fixed = 4 * cluster.concurrency
        head = f"{'workload':10} {'fixed (chunks)':>18} {'adaptive (chunks)':>20}"
        print(f"{head} {'fixed/adaptive':>15}")
        for name, func, data in cases:
            times: dict[str, list[float]] = {"fixed": [], "adaptive": []}
            counts: dict[str, int] = {}
            celerynb.cmap(func, data.iloc[:1000], cluster=cluster, progress=False)  # warm-up
            for _ in range(args.repeats):  # interleaved
                for mode, chunks in (("fixed", fixed), ("adaptive", None)):
                    t0 = time.perf_counter()
                    future = celerynb.cmap_async(
                        func, data, chunks=chunks, cluster=cluster, progress=False
                    )
                    future.result()
                    times[mode].append(time.perf_counter() - t0)
                    counts[mode] = future.n_chunks
            f, a = statistics.median(times["fixed"]), statistics.median(times["adaptive"])
            print(
                f"{name:10} {f:9.2f} s ({counts['fixed']:4}) {a:11.2f} s ({counts['adaptive']:4})"
                f" {f / a:14.2f}x"
            )


if __name__ == "__main__":
    main()
