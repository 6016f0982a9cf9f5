"""``to=``: each worker writes its chunk's result to a file and only the file's path returns.

``cmap(func, data, to="out/part-{chunk:05d}.parquet")`` runs ``func`` on each
chunk, writes its result with pandas' (or NumPy's) own writer to the path the
pattern gives for the chunk's number, and returns the written paths in chunk
order. The format follows the suffix (see :data:`FORMATS`; a new one is added
with :func:`register`); ``.csv``, ``.json``, ``.npy`` and ``.pkl`` may end in a
compression suffix (``.csv.gz``, ``.json.bz2``, ``.xz``). Any fsspec URL works,
with ``storage_options`` for its filesystem; a path without a protocol is made
absolute in the notebook's working directory (workers of a remote deployment
need it on a shared filesystem). Parent directories are created.

One file per chunk, whatever happens: the result goes to a temporary name in the
same directory (``.part-00003.parquet.<random>.tmp``), then is renamed into place
(``os.replace`` for local files: atomic; ``fs.mv`` for other filesystems), so a
chunk that runs twice (its worker lost mid-write, or a retry) overwrites the file
with the same content and no reader sees half a file. Before writing, a chunk
removes the temporary files left by earlier runs of itself (a killed worker's).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import posixpath
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .running import chunk_number

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

TEMP_SUFFIX = ".tmp"


def _frame(value: Any) -> Any:
    """A DataFrame of ``value`` (a Series is one column, named ``"0"`` if it has no name)."""
    import pandas as pd

    if isinstance(value, pd.Series):
        return value.to_frame(name="0" if value.name is None else value.name)
    return value


def _is_frame(value: object) -> bool:
    import pandas as pd

    return isinstance(value, pd.DataFrame | pd.Series)


def _text_columns(value: Any) -> Any:
    """The frame a text format writes: a named index (``set_index``, ``groupby().sum()``)
    becomes columns; an unnamed one (row numbers, the labels a filter leaves) is dropped."""
    frame = _frame(value)
    return frame.reset_index() if any(n is not None for n in frame.index.names) else frame


def _write_parquet(value: Any, file: IO[bytes]) -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "writing Parquet (to='....parquet') needs pyarrow where the chunks run: "
            "pip install 'celerynb[parquet]' on the workers"
        ) from exc
    _frame(value).to_parquet(file, engine="pyarrow")  # pandas keeps the index (metadata)


def _write_csv(value: Any, file: IO[bytes]) -> None:
    _text_columns(value).to_csv(file, index=False)


def _write_json(value: Any, file: IO[bytes]) -> None:
    _text_columns(value).to_json(file, orient="records", lines=True)


def _is_array(value: object) -> bool:
    import numpy as np

    return isinstance(value, np.ndarray)


def _write_npy(value: Any, file: IO[bytes]) -> None:
    import numpy as np

    np.save(file, value, allow_pickle=False)


def _write_pickle(value: Any, file: IO[bytes]) -> None:
    pickle.dump(value, file, protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class Format:
    """How one kind of file is written: which results it takes (``accepts``, described by
    ``what``, with ``fix`` for others), the writer, and whether a compression suffix may
    follow its own."""

    suffix: str
    what: str
    accepts: Callable[[object], bool]
    write: Callable[[Any, IO[bytes]], None]
    fix: str = ""
    compressible: bool = True  # a suffix such as .gz may follow (fsspec compresses)

    def __repr__(self) -> str:
        return f"<Format {self.suffix}: {self.what}>"


def _anything(value: object) -> bool:
    return True


FRAME_FIX = "return a DataFrame or Series from func (e.g. pd.DataFrame(rows))"
FORMATS: dict[str, Format] = {}


def register(fmt: Format) -> None:
    """Make ``to=`` write files ending in ``fmt.suffix`` with ``fmt``."""
    if not fmt.suffix.startswith("."):
        raise ValueError(f"a format's suffix starts with a dot, got {fmt.suffix!r}")
    FORMATS[fmt.suffix.lower()] = fmt


for _fmt in (
    Format(".parquet", "a DataFrame or Series", _is_frame, _write_parquet, FRAME_FIX, False),
    Format(".csv", "a DataFrame or Series", _is_frame, _write_csv, FRAME_FIX),
    Format(".json", "a DataFrame or Series (as JSON lines)", _is_frame, _write_json, FRAME_FIX),
    Format(".npy", "a NumPy array", _is_array, _write_npy, "return an ndarray (.to_numpy())"),
    Format(".pkl", "any picklable object", _anything, _write_pickle),
):
    register(_fmt)


def _fields(pattern: str) -> list[tuple[str, str]]:
    """(name, format spec) of each replacement field of ``pattern``."""
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ValueError(f"to={pattern!r} is not a valid pattern ({exc})") from None
    return [(name, spec or "") for _, name, spec, _ in parsed if name is not None]


def _format_of(pattern: str, name: str) -> tuple[Format, str | None]:
    """The format the pattern's suffix names, and the compression (fsspec's name) that a
    further suffix names, if any."""
    from fsspec.utils import compressions

    base = posixpath.basename(name.replace("\\", "/")).lower()
    stem, dot, ext = base.rpartition(".")
    compression = compressions.get(ext) if dot and ext != "zip" else None
    if compression is not None:
        base = stem
    fmt = next((f for s, f in FORMATS.items() if base.endswith(s)), None)
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise ValueError(
            f"to={pattern!r}: no format for this file name; end it in one of {known} "
            f"(a compression suffix such as .gz may follow, except for .parquet)"
        )
    if compression is not None and not fmt.compressible:
        raise ValueError(f"to={pattern!r}: {fmt.suffix} files compress themselves; drop .{ext}")
    return fmt, compression


def _absolute(pattern: str) -> str:
    """A local path made absolute in this process's working directory; URLs as they are."""
    if "://" in pattern:
        return pattern
    return os.path.abspath(os.path.expanduser(pattern))


@dataclass(frozen=True)
class Target:
    """Where ``to=`` writes: the pattern of every chunk's path (``{chunk}`` in it), the
    format and compression its suffixes name, and the filesystem's ``storage_options``
    (kept out of the repr: they may hold credentials)."""

    pattern: str
    fmt: Format
    compression: str | None = None  # fsspec's name of it (a suffix such as .gz names it)
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def parse(cls, to: object, storage_options: dict[str, Any] | None = None) -> Target:
        """The target of ``to=``; ValueError / TypeError naming the problem and the fix."""
        if isinstance(to, os.PathLike):
            to = os.fspath(to)
        if not isinstance(to, str) or not to.strip():
            raise TypeError(
                f"to= must be a path or URL pattern such as 'out/part-{{chunk:05d}}.parquet', "
                f"got {to!r}"
            )
        if storage_options is not None and not isinstance(storage_options, dict):
            raise TypeError(
                f"storage_options must be a dict (the filesystem's options), got "
                f"{type(storage_options).__name__}"
            )
        names = {name for name, _ in _fields(to)}
        example = "'out/part-{chunk:05d}.parquet'"
        if names != {"chunk"}:
            other = sorted(n or "{}" for n in names - {"chunk"})
            problem = f"it has {', '.join(map(repr, other))} too" if other else "it has none"
            raise ValueError(
                f"to={to!r} must name each chunk's file with the chunk's number, {{chunk}} "
                f"(and nothing else in braces; {problem}): e.g. {example}"
            )
        try:
            first, second = to.format(chunk=0), to.format(chunk=1)
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"to={to!r}: {{chunk}} is an int; its format spec does not apply ({exc}). "
                f"Use {{chunk}} or a zero-padded {{chunk:05d}}"
            ) from None
        if first == second:
            raise ValueError(f"to={to!r} gives every chunk the same file: use {{chunk}}")
        fmt, compression = _format_of(to, first)
        return cls(_absolute(to), fmt, compression, dict(storage_options or {}))

    def path(self, index: int) -> str:
        """The path (or URL) of chunk ``index``'s file."""
        return self.pattern.format(chunk=index)

    def filesystem(self, path: str) -> tuple[AbstractFileSystem, str]:
        import fsspec

        fs, inner = fsspec.core.url_to_fs(path, **self.storage_options)
        return fs, inner

    def write(self, value: object, index: int) -> str:
        """Write ``value`` as chunk ``index``'s file (temporary name, then renamed into
        place); its path. TypeError if the format does not take ``value``."""
        path = self.path(index)
        if not self.fmt.accepts(value):
            fix = f": {self.fmt.fix}" if self.fmt.fix else ""
            raise TypeError(
                f"to={self.pattern!r} writes {self.fmt.what} per file; func returned a "
                f"{type(value).__name__} for chunk {index}{fix}, or pick a suffix for it "
                "(.pkl takes anything)"
            )
        fs, final = self.filesystem(path)
        parent, name = posixpath.split(final)
        fs.makedirs(parent, exist_ok=True)
        _remove_stale(fs, parent, name)
        temp = posixpath.join(parent, f".{name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            with fs.open(temp, "wb", compression=self.compression) as file:
                self.fmt.write(value, file)
        except BaseException:
            with contextlib.suppress(Exception):
                fs.rm(temp)
            raise
        try:
            _move(fs, temp, final)
        except FileNotFoundError:
            # a run of this chunk that started later removed our temporary file as stale,
            # and writes (or wrote) the same content: its file stands
            if not fs.exists(final):
                raise
        return path


def _remove_stale(fs: AbstractFileSystem, parent: str, name: str) -> None:
    """Remove the temporary files of earlier runs of this chunk (``.name.*.tmp``)."""
    prefix = f".{name}."
    try:
        found = fs.ls(parent, detail=False)
    except FileNotFoundError:
        return
    for entry in found:
        base = posixpath.basename(str(entry).rstrip("/"))
        if base.startswith(prefix) and base.endswith(TEMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(entry)


def _move(fs: AbstractFileSystem, temp: str, final: str) -> None:
    """Rename ``temp`` to ``final``, replacing it: atomic for local files."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        os.replace(temp, final)
    else:
        fs.mv(temp, final)


@dataclass(frozen=True)
class WriteTo:
    """What the workers call on a chunk with ``to=``: ``func``, then its result written to
    the chunk's file (see :class:`Target`); the file's path is the chunk's result."""

    func: Callable[..., object]
    target: Target

    def __repr__(self) -> str:
        name = getattr(self.func, "__name__", type(self.func).__name__)
        return f"<WriteTo {name} -> {self.target.pattern!r}>"

    def __call__(self, *args: object, **kwargs: object) -> str:
        index = chunk_number()
        return self.target.write(self.func(*args, **kwargs), index)
