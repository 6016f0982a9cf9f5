"""``overlap=``: chunks that carry the rows before them, for functions over windows of rows.

``cmap(lambda c: c.rolling(4).mean(), s, overlap=3)`` equals
``s.rolling(4).mean()``: each chunk also gets the ``overlap`` items before it
(fewer at the start of the data), ``func`` runs on all of them, and the first
rows of its result (those of the carried items) are dropped on the worker.
``func`` must return one row (item) per row it got, as window functions do.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import cast

from .inputs import rows


@dataclass(frozen=True)
class Carried:
    """A chunk (one input's slice, or a tuple of slices of several inputs) whose first
    ``skip`` items belong to the chunk before it."""

    data: object
    skip: int


@dataclass(frozen=True)
class Overlap:
    """What the workers call on a :class:`Carried` chunk: ``func`` on all of it, then the
    carried items' rows dropped from the result."""

    func: Callable[..., object]
    overlap: int
    zipped: bool  # several inputs: ``data`` is a tuple of their slices

    def __call__(self, chunk: Carried, *args: object, **kwargs: object) -> object:
        inputs = cast("tuple[Sized, ...]", chunk.data if self.zipped else (chunk.data,))
        result = self.func(*inputs, *args, **kwargs)
        rows = len(inputs[0])
        try:
            returned = len(cast("Sized", result))
        except TypeError:
            returned = -1
        if returned != rows:
            what = f"{returned} rows" if returned >= 0 else f"a {type(result).__name__}"
            raise ValueError(
                f"with overlap={self.overlap}, func must return one row per row it gets "
                "(as rolling windows do), so that the rows of the items carried from the "
                f"chunk before can be dropped; it returned {what} for {rows} rows. Drop "
                "overlap= for a func that changes the number of rows"
            )
        return drop_first(result, chunk.skip)


def drop_first(result: object, skip: int) -> object:
    """``result`` without its first ``skip`` rows (by position)."""
    return rows(result, skip) if skip else result
