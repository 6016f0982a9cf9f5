"""A short chaos soak (``benchmarks/soak.py``) on each broker: workers killed, restarted
under their name, terminated, calls cancelled; every call ends with the serial result
or a CelerynbError, a chunk runs again only when a worker died, nothing is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_scaleout import BROKERS

pytestmark = pytest.mark.slow

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.mark.parametrize("broker", BROKERS)
def test_a_short_chaos_soak_gives_serial_results_and_leaves_nothing(broker: str) -> None:
    done = subprocess.run(
        [sys.executable, str(SOAK), "--minutes", "1", "--baseline-seconds", "10",
         "--broker", broker],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "| wrong results | 0 |" in done.stdout
