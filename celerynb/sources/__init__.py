"""Sources the workers read: ``read_csv``, ``read_json``, ``read_parquet`` (files listed in
the notebook, each part opened and parsed by a worker)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import DEFAULT_BLOCKSIZE, Source
from .parquet import ParquetSource, make_parquet_source
from .text import CsvSource, JsonSource, make_text_source

UrlPath = str | Sequence[str] | Any  # a path, a glob, a directory, an fsspec URL, or a list


def read_csv(
    urlpath: UrlPath,
    blocksize: int | str | None = DEFAULT_BLOCKSIZE,
    *,
    storage_options: dict[str, Any] | None = None,
    **pandas_kwargs: Any,
) -> CsvSource:
    """CSV files for ``cmap`` to read on the workers, in parts of about ``blocksize`` bytes.

    ``urlpath``: a path, a glob, a directory or a list of them: local paths the workers
    see too (a shared filesystem), or fsspec URLs they can reach (``s3://``, ``gs://``,
    ``https://``, ...; ``storage_options`` go to fsspec, in the notebook and with the
    job). ``blocksize``: bytes per part (``"64MB"``, ``"256MiB"``, an int), or None for
    one part per file; compressed files (``.gz``, ``.bz2``, ``.xz``, ``.zst``, ``.zip``)
    are one part each. ``pandas_kwargs`` go to ``pd.read_csv`` for every part (not
    ``skiprows``, ``nrows``, ``skipfooter``, ``chunksize``). Every file has the first
    file's header. A part ends at a line's end, so quoted fields with line breaks in them
    are not supported with byte ranges: pass ``blocksize=None``.

    ``cmap(f, read_csv(files))`` equals ``f(pd.concat(map(pd.read_csv, files),
    ignore_index=True))`` for a row-wise ``f``: each worker reads its own part.
    """
    return make_text_source(CsvSource, urlpath, blocksize, storage_options, dict(pandas_kwargs))


def read_json(
    urlpath: UrlPath,
    lines: bool = True,
    blocksize: int | str | None = DEFAULT_BLOCKSIZE,
    *,
    storage_options: dict[str, Any] | None = None,
    **pandas_kwargs: Any,
) -> JsonSource:
    """JSON-lines files (one record per line) for ``cmap`` to read on the workers, in
    parts of about ``blocksize`` bytes; with ``lines=False``, JSON documents, one part per
    file. ``urlpath``, ``storage_options``: as for :func:`read_csv`; ``pandas_kwargs`` go
    to ``pd.read_json``."""
    options = dict(pandas_kwargs, lines=lines)
    return make_text_source(JsonSource, urlpath, blocksize, storage_options, options, lines)


def read_parquet(
    urlpath: UrlPath,
    columns: Sequence[str] | None = None,
    filters: Any = None,
    *,
    blocksize: int | str | None = DEFAULT_BLOCKSIZE,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ParquetSource:
    """Parquet files for ``cmap`` to read on the workers, split by row groups (about
    ``blocksize`` bytes of consecutive row groups of one file per part; None: one part
    per file). ``columns`` and ``filters`` (pyarrow's: ``[("x", ">", 0)]``) are pushed into
    pyarrow; ``kwargs`` go to ``pyarrow.Table.to_pandas``. ``urlpath``,
    ``storage_options``: as for :func:`read_csv`. Needs pyarrow
    (``pip install 'celerynb[parquet]'``)."""
    return make_parquet_source(urlpath, columns, filters, blocksize, storage_options, kwargs)


__all__ = [
    "CsvSource",
    "JsonSource",
    "ParquetSource",
    "Source",
    "read_csv",
    "read_json",
    "read_parquet",
]
