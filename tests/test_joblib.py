"""The "celerynb" joblib backend: joblib's own expectations, and a scikit-learn grid search
whose fits run in the cluster's worker processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import celerynb

joblib = pytest.importorskip("joblib")


@pytest.fixture(autouse=True)
def backend(cluster: celerynb.LocalCluster) -> None:
    celerynb.register_joblib(cluster)


def double(x: int) -> int:
    return 2 * x


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"item {x}")
    return x


def nested(x: int) -> list[int]:
    """A joblib call inside a batch: it runs in the worker's own process."""
    return joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(x))  # type: ignore[no-any-return]


def test_results_in_order() -> None:
    with joblib.parallel_config(backend="celerynb"):
        out = joblib.Parallel(n_jobs=-1)(joblib.delayed(double)(i) for i in range(200))
    assert out == [2 * i for i in range(200)]


def test_n_jobs_minus_one_is_the_pool_processes(cluster: celerynb.LocalCluster) -> None:
    with joblib.parallel_config(backend="celerynb"):
        assert joblib.effective_n_jobs(-1) == cluster.n_workers == 2
        assert joblib.effective_n_jobs(3) == 3


def test_exceptions_reraise_as_their_type() -> None:
    with joblib.parallel_config(backend="celerynb"), pytest.raises(KeyError, match="item 7"):
        joblib.Parallel(n_jobs=-1)(joblib.delayed(fail_on)(i, 7) for i in range(20))


def test_the_backend_is_usable_after_an_abort() -> None:
    with joblib.parallel_config(backend="celerynb"):
        with pytest.raises(KeyError):
            joblib.Parallel(n_jobs=-1)(joblib.delayed(fail_on)(i, 0) for i in range(50))
        assert joblib.Parallel(n_jobs=-1)(joblib.delayed(double)(i) for i in range(5)) == [
            0, 2, 4, 6, 8
        ]  # fmt: skip


def test_return_as_generator() -> None:
    with joblib.parallel_config(backend="celerynb"):
        gen = joblib.Parallel(n_jobs=-1, return_as="generator")(
            joblib.delayed(double)(i) for i in range(30)
        )
        assert list(gen) == [2 * i for i in range(30)]


def test_nested_calls_run_in_the_worker_process(cluster: celerynb.LocalCluster) -> None:
    with joblib.parallel_config(backend="celerynb"):
        runs = joblib.Parallel(n_jobs=-1)(joblib.delayed(nested)(3) for _ in range(4))
    for pids in runs:
        assert len(set(pids)) == 1 and pids[0] != os.getpid()


def test_grid_search_matches_the_default_backend_and_fits_on_workers(tmp_path: Path) -> None:
    sklearn = pytest.importorskip("sklearn")
    import numpy as np
    from sklearn.datasets import load_iris
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    psutil = pytest.importorskip("psutil")
    pids = tmp_path / "pids"

    def scorer(estimator: object, X: object, y: object) -> float:
        with open(pids, "a") as out:  # the process each fit was scored in
            out.write(f"{os.getpid()}\n")
        return float(accuracy_score(y, estimator.predict(X)))  # type: ignore[attr-defined]

    X, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1, 10], "gamma": ["scale", 0.1, 1]}
    local = GridSearchCV(SVC(), grid, cv=4, n_jobs=1, scoring=scorer).fit(X, y)
    pids.unlink()
    with joblib.parallel_config(backend="celerynb"):
        remote = GridSearchCV(SVC(), grid, cv=4, n_jobs=-1, scoring=scorer).fit(X, y)
    assert sklearn.__version__
    assert remote.best_params_ == local.best_params_
    for key, expected in local.cv_results_.items():
        if key.startswith(("split", "mean_test", "std_test", "rank_test")):
            np.testing.assert_allclose(remote.cv_results_[key], expected)
    ran_in = {int(line) for line in pids.read_text().split()}
    pool = {p.pid for p in psutil.Process().children(recursive=True)}  # the embedded worker's
    assert ran_in and os.getpid() not in ran_in and ran_in <= pool
