"""nbval wiring for the tutorial notebooks.

The notebooks are the tutorial *and* a regression suite: ``python -m pytest
--nbval notebooks/ --nbval-sanitize-with notebooks/sanitize.cfg`` runs each in
a fresh kernel and compares every cell's output with the stored one.

Notebook 06 needs an existing Redis (``CELERYNB_TEST_REDIS``, default
``redis://127.0.0.1:6379/0``, as for the rest of the suite): without one its
cells are skipped, as the other "existing deployment" tests are.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
SYSTEM_REDIS = os.environ.get("CELERYNB_TEST_REDIS", "redis://127.0.0.1:6379/0")
NEEDS_REDIS = {"06-scaling-out.ipynb"}


def pytest_configure(config: pytest.Config) -> None:
    # the notebooks' kernels inherit this: notebook 06 uses the suite's Redis
    os.environ.setdefault("CELERYNB_TUTORIAL_BROKER", SYSTEM_REDIS)
    # without the sanitizer, timings would fail the comparison: default to ours
    option = config.option
    if getattr(option, "nbval", False) and not getattr(option, "nbval_sanitize_with", None):
        option.nbval_sanitize_with = str(HERE / "sanitize.cfg")


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(SYSTEM_REDIS, socket_connect_timeout=1).ping())
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    needs = [i for i in items if Path(str(i.fspath)).name in NEEDS_REDIS]
    if needs and not _redis_up():
        skip = pytest.mark.skip(reason=f"no Redis at {SYSTEM_REDIS} (set CELERYNB_TEST_REDIS)")
        for item in needs:
            item.add_marker(skip)
