"""Signed cloudpickle payloads: data, records and the call's job, with matching dump and load.

Every byte string a driver or worker unpickles is signed with HMAC-SHA256
under the cluster's shared secret and refused before unpickling if it does
not verify. Each secret gets its own kombu serializer (``celerynb-<key id>``),
so one process can talk to several clusters and a worker accepts only
messages signed with its own secret.

The job (func, reduce, args, kwargs) also carries the client's Python,
cloudpickle and celerynb versions in a header that a worker compares *before*
unpickling, and the user's own modules (a ``helpers.py`` next to the
notebook: not installed, not in the standard library) travel by value.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib.metadata
import io
import json
import pickle
import secrets
import site
import struct
import sys
import sysconfig
import threading
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import cloudpickle
from kombu.serialization import register

from .. import __version__
from ..errors import SignatureError, VersionMismatch

MAGIC = b"CNB1"
_DIGEST = 32
_HEADER = len(MAGIC) + _DIGEST
JOB_MAGIC = b"CNBJOB1\n"  # then a 4-byte header length, the JSON versions, the pickle
_CHECKED = {"python": 2, "cloudpickle": 2, "celerynb": 2}  # leading version parts that must match
_registered: set[str] = set()
_by_value_lock = threading.Lock()


class Job(NamedTuple):
    """What a call ships once: the function, the reducer and the constant arguments."""

    func: Callable[..., Any]
    reduce: Callable[[list[Any]], Any] | None
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


# -- signing -------------------------------------------------------------------------------------
def new_secret() -> str:
    """A fresh random secret for a cluster."""
    return secrets.token_urlsafe(32)


def key_id(secret: str) -> str:
    """A short public fingerprint of ``secret`` (safe to show and log)."""
    return hashlib.sha256(b"celerynb-key-id:" + secret.encode()).hexdigest()[:12]


def sign(secret: str, body: bytes) -> bytes:
    """Prefix ``body`` with a magic tag and its HMAC-SHA256 under ``secret``."""
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return MAGIC + mac + body


def verify(secret: str, blob: bytes | bytearray | memoryview) -> memoryview:
    """Return the body of a signed ``blob``; raise SignatureError if it does not verify."""
    view = memoryview(blob)
    if len(view) < _HEADER or view[: len(MAGIC)] != MAGIC:
        raise SignatureError(
            "refused an unsigned celerynb payload: it was not produced by a client "
            "holding this cluster's secret"
        )
    body = view[_HEADER:]
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, bytes(view[len(MAGIC) : _HEADER])):
        raise SignatureError(
            "refused a celerynb payload with a bad signature: the sender does not "
            "share this cluster's secret (check CELERYNB_SECRET on both sides)"
        )
    return body


_OWN = object()


def dumps(secret: str, obj: object, value: object = _OWN) -> bytes:
    """Pickle ``obj`` (protocol 5) and sign it: with plain pickle, twice as fast, when
    ``obj`` is plain data (see :func:`plain`; ``value``: the value ``obj`` wraps, a
    record's, to look at instead), with cloudpickle otherwise. Arrays keep their byte
    order (see :func:`reduce_as_is`)."""
    fast = plain(obj if value is _OWN else value)
    with io.BytesIO() as file:
        (_PlainPickler if fast else Pickler)(file, protocol=5).dump(obj)
        return sign(secret, file.getvalue())


def reduce_as_is(obj: object) -> tuple[Any, ...] | None:
    """How to pickle ``obj`` when NumPy's own pickling would change it (None: as usual).

    NumPy unpickles most arrays of a non-native byte order (strided ones, subclasses,
    dates) in native order, and a masked array without its hard mask: such an array
    goes as its native-order copy and the dtype (and hard mask) to restore.
    """
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ndarray):
        return None
    dtype: Any = obj.dtype
    swapped = dtype.byteorder not in "=|"  # (a structured dtype keeps its fields' order)
    hard = isinstance(obj, np.ma.MaskedArray) and bool(obj.hardmask)
    if not (swapped or hard):
        return None
    try:
        native = obj.astype(dtype.newbyteorder("=")) if swapped else obj.view()
    except Exception:  # (a subclass's own shape rules: a 3-D np.matrix) as NumPy pickles it
        return None
    if hard:
        native.soften_mask()  # (of the copy or view only)
    return _as_sent, (native, dtype, hard)


def _as_sent(native: Any, dtype: Any, hard_mask: bool) -> Any:
    """An array as :func:`reduce_as_is` found it: in ``dtype``, with its hard mask."""
    out = native.astype(dtype, copy=False)
    if hard_mask:
        out.harden_mask()
    return out


class _PlainPickler(pickle.Pickler):
    """Pickle, with arrays as they are (:func:`reduce_as_is`)."""

    def reducer_override(self, obj: object) -> Any:
        return NotImplemented if (reduced := reduce_as_is(obj)) is None else reduced


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle is untyped
    """Cloudpickle, with arrays as they are (:func:`reduce_as_is`)."""

    def reducer_override(self, obj: object) -> Any:
        reduced = reduce_as_is(obj)
        return super().reducer_override(obj) if reduced is None else reduced


_PLAIN_KINDS = frozenset("biufcmM")  # NumPy dtype kinds that hold no Python objects
_PLAIN_LABELS = (str, int, float, bool, type(None))


def plain(obj: object) -> bool:
    """Whether ``obj`` holds nothing that cloudpickle would pickle differently from
    pickle (by value): scalars, and NumPy arrays, pandas Series and DataFrames of
    numbers, booleans, dates, strings or pandas' own types, with labels of those and
    no ``attrs``. Anything else (object columns, MultiIndexes, ...) is not looked into."""
    if obj is None or type(obj) in _PLAIN_LABELS or type(obj) is bytes:
        return True
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    data: Any = obj
    if np is not None and type(obj) is np.ndarray:
        return data.dtype.kind in _PLAIN_KINDS
    if pd is None:
        return False
    if type(obj) is pd.Series:
        return (
            not data.attrs
            and _plain_dtype(data.dtype)
            and _plain_axis(data.index)
            and type(data.name) in _PLAIN_LABELS
        )
    if type(obj) is pd.DataFrame:
        blocks = getattr(getattr(data, "_mgr", None), "blocks", None)
        return (
            blocks is not None
            and not data.attrs
            and all(_plain_dtype(b.dtype) for b in blocks)
            and _plain_axis(data.index)
            and _plain_axis(data.columns)
        )
    return False


def _plain_dtype(dtype: Any) -> bool:
    pd = sys.modules["pandas"]
    if isinstance(dtype, pd.CategoricalDtype):
        return _plain_axis(dtype.categories)
    module = type(dtype).__module__.partition(".")[0]
    if module == "numpy":
        return bool(dtype.kind in _PLAIN_KINDS)
    return module == "pandas"


def _plain_axis(index: Any) -> bool:
    pd = sys.modules["pandas"]
    if type(index) is pd.RangeIndex:
        return type(index.name) in _PLAIN_LABELS
    if isinstance(index, pd.MultiIndex) or type(index.name) not in _PLAIN_LABELS:
        return False
    if index.dtype == object:
        return bool(index.inferred_type in ("string", "empty"))
    return _plain_dtype(index.dtype)


def loads(secret: str, blob: bytes | bytearray | memoryview) -> Any:
    """Verify ``blob`` and unpickle it; nothing is unpickled if the signature fails."""
    return pickle.loads(verify(secret, blob))


def serializer_name(secret: str) -> str:
    """Register (once) and return the kombu serializer name for ``secret``."""
    name = f"celerynb-{key_id(secret)}"
    if name not in _registered:
        register(
            name,
            lambda obj: dumps(secret, obj),
            lambda blob: loads(secret, blob),
            content_type=f"application/x-{name}",
            content_encoding="binary",
        )
        _registered.add(name)
    return name


# -- local modules by value ----------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def _installed_names(path: tuple[str, ...]) -> frozenset[str]:
    """Top-level import names that belong to installed distributions (for this sys.path)."""
    return frozenset(importlib.metadata.packages_distributions())


@functools.lru_cache(maxsize=1)
def _install_dirs() -> tuple[str, ...]:
    """Directories whose modules every worker is assumed to have (stdlib, site-packages)."""
    dirs = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    dirs.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        dirs.add(site.getusersitepackages())
    return tuple(str(Path(d).resolve()) + "/" for d in dirs if d)


def is_local(module: types.ModuleType) -> bool:
    """Whether ``module`` is the user's own code: a .py file outside any installation."""
    top = module.__name__.partition(".")[0]
    if top in ("__main__", "celerynb") or top in sys.stdlib_module_names:
        return False
    file = getattr(module, "__file__", None)
    if not file or not file.endswith(".py"):
        return False
    if str(Path(file).resolve()).startswith(_install_dirs()):
        return False
    return top not in _installed_names(tuple(sys.path))


def _references(func: types.FunctionType) -> list[object]:
    """The globals, closure values and defaults a function's code refers to."""
    names: set[str] = set()
    codes = [func.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
    refs = [func.__globals__[n] for n in names if n in func.__globals__]
    for cell in func.__closure__ or ():
        with contextlib.suppress(ValueError):  # an empty cell
            refs.append(cell.cell_contents)
    return refs + list(func.__defaults__ or ()) + list((func.__kwdefaults__ or {}).values())


def local_modules(*roots: object) -> list[types.ModuleType]:
    """Top-level local modules (or packages) that ``roots`` use, directly or indirectly."""
    found: dict[str, types.ModuleType] = {}
    seen: set[int] = set()
    todo = [r for r in roots if r is not None]
    while todo and len(seen) < 10_000:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        module = obj if isinstance(obj, types.ModuleType) else None
        if module is None:
            name = getattr(obj, "__module__", None)
            module = sys.modules.get(name) if isinstance(name, str) else None
        local = module is not None and is_local(module)
        if module is not None and local:
            top = module.__name__.partition(".")[0]
            if top in sys.modules:
                found[top] = sys.modules[top]
        if isinstance(obj, types.MethodType):
            todo.append(obj.__func__)
        elif isinstance(obj, functools.partial):
            todo += [obj.func, *obj.args, *obj.keywords.values()]
        elif type(obj).__module__.startswith("celerynb.") and hasattr(obj, "__dict__"):
            todo += list(vars(obj).values())  # our own wrappers, e.g. a groupby's GroupApply
        elif isinstance(obj, types.FunctionType) and (
            local or module is None or module.__name__ == "__main__"
        ):
            todo += _references(obj)
    return list(found.values())


def _pickle_with_locals(obj: object, roots: tuple[object, ...]) -> bytes:
    """Cloudpickle ``obj``, with the local modules that ``roots`` use pickled by value.

    The registrations last only for this call. If pickling by value fails (a
    module holds something unpicklable), the modules are pickled by reference.
    """
    registered = set(cloudpickle.list_registry_pickle_by_value())
    modules = [m for m in local_modules(*roots) if m.__name__ not in registered]
    if modules:
        with _by_value_lock:
            for module in modules:
                cloudpickle.register_pickle_by_value(module)
            try:
                return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
            except Exception:
                pass  # by reference below: that works where the workers can import them
            finally:
                for module in modules:
                    cloudpickle.unregister_pickle_by_value(module)
    return bytes(cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


# -- the job -------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """The versions a pickled function depends on, on this side."""
    return {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "cloudpickle": cloudpickle.__version__,
        "celerynb": __version__,
    }


def _describe(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {v.get(k, '?')}" for k in _CHECKED)


def dump_job(secret: str, job: Job) -> bytes:
    """The signed job: versions header, then the pickle (local modules by value).

    Raises whatever pickling raises; :func:`celerynb.api` turns that into a message.
    """
    body = _pickle_with_locals(tuple(job), (job.func, job.reduce, *job.args, *job.kwargs.values()))
    header = json.dumps(versions()).encode()
    return sign(secret, JOB_MAGIC + struct.pack(">I", len(header)) + header + body)


def load_job(secret: str, blob: bytes | bytearray | memoryview, worker: str = "") -> Job:
    """Verify a job's signature, compare the client's versions with ours, then unpickle it.

    Python and cloudpickle must match in major.minor, celerynb in major.minor;
    else :class:`VersionMismatch` names both sides' versions. Nothing is
    unpickled before both checks pass.
    """
    body = verify(secret, blob)
    where = f"worker {worker}" if worker else "the worker"
    ours = versions()
    if bytes(body[: len(JOB_MAGIC)]) != JOB_MAGIC:
        raise VersionMismatch(
            f"the client sent a job without version information (an older celerynb); "
            f"{where} runs {_describe(ours)}: install the same celerynb on both sides"
        )
    start = len(JOB_MAGIC) + 4
    (size,) = struct.unpack(">I", body[len(JOB_MAGIC) : start])
    theirs = json.loads(bytes(body[start : start + size]))
    bad = [
        name
        for name, parts in _CHECKED.items()
        if str(theirs.get(name, "?")).split(".")[:parts] != ours[name].split(".")[:parts]
    ]
    if bad:
        raise VersionMismatch(
            f"version mismatch ({', '.join(bad)}): the client runs {_describe(theirs)} but "
            f"{where} runs {_describe(ours)}. A function pickled on one side cannot be "
            "loaded on the other: install the same Python minor version, cloudpickle and "
            "celerynb on the client and the workers"
        )
    return Job(*pickle.loads(body[start + size :]))
