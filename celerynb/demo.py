"""``celerynb demo``: a CPU-bound scoring job, serial vs ``cmap`` on the embedded cluster."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd

from .procs import find_redis_server


def make_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A synthetic customer table: four numeric columns."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "income": rng.lognormal(10, 0.5, rows).round(2),
            "visits": rng.poisson(4, rows),
            "tenure": rng.exponential(3.0, rows).round(3),
        },
        index=pd.RangeIndex(rows, name="customer"),
    )


def _row_score(age: float, income: float, visits: float, tenure: float) -> float:
    # deliberately pure Python: a small iterative model per row
    score = 0.0
    for step in range(1, 49):
        score += math.sin(age / step) * math.log1p(income / step) + visits / (step + tenure)
    return score / 48


def score_block(df: pd.DataFrame) -> pd.DataFrame:
    """Score every row of ``df`` (row-wise: the result has ``df``'s index)."""
    scores = [
        _row_score(a, i, v, t)
        for a, i, v, t in zip(df["age"], df["income"], df["visits"], df["tenure"], strict=True)
    ]
    out = pd.DataFrame({"score": scores}, index=df.index)
    out["segment"] = pd.cut(
        out["score"], [-math.inf, 0, 1, math.inf], labels=["low", "mid", "high"]
    )
    return out


def run(rows: int = 200_000, n_workers: int | None = None) -> int:
    """Run the demo; return a process exit code (0 when results agree).

    Raises ClusterError at once if the embedded cluster has no server to start.
    """
    from . import LocalCluster, cmap

    find_redis_server()
    df = make_frame(rows)
    print(f"celerynb demo: scoring {rows:,} rows with a pure-Python per-row function")
    t0 = time.perf_counter()
    expected = score_block(df)
    serial = time.perf_counter() - t0
    print(f"  serial (pandas, one core): {serial:6.2f} s")

    t0 = time.perf_counter()
    with LocalCluster(n_workers) as cluster:
        startup = time.perf_counter() - t0
        print(f"  embedded cluster ready:    {startup:6.2f} s  ({cluster.concurrency} workers)")
        t0 = time.perf_counter()
        result = cmap(score_block, df, cluster=cluster, progress="text")
        parallel = time.perf_counter() - t0
    try:
        pd.testing.assert_frame_equal(result, expected)
    except AssertionError as exc:
        print(f"  MISMATCH between cmap and the serial result:\n{exc}")
        return 1
    print(f"  parallel (cmap):           {parallel:6.2f} s")
    print(f"  speedup:                   {serial / parallel:6.2f}x  (result equals the serial one)")
    return 0
