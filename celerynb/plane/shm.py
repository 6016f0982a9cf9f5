"""Objects in files on a tmpfs: the data plane of an embedded cluster.

When the driver and the workers run on one machine as one user, chunk and
result data need not travel through Redis. A :class:`ShmStore` keeps each
object in a file of a private directory on a tmpfs (``/dev/shm``). Objects
are cloudpickled with protocol 5; contiguous buffers of ``INLINE_MAX`` bytes
or more (NumPy arrays, pandas blocks) are written out-of-band, raw and
64-byte aligned, after the pickle stream. A reader maps the file
copy-on-write and unpickles against slices of the map, so arrays come back
writable without being copied, and stay valid after the file is deleted.

File layout (integers are little-endian u64)::

    b"CNBSHM01" | header length | header | pad | buffer 0 | pad | buffer 1 | ...
    header = serialization.sign(secret, n | n buffer lengths | pickle stream)

Security boundary: files are created 0600 in a 0700 directory owned by this
user, and a store refuses a directory that other users may enter. Only the
header is signed: the pickle stream is the part that can run code when
loaded, and it is refused unless it verifies under the cluster's secret. The
raw buffers are not signed (hashing them would cost as much as copying
them); they are plain bytes handed to the constructors the signed stream
names and cannot run code, so their integrity rests on the file permissions
alone. Files are never changed once renamed into place.
"""

from __future__ import annotations

import errno
import fcntl
import io
import mmap
import os
import pickle
import re
import secrets
import shutil
import stat
import struct
import weakref
from collections import ChainMap
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

import numpy as np

from ..errors import SignatureError
from .codec import Pickler, sign, verify

DEFAULT_ROOT = Path("/dev/shm")
ALIGN = 64  # offset alignment of out-of-band buffers in a file
INLINE_MAX = 1024  # buffers smaller than this stay inside the pickle stream

_MAGIC = b"CNBSHM01"
_PREFIX = struct.Struct("<8sQ")
_U64 = struct.Struct("<Q")
_PAD = bytes(ALIGN)
_IOV_MAX = 1024  # buffers per writev call (Linux's UIO_MAXIOV)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")
_STORE_DIR = re.compile(r"celerynb-(\d+)-[0-9a-f]+")


class ShmStore:
    """Objects in files under one private directory on a tmpfs (default /dev/shm).

    ``ShmStore(directory, secret)`` attaches to an existing directory (a
    worker); ``ShmStore.create(secret)`` makes a new one (the driver) and
    removes it again on ``close()`` or at interpreter exit.
    """

    def __init__(self, directory: str | Path, secret: str) -> None:
        self._dir = Path(directory)
        self._secret = secret
        self._closed = False
        self._finalizer: weakref.finalize[..., object] | None = None
        st = os.stat(self._dir)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self._dir))
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise PermissionError(
                f"refusing shared-memory directory {self._dir}: it must belong to this "
                f"user and be private (mode 0700), it is uid {st.st_uid} mode "
                f"{stat.S_IMODE(st.st_mode):04o}"
            )

    @classmethod
    def create(cls, secret: str, root: str | Path = DEFAULT_ROOT) -> Self:
        """Make a fresh directory ``celerynb-<pid>-<random>`` under ``root``.

        Directories left behind by dead drivers are swept first (see ``sweep``).
        """
        root = Path(root)
        cls.sweep(root)
        for _ in range(100):
            directory = root / f"celerynb-{os.getpid()}-{secrets.token_hex(8)}"
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                continue
            lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # a sweeper in another pid namespace took it for a dead driver's
                os.close(lock)
                continue
            os.fchmod(lock, 0o700)  # whatever the umask
            store = cls(directory, secret)
            store._finalizer = weakref.finalize(store, _remove, directory, lock, os.getpid())
            return store
        raise FileExistsError(errno.EEXIST, "could not make a fresh directory", str(root))

    @staticmethod
    def sweep(root: str | Path = DEFAULT_ROOT) -> list[Path]:
        """Remove store directories under ``root`` whose creator is gone; return them.

        A directory is removed only if it belongs to this user, the pid in its
        name is not alive, and no process holds its lock (a creator in another
        pid namespace that shares the tmpfs still does).
        """
        removed: list[Path] = []
        try:
            entries = list(os.scandir(root))
        except OSError:
            return removed
        for entry in entries:
            match = _STORE_DIR.fullmatch(entry.name)
            if match is None or _alive(int(match[1])):
                continue
            try:
                fd = os.open(
                    entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
                )
            except OSError:
                continue
            try:
                if os.fstat(fd).st_uid != os.getuid():
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(Path(entry.path))
            finally:
                os.close(fd)
        return removed

    @staticmethod
    def available(root: str | Path = DEFAULT_ROOT) -> bool:
        """Whether ``root`` is a writable directory on a tmpfs."""
        path = os.path.realpath(root)
        return (
            os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK) and _fstype(path) == "tmpfs"
        )

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def closed(self) -> bool:
        return self._closed

    def free_bytes(self) -> int:
        """Bytes free on the tmpfs (what more files may take)."""
        return shutil.disk_usage(self._dir).free

    def put(self, name: str, obj: object) -> int:
        """Store ``obj`` as ``name``, replacing any object of that name; return the file size."""
        path = self._path(name)
        buffers: list[memoryview] = []
        with io.BytesIO() as file:
            _Pickler(file, 5, buffer_callback=lambda buf: _in_band(buf, buffers)).dump(obj)
            stream = file.getvalue()
        lengths = [b.nbytes for b in buffers]
        header = sign(
            self._secret, struct.pack(f"<{len(lengths) + 1}Q", len(lengths), *lengths) + stream
        )
        start = _PREFIX.size + len(header)
        pieces: list[bytes | memoryview] = [_PREFIX.pack(_MAGIC, len(header)), header]
        end = start
        for offset, buf in zip(_offsets(start, lengths), buffers, strict=True):
            pieces += [_PAD[: offset - end], buf]
            end = offset + buf.nbytes
        temp = self._dir / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, pieces)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._full(name, end) from exc
            raise
        return end

    def put_if_room(self, name: str, obj: object) -> int | None:
        """``put``, or None (nothing stored) if the tmpfs is full."""
        try:
            return self.put(name, obj)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            return None

    def get(self, name: str) -> Any:
        """Load the object stored as ``name``; its large buffers map the file, uncopied."""
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"no object {name!r} in shared-memory store {self._dir}", str(path)
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size < _PREFIX.size:
                raise SignatureError(f"shared-memory object {name!r} is truncated")
            # private and copy-on-write: arrays are writable, the file stays intact
            view = memoryview(mmap.mmap(fd, size, access=mmap.ACCESS_COPY))
        finally:
            os.close(fd)
        try:
            return _load(self._secret, view)
        except SignatureError as exc:
            raise SignatureError(f"shared-memory object {name!r} in {self._dir}: {exc}") from None

    def size(self, name: str) -> int:
        """Bytes of the file of object ``name`` (0 if there is none)."""
        try:
            return self._path(name).stat().st_size
        except FileNotFoundError:
            return 0

    def delete(self, names: Iterable[str]) -> None:
        """Delete the objects ``names``; missing ones are fine."""
        if isinstance(names, str):
            raise TypeError("delete() takes an iterable of names, not one name")
        for name in names:
            self._path(name).unlink(missing_ok=True)

    def close(self) -> None:
        """Stop using the store; a store made by ``create`` removes its directory."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self._finalizer is not None else "attached"
        state = ", closed" if self._closed else ""
        return f"<ShmStore {str(self._dir)!r} ({role}{state})>"

    def _path(self, name: str) -> Path:
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                f"bad shared-memory object name {name!r}: use 1 to 128 ASCII letters, "
                "digits, '_', '-' or '.', not starting with '.' and without '..'"
            )
        return self._dir / name

    def _full(self, name: str, size: int) -> OSError:
        where = self._dir.parent
        try:
            st = os.statvfs(self._dir)
            free, total = (n * st.f_frsize / 2**20 for n in (st.f_bavail, st.f_blocks))
            room = f"; {free:.1f} of {total:.1f} MiB are free"
        except OSError:
            room = ""
        return OSError(
            errno.ENOSPC,
            f"{where} is full: storing {name!r} needs {size / 2**20:.1f} MiB{room}. "
            "Pass smaller data or split it into more chunks, free space there (results "
            "you still hold count against it), or make it bigger: "
            f"`sudo mount -o remount,size=8G {where}`, or `docker run --shm-size=8g`",
        )


def _reduce_array(arr: np.ndarray[Any, Any]) -> Any:
    """Reduce an ndarray; a strided one as a contiguous copy, so it can go out-of-band.

    NumPy pickles a non-contiguous array (say a row slice of a Fortran-ordered
    array) in-band, through several copies and the signature's hash; one copy
    here is about 8x faster. (pandas already makes its blocks contiguous.)
    """
    contiguous = arr.flags.c_contiguous or arr.flags.f_contiguous
    if not contiguous and not arr.dtype.hasobject and arr.nbytes >= INLINE_MAX:
        arr = np.ascontiguousarray(arr)
    return arr.__reduce_ex__(5)


class _Pickler(Pickler):
    """The payload codec's pickler, with strided ndarrays made contiguous (exact type only)."""

    dispatch_table: ClassVar[ChainMap[type, Any]] = ChainMap(
        {np.ndarray: _reduce_array}, Pickler.dispatch_table
    )


def _in_band(buf: pickle.PickleBuffer, keep: list[memoryview]) -> bool:
    """Pickle's buffer_callback: keep large contiguous buffers out-of-band."""
    try:
        raw = buf.raw()
    except BufferError:  # not contiguous
        return True
    if raw.nbytes < INLINE_MAX:
        return True
    keep.append(raw)
    return False


def _offsets(start: int, lengths: Sequence[int]) -> list[int]:
    """File offsets of buffers of ``lengths`` laid out from ``start``, each ALIGN-aligned."""
    offsets = []
    for length in lengths:
        start += -start % ALIGN
        offsets.append(start)
        start += length
    return offsets


def _write_all(fd: int, pieces: Sequence[bytes | memoryview]) -> None:
    """Write ``pieces`` in order, straight from their memory, with few system calls."""
    views = [memoryview(p) for p in pieces if len(p)]
    i = 0
    while i < len(views):
        written = os.writev(fd, views[i : i + _IOV_MAX])
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        while written:
            if written >= views[i].nbytes:
                written -= views[i].nbytes
                i += 1
            else:
                views[i] = views[i][written:]
                written = 0


def _load(secret: str, view: memoryview) -> Any:
    """Verify and unpickle a whole file mapped as ``view``."""
    magic, length = _PREFIX.unpack_from(view)
    start = _PREFIX.size + length
    if magic != _MAGIC or start > len(view):
        raise SignatureError("not a celerynb shared-memory file, or truncated")
    # verify a private copy, so the stream cannot change between check and load
    body = verify(secret, bytes(view[_PREFIX.size : start]))
    (count,) = _U64.unpack_from(body)
    table = _U64.size * (count + 1)
    lengths = struct.unpack_from(f"<{count}Q", body, _U64.size)
    offsets = _offsets(start, lengths)
    if offsets and offsets[-1] + lengths[-1] > len(view):
        raise SignatureError("truncated: its buffers end past the end of the file")
    buffers = [view[o : o + n] for o, n in zip(offsets, lengths, strict=True)]
    return pickle.loads(body[table:], buffers=buffers)


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except (OverflowError, ValueError):
        return False
    return pid > 0


def _fstype(path: str) -> str | None:
    """The type of the filesystem mounted at the longest mount point above ``path``."""
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
            lines = mounts.read().splitlines()
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _remove(directory: Path, lock: int, pid: int) -> None:
    """Remove a store's directory, unless this is a forked child of its creator."""
    if os.getpid() == pid:
        shutil.rmtree(directory, ignore_errors=True)
    os.close(lock)
