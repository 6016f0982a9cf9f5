"""Nothing unsigned is ever unpickled; the embedded Redis is private; secrets stay hidden.

Forged messages and forged data-plane records are written straight into the
session cluster's real redis-server, as an attacker with broker access would.
"""

from __future__ import annotations

import base64
import json
import pickle
import socket
import stat
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

import celerynb
from celerynb.errors import SignatureError
from celerynb.plane import codec as serialization
from celerynb.plane.keys import CallKeys
from celerynb.settings import RUN_CHUNKS, Settings

BOUND = 15.0  # generous "does not hang" bound


class CreatesFile:
    """Unpickling an instance of this creates the file at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def evil_pickle(path: Path) -> bytes:
    return pickle.dumps(CreatesFile(path))


def password_of(cluster: celerynb.LocalCluster) -> str:
    url = cluster.settings.broker_url
    return url.split("://:", 1)[1].split("@", 1)[0]


def port_of(cluster: celerynb.LocalCluster) -> int:
    return int(cluster.settings.broker_url.rsplit(":", 1)[1].split("/", 1)[0])


def kombu_envelope(body: bytes, content_type: str, queue: str) -> str:
    """A task message as kombu's Redis transport stores it in the queue's list."""
    tid = str(uuid.uuid4())
    return json.dumps(
        {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "binary",
            "content-type": content_type,
            "headers": {
                "lang": "py",
                "task": RUN_CHUNKS,
                "id": tid,
                "shadow": None,
                "eta": None,
                "expires": None,
                "group": None,
                "group_index": None,
                "retries": 0,
                "timelimit": [None, None],
                "root_id": tid,
                "parent_id": None,
                "argsrepr": "()",
                "kwargsrepr": "{}",
                "origin": "attacker@elsewhere",
                "ignore_result": True,
            },
            "properties": {
                "correlation_id": tid,
                "reply_to": str(uuid.uuid4()),
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )


def wait_for_log(cluster: celerynb.LocalCluster, start: int, needles: list[str]) -> str:
    """The worker log written after byte ``start``, once it contains every needle."""
    log = cluster.dir / "worker.log"
    deadline = time.monotonic() + BOUND
    text = ""
    while time.monotonic() < deadline:
        with open(log, "rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
        if all(n in text for n in needles):
            return text
        time.sleep(0.1)
    raise AssertionError(f"the worker did not log {needles} within {BOUND} s:\n{text[-3000:]}")


def assert_cluster_ok(cluster: celerynb.LocalCluster) -> None:
    out = celerynb.cmap(lambda xs: [x + 1 for x in xs], list(range(8)), chunks=4, cluster=cluster,
                        progress=False)  # fmt: skip
    assert out == list(range(1, 9))


# -- forged task messages on the broker ---------------------------------------


def test_forged_pickle_message_is_refused(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    target = tmp_path / "pwned-pickle"
    queue = cluster.settings.queue
    start = (cluster.dir / "worker.log").stat().st_size
    body = evil_pickle(target)
    cluster.redis.lpush(queue, kombu_envelope(body, "application/x-python-serialize", queue))
    wait_for_log(cluster, start, ["Refusing to deserialize untrusted content of type pickle"])
    assert cluster.redis.llen(queue) == 0  # consumed and discarded, not requeued
    assert_cluster_ok(cluster)
    assert not target.exists()
    assert cluster.state == "running"


@pytest.mark.parametrize("signature", ["missing", "zeros", "other-secret", "truncated"])
def test_forged_message_with_our_content_type_is_refused(
    cluster: celerynb.LocalCluster, tmp_path: Path, signature: str
) -> None:
    target = tmp_path / f"pwned-{signature}"
    payload = evil_pickle(target)
    body = {
        "missing": payload,
        "zeros": serialization.MAGIC + bytes(32) + payload,
        "other-secret": serialization.sign(serialization.new_secret(), payload),
        "truncated": serialization.MAGIC + b"\x01\x02",
    }[signature]
    queue = cluster.settings.queue
    content_type = f"application/x-{serialization.serializer_name(cluster.settings.secret)}"
    start = (cluster.dir / "worker.log").stat().st_size
    cluster.redis.lpush(queue, kombu_envelope(body, content_type, queue))
    wait_for_log(cluster, start, ["refused", "celerynb payload"])
    assert cluster.redis.llen(queue) == 0
    assert_cluster_ok(cluster)
    assert not target.exists()
    assert cluster.state == "running"


def test_unsigned_control_commands_are_refused(tmp_path: Path) -> None:
    """Remote-control broadcasts (shutdown, pool_shrink) in plain JSON are not obeyed.

    Own cluster: if this regressed, the worker would really shut down.
    """
    with celerynb.LocalCluster(n_workers=1) as own:
        rogue = Celery("rogue", broker=own.settings.broker_url, set_as_current=False)
        rogue.conf.control_exchange = own.settings.queue
        rogue.conf.accept_content = ["json"]
        try:
            start = (own.dir / "worker.log").stat().st_size
            assert rogue.control.ping(timeout=1.0) == []  # nobody answers unsigned pings
            rogue.control.broadcast("shutdown")
            rogue.control.broadcast("pool_shrink", arguments={"n": 1})
            wait_for_log(own, start, ["untrusted content of type json", '"method": "shutdown"'])
        finally:
            rogue.close()
        assert own.state == "running" and own.worker_proc is not None
        assert own.worker_proc.poll() is None
        assert len(own.pids) == 3  # redis, worker, its one pool process
        assert_cluster_ok(own)


# -- forged records in the data plane ------------------------------------------


def test_forged_func_and_chunk_keys_are_refused_by_the_worker(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    def hold(xs: list[int]) -> list[int]:
        time.sleep(2)
        return xs

    # keep both pool processes busy so the second call waits in the queue
    blocker = celerynb.cmap_async(hold, [1, 2], chunks=2, cluster=cluster, progress=False)
    time.sleep(0.3)
    victim = celerynb.cmap_async(lambda xs: xs, [1, 2], chunks=1, cluster=cluster,
                                 progress=False)  # fmt: skip
    r = cluster.redis
    func_file, chunk_file = tmp_path / "pwned-func", tmp_path / "pwned-chunk"
    replaced_func = r.set(CallKeys(victim.id).func, evil_pickle(func_file), xx=True)
    replaced_chunk = r.set(
        CallKeys(victim.id).chunk(0),
        serialization.MAGIC + bytes(32) + evil_pickle(chunk_file),
        xx=True,
    )
    assert replaced_func and replaced_chunk, "the chunk ran before it could be forged"
    with pytest.raises(celerynb.ChunkError) as info:
        victim.result(timeout=BOUND)
    assert "SignatureError" in str(info.value) and "refused" in str(info.value)
    assert blocker.result(timeout=BOUND) == [1, 2]
    assert not func_file.exists() and not chunk_file.exists()
    assert_cluster_ok(cluster)


def test_forged_result_record_is_never_unpickled_by_the_driver(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    def hold(xs: list[int]) -> list[int]:
        time.sleep(1)
        return xs

    target = tmp_path / "pwned-driver"
    future = celerynb.cmap_async(hold, [1, 2], chunks=2, cluster=cluster, progress=False)
    cluster.redis.rpush(CallKeys(future.id).done, evil_pickle(target))
    try:
        value = future.result(timeout=BOUND)
    except SignatureError:
        pass  # refusing the call is fine
    else:
        assert value == [1, 2]
    assert not target.exists()
    assert_cluster_ok(cluster)


# -- the embedded redis-server is private -------------------------------------


def raw_redis(port: int, *commands: bytes) -> list[bytes]:
    """Send inline commands on a fresh, unauthenticated connection; the reply lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        replies = []
        for command in commands:
            sock.sendall(command + b"\r\n")
            replies.append(sock.recv(4096))
        return replies


def test_embedded_redis_requires_a_password(cluster: celerynb.LocalCluster) -> None:
    port = port_of(cluster)
    replies = raw_redis(port, b"PING", b"CONFIG GET bind", b"LPUSH x y", b"KEYS *")
    assert all(reply.startswith(b"-NOAUTH") for reply in replies), replies
    (wrong,) = raw_redis(port, b"AUTH not-the-password")
    assert wrong.startswith(b"-WRONGPASS"), wrong
    # redis-py sees the same (without its connection retries)
    client = redis.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.AuthenticationError):
        client.ping()
    client.close()
    assert len(password_of(cluster)) >= 32


def test_embedded_redis_listens_on_loopback_only(cluster: celerynb.LocalCluster) -> None:
    client = redis.Redis(host="127.0.0.1", port=port_of(cluster), password=password_of(cluster))
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    assert client.config_get("protected-mode") == {"protected-mode": "yes"}
    client.close()
    assert cluster.redis_proc is not None
    listening = [
        c.laddr
        for c in psutil.Process(cluster.redis_proc.pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    assert listening, "redis-server listens on nothing?"
    assert {addr.ip for addr in listening} == {"127.0.0.1"}
    assert {addr.port for addr in listening} == {port_of(cluster)}


def test_secrets_not_on_command_lines_or_world_readable(cluster: celerynb.LocalCluster) -> None:
    secret, password = cluster.settings.secret, password_of(cluster)
    for pid in cluster.pids:
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:  # also ZombieProcess: a pool process being replaced
            continue
        assert secret not in cmdline and password not in cmdline, cmdline
    assert stat.S_IMODE(cluster.dir.stat().st_mode) & 0o077 == 0
    conf = cluster.dir / "redis.conf"
    assert stat.S_IMODE(conf.stat().st_mode) & 0o077 == 0


# -- serialization -------------------------------------------------------------


def test_sign_verify_roundtrip() -> None:
    secret = serialization.new_secret()
    blob = serialization.sign(secret, b"payload")
    assert bytes(serialization.verify(secret, blob)) == b"payload"
    assert serialization.loads(secret, serialization.dumps(secret, {"a": [1, 2]})) == {"a": [1, 2]}


@pytest.mark.parametrize(
    "tamper",
    ["flip-body", "flip-mac", "append", "truncate-body", "no-magic", "empty", "header-only"],
)
def test_verify_rejects_tampered_bytes(tamper: str, tmp_path: Path) -> None:
    secret = serialization.new_secret()
    target = tmp_path / "pwned"
    good = bytearray(serialization.sign(secret, evil_pickle(target)))
    header = len(serialization.MAGIC) + 32
    if tamper == "flip-body":
        good[-2] ^= 0x01
    elif tamper == "flip-mac":
        good[len(serialization.MAGIC)] ^= 0x80
    elif tamper == "append":
        good += b"."
    elif tamper == "truncate-body":
        del good[-1]
    elif tamper == "no-magic":
        good[:4] = b"XXXX"
    elif tamper == "empty":
        good = bytearray()
    elif tamper == "header-only":
        good = good[:header]
    with pytest.raises(SignatureError):
        serialization.verify(secret, bytes(good))
    with pytest.raises(SignatureError):
        serialization.loads(secret, bytes(good))
    assert not target.exists()


def test_verify_rejects_a_different_secret(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    blob = serialization.sign("secret-one", evil_pickle(target))
    with pytest.raises(SignatureError, match="bad signature"):
        serialization.verify("secret-two", blob)
    with pytest.raises(SignatureError):
        serialization.loads("secret-two", blob)
    with pytest.raises(SignatureError):
        serialization.loads("", blob)
    assert not target.exists()
    assert issubclass(SignatureError, ValueError)


def test_key_id_is_a_fingerprint_not_the_secret() -> None:
    one, two = serialization.new_secret(), serialization.new_secret()
    assert one != two and len(one) >= 32
    assert serialization.key_id(one) != serialization.key_id(two)
    assert serialization.key_id(one) == serialization.key_id(one)
    assert one not in serialization.key_id(one) and len(serialization.key_id(one)) == 12
    assert serialization.serializer_name(one) != serialization.serializer_name(two)


# -- nothing shows the secret or the redis password ---------------------------


def test_reprs_and_errors_hide_secret_and_password(cluster: celerynb.LocalCluster) -> None:
    secret, password = cluster.settings.secret, password_of(cluster)

    def fail(xs: list[int]) -> list[int]:
        raise RuntimeError("boom")

    future = celerynb.cmap_async(fail, [1, 2, 3], cluster=cluster, progress=False)
    with pytest.raises(celerynb.ChunkError) as info:
        future.result(timeout=BOUND)
    err = info.value
    shown = [
        repr(cluster),
        str(cluster),
        cluster._repr_html_(),
        repr(future),
        future._repr_html_(),
        str(err),
        repr(err),
        err.remote_traceback,
        "\n".join(err._render_traceback_()),
    ]
    for text in shown:
        assert secret not in text, text
        assert password not in text, text
    assert "***" in repr(cluster)


def test_settings_repr_hides_secret_and_password(cluster: celerynb.LocalCluster) -> None:
    # Was: Settings (celerynb/app.py) is a dataclass whose repr shows broker_url and
    # backend_url unmasked, so repr(cluster.settings) shows the Redis password.
    text = repr(cluster.settings)
    assert cluster.settings.secret not in text
    assert password_of(cluster) not in text, text


def test_closed_cluster_error_hides_password(cluster: celerynb.LocalCluster) -> None:
    other = celerynb.Cluster(Settings(cluster.settings.broker_url, secret=cluster.settings.secret))
    other.close()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.cmap(len, [1, 2], cluster=other, progress=False)
    assert password_of(cluster) not in str(info.value)
    assert "closed" in str(info.value)
