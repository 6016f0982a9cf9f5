"""Celery publishing and revoking: the only place a driver sends Celery messages."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from celery import Celery

from . import celery_compat
from .options import SlotOptions
from .plane.keys import REDUCED, CallKeys
from .settings import REDUCE, RUN_CHUNKS

CANCEL_GRACE_S = 5.0  # seconds a revoked task has to stop before its pool process is killed


def limits(opts: SlotOptions) -> dict[str, float]:
    """Celery's per-message time limits for ``chunk_timeout`` (soft, then hard 10 s later)."""
    timeout = opts.chunk_timeout
    return {"soft_time_limit": timeout, "time_limit": timeout + 10} if timeout else {}


def argsrepr(call: str, slot: str, opts: SlotOptions) -> str:
    """How a draining task shows in monitoring (celery events, Flower): its call and slot."""
    return f"({opts.label} {call[:8]}, slot {slot})"


def publish_slots(
    app: Celery,
    queue: str,
    keys: CallKeys,
    slots: Iterable[str],
    opts: SlotOptions,
    spares: Iterable[str] = (),
) -> None:
    """Send one draining task per slot (and per spare: it waits for a joining worker)."""
    with app.producer_or_acquire() as producer, celery_compat.batched(producer):
        for slot, spare in [*((s, False) for s in slots), *((s, True) for s in spares)]:
            app.send_task(
                RUN_CHUNKS,
                args=(keys.call, slot, opts),
                kwargs={"spare": spare} if spare else None,
                task_id=keys.slot_task(slot),
                queue=queue,
                ignore_result=True,
                producer=producer,
                argsrepr=argsrepr(keys.call, slot, opts),  # not Celery's slow saferepr
                kwargsrepr="{}",
                **limits(opts),
            )


def publish_reduce(
    app: Celery, queue: str, keys: CallKeys, parts: list[int], shm: bool, out: int = REDUCED
) -> None:
    """Send a reduce task over stored ``parts`` (the call's result, or partial ``out``)."""
    app.send_task(
        REDUCE,
        args=(keys.call, parts, shm, out),
        task_id=keys.reduce_task if out == REDUCED else f"{keys.reduce_task}{out}",
        queue=queue,
        ignore_result=True,
        argsrepr=f"(call={keys.call[:8]}, {len(parts)} parts, into {out})",
        kwargsrepr="{}",
    )


def revoke(app: Celery, task_ids: list[str]) -> list[str]:
    """Stop the running tasks ``task_ids`` without killing their pool processes.

    Their pool processes get billiard's soft-timeout signal (``SOFT_STOP``): func is
    interrupted by ``SoftTimeLimitExceeded``, the draining task sees its chunk is no
    longer wanted and returns, so its message is acked and the process takes the next
    one at once (a killed process would be replaced first, and its message would hold
    a prefetch slot until Celery counted it lost). A process still running the task
    ``CANCEL_GRACE_S`` later (func caught the exception, or runs in native code) is
    killed by its worker (``worker._soft_stopped``). Returns the backend keys Celery
    writes for revoked tasks, to delete later.
    """
    if not task_ids:
        return []
    with contextlib.suppress(Exception):  # the broker may be gone; the keys expire anyway
        app.control.revoke(task_ids, terminate=True, signal=celery_compat.SOFT_STOP)
    return celery_compat.task_meta_keys(task_ids)
