"""``MapFuture``: the handle of a running call (a ``concurrent.futures.Future``)."""

from __future__ import annotations

import concurrent.futures
import html
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .call import Call, CallState
from .errors import CallTimeout
from .progress import Display, NoDisplay
from .stats import frame
from .stats import timeline as draw_timeline
from .widget import mimebundle

if TYPE_CHECKING:
    from .cluster import Cluster
    from .runner import CallRunner


class MapFuture(concurrent.futures.Future[Any]):
    """The handle of a ``cmap_async`` call.

    ``result(timeout)`` waits and returns the joined result (or raises the
    chunk's error); ``cancel()``, ``done()``, ``as_completed()``,
    ``add_done_callback()``; ``workers`` says which worker ran each chunk.
    Works with ``concurrent.futures.wait`` and ``asyncio.wrap_future``.
    """

    def __init__(
        self,
        call: Call,
        cancel: Callable[[str], bool] | None = None,
        display: Display | None = None,
        runner: CallRunner | None = None,
    ) -> None:
        super().__init__()
        self._call = call
        self._runner = runner  # what runs it (for introspection)
        self._cancel = cancel or call.cancel
        self._display = display or NoDisplay()
        self.set_running_or_notify_cancel()
        call.on_end(self._ended)

    def _ended(self, call: Call) -> None:
        if call.error is None:
            self.set_result(None)  # the value is joined on the first result() (not here)
        else:
            self.set_exception(call.error)

    # -- facts ------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self._call.id

    @property
    def cluster(self) -> Cluster | None:
        """The cluster that runs the call (None for an empty input, which ran nowhere)."""
        return self._runner.cluster if self._runner is not None else None

    @property
    def label(self) -> str:
        return self._call.label

    @property
    def name(self) -> str | None:
        """A named call's name (None: unnamed)."""
        return self._runner.name if self._runner is not None else None

    def forget(self) -> None:
        """Delete everything of this call from its cluster: its results, its name; a
        running call is cancelled first. ``result()`` still works if it had joined."""
        self._cancel("the call was forgotten")
        if self._runner is not None:
            self._call.wait(10)
            self._runner.forget()

    @property
    def state(self) -> str:
        """'waiting', 'running', 'finished', 'failed', 'cancelled' or 'timed out'."""
        return self._call.state.value

    @property
    def n_chunks(self) -> int:
        return self._call.n_chunks

    @property
    def n_items(self) -> int:
        return self._call.n_items

    @property
    def workers(self) -> list[str | None]:
        """The worker that ran each chunk (None: not run yet)."""
        return [run.worker if run else None for run in self._call.runs]

    @property
    def elapsed(self) -> float:
        return self._call.snapshot().elapsed

    def stats(self) -> Any:
        """A pandas DataFrame, one row per chunk run so far: chunk, items, worker, pid,
        start, end (UTC), seconds, bytes_in, bytes_out (as stored), tries."""
        return frame(self._call)

    def timeline(self) -> Any:
        """A matplotlib Figure of the chunks per worker process over time (shown inline in
        a notebook; ``.savefig`` works). Needs matplotlib (``celerynb[plot]``)."""
        return draw_timeline(self._call)

    # -- waiting ----------------------------------------------------------------------------------
    def result(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` s (default: no limit) and return the joined result.

        Raises the chunk's :class:`ChunkError`, :class:`CancelledError`, or
        :class:`CallTimeout` (also a ``TimeoutError``; the call keeps running) when
        ``timeout`` passes.
        Interrupting the wait (Ctrl-C, the notebook's stop button) cancels the call.
        """
        try:
            if not self._call.wait(timeout):
                raise CallTimeout(
                    f"not finished after {timeout} s ({self._call.progress_text()}); it "
                    "keeps running: call .result() again or .cancel()"
                )
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self._call.value()

    def as_completed(
        self, ordered: bool = False, timeout: float | None = None
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(chunk number, chunk result)`` as chunks finish.

        ``ordered=True`` yields in chunk order instead. Raises the call's error
        (e.g. :class:`ChunkError`) when it comes, and :class:`CallTimeout` if no
        chunk arrives for ``timeout`` s (default: wait as long as it takes).
        Interrupting the loop (Ctrl-C) cancels the call.
        """
        if self._call.keep:
            raise TypeError("as_completed() streams chunk results; a reduce= call has only one")
        return self._stream(ordered, timeout)

    def _stream(self, ordered: bool, timeout: float | None) -> Iterator[tuple[int, Any]]:
        try:
            yield from self._call.stream(ordered, timeout)
        except KeyboardInterrupt:
            self.cancel()
            raise

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        """Revoke the outstanding chunks and stop running ones; False if already done."""
        return self._cancel(reason)

    def cancelled(self) -> bool:
        return self._call.state is CallState.CANCELLED

    # -- reprs ------------------------------------------------------------------------------------
    def _facts(self) -> tuple[str, str]:
        call, snap = self._call, self._call.snapshot()
        done = f"{snap.items_done}/{call.n_items} items, {snap.elapsed:.1f} s"
        return call.state.value, f"{call.progress_text()}, {done}"

    def __repr__(self) -> str:
        return "<MapFuture {}: {}>".format(*self._facts())

    def _repr_mimebundle_(self, **kwargs: object) -> dict[str, Any]:
        """In a notebook, a displayed handle is another live view of its progress widget."""
        bundle = mimebundle(self._display)
        if bundle is None:
            bundle = {"text/plain": repr(self), "text/html": self._repr_html_()}
        return bundle

    def _repr_html_(self) -> str:
        (state, facts), call = self._facts(), self._call
        colour = {CallState.FINISHED: "success", CallState.RUNNING: "brand"}.get(
            call.state, "error"
        )
        return (
            "<div style='color:var(--jp-ui-font-color1)'><b>MapFuture</b> "
            f"<span style='color:var(--jp-{colour}-color1)'>{html.escape(state)}</span>: "
            f"{html.escape(facts)}</div>"
        )
