"""What ``func`` printed, warned and logged on the workers, relayed to the calling cell.

Lines come in batches from the workers (see ``worker/capture.py``), each
marked here with its chunk (and, on a deployment of several workers, the
worker). ``mode``: ``"stream"`` writes them as they arrive, ``"end"`` after
the call in chunk order, ``False`` drops them. In a kernel they go to the
cell that made the call (its stdout or stderr, also when the call runs on
after the cell), elsewhere to stderr. A warning repeated by many chunks is
shown once, with its count at the end. Past ``max_lines`` / ``max_bytes`` per
call the rest is counted, not shown, and a last line says how much.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from .errors import localize_location
from .plane.records import OutputBatch
from .progress import in_kernel

MARK = "[celerynb]"  # the relay's own lines


class _Target:
    """Where relayed lines go: the calling cell's streams in a kernel, else stderr."""

    def __init__(self) -> None:
        self.kernel = in_kernel()
        # ipykernel routes a thread's writes by its parent header: keep the caller's
        self.parent = getattr(sys.stdout, "parent_header", None) if self.kernel else None

    def write(self, stream: str, text: str) -> None:
        out: Any = (sys.stdout if stream == "stdout" else sys.stderr) if self.kernel else sys.stderr
        set_parent = getattr(out, "set_thread_parent", None)
        token = set_parent(self.parent) if self.parent and set_parent else None
        try:
            out.write(text)
            out.flush()
        finally:
            if token is not None:
                out.reset_thread_parent(token)


class Relay:
    """The output of one call: marks, bounds, deduplicates and writes its lines."""

    def __init__(
        self,
        mode: object,
        max_lines: int,
        max_bytes: int,
        *,
        by_worker: bool = False,
        funcs: tuple[object, ...] = (),
    ) -> None:
        self.mode = "stream" if mode is True else mode
        self.funcs = funcs  # warnings from functions shipped by value name their files
        self.max_lines, self.max_bytes, self.by_worker = max_lines, max_bytes, by_worker
        self.shown = [0, 0]  # lines, bytes
        self.left_out = [0, 0]
        self.warnings: dict[str, int] = {}  # text -> times, over the whole call
        self._later: dict[int, list[tuple[str, str]]] = {}  # "end": chunk -> lines
        self._target = _Target() if self.mode else None
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<Relay {self.mode}: {self.shown[0]} lines shown, {self.left_out[0]} left out>"

    def take(self, batches: list[OutputBatch]) -> None:
        """Lines from the workers (any thread)."""
        if not self.mode:
            return
        with self._lock:
            for batch in batches:
                chunk, worker = batch.chunk, batch.worker
                mark = f"[chunk {chunk}" + (f" @ {worker.split('@')[0]}" if self.by_worker else "")
                for line in batch.lines:
                    self._line(chunk, f"{mark}] ", line.stream, line.text, line.count)
                self.left_out[0] += batch.dropped[0]
                self.left_out[1] += batch.dropped[1]

    def _line(self, chunk: int, mark: str, stream: str, text: str, count: int = 1) -> None:
        if stream == "warning":
            text = localize_location(text, *self.funcs)
            seen = self.warnings.get(text, 0)
            self.warnings[text] = seen + count
            if seen:  # shown once per call; the count comes at the end
                return
        line = mark + text + "\n"
        if self.shown[0] >= self.max_lines or self.shown[1] + len(line) > self.max_bytes:
            self.left_out[0] += 1
            self.left_out[1] += len(line)
            return
        self.shown[0] += 1
        self.shown[1] += len(line)
        target = "stdout" if stream == "stdout" else "stderr"
        if self.mode == "end":
            self._later.setdefault(chunk, []).append((target, line))
        elif self._target is not None:
            self._target.write(target, line)

    def close(self) -> None:
        """The call ended: write what waited for the end, the counts, what was left out."""
        with self._lock:
            if self._closed or self._target is None:
                return
            self._closed = True
            for chunk in sorted(self._later):
                for stream, line in self._later[chunk]:
                    self._target.write(stream, line)
            self._later.clear()
            for text, times in self.warnings.items():
                if times > 1:
                    first = text.splitlines()[0]
                    self._target.write("stderr", f"{MARK} {times} times in this call: {first}\n")
            lines, size = self.left_out
            if lines:
                self._target.write(
                    "stderr",
                    f"{MARK} {lines:,} more lines of output ({size / 2**20:.1f} MiB) were not "
                    f"shown (output_lines={self.max_lines}, output_bytes={self.max_bytes})\n",
                )
