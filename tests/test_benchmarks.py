"""The benchmark harness: its quick mode runs end to end (a smoke check, no timing assertions)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from celerynb import demo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))

from benchmarks import peers, workloads  # noqa: E402


def test_workloads_match_the_demo() -> None:
    """The copied W1 code is celerynb.demo's."""
    pd.testing.assert_frame_equal(workloads.make_frame(300), demo.make_frame(300))
    frame = workloads.make_frame(300)
    pd.testing.assert_frame_equal(workloads.score_block(frame), demo.score_block(frame))


@pytest.mark.parametrize("n_chunks", [1, 3, 7, 500])
def test_split_and_join_round_trip(n_chunks: int) -> None:
    frame = workloads.make_frame(101)
    parts = workloads.split(frame, n_chunks)
    assert len(parts) == min(n_chunks, 101)
    pd.testing.assert_frame_equal(workloads.join(parts), frame)
    assert workloads.join(workloads.split(list(range(5)), 2)) == list(range(5))


def _leftovers(pid: int) -> list[str]:
    """Command lines of workers the harness (``pid``) started that are still running."""
    marks = (f"bench-raw-{pid}@", f"celerynb-local-{pid}-")
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append(cmdline)
    return found


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quick_mode_writes_a_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stdout, stderr = proc.communicate(timeout=840)
    assert proc.returncode == 0, stderr[-3000:]
    text = out.read_text()
    assert "| workload | candidate | median |" in text
    for key in ("W1 CPU-bound", "W2 overhead", "W3 data-heavy", "W4 latency", "start-up"):
        assert key in text
    assert "celerynb cmap" in text and "serial pandas" in text
    assert "## Machine" in text and "| pandas |" in text
    # pandarallel's documented workloads: their own table, a row per workload, each measured
    section = text.split("## pandarallel's documented workloads\n\n", 1)[1].split("\n## ", 1)[0]
    assert "| workload | serial pandas | celerynb cmap | pandarallel | joblib | dask |" in section
    for key, spec in peers.SPECS.items():
        row = next((ln for ln in section.splitlines() if ln.startswith(f"| {spec.title} (")), None)
        assert row is not None, f"no row for {key} in:\n{section}"
        assert row.split(" | ")[1][0].isdigit(), row  # serial pandas was timed
    assert "| **geometric mean of time / serial**" in section
    # celerynb itself ran every workload and matched serial pandas
    assert "celerynb cmap: failed" not in section and "celerynb cmap: RESULT" not in section
    assert "| workload | candidate | median |" in stdout
    if sys.platform.startswith("linux"):
        assert _leftovers(proc.pid) == []
