"""Exceptions raised by celerynb, with the remote context kept."""

from __future__ import annotations

import concurrent.futures
import linecache
import pickle
import re
import sys
import traceback
import types
import warnings
from dataclasses import dataclass, replace

import cloudpickle


class CelerynbError(Exception):
    """Base class of celerynb's own errors."""


class ClusterError(CelerynbError):
    """A cluster could not be started, reached or used."""


class CancelledError(CelerynbError, concurrent.futures.CancelledError):
    """The call was cancelled before it finished."""

    def _render_traceback_(self) -> list[str]:
        """IPython hook: a cancelled call needs one line, not a traceback."""
        return [f"CancelledError: {self}"]


class CallTimeout(CelerynbError, TimeoutError):
    """A wait ran out: the call's ``timeout=`` (the call was cancelled: its state is
    'timed out'), or ``result(timeout)`` / ``as_completed(timeout=)`` (the call keeps
    running). Also a ``TimeoutError``, as ``concurrent.futures`` raises."""


class PayloadTooLarge(CelerynbError, ValueError):
    """A chunk, a result or the function is larger than the store accepts."""


class StoreFull(CelerynbError, MemoryError):
    """The store (Redis at its ``maxmemory``) refused a call's data for longer than the
    call waits: the message names the store, its limit, what the call needed and the fixes."""


class SignatureError(CelerynbError, ValueError):
    """A payload was unsigned, truncated or signed with another secret."""


class VersionMismatch(CelerynbError, ValueError):
    """The client that pickled a job runs versions a worker cannot load it with."""


class AlignmentWarning(UserWarning):
    """Several pandas inputs with different indexes: cmap pairs their rows by position."""


class ReductionWarning(UserWarning):
    """The chunks' results look like a reduction of each chunk (``chunk.sum()``,
    ``chunk.apply(f)`` by column): the joined result is one reduced part per chunk."""


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` pointing at the first frame outside celerynb (the user's line)."""
    frame, level = sys._getframe(1), 2
    while frame.f_back is not None and frame.f_globals.get("__name__", "").partition(".")[0] == (
        "celerynb"
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)


@dataclass(frozen=True)
class ChunkInfo:
    """Where a chunk sits in the input: positions ``start:stop`` and index labels."""

    index: int
    n_chunks: int
    start: int
    stop: int
    first_label: object = None
    last_label: object = None
    has_labels: bool = False
    unit: str = "positions"  # or "groups" for a groupby

    def describe(self) -> str:
        of = f" of {self.n_chunks}" if self.n_chunks >= 0 else ""  # -1: a stream, still open
        where = f"chunk {self.index}{of} ({self.unit} {self.start}:{self.stop}"
        if self.has_labels:
            what = "keys" if self.unit == "groups" else "index"
            where += f", {what} {self.first_label!r} .. {self.last_label!r}"
        return where + ")"


@dataclass(frozen=True)
class RemoteFailure:
    """What a worker reports when a chunk fails: picklable even if the exception is not."""

    type_name: str
    message: str
    traceback: str
    exception: BaseException | None = None
    worker: str = ""
    output: str = ""  # the chunk's last lines of output (print, warnings, logging)


def failure_of(exc: BaseException, worker: str) -> RemoteFailure:
    """A picklable description of ``exc``, with the task's own frames dropped."""
    tb = exc.__traceback__
    if tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        pickle.loads(cloudpickle.dumps(exc))
        original: BaseException | None = exc
    except Exception:
        original = None
    try:
        message = str(exc)
    except Exception:
        message = f"<unprintable {type(exc).__name__}>"
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        message = (
            f"{message} (the worker {worker} cannot import {exc.name!r}: "
            f"install it where the workers run)"
        )
    return RemoteFailure(type(exc).__qualname__, message, text, original, worker)


def _output_block(output: str) -> list[str]:
    """The chunk's own output, as shown with its error."""
    if not output:
        return []
    lines = output.rstrip("\n").splitlines()
    return ["Output of the chunk (its last lines):", *(f"  | {line}" for line in lines)]


class RemoteTraceback(Exception):
    """Carries a worker's traceback text (and the chunk's output) as the cause of a ChunkError."""

    def __init__(self, text: str, output: str = "") -> None:
        super().__init__(text)
        self.text, self.output = text, output

    def __str__(self) -> str:
        return "\n" + "\n".join([*_output_block(self.output), self.text.rstrip()])


class ChunkError(CelerynbError):
    """A chunk failed on a worker.

    Raised as a subclass of both ``ChunkError`` and the original exception type
    where that is possible, so ``except ValueError`` still catches it. ``chunk``
    says which rows failed, ``original`` is the remote exception (or None if it
    could not be sent back), ``remote_traceback`` is the worker's traceback text,
    ``output`` the chunk's last lines of output.
    """

    chunk: ChunkInfo
    original: BaseException | None
    remote_traceback: str
    worker: str
    output: str  # what the chunk printed, warned and logged (its last lines)

    def __str__(self) -> str:
        return self.args[0] if self.args else "chunk failed"

    def _render_traceback_(self) -> list[str]:
        """IPython hook: the chunk's output, then the remote traceback as if it were local."""
        return [
            f"ChunkError: {self.args[0].splitlines()[0]}",
            *_output_block(self.output),
            "Remote traceback (most recent call last, on the worker):",
            *self.remote_traceback.rstrip().splitlines(),
        ]

    @classmethod
    def build(
        cls, failure: RemoteFailure, chunk: ChunkInfo | None, what: str = "", *funcs: object
    ) -> ChunkError:
        """A ChunkError for ``failure`` that is also an instance of the original type.

        ``funcs`` (the call's func and reducer) let frames shipped by value be
        shown with their file names and source lines.
        """
        failure = replace(failure, traceback=localize_traceback(failure.traceback, *funcs))
        where = chunk.describe() if chunk is not None else (what or "the reducer")
        worker = f" on worker {failure.worker}" if failure.worker else ""
        msg = f"{where} failed{worker}: {failure.type_name}: {failure.message}"
        original = failure.exception
        err: ChunkError
        kind: type[ChunkError] = cls
        if isinstance(original, Exception) and not isinstance(original, CelerynbError):
            try:
                kind = type(
                    f"ChunkError[{type(original).__name__}]",
                    (cls, type(original)),
                    {"__module__": cls.__module__},
                )
            except TypeError:  # layout conflict: keep the plain ChunkError
                kind = cls
        try:
            err = kind.__new__(kind)
        except Exception:  # an exception type whose __new__ wants arguments
            err = Exception.__new__(cls)
        BaseException.__init__(err, msg)
        if kind is not cls and original is not None:
            err.__dict__.update(getattr(original, "__dict__", {}))  # e.g. custom attributes
            if isinstance(original, OSError):
                for name in ("errno", "strerror", "filename", "filename2"):
                    setattr(err, name, getattr(original, name))
        err.chunk = chunk  # type: ignore[assignment]
        err.original = original
        err.remote_traceback = failure.traceback
        err.worker = failure.worker
        err.output = failure.output
        err.__cause__ = RemoteTraceback(failure.traceback, failure.output)
        return err


_DYNAMIC = re.compile(r'^(\s*)File "<dynamic-code>", line (\d+), in (\S+)$')


def _codes(root: object, depth: int = 3) -> list[types.CodeType]:
    """Code objects of ``root`` and of the functions it calls by global name."""
    found: list[types.CodeType] = []
    seen: set[int] = set()
    todo: list[tuple[object, int]] = [(root, depth)]
    while todo:
        obj, left = todo.pop()
        code = getattr(obj, "__code__", None)
        if not isinstance(code, types.CodeType) or id(code) in seen:
            continue
        seen.add(id(code))
        stack = [code]
        while stack:
            current = stack.pop()
            found.append(current)
            stack += [c for c in current.co_consts if isinstance(c, types.CodeType)]
            if left > 0:
                names = getattr(obj, "__globals__", {})
                todo += [(names[n], left - 1) for n in current.co_names if n in names]
    return found


_LOCATION = re.compile(r"<dynamic-code>:(\d+):")


def localize_location(text: str, *funcs: object) -> str:
    """``<dynamic-code>:LINE:`` (a warning from a function shipped by value) with its file."""
    match = _LOCATION.search(text)
    if match is None:
        return text
    lineno = int(match.group(1))
    for code in (c for f in funcs if f is not None for c in _codes(f)):
        if lineno in {n for _, _, n in code.co_lines() if n is not None}:
            return text.replace(match.group(0), f"{code.co_filename}:{lineno}:", 1)
    return text


def localize_traceback(text: str, *funcs: object) -> str:
    """Put back file names and source lines that pickling by value removed.

    Functions shipped by value run on the worker as ``<dynamic-code>``; the
    driver still has their code objects (and, through linecache, the source
    of notebook cells), so their frames are rewritten to read like local ones.
    """
    if "<dynamic-code>" not in text:
        return text
    codes = [c for f in funcs if f is not None for c in _codes(f)]
    out: list[str] = []
    for line in text.splitlines():
        match = _DYNAMIC.match(line)
        if match is None:
            out.append(line)
            continue
        indent, lineno, name = match.group(1), int(match.group(2)), match.group(3)
        candidates = [
            c
            for c in codes
            if c.co_name == name and lineno in {n for _, _, n in c.co_lines() if n is not None}
        ]
        if not candidates:
            out.append(line)
            continue
        filename = candidates[0].co_filename
        out.append(f'{indent}File "{filename}", line {lineno}, in {name}')
        source = linecache.getline(filename, lineno).strip()
        if source:
            out.append(f"{indent}  {source}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")
