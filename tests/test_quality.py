"""Static checks as part of the suite: ruff (lint + format) and mypy on the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        ("ruff", "check", "celerynb", "tests", "benchmarks", "notebooks"),
        ("ruff", "format", "--check", "celerynb", "tests", "benchmarks", "notebooks"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(args: tuple[str, ...]) -> None:
    if shutil.which("ruff") is None and not _has_module("ruff"):
        pytest.skip("ruff is not installed: pip install -e '.[test]'")
    done = _run(sys.executable, "-m", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr
