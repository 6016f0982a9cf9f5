"""No unbounded keys, queues or exchanges: after a run of mixed calls on a deployment
(Redis and RabbitMQ brokers), every Redis key of ours has a TTL or is gone, and nothing
of ours is left on RabbitMQ but kombu's own long-lived queue and exchanges."""

from __future__ import annotations

import functools
import operator
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cloudpickle
import pandas as pd
import pytest
import redis
from test_scaleout import BROKERS, REDIS

import celerynb
from celerynb.plane.keys import QueueKeys

pytestmark = pytest.mark.slow

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from deploy import Deployment  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _ship_this_module() -> Iterator[None]:
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


ADD = functools.partial(functools.reduce, operator.add)


def nap(xs: list[int]) -> list[int]:
    time.sleep(0.2)
    return xs


def double(xs: list[int]) -> list[int]:
    return [x * 2 for x in xs]


def mixed_calls(client: celerynb.Cluster) -> list[str]:
    """Sized, iterator, groupby, reduce=, named then forgotten, cancelled: their ids."""
    run = functools.partial(celerynb.cmap_async, cluster=client, progress=False)
    futures = [
        run(double, list(range(40)), chunks=4),
        run(double, iter([[1, 2], [3], [4, 5]])),
        run(lambda g: g.sum(), pd.DataFrame({"k": [1, 1, 2, 3], "v": range(4)}).groupby("k")),
        run(sum, list(range(20)), chunks=4, reduce=ADD),
    ]
    for f in futures:
        f.result(timeout=60)
    named = run(double, list(range(8)), chunks=2, name="leak-check")
    named.result(timeout=60)
    named.forget()
    cancelled = run(nap, list(range(20)), chunks=20)
    time.sleep(0.5)
    cancelled.cancel()
    return [f.id for f in [*futures, named, cancelled]]


def rabbit(what: str) -> set[str]:
    out = subprocess.run(["rabbitmqctl", "-q", f"list_{what}", "-p", "/", "name"],
                         capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    return {line.strip() for line in out.splitlines()[1:] if line.strip()}


@pytest.mark.parametrize("broker", BROKERS)
def test_mixed_calls_leave_no_unbounded_key_queue_or_exchange(broker: str, tmp_path: Path) -> None:
    d = Deployment(broker, tmp_path)
    queue = d.settings.queue
    try:
        d.add("a")
        d.add("b")
        d.connect()
        d.ready(2)
        ids = mixed_calls(d.client)  # type: ignore[arg-type]
        time.sleep(1.0)
        d.client.close()  # type: ignore[union-attr]
        d.client = None
        time.sleep(6.0)  # the workers see the cancelled call's end; deferred deletions run
        store = redis.Redis.from_url(REDIS)
        ours = [k.decode() for k in store.scan_iter(count=1000)
                if queue in k.decode() or any(i in k.decode() for i in ids)]  # fmt: skip
        registries = QueueKeys(queue)
        kombu = {queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
                 f"_kombu.binding.{queue}.pidbox",
                 f"_kombu.binding.reply.{queue}.pidbox"}  # fmt: skip
        unbounded = [k for k in ours if k not in kombu and store.ttl(k) < 0]
        assert not unbounded, unbounded
        calls_left = [k for k in ours if any(i in k for i in ids)]
        assert not calls_left, calls_left  # every call's keys (and task results) are gone
        assert {registries.calls, registries.beats, registries.info} >= {
            k for k in ours if k.startswith("celerynb:") and k not in calls_left
        } - {registries.names}
        for k in ours:
            if k.startswith("celerynb:"):
                assert 0 < store.ttl(k) <= 25 * 3600, (k, store.ttl(k))
        if broker == "amqp":
            for w in d.workers:
                w.stop()
            time.sleep(1.0)
            left = {q for q in rabbit("queues") if queue in q}
            assert left <= {queue}, left  # the durable task queue only: no reply queues
            exchanges = {e for e in rabbit("exchanges") if queue in e}
            assert exchanges <= {queue, f"{queue}.pidbox", f"reply.{queue}.pidbox"}, exchanges
    finally:
        d.close()
