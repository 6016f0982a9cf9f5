"""Every argument of a call, its default (stated once, here) and its validation."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypedDict

from .sinks import Target

Progress = bool | Literal["auto", "widget", "text"] | None
Output = bool | Literal["stream", "end"]
PROGRESS_CHOICES = (True, False, None, "auto", "widget", "text")


class CallKwargs(TypedDict, total=False):
    """The keyword arguments of ``cmap`` / ``cmap_async`` (see :class:`CallOptions`)."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any] | None
    chunks: int | None
    chunk_size: int | None
    overlap: int
    reduce: Callable[[list[Any]], Any] | None
    progress: Progress
    timeout: float | None
    retries: int
    chunk_timeout: float | None
    attempts: int
    output: Output
    output_lines: int
    output_bytes: int
    log_level: int | str
    max_ahead: int | None
    name: str | None
    keep: float | timedelta | None
    replace: bool
    to: str | None
    storage_options: dict[str, Any] | None


@dataclass(frozen=True)
class CallOptions:
    """How one call runs. Defaults:

    - ``args=()``, ``kwargs=None``: extra arguments for every ``func`` call,
      shipped once per call;
    - ``chunks=None``, ``chunk_size=None``: the default chunking (adaptive, or
      4 chunks per worker; at most 64 MiB a chunk); either one overrides it
      (an iterator's items are its chunks; ``chunk_size=`` re-cuts them);
    - ``overlap=0``: items before each chunk that it gets too, for a ``func``
      over windows of rows (``rolling(n)`` needs ``overlap=n - 1``); their
      rows are dropped from its result, so ``func`` must return a row per row;
    - ``reduce=None``: a function run on a worker over the list of chunk
      results; only its value comes back;
    - ``progress=True``: a widget in a notebook, a text bar in a terminal
      (``"widget"``, ``"text"``, ``"auto"``; False or None: none);
    - ``timeout=None``: seconds for the whole call, then it is cancelled;
    - ``retries=0``: re-runs of a chunk whose ``func`` raised;
    - ``chunk_timeout=None``: seconds one chunk may run;
    - ``attempts=3``: deliveries of a chunk whose worker process died
      (killed, out of memory) before the call fails;
    - ``output="stream"``: what ``func`` prints, warns and logs is shown in
      the calling cell as it arrives, each line marked with its chunk
      (``"end"``: all after the call, in chunk order; False: dropped);
    - ``output_lines=1000``, ``output_bytes=1 MiB``: past these, a call's
      output is counted, not shown;
    - ``log_level="WARNING"``: log records of this level and up are shown;
    - ``max_ahead=None``: how many chunks are stored ahead of the workers, waiting
      for one (default: for an iterator of chunks, twice the pool processes; for
      other inputs, as many as the call's window of bytes in the store holds);
    - ``name=None``: a named call, on a detached or remote cluster, goes on
      when its kernel dies and is found again by ``attach(name)``; running the
      same function on the same data under that name again attaches to it;
    - ``keep=None``: seconds (or a timedelta) a named call's results are kept
      (24 h);
    - ``replace=False``: True lets a named call replace another one of that
      name with a different function or data;
    - ``to=None``: a path or URL pattern such as ``"out/part-{chunk:05d}.parquet"``:
      each worker writes its chunk's result to that file (format by suffix:
      ``.parquet``, ``.csv``, ``.json`` lines, ``.npy``, ``.pkl``) and the call
      returns the paths, in chunk order (see :mod:`celerynb.sinks`);
    - ``storage_options=None``: options of ``to=``'s fsspec filesystem
      (credentials, endpoint), sent to the workers with the signed job.
    """

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    chunks: int | None = None
    chunk_size: int | None = None
    overlap: int = 0
    reduce: Callable[[list[Any]], Any] | None = None
    progress: Progress = True
    timeout: float | None = None
    retries: int = 0
    chunk_timeout: float | None = None
    attempts: int = 3
    output: Output = "stream"
    output_lines: int = 1000
    output_bytes: int = 2**20
    log_level: int | str = "WARNING"
    max_ahead: int | None = None
    name: str | None = None
    keep: float | timedelta | None = None
    replace: bool = False
    to: str | None = None
    storage_options: dict[str, Any] | None = None

    @classmethod
    def make(cls, **given: Any) -> CallOptions:
        """Validated options; TypeError / ValueError naming the argument and the fix."""
        names = {f.name for f in dataclasses.fields(cls)}
        for name in sorted(set(given) - names):
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]}?)" if near else ""
            raise TypeError(
                f"cmap() got an unexpected keyword argument {name!r}{hint}; it takes "
                f"{', '.join(sorted(names))} and cluster"
            )
        if given.get("kwargs") is None:
            given.pop("kwargs", None)
        options = cls(**given)
        options.validate()
        return options

    def validate(self) -> None:
        if not isinstance(self.args, tuple | list) or not isinstance(self.kwargs, dict):
            raise TypeError("args= must be a tuple and kwargs= a dict of extra arguments for func")
        object.__setattr__(self, "args", tuple(self.args))
        if self.reduce is not None and not callable(self.reduce):
            raise TypeError(f"reduce must be callable, got {type(self.reduce).__name__}")
        for name in ("timeout", "chunk_timeout"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
            ):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        for name, low in (
            ("retries", 0),
            ("attempts", 1),
            ("overlap", 0),
            ("output_lines", 0),
            ("output_bytes", 0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        for name in ("chunks", "chunk_size", "max_ahead"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be a positive int, got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.chunks is not None and self.chunk_size is not None:
            raise ValueError("pass chunks= or chunk_size=, not both")
        if not (isinstance(self.output, bool) or self.output in ("stream", "end")):
            raise ValueError(f"output must be 'stream', 'end', True or False; got {self.output!r}")
        self.level()  # a bad log_level names itself
        self._check_naming()
        self.target()  # a bad to= or storage_options= names itself
        progress = self.progress
        if not (
            progress is None
            or isinstance(progress, bool)
            or (isinstance(progress, str) and progress in PROGRESS_CHOICES)
        ):
            raise ValueError(
                "progress must be one of True, False, None, 'auto', 'widget' or 'text'; "
                f"got {self.progress!r}"
            )

    def _check_naming(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise ValueError(f"name must be a non-empty str, got {self.name!r}")
        keep = self.keep
        if isinstance(keep, timedelta):
            keep = keep.total_seconds()
        if keep is not None and (
            isinstance(keep, bool) or not isinstance(keep, int | float) or keep <= 0
        ):
            raise ValueError(f"keep must be a positive number of seconds, got {self.keep!r}")
        object.__setattr__(self, "keep", keep)
        if self.name is None and (self.keep is not None or self.replace):
            raise ValueError("keep= and replace= are for named calls: pass name= too")

    def target(self) -> Target | None:
        """Where the workers write the chunks' results (``to=``), or None."""
        if self.to is None:
            if self.storage_options is not None:
                raise ValueError(
                    "storage_options= is for the files that to= writes: pass to= too "
                    "(a source such as celerynb.read_csv takes its own storage_options=)"
                )
            return None
        if self.reduce is not None:
            raise ValueError(
                "to= writes each chunk's result to a file and returns the paths; reduce= "
                "combines the results into one value: pass one of them (to reduce what "
                "to= wrote, run a second cmap over the returned paths with reduce=)"
            )
        return Target.parse(self.to, self.storage_options)

    @property
    def keep_seconds(self) -> float:
        """How long a named call's results are kept (default 24 h)."""
        return float(self.keep) if self.keep is not None else 24 * 3600.0  # type: ignore[arg-type]

    def level(self) -> int:
        """``log_level`` as a number (ValueError naming the choices if it is none)."""
        level = self.log_level
        if isinstance(level, str):
            found = logging.getLevelName(level.upper())
            level = found if isinstance(found, int) else -1
        if isinstance(level, bool) or not isinstance(level, int) or level < 0:
            raise ValueError(
                f"log_level must be a logging level (e.g. 'INFO', 'WARNING' or 20); "
                f"got {self.log_level!r}"
            )
        return level

    def slot(self, zipped: bool, shm: bool, watch: bool = False, label: str = "") -> SlotOptions:
        """What a draining task needs to know about this call."""
        return SlotOptions(
            label=label,
            watch=watch,
            attempts=self.attempts,
            retries=self.retries,
            chunk_timeout=self.chunk_timeout,
            zipped=zipped,
            shm=shm,
            one=self.chunk_timeout is not None,
            keep=self.reduce is not None,
            output=self.output is not False,
            output_bytes=self.output_bytes,
            log_level=self.level(),
        )


@dataclass(frozen=True)
class SlotOptions:
    """The options a draining task gets in its message.

    ``zipped``: chunks are tuples of several inputs; ``shm``: data may be in
    shm files; ``one``: one chunk per message (per-chunk time limits);
    ``keep``: results stay on the plane for the reducer; ``watch``: drop the
    call if its driver stops refreshing its ``alive`` key (remote clusters);
    ``output``: send func's output (up to ``output_bytes`` for the call) and
    log records from ``log_level`` up.
    """

    attempts: int = 3
    retries: int = 0
    chunk_timeout: float | None = None
    zipped: bool = False
    shm: bool = False
    one: bool = False
    keep: bool = False
    watch: bool = False
    output: bool = True
    output_bytes: int = 2**20
    log_level: int = 30
    label: str = ""  # e.g. "cmap(score)": what monitoring (celery events, Flower) shows


def signature(positional: str) -> inspect.Signature:
    """``func, data, *more, cluster=None`` and every option with its default, for
    ``help(cmap)`` and notebook tooltips."""
    params = [
        inspect.Parameter("func", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter("data", inspect.Parameter.POSITIONAL_ONLY),
        inspect.Parameter("more", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("cluster", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    for f in dataclasses.fields(CallOptions):
        default = f.default if f.default is not dataclasses.MISSING else None
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(params, return_annotation=positional)
