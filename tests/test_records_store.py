"""The store's records round-trip through their one encoding (no Redis needed); the store's
own commands on a real redis-server."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import celerynb
from celerynb.errors import SignatureError
from celerynb.options import SlotOptions
from celerynb.plane.keys import CallKeys, wake_key
from celerynb.plane.records import CallMeta, OutputBatch, OutputLine
from celerynb.plane.store import CallStore, PollReply, PollRequest

SECRET = "s3cret"
text = st.text(max_size=30)
seconds = st.floats(min_value=0, max_value=4e9, allow_nan=False)
slots = st.builds(
    SlotOptions,
    attempts=st.integers(1, 9),
    retries=st.integers(0, 9),
    chunk_timeout=st.none() | st.floats(0.1, 1e4, allow_nan=False),
    zipped=st.booleans(),
    shm=st.booleans(),
    one=st.booleans(),
    keep=st.booleans(),
    watch=st.booleans(),
    output=st.booleans(),
    output_bytes=st.integers(0, 2**30),
    log_level=st.integers(0, 50),
    label=text,
)
bounds = st.lists(st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)), max_size=20)
metas = st.builds(
    CallMeta,
    label=text,
    started=seconds,
    state=st.sampled_from(["running", "finished", "failed", "cancelled", "timed out"]),
    name=st.none() | text,
    fingerprint=st.none() | text,
    keep=st.none() | st.integers(0, 10**9),
    slot=st.none() | slots,
    bounds=st.none() | bounds.map(tuple),
    reduce=st.none() | st.booleans(),
    n_chunks=st.none() | st.integers(1, 10**6),
    error=st.none() | text,
    ended=st.none() | seconds,
)


def _as_redis(fields: dict[str, str]) -> dict[bytes | str, bytes | str]:
    """A hash as redis-py returns it: bytes keys and values."""
    return {k.encode(): v.encode() for k, v in fields.items()}


@given(metas)
def test_call_meta_round_trips_through_its_hash(meta: CallMeta) -> None:
    fields = meta.to_fields()
    assert all(isinstance(v, str) for v in fields.values())
    assert CallMeta.from_fields(_as_redis(fields)) == meta


@given(metas)
def test_call_meta_writes_only_what_it_has(meta: CallMeta) -> None:
    fields = meta.to_fields()
    assert {"label", "started", "state"} <= set(fields)
    assert ("keep" in fields) == (meta.keep is not None)  # the scripts' sign of a named call
    if meta.keep is not None:
        assert fields["keep"] == str(meta.keep)  # seconds, an integer string
    assert set(meta.to_fields("state", "error")) == {"state"} | (
        {"error"} if meta.error is not None else set()
    )


def test_call_meta_of_an_unnamed_call_is_three_fields() -> None:
    meta = CallMeta("cmap(f)", 1700000000.5, "running")
    assert meta.to_fields() == {"label": "cmap(f)", "started": "1700000000.5", "state": "running"}
    assert CallMeta.from_fields({}) == CallMeta()


lines = st.builds(
    OutputLine,
    stream=st.sampled_from(["stdout", "stderr", "log", "warning"]),
    text=st.text(max_size=50),
    count=st.integers(1, 1000),
)
batches = st.builds(
    OutputBatch,
    chunk=st.integers(-(2**31), 2**31),
    worker=text,
    lines=st.lists(lines, max_size=10).map(tuple),
    dropped=st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)),
)


@given(batches)
def test_output_batch_round_trips_signed(batch: OutputBatch) -> None:
    assert OutputBatch.decode(SECRET, batch.encode(SECRET)) == batch


def test_output_batch_from_another_secret_is_refused() -> None:
    blob = OutputBatch(0, "w@h", (OutputLine("stdout", "hi"),)).encode(SECRET)
    with pytest.raises(SignatureError):
        OutputBatch.decode("other", blob)


# -- the store on a real redis-server (the session's embedded one) --------------------------------
def _store(cluster: celerynb.LocalCluster) -> CallStore:
    """A store of its own queue on the cluster's Redis (no worker takes anything of it)."""
    c = cluster.store
    return CallStore(c.redis, c.secret, f"test-{uuid.uuid4().hex}", c.plane, c.tuning)


def test_one_poll_routes_each_call_its_records_and_output(cluster: celerynb.LocalCluster) -> None:
    store = _store(cluster)
    a, b = CallKeys(uuid.uuid4().hex), CallKeys(uuid.uuid4().hex)
    batch = store.batch(a)
    batch.keep_alive(30)
    batch.execute()
    store.redis.rpush(b.done, b"b1", b"b2")
    store.redis.hset(b.running, "3", "0")
    out = OutputBatch(3, "w@h", (OutputLine("stdout", "hi"),))
    store.redis.rpush(b.output, out.encode(store.secret))
    requests = [PollRequest(a, 30, True, False), PollRequest(b, 30, False, True)]
    ra, rb = store.poll(requests, wake_key(uuid.uuid4().hex), 0.05)
    assert ra == PollReply(True, [], 0, [], 0)
    assert not rb.alive and rb.records == [b"b1", b"b2"] and rb.running == 1 and rb.kept == 0
    assert store.outputs(rb.output) == [out]
    store.delete_call(a, 0)
    store.delete_call(b, 0)


def test_a_named_call_is_registered_found_finished_and_dropped(
    cluster: celerynb.LocalCluster,
) -> None:
    store = _store(cluster)
    keys = CallKeys(uuid.uuid4().hex)
    meta = CallMeta("cmap(f)", time.time(), name="n1", fingerprint="fp", keep=60, bounds=((0, 2),))
    batch = store.batch(keys)
    batch.describe(meta)
    batch.count(1)
    batch.execute()
    store.update(keys, replace(meta, n_chunks=1), "n_chunks")
    assert store.lookup("n1") == (keys.call, replace(meta, n_chunks=1))
    assert store.redis.hget(keys.meta, "keep") == b"60"  # what the scripts read
    [listed] = store.listed()
    assert (listed.id, listed.n_chunks, listed.done) == (keys.call, 1, 0)
    store.finish(keys, CallMeta(state="failed", error="boom", ended=1.0), 1, keep=60)
    found = store.meta(keys.call)
    assert found is not None and (found.state, found.error, found.name) == ("failed", "boom", "n1")
    store.drop(keys.call, "n1")
    assert store.lookup("n1") is None and store.listed() == []
    assert not store.redis.exists(keys.meta, keys.count)
    store.redis.delete(store.queue_keys.calls, store.queue_keys.names)
