"""Scaling out: `celerynb worker`, RabbitMQ and Redis brokers, several hosts, remote code.

Everything here is real: the machine's Redis (127.0.0.1:6379) and RabbitMQ
(127.0.0.1:5672), worker processes the tests start (and stop, by PID), and a
second "host" in its own Linux network namespace. Each test namespaces its
queues with a fresh secret and deletes its own queues, exchanges and keys.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
import redis
from kombu.connection import Connection
from support import eventually, forget_queue

import celerynb
from celerynb.errors import ChunkError, ClusterError
from celerynb.plane.codec import new_secret
from celerynb.plane.keys import CallKeys
from celerynb.settings import Liveness, Settings

REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP = os.environ.get("CELERYNB_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672//")
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0


def _redis_up() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _amqp_up() -> bool:
    try:
        with Connection(AMQP, connect_timeout=1) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
        return True
    except Exception:
        return False


needs_redis = pytest.mark.skipif(not _redis_up(), reason=f"no Redis at {REDIS}")
needs_amqp = pytest.mark.skipif(not _amqp_up(), reason=f"no RabbitMQ at {AMQP}")
BROKERS = [
    pytest.param("redis", marks=needs_redis),
    pytest.param("amqp", marks=[needs_redis, needs_amqp]),
]


def _free_port() -> int:
    from celerynb.procs import free_port

    return free_port()


@pytest.fixture(scope="module", autouse=True)
def _ship_this_module() -> Iterator[None]:
    """The workers run in another cwd and cannot import this file: send its functions by value."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


# -- worker processes -----------------------------------------------------------------------------
class Worker:
    """A worker subprocess in its own session; stopped by killing that session (by PID)."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log: Path,
        hostname: str,
        cwd: Path,
        prefix: list[str] | None = None,
    ) -> None:
        self.hostname = hostname
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [*(prefix or []), *args],
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def worker_env(secret: str, **extra: str) -> dict[str, str]:
    """A worker's environment: no CELERYNB_* of the test process, and on its path only the
    celerynb under test (not the tests, not the client's cwd)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
    env["PYTHONPATH"] = str(Path(celerynb.__file__).resolve().parents[1])
    env.update(CELERYNB_SECRET=secret, C_FORCE_ROOT="1", **extra)
    return env


def start_worker(
    tmp: Path,
    secret: str,
    broker: str,
    backend: str = "",
    *,
    concurrency: int = 1,
    name: str = "",
    celery_cli: bool = False,
    prefix: list[str] | None = None,
    extra: list[str] | None = None,
) -> Worker:
    """Start ``celerynb worker`` (or ``celery -A celerynb.worker worker``) in a fresh cwd."""
    hostname = f"{name or 'w'}-{secrets.token_hex(3)}@scaleout"
    cwd = tmp / f"cwd-{hostname.split('@')[0]}"  # another cwd: not the client's
    cwd.mkdir(parents=True, exist_ok=True)
    if celery_cli:
        env = worker_env(secret, CELERYNB_BROKER_URL=broker)
        if backend:
            env["CELERYNB_RESULT_BACKEND"] = backend
        args = [sys.executable, "-m", "celery", "-A", "celerynb.worker", "worker",
                "--pool", "prefork", "--concurrency", str(concurrency), "--hostname", hostname,
                "--without-mingle", "--without-gossip", "--loglevel", "WARNING"]  # fmt: skip
    else:
        env = worker_env(secret)
        args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", broker,
                "--concurrency", str(concurrency), "--hostname", hostname]  # fmt: skip
        if backend:
            args += ["--backend", backend]
    args += extra or []
    return Worker(args, env, tmp / f"{hostname.split('@')[0]}.log", hostname, cwd, prefix)


def wait_ready(client: celerynb.Cluster, workers: list[Worker]) -> None:
    """Wait until every worker in ``workers`` answers on the client's queue."""
    deadline = time.monotonic() + START_TIMEOUT
    wanted = {w.hostname for w in workers}
    while True:
        for w in workers:
            assert w.proc.poll() is None, f"worker {w.hostname} exited:\n{w.output()}"
        with contextlib.suppress(Exception):  # the first ping may hit a fresh connection
            if wanted <= set(client.workers(max_age=0)):
                return
        assert time.monotonic() < deadline, "\n".join(w.output() for w in workers)
        time.sleep(0.1)


def delete_broker_state(settings: Settings) -> None:
    """Delete this deployment's queue, exchanges and binding keys from the broker, and
    its keys (the registries of its calls and workers) from the store."""
    queue = settings.queue
    store = redis.Redis.from_url(settings.backend_url)
    try:
        keys = list(store.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            store.delete(*keys)
    finally:
        store.close()
    if settings.broker_url.startswith("amqp"):
        with Connection(settings.broker_url, connect_timeout=3) as conn:
            channel = conn.channel()
            for delete, name in (
                (channel.queue_delete, queue),
                (channel.exchange_delete, queue),
                (channel.exchange_delete, f"{queue}.pidbox"),
                (channel.exchange_delete, f"reply.{queue}.pidbox"),
            ):
                with contextlib.suppress(Exception):
                    delete(name)
                    continue
                channel = conn.channel()  # a failed delete closes the channel
    else:
        client = redis.Redis.from_url(settings.broker_url)
        keys = list(client.scan_iter(match=f"*{queue}*", count=1000))
        if keys:
            client.delete(*keys)
        members = client.zrange("_kombu.binding_deadlines", 0, -1)
        stale = [m for m in members if isinstance(m, bytes) and queue.encode() in m]
        if stale:
            client.zrem("_kombu.binding_deadlines", *stale)
        client.close()
        forget_queue(settings.broker_url, queue)  # and its stopped workers' unacked deliveries


@dataclass
class Deployment:
    """One "existing deployment": a secret, its workers, and a connected client."""

    broker: str
    settings: Settings
    client: celerynb.Cluster
    workers: list[Worker] = field(default_factory=list)

    @property
    def names(self) -> set[str]:
        return {w.hostname for w in self.workers}

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.client.close()
        with contextlib.suppress(Exception):
            delete_broker_state(self.settings)


def urls(broker: str) -> tuple[str, str]:
    """(broker URL, backend URL) of the machine's services for ``broker``."""
    return (AMQP, REDIS) if broker == "amqp" else (REDIS, "")


@contextlib.contextmanager
def deployments(tmp: Path, brokers: list[str], concurrency: int = 1) -> Iterator[list[Deployment]]:
    """Start one deployment (fresh secret, one worker) per entry of ``brokers``, in parallel."""
    made: list[Deployment] = []
    try:
        for broker in brokers:
            secret = new_secret()
            url, backend = urls(broker)
            settings = Settings(url, secret=secret, backend_url=backend)
            worker = start_worker(tmp, secret, url, backend, concurrency=concurrency, name=broker)
            client = celerynb.Cluster(settings)
            made.append(Deployment(broker, settings, client, [worker]))
        for d in made:
            wait_ready(d.client, d.workers)
        yield made
    finally:
        for d in made:
            d.close()


@pytest.fixture(scope="module")
def deploy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[Deployment]]]:
    """Two deployments (different secrets) on each broker, one worker each."""
    brokers = ["redis", "redis"] + (["amqp", "amqp"] if _amqp_up() else [])
    if not _redis_up():
        pytest.skip(f"no Redis at {REDIS}")
    with deployments(tmp_path_factory.mktemp("deploy"), brokers) as made:
        yield {b: [d for d in made if d.broker == b] for b in ("redis", "amqp")}


def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    """Run ``celerynb`` with ``args``; (exit code, stderr + stdout, seconds)."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "celerynb.cli", *args],
        env=env if env is not None else worker_env(new_secret()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stderr + done.stdout, time.monotonic() - started


# -- 1. the `celerynb worker` command -------------------------------------------------------------
def test_worker_help_documents_every_option_and_an_example() -> None:
    code, out, _ = run_cli("worker", "--help")
    assert code == 0
    for option in ("--broker", "--backend", "--secret", "--concurrency", "--queues", "--hostname"):
        assert option in out
    assert "examples:" in out and "celerynb worker --broker redis://" in out
    assert "celery -A celerynb.worker worker" in out


def test_worker_without_secret_fails_fast() -> None:
    env = worker_env("")
    env.pop("CELERYNB_SECRET")
    code, out, seconds = run_cli("worker", "--broker", REDIS, env=env)
    assert code == 2, out
    assert "CELERYNB_SECRET" in out and "--secret" in out
    assert seconds < 10
    code, out, _ = run_cli("worker")  # no broker either
    assert code == 2 and "CELERYNB_BROKER_URL" in out, out


def test_worker_rejects_two_queues() -> None:
    code, out, _ = run_cli("worker", "--broker", REDIS, "--queues", "a,b")
    assert code == 2 and "one queue" in out, out


@pytest.mark.parametrize(
    "broker, backend, expect",
    [
        ("redis://:pw-secret@127.0.0.1:{port}/0", "", "broker|result backend"),
        ("amqp://guest:pw-secret@127.0.0.1:{port}//", REDIS, "broker"),
        ("amqp://guest:pw-secret@127.0.0.1:5672//", REDIS, "broker"),  # wrong password
        (AMQP, "redis://:pw-secret@127.0.0.1:{port}/0", "result backend"),
    ],
    ids=["redis-down", "amqp-down", "amqp-bad-password", "backend-down"],
)
def test_worker_fails_fast_when_unreachable(broker: str, backend: str, expect: str) -> None:
    if "5672" in broker + backend and not _amqp_up():
        pytest.skip(f"no RabbitMQ at {AMQP}")
    port = _free_port()
    args = ["worker", "--broker", broker.format(port=port)]
    if backend:
        args += ["--backend", backend.format(port=port)]
    code, out, seconds = run_cli(*args)
    assert code == 3, out
    assert "cannot reach the" in out and any(w in out for w in expect.split("|")), out
    assert "pw-secret" not in out, "the password must be masked"
    assert seconds < 10, f"took {seconds:.1f} s"


@needs_redis
def test_celery_cli_worker_and_inspect_ping(
    deploy: dict[str, list[Deployment]], tmp_path: Path
) -> None:
    """`celery -A celerynb.worker worker` joins a deployment; `celery inspect ping` sees both."""
    d = deploy["redis"][0]
    other = start_worker(tmp_path, d.settings.secret, REDIS, celery_cli=True,
                         name="celerycli")  # fmt: skip
    try:
        wait_ready(d.client, [*d.workers, other])
        env = worker_env(d.settings.secret, CELERYNB_BROKER_URL=REDIS)
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "celerynb.worker", "inspect", "ping",
             "--timeout", "2"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        for name in (*d.names, other.hostname):
            assert name in done.stdout, done.stdout
        assert f"celerynb worker {d.workers[0].hostname} ready: queue {d.settings.queue!r}" in (
            d.workers[0].output()
        )
        # a client with another secret does not see these workers at all
        with celerynb.Cluster(Settings(REDIS, secret=new_secret())) as stranger:
            assert not stranger.workers(max_age=0)
            delete_broker_state(stranger.settings)
        future = celerynb.cmap_async(_slow_plus_one, list(range(40)), chunks=8,
                                     cluster=d.client, progress=False)  # fmt: skip
        assert future.result(60) == list(range(1, 41))
        assert other.hostname in set(future.workers), future.workers
    finally:
        other.stop()


@needs_redis
def test_worker_with_a_named_queue(tmp_path: Path) -> None:
    """`--queues NAME` on the worker and `queue=NAME` on the client meet; the default does not."""
    secret, queue = new_secret(), f"cnb-test-{secrets.token_hex(4)}"
    worker = start_worker(tmp_path, secret, REDIS, extra=["--queues", queue])
    named = celerynb.Cluster(Settings(REDIS, secret=secret, queue=queue))
    default = celerynb.Cluster(Settings(REDIS, secret=secret))
    try:
        wait_ready(named, [worker])
        assert celerynb.cmap(_slow_plus_one, [1, 2, 3], cluster=named, progress=False) == [2, 3, 4]
        assert worker.hostname not in default.workers(max_age=0)
    finally:
        worker.stop()
        for client in (named, default):
            client.close()
            delete_broker_state(client.settings)


def _slow_plus_one(xs: list[int]) -> list[int]:
    time.sleep(0.1)
    return [x + 1 for x in xs]


# -- 2. brokers: parity, reduce, errors, isolation ------------------------------------------------
def _fails_on_13(chunk: pd.DataFrame) -> pd.DataFrame:
    if 13 in chunk.index:
        raise ValueError("bad row 13")
    return chunk


@pytest.mark.parametrize("broker", BROKERS)
def test_cmap_parity(deploy: dict[str, list[Deployment]], broker: str) -> None:
    d = deploy[broker][0]
    df = pd.DataFrame(
        {"a": np.arange(200), "b": np.linspace(0, 1, 200), "c": list("xy") * 100},
        index=pd.RangeIndex(100, 300),
    )
    out = celerynb.cmap(lambda c: c.assign(d=c.a * c.b), df, chunks=7, cluster=d.client,
                        progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(out, df.assign(d=df.a * df.b))
    arr = np.arange(1000, dtype=np.float32).reshape(250, 4)
    np.testing.assert_array_equal(celerynb.cmap(np.sqrt, arr, cluster=d.client, progress=False),
                                  np.sqrt(arr))  # fmt: skip
    total = celerynb.cmap(lambda c: int(c.a.sum()), df, chunks=5, reduce=sum, cluster=d.client,
                          progress=False)  # fmt: skip
    assert total == int(df.a.sum())
    with pytest.raises(ValueError, match="bad row 13") as info:
        celerynb.cmap(_fails_on_13, pd.DataFrame({"a": range(40)}), chunks=4, cluster=d.client,
                      progress=False)  # fmt: skip
    assert isinstance(info.value, ChunkError)
    assert info.value.worker in d.names and info.value.chunk.start == 10


def _tagged(tag: str) -> Callable[[list[int]], list[tuple[str, int]]]:
    def work(xs: list[int]) -> list[tuple[str, int]]:
        time.sleep(0.05)
        return [(tag, x * x) for x in xs]

    return work


@pytest.mark.parametrize("broker", BROKERS)
def test_two_secrets_on_one_broker_do_not_share_chunks(
    deploy: dict[str, list[Deployment]], broker: str
) -> None:
    a, b = deploy[broker]
    assert a.settings.queue != b.settings.queue
    data = list(range(60))
    fa = celerynb.cmap_async(_tagged("a"), data, chunks=12, cluster=a.client, progress=False)
    fb = celerynb.cmap_async(_tagged("b"), data, chunks=12, cluster=b.client, progress=False)
    assert fa.result(60) == [("a", x * x) for x in data]
    assert fb.result(60) == [("b", x * x) for x in data]
    assert set(fa.workers) == a.names and set(fb.workers) == b.names


# -- 5. chunk data never rides in a Celery message ------------------------------------------------
def _queued_bodies(settings: Settings) -> list[int]:
    """Sizes of the messages waiting in the deployment's queue (left in place)."""
    if settings.broker_url.startswith("amqp"):
        sizes = []
        with Connection(settings.broker_url, connect_timeout=3) as conn:
            channel = conn.channel()
            while (message := channel.basic_get(settings.queue, no_ack=False)) is not None:
                sizes.append(len(message.body))
            channel.close()  # unacked messages go back to the queue
        return sizes
    client = redis.Redis.from_url(settings.broker_url)
    try:
        return [len(m) for m in client.lrange(settings.queue, 0, -1)]
    finally:
        client.close()


def _purge(settings: Settings) -> None:
    """Drop the messages waiting in the deployment's queue."""
    if settings.broker_url.startswith("amqp"):
        with Connection(settings.broker_url, connect_timeout=3) as conn:
            conn.channel().queue_purge(settings.queue)
    else:
        client = redis.Redis.from_url(settings.broker_url)
        client.delete(settings.queue)
        client.close()


@pytest.mark.parametrize("broker", BROKERS)
def test_big_chunk_travels_in_the_store_not_in_the_message(tmp_path: Path, broker: str) -> None:
    """With the workers stopped, a 50 MiB chunk queues the same small messages as 8 bytes."""
    with deployments(tmp_path, [broker]) as (d,):
        # a client that counts the stopped worker as alive (its heartbeat grace is long)
        client = celerynb.Cluster(d.settings, liveness=Liveness(grace=600))
        assert client.workers()
        for w in d.workers:
            w.stop()
        sizes, stored = [], []
        for data in (np.zeros(1), np.zeros((50 * 2**20) // 8)):
            future = celerynb.cmap_async(np.sum, data, chunks=1, cluster=client, progress=False)
            try:
                key = CallKeys(future.id).chunk(0)

                # the chunk is stored (on the call's feeder thread), then its tasks are sent
                def sent(key: str = key) -> bool:
                    return bool(client.redis.exists(key)) and len(_queued_bodies(d.settings)) >= 2

                eventually(sent)
                sizes.append(_queued_bodies(d.settings))  # a draining task and a spare
                stored.append(client.redis.strlen(key))
            finally:
                future.cancel()
            gone = not client.redis.exists(CallKeys(future.id).chunk(0))
            assert gone, "cancel deletes the keys"
            _purge(d.settings)
        client.close()
        assert len(sizes[0]) == 2 and sizes[0] == sizes[1] and max(sizes[0]) < 4096, sizes
        assert stored[1] >= 50 * 2**20 > stored[0], stored


# -- 4. code on remote workers --------------------------------------------------------------------
@pytest.fixture
def client_only_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A module importable only in this (client) process, from a temp dir on its sys.path."""
    name = f"cnb_local_{secrets.token_hex(4)}"
    src = tmp_path / "client-only"
    src.mkdir()
    (src / f"{name}.py").write_text(
        textwrap.dedent(
            """\
            FACTOR = 3

            def triple(x):
                return FACTOR * x
            """
        )
    )
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def test_local_module_registered_by_value_runs_remotely(
    deploy: dict[str, list[Deployment]], client_only_module: Any
) -> None:
    d = deploy["redis"][0]
    helper = client_only_module
    cloudpickle.register_pickle_by_value(helper)
    try:
        out = celerynb.cmap(lambda xs: [helper.triple(x) for x in xs], list(range(20)),
                            cluster=d.client, progress=False)  # fmt: skip
    finally:
        cloudpickle.unregister_pickle_by_value(helper)
    assert out == [3 * x for x in range(20)]


# Shipping of local modules and the version check (celerynb/shipping.py)


def test_local_module_is_shipped_automatically(
    deploy: dict[str, list[Deployment]], client_only_module: Any
) -> None:
    d = deploy["redis"][0]
    helper = client_only_module
    triple = helper.triple
    out = celerynb.cmap(lambda xs: [helper.triple(x) + triple(x) for x in xs], list(range(20)),
                        cluster=d.client, progress=False)  # fmt: skip
    assert out == [6 * x for x in range(20)]
    assert helper.__name__ not in cloudpickle.list_registry_pickle_by_value(), "undone after"


def test_local_modules_are_found_through_wrappers(client_only_module: Any) -> None:
    """Closures, partials, methods and celerynb's own wrappers lead to the local module."""
    shipping = importlib.import_module("celerynb.plane.codec")
    from celerynb.groupby import GroupApply

    helper = client_only_module
    for root in (
        lambda xs: helper.triple(xs),
        functools.partial(helper.triple, 2),
        GroupApply(lambda c: helper.triple(c)),
    ):
        assert helper in shipping.local_modules(root), root
    assert shipping.local_modules(np.sum, pd.DataFrame.sum, functools.reduce) == []
    assert (
        shipping.is_local(helper) and not shipping.is_local(pd) and not shipping.is_local(celerynb)
    )


def test_missing_package_names_package_and_worker(deploy: dict[str, list[Deployment]]) -> None:
    d = deploy["redis"][0]

    def needs_package(xs: list[int]) -> list[int]:
        import cnb_not_installed_anywhere  # noqa: F401

        return xs

    with pytest.raises(ModuleNotFoundError) as info:
        celerynb.cmap(needs_package, list(range(8)), cluster=d.client, progress=False)
    err = info.value
    assert isinstance(err, ChunkError)
    assert "cnb_not_installed_anywhere" in str(err) and err.worker in str(err)
    assert "install it where the workers run" in str(err)


def test_installed_package_missing_on_worker(
    deploy: dict[str, list[Deployment]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package installed on the client only (it has metadata) is referenced, not shipped."""
    d = deploy["redis"][0]
    name = f"cnbfake_{secrets.token_hex(3)}"
    site = tmp_path / "site"
    (site / name).mkdir(parents=True)
    (site / name / "__init__.py").write_text("def f(x):\n    return x\n")
    info_dir = site / f"{name}-1.0.dist-info"
    info_dir.mkdir()
    (info_dir / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info_dir / "top_level.txt").write_text(name + "\n")
    monkeypatch.syspath_prepend(str(site))
    pkg = importlib.import_module(name)
    try:
        with pytest.raises(ChunkError) as info:
            celerynb.cmap(lambda xs: [pkg.f(x) for x in xs], list(range(8)), cluster=d.client,
                          progress=False)  # fmt: skip
        assert isinstance(info.value, ModuleNotFoundError)
        assert name in str(info.value) and info.value.worker in str(info.value)
    finally:
        sys.modules.pop(name, None)


def test_version_mismatch_fails_clearly_on_first_call(
    deploy: dict[str, list[Deployment]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client claims Python 3.99: the worker refuses the job before unpickling it."""
    shipping = importlib.import_module("celerynb.plane.codec")
    d = deploy["redis"][0]
    real = shipping.versions()
    monkeypatch.setattr(shipping, "versions", lambda: {**real, "python": "3.99.0"})
    with pytest.raises(ChunkError) as info:
        celerynb.cmap(lambda xs: xs, list(range(8)), cluster=d.client, progress=False)
    text = str(info.value)
    assert "version mismatch (python)" in text and "3.99.0" in text, text
    assert real["python"] in text and info.value.worker in text, text
    monkeypatch.undo()
    assert celerynb.cmap(lambda xs: xs, [1, 2], cluster=d.client, progress=False) == [1, 2]


# -- 3. a second host in its own network namespace ------------------------------------------------
def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@contextlib.contextmanager
def network_namespace() -> Iterator[tuple[str, str, str]]:
    """A namespace joined to this host by a veth pair: (namespace, host address, its address)."""
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        pytest.skip("network namespaces need Linux and iproute2 (`ip`)")
    tag = secrets.token_hex(3)
    ns, host_if, ns_if = f"cnb-{tag}", f"cnbh{tag}", f"cnbn{tag}"
    used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    octet = next(o for o in range(40, 250) if f"10.231.{o}." not in used)
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        _sh("ip", "netns", "add", ns)
    except (subprocess.CalledProcessError, OSError) as exc:
        err = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"cannot create a network namespace here: {err.decode().strip() or exc}")
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns)
        _sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, ns_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


@contextlib.contextmanager
def private_redis(tmp: Path, bind: str) -> Iterator[str]:
    """A password-protected redis-server of this test, bound to ``bind`` only; yields its URL."""
    server = shutil.which("redis-server")
    if server is None:
        from celerynb.procs import find_redis_server

        server = find_redis_server()
    password, port = new_secret(), _free_port()
    conf = tmp / "redis.conf"
    conf.write_text(
        f'bind {bind}\nport {port}\nrequirepass "{password}"\nprotected-mode yes\n'
        f'save ""\nappendonly no\ndir "{tmp}"\nlogfile "{tmp}/redis.log"\n'
    )
    proc = subprocess.Popen([server, str(conf)], stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"redis://:{password}@{bind}:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis did not start"
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_second_host_in_a_network_namespace(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating network namespaces needs root (CAP_NET_ADMIN)")
    with network_namespace() as (ns, host_ip, ns_ip), private_redis(tmp_path, host_ip) as url:
        probe = (
            "import redis\n"
            f"print(redis.Redis.from_url({url!r}, socket_connect_timeout=3).ping())\n"
            "try:\n"  # the machine's own Redis on 127.0.0.1 is not reachable from there
            "    redis.Redis(port=6379, socket_connect_timeout=1).ping(); print('local')\n"
            "except redis.ConnectionError:\n"
            "    print('isolated')\n"
        )
        reach = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert reach.stdout.split() == ["True", "isolated"], reach.stdout + reach.stderr
        secret = new_secret()
        here = start_worker(tmp_path, secret, url, name="host-a")
        there = start_worker(tmp_path, secret, url, name="host-b",
                             prefix=["ip", "netns", "exec", ns])  # fmt: skip
        client = celerynb.Cluster(Settings(url, secret=secret))
        try:
            wait_ready(client, [here, there])
            df = pd.DataFrame({"x": np.arange(400), "y": np.arange(400) % 7})

            def score(chunk: pd.DataFrame) -> pd.DataFrame:
                time.sleep(0.15)
                return chunk.assign(z=chunk.x * chunk.y)

            future = celerynb.cmap_async(score, df, chunks=12, cluster=client, progress=False)
            pd.testing.assert_frame_equal(future.result(60), df.assign(z=df.x * df.y))
            assert set(future.workers) == {here.hostname, there.hostname}, future.workers
            # the namespaced worker really talks over the veth: its connections come from ns_ip
            clients = redis.Redis.from_url(url).client_list()
            assert any(c["addr"].startswith(f"{ns_ip}:") for c in clients), clients
        finally:
            here.stop()
            there.stop()
            client.close()


@needs_redis
def test_connect_error_names_unreachable_broker() -> None:
    port = _free_port()
    with pytest.raises(ClusterError, match="cannot reach"):
        celerynb.connect(f"amqp://guest:x@127.0.0.1:{port}//", REDIS, secret=new_secret())
