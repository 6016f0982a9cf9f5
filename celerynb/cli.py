"""The ``celerynb`` command: ``worker`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .app import ENV_BACKEND, ENV_BROKER, ENV_QUEUE, ENV_SECRET


def _worker(args: argparse.Namespace, extra: list[str]) -> int:
    for env, value in (
        (ENV_BROKER, args.broker),
        (ENV_BACKEND, args.backend),
        (ENV_SECRET, args.secret),
        (ENV_QUEUE, args.queues),
    ):
        if value:
            os.environ[env] = value
    os.environ.setdefault("C_FORCE_ROOT", "1")
    from . import worker  # reads the environment

    if worker.settings is None:
        print(f"celerynb worker: {worker._config_error}", file=sys.stderr)
        return 2
    argv = ["--pool", "prefork", "--queues", worker.settings.queue, "--without-mingle",
            "--without-gossip", "--loglevel", args.loglevel]  # fmt: skip
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    if args.hostname:
        argv += ["--hostname", args.hostname]
    worker.main([*argv, *extra])
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    return run(rows=args.rows, n_workers=args.workers)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``celerynb`` command."""
    parser = argparse.ArgumentParser(
        prog="celerynb", description="Parallel pandas / NumPy work on Celery workers."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser(
        "worker",
        help="run a worker for an existing deployment",
        description="Run a Celery worker that executes celerynb chunks. Extra arguments "
        "are passed to `celery worker`.",
    )
    w.add_argument("--broker", help=f"broker URL (default ${ENV_BROKER})")
    w.add_argument(
        "--backend", help=f"Redis result backend URL (default ${ENV_BACKEND} or the broker)"
    )
    w.add_argument("--secret", help=f"shared secret (default ${ENV_SECRET}); prefer the variable")
    w.add_argument("--queues", help="queue to consume (default derived from the secret)")
    w.add_argument("--concurrency", type=int, help="pool processes (default: one per core)")
    w.add_argument("--hostname", help="worker name, e.g. name@%%h")
    w.add_argument("--loglevel", default="WARNING", help="log level (default WARNING)")
    d = sub.add_parser(
        "demo",
        help="run a CPU-bound demo on the embedded cluster",
        description="Score a synthetic frame serially and with cmap, check they agree, "
        "and print the speedup.",
    )
    d.add_argument("--rows", type=int, default=200_000, help="rows in the frame (default 200000)")
    d.add_argument("--workers", type=int, default=None, help="pool processes (default: cores)")
    args, extra = parser.parse_known_args(argv)
    if args.command == "worker":
        return _worker(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
