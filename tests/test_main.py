"""``python -m celerynb`` is the ``celerynb`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("argv", [["--help"], ["worker", "--help"], ["cluster", "--help"]])
def test_python_m_celerynb_is_the_command(argv: list[str]) -> None:
    module = _run(sys.executable, "-m", "celerynb", *argv)
    assert module.returncode == 0, module.stderr
    command = shutil.which("celerynb")
    if command is not None:
        assert module.stdout == _run(command, *argv).stdout


def test_python_m_celerynb_exits_with_the_commands_codes() -> None:
    done = _run(sys.executable, "-m", "celerynb", "no-such-command")
    assert done.returncode == 2
    assert "celerynb" in done.stderr
