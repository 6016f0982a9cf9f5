"""The typed records a worker sends the driver for each chunk it ran."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import RemoteFailure
from . import codec


class Status(enum.Enum):
    OK = "ok"  # the value is the chunk's result
    ERROR = "error"  # the value is a RemoteFailure
    STORED = "stored"  # a reduce= call's part: the result stays on the plane for the reducer


class Location(enum.Enum):
    """Where a value is: in the record itself, in a Redis key of the call, or an shm file."""

    INLINE = "inline"
    KEY = "key"
    SHM = "shm"


@dataclass(slots=True)
class RunMeta:
    """Facts about one run of a chunk: who ran it, when (wall clock), how long, how many
    bytes it read and returned, and which delivery of the chunk it was."""

    worker: str = ""
    pid: int = 0
    seconds: float = 0.0
    start: float = 0.0
    end: float = 0.0
    tries: int = 1
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True)
class Record:
    """One chunk's outcome (``index`` REDUCED: the reducer's). ``value`` is set when
    ``location`` is INLINE; otherwise the driver fetches it from where it says."""

    index: int
    status: Status
    value: object = None
    location: Location = Location.INLINE
    meta: RunMeta = field(default_factory=RunMeta)

    @property
    def failure(self) -> RemoteFailure:
        assert isinstance(self.value, RemoteFailure)
        return self.value

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled as one call with plain values: a record is decoded once per chunk, and
        finding four classes and calling two enums costs more than the chunk's bookkeeping."""
        m = self.meta
        args = (self.index, self.status.value, self.value, self.location.value)
        return (_record, (*args, m.worker, m.pid, m.seconds, m.start, m.end, m.tries, m.bytes_in))


_STATUS = {s.value: s for s in Status}
_LOCATION = {loc.value: loc for loc in Location}


def _record(index: int, status: str, value: object, location: str, *meta: object) -> Record:
    return Record(index, _STATUS[status], value, _LOCATION[location], RunMeta(*meta))  # type: ignore[arg-type]


@dataclass(frozen=True)
class FoldRequest:
    """A partial reduction the driver asks of an iterator's ``reduce=`` call: reduce the
    stored ``parts`` (in order) into part ``out`` (``REDUCED``: the call's result).

    Sent on the call's ``folds`` list as signed JSON ``[parts, out]``; a draining task
    pops it between chunks.
    """

    parts: Sequence[int]
    out: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))

    def encode(self, secret: str) -> bytes:
        """Signed JSON, for the call's ``folds`` list."""
        return codec.sign(secret, json.dumps([list(self.parts), self.out]).encode())

    @classmethod
    def decode(cls, secret: str, blob: bytes | bytearray | memoryview) -> FoldRequest:
        """The request in ``blob``; SignatureError if it is not signed with ``secret``,
        ValueError if it is not a fold request."""
        body = json.loads(bytes(codec.verify(secret, blob)))
        match body:
            case [list(parts), int(out)] if all(type(i) is int for i in [*parts, out]):
                return cls(parts, out)
        raise ValueError(f"not a fold request: {body!r}"[:200])
