"""Every Celery, kombu and billiard internal that celerynb relies on, in one place.

If a new Celery release moves one of these, this module is the one to change.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from celery.backends.redis import RedisBackend

if TYPE_CHECKING:
    from celery import Celery

#: kombu's Redis transport: the hash and sorted set of delivered, unacked messages
UNACKED_KEYS = ("unacked", "unacked_index")
#: kombu's Redis transport keeps one list per priority step: name + sep + step
_PRIORITY_STEPS = (3, 6, 9)
_PRIORITY_SEP = "\x06\x16"
#: where Celery's Redis backend keeps a task's state
TASK_META_PREFIX = "celery-task-meta-"
#: Redis keys of a kombu queue besides the queue list itself
BINDING_KEYS = ("_kombu.binding.{q}", "_kombu.binding_permanent.{q}", "_kombu.binding.{q}.pidbox")


class DriverBackend(RedisBackend):  # type: ignore[misc]
    """The driver's result backend: Celery's Redis backend minus result waiting.

    A driver reads chunk results from the data plane, never through Celery's
    result machinery, so it needs no per-task pubsub subscriptions.
    """

    def __init__(self, app: Celery, url: str | None = None, **kwargs: object) -> None:
        super().__init__(app=app, url=url or app.conf.result_backend, **kwargs)

    def on_task_call(self, producer: object, task_id: str) -> None:
        pass

    def add_pending_result(self, result: object, *args: object, **kwargs: object) -> object:
        return result

    def remove_pending_result(self, result: object) -> object:
        return result


def transport_options(embedded: bool) -> dict[str, object]:
    """kombu transport options: kombu's emulated acks cost the worker a Redis client per
    message; an embedded cluster re-publishes the chunks of a dead worker itself."""
    return {"visibility_timeout": 3600, "ack_emulation": not embedded}


def queue_lists(queue: str) -> list[str]:
    """The Redis lists that hold a kombu queue's messages (one per priority step)."""
    return [queue] + [f"{queue}{_PRIORITY_SEP}{p}" for p in _PRIORITY_STEPS]


def task_meta_keys(task_ids: Iterable[str]) -> list[str]:
    return [TASK_META_PREFIX + t for t in task_ids]


@contextlib.contextmanager
def batched(producer: Any) -> Iterator[None]:
    """kombu's batched publishing (one round trip per 1000 messages) where available."""
    batch = getattr(producer, "batch", None)
    if batch is None:
        yield
        return
    with batch(max_size=1000):
        yield


SOFT_STOP = "SIGUSR1"  # billiard's soft time limit signal: SoftTimeLimitExceeded in the task


def running_job(pool: Any, task_id: str) -> tuple[Any, int] | None:
    """The billiard job running ``task_id`` in Celery's TaskPool ``pool``, and the pid
    of the pool process that runs it (None: it runs nowhere now)."""
    for job in list(getattr(getattr(pool, "_pool", None), "_cache", {}).values()):
        if getattr(job, "correlation_id", None) == task_id:
            pid = getattr(job, "_worker_pid", None)
            return (job, pid) if isinstance(pid, int) else None
    return None


def forget_soft_stop(pool: Any, pid: int) -> None:
    """After a revoke with ``SOFT_STOP``, billiard still marks the signalled pool process
    as terminated by us (``_job_terminated``), though it lives on: were it to die later
    running another task, that task would be taken for revoked and acked, not
    redelivered. Clear the marks of pool process ``pid``."""
    for proc in list(getattr(getattr(pool, "_pool", None), "_pool", None) or []):
        if getattr(proc, "pid", None) == pid:
            proc._job_terminated = False
            proc._controlled_termination = False


def kill_if_running(job: Any, pid: int) -> None:
    """SIGKILL pool process ``pid`` if it still runs billiard ``job``."""
    if not job.ready() and getattr(job, "_worker_pid", None) == pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def terminating() -> bool:
    """Whether billiard's terminate handler fired (a revoke or shutdown, not func)."""
    try:
        from billiard.common import terminate_handler_fired
    except ImportError:  # older billiard: treat every SystemExit as a shutdown
        return True
    return bool(terminate_handler_fired())


def delivery_queue(request: Any, default: str) -> str:
    """The queue a task's message came from (to hand the task on to the same queue)."""
    info = getattr(request, "delivery_info", None) or {}
    return str(info.get("routing_key") or default)
