"""The store on a deployment: a frame bigger than Redis's maxmemory, and the store's peak.

    python benchmarks/store.py [--quick] [--repeats N]

Each scenario runs on two ``celerynb worker --concurrency 1`` processes against
a private redis-server (``save ""``, ``appendonly no``), with a fresh secret
and fresh workers per repeat, connected with ``celerynb.connect``:

- ``no limit``: ``cmap(lambda c: c * 2, df)`` with default options on float64
  frames of two columns (160 MB and 480 MB), the result checked equal to ``df * 2``;
- ``maxmemory 128mb`` (``noeviction``): the same two frames, which must complete;
- ``maxmemory 16mb``, ``chunks=2`` on a 48 MB frame: the call must fail fast
  with ``celerynb.StoreFull``; the time to the error, whether any
  ``celerynb:{*`` key is left behind, and that a small call works after it.

For each call: its wall time, and the store's peak ``used_memory`` above its
value just before the call (``INFO memory`` every 20 ms, from a thread with its
own connection). Prints a markdown table of medians with min-max.
``--quick``: 16 and 48 MB frames, ``maxmemory 32mb`` in place of 128mb.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python benchmarks/store.py
    # this script's benchmarks package, but the celerynb that PYTHONPATH names first
    _ROOT = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, _ROOT)
    import benchmarks.procs  # noqa: F401

    sys.path.remove(_ROOT)
    _ENV_PATH = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path.insert(min(len(sys.path), 1 + len(_ENV_PATH)), _ROOT)

import numpy as np
import pandas as pd

from benchmarks.procs import ROOT, _die_with_parent, start_redis, stop

MB = 2**20
DASH = "\N{EN DASH}"
SAMPLE_EVERY = 0.02  # seconds between two INFO memory readings
CALL_TIMEOUT = 600.0  # seconds a call may take before it is cancelled (a guard, not a figure)
FULL_TIMEOUT = 180.0  # the same, for the call that must fail fast


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    maxmemory: str  # '' for none
    sizes: tuple[int, ...]  # MB of each frame
    chunks: int | None = None  # None: the default chunking
    must_fail: bool = False  # the call must fail with StoreFull


def scenarios(quick: bool) -> list[Scenario]:
    sizes = (16, 48) if quick else (160, 480)
    cap = "32mb" if quick else "128mb"
    return [
        Scenario("free", "no limit", "", sizes),
        Scenario("cap", f"maxmemory {cap}", cap, sizes),
        Scenario("full", "maxmemory 16mb, `chunks=2`", "16mb", (48,), chunks=2, must_fail=True),
    ]


@dataclass
class Result:
    """The samples of one (scenario, size) over the repeats."""

    seconds: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)  # bytes above the value before the call
    outcomes: list[str] = field(default_factory=list)


def frame(mb: int) -> pd.DataFrame:
    """A float64 frame of two columns and ``mb`` MB."""
    rows = mb * MB // 16
    data = np.random.default_rng(mb).random((rows, 2))
    return pd.DataFrame(data, columns=["x", "y"])


class Peak:
    """The store's peak ``used_memory`` while in the ``with`` block, sampled by a thread."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url)
        self.before = self._used()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="store-peak")

    def _used(self) -> int:
        return int(self._client.info("memory")["used_memory"])

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._used())
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self.peak = max(self.peak, self._used())
        self._client.close()

    @property
    def above(self) -> int:
        return max(0, self.peak - self.before)


def _is_store_full(exc: BaseException) -> bool:
    """``celerynb.StoreFull``, by name (older celerynb has no such class)."""
    return any(t.__name__ == "StoreFull" for t in type(exc).__mro__)


def _failed(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    first = re.sub(r"\{[0-9a-f]{8,}\}", "{id}", first)  # a call's keys
    first = re.sub(r"(SET \S+) [^)]*\)", r"\1 <data>)", first)  # the bytes of a command
    first = re.sub(r"[^\x20-\x7e]+", "?", first).replace("|", "/")
    if len(first) > 110:
        first = first[:107] + "..."
    return f"failed: {type(exc).__name__}: {first}".rstrip(": ")


def _worker(url: str, secret: str, name: str, logs: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERYNB_")}
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(ROOT)) if p)
    env.update(CELERYNB_SECRET=secret, C_FORCE_ROOT="1", PYTHONPATH=path)
    args = [sys.executable, "-m", "celerynb.cli", "worker", "--broker", url,
            "--concurrency", "1", "--hostname", f"{name}-{secrets.token_hex(3)}@bench"]  # fmt: skip
    with open(logs / f"{name}.log", "ab") as log:
        return subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )  # fmt: skip


def _ready(client: object, n: int, workers: list[subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(Exception):
            if len(client.workers(max_age=0)) >= n:  # type: ignore[attr-defined]
                return
        if any(w.poll() is not None for w in workers) or time.monotonic() > deadline:
            tails = "".join(p.read_text()[-2000:] for p in sorted(logs.glob("*.log")))
            raise RuntimeError(f"{n} workers did not start:\n{tails}")
        time.sleep(0.05)


@contextlib.contextmanager
def deployment(maxmemory: str, logs: Path) -> Iterator[tuple[str, object]]:
    """A private redis-server (at ``maxmemory``), two workers and a client; then all gone."""
    import redis

    import celerynb

    with tempfile.TemporaryDirectory(prefix="celerynb-store-") as tmp:
        server, url = start_redis(Path(tmp))
        workers: list[subprocess.Popen[bytes]] = []
        client = None
        try:
            if maxmemory:
                admin = redis.Redis.from_url(url)
                admin.config_set("maxmemory", maxmemory)
                admin.config_set("maxmemory-policy", "noeviction")
                admin.close()
            secret = secrets.token_urlsafe(32)
            workers = [_worker(url, secret, f"w{i}", logs) for i in (1, 2)]
            client = celerynb.connect(url, secret=secret)
            _ready(client, 2, workers, logs)
            yield url, client
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()  # type: ignore[attr-defined]
            for w in workers:
                stop(w)
            stop(server)


def _small_call(client: object) -> str:
    """'ok' if a small call gives the right result, else what went wrong."""
    import celerynb

    small = pd.DataFrame({"a": np.arange(1000.0)})
    try:
        out = celerynb.cmap(
            lambda c: c * 2, small, cluster=client, progress=False, timeout=120
        )  # fmt: skip
    except Exception as exc:
        return _failed(exc)
    return "ok" if out.equals(small * 2) else "wrong result"


def _leftover(url: str) -> int:
    """How many ``celerynb:{*`` keys the store holds (SCAN)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return sum(1 for _ in client.scan_iter(match="celerynb:{*", count=1000))
    finally:
        client.close()


def run_one(
    url: str, client: object, scenario: Scenario, df: pd.DataFrame
) -> tuple[float, int, str]:
    """Seconds, store peak above its value before, and the outcome of one call."""
    import celerynb

    options: dict[str, object] = {"progress": False}
    if scenario.chunks is not None:
        options["chunks"] = scenario.chunks
    options["timeout"] = FULL_TIMEOUT if scenario.must_fail else CALL_TIMEOUT
    error: BaseException | None = None
    out = None
    with Peak(url) as peak:
        started = time.perf_counter()
        try:
            out = celerynb.cmap(lambda c: c * 2, df, cluster=client, **options)
        except Exception as exc:
            error = exc
        seconds = time.perf_counter() - started
    if scenario.must_fail:
        if error is None:
            outcome = "completed (StoreFull expected)"
        elif _is_store_full(error):
            outcome = "StoreFull"
        else:
            outcome = _failed(error)
        left = _leftover(url)
        outcome += f"; {left} keys left" if left else "; no keys left"
        outcome += f"; small call after: {_small_call(client)}"
    elif error is not None:
        outcome = _failed(error)
    else:
        outcome = "ok" if out.equals(df * 2) else "wrong result"  # type: ignore[union-attr]
    del out
    return seconds, peak.above, outcome


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(
    quick: bool, repeats: int, log: Callable[[str], None] = _log
) -> dict[tuple[str, int], Result]:
    """Every scenario ``repeats`` times (a fresh deployment each); samples per (scenario, MB)."""
    import celerynb

    plan = scenarios(quick)
    results = {(s.key, mb): Result() for s in plan for mb in s.sizes}
    frames = {mb: frame(mb) for mb in sorted({mb for s in plan for mb in s.sizes})}
    with tempfile.TemporaryDirectory(prefix="celerynb-store-logs-") as tmp:
        logs = Path(tmp)
        for r in range(repeats):
            for scenario in plan:
                with deployment(scenario.maxmemory, logs) as (url, client):
                    celerynb.cmap(len, list(range(8)), chunks=2, cluster=client, progress=False)
                    for mb in scenario.sizes:
                        seconds, above, outcome = run_one(url, client, scenario, frames[mb])
                        got = results[(scenario.key, mb)]
                        got.seconds.append(seconds)
                        got.peaks.append(above)
                        got.outcomes.append(outcome)
                        log(
                            f"  store repeat {r + 1} {scenario.title}, {mb} MB: "
                            f"{_seconds(seconds)}, peak +{above / MB:.0f} MB, {outcome}"
                        )
    return results


def _seconds(x: float) -> str:
    return f"{x * 1e3:.0f} ms" if x < 1 else f"{x:.2f} s"


def _spread(samples: list[float], fmt: Callable[[float], str]) -> str:
    med = fmt(statistics.median(samples))
    if len(samples) < 2:
        return med
    return f"{med} ({fmt(min(samples))}{DASH}{fmt(max(samples))})"


def _outcome(outcomes: list[str]) -> str:
    counts = collections.Counter(outcomes)
    if len(counts) == 1:
        return outcomes[0]
    return "; ".join(f"{o} (x{n})" for o, n in counts.most_common())


def table(results: dict[tuple[str, int], Result], quick: bool, repeats: int) -> str:
    """A markdown table: medians (min-max) of time and store peak, and the outcomes."""
    lines = [
        "`cmap(lambda c: c * 2, df)` (float64, two columns) on two `celerynb worker "
        "--concurrency 1` processes and a private redis-server (noeviction where it has a "
        f"maxmemory); median (min{DASH}max) of {repeats}, store peak = `used_memory` above "
        "its value before the call.\n",
        "| scenario | size | time | store peak | peak / input | outcome |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for s in scenarios(quick):
        for mb in s.sizes:
            got = results[(s.key, mb)]
            if not got.seconds:
                continue
            peaks = [p / MB for p in got.peaks]
            ratios = [p / mb for p in peaks]
            lines.append(
                f"| {s.title} | {mb} MB | {_spread(got.seconds, _seconds)} "
                f"| {_spread(peaks, '{:.0f} MB'.format)} | {_spread(ratios, '{:.2f}x'.format)} "
                f"| {_outcome(got.outcomes)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/store.py")
    parser.add_argument("--quick", action="store_true", help="16/48 MB frames, maxmemory 32mb")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = run(args.quick, max(1, args.repeats))
    print(table(results, args.quick, max(1, args.repeats)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # everything started was stopped on the way out
        sys.exit(130)
