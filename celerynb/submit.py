"""Storing a call's chunks and sending its draining tasks: the submission side of a runner."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import dispatch
from .call import Call
from .errors import CelerynbError
from .options import SlotOptions
from .plane import INLINE
from .plane.keys import CallKeys
from .plane.records import CallMeta
from .plane.store import CallBatch
from .planning import EARLY_BYTES

if TYPE_CHECKING:
    from .cluster.connection import Cluster

PUSH_BYTES = 32 * 2**20  # chunk bytes buffered before a batch is sent
EARLY_BATCH = 2**20  # the same for big calls, whose workers start on the first batch
ATTACHED_SLOTS = 1_000_000  # an attached call's slot numbers start past the first driver's


class Submission:
    """Stores ``call``'s chunks (``size``: bytes of its inputs) in pipelined batches, queues
    their numbers, says whether more may come (the call's ``open`` key), and sends the
    draining tasks (``opts``) for ``n_workers`` pool processes. ``attached``: the call
    is in the store already (another driver stored it)."""

    def __init__(
        self,
        cluster: Cluster,
        call: Call,
        keys: CallKeys,
        opts: SlotOptions,
        size: int,
        attached: bool = False,
    ) -> None:
        self.cluster, self.call, self.keys, self.opts, self.size = cluster, call, keys, opts, size
        self.n_workers = sum(cluster.workers().values()) if attached else 0  # when it began
        self.stored = attached  # the call's keys exist: its driver keeps them alive
        self._opened = False  # the call's "open" key is set
        self._slots = ATTACHED_SLOTS if attached else 0  # draining tasks sent (slot numbers)

    def __repr__(self) -> str:
        return f"<Submission of {self.call!r}: {self._slots} draining tasks sent>"

    def batch(self) -> CallBatch:
        """A batch of store commands about this call (sent by :meth:`flush`)."""
        return self.cluster.store.batch(self.keys)

    def store(
        self,
        indices: range,
        job: bytes = b"",
        publish: bool = False,
        meta: CallMeta | None = None,
    ) -> None:
        """Store chunks ``indices`` in pipelined batches and queue their numbers.

        With ``publish``, the draining tasks go out once the first batch is
        queued: a big call's workers start while the rest is stored (the call
        stays open till then). ``meta``: the call's description, written first.
        Errors clean the call up and are raised.
        """
        plan, n_items = self.call.plan, self.call.n_items
        batch = self.batch()
        if meta is not None:
            batch.describe(meta)
        if job:
            batch.job(job)
        batch.count(self.call.n_chunks)
        big_call = self.size >= EARLY_BYTES
        early, limit = (self.n_workers, EARLY_BATCH) if big_call else (0, PUSH_BYTES)
        buffered, queued = 0, []
        for n, i in enumerate(indices, 1):
            what, chunk = f"chunk {i}", None
            try:
                big = self.size * plan.items(i) >= INLINE * n_items
                what = plan.info(i).describe()
                chunk = plan.take(i)
                buffered += batch.chunk(i, chunk, big, what)
            except (OSError, CelerynbError) as exc:
                self.call.fail(exc)
                raise
            except Exception as exc:
                problem, fix = (
                    ("cannot be pickled", "pass data made of picklable objects")
                    if chunk is not None
                    else ("cannot be cut from the data", "pass a list, an array or pandas data")
                )
                error = TypeError(
                    f"{what} of the data {problem} ({type(exc).__name__}: {exc}); {fix}"
                )
                self.call.fail(error)
                raise error from exc
            queued.append(i)
            if n < len(indices) and (buffered > limit or n == early):
                self.flush(batch, queued, last=False)
                batch, buffered, queued = self.batch(), 0, []
                if publish:
                    self.publish(len(indices))
                    publish = False
        self.flush(batch, queued, last=True)
        if publish:
            self.publish(len(indices))

    def flush(self, batch: CallBatch, queued: list[int], last: bool, closing: bool = False) -> None:
        """Queue ``queued`` (stored in ``batch``), say whether more may come, send ``batch``.

        ``last``: the last batch of what is planned; ``closing``: nothing more will come
        (an iterator input is exhausted).
        """
        # a long store (big data) keeps the call alive for its workers as the supervisor would
        batch.keep_alive(int(self.cluster.liveness.driver_grace))
        batch.queue(queued)
        # open: more chunks come (the rest of this batch, or, while adaptive
        # chunking's probes run, the chunks planned from their times)
        batch.count(self.call.n_chunks)
        if not closing and (not last or not self.call.planned):
            batch.open()
            self._opened = True
        elif self._opened:  # all queued: close the call
            batch.close()
            self._opened = False
        batch.execute()
        self.stored = True

    def publish(self, n_chunks: int, held: list[str] | None = None, spare: bool = True) -> None:
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
