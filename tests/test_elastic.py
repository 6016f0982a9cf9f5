"""Elastic scale-out: `celerynb worker` processes that join, leave, die or start late.

Everything is real: the machine's Redis and RabbitMQ, worker processes the
tests start and stop (by PID or process group), a driver process that is
SIGKILLed, a second host in a network namespace whose link is cut.
Each test namespaces its queue with a fresh secret and removes it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pytest
import redis
from test_scaleout import (
    BROKERS,
    REDIS,
    Worker,
    delete_broker_state,
    network_namespace,
    private_redis,
    start_worker,
    urls,
    wait_ready,
    worker_env,
)

import celerynb
from celerynb.errors import ClusterError
from celerynb.plane.codec import new_secret
from celerynb.settings import Settings

pytestmark = pytest.mark.slow

CHUNK = 0.25  # seconds a chunk sleeps
N = 40  # chunks of a call: 10 s on one worker process


@pytest.fixture(scope="module", autouse=True)
def _ship_this_module() -> Iterator[None]:
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def sleepy(xs: list[int], seconds: float = CHUNK) -> list[tuple[int, float, float]]:
    """Each item: (item, start, end) wall-clock times of its chunk."""
    started = time.time()
    time.sleep(seconds)
    return [(x, started, time.time()) for x in xs]


def half_second(xs: list[int]) -> list[tuple[int, float, float]]:
    return sleepy(xs, 0.5)


class Deployment:
    """A fresh secret on a broker, a connected client and the workers a test starts."""

    def __init__(self, tmp: Path, broker: str, **connect: float) -> None:
        self.tmp, self.broker = tmp, broker
        self.url, self.backend = urls(broker)
        self.secret = new_secret()
        self.settings = Settings(self.url, secret=self.secret, backend_url=self.backend)
        self.client = celerynb.connect(
            self.url, self.backend or None, secret=self.secret, **connect
        )
        self.workers: list[Worker] = []

    def start(self, name: str, concurrency: int = 1, prefix: list[str] | None = None) -> Worker:
        w = start_worker(self.tmp, self.secret, self.url, self.backend, concurrency=concurrency,
                         name=name, prefix=prefix)  # fmt: skip
        self.workers.append(w)
        return w

    def restart(self, w: Worker) -> Worker:
        """Start ``w``'s command again under the same ``--hostname`` (as systemd would)."""
        cwd = self.tmp / f"cwd-{w.hostname.split('@')[0]}"
        log = w.log.with_suffix(".again.log")
        again = Worker(list(w.proc.args), worker_env(self.secret), log, w.hostname, cwd)
        self.workers.append(again)
        return again

    def ready(self, *workers: Worker) -> float:
        wait_ready(self.client, list(workers))
        return time.time()

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.client.close()
        with contextlib.suppress(Exception):
            delete_broker_state(self.settings)


@pytest.fixture
def deployment(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Deployment]:
    d = Deployment(tmp_path, getattr(request, "param", "redis"))
    try:
        yield d
    finally:
        d.close()


def by_worker(future: celerynb.MapFuture) -> dict[str, int]:
    counts: dict[str, int] = {}
    for w in future.workers:
        counts[str(w)] = counts.get(str(w), 0) + 1
    return counts


# -- 1. join --------------------------------------------------------------------------------------
@pytest.mark.parametrize("deployment", BROKERS, indirect=True)
def test_a_worker_that_joins_mid_call_takes_chunks(deployment: Deployment) -> None:
    d = deployment
    first = d.start("first")
    d.ready(first)
    started = time.time()
    future = celerynb.cmap_async(sleepy, list(range(N)), chunks=N, cluster=d.client,
                                 progress=False)  # fmt: skip
    time.sleep(2)
    second = d.start("second")
    joined = d.ready(second)
    out = future.result(60)
    took = time.time() - started
    assert [x for x, _, _ in out] == list(range(N))
    counts = by_worker(future)
    assert counts.get(second.hostname, 0) >= 8, counts
    first_there = min(s for (_, s, _), w in zip(out, future.workers, strict=True)
                      if w == second.hostname)  # fmt: skip
    assert first_there - joined < 2.5, f"the joined worker started {first_there - joined:.1f} s in"
    assert took < N * CHUNK * 0.85, f"{took:.1f} s: no faster than one worker"
    print(f"\njoin ({d.broker}): {took:.1f} s, {counts}, first chunk on the new worker "
          f"{first_there - joined:.2f} s after it was ready")  # fmt: skip

    # a call made now sees both workers at once (nothing cached for 30 s)
    assert set(d.client.workers()) == {first.hostname, second.hostname}
    started = time.time()
    again = celerynb.cmap_async(sleepy, list(range(N)), chunks=N, cluster=d.client,
                                progress=False)  # fmt: skip
    again.result(60)
    took = time.time() - started
    assert set(again.workers) == {first.hostname, second.hostname}
    assert took < N * CHUNK * 0.7, f"{took:.1f} s with two workers"


def test_a_busy_worker_leaves_the_spare_message_queued(deployment: Deployment) -> None:
    """The spare draining message waits in the queue while the one worker is busy."""
    d = deployment
    only = d.start("only")
    d.ready(only)
    future = celerynb.cmap_async(sleepy, list(range(8)), chunks=8, cluster=d.client,
                                 progress=False)  # fmt: skip
    time.sleep(1.0)
    client = redis.Redis.from_url(d.url)
    try:
        assert client.llen(d.settings.queue) == 1, "the spare is not held by the busy worker"
    finally:
        client.close()
    assert len(future.result(30)) == 8


# -- 2. loss --------------------------------------------------------------------------------------
@pytest.mark.parametrize("deployment", BROKERS, indirect=True)
def test_a_worker_killed_mid_call_loses_nothing(deployment: Deployment) -> None:
    d = deployment
    keep, lose = d.start("keep"), d.start("lose")
    d.ready(keep, lose)
    future = celerynb.cmap_async(sleepy, list(range(N)), chunks=N, cluster=d.client,
                                 progress=False)  # fmt: skip
    time.sleep(2)
    os.killpg(lose.proc.pid, signal.SIGKILL)  # the whole worker: a machine lost
    lost = time.time()
    out = future.result(60)
    recovered = time.time() - lost
    assert [x for x, _, _ in out] == list(range(N)), "every chunk once, in order"
    assert recovered < 15 + N * CHUNK / 2, f"{recovered:.1f} s after the loss"
    late = [w for (_, s, _), w in zip(out, future.workers, strict=True) if s > lost]
    assert lose.hostname not in late
    print(f"\nloss ({d.broker}): done {recovered:.1f} s after the kill, {by_worker(future)}")


@pytest.mark.parametrize("deployment", BROKERS, indirect=True)
def test_a_worker_killed_and_restarted_under_its_name_loses_nothing(
    deployment: Deployment,
) -> None:
    """What systemd, supervisord or Kubernetes do: the same ``--hostname`` again, at once.
    The restarted process is a new incarnation: the old one's chunk runs again."""
    d = deployment
    n = 20
    a, b = d.start("a"), d.start("b")
    d.ready(a, b)
    future = celerynb.cmap_async(half_second, list(range(n)), chunks=n, cluster=d.client,
                                 progress=False)  # fmt: skip
    time.sleep(2)
    os.killpg(a.proc.pid, signal.SIGKILL)
    killed = time.time()
    a.proc.wait(10)
    time.sleep(0.5)
    again = d.restart(a)
    out = future.result(60)
    took = time.time() - killed
    assert [x for x, _, _ in out] == list(range(n)), "every chunk's result once, in order"
    assert len(future.workers) == n
    assert set(d.client.workers(max_age=0)) <= {a.hostname, b.hostname}
    assert again.proc.poll() is None
    print(f"\nrestart under the same name ({d.broker}): done {took:.1f} s after the kill, "
          f"{by_worker(future)}")  # fmt: skip


# -- 3. leave -------------------------------------------------------------------------------------
def test_a_worker_in_warm_shutdown_hands_its_chunks_over(deployment: Deployment) -> None:
    d = deployment
    stay, leave = d.start("stay"), d.start("leave")
    d.ready(stay, leave)
    future = celerynb.cmap_async(sleepy, list(range(N)), chunks=N, cluster=d.client,
                                 progress=False)  # fmt: skip
    time.sleep(2)
    os.kill(leave.proc.pid, signal.SIGTERM)  # warm shutdown of its main process
    told = time.time()
    leave.proc.wait(CHUNK + 10)
    exited = time.time() - told
    out = future.result(60)
    assert [x for x, _, _ in out] == list(range(N))
    on_leaver = [s for (_, s, _), w in zip(out, future.workers, strict=True)
                 if w == leave.hostname]  # fmt: skip
    assert max(on_leaver) < told + 0.5, "no chunk starts on a worker that is leaving"
    assert exited < CHUNK + 10
    print(f"\nleave: the worker exited {exited:.1f} s after SIGTERM, {by_worker(future)}")


# -- 4. late start --------------------------------------------------------------------------------
@pytest.mark.parametrize("deployment", BROKERS, indirect=True)
def test_a_call_waits_for_the_first_worker(deployment: Deployment) -> None:
    d = deployment
    future = celerynb.cmap_async(sleepy, list(range(4)), chunks=4, cluster=d.client,
                                 progress="text")  # fmt: skip
    time.sleep(1.0)
    assert future.state == "waiting"
    assert "waiting for a worker on queue" in repr(future)
    late = d.start("late")
    out = future.result(60)
    assert [x for x, _, _ in out] == list(range(4))
    assert set(future.workers) == {late.hostname}


def test_without_any_worker_the_call_fails_after_worker_wait(tmp_path: Path) -> None:
    d = Deployment(tmp_path, "redis", worker_wait=2.0)
    try:
        started = time.monotonic()
        with pytest.raises(ClusterError, match="no celerynb worker answers"):
            celerynb.cmap(sleepy, [1, 2], cluster=d.client, progress=False)
        assert 1.5 < time.monotonic() - started < 10
    finally:
        d.close()


# -- 5. a dead driver -----------------------------------------------------------------------------
DRIVER = """
import os, sys, time, celerynb
marks = sys.argv[1]
def work(xs):
    with open(os.path.join(marks, f"{xs[0]}-{time.time():.3f}"), "w"):
        pass
    time.sleep(0.5)
    return xs
client = celerynb.connect(os.environ["URL"], secret=os.environ["SECRET"])
future = celerynb.cmap_async(work, list(range(200)), chunks=200, cluster=client, progress=False)
print(future.id, flush=True)
time.sleep(60)
"""


def test_workers_drop_the_calls_of_a_dead_driver(deployment: Deployment) -> None:
    d = deployment
    worker = d.start("w", concurrency=2)
    d.ready(worker)
    marks = d.tmp / "marks"
    marks.mkdir()
    env = dict(worker_env(d.secret), URL=d.url, SECRET=d.secret)
    env["PYTHONPATH"] += os.pathsep + str(d.tmp)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(marks)], env=env,
                              stdout=subprocess.PIPE, text=True, cwd=d.tmp)  # fmt: skip
    assert driver.stdout is not None
    call = driver.stdout.readline().strip()
    time.sleep(2)
    driver.kill()
    killed = time.time()
    driver.wait()
    time.sleep(14)
    started = sorted(float(name.split("-", 1)[1]) for name in os.listdir(marks))
    after = [t - killed for t in started if t > killed]
    assert after and max(after) < 11, f"chunks kept starting {max(after):.1f} s after"
    client = redis.Redis.from_url(REDIS)
    try:
        deadline = time.monotonic() + 60
        while (left := client.keys(f"celerynb:{{{call}}}:*")) and time.monotonic() < deadline:
            time.sleep(1)
        assert not left, left
    finally:
        client.close()
    print(f"\ndead driver: last chunk started {max(after):.1f} s after the kill")


# -- 6. a host whose link is cut ------------------------------------------------------------------
def test_a_host_cut_off_mid_call(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CAP_NET_ADMIN)")
    with network_namespace() as (ns, host_ip, _), private_redis(tmp_path, host_ip) as url:
        secret = new_secret()
        here = start_worker(tmp_path, secret, url, name="host-a")
        there = start_worker(tmp_path, secret, url, name="host-b",
                             prefix=["ip", "netns", "exec", ns])  # fmt: skip
        client = celerynb.connect(url, secret=secret)
        try:
            wait_ready(client, [here, there])
            future = celerynb.cmap_async(sleepy, list(range(N)), chunks=N, cluster=client,
                                         progress=False)  # fmt: skip
            time.sleep(2)
            host_side = "cnbh" + ns.removeprefix("cnb-")  # see network_namespace()
            subprocess.run(["ip", "link", "set", host_side, "down"], check=True)
            cut = time.time()
            out = future.result(60)
            assert [x for x, _, _ in out] == list(range(N))
            assert time.time() - cut < 15 + N * CHUNK
            late = [w for (_, s, _), w in zip(out, future.workers, strict=True) if s > cut + 1]
            assert there.hostname not in late
            print(f"\ncut link: done {time.time() - cut:.1f} s after the cut")
        finally:
            here.stop()
            there.stop()
            client.close()
