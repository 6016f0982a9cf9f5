"""CSV and JSON-lines sources: files cut into byte ranges on line boundaries, each range
parsed by pandas on a worker.

The line rule: a part covers the bytes ``start:stop`` of its file, and reads
the lines that *begin* in that range. A line begins at byte 0 and after each
``\\n``, so the part reads from the first line start at or after ``start``
(found by scanning from ``start - 1`` for a newline) up to the first line
start at or after ``stop``; neighbours use the same boundary, so every line is
read exactly once, whatever the blocksize (CRLF lines end in ``\\n`` too). A
line longer than a part leaves that part empty. Quoted fields with newlines
inside cannot be cut this way: pass ``blocksize=None`` (one part per file).

The header (the first line of the first file) is put before every part that
does not start a file, and the columns the first rows show as text keep that
dtype in every part (a part of only number-like values would read them as
numbers); other columns are inferred per part, so a missing value makes an
integer column float where it occurs, and the join makes it float throughout,
as a read of the whole file would. A part with no rows gives the head's empty
frame, with its dtypes. Compressed files (by extension) are one part each.
"""

from __future__ import annotations

import io
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Literal, TypeVar

from ..inputs import pandas
from .base import (
    File,
    Source,
    fsspec_module,
    human_bytes,
    list_files,
    parse_blocksize,
)

if TYPE_CHECKING:
    import pandas as pd

COMPRESSIONS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd", ".zip": "zip"}
HEAD_ROWS = 1000  # read from the start of the first file for the dtypes
SCAN_BYTES = 2**16  # read at a time while looking for a line's end
Format = Literal["csv", "json"]
# pandas options that count rows or lines of a whole file: they cannot apply per part
_WHOLE_FILE = ("skiprows", "skipfooter", "nrows", "chunksize", "iterator")


def compression_of(url: str, option: object = "infer") -> str | None:
    """The compression of ``url``: ``option`` if given, else by the file's extension."""
    if option != "infer":
        return None if option is None else str(option)
    lowered = url.lower()
    return next((name for ext, name in COMPRESSIONS.items() if lowered.endswith(ext)), None)


@dataclass(frozen=True)
class TextPart:
    """One part of a text file: the lines beginning in bytes ``start:stop`` (``whole``: the
    whole file, decompressed as it is read)."""

    url: str
    start: int
    stop: int
    size: int  # the file's bytes
    compression: str | None = None
    whole: bool = False

    def __str__(self) -> str:
        return f"{self.url}" if self.whole else f"{self.url} bytes {self.start}:{self.stop}"


def line_start(f: BinaryIO, pos: int, size: int) -> int:
    """Where the first line beginning at or after byte ``pos`` begins (``size``: none)."""
    if pos <= 0:
        return 0
    if pos >= size:
        return size
    f.seek(pos - 1)
    at = pos - 1
    while True:
        piece = f.read(SCAN_BYTES)
        if not piece:
            return size
        found = piece.find(b"\n")
        if found >= 0:
            return at + found + 1
        at += len(piece)


def read_lines(f: BinaryIO, start: int, stop: int, size: int) -> bytes:
    """The bytes of the lines beginning in ``start:stop`` of a file of ``size`` bytes."""
    first = line_start(f, start, size)
    last = size if stop >= size else line_start(f, stop, size)
    if last <= first:
        return b""
    f.seek(first)
    return f.read(last - first)


@dataclass(frozen=True)
class TextReader:
    """Parses a :class:`TextPart` with pandas: ``header`` (bytes) goes before a part that
    does not start its file; ``options`` go to ``read_csv`` / ``read_json``; ``empty`` is
    what a part with no rows gives."""

    format: Format
    header: bytes
    options: dict[str, Any]
    empty: pd.DataFrame
    storage_options: dict[str, Any] = field(default_factory=dict)

    def parse(self, data: BinaryIO) -> pd.DataFrame:
        module = pandas()
        read = module.read_csv if self.format == "csv" else module.read_json
        frame: pd.DataFrame = read(data, **self.options)
        return frame

    def read(self, part: TextPart) -> pd.DataFrame:
        fsspec = fsspec_module()
        with fsspec.open(part.url, "rb", compression=part.compression, **self.storage_options) as f:
            if part.whole:
                frame = self.parse(f)
            else:
                data = read_lines(f, part.start, part.stop, part.size)
                if not data.strip():
                    return self.empty.copy()
                if part.start > 0:
                    data = self.header + data
                frame = self.parse(io.BytesIO(data))
        return frame if len(frame) else self.empty.copy()


@dataclass(frozen=True, repr=False)
class TextSource(Source):
    """CSV or JSON-lines files cut into byte ranges (see the module docstring)."""

    files: tuple[File, ...]
    parts: tuple[TextPart, ...]
    text_reader: TextReader
    blocksize: int | None

    @property
    def reader(self) -> TextReader:
        return self.text_reader

    def part_items(self, part: TextPart) -> int:
        return max(part.stop - part.start, 1)

    def describe(self) -> str:
        if self.blocksize is None:
            return "one part per file"
        return f"blocksize {human_bytes(self.blocksize)}"


class CsvSource(TextSource):
    """CSV files the workers read (see :func:`celerynb.read_csv`)."""

    format: ClassVar[Format] = "csv"


class JsonSource(TextSource):
    """JSON(-lines) files the workers read (see :func:`celerynb.read_json`)."""

    format: ClassVar[Format] = "json"


Kind = TypeVar("Kind", CsvSource, JsonSource)


def _parts(files: list[File], blocksize: int | None, compression: object) -> list[TextPart]:
    parts: list[TextPart] = []
    for file in files:
        if file.size == 0:
            continue  # an empty file has no rows (and no header)
        packed = compression_of(file.url, compression)
        if packed is not None or blocksize is None or file.size < 0:
            size = max(file.size, 0)
            parts.append(TextPart(file.url, 0, size, size, packed, whole=True))
            continue
        for start in range(0, file.size, blocksize):
            parts.append(TextPart(file.url, start, min(start + blocksize, file.size), file.size))
    return parts


def _head(
    fmt: Format, parts: list[TextPart], options: dict[str, Any], so: dict[str, Any]
) -> tuple[bytes, pd.DataFrame]:
    """The first file's first line, and the first rows (``HEAD_ROWS``) of the first file
    that has any (pandas reads only as much of the file as they take)."""
    fsspec, header = fsspec_module(), b""
    head = pandas().DataFrame()
    if fmt == "json" and not options.get("lines"):
        return header, head  # JSON documents: nothing to read but the whole file
    for part in parts:
        if part.start:
            continue
        with fsspec.open(part.url, "rb", compression=part.compression, **so) as f:
            if not header:
                header = f.readline()
                header += b"" if header.endswith(b"\n") else b"\n"
        with fsspec.open(part.url, "rb", compression=part.compression, **so) as f:
            head = TextReader(fmt, b"", dict(options, nrows=HEAD_ROWS), head).parse(f)
        if len(head):
            break
    return header, head


def _text_dtypes(head: pd.DataFrame, options: dict[str, Any]) -> dict[Hashable, Any]:
    """The head's text columns (with a value) and their dtype, unless the options say."""
    taken: set[object] = set()
    for name in ("converters", "dtype"):
        given = options.get(name)
        if isinstance(given, dict):
            taken |= set(given)
    dates = options.get("parse_dates")
    if isinstance(dates, list | tuple):
        taken |= {d for d in dates if not isinstance(d, list | tuple)}
    pd = pandas()
    return {
        column: values.dtype
        for column, values in head.items()
        if column not in taken
        and (values.dtype == object or isinstance(values.dtype, pd.StringDtype))
        and values.notna().any()
    }


def make_text_source(
    kind: type[Kind],
    urlpath: str | Sequence[str],
    blocksize: int | str | None,
    storage_options: dict[str, Any] | None,
    options: dict[str, Any],
    splittable: bool = True,
) -> Kind:
    """A CSV or JSON source over ``urlpath`` (see :func:`celerynb.read_csv`)."""
    fmt = kind.format
    what = "read_csv" if fmt == "csv" else "read_json"
    refused = [name for name in _WHOLE_FILE if name in options]
    if refused:
        raise TypeError(
            f"{what}() cannot take {', '.join(refused)}=: they count rows of a whole file, and "
            "each worker reads a part. Filter the rows in func, or use pandas directly"
        )
    if options.get("header", "infer") not in ("infer", 0, None):
        raise ValueError(
            f"{what}(header={options['header']!r}): only a header on the first line (0) or "
            "none (None) is supported"
        )
    size = parse_blocksize(blocksize) if splittable else None
    compression = options.pop("compression", "infer")
    so = dict(storage_options or {})
    _, files = list_files(urlpath, so)
    parts = _parts(files, size, compression)
    if not parts:
        raise ValueError(
            f"{what}: every file of {urlpath!r} is empty ({len(files)} files): no rows to read"
        )
    first, head = _head(fmt, parts, options, so)
    has_header = fmt == "csv" and (
        options.get("header", "infer") == 0
        or (options.get("header", "infer") == "infer" and "names" not in options)
    )
    dtypes = _text_dtypes(head, options)
    given = options.get("dtype")
    if isinstance(given, dict):
        dtypes |= given
    elif given is not None:
        dtypes = given
    parsed = dict(options, dtype=dtypes) if dtypes else dict(options)
    reader = TextReader(fmt, first if has_header else b"", parsed, head.iloc[:0], so)
    return kind(tuple(files), tuple(parts), reader, size)
