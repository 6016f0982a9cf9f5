"""The data plane's Lua contract, on a real redis-server (the session's embedded one).

Each test plays the workers' and the driver's parts by hand, so the races of
scale-out are replayed deterministically: a worker given up for dead that
comes back, a driver that is gone, the worker registry.
"""

from __future__ import annotations

import json
import re
import time
import uuid

import pytest

import celerynb
from celerynb.plane import scripts
from celerynb.plane.keys import REDUCED, CallKeys, QueueKeys
from celerynb.plane.scripts import ABANDONED, OPEN, Report

CALL_SCRIPTS = {"next": scripts._NEXT, "requeue": scripts._REQUEUE, "reap": scripts._REAP}
CALL_SCRIPTS["push"] = scripts._PUSH
REGISTRY_SCRIPTS = {"beat": scripts._BEAT, "roll": scripts._ROLL}


@pytest.fixture
def client(cluster: celerynb.LocalCluster):  # type: ignore[no-untyped-def]
    return cluster.redis


def store(client, n: int, alive: bool = True) -> CallKeys:  # type: ignore[no-untyped-def]
    """A call of ``n`` chunks, as a driver stores it."""
    keys = CallKeys(uuid.uuid4().hex)
    pipe = client.pipeline()
    pipe.set(keys.func, b"job")
    pipe.set(keys.count, n)
    if alive:
        pipe.set(keys.alive, 1, ex=30)
    for i in range(n):
        pipe.set(keys.chunk(i), f"chunk {i}".encode())
    if n:
        pipe.rpush(keys.pending, *range(n))
    pipe.execute()
    return keys


def take(client, keys, slot, report=None, worker="w1", watch=True, take=True):  # type: ignore[no-untyped-def]
    return scripts.next_chunk(
        client, keys, slot, report, take=take, have_job=False, inline_max=1024,
        worker=worker, watch=watch,
    )  # fmt: skip


def test_a_slot_takes_reports_and_takes_again(client) -> None:  # type: ignore[no-untyped-def]
    keys = store(client, 3)
    got = take(client, keys, "0")
    assert (got.index, got.tries, got.job, got.chunk, got.pending) == (0, 1, b"job", b"chunk 0", 2)
    assert client.hget(keys.owners, "0") == b"w1"
    got = take(client, keys, "0", Report(0, b"record 0"))
    assert got.accepted and got.index == 1 and got.job_found
    assert client.lrange(keys.done, 0, -1) == [b"record 0"]
    assert not client.exists(keys.chunk(0))
    got = take(client, keys, "0", Report(1, b"record 1"), take=False)  # time is up: hand over
    assert got.accepted and got.index is None and got.pending == 1
    assert not client.hexists(keys.owners, "0")


def test_a_dead_workers_chunk_runs_once_elsewhere_and_its_slot_is_fenced(client) -> None:  # type: ignore[no-untyped-def]
    keys = store(client, 2)
    lost = take(client, keys, "0", worker="dead@host")  # takes chunk 0, then its host is lost
    assert lost.index == 0
    assert scripts.requeue(client, keys, ["dead@host"]) == 1
    assert client.lrange(keys.pending, 0, -1) == [b"0", b"1"]  # back at the head
    assert client.sismember(keys.fenced, "0")
    again = take(client, keys, "7", worker="alive@host")  # a fresh slot takes it first
    assert again.index == 0 and again.tries == 2
    # the lost host comes back and reports chunk 0: counted once, whoever is first
    back = take(client, keys, "0", Report(0, b"late record"), worker="dead@host")
    assert back.accepted and back.index is None and back.pending == 0, "fenced: takes nothing"
    twin = take(client, keys, "7", Report(0, b"second record"), worker="alive@host")
    assert not twin.accepted and twin.index == 1
    assert client.lrange(keys.done, 0, -1) == [b"late record"]
    assert scripts.requeue(client, keys, ["dead@host"]) == 0  # nothing of it left


def test_requeue_skips_a_chunk_that_is_done(client) -> None:  # type: ignore[no-untyped-def]
    keys = store(client, 1)
    take(client, keys, "0", worker="w-dead")
    client.delete(keys.chunk(0))  # reported meanwhile by a twin
    scripts.requeue(client, keys, ["w-dead"])
    assert client.llen(keys.pending) == 0


def test_a_calls_open_state_and_an_abandoned_call(client) -> None:  # type: ignore[no-untyped-def]
    keys = store(client, 0)
    client.set(keys.open, 1, ex=10)
    assert take(client, keys, "0").pending == OPEN
    gone = store(client, 3, alive=False)
    got = take(client, gone, "0")
    assert got.index is None and got.pending == ABANDONED
    assert take(client, gone, "0", watch=False).index == 0  # embedded calls are not watched
    scripts.reap(client, gone)
    assert not left(client, gone)


def left(client, keys: CallKeys) -> set[str]:  # type: ignore[no-untyped-def]
    """The call's keys that exist."""
    return {k.decode() for k in client.keys(keys.base.replace("{", "[{]") + "*")}


def test_the_worker_registry(client) -> None:  # type: ignore[no-untyped-def]
    keys = QueueKeys(f"q-{uuid.uuid4().hex[:8]}")
    info = json.dumps({"concurrency": 2, "state": "up"})
    scripts.beat(client, keys, "a@h", info, keep=60)
    scripts.beat(client, keys, "b@h", info, keep=60)
    roll = scripts.roll(client, keys, grace=5)
    assert set(roll.alive) == {"a@h", "b@h"} and roll.dead == []
    client.zadd(keys.beats, {"b@h": time.time() - 10})  # b stopped beating 10 s ago
    roll = scripts.roll(client, keys, grace=5)
    assert set(roll.alive) == {"a@h"} and roll.dead == ["b@h"]
    scripts.beat(client, keys, "a@h", "", keep=60)  # a clean shutdown leaves the registry
    assert "a@h" not in scripts.roll(client, keys, grace=5).alive
    roll = scripts.roll(client, keys, grace=5, forget=1)
    assert roll.dead == [] and not client.exists(keys.info)


def test_every_key_a_calls_life_makes_is_one_the_reaper_deletes(client) -> None:  # type: ignore[no-untyped-def]
    """A named call's whole life through the scripts (and the driver's and workers' own
    writes) makes only keys ``CallKeys.all`` lists; ``reap`` deletes every one of them."""
    n = 4
    keys = store(client, n)
    client.hset(keys.meta, mapping={"label": "f", "keep": 3600})
    client.set(keys.open, 1, ex=30)
    client.rpush(keys.folds, b"fold")
    client.rpush(keys.output, b"batch")
    client.incrby(keys.output_bytes, 5)
    got = take(client, keys, "0", worker="w1#a")
    got = take(client, keys, "0", Report(got.index, b"record", parked=b"big"), worker="w1#a")
    take(client, keys, "1", worker="w2#b")
    assert scripts.requeue(client, keys, ["w2#b"]) == 1  # fenced, chunk back to pending
    while got.index is not None:
        got = take(client, keys, "2", Report(got.index, b"record", parked=b"part"))
    assert scripts.push_record(client, keys, REDUCED, b"reduced", b"value")
    made = left(client, keys)
    listed = set(keys.all(n))
    assert made <= listed, f"keys no CallKeys.all lists: {made - listed}"
    assert {keys.fenced, keys.records, keys.result(REDUCED), keys.result(1)} <= made
    scripts.reap(client, keys)
    assert not left(client, keys)


def test_reap_deletes_exactly_what_all_lists(client) -> None:  # type: ignore[no-untyped-def]
    keys = store(client, 3)
    listed = keys.all(3)
    client.mset({k: b"x" for k in listed if k != keys.count})  # every key, whatever its writer
    other = CallKeys(keys.call + "x")
    client.set(other.func, b"x", ex=30)  # another call's keys are left alone
    scripts.reap(client, keys)
    assert not left(client, keys) and client.exists(other.func)
    client.delete(other.func)


def _quoted(source: str) -> set[str]:
    """The string literals of a Lua source (its comments dropped)."""
    code = re.sub(r"--[^\n]*", "", source)
    return set(re.findall(r"'([^'\n]*)'", code)) | set(re.findall(r'"([^"\n]*)"', code))


@pytest.mark.parametrize("name", [*CALL_SCRIPTS, *REGISTRY_SCRIPTS])
def test_no_script_spells_a_key_name(name: str) -> None:
    """Every key comes through KEYS, bound by a preamble made from the one order."""
    source = {**CALL_SCRIPTS, **REGISTRY_SCRIPTS}[name]
    preamble, body = source.split("\n", 1)
    keys, queue = CallKeys("c"), QueueKeys("q")
    if name in CALL_SCRIPTS:
        order, given = CallKeys.SCRIPT_KEYS, keys.script_keys
        assert given == tuple(getattr(keys, field) for field in order)
    else:
        order, given = QueueKeys.WORKERS, queue.worker_keys
        assert given == tuple(getattr(queue, field) for field in order)
    slots = ", ".join(f"KEYS[{i + 1}]" for i in range(len(order)))
    assert preamble == f"local {', '.join(order)} = {slots}"
    suffixes = {k.removeprefix(keys.base).rstrip(":") for k in keys.script_keys}
    suffixes |= {k.removeprefix("celerynb:").split(":")[0] for k in (queue.beats, queue.info)}
    names = set(CallKeys.SCRIPT_KEYS) | set(QueueKeys.WORKERS) | suffixes
    spelled = {q for q in _quoted(body) if q.rstrip(":") in names or ":" in q}
    assert not spelled, f"key names spelled in Lua: {spelled}"
    assert "KEYS[" not in body and "celerynb" not in body


def test_a_calls_keys_share_one_hash_slot() -> None:
    keys = CallKeys(uuid.uuid4().hex)
    tags = {re.search(r"{(.*?)}", k).group(1) for k in (*keys.script_keys, *keys.all(3))}  # type: ignore[union-attr]
    assert tags == {keys.call}
