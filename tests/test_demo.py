"""The main job: ``celerynb demo`` runs to completion on the embedded cluster."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "celerynb.cli", "demo", "--rows", "20000"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "result equals the serial one" in done.stdout
    assert re.search(r"speedup:\s+[\d.]+x", done.stdout)
    assert re.search(r" (\d+)/\1 \[", done.stderr)  # the tqdm bar reached its total
