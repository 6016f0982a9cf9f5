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
import functools
import json
import time
from typing import TYPE_CHECKING, Any

import redis

from . import dispatch, durable
from .call import Call, CallState, Reaction
from .errors import ClusterError
from .inputs import nbytes
from .options import CallOptions, SlotOptions
from .output import Relay
from .plane import check_size, codec, delete, scripts
from .plane.keys import REDUCED, CallKeys
from .plane.records import Record
from .planning import make_plan
from .progress import Display, NoDisplay
from .settings import mask_url
from .streams import StreamFeed, StreamPlan
from .submit import OPEN_SECONDS, Submission

if TYPE_CHECKING:
    from redis.client import Pipeline

    from .cluster.connection import Cluster


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
        zipped = len(inputs) > 1 and not options.overlap  # (windows.Overlap unpacks them)
        self.opts = options.slot(
            zipped, cluster.plane.shared, watch=cluster.elastic, label=call.label
        )
        self.keys = CallKeys(call.id)
        self.display: Display = NoDisplay()
        o = options
        self.relay = Relay(
            o.output, o.output_lines, o.output_bytes, by_worker=cluster.elastic, funcs=call.funcs
        )
        self.submission = Submission(cluster, call, self.keys, self.opts, self.size)
        self.naming: tuple[str, str] | None = None  # a named call's (name, fingerprint)
        self._seen: set[int] = set()  # chunks (and the reduction) with a record
        self._job = job
        self._sent_reduce: tuple[list[int], int] | None = None  # the last reduce task sent
        self.stream: StreamFeed | None = None  # reads an iterator input (see streams.py)
        self._since = time.monotonic()
        settings = cluster.settings
        call.waiting_for = (
            f"waiting for a worker on queue {settings.queue!r} of {mask_url(settings.broker_url)}"
        )
        call.on_end(self._ended)

    def __repr__(self) -> str:
        return f"<CallRunner {self.call!r} on {self.cluster!r}>"

    @classmethod
    def attached(
        cls, cluster: Cluster, call: Call, options: CallOptions, slot: SlotOptions
    ) -> CallRunner:
        """The runner of a named call that is in the store already (see durable.py)."""
        runner = cls(cluster, call, b"", options, ())
        runner.opts, runner.submission.opts = slot, slot
        runner.naming = (options.name or call.id, "")
        runner.submission.stored = True
        runner.submission.n_workers = sum(cluster.workers().values())
        runner.submission._slots = 1_000_000  # past the first driver's slot numbers
        return runner

    @property
    def named(self) -> bool:
        return self.naming is not None

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
            self.inputs,
            n_workers,
            self.size,
            o.chunks,
            o.chunk_size,
            fixed=o.reduce is not None or self.named,  # a named call is stored whole at once
            overlap=o.overlap,
        )
        self.submission.n_workers = n_workers
        if not self.call.begin(plan, planner):
            return
        name, fp = self.naming or (None, "")
        fields = durable.describe(name, self.call.label, o.keep_seconds, self.opts, fp)
        if name is not None:
            spans = [plan.info(i) for i in range(len(plan))]
            fields["bounds"] = json.dumps([[c.start, c.stop] for c in spans])
            fields["reduce"] = "1" if self.call.keep else "0"
        register = functools.partial(
            durable.register, keys=self.keys, queue=self.cluster.settings.queue, fields=fields
        )
        if isinstance(plan, StreamPlan):
            ahead = self.options.max_ahead or 2 * n_workers
            self.stream = StreamFeed(self, plan, ahead)
            self.stream.begin(self._job, register)
        else:
            self.submission.store(range(len(plan)), job=self._job, publish=True, before=register)
            if name is not None:  # every chunk is stored: the call can be attached to
                self.cluster.redis.hset(self.keys.meta, "n_chunks", len(plan))

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
        if not self.named:
            return 3
        pipe.hlen(self.keys.records)  # a named call's records: more than came (attached)?
        return 4

    def receive(self, blobs: list[bytes], before: list[object], after: list[Any]) -> None:
        """Take one poll's replies: relay output, fetch and decode records, feed the call, act.

        ``blobs``: records popped by the wait; ``before`` / ``after``: the replies to
        this call's commands from :meth:`before_poll` / :meth:`after_poll`.
        """
        more, busy, output = after[:3]
        blobs += more or []
        if self.named:  # never reaped; records may be in the store that did not come here
            if int(after[3] or 0) > len(self._seen) + len(blobs):
                wanted = [i for i in range(self.call.n_chunks) if i not in self._seen]
                wanted += [REDUCED] if self.call.keep else []
                blobs += durable.kept_records(self.cluster.redis, self.keys, wanted)
        elif (
            before and not before[0] and self.submission.stored and not blobs
        ):  # its workers reaped it
            grace = self.cluster.liveness.driver_grace
            why = f"its driver gave no sign of life for {grace:.0f} s (was it suspended?)"
            self.call.fail(ClusterError(f"the workers dropped this call: {why}"))
            return
        if output:
            self.relay.take(self.cluster.plane.pop_output(output))
        records: list[Record] = []
        for blob in blobs:
            record: Record = codec.loads(self.cluster.settings.secret, blob)
            record.meta.bytes_out += len(blob)
            if self.stream is None or not self.stream.takes(record):  # partial reductions
                records.append(record)
        del blobs
        records = [r for r in records if r.index not in self._seen]  # twins
        self._seen.update(r.index for r in records)
        if records:
            records = self.cluster.plane.fetch(self.keys, records, keep=self.named)
        self._act(self.call.receive(records, int(busy or 0)))
        if self.stream is not None:
            self.stream.feeder.room.set()
        if not isinstance(self.display, NoDisplay):
            self.display.update(self.call.snapshot())

    def _act(self, reaction: Reaction) -> None:
        if reaction.store:
            self.submission.store(reaction.store)
            if self.call.state.ended:  # cancelled while storing: those chunks go too
                with contextlib.suppress(redis.RedisError):
                    self.cluster.plane.delete_call(self.keys, self.call.n_chunks)
        if self.stream is not None:  # an iterator's parts are reduced as they come
            due = self.stream.reduction_due()
            if due is not None:
                self.send_reduce(*due)
        elif reaction.reduce and self._sent_reduce is None:
            self.send_reduce(list(range(self.call.n_chunks)), REDUCED)

    def send_reduce(self, parts: list[int], out: int) -> None:
        """A reduce task over stored ``parts``, into ``out`` (the result, or a partial one
        that an open iterator's draining tasks make: they hold the pool processes)."""
        self._sent_reduce = (parts, out)
        if out != REDUCED and self.call.streaming and self.stream is not None:
            self.stream.send_fold(parts, out)
            return
        app, queue = self.cluster.app, self.cluster.settings.queue
        dispatch.publish_reduce(app, queue, self.keys, parts, self.opts.shm, out)

    def workers_lost(self, dead: list[str]) -> None:
        """Workers stopped beating: their slots' chunks go back to the queue, fresh draining
        tasks replace them (and a lost reduce task is sent again)."""
        if self.call.state is not CallState.RUNNING or not self.submission.stored:
            return
        moved = scripts.requeue(self.cluster.redis, self.keys, dead)
        if moved:
            self.submission.publish(moved)
        if self._sent_reduce is not None:  # it may have been on that worker
            self.send_reduce(*self._sent_reduce)

    def worker_restarted(self) -> None:
        """The embedded worker died and was replaced: re-send what it held."""
        if self.call.state is not CallState.RUNNING:
            return
        if self._sent_reduce is not None:
            self.send_reduce(*self._sent_reduce)
            return
        held = [_text(s) for s in self.cluster.redis.hkeys(self.keys.slots)]
        done = self.call.snapshot().chunks_done
        self.submission.publish(self.call.n_chunks - done, held)

    def cancel(self, reason: str = "the call was cancelled") -> bool:
        """Revoke the outstanding chunks and stop running ones; False if already done."""
        return self.call.cancel(reason)

    # -- the end ----------------------------------------------------------------------------------
    def detach(self) -> None:
        """Stop following a named call (this driver goes away); the workers go on with it."""
        self.cluster.supervisor.remove(self)
        self.relay.close()
        self.display.close(self.call.snapshot())

    def _ended(self, call: Call) -> None:
        """Once the call ends (any thread): stop its work, delete its data, close the display."""
        if call.state is not CallState.FINISHED:
            self._revoke()
        with contextlib.suppress(redis.RedisError):
            # output that came after the last poll; an anonymous call's data goes too
            pipe = self.cluster.redis.pipeline(transaction=False)
            pipe.lpop(self.keys.output, 10_000)
            if not self.named:
                self.cluster.plane.delete_call(self.keys, self.call.n_chunks, pipe)
            left = pipe.execute()[0] or []
            self.relay.take(self.cluster.plane.pop_output(list(left)))
        self.relay.close()
        self.display.close(call.snapshot())
        if self.named:
            with contextlib.suppress(redis.RedisError):
                queue, keep = self.cluster.settings.queue, self.options.keep_seconds
                durable.finish(self.cluster.redis, self.keys, queue, call, keep)
        self.cluster.supervisor.remove(self)

    def _revoke(self) -> None:
        """Queued chunks become no-ops (their keys go first); running ones are terminated."""
        with contextlib.suppress(redis.RedisError):
            delete(self.cluster.redis, [self.keys.chunk(i) for i in range(self.call.n_chunks)])
            slots = {_text(s) for s in self.cluster.redis.hgetall(self.keys.running).values()}
            ids = [self.keys.slot_task(s) for s in sorted(slots)]
            if self._sent_reduce is not None:
                ids.append(self.keys.reduce_task)
            # Celery records revoked tasks in the backend: remove those records later
            self.cluster.defer_delete(dispatch.revoke(self.cluster.app, ids))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
