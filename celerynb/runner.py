"""The I/O of one call on one cluster: plan, store chunks, send tasks, take records, clean up.

A :class:`CallRunner` feeds its :class:`~celerynb.call.Call` with the records
the cluster's supervisor reads for it, and acts on what the call says:
store newly planned chunks, send the reduce task, and, once the call ends,
revoke what still runs and delete the call's data. With no worker yet, the
call waits (the supervisor asks again each tick) until one appears or
``worker_wait`` passes.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import redis

from . import dispatch
from .call import Call, CallState, Reaction
from .errors import CelerynbError, ClusterError
from .inputs import nbytes
from .options import CallOptions
from .output import Relay
from .plane import INLINE, check_size, codec, delete, scripts
from .plane.keys import TTL, CallKeys
from .plane.records import Record
from .planning import EARLY_BYTES, make_plan
from .progress import Display, NoDisplay
from .settings import mask_url

if TYPE_CHECKING:
    from redis.client import Pipeline

    from .cluster.connection import Cluster

PUSH_BYTES = 32 * 2**20  # chunk bytes buffered before a pipeline is flushed
EARLY_BATCH = 2**20  # the same for big calls, whose workers start on the first batch
OPEN_SECONDS = 10  # workers stop waiting for an open call's chunks when its driver is gone


class CallRunner:
    """Runs ``call`` over ``inputs`` on ``cluster``; ``job`` is the signed job."""

    def __init__(
        self,
        cluster: Cluster,
        call: Call,
        job: bytes,
        options: CallOptions,
        inputs: tuple[object, ...],
    ) -> None:
        self.cluster, self.call, self.options, self.inputs = cluster, call, options, inputs
        self.size = sum(nbytes(x) for x in inputs)
        self.opts = options.slot(
            len(inputs) > 1, cluster.plane.shared, watch=cluster.elastic, label=call.label
        )
        self.keys = CallKeys(call.id)
        self.display: Display = NoDisplay()
        o = options
        self.relay = Relay(
            o.output, o.output_lines, o.output_bytes, by_worker=cluster.elastic, funcs=call.funcs
        )
        self.n_workers = 0  # pool processes when the call began
        self._job = job
        self._slots = 0  # draining tasks sent so far (their slot numbers)
        self._opened = False  # the call's "open" key is set (see _flush)
        self._stored = False  # the call's keys exist: its driver keeps them alive
        self._reducing = False  # the reduce task was sent
        self._since = time.monotonic()
        settings = cluster.settings
        call.waiting_for = (
            f"waiting for a worker on queue {settings.queue!r} of {mask_url(settings.broker_url)}"
        )
        call.on_end(self._ended)

    def __repr__(self) -> str:
        return f"<CallRunner {self.call!r} on {self.cluster!r}>"

    # -- submission -------------------------------------------------------------------------------
    def start(self) -> None:
        """Plan and store the call and send its tasks, if there are workers (else it waits)."""
        check_size(self._job, "func (with everything it refers to)", "pass big objects as data")
        workers = self.cluster.workers()
        if workers:
            self._begin(sum(workers.values()))

    def _begin(self, n_workers: int) -> None:
        o = self.options
        plan, planner = make_plan(
            self.inputs, n_workers, self.size, o.chunks, o.chunk_size, fixed=o.reduce is not None
        )
        self.n_workers = n_workers
        if self.call.begin(plan, planner):
            self._store(range(len(plan)), job=self._job, publish=True)

    def _store(self, indices: range, job: bytes = b"", publish: bool = False) -> None:
        """Store chunks ``indices`` in pipelined batches and queue their numbers.

        With ``publish``, the draining tasks go out once the first batch is
        queued: a big call's workers start while the rest is stored (the call
        stays open till then). Errors clean the call up and are raised.
        """
        plan, plane, n_items = self.call.plan, self.cluster.plane, self.call.n_items
        pipe = self.cluster.redis.pipeline(transaction=False)
        if job:
            pipe.set(self.keys.func, job, ex=TTL)
        pipe.set(self.keys.count, self.call.n_chunks, ex=TTL)
        big_call = self.size >= EARLY_BYTES
        early, batch = (self.n_workers, EARLY_BATCH) if big_call else (0, PUSH_BYTES)
        buffered, queued = 0, []
        for n, i in enumerate(indices, 1):
            try:
                big = self.size * plan.items(i) >= INLINE * n_items
                what = plan.info(i).describe()
                buffered += plane.put_chunk(pipe, self.keys, i, plan.take(i), big, what)
            except (OSError, CelerynbError) as exc:
                self.call.fail(exc)
                raise
            except Exception as exc:
                error = TypeError(
                    f"{plan.info(i).describe()} of the data cannot be pickled "
                    f"({type(exc).__name__}: {exc}); pass data made of picklable objects"
                )
                self.call.fail(error)
                raise error from exc
            queued.append(i)
            if n < len(indices) and (buffered > batch or n == early):
                self._flush(pipe, queued, last=False)
                buffered, queued = 0, []
                if publish:
                    self._publish(len(indices))
                    publish = False
        self._flush(pipe, queued, last=True)
        if publish:
            self._publish(len(indices))

    def _flush(self, pipe: Pipeline, queued: list[int], last: bool) -> None:
        # a long store (big data) keeps the call alive for its workers as the supervisor would
        pipe.set(self.keys.alive, 1, ex=int(self.cluster.liveness.driver_grace))
        if queued:
            pipe.rpush(self.keys.pending, *queued)
            pipe.expire(self.keys.pending, TTL)
        # open: more chunks come (the rest of this batch, or, while adaptive
        # chunking's probes run, the chunks planned from their times)
        if not last or not self.call.planned:
            pipe.set(self.keys.open, 1, ex=OPEN_SECONDS)
            self._opened = True
        elif self._opened:  # all queued: close the call
            pipe.unlink(self.keys.open)
            self._opened = False
        pipe.execute()
        self._stored = True

    def _publish(self, n_chunks: int, held: list[str] | None = None, spare: bool = True) -> None:
        """Send draining tasks for ``n_chunks`` newly queued chunks, plus the ``held`` slots
        again (they resume the chunk they held): one per pool process, or one per chunk
        with ``chunk_timeout`` (a per-task limit). An elastic cluster also gets a spare
        message for a worker that joins."""
        fresh = n_chunks if self.opts.one else min(n_chunks, max(self.n_workers, 1))
        slots = [*(held or []), *(str(s) for s in range(self._slots, self._slots + fresh))]
        self._slots += fresh
        spares = []
        if spare and self.cluster.elastic and not self.opts.one:
            spares, self._slots = [str(self._slots)], self._slots + 1
        dispatch.publish_slots(
            self.cluster.app, self.cluster.settings.queue, self.keys, slots, self.opts, spares
        )

    # -- what the supervisor drives ---------------------------------------------------------------
    def poll_waiting(self, now: float) -> None:
        """A waiting call: start it once a worker appears, fail it after ``worker_wait``."""
        workers = self.cluster.workers(max_age=0.25)
        if workers:
            self._begin(sum(workers.values()))
        elif now - self._since > self.cluster.liveness.worker_wait:
            s = self.cluster.settings
            self.call.fail(
                ClusterError(
                    f"no celerynb worker answers on queue {s.queue!r} of broker "
                    f"{mask_url(s.broker_url)} (waited {now - self._since:.0f} s): start one "
                    "with `celerynb worker --broker URL` and the same CELERYNB_SECRET"
                )
            )
        self.display.update(self.call.snapshot())

    def before_poll(self, pipe: Pipeline) -> int:
        """Queue this call's commands that go before the supervisor's wait; how many."""
        pipe.expire(self.keys.alive, int(self.cluster.liveness.driver_grace))
        if self.call.planned:
            return 1
        pipe.expire(self.keys.open, OPEN_SECONDS)  # the probes' draining tasks wait for more
        return 2

    def after_poll(self, pipe: Pipeline) -> int:
        """Queue this call's commands that go after the wait: records, running chunks,
        output; how many."""
        pipe.lpop(self.keys.done, 1000)
        pipe.hlen(self.keys.running)
        pipe.lpop(self.keys.output, 1000)
        return 3

    def receive(self, blobs: list[bytes], before: list[object], after: list[Any]) -> None:
        """Take one poll's replies: relay output, fetch and decode records, feed the call, act.

        ``blobs``: records popped by the wait; ``before`` / ``after``: the replies to
        this call's commands from :meth:`before_poll` / :meth:`after_poll`.
        """
        more, busy, output = after
        blobs += more or []
        if before and not before[0] and self._stored and not blobs:
            self.call.fail(
                ClusterError(
                    "the workers dropped this call: its driver gave no sign of life for "
                    f"{self.cluster.liveness.driver_grace:.0f} s (was the process suspended?)"
                )
            )
            return
        if output:
            self.relay.take(self.cluster.plane.pop_output(output))
        records: list[Record] = []
        for blob in blobs:
            record: Record = codec.loads(self.cluster.settings.secret, blob)
            record.meta.bytes_out += len(blob)
            records.append(record)
        del blobs
        if records:
            records = self.cluster.plane.fetch(self.keys, records)
        self._act(self.call.receive(records, int(busy or 0)))
        if not isinstance(self.display, NoDisplay):
            self.display.update(self.call.snapshot())

    def _act(self, reaction: Reaction) -> None:
        if reaction.store:
            self._store(reaction.store)
            if self.call.state.ended:  # cancelled while storing: those chunks go too
                self._cleanup()
        if reaction.reduce and not self._reducing:
            self._reducing = True
            dispatch.publish_reduce(
                self.cluster.app,
                self.cluster.settings.queue,
                self.keys,
                self.call.n_chunks,
                self.opts.shm,
            )

    def workers_lost(self, dead: list[str]) -> None:
        """Workers stopped beating: their slots' chunks go back to the queue, fresh draining
        tasks replace them (and a lost reduce task is sent again)."""
        if self.call.state is not CallState.RUNNING or not self._stored:
            return
        moved = scripts.requeue(self.cluster.redis, self.keys, dead)
        if moved:
            self._publish(moved)
        if self._reducing:
            self._reducing = False
            self._act(Reaction(reduce=True))

    def worker_restarted(self) -> None:
        """The embedded worker died and was replaced: re-send what it held."""
        if self.call.state is not CallState.RUNNING:
            return
        if self._reducing:
            self._reducing = False
            self._act(Reaction(reduce=True))
            return
        held = [_text(s) for s in self.cluster.redis.hkeys(self.keys.slots)]
        done = self.call.snapshot().chunks_done
        self._publish(self.call.n_chunks - done, held)

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        """Revoke the outstanding chunks and stop running ones; False if already done."""
        return self.call.cancel(reason)

    # -- the end ----------------------------------------------------------------------------------
    def _ended(self, call: Call) -> None:
        """Once the call ends (any thread): stop its work, delete its data, close the display."""
        if call.state is not CallState.FINISHED:
            self._revoke()
        with contextlib.suppress(redis.RedisError):  # output that came after the last poll
            self.relay.take(self.cluster.plane.pop_output(self._output_left()))
        self.relay.close()
        self.display.close(call.snapshot())
        self._cleanup()
        self.cluster.supervisor.remove(self)

    def _revoke(self) -> None:
        """Queued chunks become no-ops (their keys go first); running ones are terminated."""
        with contextlib.suppress(redis.RedisError):
            delete(self.cluster.redis, [self.keys.chunk(i) for i in range(self.call.n_chunks)])
            slots = {_text(s) for s in self.cluster.redis.hgetall(self.keys.running).values()}
            ids = [self.keys.slot_task(s) for s in sorted(slots)]
            if self._reducing:
                ids.append(self.keys.reduce_task)
            # Celery records revoked tasks in the backend: remove those records later
            self.cluster.defer_delete(dispatch.revoke(self.cluster.app, ids))

    def _output_left(self) -> list[bytes]:
        left = self.cluster.redis.lpop(self.keys.output, 10_000) or []
        return list(left)  # type: ignore[arg-type]

    def _cleanup(self) -> None:
        with contextlib.suppress(redis.RedisError):
            self.cluster.plane.delete_call(self.keys, self.call.n_chunks)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
