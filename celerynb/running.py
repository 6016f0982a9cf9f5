"""The number of the chunk a pool process runs now, for wrappers shipped with the job.

The worker sets it around ``func`` (:func:`chunk`); a wrapper that needs to know
which chunk it handles (``to=`` names each chunk's file by it) reads it with
:func:`chunk_number`. Chunk numbers are positions in the call's join order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_CHUNK: ContextVar[int] = ContextVar("celerynb_chunk")


@contextmanager
def chunk(index: int) -> Iterator[None]:
    """Chunk ``index`` runs in this process until the block ends."""
    token = _CHUNK.set(index)
    try:
        yield
    finally:
        _CHUNK.reset(token)


def chunk_number() -> int:
    """The number of the chunk running in this process; RuntimeError outside a chunk."""
    try:
        return _CHUNK.get()
    except LookupError:
        raise RuntimeError(
            "no chunk runs in this process: chunk_number() is for code that a worker runs "
            "on a chunk of a call"
        ) from None
