"""pandarallel's documented workloads, side by side: ``python -m benchmarks.peers [--quick]``.

The eight examples of pandarallel's own notebook (``docs/examples_mac_linux.ipynb``
in nalepae/pandarallel), with its functions, on data from fixed seeds, each
scaled so that serial pandas takes about 3 s on the benchmark machine (about
0.05 s in ``--quick`` mode; the sizes are in :data:`SIZES` and in the row
titles). ``python -m benchmarks`` runs this section after the main table and
writes it into RESULTS.md and the chart.

How each candidate expresses each workload, as a user of that library would
(``n`` = ``4 x workers`` chunks):

- **serial pandas**: the notebook's serial line, in the harness process
  (``df.apply(func, axis=1)``, ``df.map(func)``, ``df.groupby("a").apply(func)``,
  ``df.groupby("a").b.rolling(4).apply(func, raw=False)``, the same with
  ``.expanding(4)``, ``df.a.map(func)``, ``df.a.apply(func, args=(2,), bias=3)``,
  ``df.b.rolling(4).apply(func, raw=False)``).
- **celerynb cmap**: ``cmap(f, x, progress=False)`` on a warm embedded
  ``LocalCluster(workers)``, default chunking: ``f`` is the serial line for a
  chunk (``lambda c: c.apply(func, axis=1)``, ``c.map(func)``, ...) over rows of
  ``df`` / ``df.a``; for the groupbys, ``cmap(func, df.groupby("a"))`` and
  ``cmap(lambda g: g.rolling(4).apply(func, raw=False), df.groupby("a").b)``
  (``func`` per group, laid out as ``groupby.apply`` does, which for a rolling
  or expanding window per group is exactly ``groupby.rolling``'s layout); the
  rolling Series with ``overlap=3`` (each chunk carries the 3 rows before it).
- **pandarallel**: its own API (``parallel_apply``, ``parallel_applymap``,
  ``parallel_map``, ``groupby(...).parallel_apply``,
  ``.rolling(4).parallel_apply``) with ``nb_workers=workers``: one chunk per
  worker, a new fork pool per call, data through /dev/shm files. It runs in a
  spawned helper process (as in the main table: it forks on every call) that
  builds the same data from the same seeds and times the calls; the warm-up
  result comes back through the pipe to be checked here. pandas 3 dropped
  ``DataFrame.applymap``, which ``parallel_applymap`` calls: the helper aliases
  it to ``DataFrame.map`` (and the renamed window classes, as the main table does).
- **joblib**: ``Parallel(n_jobs=workers)`` (loky) over ``n`` row chunks, joined with
  ``pd.concat``; the groupbys over ``n`` sub-frames of whole groups (the sorted
  keys split into ``n`` lists, ``df[df.a.isin(keys)]``, the serial line on each,
  concatenated in key order); the rolling Series over ``n`` chunks that carry the
  3 rows before them, trimmed on the worker.
- **dask**: ``dd.from_pandas(x, npartitions=n)`` on a distributed
  ``LocalCluster(workers, threads_per_worker=1)``: ``map_partitions(f, meta=)``
  for the row-wise workloads, ``groupby("a").apply(func, meta=)`` for the
  groupby (then ``sort_index()``: dask returns groups in shuffle order), and
  ``groupby("a").b.apply(per-group window, meta=)`` + ``sort_index()`` for the
  rolling and expanding groupbys (dask's ``groupby.rolling`` takes time windows on a
  DatetimeIndex only and drops the group level; it has no ``groupby.expanding``);
  ``map_overlap(f, 3, 0, meta=)`` for the rolling Series (what dask's own
  ``Series.rolling`` runs).

Every candidate's warm-up result (the full data) is checked against serial
pandas with ``assert_frame_equal`` / ``assert_series_equal(check_exact=True)``;
any difference goes into the table's notes. The timed repeats interleave the
candidates, rotating their order each repeat, as ``benchmarks/run.py`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandas as pd

from benchmarks import candidates
from benchmarks.candidates import Candidate, Isolated

if TYPE_CHECKING:
    from benchmarks.run import Metric

OVERLAP = 3  # rows a rolling(4) window needs before a chunk


# -- the notebook's functions ------------------------------------------------


def row_func(x: Any) -> float:
    """1. DataFrame.apply axis=1."""
    return math.sin(x.a**2) + math.sin(x.b**2)


def cell_func(x: Any) -> float:
    """2. DataFrame.map."""
    return math.sin(x**2) - math.cos(x**2)


def group_func(df: pd.DataFrame) -> float:
    """3. DataFrame.groupby.apply."""
    dum = 0.0
    for item in df.b:
        dum += math.log10(math.sqrt(math.exp(item**2)))
    return dum / len(df.b)


def window_func(x: pd.Series) -> float:
    """4, 5 and 8: groupby.rolling, groupby.expanding and Series.rolling apply."""
    return float(x.iloc[0] + x.iloc[1] ** 2 + x.iloc[2] ** 3 + x.iloc[3] ** 4)


def series_func(x: float) -> float:
    """6. Series.map."""
    return math.log10(math.sqrt(math.exp(x**2)))


def series_func_args(x: float, power: int, bias: float = 0) -> float:
    """7. Series.apply with args."""
    return math.log10(math.sqrt(math.exp(x**power))) + bias


# -- what runs on a chunk (or a group) ----------------------------------------


def apply_rows(c: pd.DataFrame) -> Any:
    return c.apply(row_func, axis=1)


def map_cells(c: pd.DataFrame) -> pd.DataFrame:
    return c.map(cell_func)


def rolling_window(c: pd.Series) -> pd.Series:
    return c.rolling(4).apply(window_func, raw=False)


def expanding_window(c: pd.Series) -> pd.Series:
    return c.expanding(4).apply(window_func, raw=False)


def map_series(c: pd.Series) -> pd.Series:
    return c.map(series_func)


def apply_series(c: pd.Series) -> pd.Series:
    return c.apply(series_func_args, args=(2,), bias=3)


def groupby_apply(df: pd.DataFrame) -> Any:
    return df.groupby("a").apply(group_func)


def groupby_rolling(df: pd.DataFrame) -> pd.Series:
    return df.groupby("a").b.rolling(4).apply(window_func, raw=False)


def groupby_expanding(df: pd.DataFrame) -> pd.Series:
    return df.groupby("a").b.expanding(4).apply(window_func, raw=False)


def trimmed(func: Callable[[Any], Any], part: Any, skip: int) -> Any:
    """``func(part)`` without the rows of the ``skip`` carried items (joblib's overlap)."""
    return func(part).iloc[skip:]


# -- the workloads ----------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One workload: its row title, data maker, serial line and the chunk / group function
    the chunking peers run (``kind``: how they split the data)."""

    title: str
    make: Callable[[int], pd.DataFrame]
    serial: Callable[[pd.DataFrame], Any]
    func: Callable[[Any], Any]
    kind: str  # "rows" (of ``column`` or the frame), "groups" or "window"
    column: str | None = None  # the Series the workload runs on (None: the frame)


def _frame(rows: int, high: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.integers(1, high, rows), "b": rng.random(rows)})


def _plus_one(rows: int, seed: int) -> pd.DataFrame:
    return pd.DataFrame({"a": np.random.default_rng(seed).random(rows) + 1})


def _counting(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(8)
    return pd.DataFrame({"a": rng.integers(1, 8, rows), "b": np.arange(rows)})


SPECS: dict[str, Spec] = {
    "apply": Spec(
        "1. DataFrame.apply axis=1",
        lambda n: _frame(n, 8, 1),
        lambda df: df.apply(row_func, axis=1),
        apply_rows,
        "rows",
    ),
    "map": Spec(
        "2. DataFrame.map",
        lambda n: _frame(n, 8, 2),
        lambda df: df.map(cell_func),
        map_cells,
        "rows",
    ),
    "groupby": Spec(
        "3. DataFrame.groupby.apply",
        lambda n: _frame(n, 1000, 3),
        lambda df: df.groupby("a").apply(group_func),
        group_func,
        "groups",
    ),
    "rolling": Spec(
        "4. groupby.rolling(4).apply",
        lambda n: _frame(n, 300, 4),
        lambda df: df.groupby("a").b.rolling(4).apply(window_func, raw=False),
        rolling_window,
        "groups",
    ),
    "expanding": Spec(
        "5. groupby.expanding(4).apply",
        lambda n: _frame(n, 300, 5),
        lambda df: df.groupby("a").b.expanding(4).apply(window_func, raw=False),
        expanding_window,
        "groups",
    ),
    "smap": Spec(
        "6. Series.map",
        lambda n: _plus_one(n, 6),
        lambda df: df.a.map(series_func),
        map_series,
        "rows",
        "a",
    ),
    "sapply": Spec(
        "7. Series.apply with args",
        lambda n: _plus_one(n, 7),
        lambda df: df.a.apply(series_func_args, args=(2,), bias=3),
        apply_series,
        "rows",
        "a",
    ),
    "srolling": Spec(
        "8. Series.rolling(4).apply",
        _counting,
        lambda df: df.b.rolling(4).apply(window_func, raw=False),
        rolling_window,
        "window",
        "b",
    ),
}

# rows of each workload's frame: (full, quick); full: serial pandas about 3 s on the
# benchmark machine (2 cores of a Xeon, pandas 3.1), quick: about 0.05 s
SIZES: dict[str, tuple[int, int]] = {
    "apply": (330_000, 5_000),
    "map": (5_000_000, 100_000),
    "groupby": (10_000_000, 200_000),
    "rolling": (165_000, 3_000),
    "expanding": (165_000, 3_000),
    "smap": (10_000_000, 200_000),
    "sapply": (6_000_000, 100_000),
    "srolling": (160_000, 3_000),
}


def rows(key: str, quick: bool) -> int:
    return SIZES[key][1 if quick else 0]


def make(key: str, quick: bool) -> pd.DataFrame:
    """The frame of workload ``key`` (the same in every process: fixed seeds)."""
    return SPECS[key].make(rows(key, quick))


def title(key: str, quick: bool) -> str:
    spec, n = SPECS[key], rows(key, quick)
    what = f"{n:,} rows" if spec.column else f"{n:,} x 2"
    groups = {"groupby": ", 999 groups", "rolling": ", 299 groups", "expanding": ", 299 groups"}
    return f"{spec.title} ({what}{groups.get(key, '')})"


# -- checking -------------------------------------------------------------------


def check(out: Any, expected: Any) -> str | None:
    """None if ``out`` strictly equals ``expected`` (pandas' assert_*_equal with
    ``check_exact=True``); else what differs."""
    frame = isinstance(expected, pd.DataFrame)
    assert_equal: Callable[..., None] = (
        pd.testing.assert_frame_equal if frame else pd.testing.assert_series_equal
    )
    if type(out) is not type(expected):
        return (
            f"RESULT DIFFERS FROM SERIAL: a {type(out).__name__}, not a {type(expected).__name__}"
        )
    try:
        assert_equal(out, expected, check_exact=True)
        return None
    except AssertionError as exc:
        strict = " ".join(str(exc).split())
    with contextlib.suppress(AssertionError):
        assert_equal(out, expected, check_exact=True, check_names=False)
        return (
            f"equals serial only with check_names=False ({_names(out)}; serial: {_names(expected)})"
        )
    with contextlib.suppress(AssertionError, TypeError, ValueError):
        assert_equal(out.sort_index(), expected, check_exact=True)
        return "RESULT DIFFERS FROM SERIAL: same rows, another order"
    with contextlib.suppress(AssertionError, TypeError):
        assert_equal(out, expected, check_dtype=False, check_names=False, check_exact=False)
        return "RESULT DIFFERS FROM SERIAL: values close, not exact (or other dtypes/names)"
    return f"RESULT DIFFERS FROM SERIAL: {strict[:100]}"


def _names(x: Any) -> str:
    """The names that ``check_names`` compares: the Series' (or the columns'), the index's."""
    own = f"columns {list(x.columns.names)}" if isinstance(x, pd.DataFrame) else f"name {x.name!r}"
    return f"{own}, index {list(x.index.names)}"


# -- the candidates ---------------------------------------------------------------


def cmap_has_overlap() -> bool:
    """Whether this celerynb's ``cmap`` takes ``overlap=``."""
    try:
        from celerynb.options import CallOptions
    except ImportError:
        return False
    return "overlap" in {f.name for f in dataclasses.fields(CallOptions)}


class Peer:
    """One candidate of this section: a harness candidate (which starts and stops the
    library) and how it expresses each workload."""

    name, label = "?", "?"

    def __init__(self, base: Candidate) -> None:
        self.base = base
        self.workers = base.workers
        self.notes: dict[str, str] = {}  # workload -> a note on how it runs there

    def missing(self) -> str | None:
        return self.base.missing()

    def supports(self, key: str) -> str | None:
        """Why this candidate does not run workload ``key`` (None if it does)."""
        return None

    def start(self) -> None:
        self.base.start()

    def run(self, key: str, df: pd.DataFrame) -> Any:
        raise NotImplementedError

    def call(self, key: str, df: pd.DataFrame, warm: bool = False) -> tuple[float, Any]:
        """Seconds of one call and its result (None when not ``warm``, if it stays elsewhere)."""
        t0 = time.perf_counter()
        out = self.run(key, df)
        return time.perf_counter() - t0, out


class SerialPeer(Peer):
    name, label = "serial", "serial pandas"

    def run(self, key: str, df: pd.DataFrame) -> Any:
        return SPECS[key].serial(df)


class CmapPeer(Peer):
    name, label = "cmap", "celerynb cmap"

    def supports(self, key: str) -> str | None:
        if SPECS[key].kind == "window" and not cmap_has_overlap():
            return "n/a (overlap= not available)"
        return None

    def run(self, key: str, df: pd.DataFrame) -> Any:
        from celerynb import cmap_async

        spec = SPECS[key]
        base = self.base
        assert isinstance(base, candidates.Cmap)
        options: dict[str, Any] = {"progress": False, "cluster": base.cluster}
        if spec.kind == "groups":
            data: Any = df.groupby("a") if key == "groupby" else df.groupby("a").b
        else:
            data = df[spec.column] if spec.column else df
        if spec.kind == "window":
            options["overlap"] = OVERLAP
        future = cmap_async(spec.func, data, timeout=candidates.TIMEOUT, **options)
        return future.result()


class JoblibPeer(Peer):
    name, label = "joblib", "joblib"

    def run(self, key: str, df: pd.DataFrame) -> Any:
        from joblib import delayed

        spec, n = SPECS[key], candidates.CHUNKS_PER_WORKER * self.workers
        base = self.base
        assert isinstance(base, candidates.Joblib)
        if spec.kind == "groups":
            per_part = {"groupby": groupby_apply, "rolling": groupby_rolling}
            func = per_part.get(key, groupby_expanding)
            keys = np.sort(df["a"].unique())
            parts = [df[df["a"].isin(k)] for k in np.array_split(keys, min(n, len(keys)))]
            return pd.concat(base.parallel(delayed(func)(p) for p in parts))
        x = df[spec.column] if spec.column else df
        if spec.kind == "window":
            return pd.concat(
                base.parallel(delayed(trimmed)(spec.func, p, skip) for p, skip in carried(x, n))
            )
        return pd.concat(base.parallel(delayed(spec.func)(p) for p in split(x, n)))


def split(x: Any, n: int) -> list[Any]:
    """``x`` as ``n`` contiguous, near-equal row chunks."""
    return [x.iloc[a:b] for a, b in pairwise(_bounds(len(x), n))]


def carried(x: Any, n: int) -> Iterator[tuple[Any, int]]:
    """``n`` row chunks of ``x``, each with the ``OVERLAP`` rows before it (and how many)."""
    for a, b in pairwise(_bounds(len(x), n)):
        first = max(0, a - OVERLAP)
        yield x.iloc[first:b], a - first


def _bounds(length: int, n: int) -> list[int]:
    n = max(1, min(n, length))
    return [length * i // n for i in range(n + 1)]


class DaskPeer(Peer):
    name, label = "dask", "dask"

    def __init__(self, base: Candidate) -> None:
        super().__init__(base)
        self.notes = {
            "groupby": "sorted by key after compute (dask returns groups in shuffle order)",
            "rolling": "groupby.apply of a per-group rolling (dask's groupby.rolling takes "
            "time windows only), sorted after compute",
            "expanding": "groupby.apply of a per-group expanding (dask has no "
            "groupby.expanding), sorted after compute",
            "srolling": "map_overlap(f, 3, 0)",
        }
        self.metas: dict[str, Any] = {}

    def meta(self, key: str, df: pd.DataFrame) -> Any:
        """The ``meta=`` a user would write: an empty result of the right shape."""
        if key not in self.metas:
            self.metas[key] = SPECS[key].serial(df.iloc[:50]).iloc[:0]
        return self.metas[key]

    def run(self, key: str, df: pd.DataFrame) -> Any:
        import dask.dataframe as dd

        spec, n = SPECS[key], candidates.CHUNKS_PER_WORKER * self.workers
        base = self.base
        assert isinstance(base, candidates.DaskMap)
        meta = self.meta(key, df)
        if spec.kind == "groups":
            grouped = dd.from_pandas(df, npartitions=n).groupby("a")
            if key == "groupby":
                lazy = grouped.apply(group_func, meta=meta)
            else:
                lazy = grouped.b.apply(spec.func, meta=meta)
            return base.client.compute(lazy, sync=True).sort_index()
        x = dd.from_pandas(df[spec.column] if spec.column else df, npartitions=n)
        if spec.kind == "window":
            lazy = x.map_overlap(spec.func, OVERLAP, 0, meta=meta)
        else:
            lazy = x.map_partitions(spec.func, meta=meta)
        return base.client.compute(lazy, sync=True)


PANDARALLEL: dict[str, Callable[[Any], Any]] = {  # (pandas-stubs know no parallel_*)
    "apply": lambda df: df.parallel_apply(row_func, axis=1),
    "map": lambda df: df.parallel_applymap(cell_func),
    "groupby": lambda df: df.groupby("a").parallel_apply(group_func),
    "rolling": lambda df: df.groupby("a").b.rolling(4).parallel_apply(window_func, raw=False),
    "expanding": lambda df: df.groupby("a").b.expanding(4).parallel_apply(window_func, raw=False),
    "smap": lambda df: df.a.parallel_map(series_func),
    "sapply": lambda df: df.a.parallel_apply(series_func_args, args=(2,), bias=3),
    "srolling": lambda df: df.b.rolling(4).parallel_apply(window_func, raw=False),
}


def _serve_pandarallel(conn: Any, name: str, workers: int, quick: bool) -> None:
    """The helper process: pandarallel on request ``(key, warm)``; replies with the
    seconds, and the result too for a warm-up (to be checked by the harness)."""
    if not hasattr(pd.DataFrame, "applymap"):  # pandas 3: parallel_applymap calls it
        pd.DataFrame.applymap = pd.DataFrame.map  # type: ignore[attr-defined]
    inner = candidates.Pandarallel(workers)
    frames: dict[str, pd.DataFrame] = {}
    try:
        inner.start()
        conn.send(("ready", None))
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the harness is gone
                break
            if request is None:
                break
            key, warm = request
            out = None
            if key not in frames:
                frames[key] = make(key, quick)
            try:
                t0 = time.perf_counter()
                out = PANDARALLEL[key](frames[key])
                seconds = time.perf_counter() - t0
                conn.send(("ok", (seconds, out if warm else None)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
            del out
    finally:
        inner.close()


class PandarallelHelper(Isolated):
    """:class:`~benchmarks.candidates.Isolated`'s helper process, serving this section."""

    serve = staticmethod(_serve_pandarallel)

    def request(self, key: str, warm: bool) -> tuple[float, Any]:
        seconds, out = self._call((key, warm), candidates.TIMEOUT)
        return float(seconds), out


class PandarallelPeer(Peer):
    name, label = "pandarallel", "pandarallel"

    def __init__(self, base: Candidate) -> None:
        super().__init__(base)
        self.notes = {"map": "parallel_applymap, DataFrame.applymap aliased to map (pandas 3)"}

    def call(self, key: str, df: pd.DataFrame, warm: bool = False) -> tuple[float, Any]:
        base = self.base
        assert isinstance(base, PandarallelHelper)
        return base.request(key, warm)


def make_peers(workers: int, quick: bool) -> list[Peer]:
    """The candidates, in table order."""
    return [
        SerialPeer(candidates.Serial(workers)),
        CmapPeer(candidates.Cmap(workers)),
        PandarallelPeer(PandarallelHelper(candidates.Pandarallel(workers), quick)),
        JoblibPeer(candidates.Joblib(workers)),
        DaskPeer(candidates.DaskPartitions(workers)),
    ]


# -- measuring ------------------------------------------------------------------


@dataclass
class Section:
    """What this section measured: workload -> candidate -> samples and notes."""

    titles: dict[str, str]
    labels: dict[str, str]  # candidate name -> label, in column order
    metrics: dict[str, dict[str, Metric]] = field(default_factory=dict)
    quick: bool = False

    def median(self, key: str, name: str) -> float | None:
        samples = self.metrics[key][name].samples
        return statistics.median(samples) if samples else None

    def ratio(self, key: str, name: str) -> float | None:
        """Median time / serial's median time."""
        serial, med = self.median(key, "serial"), self.median(key, name)
        return med / serial if serial and med is not None else None


def run(
    quick: bool,
    workers: int,
    repeats: int,
    log: Callable[[str], None] = print,
    only: list[str] | None = None,
) -> Section:
    """Warm-ups (checked against serial), then ``repeats`` interleaved timed repeats."""
    from benchmarks.run import Metric, rotated, stopping

    keys = only or list(SPECS)
    peers = make_peers(workers, quick)
    section = Section({k: title(k, quick) for k in keys}, {p.name: p.label for p in peers})
    section.quick = quick
    section.metrics = {k: {p.name: Metric() for p in peers} for k in keys}
    runnable = []
    for p in peers:
        reason = p.missing()
        if reason:
            for k in keys:
                section.metrics[k][p.name].note(f"n/a: {reason}")
            continue
        runnable.append(p)
        for k in keys:
            why = p.supports(k)
            if why:
                section.metrics[k][p.name].note(why if why.startswith("n/a") else f"n/a: {why}")
            elif k in p.notes:
                section.metrics[k][p.name].note(p.notes[k])
    t0 = time.perf_counter()
    frames = {k: make(k, quick) for k in keys}
    log(f"  peers: made the data in {time.perf_counter() - t0:.1f} s")
    started: list[Candidate] = []
    with stopping(started):
        live = []
        for p in runnable:
            try:
                started.append(p.base)
                p.start()
                live.append(p)
            except Exception as exc:
                for k in keys:
                    section.metrics[k][p.name].notes.insert(0, f"failed to start: {str(exc)[:80]}")
                log(f"  peers {p.name}: failed to start: {exc!r}")
        for k in keys:
            expected: Any = None
            for p in live:  # serial first: its result is what the others are checked against
                metric = section.metrics[k][p.name]
                if metric.skipped:
                    continue
                try:
                    seconds, out = p.call(k, frames[k], warm=True)
                except Exception as exc:
                    metric.notes.insert(0, f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                    log(f"  peers warm-up {k} {p.name}: FAILED {exc!r}")
                    continue
                if p.name == "serial":
                    expected = out
                    problem = None
                else:
                    problem = check(out, expected) if expected is not None else "not checked"
                    if problem:
                        metric.notes.insert(0, problem)
                del out
                said = f"  {problem}" if problem else ""
                log(f"  peers warm-up {k} {p.name}: {seconds:.3f} s{said}")
            del expected
        for r in range(repeats):
            for k in keys:
                for p in rotated(live, r):
                    metric = section.metrics[k][p.name]
                    if metric.skipped:
                        continue
                    try:
                        seconds, out = p.call(k, frames[k])
                    except Exception as exc:
                        metric.notes.insert(0, f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                        log(f"  peers {k} {p.name}: FAILED {exc!r}")
                        continue
                    del out
                    metric.samples.append(seconds)
                    log(f"  peers repeat {r + 1} {k} {p.name}: {seconds:.3f} s")
    return section


# -- reporting ------------------------------------------------------------------


def table(section: Section, repeats: int, workers: int) -> str:
    """A markdown table: a row per workload, a column per candidate (median and time /
    serial), a geometric-mean row, and the notes."""
    from benchmarks.run import fmt_seconds, ratio

    names = list(section.labels)
    head = ["workload", *section.labels.values(), "notes"]
    lines = [
        "pandarallel's own example notebook (`docs/examples_mac_linux.ipynb`), each workload "
        f"scaled to about {'0.05' if section.quick else 3} s of serial pandas; each candidate the "
        f"way its users write it (see `benchmarks/peers.py`), {workers} workers each. Median of "
        f"{repeats} timed "
        "repeat(s) after a warm-up call whose result is checked against serial pandas "
        "(strict `assert_series_equal` / `assert_frame_equal`); *(0.50x)*: time / serial "
        "pandas (lower is better).\n",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(names) + "---|",
    ]
    logs: dict[str, list[float]] = {n: [] for n in names}
    for key, row_title in section.titles.items():
        cells, notes = [], []
        for name in names:
            metric = section.metrics[key][name]
            med, rel = section.median(key, name), section.ratio(key, name)
            if med is None:
                cell = "n/a" if metric.notes and metric.notes[0].startswith("n/a") else "—"
                if metric.notes and metric.notes[0].startswith("failed"):
                    cell = "failed"
            else:
                cell = fmt_seconds(med) + (f" ({ratio(rel)})" if name != "serial" and rel else "")
                if rel and name != "serial":
                    logs[name].append(math.log(rel))
            if any("DIFFERS" in n for n in metric.notes):
                cell += " ≠"
            cells.append(cell)
            if metric.notes:
                notes.append(f"{section.labels[name]}: {'; '.join(metric.notes)}")
        lines.append(f"| {row_title} | " + " | ".join(cells) + f" | {'; '.join(notes)} |")
    means = [
        "—"
        if n == "serial" or not logs[n]
        else f"{ratio(math.exp(statistics.fmean(logs[n])))} ({len(logs[n])})"
        for n in names
    ]
    lines.append(
        "| **geometric mean of time / serial** (workloads run) | "
        + " | ".join(f"**{m}**" if m != "—" else m for m in means)
        + " | |"
    )
    return "\n".join(lines) + "\n"


SHORT = {  # the chart's labels
    "apply": "1. df.apply(axis=1)",
    "map": "2. df.map",
    "groupby": "3. groupby.apply",
    "rolling": "4. groupby.rolling",
    "expanding": "5. groupby.expanding",
    "smap": "6. Series.map",
    "sapply": "7. Series.apply(args)",
    "srolling": "8. Series.rolling",
}
COLOURS = {
    "cmap": "tab:orange",
    "pandarallel": "tab:blue",
    "joblib": "tab:green",
    "dask": "tab:purple",
}


def draw(ax: Any, section: Section) -> None:
    """The chart's panel: time / serial per workload and candidate (log scale)."""
    from matplotlib.ticker import NullFormatter

    names = [n for n in section.labels if n != "serial"]
    keys = list(section.titles)
    width = 0.8 / max(1, len(names))
    shown = [1.0]
    for i, name in enumerate(names):
        xs, ys = [], []
        for j, key in enumerate(keys):
            rel = section.ratio(key, name)
            if rel:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(rel)
        shown += ys
        ax.bar(xs, ys, width, label=section.labels[name], color=COLOURS.get(name, "tab:gray"))
        for x, y in zip(xs, ys, strict=True):
            ax.text(x, y, f"{y:.2g}", ha="center", va="bottom", fontsize=6)
    ax.axhline(1.0, color="tab:gray", linewidth=1, linestyle="--")
    ax.set_yscale("log")
    low, high = min(shown), max(shown)
    ticks = [2.0**e for e in range(-6, 7) if low / 2 <= 2.0**e <= high * 2]
    ax.set_yticks(ticks, [f"{t:g}x" for t in ticks], fontsize=8)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(low / 1.3, high * 1.6)
    ax.set_xticks(range(len(keys)), [SHORT[k] for k in keys], fontsize=7)
    ax.set_ylabel("time / serial pandas", fontsize=8)
    ax.set_title(
        "pandarallel's documented workloads: median time / serial pandas (dashed line: "
        "serial; lower is better)",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncols=len(names), loc="upper left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, help="timed repeats (default 3; quick 1)")
    parser.add_argument("--only", help=f"comma-separated workloads: {','.join(SPECS)}")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    only = args.only.split(",") if args.only else None
    unknown = [k for k in only or [] if k not in SPECS]
    if unknown:
        raise SystemExit(f"unknown workloads {unknown}; choose from {list(SPECS)}")
    candidates.TIMEOUT = 120.0 if args.quick else 600.0
    warnings.filterwarnings("ignore", message="Sending large graph")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    section = run(args.quick, args.workers, repeats, log, only)
    print(table(section, repeats, args.workers))
    return 0


if __name__ == "__main__":  # spawned helpers re-import the main module: run the package's
    from benchmarks.peers import main as package_main

    sys.exit(package_main())
