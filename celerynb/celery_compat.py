"""Every Celery, kombu and billiard internal that celerynb relies on, in one place.

If a new Celery release moves one of these, this module is the one to change.
"""

from __future__ import annotations

import contextlib
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
