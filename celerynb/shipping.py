"""How a call's function travels to workers on other machines.

- The user's own modules (not installed, not in the standard library: a
  ``helpers.py`` next to the notebook) are pickled by value with the
  function, because workers run elsewhere and cannot import them.
- The job carries the client's Python, cloudpickle and celerynb versions in a
  small header that a worker reads and compares *before* unpickling anything,
  so a mismatch fails the first call with a clear message.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import json
import pickle
import site
import struct
import sys
import sysconfig
import threading
import types
from pathlib import Path
from typing import Any

import cloudpickle

from . import serialization

JOB_MAGIC = b"CNBJOB1\n"  # then a 4-byte header length, the JSON versions, the pickle
_CHECKED = {"python": 2, "cloudpickle": 2, "celerynb": 2}  # leading version parts that must match
_lock = threading.Lock()


class VersionMismatch(ValueError):
    """The client that pickled a job runs versions this worker cannot load it with."""


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


def _references(func: types.FunctionType) -> list[Any]:
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


def local_modules(*roots: Any) -> list[types.ModuleType]:
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


def dumps(obj: Any, roots: tuple[Any, ...]) -> bytes:
    """Cloudpickle ``obj``, with the local modules that ``roots`` use pickled by value.

    The registrations last only for this call. If pickling by value fails (a
    module holds something unpicklable), the modules are pickled by reference.
    """
    registered = set(cloudpickle.list_registry_pickle_by_value())
    modules = [m for m in local_modules(*roots) if m.__name__ not in registered]
    if modules:
        with _lock:
            for module in modules:
                cloudpickle.register_pickle_by_value(module)
            try:
                blob: bytes = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
                return blob
            except Exception:
                pass  # by reference below: that works where the workers can import them
            finally:
                for module in modules:
                    cloudpickle.unregister_pickle_by_value(module)
    blob = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return blob


# -- versions --------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    """The versions a pickled function depends on, on this side."""
    from . import __version__

    return {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "cloudpickle": cloudpickle.__version__,
        "celerynb": __version__,
    }


def _describe(v: dict[str, str]) -> str:
    return ", ".join(f"{k} {v.get(k, '?')}" for k in _CHECKED)


def pack_job(job: bytes) -> bytes:
    """Prefix a pickled job with the client's versions (readable without unpickling)."""
    header = json.dumps(versions()).encode()
    return JOB_MAGIC + struct.pack(">I", len(header)) + header + job


def load_job(secret: str, blob: bytes | bytearray | memoryview, worker: str = "") -> Any:
    """Verify a job's signature, compare the client's versions with ours, then unpickle it.

    Python and cloudpickle must match in major.minor, celerynb in major.minor;
    else :class:`VersionMismatch` names both sides' versions. Nothing is
    unpickled before both checks pass.
    """
    body = serialization.verify(secret, blob)
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
    return pickle.loads(body[start + size :])
