"""Progress display for a running call: a widget, notebook text, tqdm, or nothing.

The cluster's supervisor feeds a display with :class:`~celerynb.call.Snapshot`
objects through ``update`` several times a second and ends it with ``close``;
displays never talk to the broker, and know of the call only its snapshots
and a cancel callable. :func:`make_display` picks one for ``progress=``:

- ``True`` / ``"auto"``: an ipywidgets bar in a Jupyter kernel that has
  ipywidgets, a one-line text display in a kernel without it, else tqdm;
- ``"widget"``: the ipywidgets bar (ImportError naming the fix without it);
- ``"text"``: tqdm on stderr;
- ``False`` / ``None``: nothing.

Every notebook display carries a clean ``text/plain`` line (never a raw widget
repr such as ``HBox(children=...``), which is what ``nbconvert --execute``,
nbval and front ends without widget support show; it becomes the call's final
summary when the call ends.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
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


# -- terminal -------------------------------------------------------------------
class TextDisplay:
    """A tqdm bar on stderr counting items (their total is known from the start), with
    chunks and busy workers as postfix."""

    def __init__(self, snap: Snapshot, capacity: int = 0) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=snap.n_items, desc=snap.label, unit="item", file=sys.stderr, dynamic_ncols=True
        )
        self._closed = False

    def _postfix(self, snap: Snapshot) -> str:
        if snap.state.value == "waiting":
            return Progress(snap).parts()[0]
        total = f"/{snap.n_chunks}" if snap.known else ""
        return f"{snap.chunks_done}{total} chunks, {snap.busy} busy"

    def _count(self, snap: Snapshot) -> None:
        """Items over their total; an open iterator's chunks over its length hint; or a
        plain count (no percentage) when nothing says how many will come."""
        if snap.known:
            self.bar.unit, self.bar.total, self.bar.n = "item", snap.n_items, snap.items_done
        elif snap.hint:
            self.bar.unit, self.bar.total, self.bar.n = "chunk", snap.hint, snap.chunks_done
        else:
            self.bar.unit, self.bar.total, self.bar.n = "item", None, snap.items_done
        self.bar.set_postfix_str(self._postfix(snap), refresh=False)

    def update(self, snap: Snapshot) -> None:
        if self._closed:
            return
        self._count(snap)
        self.bar.refresh()

    def close(self, snap: Snapshot) -> None:
        if self._closed:
            return
        self._closed = True
        self._count(snap)
        state = snap.state.value
        if state != "finished":
            self.bar.set_description_str(f"{self.bar.desc} [{state}]", refresh=False)
            if snap.message:
                self.bar.set_postfix_str(snap.message[:120], refresh=False)
        self.bar.close()


# -- notebook -------------------------------------------------------------------
class _Throttled:
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


class NotebookTextDisplay(_Throttled):
    """One ``text/plain`` line, updated in place: a kernel without ipywidgets."""

    def __init__(self, snap: Snapshot, capacity: int = 0) -> None:
        super().__init__(snap, capacity)
        from IPython.display import display

        self.handle = display({"text/plain": self.progress.header()}, raw=True, display_id=True)

    def _refresh(self) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": self.progress.summary()}, raw=True)


# -- choice ----------------------------------------------------------------------
def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (not a terminal IPython or a script)."""
    if "IPython" not in sys.modules:
        return False
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def has_ipywidgets() -> bool:
    """Whether ipywidgets imports."""
    try:
        import ipywidgets  # noqa: F401
    except Exception:
        return False
    return True


_CHOICES = "True, False, None, 'auto', 'widget' or 'text'"


def make_display(
    choice: object,
    snap: Snapshot,
    cancel: Callable[[], object] | None = None,
    capacity: int = 0,
) -> Display:
    """The display for ``progress=choice`` of a call whose first snapshot is ``snap``.

    ``True`` / ``"auto"`` (widget in a kernel with ipywidgets, notebook text in
    a kernel without, else tqdm), ``"widget"``, ``"text"``, or ``False`` /
    ``None``; anything else raises ValueError. ``cancel``: what the widget's
    Cancel button calls.
    """
    if choice is False or choice is None:
        return NoDisplay()
    if not isinstance(choice, bool | str) or choice not in (True, "auto", "widget", "text"):
        raise ValueError(f"progress must be one of {_CHOICES}; got {choice!r}")
    if choice == "text":
        return TextDisplay(snap, capacity)
    if choice == "widget":
        if not has_ipywidgets():
            raise ImportError(
                "progress='widget' needs ipywidgets: pip install 'celerynb[notebook]' "
                "(or pass progress='text')"
            )
        from .widget import WidgetDisplay

        return WidgetDisplay(snap, cancel, capacity)
    if in_kernel():
        if has_ipywidgets():
            from .widget import WidgetDisplay

            return WidgetDisplay(snap, cancel, capacity)
        return NotebookTextDisplay(snap, capacity)
    return TextDisplay(snap, capacity)
