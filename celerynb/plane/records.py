"""The typed records a worker sends the driver for each chunk it ran."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..errors import RemoteFailure


class Status(enum.Enum):
    OK = "ok"  # the value is the chunk's result
    ERROR = "error"  # the value is a RemoteFailure
    STORED = "stored"  # a reduce= call's part: the result stays on the plane for the reducer


class Location(enum.Enum):
    """Where a value is: in the record itself, in a Redis key of the call, or an shm file."""

    INLINE = "inline"
    KEY = "key"
    SHM = "shm"


@dataclass(frozen=True)
class RunMeta:
    """Facts about one run of a chunk: where, who, how long."""

    worker: str = ""
    pid: int = 0
    seconds: float = 0.0


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
