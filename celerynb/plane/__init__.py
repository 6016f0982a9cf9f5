"""The data plane: where chunk and result bytes live (never inside Celery messages).

One :class:`DataPlane` object serves the driver and the workers alike:
:class:`RedisPlane` keeps values in Redis keys of the call (a remote
deployment); :class:`ShmPlane` puts big arrays and frames into files on a
tmpfs and everything else (and whatever does not fit) through Redis (the
embedded cluster). A chunk's key holds its signed bytes, or ``SHM_MARKER``
when its value is in a file. Records (see ``records``) say where each
result is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import PayloadTooLarge, failure_of
from ..inputs import nbytes
from . import codec
from .keys import TTL, CallKeys
from .records import Location, OutputBatch, Record, RunMeta, Status

if TYPE_CHECKING:
    import redis
    from redis.client import Pipeline

    from .shm import ShmStore

INLINE = 64 * 2**10  # values up to this size travel inside records and script replies
SHM_MARKER = b"@shm"  # a chunk key's value when the chunk is in a file
_RESULT_FIX = "use more, smaller chunks (chunks=...) or return less data per chunk"


def check_size(blob: bytes, what: str, fix: str, limit: int) -> None:
    """Raise PayloadTooLarge (naming ``what`` and the ``fix``) if ``blob`` is over ``limit``
    bytes (``settings.Tuning.max_payload``)."""
    if len(blob) > limit:
        raise PayloadTooLarge(
            f"{what} is {len(blob) / 2**20:.1f} MiB serialized, more than the "
            f"{limit / 2**20:.1f} MiB a Redis value may hold; {fix}"
        )


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A Redis client for the data plane (bytes in, bytes out)."""
    import redis

    options: dict[str, Any] = {"socket_connect_timeout": 5, "health_check_interval": 30}
    options.update(kwargs)
    return redis.Redis.from_url(url, **options)


def delete(
    client: redis.Redis, keys: Iterable[str], batch: int = 1000, pipe: Pipeline | None = None
) -> None:
    """Unlink ``keys`` in batches of ``batch`` (one round trip; into ``pipe`` if given)."""
    keys = list(keys)
    with (
        client.pipeline(transaction=False)
        if pipe is None
        else contextlib.nullcontext(pipe) as queue
    ):
        for start in range(0, len(keys), batch):
            queue.unlink(*keys[start : start + batch])
        if pipe is None:
            queue.execute()


class DataPlane(Protocol):
    """What the driver and the workers do with a call's data."""

    redis: redis.Redis
    secret: str
    shared: bool  # values may be in files that only this machine sees
    max_payload: int  # bytes one serialized chunk or result may take

    def file_room(self) -> int | None:
        """Bytes free where big chunks go as files (None: chunks go to the store's memory)."""

    def put_chunk(
        self, pipe: Pipeline, keys: CallKeys, index: int, obj: object, big: bool, what: str = ""
    ) -> int:
        """Queue chunk ``index`` (``what``: its description) into ``pipe`` (or a file); the
        bytes it holds. ``big``: an array or frame worth a file, where there are files."""

    def load_chunk(self, keys: CallKeys, index: int, inline: bytes | None) -> tuple[object, int]:
        """Chunk ``index`` (given what the script returned for it) and its stored bytes."""

    def place(self, keys: CallKeys, record: Record) -> tuple[bytes, bytes]:
        """``(record bytes for the driver, bytes to park in the result key or b"")``."""

    def fetch(self, keys: CallKeys, records: list[Record], keep: bool = False) -> list[Record]:
        """The records with every value kept apart fetched (and its copy removed, unless
        ``keep``: a named call's stay for a later attach)."""

    def load_parts(self, keys: CallKeys, indices: list[int]) -> list[object]:
        """A reduce= call's stored parts ``indices`` (chunks, or partial reductions)."""

    def drop(self, keys: CallKeys, indices: Iterable[int], results: bool) -> None:
        """Delete the files of chunks ``indices`` (and of their results, with ``results``)."""

    def delete_call(self, keys: CallKeys, n_chunks: int, pipe: Pipeline | None = None) -> None:
        """Delete everything the call stored (its keys in ``pipe``, if given)."""

    def push_output(self, keys: CallKeys, batch: OutputBatch, cap: int) -> bool:
        """Send a batch of func's output; whether the call is still under ``cap`` bytes."""

    def pop_output(self, blobs: list[bytes]) -> list[OutputBatch]:
        """Decode (and verify) the output batches the driver popped."""


class RedisPlane:
    """Every value in a Redis key of the call (remote deployments)."""

    shared = False

    def __init__(self, client: redis.Redis, secret: str, *, max_payload: int) -> None:
        self.redis, self.secret, self.max_payload = client, secret, max_payload

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def file_room(self) -> int | None:
        return None

    def put_chunk(
        self, pipe: Pipeline, keys: CallKeys, index: int, obj: object, big: bool, what: str = ""
    ) -> int:
        blob = codec.dumps(self.secret, obj)
        check_size(
            blob, what or f"chunk {index}", "pass more chunks (chunks=...)", self.max_payload
        )
        pipe.set(keys.chunk(index), blob, ex=TTL)
        return len(blob)

    def load_chunk(self, keys: CallKeys, index: int, inline: bytes | None) -> tuple[object, int]:
        if inline is None:  # too big to come through the script
            inline = self.redis.get(keys.chunk(index))  # type: ignore[assignment]
            if inline is None:
                raise LookupError("the chunk is gone from the store (the call was cancelled)")
        return codec.loads(self.secret, inline), len(inline)

    def _park(self, keys: CallKeys, record: Record) -> tuple[Location, bytes]:
        """Where a big or kept value goes: a file (ShmPlane) or the result key."""
        blob = codec.dumps(self.secret, record.value)
        check_size(blob, "the result of this chunk", _RESULT_FIX, self.max_payload)
        return Location.KEY, blob

    def place(self, keys: CallKeys, record: Record) -> tuple[bytes, bytes]:
        try:
            if record.status is Status.STORED:  # a reduce part: always kept apart
                location, parked = self._park(keys, record)
                return self._dump(_moved(record, location)), parked
            blob = self._dump(record)
            if len(blob) <= INLINE:
                return blob, b""
            location, parked = self._park(keys, record)
            return self._dump(_moved(record, location)), parked
        except Exception as exc:
            return self._dump(_failed(record, exc)), b""

    def _dump(self, record: Record) -> bytes:
        try:
            return codec.dumps(self.secret, record, record.value)
        except Exception as exc:
            return codec.dumps(self.secret, _failed(record, exc))

    def fetch(self, keys: CallKeys, records: list[Record], keep: bool = False) -> list[Record]:
        wanted = [r.index for r in records if r.location is Location.KEY and r.status is Status.OK]
        blobs: dict[int, bytes | None] = {}
        if wanted:  # one round trip for all
            pipe = self.redis.pipeline(transaction=False)
            for index in wanted:
                pipe.get(keys.result(index))
                if not keep:
                    pipe.unlink(keys.result(index))
            blobs = dict(zip(wanted, pipe.execute()[:: 1 if keep else 2], strict=True))
        out = []
        for r in records:
            if r.index in blobs:
                blob = blobs[r.index]
                if blob is None:
                    raise LookupError(f"the result of chunk {r.index} is gone from the store")
                r = Record(
                    r.index, r.status, codec.loads(self.secret, blob), Location.INLINE, r.meta
                )
            out.append(r)
        return out

    def load_parts(self, keys: CallKeys, indices: list[int]) -> list[object]:
        pipe = self.redis.pipeline(transaction=False)
        for i in indices:
            pipe.get(keys.result(i))
        blobs = pipe.execute()
        if any(b is None for b in blobs):
            raise LookupError("a part is gone from the store (the call was cancelled)")
        return [codec.loads(self.secret, b) for b in blobs]

    def drop(self, keys: CallKeys, indices: Iterable[int], results: bool) -> None:
        pass

    def delete_call(self, keys: CallKeys, n_chunks: int, pipe: Pipeline | None = None) -> None:
        delete(self.redis, keys.all(n_chunks), pipe=pipe)

    def push_output(self, keys: CallKeys, batch: OutputBatch, cap: int) -> bool:
        blob = batch.encode(self.secret)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(keys.output, blob)
        pipe.expire(keys.output, TTL)
        pipe.incrby(keys.output_bytes, len(blob))
        pipe.expire(keys.output_bytes, TTL)
        return int(pipe.execute()[2]) <= cap

    def pop_output(self, blobs: list[bytes]) -> list[OutputBatch]:
        return [OutputBatch.decode(self.secret, blob) for blob in blobs]


class ShmPlane(RedisPlane):
    """Big arrays and frames in tmpfs files, the rest through Redis (the embedded cluster)."""

    shared = True

    def __init__(
        self, client: redis.Redis, secret: str, store: ShmStore, *, max_payload: int
    ) -> None:
        super().__init__(client, secret, max_payload=max_payload)
        self.store = store

    def __repr__(self) -> str:
        return f"<ShmPlane {str(self.store.directory)!r}>"

    def file_room(self) -> int | None:
        return self.store.free_bytes()

    def put_chunk(
        self, pipe: Pipeline, keys: CallKeys, index: int, obj: object, big: bool, what: str = ""
    ) -> int:
        size = self.store.put_if_room(keys.chunk_file(index), obj) if big else None
        if size is None:  # small, or the tmpfs is full
            return super().put_chunk(pipe, keys, index, obj, big, what)
        pipe.set(keys.chunk(index), SHM_MARKER, ex=TTL)
        return size

    def load_chunk(self, keys: CallKeys, index: int, inline: bytes | None) -> tuple[object, int]:
        if inline == SHM_MARKER:
            name = keys.chunk_file(index)
            return self.store.get(name), self.store.size(name)
        return super().load_chunk(keys, index, inline)

    def _park(self, keys: CallKeys, record: Record) -> tuple[Location, bytes]:
        value = record.value
        if nbytes(value) >= INLINE and self.store.put_if_room(
            keys.result_file(record.index), value
        ):
            return Location.SHM, b""
        return super()._park(keys, record)

    def place(self, keys: CallKeys, record: Record) -> tuple[bytes, bytes]:
        if record.status is Status.OK and nbytes(record.value) >= INLINE:
            try:
                location, parked = self._park(keys, record)
                return self._dump(_moved(record, location)), parked
            except Exception as exc:
                return self._dump(_failed(record, exc)), b""
        return super().place(keys, record)

    def fetch(self, keys: CallKeys, records: list[Record], keep: bool = False) -> list[Record]:
        out = []  # (named calls are not made on the embedded cluster: keep does not apply)
        for r in super().fetch(keys, records, keep):
            if r.location is Location.SHM and r.status is Status.OK:
                name = keys.result_file(r.index)
                try:
                    size, value = self.store.size(name), self.store.get(name)
                finally:
                    self.store.delete([name])
                r.meta.bytes_out += size
                r = Record(r.index, r.status, value, Location.INLINE, r.meta)
            out.append(r)
        return out

    def load_parts(self, keys: CallKeys, indices: list[int]) -> list[object]:
        names = {i: keys.result_file(i) for i in indices}
        in_files = {i for i, n in names.items() if (self.store.directory / n).exists()}
        rest = [i for i in indices if i not in in_files]
        pipe = self.redis.pipeline(transaction=False)
        for i in rest:
            pipe.get(keys.result(i))
        blobs = dict(zip(rest, pipe.execute(), strict=True)) if rest else {}
        if any(b is None for b in blobs.values()):
            raise LookupError("a part is gone from the store (the call was cancelled)")
        return [
            self.store.get(names[i]) if i in in_files else codec.loads(self.secret, blobs[i])
            for i in indices
        ]

    def drop(self, keys: CallKeys, indices: Iterable[int], results: bool) -> None:
        names = []
        for i in indices:
            names.append(keys.chunk_file(i))
            if results:
                names.append(keys.result_file(i))
        self.store.delete(names)

    def delete_call(self, keys: CallKeys, n_chunks: int, pipe: Pipeline | None = None) -> None:
        super().delete_call(keys, n_chunks, pipe)
        self.store.delete(keys.files(n_chunks))


def _moved(record: Record, location: Location) -> Record:
    return Record(record.index, record.status, None, location, record.meta)


def _failed(record: Record, exc: Exception) -> Record:
    """The record of a result that cannot be sent back (unpicklable, too big)."""
    if not isinstance(exc, PayloadTooLarge):
        exc = TypeError(
            f"the result of func cannot be pickled to send it back ({type(exc).__name__}: "
            f"{exc}); return plain data (numbers, strings, lists, dicts, arrays, frames)"
        )
    failure = failure_of(exc, record.meta.worker)
    return Record(record.index, Status.ERROR, failure, Location.INLINE, record.meta)


__all__ = [
    "INLINE",
    "SHM_MARKER",
    "CallKeys",
    "DataPlane",
    "Location",
    "OutputBatch",
    "Record",
    "RedisPlane",
    "RunMeta",
    "ShmPlane",
    "Status",
    "check_size",
    "connect",
    "delete",
]
