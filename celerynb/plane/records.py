"""Every record that crosses a process boundary, each with one encode and one decode."""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..errors import RemoteFailure
from ..options import SlotOptions
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


# -- the workers' registry ------------------------------------------------------------------------
class WorkerState(enum.Enum):
    UP = "up"  # takes chunks
    LEAVING = "leaving"  # in a warm shutdown: hands its slots over, takes nothing more


INCARNATION_SEP = "#"  # between a worker's name and its incarnation in a registry member


@dataclass(frozen=True)
class WorkerInfo:
    """One worker process start (an *incarnation* of the worker ``name``) as its heartbeat
    describes it. The registry member (and the owner of the slots it runs) is
    ``<name>#<incarnation>``: a worker restarted under the same name is a new member, so
    the chunks of the one that died are seen to be lost. ``started``: its wall-clock start."""

    name: str
    incarnation: str = ""
    host: str = ""
    pid: int = 0
    concurrency: int = 1
    state: WorkerState = WorkerState.UP
    started: float = 0.0

    @property
    def member(self) -> str:
        """Its member in the registry: ``<name>#<incarnation>`` (the name alone if none)."""
        return worker_member(self.name, self.incarnation)

    def encode(self) -> str:
        """The registry's info value (JSON; name and incarnation are in the member)."""
        return json.dumps(
            {
                "concurrency": self.concurrency,
                "state": self.state.value,
                "host": self.host,
                "pid": self.pid,
                "started": self.started,
            }
        )

    @classmethod
    def decode(cls, member: str, text: str | bytes) -> WorkerInfo:
        """The info of registry ``member``; what is missing or garbled in ``text`` (an
        older worker's entry, a torn write) takes its default: one pool process, up."""
        name, _, incarnation = member.rpartition(INCARNATION_SEP)
        if not name:  # no incarnation: a worker of an older celerynb
            name, incarnation = member, ""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict):
            return cls(name, incarnation)
        return cls(
            name,
            incarnation,
            host=host if isinstance(host := data.get("host"), str) else "",
            pid=int(_number(data.get("pid"), 0)),
            concurrency=max(1, int(_number(data.get("concurrency"), 1))),
            state=_STATE.get(str(data.get("state", "")), WorkerState.UP),
            started=_number(data.get("started"), 0.0),
        )


_STATE = {s.value: s for s in WorkerState}


def worker_member(name: str, incarnation: str) -> str:
    """The registry member (and slot owner) of incarnation ``incarnation`` of worker ``name``."""
    return f"{name}{INCARNATION_SEP}{incarnation}" if incarnation else name


def superseded(infos: list[WorkerInfo]) -> list[str]:
    """The members among ``infos`` (the live ones of a registry) that a newer incarnation
    of their name replaced: that worker was restarted, the old process is gone. One in a
    warm shutdown is not among them: it still hands its slots over itself."""
    newest: dict[str, WorkerInfo] = {}
    for info in infos:
        best = newest.get(info.name)
        if info.incarnation and (
            best is None or (info.started, info.incarnation) > (best.started, best.incarnation)
        ):
            newest[info.name] = info
    return [
        info.member
        for info in infos
        if info.incarnation
        and info is not newest[info.name]
        and info.state is not WorkerState.LEAVING
    ]


def _number(value: object, default: float) -> float:
    """``value`` if it is a (finite) number, else ``default``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return default
    return float(value) if abs(value) != float("inf") else default


# -- a worker's start-up report -------------------------------------------------------------------
class ReadyKind(enum.Enum):
    POOL = "pool"  # one pool process is initialised
    WORKER = "worker"  # the main process consumes the queue


_READY_WORKER = re.compile(
    r"celerynb worker (?P<name>\S+) ready: queue (?P<queue>'[^']*'), "
    r"broker (?P<broker>\S+), store (?P<store>\S+)"
)
_READY_POOL = re.compile(r"celerynb worker pool process (?P<pid>\d+) ready")


@dataclass(frozen=True)
class ReadyLine:
    """A worker's report that it is up, one line of text: what ``celerynb worker`` prints
    on stderr (the detached cluster's log, where its starter looks for it) and what the
    embedded worker writes to its ready pipe (a line per pool process, then the main's).
    ``broker`` and ``store`` are URLs with their passwords masked."""

    kind: ReadyKind
    name: str = ""  # the worker's (main)
    pid: int = 0  # the pool process's
    queue: str = ""
    broker: str = ""
    store: str = ""

    def encode(self) -> str:
        """The line, without its newline."""
        if self.kind is ReadyKind.POOL:
            return f"celerynb worker pool process {self.pid} ready"
        return (
            f"celerynb worker {self.name} ready: queue '{self.queue}', "
            f"broker {self.broker}, store {self.store}"
        )

    @classmethod
    def decode(cls, line: str | bytes) -> ReadyLine | None:
        """The report in ``line`` (None if it is no report: any other log line)."""
        text = line.decode(errors="replace") if isinstance(line, bytes) else line
        found = _READY_WORKER.search(text)
        if found:
            name, queue, broker, store = found.group("name", "queue", "broker", "store")
            return cls(ReadyKind.WORKER, name, queue=queue[1:-1], broker=broker, store=store)
        found = _READY_POOL.search(text)
        if found:
            return cls(ReadyKind.POOL, pid=int(found.group("pid")))
        return None


# -- a call's description in the store (its ``meta`` hash) ----------------------------------------
def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class CallMeta:
    """What a call is, as its ``meta`` hash in the store says (what ``calls()`` lists and
    ``attach()`` rebuilds). Every call has ``label``, ``started`` (wall clock) and
    ``state``; a named call also its ``name``, ``fingerprint``, ``keep`` (seconds its
    records stay: the scripts read this field, and only this one), ``slot`` options,
    chunk ``bounds`` and ``reduce``; ``n_chunks`` once every chunk is stored; ``error``
    and ``ended`` once it ended. A field left None is not in the hash."""

    label: str = ""
    started: float = 0.0
    state: str = "running"
    name: str | None = None
    fingerprint: str | None = None
    keep: int | None = None
    slot: SlotOptions | None = None
    bounds: tuple[tuple[int, int], ...] | None = None
    reduce: bool | None = None
    n_chunks: int | None = None
    error: str | None = None
    ended: float | None = None

    def to_fields(self, *only: str) -> dict[str, str]:
        """The hash's fields (``only``: just those, for an update of some of them)."""
        encoded: dict[str, str | None] = {
            "label": self.label,
            "started": repr(self.started),
            "state": self.state,
            "name": self.name,
            "fingerprint": self.fingerprint,
            "keep": None if self.keep is None else str(int(self.keep)),
            "slot": None if self.slot is None else json.dumps(dataclasses.asdict(self.slot)),
            "bounds": None if self.bounds is None else json.dumps([list(b) for b in self.bounds]),
            "reduce": None if self.reduce is None else ("1" if self.reduce else "0"),
            "n_chunks": None if self.n_chunks is None else str(self.n_chunks),
            "error": self.error,
            "ended": None if self.ended is None else repr(self.ended),
        }
        wanted = only or tuple(encoded)
        return {k: v for k, v in encoded.items() if k in wanted and v is not None}

    @classmethod
    def from_fields(cls, raw: Mapping[bytes | str, bytes | str]) -> CallMeta:
        """The description in a hash as Redis returns it (missing fields: their defaults)."""
        f = {_text(k): _text(v) for k, v in raw.items()}
        slot, bounds, reduce = f.get("slot"), f.get("bounds"), f.get("reduce")
        keep, n_chunks, ended = f.get("keep"), f.get("n_chunks"), f.get("ended")
        return cls(
            label=f.get("label", ""),
            started=float(f.get("started") or 0.0),
            state=f.get("state", "running"),
            name=f.get("name"),
            fingerprint=f.get("fingerprint"),
            keep=None if keep is None else int(float(keep)),
            slot=None if slot is None else SlotOptions(**json.loads(slot)),
            bounds=None if bounds is None else tuple((a, b) for a, b in json.loads(bounds)),
            reduce=None if reduce is None else reduce == "1",
            n_chunks=int(n_chunks) if n_chunks else None,
            error=f.get("error"),
            ended=float(ended) if ended else None,
        )


# -- what func printed, warned and logged on a worker ---------------------------------------------
@dataclass(frozen=True)
class OutputLine:
    """One line of a chunk's output: ``stream`` is stdout, stderr, log or warning; a
    warning repeated within a chunk comes once more with the ``count`` of repeats."""

    stream: str
    text: str
    count: int = 1


@dataclass(frozen=True)
class OutputBatch:
    """Lines of one chunk's output, sent by the worker running it (signed JSON);
    ``dropped``: lines and bytes left out past the call's cap (in its last batch)."""

    chunk: int
    worker: str
    lines: tuple[OutputLine, ...] = ()
    dropped: tuple[int, int] = (0, 0)

    def encode(self, secret: str) -> bytes:
        body: dict[str, object] = {
            "chunk": self.chunk,
            "worker": self.worker,
            "lines": [
                [x.stream, x.text, x.count] if x.count != 1 else [x.stream, x.text]
                for x in self.lines
            ],
        }
        if any(self.dropped):
            body["dropped"] = list(self.dropped)
        return codec.sign(secret, json.dumps(body).encode())

    @classmethod
    def decode(cls, secret: str, blob: bytes) -> OutputBatch:
        """The batch in ``blob`` (SignatureError if it was not signed with ``secret``)."""
        body = json.loads(bytes(codec.verify(secret, blob)))
        lines = tuple(OutputLine(str(x[0]), str(x[1]), *map(int, x[2:3])) for x in body["lines"])
        lost = body.get("dropped") or (0, 0)
        return cls(int(body["chunk"]), str(body["worker"]), lines, (int(lost[0]), int(lost[1])))
