"""pytest wiring for the tutorial notebooks: each one is a strict nbval test.

The notebooks are the tutorial *and* a regression suite. Every ``*.ipynb`` in
this folder is run in a fresh kernel and each cell's output is compared with
the stored one (nbval, strict), after the regexes of ``sanitize.cfg``:

- ``python -m pytest`` (with ``notebooks`` in ``testpaths``) or
  ``python -m pytest notebooks/`` collects them without ``--nbval``;
- ``python -m pytest --nbval notebooks/ --nbval-sanitize-with
  notebooks/sanitize.cfg`` does the same through nbval's own option.

The sanitizer defaults to ``sanitize.cfg`` here and the kernel to this
interpreter (``--nbval-current-env``) unless given on the command line.
Notebook 06 needs an existing Redis (``CELERYNB_TEST_REDIS``, default
``redis://127.0.0.1:6379/0``, as for the rest of the suite); without one its
cells are skipped, like the suite's other "existing deployment" tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SYSTEM_REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")
NEEDS_REDIS = {"06-scaling-out.ipynb"}


def pytest_configure(config: pytest.Config) -> None:
    # the notebooks' kernels inherit this: notebook 06 uses the suite's Redis
    os.environ.setdefault("CELERYNB_TUTORIAL_BROKER", SYSTEM_REDIS)
    option = config.option
    if not getattr(option, "nbval_sanitize_with", None):
        option.nbval_sanitize_with = str(HERE / "sanitize.cfg")
    if not getattr(option, "nbval_kernel_name", None):
        option.nbval_current_env = True


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> Any:
    """Collect this folder's notebooks even without ``--nbval`` (nbval does it with it)."""
    option = parent.config.option
    if file_path.suffix != ".ipynb" or file_path.parent != HERE:
        return None
    if getattr(option, "nbval", False) or getattr(option, "nbval_lax", False):
        return None  # nbval's own hook collects it
    from nbval.plugin import IPyNbFile

    return IPyNbFile.from_parent(parent, path=file_path)


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs = [i for i in items if Path(str(i.path)).name in NEEDS_REDIS]
    if needs and not _redis_up():
        skip = pytest.mark.skip(reason=f"no Redis at {SYSTEM_REDIS} (set CELERYNB_TEST_REDIS)")
        for item in needs:
            item.add_marker(skip)
