"""``cmap`` and ``cmap_async``: options -> Call -> runner -> ``runner.launch`` -> MapFuture."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

import cloudpickle

from . import durable
from .call import Call, CallState, finished_call
from .cluster import Cluster, default_cluster
from .errors import ClusterError
from .fingerprint import fingerprint
from .future import MapFuture
from .groupby import GroupApply
from .inputs import check_inputs, is_groupby, kind_of, warn_if_misaligned
from .join import join
from .options import CallKwargs, CallOptions, signature
from .plane import codec
from .planning import RangePlan
from .runner import CallRunner, launch
from .sinks import WriteTo
from .sources.base import Source
from .streams import Peeked
from .windows import Overlap


def _describe_unpicklable(func: object, exc: Exception) -> str:
    """Name the closure variables, defaults or globals of ``func`` that do not pickle."""
    code = getattr(func, "__code__", None)
    suspects: list[tuple[str, object]] = []
    if code is not None:
        cells = getattr(func, "__closure__", None) or ()
        for name, cell in zip(code.co_freevars, cells, strict=False):
            try:
                suspects.append((f"closure variable {name!r}", cell.cell_contents))
            except ValueError:
                continue
        globs = getattr(func, "__globals__", {})
        suspects += [(f"global {n!r}", globs[n]) for n in code.co_names if n in globs]
    for i, default in enumerate(getattr(func, "__defaults__", None) or ()):
        suspects.append((f"default argument #{i}", default))
    bad = []
    for what, value in suspects:
        try:
            cloudpickle.dumps(value)
        except Exception:
            bad.append(f"{what} (a {type(value).__name__})")
    culprit = ", ".join(bad) if bad else "an object it refers to"
    return (
        f"func cannot be pickled to send it to the workers: {culprit} cannot be pickled "
        f"({type(exc).__name__}: {exc}). Create such objects inside func, or pass "
        "what they hold as data."
    )


def _dump_job(secret: str, job: codec.Job) -> bytes:
    """The signed job, or a TypeError that names what does not pickle."""
    try:
        return codec.dump_job(secret, job)
    except Exception as exc:
        for name, extra in (("args", job.args), ("kwargs", job.kwargs)):
            try:
                cloudpickle.dumps(extra)
            except Exception:
                raise TypeError(
                    f"{name}= cannot be pickled to send it to the workers "
                    f"({type(exc).__name__}: {exc}); pass picklable values"
                ) from exc
        try:
            cloudpickle.dumps(job.func)
            culprit: object = job.reduce
        except Exception:
            culprit = job.func
        # name what func itself refers to, not the groupby wrapper around it
        message = _describe_unpicklable(getattr(culprit, "func", culprit), exc)
        if culprit is job.reduce:
            message = message.replace("func cannot", "reduce cannot", 1)
        raise TypeError(message) from exc


def _empty(func: Callable[..., Any], inputs: tuple[Any, ...], opts: CallOptions) -> Any:
    """Empty input is one empty chunk, run locally (or the empty input, if func fails)."""
    data = inputs[0]
    if opts.to is not None:  # no chunk: no file
        return []
    if isinstance(data, Peeked):  # an empty iterator: no chunk to run func on
        return opts.reduce([]) if opts.reduce is not None else []
    grouped = kind_of(data) == "groupby"
    try:
        if grouped:
            value = data.apply(func, *opts.args, **opts.kwargs)
        else:
            value = func(*inputs, *opts.args, **opts.kwargs)
    except Exception:
        data = data.obj if grouped else data
        value = data.iloc[:0].copy() if hasattr(data, "iloc") else data[:0]
    return opts.reduce([value]) if opts.reduce is not None else join([value])


def _shipped(
    func: Callable[..., Any], inputs: tuple[Any, ...], n_items: int, opts: CallOptions
) -> Callable[..., Any]:
    """What the workers call on a chunk (pickled once): ``func`` itself, or a wrapper that
    runs it per group (a groupby), reads its part first (a source) or drops the carried
    rows (``overlap=``); with ``to=``, that wrapped in one that writes the result to the
    chunk's file (outermost)."""
    target = opts.target()
    if target is None:
        return _unwritten(func, inputs, n_items, opts)
    if is_groupby(inputs[0]):
        raise ValueError(
            "to= is for data split by rows, not for a groupby yet: run the groupby call "
            "without to= and write its result, or pass the frame itself with to="
        )
    return WriteTo(_unwritten(func, inputs, n_items, opts), target)


def _unwritten(
    func: Callable[..., Any], inputs: tuple[Any, ...], n_items: int, opts: CallOptions
) -> Callable[..., Any]:
    if isinstance(inputs[0], Source):
        if opts.overlap:
            raise ValueError("overlap= is for data split by rows, not for files the workers read")
        return inputs[0].wrap(func)
    if is_groupby(inputs[0]):
        if opts.overlap:
            raise ValueError(
                "overlap= is for data split by rows; a groupby's chunks hold whole groups. "
                "For a window within each group, drop overlap= (each group is whole)"
            )
        return GroupApply.of(inputs[0], func)
    if opts.overlap:
        if n_items < 0:
            raise ValueError(
                "overlap= needs data of known length; an iterator's chunks are read as they "
                "come. Pass the data itself (a DataFrame, Series, array or list)"
            )
        return Overlap(func, opts.overlap, len(inputs) > 1)
    return func


def _label(func: object) -> str:
    return f"cmap({getattr(func, '__name__', type(func).__name__)})"


def _named(
    func: Callable[..., Any], inputs: tuple[Any, ...], opts: CallOptions, cluster: Cluster | None
) -> tuple[Cluster, str, MapFuture | None]:
    """A named call's cluster and fingerprint, and the future of the same call already
    there (running or finished), if there is one."""
    name = opts.name
    assert name is not None
    if any(kind_of(x) in ("groupby", "stream") for x in inputs):
        raise TypeError(
            "name= is for data of known length (a DataFrame, Series, array or list); "
            "groupbys and iterators cannot be named yet: run them without name="
        )
    target = durable.target(cluster)
    fp = fingerprint(func, inputs, opts)
    found = target.store.lookup(name)
    if found is None:
        return target, fp, None
    call_id, meta = found
    state = meta.state
    usable = state in ("running", "finished") and bool(meta.n_chunks)
    if usable and not opts.replace:
        if meta.fingerprint != fp:
            raise ValueError(
                f"a call named {name!r} with another function or data is {state} on "
                f"{target!r}: pass replace=True to run this one instead, use another name, "
                f"or celerynb.attach({name!r}) to get that one"
            )
        return (
            target,
            fp,
            durable.resume(target, call_id, meta, progress=opts.progress, timeout=opts.timeout),
        )
    target.store.drop(call_id, name)  # replaced, or failed / incomplete: run again
    return target, fp, None


def cmap_async(
    func: Callable[..., Any],
    data: Any,
    *more: Any,
    cluster: Cluster | None = None,
    **options: Unpack[CallKwargs],
) -> MapFuture:
    """Start ``cmap`` and return its :class:`MapFuture` at once (see :func:`cmap`)."""
    if not callable(func):
        raise TypeError(f"func must be callable, got {type(func).__name__}")
    opts = CallOptions.make(**options)
    inputs = (data, *more)
    n_items = check_inputs(inputs)
    if n_items < 0:  # iterators of chunks: their first items are read (and checked) now
        peeked = tuple(Peeked(x) for x in inputs)
        n_items, inputs = (0 if any(p.empty for p in peeked) else -1), peeked
    warn_if_misaligned(inputs)
    shipped = _shipped(func, inputs, n_items, opts)
    job = codec.Job(shipped, opts.reduce, opts.args, opts.kwargs)
    if n_items == 0:
        _dump_job("", job)  # the same errors as for a real call
        return MapFuture(finished_call(_empty(func, inputs, opts), _label(func)))
    if opts.name is not None:
        target, fp, found = _named(func, inputs, opts, cluster)
        if found is not None:  # the same call ran (or runs) under that name: attached
            return found
    else:
        target, fp = cluster or default_cluster(), ""
    if target.closed:
        raise ClusterError(f"{target!r} is closed: start a new one or pass cluster=None")
    blob = _dump_job(target.settings.secret, job)
    call = Call(
        RangePlan(inputs, ()),  # planned once workers are known (see CallRunner.start)
        label=_label(func),
        keep=opts.reduce is not None,
        timeout=opts.timeout,
        funcs=(func, opts.reduce),
        state=CallState.WAITING,
    )
    naming = (opts.name, fp) if opts.name is not None else None
    return launch(CallRunner(target, call, blob, opts, inputs, naming=naming))


def cmap(
    func: Callable[..., Any],
    data: Any,
    *more: Any,
    cluster: Cluster | None = None,
    **options: Unpack[CallKwargs],
) -> Any:
    """Run ``func(chunk)`` on Celery workers over chunks of ``data``; join in order.

    ``data``: a pandas DataFrame / Series (split by rows), an ndarray (axis 0),
    a sized sequence (a list of paths too: the workers open the files) or a
    groupby. Further inputs (``*more``, equal length) are split alongside,
    like ``zip``: ``func(chunk_of_data, chunk_of_b, ...)``. ``cluster``:
    default the current one, started on first use. The options and their
    defaults are those of :class:`~celerynb.options.CallOptions`: ``args``,
    ``kwargs``, ``chunks``, ``chunk_size``, ``reduce``, ``progress``,
    ``timeout``, ``retries``, ``chunk_timeout``, ``attempts``; ``to``
    (the workers write each chunk's result to a file; the paths come back)
    and ``storage_options``. Interrupting the wait cancels the outstanding
    chunks.
    """
    return cmap_async(func, data, *more, cluster=cluster, **options).result()


cmap.__signature__ = signature("Any")  # type: ignore[attr-defined]
cmap_async.__signature__ = signature("MapFuture")  # type: ignore[attr-defined]
