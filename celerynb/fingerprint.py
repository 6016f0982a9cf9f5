"""What identifies a call across kernels: a digest of its function (by source), reducer,
extra arguments and data, equal when the same cell runs again in a fresh kernel."""

from __future__ import annotations

import ast
import hashlib
import inspect
import textwrap
from types import CodeType
from typing import TYPE_CHECKING, Protocol

import cloudpickle

from .inputs import _numpy, _pandas

if TYPE_CHECKING:
    from .options import CallOptions


class Digest(Protocol):
    """A hashlib object (what the fingerprint feeds)."""

    def update(self, data: bytes | memoryview, /) -> None: ...


# -- what identifies a call -----------------------------------------------------------------------
def _code_digest(code: CodeType, h: Digest) -> None:
    h.update(code.co_code)
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _code_digest(const, h)
        else:
            h.update(repr(const).encode())


def _source(func: object) -> bytes | None:
    """The function's source as a syntax tree (comments and layout aside); None if its
    source is not to be had (``python -c``, a C function)."""
    try:
        text = textwrap.dedent(inspect.getsource(func))  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    try:
        return ast.dump(ast.parse(text), annotate_fields=False).encode()
    except SyntaxError:  # a lambda in the middle of an expression
        return text.encode()


def _func_digest(func: object, h: Digest) -> None:
    """The function's source (else its bytecode), not its pickle: that names the kernel's
    cell files, and bytecode differs with where the imports were compiled."""
    target = getattr(func, "func", func)  # functools.partial
    code = getattr(target, "__code__", None)
    h.update(f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}".encode())
    if code is not None:
        source = _source(target)
        if source is not None:
            h.update(source)
        else:
            _code_digest(code, h)
        for cell in getattr(target, "__closure__", None) or ():
            try:
                h.update(cloudpickle.dumps(cell.cell_contents))
            except Exception:
                h.update(repr(type(cell.cell_contents)).encode())
        h.update(cloudpickle.dumps(getattr(target, "__defaults__", None)))
    else:
        h.update(cloudpickle.dumps(target))
    if target is not func:
        h.update(cloudpickle.dumps((func.args, func.keywords)))  # type: ignore[attr-defined]


def _data_digest(data: object, h: Digest) -> None:
    pd, np = _pandas(), _numpy()
    if pd is not None and isinstance(data, pd.DataFrame | pd.Series | pd.Index):
        h.update(repr((type(data).__name__, data.shape, getattr(data, "dtypes", None))).encode())
        if isinstance(data, pd.DataFrame):
            h.update(repr(list(data.columns)).encode())
        h.update(pd.util.hash_pandas_object(data, index=True).to_numpy().tobytes())
    elif np is not None and isinstance(data, np.ndarray):
        h.update(repr((data.dtype.str, data.shape)).encode())
        h.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    else:
        h.update(cloudpickle.dumps(data))


def fingerprint(func: object, inputs: tuple[object, ...], opts: CallOptions) -> str:
    """A digest of the function (its source), the reducer, the extra arguments and the data:
    equal when the same cell runs again in a fresh kernel."""
    h = hashlib.blake2b(digest_size=16)
    for f in (func, opts.reduce):
        if f is not None:
            _func_digest(f, h)
    extra = (opts.args, opts.kwargs, opts.overlap) if opts.overlap else (opts.args, opts.kwargs)
    h.update(cloudpickle.dumps(extra))
    if opts.to is not None:  # other files: another call
        h.update(cloudpickle.dumps((opts.to, opts.storage_options)))
    for data in inputs:
        _data_digest(data, h)
    return h.hexdigest()
