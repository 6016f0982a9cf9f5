"""What the workers call for the Executor: ``fn`` applied to each item's arguments.

A chunk of an Executor's call is a list of items, each the positional and
keyword arguments of one call of ``fn``. :class:`Apply` (shipped with the job,
as ``windows.Overlap`` is) returns their results in order. With ``each=True``
(``Executor.map``) an item's exception is kept as a :class:`Failed` in its
place, so the other items' results still come back and the driver raises it
at that item's position, as ``concurrent.futures`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import RemoteFailure, failure_of

#: one item: ``fn``'s positional and keyword arguments
Item = tuple[Sequence[Any], Mapping[str, Any]]


@dataclass(frozen=True)
class Failed:
    """An item whose call of ``fn`` raised: the worker's description of its exception."""

    failure: RemoteFailure


@dataclass(frozen=True)
class Apply:
    """``fn(*args, **kwargs)`` for each item of a chunk; a list of results in item order."""

    fn: Callable[..., Any]
    each: bool = False  # an item's exception is its result (a Failed), not the chunk's

    @property
    def __name__(self) -> str:  # the call's label names fn, not this wrapper
        return getattr(self.fn, "__name__", type(self.fn).__name__)

    def __call__(self, chunk: Sequence[Item]) -> list[Any]:
        if not self.each:
            return [self.fn(*args, **kwargs) for args, kwargs in chunk]
        results: list[Any] = []
        for args, kwargs in chunk:
            try:
                results.append(self.fn(*args, **kwargs))
            except Exception as exc:
                results.append(Failed(failure_of(exc, "")))
        return results
