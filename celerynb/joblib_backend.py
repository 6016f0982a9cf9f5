"""The ``"celerynb"`` joblib backend: ``joblib.Parallel`` (scikit-learn's ``n_jobs``) on celerynb.

>>> celerynb.register_joblib()
>>> with joblib.parallel_config(backend="celerynb"):
...     GridSearchCV(model, grid, n_jobs=-1).fit(X, y)   # the fits run on the workers

Each batch of joblib's tasks is one ``Executor.submit`` (joblib sizes the
batches itself, from their durations); ``n_jobs=-1`` is the cluster's pool
processes. joblib is imported when the backend is registered, not before.
"""

from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any, Unpack

from .cluster import Cluster, default_cluster
from .executor import Executor
from .options import CallKwargs

NAME = "celerynb"


def _joblib() -> ModuleType:
    try:
        return importlib.import_module("joblib")
    except ImportError:
        raise ImportError(
            "the celerynb joblib backend needs joblib: pip install joblib (scikit-learn "
            "brings it too)"
        ) from None


def register_joblib(
    cluster: Cluster | None = None, *, make_default: bool = False, **options: Unpack[CallKwargs]
) -> None:
    """Register the ``"celerynb"`` joblib backend (``make_default``: for every ``Parallel``).

    Its work runs on ``cluster`` (default: the current one when a ``Parallel`` starts,
    started on first use) with the Executor's ``options`` (``retries``, ``timeout``, ...).
    Select it with ``joblib.parallel_config(backend="celerynb")``.
    """
    backends = importlib.import_module("joblib._parallel_backends")
    joblib = _joblib()
    base: Any = type(
        "CelerynbBackend",
        (_CelerynbBackend, backends.AutoBatchingMixin, backends.ParallelBackendBase),
        {"__module__": __name__, "sequential": backends.SequentialBackend},
    )
    joblib.register_parallel_backend(
        NAME, lambda **kw: base(cluster, options, **kw), make_default=make_default
    )


class _CelerynbBackend:
    """joblib's ``ParallelBackendBase`` over an :class:`~celerynb.Executor` (the class
    joblib sees is made by :func:`register_joblib`, with joblib's bases)."""

    supports_retrieve_callback = True  # results come back through the futures' callbacks
    supports_timeout = True
    default_n_jobs = -1
    uses_threads = False
    supports_sharedmem = False
    sequential: type[Any]  # joblib's SequentialBackend: what nested calls on a worker use

    def __init__(self, cluster: Cluster | None, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster, self.options = cluster, options
        self.executor: Executor | None = None
        self._futures: set[Any] = set()
        self._lock = threading.Lock()

    def _cluster(self) -> Cluster:
        return self.cluster if self.cluster is not None else default_cluster()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            return max(self._cluster().n_workers + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_args: Any) -> int:
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        if self.executor is None:
            self.executor = Executor(self._cluster(), **self.options)
        return n

    def submit(self, func: Any, callback: Any = None) -> Any:
        assert self.executor is not None, "configure() first"
        future = self.executor.submit(func)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: Any) -> None:
        with self._lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def retrieve_result(self, future: Any, timeout: float | None = None) -> Any:
        return future.result(timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch that has not ended (joblib will not read their results)."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()
        if not ensure_ready and self.executor is not None:
            self.executor.shutdown(wait=False)
            self.executor = None

    def terminate(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False)  # the cluster keeps running
            self.executor = None
        reset = getattr(self, "reset_batch_stats", None)
        if callable(reset):
            reset()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        """joblib calls inside a batch run in the worker's process, one after the other."""
        level = (getattr(self, "nesting_level", None) or 0) + 1
        return self.sequential(nesting_level=level), None
