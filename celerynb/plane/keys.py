"""Names: the Redis keys and shm files of one call, and its Celery task ids.

All keys of a call share the prefix ``celerynb:{<call id>}:`` (the braces keep
them in one Redis Cluster hash slot, as the scripts need) and expire after
``TTL`` seconds even if nobody deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

PREFIX = "celerynb:"
TTL = 24 * 3600
REDUCED = -1  # the chunk number of the reducer's record


@dataclass(frozen=True)
class CallKeys:
    """Names of the Redis keys (and shm files) of one call."""

    # The call's fixed keys (attribute names), in the order the Lua scripts get them as
    # KEYS[1], KEYS[2], ...; then the prefixes of its per-chunk keys (chunk i, result i).
    FIXED: ClassVar[tuple[str, ...]] = (
        "func",
        "done",
        "tries",
        "running",
        "pending",
        "slots",
        "owners",
        "fenced",
        "alive",
        "count",
        "open",
        "output",
        "output_bytes",
        "folds",
        "meta",
        "records",
    )
    PREFIXES: ClassVar[tuple[str, ...]] = ("chunk_prefix", "result_prefix")
    SCRIPT_KEYS: ClassVar[tuple[str, ...]] = FIXED + PREFIXES

    call: str

    @cached_property
    def base(self) -> str:
        return f"{PREFIX}{{{self.call}}}:"

    @cached_property
    def func(self) -> str:
        """The signed job."""
        return self.base + "func"

    @cached_property
    def done(self) -> str:
        """List of finished chunks' records, for the driver."""
        return self.base + "done"

    @cached_property
    def tries(self) -> str:
        """Hash: chunk -> deliveries so far."""
        return self.base + "tries"

    @cached_property
    def running(self) -> str:
        """Hash: chunk -> the slot running it."""
        return self.base + "running"

    @cached_property
    def pending(self) -> str:
        """List of chunk numbers not taken yet."""
        return self.base + "pending"

    @cached_property
    def slots(self) -> str:
        """Hash: slot -> the chunk it holds (a redelivered slot resumes it)."""
        return self.base + "slots"

    @cached_property
    def owners(self) -> str:
        """Hash: slot -> the worker running it (its chunk moves on if that worker dies)."""
        return self.base + "owners"

    @cached_property
    def fenced(self) -> str:
        """Set of slots whose worker was given up for dead: they take nothing more."""
        return self.base + "fenced"

    @cached_property
    def alive(self) -> str:
        """Refreshed by the driver while it lives; workers drop the call once it expires."""
        return self.base + "alive"

    @cached_property
    def count(self) -> str:
        """How many chunks the driver stored (what a reaper deletes)."""
        return self.base + "count"

    @cached_property
    def folds(self) -> str:
        """List of partial reductions an iterator's reduce= call wants (signed JSON)."""
        return self.base + "folds"

    @cached_property
    def output(self) -> str:
        """List of batches of what func printed, warned and logged (signed JSON)."""
        return self.base + "output"

    @cached_property
    def output_bytes(self) -> str:
        """How many bytes of output the workers sent (they stop past the call's cap)."""
        return self.base + "outbytes"

    @cached_property
    def open(self) -> str:
        """Set while the driver may still queue chunks (stored in batches, or planned later)."""
        return self.base + "open"

    @cached_property
    def meta(self) -> str:
        """Hash: what the call is (label, start, state; a named call's name, fingerprint,
        chunk bounds and options): what ``calls()`` lists and ``attach()`` rebuilds."""
        return self.base + "meta"

    @cached_property
    def records(self) -> str:
        """Hash: chunk -> its record, kept for a named call (the done list is popped)."""
        return self.base + "records"

    @cached_property
    def chunk_prefix(self) -> str:
        """The prefix of the chunk keys: chunk ``i`` is this followed by ``i``."""
        return self.base + "chunk:"

    @cached_property
    def result_prefix(self) -> str:
        """The prefix of the result keys: result ``i`` is this followed by ``i``."""
        return self.base + "result:"

    def chunk(self, index: int) -> str:
        """A chunk's bytes (or its descriptor), until a worker reports it."""
        return f"{self.chunk_prefix}{index}"

    def result(self, index: int) -> str:
        """A result kept apart from its record (too big to inline, or a reduce part)."""
        return f"{self.result_prefix}{index}"

    @cached_property
    def fixed(self) -> tuple[str, ...]:
        """The call's fixed keys, in the order of ``FIXED``."""
        return tuple(getattr(self, name) for name in self.FIXED)

    @cached_property
    def script_keys(self) -> tuple[str, ...]:
        """What every Lua script of a call gets as KEYS (``SCRIPT_KEYS``, in that order)."""
        return (*self.fixed, self.chunk_prefix, self.result_prefix)

    def all(self, n_chunks: int) -> list[str]:
        """Every key the call may have created (what the reap script deletes, too)."""
        per_chunk = [k for i in range(n_chunks) for k in (self.chunk(i), self.result(i))]
        return [*self.fixed, self.result(REDUCED), *per_chunk]

    def chunk_file(self, index: int) -> str:
        return f"{self.call}-c{index}"

    def result_file(self, index: int) -> str:
        return f"{self.call}-r{index}"

    def files(self, n_chunks: int) -> list[str]:
        """Names of the shm files the call may have created."""
        names = [
            name for i in range(n_chunks) for name in (self.chunk_file(i), self.result_file(i))
        ]
        return [*names, self.result_file(REDUCED)]

    def slot_task(self, slot: str) -> str:
        """The Celery task id of the draining task ``slot``."""
        return f"celerynb-{self.call}-s{slot}"

    @property
    def reduce_task(self) -> str:
        """The Celery task id of the reduce task."""
        return f"celerynb-{self.call}-reduce"


@dataclass(frozen=True)
class QueueKeys:
    """The keys of one queue: its registries of calls and names, and of its workers."""

    # The worker registry's keys (attribute names), in the order the Lua scripts get them.
    WORKERS: ClassVar[tuple[str, ...]] = ("beats", "info")

    queue: str

    @property
    def calls(self) -> str:
        """Sorted set: the calls on the queue (scored by when their description expires)."""
        return f"{PREFIX}calls:{self.queue}"

    @property
    def names(self) -> str:
        """Hash: name -> call id of the named calls on the queue."""
        return f"{PREFIX}names:{self.queue}"

    @property
    def beats(self) -> str:
        """Sorted set: worker -> the (Redis server) time of its last beat."""
        return f"{PREFIX}workers:{{{self.queue}}}"

    @property
    def info(self) -> str:
        """Hash: worker -> its pool size and state (JSON)."""
        return f"{PREFIX}workers:{{{self.queue}}}:info"

    @property
    def worker_keys(self) -> tuple[str, ...]:
        """What the registry's Lua scripts get as KEYS (``WORKERS``, in that order)."""
        return tuple(getattr(self, name) for name in self.WORKERS)


def wake_key(token: str) -> str:
    """A list a supervisor blocks on beside its calls' lists, pushed to end the wait."""
    return f"{PREFIX}wake:{token}"


def running_pattern() -> str:
    """A SCAN pattern for every call's ``running`` hash on a store."""
    return CallKeys("*").running
