"""Progress display for a running call: a widget, notebook text, tqdm, or nothing.

One polling loop (in the call's handle) feeds a display through ``update``
several times a second and ends it with ``close``; displays never talk to the
broker themselves. :func:`make_display` picks one for ``progress=``:

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

import html
import sys
import threading
import time
from typing import Any, Protocol

#: seconds between two widget refreshes (the poller may call ``update`` more often)
WIDGET_INTERVAL = 0.08
#: seconds between two refreshes of the text display in a notebook
TEXT_INTERVAL = 0.5

_BAR_STYLE = {"finished": "success", "cancelled": "warning"}  # anything else: danger


class Display(Protocol):
    """What the polling loop drives."""

    def update(self, chunks_done: int, items_done: int, busy: int) -> None: ...

    def close(self, state: str, message: str = "") -> None: ...


class NoDisplay:
    """``progress=False``."""

    def update(self, chunks_done: int, items_done: int, busy: int) -> None:
        pass

    def close(self, state: str, message: str = "") -> None:
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
    """The numbers of one call that every display shows, and their wording."""

    def __init__(self, future: Any, label: str = "cmap") -> None:
        self.label = label
        self._future = future
        self.n_items = int(future.n_items)
        self.started = float(getattr(future, "started", time.monotonic()))
        self.capacity = _capacity(future)
        self.chunks_done = 0
        self.items_done = 0
        self.busy = 0
        self.state = "running"
        self.message = ""
        self.ended: float | None = None

    @property
    def n_chunks(self) -> int:
        """Chunks of the call so far (adaptive chunking adds some after its probes)."""
        return int(self._future.n_chunks)

    def set(self, chunks_done: int, items_done: int, busy: int) -> None:
        self.chunks_done, self.items_done, self.busy = chunks_done, items_done, busy

    def end(self, state: str, message: str) -> None:
        self.state, self.message, self.ended = state, message, time.monotonic()

    @property
    def elapsed(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Items per second so far (0 before the first chunk is done)."""
        return self.items_done / self.elapsed if self.items_done and self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        rate = self.rate
        return (self.n_items - self.items_done) / rate if rate else None

    def header(self) -> str:
        """The text shown before the first update: stable, so nbval can compare it."""
        return f"{self.label}: {self.n_chunks:,} chunks, {self.n_items:,} items"

    def parts(self) -> list[str]:
        """The label's fields: chunks, items, elapsed, ETA, throughput, busy workers."""
        if self.state == "finished":
            return [
                f"{self.chunks_done:,}/{self.n_chunks:,} chunks",
                f"{self.n_items:,} items in {format_seconds(self.elapsed)}",
                f"{format_rate(self.rate)} items/s",
            ]
        eta = self.eta
        parts = [
            f"{self.chunks_done:,}/{self.n_chunks:,} chunks",
            f"{self.items_done:,}/{self.n_items:,} items",
            f"{format_seconds(self.elapsed)} elapsed",
        ]
        if self.state == "running":
            parts.append(f"ETA {format_seconds(eta)}" if eta is not None else "ETA -")
            parts.append(f"{format_rate(self.rate)} items/s")
            workers = f"/{self.capacity}" if self.capacity else ""
            parts.append(f"{self.busy}{workers} workers busy")
        return parts

    def summary(self) -> str:
        """One plain line: the state, the numbers, and (failed) the first line of the error."""
        if self.state == "running":
            return f"{self.label}: " + ", ".join(self.parts())
        text = f"{self.label} {self.state}: " + ", ".join(self.parts())
        if self.state not in ("finished", "cancelled") and self.message:
            text += f" - {self.message}"
        return text


def _capacity(future: Any) -> int:
    """The cluster's total pool size if it is known without asking the workers."""
    cluster = getattr(future, "cluster", None)
    try:
        return int(sum(cluster.workers(max_age=float("inf")).values())) if cluster else 0
    except Exception:
        return 0


# -- terminal -------------------------------------------------------------------
class TextDisplay:
    """A tqdm bar on stderr counting chunks, with items and busy workers as postfix."""

    def __init__(
        self, total_chunks: int, total_items: int, label: str = "cmap", future: Any = None
    ) -> None:
        from tqdm import tqdm

        self.future = future  # read for the live chunk count, if given
        self.total_items = total_items
        self.bar = tqdm(
            total=total_chunks, desc=label, unit="chunk", file=sys.stderr, dynamic_ncols=True
        )

    def update(self, chunks_done: int, items_done: int, busy: int) -> None:
        if self.future is not None:
            self.bar.total = self.future.n_chunks
        self.bar.n = chunks_done
        self.bar.set_postfix_str(
            f"{items_done}/{self.total_items} items, {busy} busy", refresh=False
        )
        self.bar.refresh()

    def close(self, state: str, message: str = "") -> None:
        if state != "finished":
            self.bar.set_description_str(f"{self.bar.desc} [{state}]", refresh=False)
            if message:
                self.bar.set_postfix_str(message[:120], refresh=False)
        self.bar.close()


# -- notebook -------------------------------------------------------------------
def _label(future: Any, label: str | None) -> str:
    """``label``, else the future's ``label`` attribute (e.g. ``cmap(score)``), else cmap."""
    found = label if label is not None else getattr(future, "label", None)
    return found if isinstance(found, str) and found else "cmap"


class _Throttled:
    """Common part of the notebook displays: numbers, throttling, one close."""

    interval = TEXT_INTERVAL

    def __init__(self, future: Any, label: str | None) -> None:
        label = _label(future, label)
        self.progress = Progress(future, label)
        self.updates = 0  # refreshes actually sent, for measuring the update rate
        self._last = 0.0
        self._lock = threading.Lock()

    def update(self, chunks_done: int, items_done: int, busy: int) -> None:
        with self._lock:
            if self.progress.state != "running":
                return
            self.progress.set(chunks_done, items_done, busy)
            now = time.monotonic()
            complete = chunks_done >= self.progress.n_chunks
            if now - self._last < self.interval and not complete:
                return
            self._last = now
            self.updates += 1
            self._refresh()

    def close(self, state: str, message: str = "") -> None:
        with self._lock:
            if self.progress.state != "running":
                return
            self.progress.end(state, message)
            self._refresh()
            self._final()

    def _refresh(self) -> None:
        raise NotImplementedError

    def _final(self) -> None:
        pass


class NotebookTextDisplay(_Throttled):
    """One ``text/plain`` line, updated in place: a kernel without ipywidgets."""

    def __init__(self, future: Any, label: str | None = None) -> None:
        super().__init__(future, label)
        from IPython.display import display

        self.handle = display({"text/plain": self.progress.header()}, raw=True, display_id=True)

    def _refresh(self) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": self.progress.summary()}, raw=True)


class WidgetDisplay(_Throttled):
    """An ipywidgets bar: title, IntProgress over chunks, a Cancel button, and a label.

    Displayed at once with ``display()``, so it shows wherever the call is made
    in a cell. The button calls ``future.cancel()``.
    """

    interval = WIDGET_INTERVAL

    def __init__(self, future: Any, label: str | None = None) -> None:
        super().__init__(future, label)
        import ipywidgets as w
        from IPython.display import display

        self.future = future
        n = max(self.progress.n_chunks, 1)
        self.title = w.HTML(f"<b>{html.escape(self.progress.label)}</b>")
        self.bar = w.IntProgress(
            value=0, min=0, max=n, bar_style="info", layout=w.Layout(width="200px")
        )
        self.label = w.HTML(self._label_html())
        self.button = w.Button(
            description="Cancel",
            icon="stop",
            tooltip="Revoke the outstanding chunks and stop the running ones",
            layout=w.Layout(width="auto"),
        )
        self.button.on_click(self._on_cancel)
        _route_clicks_to_subshell(self.button)
        self.box = _box_class()(
            [self.title, self.bar, self.button, self.label],
            layout=w.Layout(align_items="center", flex_flow="row wrap"),
        )
        self.box.summary = self.progress.header()
        self.handle = display(self.box, display_id=True)

    def _on_cancel(self, _button: Any = None) -> None:
        self.button.disabled = True
        self.button.description = "Cancelling"
        self.future.cancel()

    def _label_html(self) -> str:
        p = self.progress
        text = html.escape(" · ".join(p.parts()))
        if p.state == "running":
            return f"<span style='font-variant-numeric:tabular-nums'>{text}</span>"
        colour = {"finished": "success", "cancelled": "warn"}.get(p.state, "error")
        state = f"<b style='color:var(--jp-{colour}-color1)'>{html.escape(p.state)}</b>"
        extra = ""
        if p.state not in ("finished", "cancelled") and p.message:
            extra = f"<br><span>{html.escape(p.message)}</span>"
        return f"{state} · {text}{extra}"

    def _refresh(self) -> None:
        p = self.progress
        self.box.summary = p.summary()
        with self.bar.hold_sync():
            self.bar.max = max(p.n_chunks, 1)
            self.bar.value = p.n_chunks if p.state == "finished" else p.chunks_done
            if p.state != "running":
                self.bar.bar_style = _BAR_STYLE.get(p.state, "danger")
        self.label.value = self._label_html()

    def _final(self) -> None:
        self.button.layout.display = "none"
        self.button.disabled = True
        if self.handle is not None:  # the clean text/plain becomes the final summary
            self.handle.update(self.box)


_subshell: str | None = None
_subshell_tried = False


def _route_clicks_to_subshell(widget: Any) -> None:
    """Let ``widget``'s clicks be handled while the kernel's main shell is busy.

    A blocking ``cmap`` keeps the main shell busy, so a click would wait for the
    call to end. In ipykernel >= 7, comm messages can be routed to a *subshell*
    (its own thread): one is created per kernel and the widget's comm routed to
    it. Elsewhere nothing changes (the button then acts once the cell ends,
    which is what ``cmap_async`` needs anyway).
    """
    global _subshell, _subshell_tried
    if not _subshell_tried:
        _subshell_tried = True
        try:
            from IPython import get_ipython

            kernel = get_ipython().kernel
            if kernel._supports_kernel_subshells:
                manager = kernel.shell_channel_thread.manager
                created: list[str] = []
                done = threading.Event()

                def create() -> None:  # runs in the shell channel thread
                    try:
                        created.append(manager._create_subshell())
                    finally:
                        done.set()

                manager._shell_channel_io_loop.add_callback(create)
                if done.wait(5) and created:
                    _subshell = created[0]
        except Exception:  # not ipykernel >= 7, or its internals changed
            _subshell = None
    comm = getattr(widget, "comm", None)
    if _subshell is not None and comm is not None and hasattr(comm, "_reply_subshell_for"):
        comm._reply_subshell_id = _subshell


def _box_class() -> type[Any]:
    """An HBox whose ``text/plain`` is a summary line instead of ``HBox(children=...``."""
    global _BOX
    if _BOX is None:
        import ipywidgets as w

        class ProgressBox(w.HBox):  # type: ignore[misc]
            """The progress widget's container."""

            summary = "cmap"

            def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
                data: dict[str, Any] = super()._repr_mimebundle_(**kwargs)
                data["text/plain"] = self.summary
                return data

            def __repr__(self) -> str:
                return self.summary

        _BOX = ProgressBox
    return _BOX


_BOX: type[Any] | None = None


def mimebundle(display: Display) -> dict[str, Any] | None:
    """Another live view of ``display``'s widget (for a handle's ``_repr_mimebundle_``).

    None unless ``display`` is a :class:`WidgetDisplay`.
    """
    if isinstance(display, WidgetDisplay):
        bundle: dict[str, Any] = display.box._repr_mimebundle_()
        return bundle
    return None


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


def make_display(choice: Any, future: Any) -> Display:
    """The display for ``progress=choice`` of a call's ``future`` (a MapFuture).

    ``True`` / ``"auto"`` (widget in a kernel with ipywidgets, notebook text in
    a kernel without, else tqdm), ``"widget"``, ``"text"``, or ``False`` /
    ``None``; anything else raises ValueError.
    """
    if choice is False or choice is None:
        return NoDisplay()
    if not isinstance(choice, bool | str) or choice not in (True, "auto", "widget", "text"):
        raise ValueError(f"progress must be one of {_CHOICES}; got {choice!r}")
    if choice == "text":
        return TextDisplay(future.n_chunks, future.n_items, _label(future, None), future)
    if choice == "widget":
        if not has_ipywidgets():
            raise ImportError(
                "progress='widget' needs ipywidgets: pip install 'celerynb[notebook]' "
                "(or pass progress='text')"
            )
        return WidgetDisplay(future)
    if in_kernel():
        return WidgetDisplay(future) if has_ipywidgets() else NotebookTextDisplay(future)
    return TextDisplay(future.n_chunks, future.n_items, _label(future, None), future)
