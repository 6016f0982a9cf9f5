"""The benchmark workloads: data makers and the functions every candidate ships to workers.

Functions live in this importable module (not in ``__main__``) so that every
candidate, including raw Celery workers and dask's spawned workers, runs the
very same code.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "cheap",
    "cheap_row",
    "double",
    "join",
    "make_frame",
    "make_wide",
    "score_block",
    "score_row",
    "split",
    "tiny",
]


# make_frame, _row_score and score_block are celerynb.demo's (tests/test_benchmarks.py
# checks they agree), copied so that importing this module does not import celerynb:
# the cold start-up timings must count each library's own import.
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
    score = 0.0
    for step in range(1, 49):
        score += math.sin(age / step) * math.log1p(income / step) + visits / (step + tenure)
    return score / 48


def score_block(df: pd.DataFrame) -> pd.DataFrame:
    """W1: score every row of ``df`` in pure Python (row-wise: keeps ``df``'s index)."""
    scores = [
        _row_score(a, i, v, t)
        for a, i, v, t in zip(df["age"], df["income"], df["visits"], df["tenure"], strict=True)
    ]
    out = pd.DataFrame({"score": scores}, index=df.index)
    out["segment"] = pd.cut(
        out["score"], [-math.inf, 0, 1, math.inf], labels=["low", "mid", "high"]
    )
    return out


def make_wide(rows: int, seed: int = 0) -> pd.DataFrame:
    """A ``rows x 2`` float64 frame (16 bytes a row), built without a transient copy."""
    values = np.random.default_rng(seed).random((rows, 2))
    return pd.DataFrame(values, columns=["x", "y"], copy=False)


def cheap(chunk: pd.DataFrame) -> pd.Series:
    """W2: a cheap row-wise function (sum of each row)."""
    return chunk.sum(axis=1)


def double(chunk: pd.DataFrame) -> pd.DataFrame:
    """W3: ``chunk * 2``, a result as big as its input."""
    return chunk * 2


def tiny(chunk: list[int]) -> list[int]:
    """W4: next to nothing, for the round trip of one call."""
    return [x + 1 for x in chunk]


def score_row(row: np.ndarray) -> float:
    """W1's per-row score for pandarallel's ``parallel_apply(raw=True)`` (a NumPy row)."""
    age, income, visits, tenure = row
    return _row_score(age, income, visits, tenure)


def cheap_row(row: np.ndarray) -> float:
    """W2's row sum for pandarallel's ``parallel_apply(raw=True)``."""
    return float(row.sum())


def split(data: Any, n_chunks: int) -> list[Any]:
    """``data`` (frame, array or sequence) as ``n_chunks`` contiguous, near-equal parts."""
    n = len(data)
    n_chunks = max(1, min(n_chunks, n))
    bounds = [n * i // n_chunks for i in range(n_chunks + 1)]
    take = data.iloc if hasattr(data, "iloc") else data
    return [take[a:b] for a, b in itertools.pairwise(bounds)]


def join(parts: list[Any]) -> Any:
    """Concatenate chunk results in order (pandas objects or lists)."""
    if parts and isinstance(parts[0], pd.DataFrame | pd.Series):
        return pd.concat(parts)
    return [x for part in parts for x in part]
