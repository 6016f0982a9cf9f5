"""One candidate from cold, in a fresh process: start-up times, then W3's driver peak memory.

``python -m benchmarks.child NAME --workers N --w2-rows R --w3-rows R`` prints
one JSON line: ``ready`` (s from before the library's import to workers
ready; null for candidates that start workers lazily), ``first`` (s to the
first pandas result, W2's cheap function on an R-row frame), ``peak_mb`` (the
driver's peak RSS during one W3 call, above its RSS just before the call,
which already holds the data) and ``data_mb`` (MB = 10^6 bytes).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

from . import workloads
from .candidates import BY_NAME, Workload


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(name: str, workers: int, w2_rows: int, w3_rows: int) -> dict[str, object]:
    """Cold start-up of candidate ``name``, then its driver memory on W3."""
    frame = workloads.make_frame(w2_rows, seed=1)
    w2 = Workload("W2", "", workloads.cheap, frame, meta=workloads.cheap(frame.iloc[:0]))
    w2.pandarallel = lambda d: d.parallel_apply(workloads.cheap_row, axis=1, raw=True)
    candidate = BY_NAME[name](workers)
    out: dict[str, object] = {"name": name}
    try:
        t0 = time.perf_counter()
        candidate.start()
        ready = time.perf_counter() - t0
        candidate.run(w2, frame)
        out["first"] = time.perf_counter() - t0
        out["ready"] = None if candidate.lazy else ready
        candidate.after()

        wide = workloads.make_wide(w3_rows)
        w3 = Workload("W3", "", workloads.double, wide, meta=wide.iloc[:0])
        w3.pandarallel = lambda d: d.parallel_apply(workloads.double)
        candidate.run(w3, wide.iloc[: max(1, w3_rows // 100)])  # warm-up, small
        candidate.after()
        gc.collect()
        base_kb = _status_kb("VmRSS")
        if not _reset_peak():
            out["peak_note"] = "no /proc/self/clear_refs: peak includes earlier allocations"
        result = candidate.run(w3, wide)
        peak_kb = _status_kb("VmHWM")
        if name == "serial" or isinstance(result, pd.DataFrame):
            out["verified"] = bool(result.shape == wide.shape)
        del result
        candidate.after()
        out["peak_mb"] = max(0, peak_kb - base_kb) * 1024 / 1e6
        out["data_mb"] = wide.memory_usage(index=False).sum() / 1e6
    finally:
        candidate.close()
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, measure, print one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("name", choices=sorted(BY_NAME))
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--w2-rows", type=int, required=True)
    parser.add_argument("--w3-rows", type=int, required=True)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="Sending large graph")
    result = measure(args.name, args.workers, args.w2_rows, args.w3_rows)
    sys.stdout.write("RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
