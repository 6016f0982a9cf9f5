"""IPython extension: the ``%celerynb`` line magic.

``%load_ext celerynb`` registers it and starts nothing. Subcommands::

    %celerynb status          cluster kind, broker (password masked), workers, chunks
    %celerynb start [-n N]    start an embedded cluster with N pool processes
    %celerynb start --detach  start (or find) the detached cluster, which outlives
                              the kernel, and connect to it
    %celerynb stop            stop the current cluster (a remote one: disconnect)
    %celerynb restart         stop it and start / connect a fresh one alike
    %celerynb connect [URL]   use an existing deployment (CELERYNB_SECRET applies);
                              no URL: the detached cluster
    %celerynb logs [-n N]     the last N lines (default 30) of the embedded worker's log

``%unload_ext celerynb`` stops the embedded clusters these magics started.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from . import celery_compat
from .errors import ClusterError
from .settings import mask_url

if TYPE_CHECKING:
    from .cluster import Cluster

USAGE = (
    "usage: %celerynb status | start [-n N] [--detach] | stop | restart | connect [URL] | "
    "logs [-n N]"
)
COMMANDS = ("status", "start", "stop", "restart", "connect", "logs")

#: embedded clusters started by the magics (stopped by %unload_ext)
_started: list[Cluster] = []


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"-n wants a positive integer, got {text!r}")
    return value


def _queued(cluster: Cluster) -> int | None:
    """Messages waiting in the cluster's queue on the broker (None if it cannot tell)."""
    settings = cluster.settings
    try:
        if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            same = settings.broker_url == settings.backend_url
            names = celery_compat.queue_lists(settings.queue)
            return cluster.store.queue_length(names, None if same else settings.broker_url)
        with cluster.app.connection_for_read() as conn:
            declared = conn.default_channel.queue_declare(settings.queue, passive=True)
            return int(declared.message_count)
    except Exception:
        return None


def _running(cluster: Cluster) -> int | None:
    """Chunks that workers are running now, over every call on this store."""
    try:
        return cluster.store.running_chunks()
    except Exception:
        return None


def status_text(cluster: Cluster | None) -> str:
    """The ``%celerynb status`` report of ``cluster`` (None: no cluster yet)."""
    if cluster is None:
        return (
            "celerynb: no cluster yet; the first cmap starts an embedded one "
            "(or run %celerynb start [-n N] / %celerynb connect URL)"
        )
    settings = cluster.settings
    started = " (started by %celerynb)" if any(c is cluster for c in _started) else ""
    lines = [
        f"cluster:  {cluster.kind} ({cluster.state}){started}",
        f"broker:   {mask_url(settings.broker_url)}",
    ]
    if settings.backend_url != settings.broker_url:
        lines.append(f"backend:  {mask_url(settings.backend_url)}")
    lines.append(f"queue:    {settings.queue}")
    if cluster.closed:
        return "\n".join(lines)
    try:
        workers: dict[str, int] = cluster.workers(max_age=5.0)
    except Exception as exc:
        workers = {}
        lines.append(f"workers:  cannot ask them ({exc})")
    else:
        total = sum(workers.values())
        lines.append(f"workers:  {len(workers)} worker(s), concurrency {total} in all")
        lines += [f"  {name}: concurrency {n}" for name, n in sorted(workers.items())]
    queued, running = _queued(cluster), _running(cluster)
    lines.append(
        f"chunks:   {'?' if queued is None else queued} queued, "
        f"{'?' if running is None else running} running"
    )
    return "\n".join(lines)


@magics_class
class CelerynbMagics(Magics):
    """The ``%celerynb`` line magic."""

    @magic_arguments()
    @argument("command", choices=COMMANDS, help="what to do")
    @argument("url", nargs="?", help="the broker URL (connect)")
    @argument(
        "-n",
        "--n-workers",
        type=_positive,
        help="pool processes (start; default: cores), or lines (logs; default 30)",
    )
    @argument(
        "--detach",
        action="store_true",
        help="start: the detached cluster (outlives the kernel; `celerynb cluster stop` ends it)",
    )
    @line_magic
    def celerynb(self, line: str = "") -> None:
        """Manage the cluster: status | start [-n N] [--detach] | stop | restart |
        connect [URL] | logs."""
        try:
            args = parse_argstring(self.celerynb, line)
        except (UsageError, ValueError) as exc:
            raise UsageError(f"{str(exc).strip()}\n{USAGE}") from None
        if args.url is not None and args.command != "connect":
            raise UsageError(f"{args.command} takes no arguments, got {args.url!r}\n{USAGE}")
        if args.n_workers is not None and args.command not in ("start", "logs"):
            raise UsageError(f"-n goes with start or logs only\n{USAGE}")
        if args.detach and args.command != "start":
            raise UsageError(f"--detach goes with start only\n{USAGE}")
        if args.command == "status":
            from .cluster import current

            print(status_text(current()))
        elif args.command == "start" and args.detach:
            self._start_detached(args.n_workers)
        elif args.command == "start":
            self._start(args.n_workers)
        elif args.command == "stop":
            self._stop()
        elif args.command == "restart":
            self._restart()
        elif args.command == "logs":
            self._logs(args.n_workers or 30)
        else:
            self._connect(args.url)

    # -- subcommands -------------------------------------------------------------------------------
    @staticmethod
    def _start(n_workers: int | None) -> None:
        from .cluster import LocalCluster, current

        existing = current()
        if existing is not None:
            print(f"celerynb: already using {existing!r}; %celerynb restart replaces it")
            return
        try:
            cluster = LocalCluster(n_workers=n_workers)
        except ClusterError as exc:
            raise UsageError(f"celerynb: the embedded cluster did not start: {exc}") from None
        _started.append(cluster)
        print(f"celerynb: started {cluster!r} in {cluster.startup_seconds:.1f} s")

    def _start_detached(self, n_workers: int | None) -> None:
        import subprocess
        import sys

        argv = [sys.executable, "-m", "celerynb.cli", "cluster", "start"]
        if n_workers is not None:
            argv += ["-n", str(n_workers)]
        # started by a process that exits at once: the cluster is nobody's child here
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise UsageError(f"celerynb: the detached cluster did not start: {done.stderr}")
        print(done.stdout.strip().splitlines()[0])
        self._connect(None)

    @staticmethod
    def _stop() -> None:
        from .cluster import current

        cluster = current()
        if cluster is None:
            print("celerynb: no cluster to stop")
            return
        cluster.close()
        _forget(cluster)
        what = "stopped" if cluster.kind == "local" else "disconnected from"
        print(f"celerynb: {what} {cluster!r}")

    def _restart(self) -> None:
        from .cluster import LocalCluster, connect, current

        cluster = current()
        if cluster is None or isinstance(cluster, LocalCluster):
            n = cluster.concurrency if isinstance(cluster, LocalCluster) else None
            if cluster is not None:
                self._stop()
            self._start(n)
            return
        settings = cluster.settings
        cluster.close()
        fresh = connect(
            settings.broker_url, settings.backend_url, secret=settings.secret, queue=settings.queue
        )
        print(f"celerynb: reconnected: {fresh!r}")

    @staticmethod
    def _logs(lines: int) -> None:
        from .cluster import LocalCluster, current

        cluster = current()
        if isinstance(cluster, LocalCluster):
            print(f"celerynb: the last {lines} lines of {cluster.dir / 'worker.log'}:")
            print(cluster.worker_log(lines))
        elif cluster is None:
            print("celerynb: no cluster yet: the embedded one writes its worker's log when it runs")
        else:
            print(
                "celerynb: a deployment's workers log on their own machines: the output of "
                "`celerynb worker` (its terminal, or the service's journal, e.g. "
                "`journalctl -u celerynb-worker`). What func prints, warns and logs is shown "
                f"in the calling cell. Workers on queue {cluster.settings.queue!r}: "
                f"{', '.join(sorted(cluster.workers())) or 'none beating'}"
            )

    @staticmethod
    def _connect(url: str | None) -> None:
        from .cluster import connect, current

        previous = current()
        try:
            cluster = connect(url)
        except ClusterError as exc:
            raise UsageError(f"celerynb: cannot connect: {exc}") from None
        if previous is not None and any(c is previous for c in _started):
            previous.close()  # an embedded cluster the magics started is not needed any more
            _forget(previous)
            print(f"celerynb: stopped {previous!r}")
        print(f"celerynb: connected: {cluster!r}")


def _forget(cluster: Cluster) -> None:
    _started[:] = [c for c in _started if c is not cluster]


def load_ipython_extension(ipython: object) -> None:
    """Register the magics; nothing is started."""
    ipython.register_magics(CelerynbMagics)  # type: ignore[attr-defined]


def unload_ipython_extension(ipython: object) -> None:
    """Stop the embedded clusters the magics started."""
    while _started:
        _started.pop().close()
