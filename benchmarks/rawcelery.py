"""A minimal raw Celery app: chunk bytes inside task messages, results via the backend.

This is what a user would write without celerynb: one task that calls a
function on the chunk it receives, pickle as the serializer, Redis as broker
and result backend. Workers run ``celery -A benchmarks.rawcelery worker``
with ``BENCH_RAW_URL`` set (see :func:`benchmarks.procs.start_raw_celery`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery

ENV_URL = "BENCH_RAW_URL"


def make_app(url: str) -> Celery:
    """The raw app on broker and backend ``url`` (pickle everywhere)."""
    app = Celery("bench_raw", broker=url, backend=url)
    app.conf.update(
        task_serializer="pickle",
        result_serializer="pickle",
        accept_content=["pickle"],
        result_accept_content=["pickle"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name="bench.run")(run)
    return app


def run(func: Callable[[Any], Any], chunk: Any) -> Any:
    """The one task: ``func(chunk)`` (``func`` travels pickled by reference)."""
    return func(chunk)


# a placeholder URL (port 1) when imported without BENCH_RAW_URL: never the machine's Redis
app = make_app(os.environ.get(ENV_URL, "redis://127.0.0.1:1/0"))
