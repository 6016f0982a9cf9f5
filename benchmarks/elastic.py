"""Elastic scale-out, side by side: one worker, two from the start, one plus one that joins.

    python benchmarks/elastic.py [--quick] [--repeats K]

Each scenario runs the same call (``N`` chunks that each sleep ``CHUNK`` s:
``N x CHUNK`` s of work for one worker process) on ``celerynb worker``
processes (one pool process each) against a private redis-server, with a
fresh secret (so a fresh queue) per repeat. ``python -m benchmarks`` runs it
after the other workloads and puts it in RESULTS.md and the chart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.procs import ROOT, start_redis, stop

SCENARIOS = {
    "one": "one worker alone",
    "two": "two workers from the start",
    "join": "one worker, a second joins ~2 s in",
}


def sleepy(xs: list[int], seconds: float) -> list[int]:
    time.sleep(seconds)
    return xs


def _worker(url: str, secret: str, name: str, logs: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
    env.update(CELERYNB_SECRET=secret, C_FORCE_ROOT="1", PYTHONPATH=str(ROOT))
    args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", url,
            "--concurrency", "1", "--hostname", f"{name}-{secrets.token_hex(3)}@bench"]  # fmt: skip
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _ready(client: object, n: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while len(client.workers(max_age=0)) < n:  # type: ignore[attr-defined]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{n} workers did not beat within {timeout:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def _redis() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="celerynb-elastic-") as tmp:
        proc, url = start_redis(Path(tmp))
        try:
            yield url
        finally:
            stop(proc)


def run_one(url: str, scenario: str, n: int, chunk: float, logs: Path) -> float:
    """Seconds of one call in ``scenario`` (workers started and stopped here)."""
    import celerynb

    secret = new_secret()
    workers = [_worker(url, secret, "first", logs)]
    if scenario == "two":
        workers.append(_worker(url, secret, "second", logs))
    client = celerynb.connect(url, secret=secret)
    try:
        _ready(client, len(workers))
        started = time.perf_counter()
        future = celerynb.cmap_async(
            sleepy, list(range(n)), kwargs={"seconds": chunk}, chunks=n, cluster=client,
            progress=False,
        )  # fmt: skip
        if scenario == "join":
            time.sleep(2.0)
            workers.append(_worker(url, secret, "second", logs))
        out = future.result(timeout=300)
        seconds = time.perf_counter() - started
        assert out == list(range(n)), "wrong result"
        return seconds
    finally:
        client.close()
        for w in workers:
            stop(w)


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def size(quick: bool) -> tuple[int, float]:
    """Chunks of the call, and seconds each chunk sleeps."""
    return (12, 0.25) if quick else (40, 0.25)


def run(quick: bool, repeats: int, log: object = print) -> dict[str, list[float]]:
    """Every scenario ``repeats`` times, interleaved; seconds per scenario."""
    n, chunk = size(quick)
    results: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    with _redis() as url, tempfile.TemporaryDirectory(prefix="celerynb-elastic-logs-") as logs:
        for r in range(repeats):
            for scenario in SCENARIOS:
                seconds = run_one(url, scenario, n, chunk, Path(logs))
                results[scenario].append(seconds)
                log(f"  elastic repeat {r + 1} {scenario}: {seconds:.2f} s")  # type: ignore[operator]
    return results


def table(results: dict[str, list[float]], n: int, chunk: float) -> str:
    """A markdown table: median, min-max, ratio to one worker alone."""
    alone = statistics.median(results["one"]) if results["one"] else None
    lines = [
        f"A call of {n} chunks of {chunk} s ({n * chunk:.0f} s of work for one worker "
        "process) on `celerynb worker --concurrency 1` processes, a private redis-server.\n",
        "| scenario | median | min\N{EN DASH}max | vs one worker |",
        "|---|---:|---:|---:|",
    ]
    for key, title in SCENARIOS.items():
        samples = results.get(key) or []
        if not samples:
            lines.append(f"| {title} | — | — | — |")
            continue
        med = statistics.median(samples)
        ratio = f"{med / alone:.2f}x" if alone else "—"
        spread = f"{min(samples):.2f} s \N{EN DASH} {max(samples):.2f} s"
        lines.append(f"| {title} | {med:.2f} s | {spread} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/elastic.py")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    results = run(args.quick, args.repeats)
    print(table(results, *size(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
