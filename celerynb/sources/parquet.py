"""Parquet sources: files split by row groups (pyarrow), each part read on a worker with
``columns=`` and ``filters=`` pushed into pyarrow.

The notebook reads each file's footer only: its row groups, their rows and
bytes, and, with ``filters=``, which row groups the statistics cannot rule
out. Consecutive row groups of one file make a part of about ``blocksize``
bytes (uncompressed), so no row group is read twice. ``filters`` are pyarrow's
(a list of ``(column, op, value)`` tuples, a list of such lists, or a
``pyarrow.compute.Expression``) and filter rows, as ``pd.read_parquet`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .base import File, Source, fsspec_module, list_files, parse_blocksize

if TYPE_CHECKING:
    import pandas as pd
    from fsspec import AbstractFileSystem


def pyarrow_dataset() -> Any:
    """``pyarrow.dataset``, or an ImportError that says how to install it."""
    try:
        import pyarrow.dataset
        import pyarrow.fs
        import pyarrow.parquet
    except ImportError as exc:
        raise ImportError(
            "celerynb.read_parquet needs pyarrow, in the notebook and on the workers: "
            "pip install 'celerynb[parquet]' (or pyarrow)"
        ) from exc
    return pyarrow


@dataclass(frozen=True)
class ParquetPart:
    """Row groups ``row_groups`` of one Parquet file (``rows`` in all, before filters)."""

    url: str
    row_groups: tuple[int, ...]
    rows: int

    def __str__(self) -> str:
        groups = self.row_groups
        which = f"{groups[0]}..{groups[-1]}" if len(groups) > 1 else ",".join(map(str, groups))
        return f"{self.url} row groups {which or '(none)'}"


def _arrow_fs(fs: AbstractFileSystem) -> Any:
    pa = pyarrow_dataset()
    return pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))


@dataclass(frozen=True)
class ParquetReader:
    """Reads a :class:`ParquetPart` through pyarrow: ``columns`` and ``filters`` pushed in,
    ``options`` for ``Table.to_pandas``."""

    columns: tuple[str, ...] | None
    filters: Any
    options: dict[str, Any] = field(default_factory=dict)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def expression(self) -> Any:
        if self.filters is None:
            return None
        pa = pyarrow_dataset()
        if isinstance(self.filters, list | tuple):
            return pa.parquet.filters_to_expression(self.filters)
        return self.filters

    def fragment(self, url: str, row_groups: Sequence[int] | None = None) -> Any:
        fs, path = fsspec_module().core.url_to_fs(url, **self.storage_options)
        return (
            pyarrow_dataset()
            .dataset.ParquetFileFormat()
            .make_fragment(path, filesystem=_arrow_fs(fs), row_groups=row_groups)
        )

    def read(self, part: ParquetPart) -> pd.DataFrame:
        fragment = self.fragment(part.url, list(part.row_groups))
        columns = list(self.columns) if self.columns is not None else None
        table = fragment.to_table(columns=columns, filter=self.expression())
        frame: pd.DataFrame = table.to_pandas(**self.options)
        return frame


@dataclass(frozen=True, repr=False)
class ParquetSource(Source):
    """Parquet files the workers read by row groups (see :func:`celerynb.read_parquet`)."""

    files: tuple[File, ...]
    parts: tuple[ParquetPart, ...]
    parquet_reader: ParquetReader
    unit = "rows"

    @property
    def reader(self) -> ParquetReader:
        return self.parquet_reader

    def part_items(self, part: ParquetPart) -> int:
        return max(part.rows, 1)

    def describe(self) -> str:
        rows = sum(p.rows for p in self.parts)
        return f"{rows:,} rows in {sum(len(p.row_groups) for p in self.parts)} row groups"


def make_parquet_source(
    urlpath: str | Sequence[str],
    columns: Sequence[str] | None,
    filters: Any,
    blocksize: int | str | None,
    storage_options: dict[str, Any] | None,
    options: dict[str, Any],
) -> ParquetSource:
    """A Parquet source over ``urlpath`` (see :func:`celerynb.read_parquet`)."""
    pyarrow_dataset()
    size = parse_blocksize(blocksize)
    if isinstance(columns, str):
        raise TypeError(f"columns= is a list of column names, got the string {columns!r}")
    reader = ParquetReader(
        None if columns is None else tuple(columns), filters, options, dict(storage_options or {})
    )
    expression = reader.expression()
    _, files = list_files(urlpath, storage_options, suffixes=(".parquet", ".parq", ".pq"))
    parts: list[ParquetPart] = []
    for file in files:
        fragment = reader.fragment(file.url)
        fragment.ensure_complete_metadata()
        if expression is not None:
            fragment = fragment.subset(filter=expression)
        held: list[int] = []
        rows = nbytes = 0
        for group in fragment.row_groups:
            if not group.num_rows:
                continue
            held.append(group.id)
            rows, nbytes = rows + group.num_rows, nbytes + group.total_byte_size
            if size is not None and nbytes >= size:
                parts.append(ParquetPart(file.url, tuple(held), rows))
                held, rows, nbytes = [], 0, 0
        if held:
            parts.append(ParquetPart(file.url, tuple(held), rows))
    if not parts:  # every row group filtered out: one part of none, for the columns
        parts.append(ParquetPart(files[0].url, (), 0))
    return ParquetSource(tuple(files), tuple(parts), reader)
