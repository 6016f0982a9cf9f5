"""The data plane: chunk and result bytes of one call, kept in Redis keys.

Task messages carry only a call id and a chunk (or slot) number; the bytes
live here, or, for an embedded cluster, in files on a tmpfs (``shm``).
All keys of a call share the prefix ``celerynb:<call id>:`` and expire after
``TTL`` seconds even if nobody deletes them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

TTL = 24 * 3600
# Redis refuses values over 512 MiB (proto-max-bulk-len); stay below it
MAX_PAYLOAD = int(os.environ.get("CELERYNB_MAX_PAYLOAD", 512 * 2**20 - 2**16))
PREFIX = "celerynb:"

OK = "ok"
ERROR = "error"
STORED = "stored"
REF = "ref"  # the value is kept apart (a result key, or a shm file): fetch it
INLINE = 64 * 2**10  # chunks and results up to this size travel through the scripts
REDUCED = -1  # the chunk number of the reducer's record


@dataclass(frozen=True)
class CallKeys:
    """Names of the Redis keys of one call."""

    call: str

    @property
    def base(self) -> str:
        # the braces keep a call's keys in one Redis Cluster hash slot
        return f"{PREFIX}{{{self.call}}}:"

    @property
    def func(self) -> str:
        return self.base + "func"

    @property
    def done(self) -> str:
        return self.base + "done"

    @property
    def tries(self) -> str:
        return self.base + "tries"

    @property
    def running(self) -> str:
        return self.base + "running"

    @property
    def pending(self) -> str:
        return self.base + "pending"

    @property
    def slots(self) -> str:
        return self.base + "slots"

    @property
    def open(self) -> str:
        """Set while the driver may still queue chunks (adaptive chunking's probes run)."""
        return self.base + "open"

    def chunk(self, index: int) -> str:
        return f"{self.base}chunk:{index}"

    def stored(self, index: int) -> str:
        return f"{self.base}result:{index}"

    def all(self, n_chunks: int) -> list[str]:
        """Every key the call may have created."""
        per_chunk = [k for i in range(n_chunks) for k in (self.chunk(i), self.stored(i))]
        return [
            self.func,
            self.done,
            self.tries,
            self.running,
            self.pending,
            self.slots,
            *per_chunk,
        ]

    def files(self, n_chunks: int) -> list[str]:
        """Names of the shm files the call may have created."""
        return [name for i in range(n_chunks) for name in (self.chunk_file(i), self.result_file(i))]

    def chunk_file(self, index: int) -> str:
        return f"{self.call}-c{index}"

    def result_file(self, index: int) -> str:
        return f"{self.call}-r{index}"


def task_id(call: str, index: int) -> str:
    """The Celery task id of chunk ``index`` of ``call`` (``REDUCED``: the reducer)."""
    return f"celerynb-{call}-{index}"


def slot_task_id(call: str, slot: int) -> str:
    """The Celery task id of the draining task ``slot`` of ``call``."""
    return f"celerynb-{call}-s{slot}"


def group_id(call: str) -> str:
    """The Celery group id of a call's chord header."""
    return f"celerynb-{call}-group"


def chord_keys(call: str, n_chunks: int) -> list[str]:
    """The keys Celery's Redis backend keeps for a call's chord."""
    group = f"celery-taskset-meta-{group_id(call)}"
    tasks = [f"celery-task-meta-{task_id(call, i)}" for i in [*range(n_chunks), REDUCED]]
    return [*tasks, group, *(group + suffix for suffix in (".j", ".t", ".s", ".d", ".c"))]


class PayloadTooLarge(ValueError):
    """A chunk or a result is larger than the store accepts."""


def check_size(blob: bytes, what: str, fix: str) -> None:
    """Raise PayloadTooLarge (naming ``what`` and the ``fix``) if ``blob`` is too big."""
    if len(blob) > MAX_PAYLOAD:
        raise PayloadTooLarge(
            f"{what} is {len(blob) / 2**20:.1f} MiB serialized, more than the "
            f"{MAX_PAYLOAD / 2**20:.1f} MiB a Redis value may hold; {fix}"
        )


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A Redis client for the data plane (bytes in, bytes out)."""
    options: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


def delete(client: redis.Redis, keys: Iterable[str], batch: int = 1000) -> None:
    """Unlink ``keys`` in batches (one round trip per batch)."""
    keys = list(keys)
    with client.pipeline(transaction=False) as pipe:
        for start in range(0, len(keys), batch):
            pipe.unlink(*keys[start : start + batch])
        pipe.execute()


# Worker, at the start of a chunk: nil if the chunk is gone (cancelled or
# done by an earlier delivery), else {tries, job bytes, chunk bytes}.
CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local tries = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
redis.call('EXPIRE', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[4], ARGV[3])
local job
if ARGV[4] == '1' then  -- the worker holds the job already: only say whether it exists
  job = redis.call('EXISTS', KEYS[2]) == 1 and '' or false
else
  job = redis.call('GET', KEYS[2])
end
return {tries, job, redis.call('GET', KEYS[1])}
"""

# Worker, at the end: push the record (and store a chord part) only while the
# guard key (the chunk, or the job for the reducer) still exists, so nothing
# is written for a call that was cancelled and cleaned up meanwhile.
FINISH = """
redis.call('HDEL', KEYS[3], ARGV[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[4] ~= '' then redis.call('SET', KEYS[4], ARGV[4], 'EX', ARGV[2]) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[2])
if ARGV[5] == '1' then redis.call('UNLINK', KEYS[1]) end
return 1
"""

# A draining task, between chunks (one round trip): report the previous chunk
# (ARGV[4], its record ARGV[5]) unless the call was cancelled meanwhile, then
# (if ARGV[6] is '1') take the next: the chunk this slot held when its process
# died, else the next pending one. Every key shares the prefix ARGV[1] (one
# hash slot). Returns {accepted, index, tries, job, chunk, pending}: index is
# false when there is nothing to take (pending: chunks left, -1 if the call is
# still open: more may come); job '' if the worker holds it already (ARGV[7]),
# false if it is gone; chunk false when over ARGV[8] bytes (GET it).
NEXT = """
local base, slot, ttl = ARGV[1], ARGV[2], ARGV[3]
local prev = ARGV[4]
local accepted = 0
if prev ~= '' then
  redis.call('HDEL', base .. 'running', prev)
  redis.call('HDEL', base .. 'slots', slot)
  if redis.call('EXISTS', base .. 'chunk:' .. prev) == 1 then
    redis.call('RPUSH', base .. 'done', ARGV[5])
    redis.call('EXPIRE', base .. 'done', ttl)
    redis.call('UNLINK', base .. 'chunk:' .. prev)
    accepted = 1
  else
    redis.call('UNLINK', base .. 'result:' .. prev)
  end
end
local left = redis.call('LLEN', base .. 'pending')
if left == 0 and redis.call('EXISTS', base .. 'open') == 1 then left = -1 end
if ARGV[6] ~= '1' then return {accepted, false, 0, false, false, left} end
local index = redis.call('HGET', base .. 'slots', slot)
if not index then index = redis.call('LPOP', base .. 'pending') end
if not index then return {accepted, false, 0, false, false, left} end
if redis.call('EXISTS', base .. 'chunk:' .. index) == 0 then
  redis.call('HDEL', base .. 'slots', slot)
  return {accepted, false, 0, false, false, 0}
end
local tries = redis.call('HINCRBY', base .. 'tries', index, 1)
redis.call('HSET', base .. 'running', index, slot)
redis.call('HSET', base .. 'slots', slot, index)
for _, name in ipairs({'tries', 'running', 'slots'}) do
  redis.call('EXPIRE', base .. name, ttl)
end
local job
if ARGV[7] == '1' then
  job = redis.call('EXISTS', base .. 'func') == 1 and '' or false
else
  job = redis.call('GET', base .. 'func')
end
local chunk = false
if redis.call('STRLEN', base .. 'chunk:' .. index) <= tonumber(ARGV[8]) then
  chunk = redis.call('GET', base .. 'chunk:' .. index)
end
return {accepted, tonumber(index), tries, job, chunk, 0}
"""
