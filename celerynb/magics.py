"""IPython extension: the ``%celerynb`` line magic.

``%load_ext celerynb`` registers it and starts nothing. Subcommands::

    %celerynb status          cluster kind, broker (password masked), workers, chunks
    %celerynb start [-n N]    start an embedded cluster with N pool processes
    %celerynb stop            stop the current cluster (a remote one: disconnect)
    %celerynb restart         stop it and start / connect a fresh one alike
    %celerynb connect URL     use an existing deployment (CELERYNB_SECRET applies)

``%unload_ext celerynb`` stops the embedded clusters these magics started.
"""

from __future__ import annotations

import shlex
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class

USAGE = "usage: %celerynb status | start [-n N] | stop | restart | connect URL"

#: embedded clusters started by the magics (stopped by %unload_ext)
_started: list[Any] = []


def _usage(problem: str) -> UsageError:
    return UsageError(f"{problem}\n{USAGE}")


def _parse_start(args: list[str]) -> int | None:
    """``[-n N]`` -> N (None: one per core)."""
    n: int | None = None
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg in ("-n", "--n-workers"):
            if not rest:
                raise _usage(f"{arg} needs a number")
            value = rest.pop(0)
        elif arg.startswith("-n") and len(arg) > 2:
            value = arg[2:]
        elif arg.startswith("--n-workers="):
            value = arg.split("=", 1)[1]
        else:
            raise _usage(f"unexpected argument {arg!r} for start")
        try:
            n = int(value)
        except ValueError:
            raise _usage(f"-n wants a positive integer, got {value!r}") from None
        if n < 1:
            raise _usage(f"-n wants a positive integer, got {value!r}")
    return n


def _queued(cluster: Any) -> int | None:
    """Messages waiting in the cluster's queue on the broker (None if it cannot tell)."""
    settings = cluster.settings
    try:
        if settings.broker_url.startswith(("redis://", "rediss://", "unix://")):
            import redis

            same = settings.broker_url == settings.backend_url
            client = cluster.redis if same else redis.Redis.from_url(settings.broker_url)
            # kombu's Redis transport keeps one list per priority step
            names = [settings.queue] + [f"{settings.queue}\x06\x16{p}" for p in (3, 6, 9)]
            try:
                pipe = client.pipeline(transaction=False)
                for name in names:
                    pipe.llen(name)
                return int(sum(pipe.execute()))
            finally:
                if not same:
                    client.close()
        with cluster.app.connection_for_read() as conn:
            declared = conn.default_channel.queue_declare(settings.queue, passive=True)
            return int(declared.message_count)
    except Exception:
        return None


def _running(cluster: Any) -> int | None:
    """Chunks that workers are running now, over every call on this store."""
    from . import store

    try:
        keys = list(cluster.redis.scan_iter(match=f"{store.PREFIX}{{*}}:running", count=1000))
        if not keys:
            return 0
        pipe = cluster.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hlen(key)
        return int(sum(pipe.execute()))
    except Exception:
        return None


def status_text(cluster: Any) -> str:
    """The ``%celerynb status`` report of ``cluster`` (None: no cluster yet)."""
    from .app import mask_url

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

    @line_magic
    def celerynb(self, line: str = "") -> None:
        """Manage the cluster celerynb uses.

        ``%celerynb status | start [-n N] | stop | restart | connect URL``
        """
        try:
            args = shlex.split(line)
        except ValueError as exc:
            raise _usage(str(exc)) from None
        if not args:
            raise _usage("a subcommand is needed")
        command, rest = args[0], args[1:]
        if command == "start":
            self._start(_parse_start(rest))
            return
        if command == "connect":
            if len(rest) != 1:
                raise _usage("connect takes one broker URL")
            self._connect(rest[0])
            return
        if command not in ("status", "stop", "restart"):
            raise _usage(f"unknown subcommand {command!r}")
        if rest:
            raise _usage(f"{command} takes no arguments, got {' '.join(rest)!r}")
        if command == "status":
            from .cluster import current

            print(status_text(current(start=False)))
        elif command == "stop":
            self._stop()
        else:
            self._restart()

    # -- subcommands -------------------------------------------------------------
    @staticmethod
    def _start(n_workers: int | None) -> None:
        from .cluster import LocalCluster, current
        from .errors import ClusterError

        existing = current(start=False)
        if existing is not None:
            print(f"celerynb: already using {existing!r}; %celerynb restart replaces it")
            return
        try:
            cluster = LocalCluster(n_workers=n_workers)
        except ClusterError as exc:
            raise UsageError(f"celerynb: the embedded cluster did not start: {exc}") from None
        _started.append(cluster)
        print(f"celerynb: started {cluster!r} in {cluster.startup_seconds:.1f} s")

    @staticmethod
    def _stop() -> None:
        from .cluster import current

        cluster = current(start=False)
        if cluster is None:
            print("celerynb: no cluster to stop")
            return
        cluster.close()
        _forget(cluster)
        what = "stopped" if cluster.kind == "local" else "disconnected from"
        print(f"celerynb: {what} {cluster!r}")

    def _restart(self) -> None:
        from .cluster import connect, current

        cluster = current(start=False)
        if cluster is None or cluster.kind == "local":
            n = getattr(cluster, "concurrency", None)
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
    def _connect(url: str) -> None:
        from .cluster import connect, current
        from .errors import ClusterError

        previous = current(start=False)
        try:
            cluster = connect(url)
        except ClusterError as exc:
            raise UsageError(f"celerynb: cannot connect: {exc}") from None
        if previous is not None and any(c is previous for c in _started):
            previous.close()  # an embedded cluster the magics started is not needed any more
            _forget(previous)
            print(f"celerynb: stopped {previous!r}")
        print(f"celerynb: connected: {cluster!r}")


def _forget(cluster: Any) -> None:
    _started[:] = [c for c in _started if c is not cluster]


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics; nothing is started."""
    ipython.register_magics(CelerynbMagics)


def unload_ipython_extension(ipython: Any) -> None:
    """Stop the embedded clusters the magics started."""
    while _started:
        _started.pop().close()
