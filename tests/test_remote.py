"""An existing deployment: the machine's Redis (and RabbitMQ) with `celerynb worker` processes.

Functions sent to these workers are defined inside the tests: the workers
cannot import this test module (their PYTHONPATH is the project directory).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from support import SYSTEM_REDIS, WorkerProcess, forget_queue, system_redis_available

import celerynb
from celerynb.plane.codec import key_id, new_secret
from celerynb.settings import Settings

BOUND = 15.0  # generous "does not hang" bound
RABBITMQ = os.environ.get("CELERYNB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")


def frame(n: int = 200) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": np.arange(n, dtype="int64"),
            "b": np.linspace(0.0, 1.0, n),
            "s": [f"item{i}" for i in range(n)],
            "c": pd.Categorical([("x", "y", "z")[i % 3] for i in range(n)]),
            "t": pd.date_range("2024-01-01", periods=n, freq="h"),
        },
        index=pd.Index([f"row{i:04d}" for i in range(n)], name="key"),
    )


def helper_in_this_module(x: int) -> int:
    """Referenced from a chunk function: pickled by reference, so workers must import it."""
    return x + 1


def wait_for_workers(client: celerynb.Cluster, worker: WorkerProcess) -> dict[str, int]:
    deadline = time.monotonic() + 30
    while True:
        found = client.workers(max_age=0)
        if found:
            return found
        assert worker.proc.poll() is None, worker.log.read_text()
        assert time.monotonic() < deadline, worker.log.read_text()
        time.sleep(0.2)


def drop_redis_leftovers(url: str, secret: str) -> None:
    """Delete the kombu keys a test's own queue left in the shared Redis."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(f"*celerynb-{key_id(secret)}*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def second_secret() -> Iterator[str]:
    secret = new_secret()
    yield secret
    if system_redis_available():
        drop_redis_leftovers(SYSTEM_REDIS, secret)


# -- on the `remote` fixture ----------------------------------------------------


def test_dataframe_parity_and_reduce(remote: celerynb.Cluster) -> None:
    df = frame()

    def score(d: pd.DataFrame) -> pd.DataFrame:
        return d.assign(total=d.a * d.b, label=d.s.str.upper(), day=d.t.dt.day)

    out = celerynb.cmap(score, df, cluster=remote, progress=False)
    pd.testing.assert_frame_equal(out, score(df))

    series = celerynb.cmap(lambda d: d.a * 2 + d.b, df, chunks=7, cluster=remote, progress=False)
    pd.testing.assert_series_equal(series, df.a * 2 + df.b)

    arr = np.arange(60, dtype="float32").reshape(20, 3)
    out_arr = celerynb.cmap(lambda x: x * 2, arr, chunks=3, cluster=remote, progress=False)
    assert out_arr.dtype == np.float32 and out_arr.shape == (20, 3)
    np.testing.assert_array_equal(out_arr, arr * 2)

    # reduce= runs a chord on the remote worker
    total = celerynb.cmap(
        lambda d: int(d.a.sum()), df, chunks=5, reduce=sum, cluster=remote, progress=False
    )
    assert total == int(df.a.sum())

    def merge(parts: list[pd.Series]) -> pd.Series:
        return pd.concat(parts).groupby(level=0).sum()

    counts = celerynb.cmap(
        lambda d: d.c.value_counts(), df, chunks=4, reduce=merge, cluster=remote, progress=False
    )
    pd.testing.assert_series_equal(
        counts.sort_index(), df.c.value_counts().sort_index(), check_names=False
    )


def test_chunk_errors(remote: celerynb.Cluster) -> None:
    df = frame(40)
    (worker_name,) = remote.workers()

    def check(d: pd.DataFrame) -> pd.DataFrame:
        if "row0031" in d.index:
            raise ValueError("row0031 is bad")
        return d

    with pytest.raises(ValueError) as info:
        celerynb.cmap(check, df, chunks=4, cluster=remote, progress=False)
    err = info.value
    assert isinstance(err, celerynb.ChunkError)
    msg = str(err)
    assert "chunk 3 of 4 (positions 30:40, index 'row0030' .. 'row0039')" in msg
    assert worker_name in msg and err.worker == worker_name
    assert "in check" in err.remote_traceback
    # the deployment still works
    out = celerynb.cmap(lambda d: d, df, chunks=4, cluster=remote, progress=False)
    pd.testing.assert_frame_equal(out, df)
    if Path.cwd() == Path(__file__).parent:
        return  # run from the tests directory: the worker could import this module

    # a helper from a module the worker cannot import travels by value with the call
    # (celerynb/shipping.py; a missing *installed* package: tests/test_scaleout.py)
    def uses_helper(xs: list[int]) -> list[int]:
        return [helper_in_this_module(x) for x in xs]

    out = celerynb.cmap(uses_helper, [1, 2, 3], chunks=1, cluster=remote, progress=False)
    assert out == [helper_in_this_module(x) for x in [1, 2, 3]]


def test_two_clients_with_different_secrets(
    remote: celerynb.Cluster, tmp_path: Path, second_secret: str
) -> None:
    name_a = next(iter(remote.workers()))
    name_b = f"second-{uuid.uuid4().hex[:8]}@localhost"
    worker_b = WorkerProcess(SYSTEM_REDIS, second_secret, tmp_path, "--hostname", name_b)
    client_b: celerynb.Cluster | None = None
    try:
        client_b = celerynb.connect(SYSTEM_REDIS, secret=second_secret)
        assert client_b.settings.queue != remote.settings.queue
        assert set(wait_for_workers(client_b, worker_b)) == {name_b}
        assert set(remote.workers(max_age=0)) == {name_a}  # each sees only its own worker
        data = list(range(100))
        future_a = celerynb.cmap_async(
            lambda xs: [x * 2 for x in xs], data, chunks=8, cluster=remote, progress=False
        )
        future_b = celerynb.cmap_async(
            lambda xs: [x * 3 for x in xs], data, chunks=8, cluster=client_b, progress=False
        )
        assert future_a.result(timeout=60) == [x * 2 for x in data]
        assert future_b.result(timeout=60) == [x * 3 for x in data]
        assert set(future_a.workers) == {name_a}
        assert set(future_b.workers) == {name_b}
    finally:
        if client_b is not None:
            client_b.close()
        worker_b.stop()
        forget_queue(SYSTEM_REDIS, Settings(SYSTEM_REDIS, secret=second_secret).queue)


# -- RabbitMQ as the broker, Redis as the store -----------------------------------


def _drop_rabbit_leftovers(secret: str) -> None:
    from kombu import Connection

    queue = f"celerynb-{key_id(secret)}"
    with Connection(RABBITMQ, connect_timeout=5) as conn:
        channel = conn.default_channel
        for name in (queue, f"{queue}.pidbox"):
            try:
                channel.queue_delete(name)
            except Exception:
                channel = conn.channel()
            try:
                channel.exchange_delete(name)
            except Exception:
                channel = conn.channel()


def test_rabbitmq_broker(tmp_path: Path) -> None:
    if not system_redis_available():
        pytest.skip(f"no Redis at {SYSTEM_REDIS}")
    from kombu import Connection

    try:
        with Connection(RABBITMQ, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:
        pytest.skip(f"no RabbitMQ at {RABBITMQ}: {exc}")
    secret = new_secret()
    worker = WorkerProcess(RABBITMQ, secret, tmp_path, backend=SYSTEM_REDIS)
    client: celerynb.Cluster | None = None
    try:
        client = celerynb.connect(RABBITMQ, SYSTEM_REDIS, secret=secret)
        wait_for_workers(client, worker)
        df = frame(120)
        out = celerynb.cmap(lambda d: d.assign(z=d.a + 1), df, chunks=6, cluster=client,
                            progress=False)  # fmt: skip
        pd.testing.assert_frame_equal(out, df.assign(z=df.a + 1))
        total = celerynb.cmap(lambda d: int(d.a.sum()), df, chunks=6, reduce=sum,
                              cluster=client, progress=False)  # fmt: skip
        assert total == int(df.a.sum())
        with pytest.raises(KeyError):
            celerynb.cmap(lambda d: d["nope"], df, chunks=2, cluster=client, progress=False)
    finally:
        if client is not None:
            client.close()
        worker.stop()
        _drop_rabbit_leftovers(secret)
        drop_redis_leftovers(SYSTEM_REDIS, secret)


# -- connecting and starting workers: configuration errors ------------------------


def test_connect_to_unreachable_redis_fails_fast_and_masks_password() -> None:
    before = celerynb.current()
    started = time.monotonic()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.connect("redis://:hunter2-pw@127.0.0.1:1/0", secret="s")
    assert time.monotonic() - started < BOUND
    msg = str(info.value)
    assert "redis://:***@127.0.0.1:1/0" in msg
    assert "hunter2-pw" not in msg and "hunter2-pw" not in repr(info.value)
    assert celerynb.current() is before  # a failed connect changes nothing


def test_connect_to_unreachable_amqp_broker_masks_password() -> None:
    if not system_redis_available():
        pytest.skip(f"no Redis at {SYSTEM_REDIS}")
    started = time.monotonic()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.connect("amqp://user:hunter2-pw@127.0.0.1:1//", SYSTEM_REDIS, secret="s")
    assert time.monotonic() - started < BOUND
    msg = str(info.value)
    assert "amqp://user:***@127.0.0.1:1//" in msg
    assert "hunter2-pw" not in msg


def test_connect_without_secret_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERYNB_SECRET", raising=False)
    with pytest.raises(celerynb.ClusterError, match="CELERYNB_SECRET"):
        celerynb.connect("redis://:pw-not-shown@127.0.0.1:6379/0")


def test_connect_without_broker_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELERYNB_BROKER_URL", raising=False)
    with pytest.raises(celerynb.ClusterError, match="CELERYNB_BROKER_URL"):
        celerynb.connect(secret="s")


def test_connect_with_a_non_redis_backend_is_refused() -> None:
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.connect("amqp://u:hunter2-pw@127.0.0.1:1//", secret="s")
    assert "must be a Redis URL" in str(info.value)
    assert "hunter2-pw" not in str(info.value)


def _run_worker(*args: str, secret: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
    if secret is not None:
        env["CELERYNB_SECRET"] = secret
    return subprocess.run(
        [sys.executable, "-m", "celerynb.cli", "worker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_worker_without_secret_exits_with_a_message() -> None:
    proc = _run_worker("--broker", "redis://:pw-not-shown@127.0.0.1:6379/0", secret=None)
    assert proc.returncode != 0
    assert "CELERYNB_SECRET" in proc.stderr
    assert "pw-not-shown" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_worker_with_unreachable_broker_exits_with_a_message() -> None:
    proc = _run_worker(
        "--broker", "redis://:hunter2-pw@127.0.0.1:1/0", "--connect-timeout", "2", secret="s"
    )
    assert proc.returncode != 0
    assert "redis://:***@127.0.0.1:1/0" in proc.stderr
    assert "hunter2-pw" not in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
