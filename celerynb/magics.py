"""IPython extension: the ``%celerynb`` line magic."""

from __future__ import annotations

from typing import Any


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics; nothing is started."""


def unload_ipython_extension(ipython: Any) -> None:
    """Stop an embedded cluster the magics started."""
