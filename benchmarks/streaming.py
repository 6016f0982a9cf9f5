"""Data bigger than memory, side by side: a CSV read in chunks and aggregated per chunk.

    python benchmarks/streaming.py [--quick] [--sizes 1,4] [--unit-mb 1024]

A generated CSV of ``unit`` MB (1x) and 4x that; each candidate runs in a fresh
process that measures its own peak RSS (the driver's: workers are separate
processes) while it computes ``value`` sums and counts per ``key``:

- serial pandas: a ``read_csv(chunksize=)`` loop that adds up each chunk's aggregate;
- celerynb: ``cmap(aggregate, read_csv(chunksize=), reduce=combine)`` on a
  ``LocalCluster`` (the driver reads and ships the chunks; the workers aggregate
  and reduce as they go);
- celerynb read_csv: ``cmap(aggregate, celerynb.read_csv(path, blocksize=), reduce=combine)``
  (the workers read their own byte ranges of the file; the driver sees descriptors only);
- dask.dataframe: ``read_csv(blocksize=)`` + ``map_partitions(aggregate)``, combined,
  on a ``distributed.LocalCluster`` of as many worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = {
    "serial": "serial pandas chunked loop",
    "cmap": "celerynb cmap (iterator, reduce=)",
    "read_csv": "celerynb read_csv (workers read, reduce=)",
    "dask": "dask.dataframe read_csv + map_partitions",
}
CHUNK_ROWS = 1_000_000
BLOCKSIZE = "64MB"  # celerynb.read_csv's and dask's parts

CHILD = r"""
import json, sys, threading, time
import pandas as pd, psutil
name, path, workers, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
blocksize = sys.argv[5]
peak, stop = [0], threading.Event()
me = psutil.Process()
def watch():
    while not stop.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.01)

def aggregate(chunk):
    return chunk.groupby("key")["value"].agg(["sum", "count"])

def combine(parts):
    return pd.concat(parts).groupby(level=0).sum()

if name in ("cmap", "read_csv"):
    import celerynb
    cluster = celerynb.LocalCluster(workers)
    celerynb.cmap(len, [1], cluster=cluster, progress=False)
elif name == "dask":
    import dask.dataframe as dd
    from distributed import Client, LocalCluster
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True)
    client = Client(cluster)
base = me.memory_info().rss
threading.Thread(target=watch, daemon=True).start()
started = time.perf_counter()
if name == "serial":
    total = None
    for chunk in pd.read_csv(path, chunksize=rows):
        part = aggregate(chunk)
        total = part if total is None else combine([total, part])
elif name == "cmap":
    with pd.read_csv(path, chunksize=rows) as reader:
        total = celerynb.cmap(aggregate, reader, reduce=combine, cluster=cluster, progress=False)
elif name == "read_csv":
    source = celerynb.read_csv(path, blocksize=blocksize)
    total = celerynb.cmap(aggregate, source, reduce=combine, cluster=cluster, progress=False)
else:
    df = dd.read_csv(path, blocksize=blocksize)
    meta = pd.DataFrame({"sum": pd.Series(dtype="float64"), "count": pd.Series(dtype="int64")})
    total = combine([df.map_partitions(aggregate, meta=meta).compute()])
seconds = time.perf_counter() - started
stop.set()
print("RESULT " + json.dumps({
    "seconds": seconds, "peak_mb": (peak[0] - base) / 2**20,
    "check": float(total["sum"].sum()), "rows": int(total["count"].sum()),
}), flush=True)
"""


def make_csv(path: Path, megabytes: int) -> int:
    """A CSV of about ``megabytes`` MB (id, key, value, label); its rows."""
    import pandas as pd

    rng, rows, block = np.random.default_rng(0), 0, 1_000_000
    with open(path, "w") as out:
        out.write("id,key,value,label\n")
        while out.tell() < megabytes * 2**20:
            frame = pd.DataFrame(
                {
                    "id": np.arange(rows, rows + block),
                    "key": rng.integers(0, 1000, block),
                    "value": rng.random(block).round(6),
                    "label": rng.choice(np.array(["alpha", "beta", "gamma", "delta"]), block),
                }
            )
            frame.to_csv(out, header=False, index=False)
            rows += block
    return rows


def run_one(name: str, path: Path, workers: int, rows: int, timeout: float) -> dict[str, float]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    done = subprocess.run(
        [sys.executable, "-c", CHILD, name, str(path), str(workers), str(rows), BLOCKSIZE],
        env=env, cwd=path.parent, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError((done.stderr.strip().splitlines() or ["no output"])[-1][:200])
    result: dict[str, float] = json.loads(lines[-1][len("RESULT ") :])
    return result


def run(
    quick: bool, workers: int, sizes: tuple[int, ...] = (1, 4), unit_mb: int = 1024,
    repeats: int = 1, log: object = print,
) -> dict[str, dict[str, list[dict[str, float]]]]:  # fmt: skip
    """size label -> candidate -> samples (seconds, peak_mb, rows)."""
    unit = 16 if quick else unit_mb
    rows_per_chunk = 100_000 if quick else CHUNK_ROWS
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="celerynb-stream-bench-") as tmp:
        for size in sizes:
            path = Path(tmp) / f"data-{size}x.csv"
            started = time.perf_counter()
            rows = make_csv(path, unit * size)
            real_mb = path.stat().st_size / 2**20
            label = f"{size}x ({real_mb:,.0f} MB, {rows:,} rows)"
            log(f"  streaming: wrote {label} in {time.perf_counter() - started:.0f} s")  # type: ignore[operator]
            results[label] = {}
            checks = set()
            for r in range(repeats):
                for name in CANDIDATES:
                    try:
                        got = run_one(name, path, workers, rows_per_chunk, 1800)
                    except Exception as exc:
                        log(f"  streaming {label} {name}: FAILED {exc}")  # type: ignore[operator]
                        continue
                    checks.add((round(got["check"], 3), int(got["rows"])))
                    results[label].setdefault(name, []).append(got)
                    log(  # type: ignore[operator]
                        f"  streaming {size}x repeat {r + 1} {name}: {got['seconds']:.1f} s, "
                        f"driver peak +{got['peak_mb']:.0f} MB"
                    )
            if len(checks) > 1:
                log(f"  streaming {label}: candidates disagree: {checks}")  # type: ignore[operator]
            path.unlink()
    return results


def table(results: dict[str, dict[str, list[dict[str, float]]]]) -> str:
    lines = [
        "A generated CSV, aggregated per chunk (`value` sum and count per `key`), combined; "
        "each candidate in a fresh process; driver peak RSS above its start.\n",
        "| size | candidate | time | vs serial | driver peak RSS |",
        "|---|---|---:|---:|---:|",
    ]
    for label, by_name in results.items():
        serial = by_name.get("serial")
        base = statistics.median(s["seconds"] for s in serial) if serial else None
        for i, (name, title) in enumerate(CANDIDATES.items()):
            samples = by_name.get(name) or []
            size = f"**{label}**" if i == 0 else ""
            if not samples:
                lines.append(f"| {size} | {title} | — | — | — |")
                continue
            secs = statistics.median(s["seconds"] for s in samples)
            peak = statistics.median(s["peak_mb"] for s in samples)
            ratio = f"{secs / base:.2f}x" if base else "—"
            lines.append(f"| {size} | {title} | {secs:.1f} s | {ratio} | +{peak:,.0f} MB |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/streaming.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--unit-mb", type=int, default=1024)
    parser.add_argument("--sizes", default="1,4", help="multiples of --unit-mb, e.g. 1,4")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    print(table(run(args.quick, args.workers, sizes, unit_mb=args.unit_mb)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
