"""The data plane's one Lua script, behind a typed wrapper.

A draining task calls :func:`next_chunk` between chunks: one round trip
reports the chunk it ran (unless the call was cancelled meanwhile) and takes
the next one: the chunk its slot held when its process died, else the next
pending one. Every key shares the call's prefix (one Redis Cluster hash slot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .keys import TTL, CallKeys, QueueKeys

if TYPE_CHECKING:
    import redis
    from redis.commands.core import Script

# ARGV: base, slot, ttl, prev, record, take, have_job, inline_max, worker, watch
# (see next_chunk). Returns {accepted, index, tries, job, chunk, pending}: index
# is false when nothing was taken; pending: chunks left to take, OPEN if none but
# the call may queue more, ABANDONED if its driver is gone (watch = '1'); job ''
# if the worker holds it already, false if it is gone; chunk false when over
# inline_max bytes (GET it). A fenced slot (its worker was given up for dead)
# takes nothing more. A named call (its meta has a keep time) also keeps each
# record in its records hash, and is never abandoned.
_NEXT = """
local base, slot, ttl = ARGV[1], ARGV[2], ARGV[3]
local prev = ARGV[4]
local accepted = 0
local keep = redis.call('HGET', base .. 'meta', 'keep')  -- a named call's
if prev ~= '' then
  redis.call('HDEL', base .. 'running', prev)
  redis.call('HDEL', base .. 'slots', slot)
  if redis.call('EXISTS', base .. 'chunk:' .. prev) == 1 then
    redis.call('RPUSH', base .. 'done', ARGV[5])
    redis.call('EXPIRE', base .. 'done', ttl)
    redis.call('UNLINK', base .. 'chunk:' .. prev)
    if keep then
      local kept = math.max(tonumber(ttl), tonumber(keep))
      redis.call('HSET', base .. 'records', prev, ARGV[5])
      redis.call('EXPIRE', base .. 'records', kept)
      redis.call('EXPIRE', base .. 'result:' .. prev, kept)
    end
    accepted = 1
  else
    redis.call('UNLINK', base .. 'result:' .. prev)
  end
end
if ARGV[10] == '1' and not keep and redis.call('EXISTS', base .. 'alive') == 0 then
  return {accepted, false, 0, false, false, -2}
end
local fenced = redis.call('SISMEMBER', base .. 'fenced', slot) == 1
if ARGV[6] ~= '1' or fenced then
  redis.call('HDEL', base .. 'owners', slot)
  local left = 0
  if not fenced then
    left = redis.call('LLEN', base .. 'pending')
    if left == 0 and redis.call('EXISTS', base .. 'open') == 1 then left = -1 end
  end
  return {accepted, false, 0, false, false, left}
end
local index = redis.call('HGET', base .. 'slots', slot)
if index and redis.call('EXISTS', base .. 'chunk:' .. index) == 0 then
  redis.call('HDEL', base .. 'slots', slot)
  index = false
end
while not index do
  index = redis.call('LPOP', base .. 'pending')
  if not index then break end
  if redis.call('EXISTS', base .. 'chunk:' .. index) == 0 then index = false end
end
if not index then
  redis.call('HDEL', base .. 'owners', slot)
  local left = redis.call('EXISTS', base .. 'open') == 1 and -1 or 0
  return {accepted, false, 0, false, false, left}
end
local tries = redis.call('HINCRBY', base .. 'tries', index, 1)
redis.call('HSET', base .. 'running', index, slot)
redis.call('HSET', base .. 'slots', slot, index)
redis.call('HSET', base .. 'owners', slot, ARGV[9])
for _, name in ipairs({'tries', 'running', 'slots', 'owners'}) do
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
return {accepted, tonumber(index), tries, job, chunk, redis.call('LLEN', base .. 'pending')}
"""

# Driver, when workers died: every slot they ran gives its chunk back (to the head
# of the pending list) and is fenced. ARGV: base, ttl, dead workers. Returns how
# many slots were fenced.
_REQUEUE = """
local base = ARGV[1]
local dead = {}
for i = 3, #ARGV do dead[ARGV[i]] = true end
local owners = redis.call('HGETALL', base .. 'owners')
local moved = 0
for i = 1, #owners, 2 do
  local slot, owner = owners[i], owners[i + 1]
  if dead[owner] then
    local index = redis.call('HGET', base .. 'slots', slot)
    redis.call('HDEL', base .. 'slots', slot)
    redis.call('HDEL', base .. 'owners', slot)
    redis.call('SADD', base .. 'fenced', slot)
    redis.call('EXPIRE', base .. 'fenced', ARGV[2])
    if index then
      redis.call('HDEL', base .. 'running', index)
      if redis.call('EXISTS', base .. 'chunk:' .. index) == 1 then
        redis.call('LPUSH', base .. 'pending', index)
      end
    end
    moved = moved + 1
  end
end
return moved
"""

# Worker, for a call whose driver is gone: delete all of it. ARGV: base.
_REAP = """
local base = ARGV[1]
local n = tonumber(redis.call('GET', base .. 'count') or '0')
for i = 0, n - 1 do
  redis.call('UNLINK', base .. 'chunk:' .. i, base .. 'result:' .. i)
end
for _, name in ipairs({'func', 'done', 'tries', 'running', 'pending', 'slots', 'owners',
                       'fenced', 'count', 'open', 'alive', 'result:-1', 'meta', 'records',
                       'output', 'outbytes', 'folds'}) do
  redis.call('UNLINK', base .. name)
end
return n
"""

# Worker main process: its beat, stamped with the server's clock (no skew between
# machines). KEYS: beats, info. ARGV: worker, info, seconds to keep the registry.
_BEAT = """
local t = redis.call('TIME')
redis.call('ZADD', KEYS[1], t[1] + t[2] / 1000000, ARGV[1])
if ARGV[2] == '' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
else
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""

# Driver: the workers that beat within the grace, their info, and the ones that
# stopped beating (forgotten after ARGV[2] s). KEYS: beats, info. ARGV: grace, forget.
_ROLL = """
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if #old > 0 then
  redis.call('ZREM', KEYS[1], unpack(old))
  redis.call('HDEL', KEYS[2], unpack(old))
end
local alive = redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[1])))
local infos = {}
for i, name in ipairs(alive) do infos[i] = redis.call('HGET', KEYS[2], name) or '' end
return {alive, infos, dead}
"""

OPEN = -1  # Taken.pending when the call may still queue chunks
ABANDONED = -2  # Taken.pending when the call's driver is gone


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
    pending: int  # chunks left to take; OPEN: none yet, but the call may queue more;
    # ABANDONED: the call's driver is gone


_registered: dict[tuple[int, str], Script] = {}


def _script(client: redis.Redis, source: str) -> Script:
    key = (id(client), source)
    script = _registered.get(key)
    if script is None:
        script = _registered[key] = client.register_script(source)
    return script


def forget_clients() -> None:
    """Drop the registered scripts (a forked process makes new clients)."""
    _registered.clear()


def next_chunk(
    client: redis.Redis,
    keys: CallKeys,
    slot: str,
    report: Report | None,
    *,
    take: bool,
    have_job: bool,
    inline_max: int,
    worker: str,
    watch: bool,
) -> Taken:
    """Report ``report`` (if any) and, with ``take``, take the slot's next chunk.

    ``have_job``: the worker holds the call's job already; ``inline_max``: bytes
    up to which the chunk comes with the reply; ``worker``: who runs it (its
    chunk moves on if it dies); ``watch``: drop the call if its driver is gone.
    """
    argv: list[str | bytes | int] = [
        keys.base,
        slot,
        TTL,
        str(report.index) if report else "",
        report.record if report else b"",
        "1" if take else "0",
        "1" if have_job else "0",
        inline_max,
        worker,
        "1" if watch else "0",
    ]
    script = _script(client, _NEXT)
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


# KEYS: guard (the job), done, parked key, meta, records. ARGV: record, parked value,
# ttl, index. A named call also keeps the record (and the value) for its keep time.
# The reducer's record is pushed only while the call's job still exists.
_PUSH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ttl = ARGV[3]
local keep = redis.call('HGET', KEYS[4], 'keep')  -- a named call's
if keep then ttl = math.max(tonumber(ttl), tonumber(keep)) end
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2], 'EX', ttl) end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl)
if keep then
  redis.call('HSET', KEYS[5], ARGV[4], ARGV[1])
  redis.call('EXPIRE', KEYS[5], ttl)
end
return 1
"""


def push_record(
    client: redis.Redis, keys: CallKeys, index: int, record: bytes, parked: bytes
) -> bool:
    """Push a record for the driver (and park its value) unless the call is gone."""
    pushed = _script(client, _PUSH)(
        keys=[keys.func, keys.done, keys.result(index), keys.meta, keys.records],
        args=[record, parked, TTL, index],
        client=client,
    )
    return bool(pushed)


def requeue(client: redis.Redis, keys: CallKeys, dead: list[str]) -> int:
    """Give the chunks of the slots that ``dead`` workers ran back; how many slots that was."""
    return int(_script(client, _REQUEUE)(keys=[keys.done], args=[keys.base, TTL, *dead]))


def reap(client: redis.Redis, keys: CallKeys) -> None:
    """Delete everything of a call whose driver is gone."""
    _script(client, _REAP)(keys=[keys.done], args=[keys.base])


def beat(client: redis.Redis, keys: QueueKeys, worker: str, info: str, keep: float) -> None:
    """A worker's heartbeat (``info`` '': it leaves the registry)."""
    _script(client, _BEAT)(keys=[keys.beats, keys.info], args=[worker, info, int(keep)])


@dataclass(frozen=True)
class Roll:
    """The workers of a queue: alive (name -> info), and those that stopped beating."""

    alive: dict[str, str]
    dead: list[str]


def roll(client: redis.Redis, keys: QueueKeys, grace: float, forget: float = 3600) -> Roll:
    names, infos, dead = _script(client, _ROLL)(keys=[keys.beats, keys.info], args=[grace, forget])
    alive = {n.decode(): i.decode() for n, i in zip(names, infos, strict=True)}
    return Roll(alive, [d.decode() for d in dead])
