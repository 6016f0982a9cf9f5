"""What every progress display shares: the ``Display`` protocol the supervisor drives, the
wording of a snapshot (``Progress``) and the throttled base of the notebook displays.

Below both :mod:`celerynb.progress` (the text displays and the choice of display) and
:mod:`celerynb.widget` (the ipywidgets bar), so neither imports the other to share it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .call import Snapshot

#: seconds between two refreshes of the text display in a notebook
TEXT_INTERVAL = 0.5


class Display(Protocol):
    """What the supervisor drives."""

    def update(self, snap: Snapshot) -> None: ...

    def close(self, snap: Snapshot) -> None: ...


class NoDisplay:
    """``progress=False``."""

    def update(self, snap: Snapshot) -> None:
        pass

    def close(self, snap: Snapshot) -> None:
        pass


# -- formatting ------------------------------------------------------------------
def format_seconds(seconds: float) -> str:
    """``0.42 s``, ``4.2 s``, ``42 s``, ``4:02``, ``1:04:02``."""
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}:{secs:02d}"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_rate(per_second: float) -> str:
    """``950``, ``9.5k``, ``1.2M`` (three significant digits at most)."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_second >= limit:
            return f"{per_second / limit:.3g}{suffix}"
    return f"{per_second:.3g}"


class Progress:
    """The wording of one call's latest snapshot; ``capacity``: the cluster's pool size."""

    def __init__(self, snap: Snapshot, capacity: int = 0) -> None:
        self.snap = snap
        self.capacity = capacity

    @property
    def state(self) -> str:
        return self.snap.state.value

    @property
    def rate(self) -> float:
        """Items per second so far (0 before the first chunk is done)."""
        s = self.snap
        return s.items_done / s.elapsed if s.items_done and s.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        s, rate = self.snap, self.rate
        if s.known:
            return (s.n_items - s.items_done) / rate if rate else None
        if s.hint and s.chunks_done:  # an iterator with a length hint: by chunks
            return s.elapsed * (s.hint - s.chunks_done) / s.chunks_done
        return None

    def header(self) -> str:
        """The text shown before the first update: stable, so nbval can compare it."""
        s = self.snap
        if not s.known:
            return f"{s.label}: an iterator of chunks" + (f" ({s.hint:,})" if s.hint else "")
        return f"{s.label}: {s.n_chunks:,} chunks, {s.n_items:,} items"

    def parts(self) -> list[str]:
        """The label's fields: chunks, items, elapsed, ETA, throughput, busy workers."""
        s = self.snap
        total = f"/{s.n_chunks:,}" if s.known else (f"/{s.hint:,}" if s.hint else "")
        chunks = f"{s.chunks_done:,}{total} chunks"
        if self.state == "finished":
            return [
                chunks,
                f"{s.n_items:,} items in {format_seconds(s.elapsed)}",
                f"{format_rate(self.rate)} items/s",
            ]
        if self.state == "waiting":
            return [f"{s.message} ({format_seconds(s.elapsed)})"]
        items = f"{s.items_done:,}/{s.n_items:,} items" if s.known else f"{s.items_done:,} items"
        parts = [chunks, items, f"{format_seconds(s.elapsed)} elapsed"]
        if self.state == "running":
            eta = self.eta
            if eta is not None or s.known or s.hint:  # no made-up ETA for an open iterator
                parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA -")
            parts.append(f"{format_rate(self.rate)} items/s")
            workers = f"/{self.capacity}" if self.capacity else ""
            parts.append(f"{s.busy}{workers} workers busy")
        return parts

    def summary(self) -> str:
        """One plain line: the state, the numbers, and (failed) the first line of the error."""
        if self.state in ("running", "waiting"):
            return f"{self.snap.label}: " + ", ".join(self.parts())
        text = f"{self.snap.label} {self.state}: " + ", ".join(self.parts())
        if self.state not in ("finished", "cancelled") and self.snap.message:
            text += f" - {self.snap.message}"
        return text


# -- notebook base ----------------------------------------------------------------
class Throttled:
    """Common part of the notebook displays: wording, throttling, one close."""

    interval = TEXT_INTERVAL

    def __init__(self, snap: Snapshot, capacity: int) -> None:
        self.progress = Progress(snap, capacity)
        self.updates = 0  # refreshes actually sent, for measuring the update rate
        self._last = 0.0
        self._closed = False
        self._lock = threading.Lock()

    def update(self, snap: Snapshot) -> None:
        with self._lock:
            if self._closed:
                return
            self.progress.snap = snap
            now = time.monotonic()
            complete = snap.chunks_done >= snap.n_chunks
            if now - self._last < self.interval and not complete:
                return
            self._last = now
            self.updates += 1
            self._refresh()

    def close(self, snap: Snapshot) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.progress.snap = snap
            self._refresh()
            self._final()

    def _refresh(self) -> None:
        raise NotImplementedError

    def _final(self) -> None:
        pass
