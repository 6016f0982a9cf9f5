"""The data plane's one Lua script, behind a typed wrapper.

A draining task calls :func:`next_chunk` between chunks: one round trip
reports the chunk it ran (unless the call was cancelled meanwhile) and takes
the next one: the chunk its slot held when its process died, else the next
pending one. Every key shares the call's prefix (one Redis Cluster hash slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .keys import TTL, CallKeys

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

# ARGV: base, slot, ttl, prev, record, take, have_job, inline_max (see _argv)
# Returns {accepted, index, tries, job, chunk, pending}: index is false when there
# is nothing to take (pending: chunks left, -1 if the call is still open: more may
# come); job '' if the worker holds it already, false if it is gone; chunk false
# when over inline_max bytes (GET it).
_NEXT = """
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

OPEN = -1  # Taken.pending when the call may still queue chunks


@dataclass(frozen=True)
class Report:
    """The chunk a slot ran: its record, and a value to park in the result key (or b"")."""

    index: int
    record: bytes
    parked: bytes = b""


@dataclass(frozen=True)
class Taken:
    """The reply of :func:`next_chunk`."""

    accepted: bool  # the report was recorded (False: the call was cancelled or is gone)
    index: int | None  # the chunk taken, None if none
    tries: int  # deliveries of that chunk so far, this one included
    job_found: bool  # the call's job still exists
    job: bytes | None  # the job, unless the worker holds it already (or it is gone)
    chunk: bytes | None  # the chunk's bytes, None if too big to come inline (GET it)
    pending: int  # chunks left to take; OPEN: none yet, but the call may queue more


_scripts: dict[int, Script] = {}
_pushes: dict[int, Script] = {}


def _script(client: redis.Redis) -> Script:
    script = _scripts.get(id(client))
    if script is None:
        script = _scripts[id(client)] = client.register_script(_NEXT)
    return script


def forget_clients() -> None:
    """Drop the registered scripts (a forked process makes new clients)."""
    _scripts.clear()
    _pushes.clear()


def next_chunk(
    client: redis.Redis,
    keys: CallKeys,
    slot: int,
    report: Report | None,
    *,
    take: bool,
    have_job: bool,
    inline_max: int,
) -> Taken:
    """Report ``report`` (if any) and, with ``take``, take the slot's next chunk."""
    argv: list[str | bytes | int] = [
        keys.base,
        slot,
        TTL,
        str(report.index) if report else "",
        report.record if report else b"",
        "1" if take else "0",
        "1" if have_job else "0",
        inline_max,
    ]
    script = _script(client)
    if report is not None and report.parked:  # parked in the same round trip
        pipe = client.pipeline(transaction=False)
        pipe.set(keys.result(report.index), report.parked, ex=TTL)
        script(keys=[keys.done], args=argv, client=pipe)
        reply = pipe.execute()[-1]
    else:
        reply = script(keys=[keys.done], args=argv, client=client)
    accepted, index, tries, job, chunk, pending = reply
    return Taken(
        accepted=bool(accepted),
        index=None if index is None else int(index),
        tries=int(tries),
        job_found=job is not None,
        job=job or None,
        chunk=chunk,
        pending=int(pending),
    )


# KEYS: guard (the job), done, parked key. ARGV: record, parked value, ttl.
# The reducer's record is pushed only while the call's job still exists.
_PUSH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[3]) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


def push_record(
    client: redis.Redis, keys: CallKeys, index: int, record: bytes, parked: bytes
) -> bool:
    """Push a record for the driver (and park its value) unless the call is gone."""
    script = _pushes.get(id(client))
    if script is None:
        script = _pushes[id(client)] = client.register_script(_PUSH)
    pushed = script(
        keys=[keys.func, keys.done, keys.result(index)], args=[record, parked, TTL], client=client
    )
    return bool(pushed)
