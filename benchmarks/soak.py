"""A chaos soak: calls back to back on a deployment while workers are killed, restarted
under their name, terminated, and calls are cancelled.

    PYTHONPATH=<checkout> python benchmarks/soak.py [--minutes 3] [--broker redis|amqp]

Three ``celerynb worker --concurrency 1`` on the machine's Redis or RabbitMQ (Redis
store), a fresh queue. First a fault-free phase (the baseline call times), then the
chaos phase: a driver runs calls (sized, iterator, groupby, ``reduce=``, named) while a
chaos thread SIGKILLs a worker's process group and starts it again under the same
``--hostname``, SIGTERMs one's main process (a warm shutdown) and starts it again once
it has exited, or cancels the
running call. func counts each chunk's runs (INCR on this run's own key): a chunk runs
more than once only if a worker died while it ran. Every call must end with the serial
result or a CelerynbError. At the end nothing of the run may be left: no call key, no
key without a TTL, no worker process. Prints a markdown table; exits 1 on a wrong
result or a leak.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import operator
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import redis

import celerynb  # the checkout on PYTHONPATH

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deploy import REDIS, Deployment, Worker  # beside this file

ADD = functools.partial(functools.reduce, operator.add)
FRAME = pd.DataFrame({"k": [i % 7 for i in range(70)], "v": range(70)})


def counted(tag: str, seconds: float) -> Callable[[Any], Any]:
    """func: INCR ``<tag>:<first item>`` (this chunk's runs), sleep, then the serial op."""

    def work(chunk: Any) -> Any:
        client = redis.Redis.from_url(REDIS)
        first = chunk.index[0] if isinstance(chunk, pd.DataFrame) else chunk[0]
        key = f"{tag}:{first}"
        client.incr(key)
        client.expire(key, 3600)
        client.close()
        time.sleep(seconds)
        if isinstance(chunk, pd.DataFrame):
            return chunk.v.sum()
        return [x * 2 for x in chunk]

    return work


@dataclass
class Figures:
    calls: int = 0
    ok: int = 0
    wrong: int = 0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    extra_runs: int = 0
    extra_runs_without_death: int = 0
    seconds: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)


def one_call(client: celerynb.Cluster, kind: str, tag: str, current: list[Any]) -> tuple[Any, Any]:
    """(the future, the serial result) of a call of ``kind``."""
    run = functools.partial(celerynb.cmap_async, cluster=client, progress=False, timeout=120)
    f = counted(tag, 0.05)
    if kind == "sized":
        fut, want = run(f, list(range(60)), chunks=12), [x * 2 for x in range(60)]
    elif kind == "iterator":
        parts = [list(range(i, i + 5)) for i in range(0, 40, 5)]
        fut, want = run(f, iter(parts)), [x * 2 for x in range(40)]
    elif kind == "groupby":
        fut = run(lambda g: g.v.sum(), FRAME.groupby("k"), chunks=7)
        want = FRAME.groupby("k").apply(lambda g: g.v.sum())
    elif kind == "reduce":
        fut, want = run(f, list(range(40)), chunks=8, reduce=ADD), [x * 2 for x in range(40)]
    else:
        fut = run(f, list(range(30)), chunks=6, name=f"soak-{secrets.token_hex(3)}")
        want = [x * 2 for x in range(30)]
    current[:] = [fut]
    return fut, want


def same(got: Any, want: Any) -> bool:
    if isinstance(want, pd.Series):
        return isinstance(got, pd.Series) and got.equals(want)
    return bool(got == want)


class Chaos(threading.Thread):
    def __init__(self, d: Deployment, figures: Figures, current: list[Any], seed: int) -> None:
        super().__init__(daemon=True)
        self.seed = seed
        self.d, self.figures, self.current = d, figures, current
        self.stopped = threading.Event()
        self.deaths: list[float] = []  # when a worker process group died (SIGKILL)

    def restart(self, w: Worker) -> None:
        w.proc.wait(60) if w.proc is not None else None  # type: ignore[func-returns-value]
        w.start()

    def run(self) -> None:
        try:
            self.inject()
        except BaseException as exc:  # a chaos thread that dies must say so
            print(f"chaos thread died: {exc!r}", file=sys.stderr, flush=True)
            raise

    def inject(self) -> None:
        rng = random.Random(self.seed)
        while not self.stopped.wait(rng.uniform(2.0, 5.0)):
            action = rng.choice(["kill", "kill", "term", "cancel"])
            alive = [w for w in self.d.workers if w.alive]
            if action == "cancel":
                deadline = time.monotonic() + 3.0
                while not self.current and time.monotonic() < deadline:
                    time.sleep(0.01)  # between two calls: wait for the next one
                if not self.current:
                    continue
                self.current[0].cancel("the soak cancelled it")
            elif action == "kill" and alive:
                w = rng.choice(alive)
                self.deaths.append(time.time())
                w.signal(signal.SIGKILL)
                time.sleep(0.5)
                self.restart(w)
            elif action == "term" and alive:
                w = rng.choice(alive)
                w.signal(signal.SIGTERM, group=False)  # warm shutdown: its chunks finish
                self.restart(w)
            else:
                continue
            self.figures.faults[action] += 1


def runs_of(tag: str) -> list[int]:
    client = redis.Redis.from_url(REDIS)
    try:
        keys = list(client.scan_iter(match=f"{tag}:*", count=1000))
        counts = [int(v) for v in client.mget(keys)] if keys else []
        if keys:
            client.delete(*keys)
        return counts
    finally:
        client.close()


def drive(d: Deployment, figures: Figures, seconds: float, chaos: Chaos | None) -> None:
    kinds = ["sized", "iterator", "groupby", "reduce", "named"]
    current: list[Any] = [] if chaos is None else chaos.current
    deadline, i = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        kind, tag = kinds[i % len(kinds)], f"celerynb-soak:{secrets.token_hex(6)}"
        i += 1
        started, deaths = time.time(), len(chaos.deaths) if chaos else 0
        fut, want = one_call(d.client, kind, tag, current)  # type: ignore[arg-type]
        try:
            got = fut.result(timeout=180)
            if same(got, want):
                figures.ok += 1
            else:
                figures.wrong += 1
        except celerynb.CelerynbError as exc:
            figures.failures[type(exc).__name__] += 1
        except Exception as exc:  # not a clear error: counted as wrong
            figures.wrong += 1
            figures.failures[f"unclear {type(exc).__name__}"] += 1
        finally:
            current[:] = []
            if kind == "named":
                with contextlib.suppress(Exception):
                    fut.forget()
        elapsed = time.time() - started
        figures.calls += 1
        (figures.seconds if chaos else figures.baseline).append(elapsed)
        extra = sum(max(0, n - 1) for n in runs_of(tag))
        figures.extra_runs += extra
        if extra and chaos is not None and len(chaos.deaths) == deaths:
            figures.extra_runs_without_death += extra


def leaks(d: Deployment, ids: set[str]) -> list[str]:
    store = redis.Redis.from_url(REDIS)
    try:
        queue = d.settings.queue
        ours = [k.decode() for k in store.scan_iter(count=1000)
                if queue in k.decode() or k.startswith(b"celerynb-soak:")]  # fmt: skip
        kombu = {queue, f"_kombu.binding.{queue}", f"_kombu.binding_permanent.{queue}",
                 f"_kombu.binding.{queue}.pidbox",
                 f"_kombu.binding.reply.{queue}.pidbox"}  # fmt: skip
        bad = [k for k in ours if k not in kombu and store.ttl(k) < 0]
        calls = [k.decode() for k in store.scan_iter(match="celerynb:{*", count=1000)]
        return bad + [k for k in calls if any(i in k for i in ids)]
    finally:
        store.close()


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--broker", choices=["redis", "amqp"], default="redis")
    parser.add_argument("--baseline-seconds", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=7, help="of the chaos thread's choices")
    args = parser.parse_args(argv)
    figures = Figures()
    with tempfile.TemporaryDirectory(prefix="celerynb-soak-") as logs:
        d = Deployment(args.broker, Path(logs))
        pids: list[int] = []
        try:
            for name in "abc":
                d.add(name)
            d.connect()
            d.ready(3)
            drive(d, figures, args.baseline_seconds, None)
            chaos = Chaos(d, figures, [], args.seed)
            chaos.start()
            drive(d, figures, args.minutes * 60, chaos)
            chaos.stopped.set()
            chaos.join(120)
            ids = {r.id for r in d.client.store.listed()}  # type: ignore[union-attr]
            pids = [w.proc.pid for w in d.workers if w.proc is not None]
        finally:
            d.close()
        left = leaks(d, ids)
        alive = [p for p in pids if Path(f"/proc/{p}").exists()]
    kills = figures.faults["kill"]
    print(f"## Soak: {args.broker}, {args.minutes:g} min of chaos, 3 workers\n")
    print("| figure | value |\n|---|---|")
    rows = [
        ("calls (fault-free + chaos)", f"{figures.calls} ({len(figures.baseline)} + "
                                       f"{len(figures.seconds)})"),
        ("faults injected", ", ".join(f"{k} {v}" for k, v in sorted(figures.faults.items()))),
        ("calls finished with the serial result", figures.ok),
        ("calls failed, by reason", ", ".join(f"{k} {v}" for k, v in
                                              sorted(figures.failures.items())) or "none"),
        ("wrong results", figures.wrong),
        ("extra chunk runs / worker kills", f"{figures.extra_runs} / {kills}"),
        ("extra runs in calls no worker died in", figures.extra_runs_without_death),
        ("call time p50 / p99, fault-free", f"{pct(figures.baseline, 0.5):.2f} s / "
                                            f"{pct(figures.baseline, 0.99):.2f} s"),
        ("call time p50 / p99, chaos", f"{pct(figures.seconds, 0.5):.2f} s / "
                                       f"{pct(figures.seconds, 0.99):.2f} s"),
        ("keys left (no TTL, or a call's)", len(left)),
        ("worker processes left", len(alive)),
    ]  # fmt: skip
    for name, value in rows:
        print(f"| {name} | {value} |")
    if left:
        print("left:", left[:20])
    bad = figures.wrong or left or alive or figures.extra_runs_without_death
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
