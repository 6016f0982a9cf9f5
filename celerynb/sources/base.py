"""What every source shares: its files, its parts, the plan that hands the parts out as
chunks, the wrapper that reads a part on the worker, and the join in file order.

A source is sized and lazy: the notebook lists the files and reads a little
metadata (a head, Parquet footers), never the data. Chunk ``i`` of its plan
is a small descriptor of one part (a file's byte range, or its row groups);
:class:`ReadPart`, shipped with the job, opens and parses the part on the
worker (with the source's :class:`Reader`, which carries the header, dtypes,
options and ``storage_options``) and calls ``func`` on the frame.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..inputs import pandas
from ..join import join
from ..spans import Spans

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem

DEFAULT_BLOCKSIZE = "64MB"  # bytes of a CSV / JSON part, or of a Parquet part's row groups
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def fsspec_module() -> Any:
    """fsspec, imported when a source is first made or read."""
    import fsspec

    return fsspec


def parse_blocksize(blocksize: int | str | None) -> int | None:
    """``blocksize`` in bytes: an int, a string such as ``"64MB"`` / ``"1 GiB"``, or None."""
    if blocksize is None:
        return None
    if isinstance(blocksize, str):
        found = re.fullmatch(r"\s*([\d.]+)\s*([a-zA-Z]*)\s*", blocksize)
        unit = found.group(2).lower() if found else ""
        if found is None or unit not in _UNITS:
            raise ValueError(
                f"blocksize={blocksize!r} is not a size: pass bytes (an int) or a string "
                "such as '64MB' or '256MiB', or None for one part per file"
            )
        blocksize = int(float(found.group(1)) * _UNITS[unit])
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive number of bytes or None, got {blocksize!r}")
    return blocksize


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class File:
    """One file of a source: its URL (a local path is absolute) and size in bytes (-1: the
    server did not say)."""

    url: str
    size: int


def list_files(
    urlpath: str | Sequence[str] | object,
    storage_options: dict[str, Any] | None,
    suffixes: tuple[str, ...] = (),
) -> tuple[AbstractFileSystem, list[File]]:
    """The files ``urlpath`` names (a path, a glob, a directory or a list of them), in order:
    a glob's and a directory's matches sorted, a list's as given."""
    fsspec = fsspec_module()
    paths = [urlpath] if isinstance(urlpath, str) or not isinstance(urlpath, Sequence) else urlpath
    paths = [str(p) for p in paths]  # (os.PathLike too)
    if not paths:
        raise ValueError("urlpath is an empty list: pass a path, a glob or a list of paths")
    fs, _, _ = fsspec.core.get_fs_token_paths(paths[0], storage_options=storage_options or {})
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    web = bool({"http", "https"} & set(protocols))  # no globs, no folders (only pages)
    found: list[str] = []
    for path in paths:
        stripped = fs._strip_protocol(path)
        if web:
            matches = [stripped]
        elif any(c in path for c in "*?["):
            matches = sorted(fs.glob(stripped))
        elif fs.isdir(stripped):
            matches = sorted(
                p
                for p in fs.find(stripped)
                if not p.rsplit("/", 1)[-1].startswith(("_", "."))
                and (not suffixes or p.endswith(suffixes))
            )
        else:
            matches = [stripped]
        if not matches:
            raise FileNotFoundError(f"no file matches {path!r}")
        found += matches
    files = []
    for path in found:
        try:
            size = fs.size(path)
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {path!r}") from None
        size = -1 if size is None else int(size)  # -1: not told (read whole)
        files.append(File(path if "file" in protocols else fs.unstrip_protocol(path), size))
    return fs, files


class Reader(Protocol):
    """How a source's parts are parsed (on the worker): picklable, shipped with the job."""

    def read(self, part: Any) -> pd.DataFrame: ...


@dataclass(frozen=True)
class ReadPart:
    """What the workers call on a source's chunk (a part's descriptor): the part read into
    a frame by ``reader``, then ``func`` on it."""

    func: Callable[..., object]
    reader: Reader

    def __call__(self, part: object, *args: object, **kwargs: object) -> object:
        frame = self.reader.read(part)
        try:
            return self.func(frame, *args, **kwargs)
        except Exception as exc:
            exc.add_note(f"(in {part})")
            raise


class Source(ABC):
    """Files the workers read: sized (``len``: its parts) and lazy. ``cmap(func, source)``
    gives each worker part descriptors; the worker reads its part and calls ``func``."""

    files: tuple[File, ...]
    parts: tuple[Any, ...]
    unit = "bytes"  # what the progress counts

    @property
    @abstractmethod
    def reader(self) -> Reader:
        """The parser of the parts (shipped with the job)."""

    @abstractmethod
    def part_items(self, part: Any) -> int:
        """The part's share of the progress (its bytes, or rows)."""

    @property
    def total_bytes(self) -> int:
        return sum(max(f.size, 0) for f in self.files)

    def __len__(self) -> int:
        return len(self.parts)

    def describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        n_files, n_parts = len(self.files), len(self.parts)
        first = f", first {self.files[0].url!r}" if self.files else ""
        extra = self.describe()
        return (
            f"<{type(self).__name__} {n_files} file{'s' * (n_files != 1)}, {n_parts} "
            f"part{'s' * (n_parts != 1)}, {human_bytes(self.total_bytes)}"
            f"{', ' + extra if extra else ''}{first}>"
        )

    def plan(self) -> SourcePlan:
        return SourcePlan(self)

    def wrap(self, func: Callable[..., object]) -> ReadPart:
        """What the workers call on this source's chunks."""
        return ReadPart(func, self.reader)


def _row_like(index: pd.Index) -> bool:
    """An index of row numbers within a part (as a part is read, or a subset of them)."""
    return index.name is None and index.dtype.kind in "iu" and index.nlevels == 1


class SourcePlan(Spans):
    """A source's parts as chunks: chunk ``i`` is part ``i`` (its descriptor); the items
    are the parts' bytes (or rows), counted from the first file's start."""

    def __init__(self, source: Source) -> None:
        self.source, self.unit = source, source.unit
        bounds: list[tuple[int, int]] = []
        start = 0
        for part in source.parts:
            size = source.part_items(part)
            bounds.append((start, start + size))
            start += size
        super().__init__(bounds)

    def __repr__(self) -> str:
        return f"<SourcePlan {len(self)} parts of {self.source!r}>"

    @property
    def data(self) -> object:
        return self.source

    def take(self, index: int) -> object:
        return self.source.parts[index]

    def join(self, parts: list[object]) -> object:
        return join_parts(parts)


def join_parts(parts: list[object]) -> object:
    """The parts' results in file order; frames and Series indexed by row numbers (as each
    part is read) are numbered afresh 0..n-1, as ``pd.concat(..., ignore_index=True)``."""
    out = join(parts)
    index = getattr(out, "index", None)
    if index is None or getattr(out, "ndim", 0) not in (1, 2) or not hasattr(out, "iloc"):
        return out
    indexes = [getattr(p, "index", None) for p in parts]
    if all(ix is not None and _row_like(ix) for ix in indexes):
        out.index = pandas().RangeIndex(len(out))
    return out
