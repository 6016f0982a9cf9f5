"""The store's Lua scripts (taking chunks, requeueing, reaping, the worker registry),
behind typed wrappers.

A draining task calls :func:`next_chunk` between chunks: one round trip
reports the chunk it ran (unless the call was cancelled meanwhile) and takes
the next one: the chunk its slot held when its process died, else the next
pending one. :func:`push_record` pushes a record outside that loop (a reducer's),
:func:`requeue` gives dead workers' chunks back, :func:`reap` deletes an
abandoned call, and :func:`beat` / :func:`roll` keep a queue's worker registry.

No key name is spelled in Lua: a call's scripts get its keys as KEYS in the
order ``CallKeys.SCRIPT_KEYS`` defines (the fixed keys, then the prefixes of
the per-chunk keys), bound to local names by a preamble made here from that
same order; the registry's scripts get ``QueueKeys.WORKERS`` the same way.
Every key of a call shares its prefix (one Redis Cluster hash slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .keys import REDUCED, TTL, CallKeys, QueueKeys

if TYPE_CHECKING:
    import redis
    from redis.client import Pipeline
    from redis.commands.core import Script


def _preamble(names: Sequence[str]) -> str:
    """``local a, b = KEYS[1], KEYS[2]``: a script's keys bound to their names."""
    slots = ", ".join(f"KEYS[{i}]" for i in range(1, len(names) + 1))
    return f"local {', '.join(names)} = {slots}\n"


def _call_script(body: str) -> str:
    """A script of one call: it gets ``CallKeys.script_keys`` (chunk ``i`` is
    ``chunk_prefix .. i``, result ``i`` is ``result_prefix .. i``)."""
    return _preamble(CallKeys.SCRIPT_KEYS) + body


def _registry_script(body: str) -> str:
    """A script of a queue's worker registry: it gets ``QueueKeys.worker_keys``."""
    return _preamble(QueueKeys.WORKERS) + body


# ARGV: slot, ttl, prev, record, take, have_job, inline_max, worker, watch (see
# next_chunk). Returns {accepted, index, tries, job, chunk, pending}: index is false
# when nothing was taken; pending: chunks left to take, OPEN if none but the call may
# queue more, ABANDONED if its driver is gone (watch = '1'); job '' if the worker holds
# it already, false if it is gone; chunk false when over inline_max bytes (GET it). A
# fenced slot (its worker was given up for dead) takes nothing more. A named call (its
# meta has a keep time) also keeps each record in its records hash, and is never
# abandoned.
_NEXT = _call_script("""
local slot, ttl, prev, record = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local accepted = 0
local keep = redis.call('HGET', meta, 'keep')  -- a named call's
if prev ~= '' then
  redis.call('HDEL', running, prev)
  redis.call('HDEL', slots, slot)
  if redis.call('EXISTS', chunk_prefix .. prev) == 1 then
    redis.call('RPUSH', done, record)
    redis.call('EXPIRE', done, ttl)
    redis.call('UNLINK', chunk_prefix .. prev)
    if keep then
      local kept = math.max(tonumber(ttl), tonumber(keep))
      redis.call('HSET', records, prev, record)
      redis.call('EXPIRE', records, kept)
      redis.call('EXPIRE', result_prefix .. prev, kept)
    end
    accepted = 1
  else
    redis.call('UNLINK', result_prefix .. prev)
  end
end
if ARGV[9] == '1' and not keep and redis.call('EXISTS', alive) == 0 then
  return {accepted, false, 0, false, false, -2}
end
local is_fenced = redis.call('SISMEMBER', fenced, slot) == 1
if ARGV[5] ~= '1' or is_fenced then
  redis.call('HDEL', owners, slot)
  local left = 0
  if not is_fenced then
    left = redis.call('LLEN', pending)
    if left == 0 and redis.call('EXISTS', open) == 1 then left = -1 end
  end
  return {accepted, false, 0, false, false, left}
end
local index = redis.call('HGET', slots, slot)
if index and redis.call('EXISTS', chunk_prefix .. index) == 0 then
  redis.call('HDEL', slots, slot)
  index = false
end
while not index do
  index = redis.call('LPOP', pending)
  if not index then break end
  if redis.call('EXISTS', chunk_prefix .. index) == 0 then index = false end
end
if not index then
  redis.call('HDEL', owners, slot)
  local left = redis.call('EXISTS', open) == 1 and -1 or 0
  return {accepted, false, 0, false, false, left}
end
local n_tries = redis.call('HINCRBY', tries, index, 1)
redis.call('HSET', running, index, slot)
redis.call('HSET', slots, slot, index)
redis.call('HSET', owners, slot, ARGV[8])
for _, key in ipairs({tries, running, slots, owners}) do
  redis.call('EXPIRE', key, ttl)
end
local job
if ARGV[6] == '1' then
  job = redis.call('EXISTS', func) == 1 and '' or false
else
  job = redis.call('GET', func)
end
local chunk = false
if redis.call('STRLEN', chunk_prefix .. index) <= tonumber(ARGV[7]) then
  chunk = redis.call('GET', chunk_prefix .. index)
end
return {accepted, tonumber(index), n_tries, job, chunk, redis.call('LLEN', pending)}
""")

# Driver, when workers died: every slot they ran gives its chunk back (to the head
# of the pending list) and is fenced. ARGV: ttl, dead workers. Returns how many
# slots were fenced.
_REQUEUE = _call_script("""
local dead = {}
for i = 2, #ARGV do dead[ARGV[i]] = true end
local held = redis.call('HGETALL', owners)
local moved = 0
for i = 1, #held, 2 do
  local slot, owner = held[i], held[i + 1]
  if dead[owner] then
    local index = redis.call('HGET', slots, slot)
    redis.call('HDEL', slots, slot)
    redis.call('HDEL', owners, slot)
    redis.call('SADD', fenced, slot)
    redis.call('EXPIRE', fenced, ARGV[1])
    if index then
      redis.call('HDEL', running, index)
      if redis.call('EXISTS', chunk_prefix .. index) == 1 then
        redis.call('LPUSH', pending, index)
      end
    end
    moved = moved + 1
  end
end
return moved
""")

# Worker, for a call whose driver is gone: delete all of it, the keys CallKeys.all
# lists for its stored chunk count: the fixed keys, the reducer's result (ARGV[1]:
# its number), each chunk and result. Returns the chunk count.
_REAP = _call_script(f"""
local n = tonumber(redis.call('GET', count) or '0')
for i = 0, n - 1 do
  redis.call('UNLINK', chunk_prefix .. i, result_prefix .. i)
end
redis.call('UNLINK', result_prefix .. ARGV[1])
redis.call('UNLINK', unpack(KEYS, 1, {len(CallKeys.FIXED)}))
return n
""")

# Worker main process: its beat, stamped with the server's clock (no skew between
# machines). ARGV: worker, info, seconds to keep the registry.
_BEAT = _registry_script("""
local t = redis.call('TIME')
redis.call('ZADD', beats, t[1] + t[2] / 1000000, ARGV[1])
if ARGV[2] == '' then
  redis.call('ZREM', beats, ARGV[1])
  redis.call('HDEL', info, ARGV[1])
else
  redis.call('HSET', info, ARGV[1], ARGV[2])
end
redis.call('EXPIRE', beats, ARGV[3])
redis.call('EXPIRE', info, ARGV[3])
return 1
""")

# Driver: a registry key's time to live made at least ARGV[1] s, never shortened (Redis
# 6.2 has no EXPIRE GT). KEYS: the one key (a registry of the queue's calls or names).
_EXTEND = """
local left = redis.call('TTL', KEYS[1])
if left == -1 or left < tonumber(ARGV[1]) then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return 1
"""

# Driver: the workers that beat within the grace, their info, and the ones that
# stopped beating (forgotten after ARGV[2] s). ARGV: grace, forget.
_ROLL = _registry_script("""
local t = redis.call('TIME')
local now = t[1] + t[2] / 1000000
local old = redis.call('ZRANGEBYSCORE', beats, '-inf', now - tonumber(ARGV[2]))
if #old > 0 then
  redis.call('ZREM', beats, unpack(old))
  redis.call('HDEL', info, unpack(old))
end
local alive = redis.call('ZRANGEBYSCORE', beats, now - tonumber(ARGV[1]), '+inf')
local dead = redis.call('ZRANGEBYSCORE', beats, '-inf', '(' .. (now - tonumber(ARGV[1])))
local infos = {}
for i, name in ipairs(alive) do infos[i] = redis.call('HGET', info, name) or '' end
return {alive, infos, dead}
""")

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
        script(keys=keys.script_keys, args=argv, client=pipe)
        reply = pipe.execute()[-1]
    else:
        reply = script(keys=keys.script_keys, args=argv, client=client)
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


# ARGV: record, parked value, ttl, index. A named call also keeps the record (and the
# value) for its keep time. The record (the reducer's) is pushed only while the call's
# job still exists.
_PUSH = _call_script("""
if redis.call('EXISTS', func) == 0 then return 0 end
local ttl = ARGV[3]
local keep = redis.call('HGET', meta, 'keep')  -- a named call's
if keep then ttl = math.max(tonumber(ttl), tonumber(keep)) end
if ARGV[2] ~= '' then redis.call('SET', result_prefix .. ARGV[4], ARGV[2], 'EX', ttl) end
redis.call('RPUSH', done, ARGV[1])
redis.call('EXPIRE', done, ttl)
if keep then
  redis.call('HSET', records, ARGV[4], ARGV[1])
  redis.call('EXPIRE', records, ttl)
end
return 1
""")


def push_record(
    client: redis.Redis, keys: CallKeys, index: int, record: bytes, parked: bytes
) -> bool:
    """Push a record for the driver (and park its value) unless the call is gone."""
    pushed = _script(client, _PUSH)(
        keys=keys.script_keys,
        args=[record, parked, TTL, index],
        client=client,
    )
    return bool(pushed)


def requeue(client: redis.Redis, keys: CallKeys, dead: list[str]) -> int:
    """Give the chunks of the slots that ``dead`` workers ran back; how many slots that was."""
    return int(_script(client, _REQUEUE)(keys=keys.script_keys, args=[TTL, *dead]))


def reap(client: redis.Redis, keys: CallKeys) -> None:
    """Delete everything of a call whose driver is gone (every key ``keys.all`` lists for
    the chunks it stored)."""
    _script(client, _REAP)(keys=keys.script_keys, args=[REDUCED])


def extend(client: redis.Redis, pipe: Pipeline, key: str, seconds: float) -> None:
    """Queue on ``pipe`` (of ``client``): ``key`` lives at least ``seconds`` from now."""
    _script(client, _EXTEND)(keys=[key], args=[max(1, int(seconds))], client=pipe)


def beat(client: redis.Redis, keys: QueueKeys, worker: str, info: str, keep: float) -> None:
    """A worker's heartbeat (``info`` '': it leaves the registry)."""
    _script(client, _BEAT)(keys=keys.worker_keys, args=[worker, info, int(keep)])


@dataclass(frozen=True)
class Roll:
    """The workers of a queue: alive (name -> info), and those that stopped beating."""

    alive: dict[str, str]
    dead: list[str]


def roll(client: redis.Redis, keys: QueueKeys, grace: float, forget: float = 3600) -> Roll:
    names, infos, dead = _script(client, _ROLL)(keys=keys.worker_keys, args=[grace, forget])
    alive = {n.decode(): i.decode() for n, i in zip(names, infos, strict=True)}
    return Roll(alive, [d.decode() for d in dead])
