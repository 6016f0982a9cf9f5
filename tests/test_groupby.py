"""groupby parity: ``cmap(f, df.groupby(...))`` equals ``df.groupby(...).apply(f)``.

Every test runs on the session's real embedded cluster and compares exactly
(values, dtypes, index, columns, names) with what the installed pandas returns
for the same groupby. Also checked: how groups are batched into chunks (one
huge group alone in its chunk, many tiny groups per chunk), ``chunks=``, the
error message of a failing group, and an empty frame.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import celerynb
from celerynb import ChunkError, cmap
from celerynb.inputs import nbytes
from celerynb.plane import SHM_MARKER
from celerynb.plane.keys import CallKeys
from celerynb.planning import EARLY_BYTES, MAX_CHUNK_BYTES, make_plan

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

BOUND = 60  # seconds any single call may take on a loaded machine


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], data: Any, **kw: Any) -> Any:
    return cmap(func, data, cluster=cluster, progress=False, **kw)


def assert_same(out: Any, expected: Any) -> None:
    """Equal value, type, dtype, index, columns, names and order."""
    assert type(out) is type(expected), f"{type(out).__name__} != {type(expected).__name__}"
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(
            out, expected, check_exact=True, check_index_type=True, check_column_type=True
        )
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(out, expected, check_exact=True, check_index_type=True)
    else:
        assert out == expected


# -- the functions applied to each group ----------------------------------------


def total(g: Any) -> Any:
    """A scalar per group."""
    return g["v"].sum() if isinstance(g, pd.DataFrame) else g.sum()


def means(g: Any) -> Any:
    """A Series per group (column means of a frame group; a summary of a Series group)."""
    if isinstance(g, pd.DataFrame):
        return g[["v", "w"]].mean()
    return pd.Series({"mean": g.mean(), "max": g.max()})


def centred(g: Any) -> Any:
    """Like-indexed: a transform."""
    if isinstance(g, pd.DataFrame):
        return g[["v", "w"]] - g[["v", "w"]].mean()
    return g - g.mean()


def first_two(g: Any) -> Any:
    """A filter: at most two rows of each group."""
    return g.head(2)


FUNCS = [total, means, centred, first_two]
FUNC_IDS = ["scalar", "series", "transform", "head2"]
parametrize_funcs = pytest.mark.parametrize("func", FUNCS, ids=FUNC_IDS)


# -- data ----------------------------------------------------------------------


def frame(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """String and int keys with unequal group sizes, a non-default index."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "k": rng.choice(["d", "a", "c", "b", "e"], size=n, p=[0.4, 0.1, 0.2, 0.2, 0.1]),
            "k2": rng.integers(0, 3, size=n),
            "v": rng.normal(size=n).round(3),
            "w": rng.integers(0, 100, size=n),
        },
        index=pd.Index(np.arange(n) * 10 + 7, name="row"),
    )


def with_nan_keys(n: int = 40) -> pd.DataFrame:
    df = frame(n, seed=1)
    df["k"] = df["k"].astype(object)
    df.loc[df.index[::7], "k"] = np.nan
    return df


def multi_indexed(n: int = 40) -> pd.DataFrame:
    df = frame(n, seed=2)
    return df.set_index(["k", "k2"])[["v", "w"]]


def float_nan_keys(n: int = 40) -> pd.DataFrame:
    df = frame(n, seed=5)
    df["k"] = df["k2"].astype(np.float64)
    df.loc[df.index[::6], "k"] = np.nan
    return df


def range_indexed(n: int = 40) -> pd.DataFrame:
    return frame(n, seed=4).reset_index(drop=True)


def categorical(n: int = 40) -> pd.DataFrame:
    df = frame(n, seed=3)
    df["k"] = pd.Categorical(df["k"], categories=["e", "d", "c", "b", "a", "unused"])
    return df


# name -> (frame maker, groupby arguments)
CASES: dict[str, tuple[Callable[[], pd.DataFrame], dict[str, Any]]] = {
    "one-key": (frame, {"by": "k"}),
    "two-keys": (frame, {"by": ["k", "k2"]}),
    "group_keys=False": (frame, {"by": "k", "group_keys": False}),
    # Was: a transform with group_keys=False on a RangeIndex frame comes back with an
    # Index([0, 1, ...], dtype=int64) where pandas keeps the RangeIndex (GroupPlan.join).
    "group_keys=False-RangeIndex": (range_indexed, {"by": "k", "group_keys": False}),
    "as_index=False": (frame, {"by": "k", "as_index": False}),
    "two-keys-as_index=False": (frame, {"by": ["k", "k2"], "as_index": False}),
    "sort=False": (frame, {"by": "k", "sort": False}),
    "dropna=False": (with_nan_keys, {"by": "k", "dropna": False}),
    # Was: NaN keys with dropna=True (the default): GroupPlan.make fails with
    # "TypeError: Cannot cast array data from dtype('float64') to dtype('int64')"
    # (ngroup() is float64 with NaN for the dropped rows).
    "dropna=True": (with_nan_keys, {"by": "k"}),
    "sort=False-dropna=False": (with_nan_keys, {"by": "k", "sort": False, "dropna": False}),
    # Was: sort=False with a float NaN key: GroupPlan.make fails with "KeyError: nan"
    # (firsts[k] looks up a NaN key in grouped.indices, whose NaN is another object).
    "float-sort=False-dropna=False": (
        float_nan_keys,
        {"by": "k", "sort": False, "dropna": False},
    ),
    "level=0": (multi_indexed, {"level": 0}),
    "level=[0,1]": (multi_indexed, {"level": ["k", "k2"]}),
    "categorical": (categorical, {"by": "k"}),
    "categorical-sort=False": (categorical, {"by": "k", "sort": False}),
}


@parametrize_funcs
@pytest.mark.parametrize("case", list(CASES))
def test_frame_groupby_parity(cluster: celerynb.LocalCluster, case: str, func: Callable) -> None:
    make, options = CASES[case]
    df = make()
    expected = df.groupby(**options).apply(func)
    out = run(cluster, func, df.groupby(**options), chunks=3)
    assert_same(out, expected)


def test_categorical_observed_false(cluster: celerynb.LocalCluster) -> None:
    """Unobserved categories are groups too (empty ones) when observed=False."""
    # Was: every chunk's own groupby(observed=False) emits every category, so the
    # joined result repeats each key once per chunk (24 rows instead of 6).
    df = categorical()
    expected = df.groupby("k", observed=False).apply(total)
    assert "unused" in expected.index
    out = run(cluster, total, df.groupby("k", observed=False), chunks=3)
    assert_same(out, expected)


SERIES_CASES: dict[str, dict[str, Any]] = {
    "one-key": {},
    "group_keys=False": {"group_keys": False},
    "sort=False": {"sort": False},
}


@parametrize_funcs
@pytest.mark.parametrize("case", list(SERIES_CASES))
def test_series_groupby_parity(cluster: celerynb.LocalCluster, case: str, func: Callable) -> None:
    df = frame()
    options = SERIES_CASES[case]
    expected = df.groupby("k", **options)["v"].apply(func)
    out = run(cluster, func, df.groupby("k", **options)["v"], chunks=3)
    assert_same(out, expected)


@parametrize_funcs
def test_series_groupby_by_external_key(cluster: celerynb.LocalCluster, func: Callable) -> None:
    """A Series grouped by another Series (the key is not part of the grouped object)."""
    df = frame()
    expected = df["v"].groupby(df["k"]).apply(func)
    out = run(cluster, func, df["v"].groupby(df["k"]), chunks=3)
    assert_same(out, expected)


@pytest.mark.parametrize("chunking", [{"chunks": 1}, {"chunks": 2}, {"chunks": 1000}, {}])
def test_chunkings_agree(cluster: celerynb.LocalCluster, chunking: dict[str, int]) -> None:
    df = frame(60)
    for func in (total, centred):
        expected = df.groupby(["k", "k2"]).apply(func)
        assert_same(run(cluster, func, df.groupby(["k", "k2"]), **chunking), expected)


# -- how groups are batched into chunks --------------------------------------------


def assert_plan_covers(future: celerynb.MapFuture, grouped: Any) -> None:
    """The chunks hold every grouped row once, whole groups each, in group order."""
    plan = future._call.plan
    assert future.n_chunks == len(plan.rows) == len(plan.groups)
    rows = np.concatenate(plan.rows)
    numbers = grouped.ngroup().to_numpy()
    assert sorted(rows.tolist()) == np.flatnonzero(numbers >= 0).tolist()
    previous_stop = 0
    for (start, stop), chunk_rows in zip(plan.groups, plan.rows, strict=True):
        assert start == previous_stop and stop > start
        assert set(numbers[chunk_rows].tolist()) == set(range(start, stop))
        previous_stop = stop
    assert previous_stop == grouped.ngroups


def test_huge_group_is_its_own_chunk(cluster: celerynb.LocalCluster) -> None:
    rng = np.random.default_rng(5)
    n = 6000
    keys = np.where(rng.random(n) < 0.6, 100, rng.integers(0, 200, size=n))
    df = pd.DataFrame({"k": keys, "v": rng.normal(size=n)})
    share = (df["k"] == 100).mean()
    assert 0.55 < share < 0.65
    grouped = df.groupby("k")
    future = celerynb.cmap_async(total, grouped, cluster=cluster, progress=False)
    assert_plan_covers(future, grouped)
    big = np.flatnonzero(df["k"].to_numpy() == 100)
    holding = [i for i, r in enumerate(future._call.plan.rows) if np.isin(big, r).any()]
    assert len(holding) == 1, "the huge group was split"
    (i,) = holding
    assert future._call.plan.rows[i].tolist() == big.tolist(), "the huge group shares its chunk"
    start, stop = future._call.plan.groups[i]
    assert stop - start == 1
    assert future._call.plan.labels[i] == (100, 100)
    assert future.n_chunks > 2  # the other groups are still spread over chunks
    assert_same(future.result(timeout=BOUND), grouped.apply(total))


def test_many_tiny_groups_are_batched(cluster: celerynb.LocalCluster) -> None:
    n_groups = 300
    df = pd.DataFrame(
        {
            "k": np.repeat(np.arange(n_groups), 2)[::-1],
            "v": np.arange(2.0 * n_groups),
            "w": np.arange(2 * n_groups),
        }
    )
    grouped = df.groupby("k")
    future = celerynb.cmap_async(centred, grouped, cluster=cluster, progress=False)
    assert_plan_covers(future, grouped)
    default = 4 * cluster.n_workers
    # about the default chunk count (its exact value is test_chunks_override's business)
    assert default // 2 <= future.n_chunks <= 2 * default
    per_chunk = [stop - start for start, stop in future._call.plan.groups]
    # (the last chunk may hold only what is left over: see test_chunks_override)
    assert min(per_chunk[:-1]) >= n_groups // (2 * default), per_chunk
    assert_same(future.result(timeout=BOUND), grouped.apply(centred))


@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_chunks_override(cluster: celerynb.LocalCluster, chunks: int) -> None:
    # Was: chunks=3 over 14 equal groups gives 4 chunks: GroupPlan.make cuts when a
    # chunk would pass ceil(rows / n_chunks), so chunks fill below the target.
    df = pd.DataFrame({"k": np.arange(70) % 14, "v": np.arange(70.0)})  # 14 groups of 5
    grouped = df.groupby("k")
    future = celerynb.cmap_async(total, grouped, chunks=chunks, cluster=cluster, progress=False)
    assert future.n_chunks == chunks
    assert_plan_covers(future, grouped)
    assert_same(future.result(timeout=BOUND), grouped.apply(total))


def test_more_chunks_than_groups_is_capped(cluster: celerynb.LocalCluster) -> None:
    grouped = frame().groupby("k")  # 5 groups
    future = celerynb.cmap_async(total, grouped, chunks=1000, cluster=cluster, progress=False)
    assert future.n_chunks == grouped.ngroups
    assert [stop - start for start, stop in future._call.plan.groups] == [1] * grouped.ngroups
    assert_same(future.result(timeout=BOUND), grouped.apply(total))


# -- errors and edge cases ---------------------------------------------------------


class GroupFailed(ValueError):
    pass


def fail_on_c(g: pd.DataFrame) -> float:
    if g.name == "c":
        raise GroupFailed("group c is bad")
    return float(g["v"].sum())


def test_failing_group_names_its_groups(cluster: celerynb.LocalCluster) -> None:
    df = frame()
    grouped = df.groupby("k")  # groups a b c d e
    future = celerynb.cmap_async(fail_on_c, grouped, chunks=1000, cluster=cluster, progress=False)
    assert future.n_chunks == 5
    with pytest.raises(ChunkError) as info:
        future.result(timeout=BOUND)
    assert isinstance(info.value, GroupFailed)
    message = str(info.value)
    assert "chunk 2 of 5 (groups 2:3, keys 'c' .. 'c')" in message, message
    assert "group c is bad" in message


def test_failing_group_in_a_batch(cluster: celerynb.LocalCluster) -> None:
    df = pd.DataFrame({"k": [f"g{i:02d}" for i in range(30)], "v": np.arange(30.0)})
    grouped = df.groupby("k")

    def bad(g: pd.DataFrame) -> float:
        if g.name == "g17":
            raise GroupFailed("g17")
        return float(g["v"].sum())

    future = celerynb.cmap_async(bad, grouped, chunks=3, cluster=cluster, progress=False)
    with pytest.raises(GroupFailed) as info:
        future.result(timeout=BOUND)
    assert "chunk 1 of 3 (groups 10:20, keys 'g10' .. 'g19')" in str(info.value)


@parametrize_funcs
def test_empty_frame_groupby(cluster: celerynb.LocalCluster, func: Callable) -> None:
    df = frame().iloc[:0]
    expected = df.groupby("k").apply(func)
    assert_same(run(cluster, func, df.groupby("k")), expected)


def test_all_keys_nan_dropped(cluster: celerynb.LocalCluster) -> None:
    """Every row has a NaN key: no groups at all, as pandas says."""
    df = pd.DataFrame({"k": [np.nan] * 4, "v": np.arange(4.0)})
    expected = df.groupby("k").apply(total)
    assert_same(run(cluster, total, df.groupby("k")), expected)


# -- property test ---------------------------------------------------------------

_FRAMES = st.integers(1, 30).flatmap(
    lambda n: st.tuples(
        st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=n, max_size=n),
        st.lists(st.sampled_from(["x", "y"]), min_size=n, max_size=n),
        st.lists(st.integers(-50, 50), min_size=n, max_size=n),
    )
)


@settings(
    max_examples=10,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking: each try is a call
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    columns=_FRAMES,
    two_keys=st.booleans(),
    options=st.fixed_dictionaries(
        {
            "sort": st.booleans(),
            "group_keys": st.booleans(),
            "dropna": st.booleans(),
            "as_index": st.booleans(),
        }
    ),
    func=st.sampled_from(FUNCS),
    chunks=st.integers(1, 6),
)
def test_property_groupby_parity(
    cluster: celerynb.LocalCluster,
    columns: tuple[list[Any], list[str], list[int]],
    two_keys: bool,
    options: dict[str, bool],
    func: Callable,
    chunks: int,
) -> None:
    keys, keys2, values = columns
    df = pd.DataFrame(
        {
            "k": pd.array(keys, dtype="float64"),
            "k2": keys2,
            "v": np.array(values, dtype=np.float64),
            "w": np.array(values, dtype=np.int64) * 3,
        }
    )
    by = ["k", "k2"] if two_keys else "k"
    expected = df.groupby(by, **options).apply(func)
    out = run(cluster, func, df.groupby(by, **options), chunks=chunks)
    assert_same(out, expected)


def test_filter_where_one_chunk_keeps_every_group_whole(cluster: celerynb.LocalCluster) -> None:
    """A chunk whose groups all come back whole is laid out in row order by pandas;
    the whole apply (where some group was cut) is in group order: so is the join."""
    df = pd.DataFrame(
        {"k": [1.0, 2.0, 1.0, 2.0, 3.0, 1.0, 3.0, 3.0], "k2": list("xxyyxxxx"), "v": range(8)}
    )
    grouped = df.groupby(["k", "k2"], group_keys=False)
    expected = grouped.apply(first_two)
    out = run(cluster, first_two, grouped, chunks=3)
    assert_same(out, expected)


# -- the data path: shared memory, the 64 MiB limit, a big call that starts early --------------


def _gated_total(g: pd.DataFrame, gate: str) -> float:
    while not os.path.exists(gate):
        time.sleep(0.01)
    return float(g["v"].sum())


@pytest.mark.parametrize("series", [False, True], ids=["DataFrameGroupBy", "SeriesGroupBy"])
def test_groupby_chunks_travel_through_shared_memory(
    cluster: celerynb.LocalCluster, tmp_path: Path, series: bool
) -> None:
    """Was: a groupby had no size (no ``.nbytes``), so its chunks went through Redis."""
    assert cluster.shm is not None
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"k": rng.integers(0, 50, 400_000), "v": rng.random(400_000)})  # 6.4 MB
    grouped = df.groupby("k")["v"] if series else df.groupby("k")
    func = (lambda g, gate: _gated_total(g.to_frame("v"), gate)) if series else _gated_total
    assert nbytes(grouped) == nbytes(df["v"] if series else df)
    gate = tmp_path / "go"
    future = celerynb.cmap_async(
        func, grouped, kwargs={"gate": str(gate)}, chunks=8, cluster=cluster, progress=False
    )
    try:
        keys = CallKeys(future.id)
        deadline = time.monotonic() + 10  # stored by the call's feeder thread, as workers take
        while True:
            marks = [cluster.redis.get(keys.chunk(i)) for i in range(8)]
            if None not in marks or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert marks == [SHM_MARKER] * 8, marks  # the keys only mark the chunks' shm files
    finally:
        gate.touch()
    expected = grouped.apply(lambda g: float(g.sum() if series else g["v"].sum()))
    assert_same(future.result(timeout=BOUND), expected)


def test_groupby_chunks_stay_under_the_chunk_limit() -> None:
    """Was: a multi-GB frame's groupby made the default 8 chunks, each far over 64 MiB."""
    df = pd.DataFrame({"k": np.arange(20_000) % 1000, "v": np.arange(20_000.0)})
    grouped = df.groupby("k")
    plan, _ = make_plan((grouped,), 2, 20 * MAX_CHUNK_BYTES, None, None, False)
    assert len(plan) == 20  # as many chunks as 64 MiB pieces of the data
    small, _ = make_plan((grouped,), 2, nbytes(grouped), None, None, False)
    assert len(small) == 8


def test_big_groupby_starts_before_all_is_stored(cluster: celerynb.LocalCluster) -> None:
    """A groupby of more than EARLY_BYTES starts its workers on the first chunks:
    ``cmap_async`` returns before they are stored (its feeder stores them as the workers
    take them), and the first chunk runs before the last one is stored."""
    rng = np.random.default_rng(4)
    df = pd.DataFrame({"k": rng.integers(0, 500, 4_000_000), "v": rng.random(4_000_000)})
    assert nbytes(df) >= EARLY_BYTES
    grouped = df.groupby("k")
    future = celerynb.cmap_async(total, grouped, chunks=32, cluster=cluster, progress=False)
    returned = pd.Timestamp.now(tz="UTC")
    assert_same(future.result(timeout=BOUND), grouped.apply(total))
    stats = future.stats()
    assert returned < stats["end"].min()
    assert stats["start"].min() < stats["start"].max()
    assert not cluster.redis.exists(CallKeys(future.id).open)
