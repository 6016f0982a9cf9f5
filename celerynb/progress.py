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

What every display shares (the ``Display`` protocol, the wording, the
throttling of notebook displays) is in :mod:`celerynb.display`, below this
module and :mod:`celerynb.widget`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .display import Display, NoDisplay, Progress, Throttled
from .widget import WidgetDisplay

if TYPE_CHECKING:
    from .call import Snapshot

__all__ = [
    "Display",
    "NoDisplay",
    "NotebookTextDisplay",
    "Progress",
    "TextDisplay",
    "has_ipywidgets",
    "in_kernel",
    "make_display",
]


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
class NotebookTextDisplay(Throttled):
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
        return WidgetDisplay(snap, cancel, capacity)
    if in_kernel():
        if has_ipywidgets():
            return WidgetDisplay(snap, cancel, capacity)
        return NotebookTextDisplay(snap, capacity)
    return TextDisplay(snap, capacity)
