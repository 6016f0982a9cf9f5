"""What ``func`` writes while a chunk runs, captured in the pool process and sent on, bounded.

stdout and stderr writes, warnings (every emission, deduplicated per chunk
with a count) and log records at ``level`` and up (celery's, kombu's and
billiard's own excepted) are collected per chunk and handed to ``sink`` as
one batch at most every ``FLUSH_EVERY`` s and at the end of the chunk, so a
long chunk's prints reach the notebook while it runs. ``sink`` returns False
once the call has sent its share of bytes: the rest is only counted.
"""

from __future__ import annotations

import io
import logging
import sys
import time
import warnings
from collections.abc import Callable
from types import TracebackType

from ..plane.records import OutputBatch, OutputLine

FLUSH_EVERY = 0.25  # seconds between two batches of a running chunk
TAIL = 50  # lines of a chunk's output kept for its error, if it fails
_OWN = ("celery", "kombu", "billiard", "amqp")  # loggers that are the worker's, not func's

Sink = Callable[[OutputBatch], bool]


class _Stream(io.TextIOBase):
    def __init__(self, capture: Capture, name: str) -> None:
        self._capture, self._name = capture, name

    def write(self, text: str) -> int:
        self._capture.write(self._name, text)
        return len(text)

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False


class _Handler(logging.Handler):
    def __init__(self, capture: Capture, level: int) -> None:
        super().__init__(level)
        self._capture = capture
        self.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.partition(".")[0] in _OWN:
            return
        try:
            self._capture.add("log", self.format(record))
        except Exception:  # a broken record must not break the chunk
            self.handleError(record)


class Capture:
    """Captures one chunk's output (a context manager); ``tail()`` is its last lines."""

    def __init__(self, sink: Sink, chunk: int, worker: str, level: int) -> None:
        self._sink, self._chunk, self._worker, self._level = sink, chunk, worker, level
        self._lines: list[OutputLine] = []
        self._partial = {"stdout": "", "stderr": ""}
        self._warned: dict[str, int] = {}
        self._tail: list[str] = []
        self._sending = True
        self._dropped = [0, 0]  # lines and bytes not sent (over the call's cap)
        self._last = time.monotonic()

    def __enter__(self) -> Capture:
        self._saved = (sys.stdout, sys.stderr, warnings.showwarning)
        sys.stdout, sys.stderr = _Stream(self, "stdout"), _Stream(self, "stderr")
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("always")  # each emission is seen; counted once per call
        warnings.showwarning = self._warning
        root = logging.getLogger()
        self._handler, self._root_level = _Handler(self, self._level), root.level
        root.addHandler(self._handler)
        if root.getEffectiveLevel() > self._level:
            root.setLevel(self._level)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        root = logging.getLogger()
        root.removeHandler(self._handler)
        root.setLevel(self._root_level)
        self._warnings.__exit__(exc_type, exc, tb)
        sys.stdout, sys.stderr, warnings.showwarning = self._saved
        for name, rest in self._partial.items():
            if rest:
                self.add(name, rest)
        for text, count in self._warned.items():
            if count > 1:  # the first was sent as it came; the rest as a count
                self._lines.append(OutputLine("warning", text, count - 1))
        self.flush(final=True)

    def write(self, name: str, text: str) -> None:
        *lines, self._partial[name] = (self._partial[name] + text).split("\n")
        for line in lines:
            self.add(name, line)
        if self._lines and time.monotonic() - self._last >= FLUSH_EVERY:
            self.flush()

    def add(self, stream: str, text: str) -> None:
        self._tail.append(text)
        del self._tail[:-TAIL]
        if self._sending:
            self._lines.append(OutputLine(stream, text))
        else:
            self._dropped[0] += 1
            self._dropped[1] += len(text) + 1

    def _warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        text = warnings.formatwarning(message, category, filename, lineno, line).rstrip("\n")
        seen = self._warned.get(text, 0)
        self._warned[text] = seen + 1
        if not seen:
            self._tail.append(text)
            if self._sending:
                self._lines.append(OutputLine("warning", text))

    def flush(self, final: bool = False) -> None:
        """Hand the lines collected so far to the sink (the end of the chunk: always)."""
        self._last = time.monotonic()
        if not self._lines and not (final and any(self._dropped)):
            return
        dropped = (self._dropped[0], self._dropped[1]) if final else (0, 0)
        batch = OutputBatch(self._chunk, self._worker, tuple(self._lines), dropped)
        self._lines = []
        try:
            self._sending = self._sink(batch) and self._sending
        except Exception:  # the store is gone: func's output is not worth failing it
            self._sending = False

    def tail(self) -> str:
        """The chunk's last lines, for its error."""
        return "\n".join(self._tail)
