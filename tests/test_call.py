"""The call state machine, the planners, the options and the records, without Redis.

Pure logic: no cluster, no worker, no store; fast, many cases (hypothesis).
"""

from __future__ import annotations

import concurrent.futures
import threading
import time

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from celerynb import CallTimeout, CancelledError, CelerynbError, ChunkError
from celerynb.call import Call, CallState, finished_call
from celerynb.errors import RemoteFailure
from celerynb.options import CallOptions, signature
from celerynb.plane import INLINE, RedisPlane, codec
from celerynb.plane.keys import REDUCED, CallKeys
from celerynb.plane.records import Location, Record, RunMeta, Status
from celerynb.planning import (
    CHUNKS_PER_WORKER,
    MAX_CHUNK_BYTES,
    TARGET_CHUNK_SECONDS,
    AdaptivePlanner,
    RangePlan,
    make_plan,
    n_chunks_for,
)


def ok(index: int, value: object, seconds: float = 0.01, worker: str = "w1") -> Record:
    return Record(index, Status.OK, value, meta=RunMeta(worker, 1, seconds))


def failed(index: int, message: str = "boom") -> Record:
    failure = RemoteFailure("ValueError", message, "Traceback...\n", ValueError(message), "w2")
    return Record(index, Status.ERROR, failure, meta=RunMeta("w2", 2, 0.0))


def even_call(n_items: int = 10, n_chunks: int = 5, **kwargs: object) -> Call:
    return Call(RangePlan.even((list(range(n_items)),), n_chunks), **kwargs)  # type: ignore[arg-type]


# -- Call ----------------------------------------------------------------------------------------
def test_records_in_any_order_join_in_chunk_order() -> None:
    call = even_call(10, 5)
    plan = call.plan
    parts = {i: list(range(*plan.bounds[i])) for i in range(5)}  # type: ignore[attr-defined]
    for i in (3, 0, 4):
        reaction = call.receive([ok(i, parts[i])], busy=2)
        assert not reaction.ended and not reaction.store
    assert call.state is CallState.RUNNING and call.busy == 2
    assert call.snapshot().chunks_done == 3 and call.snapshot().items_done == 6
    reaction = call.receive([ok(1, parts[1]), ok(2, parts[2])])
    assert reaction.ended and call.state is CallState.FINISHED
    assert call.wait(0) and call.value() == list(range(10))
    assert [r.worker for r in call.runs if r] == ["w1"] * 5


def test_a_redelivered_chunk_counts_once() -> None:
    call = even_call(4, 2)
    call.receive([ok(0, [0, 1]), ok(0, ["twin"])])
    assert call.snapshot().chunks_done == 1
    call.receive([ok(1, [2, 3])])
    assert call.value() == [0, 1, 2, 3]


def test_a_failed_chunk_ends_the_call_with_a_chunk_error() -> None:
    call = even_call(10, 5, funcs=(len,))
    ended: list[CallState] = []
    call.on_end(lambda c: ended.append(c.state))
    reaction = call.receive([ok(0, [0, 1]), failed(2), ok(3, [6, 7])])
    assert reaction.ended and ended == [CallState.FAILED]
    assert call.snapshot().chunks_done == 1  # nothing after the failure is taken
    with pytest.raises(ChunkError, match=r"chunk 2 of 5 \(positions 4:6\) failed on worker w2"):
        call.value()
    assert isinstance(call.error, ValueError)
    assert not call.receive([ok(1, [2, 3])]).ended  # late records change nothing
    assert call.snapshot().message.startswith("chunk 2 of 5")


def test_cancel_once_and_callbacks_run_once() -> None:
    call = even_call()
    seen: list[str] = []
    call.on_end(lambda c: seen.append("a"))
    assert call.cancel("stop") and not call.cancel("again")
    assert call.state is CallState.CANCELLED and seen == ["a"]
    call.on_end(lambda c: seen.append("late"))  # after the end: at once
    assert seen == ["a", "late"]
    with pytest.raises(CancelledError, match=r"stop \(0 of 5 chunks done\)"):
        call.value()


def test_deadline_times_the_call_out() -> None:
    call = even_call(timeout=5.0)
    assert not call.check_deadline(call.started + 4.9)
    assert call.check_deadline(call.started + 5.0)
    assert call.state is CallState.TIMED_OUT
    with pytest.raises(TimeoutError, match=r"timeout=5\.0 s"):
        call.value()
    assert not call.check_deadline(call.started + 10)


def test_timeouts_are_celerynb_errors_and_timeout_errors() -> None:
    """``except TimeoutError`` (as with concurrent.futures) and ``except CelerynbError``
    both catch the call's own timeout and a wait's."""
    call = even_call(timeout=5.0)
    call.check_deadline(call.started + 5.0)
    assert isinstance(call.error, CallTimeout)
    assert isinstance(call.error, TimeoutError) and isinstance(call.error, CelerynbError)
    assert issubclass(CallTimeout, concurrent.futures.TimeoutError)
    waiting = even_call(4, 2)
    with pytest.raises(CallTimeout, match="runs on"):
        list(waiting.stream(False, 0.05))


def test_reduce_call_waits_for_the_reducer() -> None:
    call = even_call(4, 2, keep=True)
    stored = [Record(i, Status.STORED, None, Location.KEY) for i in (1, 0)]
    reaction = call.receive(stored)
    assert reaction.reduce and not reaction.ended and call.state is CallState.RUNNING
    assert call.receive([ok(REDUCED, 42)]).ended
    assert call.value() == 42


def test_adaptive_call_plans_the_rest_from_the_first_probe() -> None:
    planner = AdaptivePlanner(n_items=10_000, workers=2, size=0)
    inputs = (list(range(10_000)),)
    call = Call(planner.probes(inputs), planner)
    assert call.n_chunks == 2 and not call.planned
    reaction = call.receive([ok(0, list(range(156)), seconds=0.156)])  # 1 ms per item
    assert call.planned and reaction.store == range(2, call.n_chunks)
    plan = call.plan
    assert isinstance(plan, RangePlan) and plan.covered == 10_000
    sizes = [plan.items(i) for i in range(2, call.n_chunks)]
    assert min(sizes[:-1]) >= TARGET_CHUNK_SECONDS / 0.001 and sizes == sorted(sizes, reverse=True)
    assert not call.receive([ok(1, [])]).store  # planned once


def test_stream_yields_each_chunk_once_then_result_drops_the_parts() -> None:
    call = even_call(6, 3)

    def feed() -> None:
        for i in (2, 0, 1):
            time.sleep(0.02)
            call.receive([ok(i, [i])])

    threading.Thread(target=feed).start()
    assert [i for i, _ in call.stream(ordered=False, timeout=5)] == [2, 0, 1]
    assert [i for i, _ in call.stream(ordered=True, timeout=5)] == [0, 1, 2]
    assert call.value() == [0, 1, 2]
    with pytest.raises(RuntimeError, match="already joined"):
        list(call.stream(ordered=False, timeout=1))


def test_stream_times_out_without_records() -> None:
    call = even_call()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        list(call.stream(ordered=False, timeout=0.2))
    assert 0.15 < time.monotonic() - started < 2


def test_a_finished_empty_call() -> None:
    call = finished_call([], label="cmap(f)")
    assert call.state is CallState.FINISHED and call.wait(0) and call.value() == []
    assert call.n_chunks == 0 and call.snapshot().label == "cmap(f)"


@settings(max_examples=60, deadline=None)
@given(
    n_items=st.integers(1, 300),
    n_chunks=st.integers(1, 40),
    order=st.randoms(use_true_random=False),
    duplicates=st.integers(0, 5),
)
def test_any_arrival_order_gives_the_serial_result(
    n_items: int, n_chunks: int, order: object, duplicates: int
) -> None:
    data = list(range(n_items))
    plan = RangePlan.even((data,), n_chunks_for(n_items, 1, 0, n_chunks))
    call = Call(plan)
    records = [ok(i, plan.take(i)) for i in range(len(plan))]
    records += records[:duplicates]  # redeliveries
    order.shuffle(records)  # type: ignore[attr-defined]
    for start in range(0, len(records), 3):
        call.receive(records[start : start + 3])
    assert call.state is CallState.FINISHED and call.value() == data


# -- planning ------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(1, 10**7),
    workers=st.integers(1, 64),
    size=st.integers(0, 2**34),
    chunks=st.none() | st.integers(1, 10**5),
    chunk_size=st.none() | st.integers(1, 10**6),
)
def test_fixed_rule(
    n_items: int, workers: int, size: int, chunks: int | None, chunk_size: int | None
) -> None:
    if chunks is not None and chunk_size is not None:
        with pytest.raises(ValueError, match="not both"):
            n_chunks_for(n_items, workers, size, chunks, chunk_size)
        return
    n = n_chunks_for(n_items, workers, size, chunks, chunk_size)
    assert 1 <= n <= n_items
    if chunks is None and chunk_size is None:
        assert n == min(n_items, max(CHUNKS_PER_WORKER * workers, -(-size // MAX_CHUNK_BYTES)))


@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(1, 5000),
    n_chunks=st.integers(1, 100),
)
def test_even_plans_cover_every_item_once(n_items: int, n_chunks: int) -> None:
    n_chunks = min(n_chunks, n_items)
    plan = RangePlan.even((np.arange(n_items),), n_chunks)
    assert len(plan) == n_chunks
    sizes = [plan.items(i) for i in range(n_chunks)]
    assert sum(sizes) == n_items and max(sizes) - min(sizes) <= 1
    assert np.array_equal(
        np.concatenate([plan.take(i) for i in range(n_chunks)]), np.arange(n_items)
    )


@settings(max_examples=200, deadline=None)
@given(
    n_items=st.integers(64, 10**7),
    workers=st.integers(1, 32),
    size=st.integers(0, 2**33),
    per_item=st.floats(1e-9, 1.0),
)
def test_adaptive_rule(n_items: int, workers: int, size: int, per_item: float) -> None:
    planner = AdaptivePlanner(n_items, workers, size)
    probes = planner.probes((range(n_items),))
    assert len(probes) == workers and probes.covered <= n_items
    sizes = planner.rest(probes.covered, per_item)
    assert sum(sizes) == n_items - probes.covered and all(s >= 1 for s in sizes)
    if size:  # no chunk over 64 MiB (unless one item is)
        assert max(sizes, default=0) <= max(1, n_items * MAX_CHUNK_BYTES // size)


def test_make_plan_picks_the_rule() -> None:
    big = (list(range(10_000)),)
    _, planner = make_plan(big, workers=2, size=0, chunks=None, chunk_size=None, fixed=False)
    assert planner is not None
    plan, planner = make_plan(big, workers=2, size=0, chunks=None, chunk_size=None, fixed=True)
    assert planner is None and len(plan) == 8
    plan, planner = make_plan(big, workers=2, size=0, chunks=3, chunk_size=None, fixed=False)
    assert planner is None and len(plan) == 3
    # a small input (under 64 items per worker): one chunk per worker (was 4 per worker,
    # eight chunks of one or two rows for 10 rows: 10 ms for a tiny call)
    small = (list(range(10)),)
    plan, planner = make_plan(small, workers=2, size=0, chunks=None, chunk_size=None, fixed=False)
    assert planner is None and len(plan) == 2
    assert len(make_plan(small, 20, 0, None, None, False)[0]) == 10  # never more than items
    assert len(make_plan((list(range(127)),), 2, 0, None, None, True)[0]) == 2
    assert len(make_plan((list(range(128)),), 2, 0, None, None, True)[0]) == 8
    frame = pd.DataFrame({"k": [1, 1, 2, 3], "v": range(4)})
    plan, planner = make_plan((frame.groupby("k"),), 2, 0, None, None, False)
    assert planner is None and len(plan) == 3


def test_chunk_info_names_positions_and_labels() -> None:
    frame = pd.DataFrame({"v": range(6)}, index=list("abcdef"))
    plan = RangePlan.even((frame,), 3)
    assert plan.info(1).describe() == "chunk 1 of 3 (positions 2:4, index 'c' .. 'd')"
    assert RangePlan.even((list(range(6)),), 3).info(2).describe() == "chunk 2 of 3 (positions 4:6)"


# -- options -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "given_, error, match",
    [
        ({"chunksize": 3}, TypeError, "unexpected keyword argument 'chunksize' .*chunk_size"),
        ({"chunks": 0}, ValueError, "chunks must be a positive int"),
        ({"chunks": 2.5}, TypeError, "chunks must be a positive int"),
        ({"chunks": 2, "chunk_size": 3}, ValueError, "not both"),
        ({"timeout": -1}, ValueError, "timeout must be a positive number"),
        ({"chunk_timeout": True}, ValueError, "chunk_timeout must be a positive number"),
        ({"retries": -1}, ValueError, "retries must be an int >= 0"),
        ({"attempts": 0}, ValueError, "attempts must be an int >= 1"),
        ({"progress": "bar"}, ValueError, "progress must be one of"),
        ({"progress": 1}, ValueError, "progress must be one of"),
        ({"args": 3}, TypeError, "args= must be a tuple"),
        ({"reduce": 3}, TypeError, "reduce must be callable"),
    ],
)
def test_bad_options_name_the_problem(given_: dict[str, object], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        CallOptions.make(**given_)


def test_options_defaults_and_signature() -> None:
    opts = CallOptions.make(args=[1], kwargs=None)
    assert opts.args == (1,) and opts.kwargs == {} and opts.attempts == 3 and opts.progress is True
    slot = opts.slot(zipped=True, shm=False)
    assert slot.zipped and not slot.one and not slot.keep
    assert CallOptions.make(chunk_timeout=2).slot(False, False).one
    params = signature("Any").parameters
    assert list(params)[:4] == ["func", "data", "more", "cluster"]
    assert params["attempts"].default == 3 and params["progress"].default is True


# -- records on the plane (placement needs no Redis for inline values) --------------------------
def test_records_inline_or_parked() -> None:
    plane = RedisPlane(None, "s3cret", max_payload=2**20)  # type: ignore[arg-type]
    keys = CallKeys("c1")
    blob, parked = plane.place(keys, ok(0, [1, 2, 3]))
    assert parked == b"" and len(blob) <= INLINE
    assert codec.loads("s3cret", blob) == ok(0, [1, 2, 3])
    big = np.zeros(INLINE)
    blob, parked = plane.place(keys, ok(1, big))
    record = codec.loads("s3cret", blob)
    assert record.location is Location.KEY and record.value is None
    assert np.array_equal(codec.loads("s3cret", parked), big)
    blob, parked = plane.place(keys, Record(2, Status.STORED, [1], meta=RunMeta()))
    assert codec.loads("s3cret", blob).location is Location.KEY and parked  # reduce parts: apart


def test_an_unpicklable_result_becomes_a_failure_record() -> None:
    plane = RedisPlane(None, "s3cret", max_payload=2**20)  # type: ignore[arg-type]
    blob, parked = plane.place(CallKeys("c1"), ok(0, threading.Lock()))
    record = codec.loads("s3cret", blob)
    assert record.status is Status.ERROR and parked == b""
    assert "cannot be pickled to send it back" in record.failure.message
    assert isinstance(record.failure.exception, TypeError)
