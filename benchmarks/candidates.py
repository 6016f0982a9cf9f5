"""The candidates: celerynb's ``cmap`` and the ways a user could do the same work without it.

Each candidate imports its library in :meth:`Candidate.start` (so a cold
start-up counts the import), runs a :class:`Workload` with :meth:`run`, and
stops everything it started in :meth:`close`. Peers split the data into the
same chunks (``4 x workers`` unless a workload forces a count) and join the
results in order, as a user of that library would.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pandas as pd

from . import workloads
from .workloads import join, split

TIMEOUT = 600.0  # seconds any single call may take before it counts as failed
CHUNKS_PER_WORKER = 4


@dataclass
class Workload:
    """One measured job: ``func`` over ``data``, with an optional forced chunk count."""

    key: str
    title: str
    func: Callable[[Any], Any]
    data: Any
    chunks: int | None = None  # None: each candidate's default chunking
    # pandarallel has no chunk function: how it runs this workload (None: not applicable)
    pandarallel: Callable[[Any], Any] | None = None
    warmup: Any = None  # smaller data for the untimed warm-up call (default: ``data``)
    meta: Any = field(default=None, repr=False)  # dask's meta for map_partitions
    calls: int = 1  # back-to-back calls per timed repeat (the time is per call)

    def chunk_count(self, workers: int) -> int:
        """How many chunks a peer splits ``data`` into."""
        return self.chunks or CHUNKS_PER_WORKER * workers


def compare(out: Any, expected: Any) -> str | None:
    """None if ``out`` equals ``expected``; else a short description of the difference."""
    if isinstance(expected, pd.DataFrame) and isinstance(out, pd.Series) and "score" in expected:
        expected = expected["score"]  # pandarallel computes W1's score column only
    try:
        if isinstance(expected, pd.DataFrame):
            pd.testing.assert_frame_equal(out, expected, check_names=False)
        elif isinstance(expected, pd.Series):
            pd.testing.assert_series_equal(out, expected, check_names=False)
        elif out != expected:
            return "result differs from serial"
        return None
    except AssertionError:
        pass
    try:
        assert_equal: Callable[..., None] = (
            pd.testing.assert_frame_equal
            if isinstance(expected, pd.DataFrame)
            else pd.testing.assert_series_equal
        )
        assert_equal(out, expected, check_names=False, check_dtype=False, check_exact=False)
        return "values equal serial's, dtypes differ"
    except (AssertionError, TypeError):
        return "RESULT DIFFERS FROM SERIAL"


@dataclass
class Checked:
    """A result already compared with serial pandas where it was computed."""

    problem: str | None


class Candidate:
    """A way to run a workload; subclasses override what they need."""

    name = "?"
    label = "?"
    module: str | None = None  # the import that must be available
    lazy = False  # starts its workers on the first call: no separate "ready" time
    peer = True  # counts as a peer for "vs best peer"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.last_chunks: int | None = None

    def missing(self) -> str | None:
        """Why this candidate cannot run here (None if it can)."""
        if self.module and find_spec(self.module) is None:
            return f"{self.module} is not installed"
        return None

    def supports(self, w: Workload) -> str | None:
        """Why this candidate does not run ``w`` (None if it does)."""
        return None

    def start(self) -> None:
        """Import the library and start workers (when the library has an explicit start)."""

    def run(self, w: Workload, data: Any) -> Any:
        """Run ``w.func`` over ``data`` and return the joined result."""
        raise NotImplementedError

    def after(self) -> None:
        """Clean-up after a call, outside the timed section."""

    def timed(self, w: Workload, data: Any, warm: bool = False) -> tuple[float, Any]:
        """Seconds one call takes, and its result (clean-up runs after the clock stops).

        ``warm``: this is the untimed warm-up call, whose result gets checked.
        """
        t0 = time.perf_counter()
        for _ in range(w.calls):
            out = self.run(w, data)
        seconds = (time.perf_counter() - t0) / w.calls
        self.after()
        return seconds, out

    def close(self) -> None:
        """Stop everything this candidate started (idempotent)."""


class Serial(Candidate):
    """Plain pandas in this process, one core."""

    name, label, peer, lazy = "serial", "serial pandas", False, True

    def run(self, w: Workload, data: Any) -> Any:
        return w.func(data)


class Cmap(Candidate):
    """celerynb's ``cmap`` on an embedded ``LocalCluster``."""

    name, label, module, peer = "cmap", "celerynb cmap", "celerynb", False

    def start(self) -> None:
        from celerynb import LocalCluster

        self.cluster = LocalCluster(self.workers)

    def run(self, w: Workload, data: Any) -> Any:
        from celerynb import cmap_async

        future = cmap_async(
            w.func, data, chunks=w.chunks, progress=False, cluster=self.cluster, timeout=TIMEOUT
        )
        out = future.result()
        self.last_chunks = future.n_chunks
        return out

    def close(self) -> None:
        cluster = getattr(self, "cluster", None)
        if cluster is not None:
            cluster.close()


class Pool(Candidate):
    """A persistent ``multiprocessing.Pool`` (fork), ``pool.map`` over the chunks."""

    name, label = "pool", "multiprocessing.Pool"

    def start(self) -> None:
        import multiprocessing

        self.pool = multiprocessing.get_context("fork").Pool(self.workers)

    def run(self, w: Workload, data: Any) -> Any:
        parts = split(data, w.chunk_count(self.workers))
        self.last_chunks = len(parts)
        return join(self.pool.map_async(w.func, parts).get(TIMEOUT))

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.terminate()
            pool.join()
            del self.pool


class Joblib(Candidate):
    """joblib ``Parallel`` (loky, reusable workers) over the chunks, auto batching."""

    name, label, module, lazy = "joblib", "joblib", "joblib", True

    def start(self) -> None:
        from joblib import Parallel

        self.parallel = Parallel(n_jobs=self.workers, timeout=TIMEOUT)

    def run(self, w: Workload, data: Any) -> Any:
        from joblib import delayed

        parts = split(data, w.chunk_count(self.workers))
        self.last_chunks = len(parts)
        return join(self.parallel(delayed(w.func)(part) for part in parts))

    def close(self) -> None:
        if hasattr(self, "parallel"):
            from joblib.externals.loky import get_reusable_executor

            get_reusable_executor().shutdown(wait=True)


def _alias_pandas_for_pandarallel() -> None:
    """pandarallel 1.6.5 imports pandas < 3 class names: alias the renamed ones."""
    from pandas.core.window import expanding, rolling

    for module, old, new in (
        (expanding, "ExpandingGroupby", "ExpandingGroupBy"),
        (rolling, "RollingGroupby", "RollingGroupBy"),
    ):
        if not hasattr(module, old) and hasattr(module, new):
            setattr(module, old, getattr(module, new))


class Pandarallel(Candidate):
    """pandarallel ``parallel_apply`` (its own chunking: one per worker, a new pool per call)."""

    name, label, module, lazy = "pandarallel", "pandarallel", "pandarallel", True

    def missing(self) -> str | None:
        reason = super().missing()
        if reason:
            return reason
        try:
            _alias_pandas_for_pandarallel()
            import pandarallel  # noqa: F401
        except Exception as exc:
            return f"pandarallel does not import: {type(exc).__name__}: {exc}"
        return None

    def supports(self, w: Workload) -> str | None:
        return None if w.pandarallel is not None else "no equivalent (no chunk control)"

    def start(self) -> None:
        _alias_pandas_for_pandarallel()
        from pandarallel import pandarallel

        pandarallel.initialize(nb_workers=self.workers, progress_bar=False, verbose=0)

    def run(self, w: Workload, data: Any) -> Any:
        assert w.pandarallel is not None
        self.last_chunks = self.workers
        return w.pandarallel(data)


class DaskMap(Candidate):
    """dask distributed ``LocalCluster`` (processes), ``client.map`` + ``gather``."""

    name, label, module = "dask-map", "dask client.map", "distributed"

    # one dask cluster serves both dask candidates of a process: [cluster, client, users]
    _shared: list[Any] | None = None

    def start(self) -> None:
        shared = DaskMap._shared
        if shared is None:
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(
                n_workers=self.workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=50,
            )
            shared = DaskMap._shared = [cluster, Client(cluster), 0]
        shared[2] += 1
        self.client = shared[1]
        self.started = True

    def run(self, w: Workload, data: Any) -> Any:
        from dask.distributed import wait

        parts = split(data, w.chunk_count(self.workers))
        self.last_chunks = len(parts)
        # pure=False: no hashing of the chunks, and no cache hit on a repeated call
        futures = self.client.map(w.func, parts, pure=False)
        wait(futures, timeout=TIMEOUT)
        return join(self.client.gather(futures))

    def close(self) -> None:
        shared = DaskMap._shared
        if not getattr(self, "started", False) or shared is None:
            return
        self.started = False
        shared[2] -= 1
        if shared[2] <= 0:
            DaskMap._shared = None
            for obj in (shared[1], shared[0]):  # client, then cluster
                with contextlib.suppress(Exception):
                    obj.close()


class DaskPartitions(DaskMap):
    """dask distributed, ``dd.from_pandas(...).map_partitions(func).compute()``."""

    name, label, module = "dask-df", "dask map_partitions", "dask.dataframe"

    def missing(self) -> str | None:
        if find_spec("distributed") is None:
            return "distributed is not installed"
        try:
            import dask.dataframe  # noqa: F401
        except Exception as exc:  # needs pyarrow
            return f"dask.dataframe does not import: {type(exc).__name__}: {exc}"
        return None

    def supports(self, w: Workload) -> str | None:
        return None if hasattr(w.data, "iloc") else "map_partitions needs a DataFrame"

    def run(self, w: Workload, data: Any) -> Any:
        import dask.dataframe as dd

        n = min(w.chunk_count(self.workers), len(data))
        self.last_chunks = n
        ddf = dd.from_pandas(data, npartitions=n)
        return self.client.compute(ddf.map_partitions(w.func, meta=w.meta), sync=True)


class RawCelery(Candidate):
    """A minimal raw Celery app: ``group`` of tasks with chunk bytes inside the messages."""

    name, label, module, peer = "raw-celery", "raw Celery group", "celery", False

    def start(self) -> None:
        from . import procs, rawcelery

        self.dir = Path(tempfile.mkdtemp(prefix="bench-raw-"))
        self.redis_proc, url = procs.start_redis(self.dir)
        self.worker_proc = procs.start_raw_worker(url, self.workers, self.dir)
        self.app = rawcelery.make_app(url)
        deadline = time.monotonic() + 60
        while not self.app.control.ping(timeout=0.2):
            if self.worker_proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "worker.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the raw Celery worker did not start:\n{log}")
        self._last: Any = None

    def run(self, w: Workload, data: Any) -> Any:
        from celery import group

        parts = split(data, w.chunk_count(self.workers))
        self.last_chunks = len(parts)
        if len(parts) == 1:  # one call: one task, AsyncResult.get()
            single = self.app.send_task("bench.run", args=(w.func, parts[0]))
            self._last = single
            return single.get(timeout=TIMEOUT)
        result = group(self.app.signature("bench.run", args=(w.func, p)) for p in parts)()
        self._last = result
        return join(result.get(timeout=TIMEOUT))

    def after(self) -> None:
        if self._last is not None:
            with contextlib.suppress(Exception):
                self._last.forget()  # drop the stored results (W3: 160 MB a call)
            self._last = None

    def close(self) -> None:
        from . import procs

        app = getattr(self, "app", None)
        if app is not None:
            with contextlib.suppress(Exception):
                app.close()
        procs.stop(getattr(self, "worker_proc", None))
        procs.stop(getattr(self, "redis_proc", None))
        if hasattr(self, "dir"):
            shutil.rmtree(self.dir, ignore_errors=True)


def _serve(conn: Any, name: str, workers: int, quick: bool) -> None:
    """The helper process of :class:`Isolated`: run ``name`` on request, reply with times."""
    candidate = BY_NAME[name](workers)
    by_key = {w.key: w for w in workload_set(quick)}
    try:
        candidate.start()
        conn.send(("ready", None))
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the harness is gone
                break
            if request is None:
                break
            key, warm = request
            w = by_key[key]
            data = w.warmup if warm and w.warmup is not None else w.data
            try:
                seconds, out = candidate.timed(w, data)
                problem = compare(out, w.func(data)) if warm else None
                conn.send(("ok", (seconds, problem, candidate.last_chunks)))
            except Exception as exc:
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        candidate.close()


class Isolated(Candidate):
    """Runs another candidate in a spawned helper process that holds its own copy of the data.

    For candidates that fork on every call (pandarallel): a fork of a process
    with live threads and broker connections can hang (kombu's after-fork
    clean-up reads from a socket the parent shares). Times are taken in the
    helper, results are checked there.
    """

    # what the helper process runs: (pipe, candidate name, workers, quick)
    serve: Callable[[Any, str, int, bool], None] = staticmethod(_serve)

    def __init__(self, inner: Candidate, quick: bool) -> None:
        super().__init__(inner.workers)
        self.inner, self.quick = inner, quick
        self.name, self.label, self.module = inner.name, inner.label, inner.module
        self.lazy, self.peer = inner.lazy, inner.peer

    def missing(self) -> str | None:
        return self.inner.missing()

    def supports(self, w: Workload) -> str | None:
        return self.inner.supports(w)

    def _call(self, request: Any, timeout: float) -> Any:
        self.conn.send(request)
        if not self.conn.poll(timeout):
            self.close()
            raise TimeoutError(f"no answer from the {self.name} helper within {timeout:.0f} s")
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(value)
        return value

    def start(self) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        # not a daemon: pandarallel starts processes of its own; the helper exits when
        # its pipe closes (EOFError in recv) if the harness dies
        self.proc = ctx.Process(
            target=self.serve, args=(child, self.name, self.workers, self.quick)
        )
        self.proc.start()
        child.close()
        if not self.conn.poll(120):
            self.close()
            raise TimeoutError(f"the {self.name} helper did not start within 120 s")
        status, value = self.conn.recv()
        if status != "ready":
            raise RuntimeError(value)

    def timed(self, w: Workload, data: Any, warm: bool = False) -> tuple[float, Any]:
        seconds, problem, self.last_chunks = self._call((w.key, warm), TIMEOUT)
        return seconds, Checked(problem)

    def close(self) -> None:
        proc = getattr(self, "proc", None)
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join()
        del self.proc


ALL: list[type[Candidate]] = [
    Serial,
    Cmap,
    Pool,
    Joblib,
    Pandarallel,
    DaskMap,
    DaskPartitions,
    RawCelery,
]
BY_NAME = {c.name: c for c in ALL}


def workload_set(quick: bool) -> list[Workload]:
    """W1-W5 at full or quick size."""
    w1_rows, w2_rows, w3_rows, forced = (
        (20_000, 2_000, 1_000_000, 50) if quick else (200_000, 10_000, 10_000_000, 1000)
    )
    frame1 = workloads.make_frame(w1_rows)
    frame2 = workloads.make_frame(w2_rows, seed=1)
    wide = workloads.make_wide(w3_rows)
    mb = wide.memory_usage(index=False).sum() / 1e6
    return [
        Workload(
            "W1",
            f"W1 CPU-bound: {w1_rows:,} x 4, pure-Python rows",
            workloads.score_block,
            frame1,
            pandarallel=lambda d: d.parallel_apply(workloads.score_row, axis=1, raw=True),
            warmup=frame1.iloc[: max(1000, w1_rows // 20)],
            meta=workloads.score_block(frame1.iloc[:2]).iloc[:0],
        ),
        Workload(
            "W2",
            f"W2 overhead: {w2_rows:,} rows, cheap func, default chunks",
            workloads.cheap,
            frame2,
            pandarallel=lambda d: d.parallel_apply(workloads.cheap_row, axis=1, raw=True),
            meta=workloads.cheap(frame2.iloc[:0]),
        ),
        Workload(
            "W2c",
            f"W2 overhead: {w2_rows:,} rows, chunks={forced}",
            workloads.cheap,
            frame2,
            chunks=forced,
            meta=workloads.cheap(frame2.iloc[:0]),
        ),
        Workload(
            "W3",
            f"W3 data-heavy: {w3_rows:,} x 2 float64 ({mb:.0f} MB), chunk * 2",
            workloads.double,
            wide,
            pandarallel=lambda d: d.parallel_apply(workloads.double),
            meta=wide.iloc[:0],
        ),
        Workload("W4", "W4 latency: one tiny call", workloads.tiny, [1]),
        Workload(
            "W5",
            "W5 a tiny frame: 10 rows, default chunks, 20 calls back to back (per call)",
            workloads.cheap,
            workloads.make_frame(10, seed=2),
            pandarallel=lambda d: d.parallel_apply(workloads.cheap_row, axis=1, raw=True),
            meta=workloads.cheap(frame2.iloc[:0]),
            calls=20,
        ),
    ]
