"""A bounded store: every input is fed as the workers take it, and a full store is a clear error.

Real redis-server processes with a ``maxmemory`` (started here, in a temp dir) and
real ``celerynb worker`` processes; the window's arithmetic also without Redis.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import redis
from test_scaleout import start_worker, wait_ready

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.plane.keys import CallKeys
from celerynb.planning import (
    MAX_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    STORE_BYTES_PER_WORKER,
    STORE_SHARE,
    Window,
    make_plan,
)
from celerynb.procs import free_port

cloudpickle.register_pickle_by_value(sys.modules[__name__])
BOUND = 120
MIB = 2**20


def double(c: pd.DataFrame) -> pd.DataFrame:
    return c * 2


def frame(mib: int) -> pd.DataFrame:
    rows = mib * MIB // 80
    rng = np.random.default_rng(0)
    return pd.DataFrame(rng.random((rows, 10)), columns=[f"c{i}" for i in range(10)])


# -- the window, without Redis ------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2, 8, 64])
@pytest.mark.parametrize("free", [None, 16 * MIB, 96 * MIB, 10 * 2**30])
def test_the_window_and_its_chunks_fit_the_store(workers: int, free: int | None) -> None:
    w = Window.of_store(workers, free)
    budget = STORE_BYTES_PER_WORKER * max(2, workers)
    if free is not None:
        budget = min(budget, int(free * STORE_SHARE))
    assert MIN_CHUNK_BYTES <= w.chunk_bytes <= MAX_CHUNK_BYTES
    if w.chunk_bytes > MIN_CHUNK_BYTES:  # the window, a result per running chunk, transfers
        assert w.bytes + (2 * workers + 2) * w.chunk_bytes <= budget
    assert w.limit == free


def test_the_chunk_cap_cuts_big_inputs_finer() -> None:
    data = (list(range(100_000)),)
    size = 400 * MIB
    plan, _ = make_plan(data, 2, size, None, None, True, max_chunk_bytes=10 * MIB)
    assert len(plan) >= 40
    _, planner = make_plan(data, 2, size, None, None, False, max_chunk_bytes=10 * MIB)
    assert planner is not None
    assert max(planner.rest(0, 1e-3)) * size / 100_000 <= 10 * MIB


# -- the embedded cluster -------------------------------------------------------------------------
def slow_len(xs: list[int]) -> int:
    time.sleep(0.05)
    return len(xs)


def test_a_sized_input_is_stored_as_the_workers_take_it(cluster: celerynb.LocalCluster) -> None:
    data = list(range(400))
    future = celerynb.cmap_async(
        slow_len, data, chunks=40, max_ahead=3, cluster=cluster, progress=False
    )
    keys, worst = CallKeys(future.id), 0
    while not future.done():
        worst = max(worst, cluster.store.pending(keys))
        time.sleep(0.01)
    assert future.result(BOUND) == [10] * 40
    assert worst <= 3, f"{worst} chunks waited for a worker with max_ahead=3"


# -- a deployment whose store has a maxmemory -----------------------------------------------------
class Store:
    """A private redis-server (``maxmemory`` given, noeviction) and its peak memory."""

    def __init__(self, tmp: Path, maxmemory: str | None) -> None:
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("no redis-server")
        port = free_port()
        args = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(tmp)]  # fmt: skip
        if maxmemory is not None:
            args += ["--maxmemory", maxmemory, "--maxmemory-policy", "noeviction"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, start_new_session=True)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.RedisError:
                assert self.proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.02)

    def used(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def call_keys(self) -> list[bytes]:
        return list(self.client.scan_iter(match="celerynb:{*", count=1000))

    def stop(self) -> None:
        self.client.close()
        self.proc.kill()
        self.proc.wait(10)


class Peak(threading.Thread):
    """The store's peak ``used_memory`` while it runs (sampled every 50 ms)."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store, self.peak, self.stop = store, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, self.store.used())
            time.sleep(0.05)

    def __enter__(self) -> Peak:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()


def deployment(tmp: Path, maxmemory: str | None) -> Iterator[tuple[celerynb.Cluster, Store]]:
    store = Store(tmp, maxmemory)
    secret = new_secret()
    workers = [start_worker(tmp, secret, store.url, name=f"b{i}") for i in range(2)]
    client = celerynb.connect(store.url, secret=secret)
    try:
        wait_ready(client, workers)
        yield client, store
    finally:
        client.close()
        for w in workers:
            w.stop()
        store.stop()


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[tuple[celerynb.Cluster, Store]]:
    yield from deployment(tmp_path, "16mb")


@pytest.fixture
def store_128(tmp_path: Path) -> Iterator[tuple[celerynb.Cluster, Store]]:
    yield from deployment(tmp_path, "128mb")


@pytest.fixture
def unlimited(tmp_path: Path) -> Iterator[tuple[celerynb.Cluster, Store]]:
    yield from deployment(tmp_path, None)


def test_a_store_too_small_for_one_chunk_is_a_clear_error(
    small_store: tuple[celerynb.Cluster, Store],
) -> None:
    client, store = small_store
    df = frame(48)
    with pytest.raises(celerynb.StoreFull) as caught:
        celerynb.cmap(double, df, chunks=2, cluster=client, progress=False)
    message = str(caught.value)
    assert isinstance(caught.value, celerynb.CelerynbError)
    assert "maxmemory 16 MiB" in message and "127.0.0.1" in message
    assert "24.0 MiB" in message  # what the call needed: one chunk
    assert "chunk_size=" in message and "max_ahead=" in message and "bigger maxmemory" in message
    time.sleep(0.5)
    assert store.call_keys() == []
    small = frame(4)
    pd.testing.assert_frame_equal(
        celerynb.cmap(double, small, cluster=client, progress=False), small * 2
    )


@pytest.mark.slow
def test_a_frame_bigger_than_maxmemory_completes(store_128: tuple[celerynb.Cluster, Store]) -> None:
    client, store = store_128
    df = frame(480)
    with Peak(store) as peak:
        out = celerynb.cmap(double, df, cluster=client, progress=False)
    pd.testing.assert_frame_equal(out, df * 2)
    assert peak.peak <= 128 * MIB
    assert store.call_keys() == []


@pytest.mark.slow
def test_the_store_holds_a_window_not_the_input(unlimited: tuple[celerynb.Cluster, Store]) -> None:
    client, store = unlimited
    peaks = {}
    for mib in (160, 480):
        df = frame(mib)
        before = store.used()
        with Peak(store) as peak:
            out = celerynb.cmap(double, df, cluster=client, progress=False)
        assert out.shape == df.shape
        peaks[mib] = peak.peak - before
        del df, out
    assert peaks[480] < 160 * MIB, {k: v / MIB for k, v in peaks.items()}  # not the input
