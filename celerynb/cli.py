"""The ``celerynb`` command: ``worker``, ``cluster`` and ``demo``."""

from __future__ import annotations

import argparse
import os
import socket
import sys
import textwrap
from collections.abc import Callable, Sequence

from .errors import ClusterError
from .settings import ENV_BACKEND, ENV_BROKER, ENV_QUEUE, ENV_SECRET, Settings, mask_url

CONNECT_TIMEOUT = 4.0  # seconds the broker and the store get to answer before we give up
EXIT_CONFIG = 2  # bad or missing settings
EXIT_UNREACHABLE = 3  # the broker or the result store does not answer

WORKER_EPILOG = f"""\
examples:
  # one worker machine of a deployment (same secret on the client and every worker):
  export {ENV_SECRET}='a long random string'
  celerynb worker --broker redis://:password@broker-host:6379/0 --concurrency 8

  # RabbitMQ as the broker; the result backend (which also holds the chunk data) is Redis:
  celerynb worker --broker amqps://user:password@broker-host:5671// \\
                  --backend rediss://:password@broker-host:6380/0?ssl_cert_reqs=required

  # the same with Celery's own CLI:
  {ENV_BROKER}=redis://... {ENV_SECRET}=... celery -A celerynb.worker worker

The notebook connects with celerynb.connect(broker_url, backend_url, secret=...)
(or the same {ENV_BROKER} / {ENV_BACKEND} /
{ENV_SECRET} variables) and finds these workers on the queue derived from
the secret. Arguments this command does not know (e.g. -E for Flower,
--max-tasks-per-child N) go to `celery worker`.

exit codes: {EXIT_CONFIG} missing or bad settings, {EXIT_UNREACHABLE} broker or store unreachable.
"""


class WorkerConfigError(Exception):
    """The worker cannot start: a setting is missing or a service does not answer."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def worker_settings(args: argparse.Namespace) -> Settings:
    """Settings from the command line, falling back to the ``CELERYNB_*`` variables."""
    if args.queues and "," in args.queues:
        raise WorkerConfigError(
            "--queues takes one queue name (the client must pass the same queue=)", EXIT_CONFIG
        )
    try:
        return Settings.from_env(
            broker_url=args.broker, backend_url=args.backend, secret=args.secret, queue=args.queues
        )
    except ValueError as exc:
        message = str(exc).replace("or pass secret=", "or pass --secret")
        raise WorkerConfigError(
            message.replace("pass a broker URL", "pass --broker"), EXIT_CONFIG
        ) from None


def check_reachable(settings: Settings, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise WorkerConfigError (naming the masked URL) unless broker and store answer."""
    from kombu.connection import Connection

    from .plane import store

    targets = [("result backend", settings.backend_url)]
    if settings.broker_url != settings.backend_url:
        targets.insert(0, ("broker", settings.broker_url))
    for what, url in targets:
        try:
            if url.startswith(("redis://", "rediss://", "unix://")):
                store.ping(url, timeout)
            else:
                conn = Connection(url, connect_timeout=timeout)
                try:
                    conn.ensure_connection(
                        max_retries=1, interval_start=0, interval_step=0, timeout=timeout
                    )
                finally:
                    conn.release()
        except Exception as exc:
            detail = " ".join(str(exc).split()) or type(exc).__name__
            raise WorkerConfigError(
                f"cannot reach the {what} at {mask_url(url)}: {detail}", EXIT_UNREACHABLE
            ) from None


def _announce_ready(settings: Settings) -> Callable[..., None]:
    """A worker_ready handler that says, in one line on stderr, where the worker listens."""

    def ready(sender: object = None, **_: object) -> None:
        name = getattr(sender, "hostname", "") or "worker"
        print(
            settings.ready_line(name).encode(),
            file=sys.__stderr__ or sys.stderr,  # past Celery's redirection of stderr to its log
            flush=True,
        )

    return ready


def _worker(args: argparse.Namespace, extra: list[str]) -> int:
    try:
        settings = worker_settings(args)
        check_reachable(settings, args.connect_timeout)
    except WorkerConfigError as exc:
        print(f"celerynb worker: error: {exc}", file=sys.stderr)
        return exc.code
    os.environ.update(settings.env())  # what a chunk starts sees the same settings
    os.environ.setdefault("C_FORCE_ROOT", "1")  # the payloads are signed; see README
    from celery import signals

    from . import worker
    from .worker.embedded import freeze_before_fork

    try:
        worker.start(settings)
    except ValueError as exc:  # e.g. a heartbeat that is not a number of seconds
        print(f"celerynb worker: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    handler = _announce_ready(settings)
    signals.worker_ready.connect(handler, weak=False)
    signals.worker_before_create_process.connect(freeze_before_fork, weak=False)
    hostname = args.hostname or f"celerynb-{os.getpid()}@{socket.gethostname()}"
    argv = ["--pool", "prefork", "--queues", settings.queue, "--hostname", hostname,
            "--without-mingle", "--without-gossip", "--loglevel", args.loglevel]  # fmt: skip
    if args.concurrency:
        argv += ["--concurrency", str(args.concurrency)]
    try:
        worker.main([*argv, *extra])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run

    try:
        return run(rows=args.rows, n_workers=args.workers)
    except ClusterError as exc:
        print(f"celerynb demo: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _cluster(args: argparse.Namespace) -> int:
    """``celerynb cluster start | status | stop``; exit 0 when it is (or was) done."""
    from . import detached

    try:
        found = detached.DetachedCluster.load()
        if args.action == "start":
            was_running = found is not None and found.running()
            found = detached.start(args.workers)
            word = "already running" if was_running else "started"
            print(f"celerynb cluster {word}: {_describe(found)}")
            print("use it from a notebook with celerynb.connect() (or %celerynb connect)")
            return 0
        if found is None:
            print(f"celerynb cluster: none (no state file at {detached.state_file()})")
            return 0 if args.action == "stop" else 1
        if args.action == "stop":
            found.stop()
            print("celerynb cluster stopped")
            return 0
        if not found.running():
            print(
                f"celerynb cluster: not running (its processes are gone); "
                f"`celerynb cluster stop` removes {detached.state_file()}"
            )
            return 1
        print(f"celerynb cluster running: {_describe(found)}")
        return 0
    except ClusterError as exc:
        print(f"celerynb cluster: error: {exc}", file=sys.stderr)
        return 1


def _describe(found: object) -> str:
    from .detached import DetachedCluster, state_file

    assert isinstance(found, DetachedCluster)
    return (
        f"{found.concurrency} pool processes, broker {mask_url(found.broker_url)}, "
        f"pids {found.redis_pid} (server) {found.worker_pid} (worker), "
        f"state file {state_file()}, worker log {found.dir}/worker.log"
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``celerynb`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="celerynb", description="Parallel pandas / NumPy work on Celery workers."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    w = sub.add_parser(
        "worker",
        help="run a worker for an existing deployment (Redis or RabbitMQ broker)",
        description=textwrap.dedent(
            """\
            Run a Celery worker (prefork pool) that executes celerynb chunks sent by
            clients holding the same shared secret. The broker and the Redis result
            backend are checked first: the command exits at once with an error if
            either does not answer or the secret is missing."""
        ),
        epilog=WORKER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    w.add_argument(
        "--broker",
        metavar="URL",
        help=f"broker URL: redis://, rediss://, amqp:// or amqps:// (default ${ENV_BROKER})",
    )
    w.add_argument(
        "--backend",
        metavar="URL",
        help=f"Redis result backend, which also holds chunk data (default ${ENV_BACKEND}, "
        "else the broker URL; required with a RabbitMQ broker)",
    )
    w.add_argument(
        "--secret",
        metavar="SECRET",
        help=f"shared secret that signs every payload (default ${ENV_SECRET}; prefer the "
        "variable: arguments are visible to other users in `ps`)",
    )
    w.add_argument(
        "--queues",
        metavar="NAME",
        help=f"queue to consume (default ${ENV_QUEUE}, else celerynb-<key id of the secret>; "
        "clients must then pass the same queue=)",
    )
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help="pool processes (default: one per core)",
    )
    w.add_argument(
        "--hostname",
        metavar="NAME",
        help="worker node name, unique per worker, e.g. gpu1@%%h "
        "(default celerynb-<pid>@<this host>)",
    )
    w.add_argument(
        "--loglevel",
        default="WARNING",
        metavar="LEVEL",
        help="DEBUG, INFO, WARNING (default), ERROR",
    )
    w.add_argument(
        "--connect-timeout",
        type=_positive_float,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long the start-up check waits for the broker and store (default "
        f"{CONNECT_TIMEOUT:g})",
    )
    c = sub.add_parser(
        "cluster",
        help="a detached local cluster that outlives notebook kernels (start, status, stop)",
        description=textwrap.dedent(
            """\
            A redis-server (127.0.0.1, with a password) and a worker running in the
            background for this user, independent of any kernel: named calls on it
            survive a kernel restart. Its URL and secret are in a state file only
            this user can read (CELERYNB_STATE_DIR, default
            ~/.local/state/celerynb); celerynb.connect() with no URL finds it."""
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "action",
        choices=("start", "status", "stop"),
        help="start it (or say it runs), say whether it runs (exit 1 if not), stop it",
    )
    c.add_argument(
        "-n", "--workers", type=_positive_int, default=None, metavar="N",
        help="pool processes (start; default: one per core)",
    )  # fmt: skip
    d = sub.add_parser(
        "demo",
        help="run a CPU-bound demo on the embedded cluster",
        description="Score a synthetic frame serially and with cmap, check they agree, "
        f"and print the speedup. Exit codes: 1 results differ, {EXIT_CONFIG} the embedded "
        "cluster cannot start (e.g. no redis-server: the message says how to install one).",
    )
    d.add_argument("--rows", type=int, default=200_000, help="rows in the frame (default 200000)")
    d.add_argument("--workers", type=int, default=None, help="pool processes (default: cores)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``celerynb`` command."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "worker":
        return _worker(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "cluster":
        return _cluster(args)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
