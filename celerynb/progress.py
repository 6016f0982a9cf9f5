"""Progress display for a running call: terminal (tqdm), or nothing.

One polling loop (in the call's handle) feeds a display through ``update``;
displays never talk to the broker themselves.
"""

from __future__ import annotations

import sys
from typing import Any, Protocol


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


class TextDisplay:
    """A tqdm bar on stderr counting chunks, with items and busy workers as postfix."""

    def __init__(self, total_chunks: int, total_items: int, label: str = "cmap") -> None:
        from tqdm import tqdm

        self.total_items = total_items
        self.bar = tqdm(
            total=total_chunks, desc=label, unit="chunk", file=sys.stderr, dynamic_ncols=True
        )

    def update(self, chunks_done: int, items_done: int, busy: int) -> None:
        self.bar.n = chunks_done
        self.bar.set_postfix_str(f"{items_done}/{self.total_items} items, {busy} busy", refresh=False)
        self.bar.refresh()

    def close(self, state: str, message: str = "") -> None:
        if state != "finished":
            self.bar.set_description_str(f"{self.bar.desc} [{state}]", refresh=False)
        self.bar.close()


def make_display(choice: Any, future: Any) -> Display:
    """The display for ``progress=choice`` of a call's ``future`` (a MapFuture).

    True / "auto", "text", or False / None.
    """
    if choice is False or choice is None:
        return NoDisplay()
    if choice in (True, "auto", "text"):
        return TextDisplay(future.n_chunks, future.n_items)
    raise ValueError(f"progress must be True, False, 'auto' or 'text', got {choice!r}")
