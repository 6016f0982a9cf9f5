"""The ipywidgets progress bar (ipywidgets itself is imported only when a bar is made)."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .display import Display, Throttled

if TYPE_CHECKING:
    from .call import Snapshot

#: seconds between two widget refreshes (the supervisor may call ``update`` more often)
WIDGET_INTERVAL = 0.08

_BAR_STYLE = {"finished": "success", "cancelled": "warning"}  # anything else: danger


class WidgetDisplay(Throttled):
    """An ipywidgets bar: title, IntProgress over chunks, a Cancel button, and a label.

    Displayed at once with ``display()``, so it shows wherever the call is made
    in a cell. The button calls ``cancel()``.
    """

    interval = WIDGET_INTERVAL

    def __init__(
        self, snap: Snapshot, cancel: Callable[[], object] | None = None, capacity: int = 0
    ) -> None:
        super().__init__(snap, capacity)
        import ipywidgets as w
        from IPython.display import display

        self.cancel = cancel
        self.title = w.HTML(f"<b>{html.escape(snap.label)}</b>")
        self.bar = w.IntProgress(  # over items: their total is known from the start
            value=0,
            min=0,
            max=max(snap.n_items, 1),
            bar_style="info",
            layout=w.Layout(width="200px"),
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

    def _on_cancel(self, _button: object = None) -> None:
        self.button.disabled = True
        self.button.description = "Cancelling"
        if self.cancel is not None:
            self.cancel()

    def _label_html(self) -> str:
        p = self.progress
        text = html.escape(" · ".join(p.parts()))
        if p.state in ("running", "waiting"):
            return f"<span style='font-variant-numeric:tabular-nums'>{text}</span>"
        colour = {"finished": "success", "cancelled": "warn"}.get(p.state, "error")
        state = f"<b style='color:var(--jp-{colour}-color1)'>{html.escape(p.state)}</b>"
        extra = ""
        if p.state not in ("finished", "cancelled") and p.snap.message:
            extra = f"<br><span>{html.escape(p.snap.message)}</span>"
        return f"{state} · {text}{extra}"

    def _refresh(self) -> None:
        p = self.progress
        self.box.summary = p.summary()
        with self.bar.hold_sync():
            s = p.snap
            if s.known or p.state == "finished":
                self.bar.max, self.bar.value = max(s.n_items, 1), s.items_done
            elif s.hint:  # an open iterator that says how many chunks it gives
                self.bar.max, self.bar.value = s.hint, min(s.chunks_done, s.hint)
            self.bar.layout.visibility = "visible" if s.known or s.hint else "hidden"
            if p.state == "finished":
                self.bar.value = self.bar.max
            if p.state not in ("running", "waiting"):
                self.bar.bar_style = _BAR_STYLE.get(p.state, "danger")
        self.label.value = self._label_html()

    def _final(self) -> None:
        self.button.layout.display = "none"
        self.button.disabled = True
        if self.handle is not None:  # the clean text/plain becomes the final summary
            self.handle.update(self.box)


_subshell: str | None = None
_subshell_tried = False


def _route_clicks_to_subshell(widget: object) -> None:
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

            def _repr_mimebundle_(self, **kwargs: object) -> dict[str, Any]:
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
