"""Plans known by their chunks' bounds alone: each chunk's items and ``ChunkInfo``."""

from __future__ import annotations

from .errors import ChunkInfo


class Spans:
    """A plan whose chunk ``i`` covers items ``bounds[i]`` (start, stop), counted in
    ``unit`` (default ``ChunkInfo``'s, positions)."""

    unit: str = ChunkInfo.unit

    def __init__(self, bounds: list[tuple[int, int]]) -> None:
        self.bounds = bounds

    @property
    def n_items(self) -> int:
        return self.bounds[-1][1] if self.bounds else 0

    def __len__(self) -> int:
        return len(self.bounds)

    def items(self, index: int) -> int:
        start, stop = self.bounds[index]
        return stop - start

    def info(self, index: int) -> ChunkInfo:
        start, stop = self.bounds[index]
        return ChunkInfo(index, len(self), start, stop, unit=self.unit)
