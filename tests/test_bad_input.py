"""Bad input matrix: every case gets a clear error, no hang, and the cluster still works."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import celerynb
from celerynb import ChunkError

DF = pd.DataFrame({"a": range(20), "b": [float(i) for i in range(20)]})
LOCK = threading.Lock()


def _closure_over_lock() -> Callable[[Any], Any]:
    lock = threading.Lock()

    def f(chunk: Any) -> Any:
        with lock:
            return chunk

    return f


def _closure_over_socket() -> Callable[[Any], Any]:
    sock = socket.socket()

    def f(chunk: Any) -> Any:
        return sock.fileno() and chunk

    return f


def _inconsistent(chunk: pd.DataFrame) -> Any:
    return chunk if chunk.index[0] == 0 else chunk["a"]


def _returns_lock(chunk: Any) -> Any:
    return threading.Lock()


def _ragged_arrays(chunk: np.ndarray) -> np.ndarray:
    return np.zeros((len(chunk), 2 if chunk[0] == 0 else 3))


def _raising_reduce(parts: list[Any]) -> Any:
    raise ArithmeticError("reducer broke")


# (id, call, expected exception type, regex the message must match)
CASES: list[tuple[str, Callable[[Any], Any], type[BaseException], str]] = [
    ("dict", lambda c: celerynb.cmap(len, {"a": 1}, cluster=c), TypeError, r"dict.*items\(\)"),
    ("set", lambda c: celerynb.cmap(len, {1, 2}, cluster=c), TypeError, r"no order.*sorted"),
    ("iterator with a list", lambda c: celerynb.cmap(len, iter([[1], [2]]), [1, 2], cluster=c),
     TypeError, r"iterator of chunks is zipped only with other iterators.*iter\("),
    ("int", lambda c: celerynb.cmap(len, 42, cluster=c), TypeError, r"cannot split int.*Supported"),
    ("none", lambda c: celerynb.cmap(len, None, cluster=c), TypeError, r"NoneType.*Supported"),
    ("str", lambda c: celerynb.cmap(len, "text", cluster=c), TypeError, r"splitlines"),
    ("bytes", lambda c: celerynb.cmap(len, b"xy", cluster=c), TypeError, r"strings are not split"),
    ("0-d array", lambda c: celerynb.cmap(len, np.array(3), cluster=c), TypeError, r"0-d array"),
    ("groupby with another input", lambda c: celerynb.cmap(len, DF.groupby("a"), [1], cluster=c),
     TypeError, r"groupby cannot be combined with other inputs"),
    ("unequal input lengths", lambda c: celerynb.cmap(len, [1, 2], [1], cluster=c), ValueError,
     r"different lengths \[2, 1\].*equal length"),
    ("one path", lambda c: celerynb.cmap(len, Path("."), cluster=c), TypeError,
     r"one path.*glob"),
    ("args not a tuple", lambda c: celerynb.cmap(len, [1], args=3, cluster=c), TypeError,
     r"args= must be a tuple"),
    ("func not callable", lambda c: celerynb.cmap(3, [1], cluster=c), TypeError,
     r"func must be callable"),
    ("reduce not callable", lambda c: celerynb.cmap(len, [1], reduce=1, cluster=c), TypeError,
     r"reduce must be callable"),
    ("closure over lock", lambda c: celerynb.cmap(_closure_over_lock(), [1], cluster=c), TypeError,
     r"closure variable 'lock' \(a lock\) cannot be pickled"),
    ("closure over socket", lambda c: celerynb.cmap(_closure_over_socket(), [1], cluster=c),
     TypeError, r"closure variable 'sock' \(a socket\)"),
    ("global lock", lambda c: celerynb.cmap(lambda x: LOCK and x, [1], cluster=c), TypeError,
     r"global 'LOCK'"),
    ("unpicklable data", lambda c: celerynb.cmap(len, [threading.Lock()], cluster=c), TypeError,
     r"chunk 0 of 1 .* cannot be pickled"),
    ("unpicklable result", lambda c: celerynb.cmap(_returns_lock, [1, 2], cluster=c), TypeError,
     r"result of func cannot be pickled"),
    ("inconsistent types", lambda c: celerynb.cmap(_inconsistent, DF, chunks=3, cluster=c),
     TypeError, r"inconsistent types.*DataFrame.*Series"),
    ("ragged arrays", lambda c: celerynb.cmap(_ragged_arrays, np.arange(4), chunks=2, cluster=c),
     ValueError, r"different trailing shapes"),
    ("chunks=0", lambda c: celerynb.cmap(len, [1], chunks=0, cluster=c), ValueError,
     r"chunks must be a positive int"),
    ("chunks<0", lambda c: celerynb.cmap(len, [1], chunks=-2, cluster=c), ValueError,
     r"chunks must be a positive int"),
    ("chunks float", lambda c: celerynb.cmap(len, [1], chunks=2.5, cluster=c), TypeError,
     r"chunks must be a positive int, got 2.5"),
    ("chunks bool", lambda c: celerynb.cmap(len, [1], chunks=True, cluster=c), TypeError,
     r"chunks must be a positive int"),
    ("chunk_size=0", lambda c: celerynb.cmap(len, [1], chunk_size=0, cluster=c), ValueError,
     r"chunk_size must be a positive int"),
    ("chunk_size str", lambda c: celerynb.cmap(len, [1], chunk_size="10", cluster=c), TypeError,
     r"chunk_size must be a positive int"),
    ("chunks and chunk_size", lambda c: celerynb.cmap(len, [1], chunks=1, chunk_size=1, cluster=c),
     ValueError, r"chunks= or chunk_size=, not both"),
    ("timeout<0", lambda c: celerynb.cmap(len, [1], timeout=-1, cluster=c), ValueError,
     r"timeout must be a positive number"),
    ("retries<0", lambda c: celerynb.cmap(len, [1], retries=-1, cluster=c), ValueError,
     r"retries must be an int >= 0"),
    ("attempts=0", lambda c: celerynb.cmap(len, [1], attempts=0, cluster=c), ValueError,
     r"attempts must be an int >= 1"),
    ("progress bogus", lambda c: celerynb.cmap(len, [1], progress="fancy", cluster=c), ValueError,
     r"progress must be"),
    ("unknown keyword", lambda c: celerynb.cmap(len, [1], chunksize=3, cluster=c), TypeError,
     r"unexpected keyword argument 'chunksize'"),
    ("raising reduce", lambda c: celerynb.cmap(len, [1, 2], reduce=_raising_reduce, cluster=c),
     ChunkError, r"the reducer failed.*ArithmeticError: reducer broke"),
    ("func raising", lambda c: celerynb.cmap(lambda x: 1 / 0, [1, 2], cluster=c), ZeroDivisionError,
     r"chunk \d of 2 \(positions \d:\d\)"),
    ("func wrong arity", lambda c: celerynb.cmap(lambda x, y: x, [1], cluster=c), TypeError,
     r"chunk 0 of 1.*missing 1 required positional argument"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "kind", "pattern"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input(
    cluster: celerynb.LocalCluster,
    call: Callable[[Any], Any],
    kind: type[BaseException],
    pattern: str,
) -> None:
    with pytest.raises(kind, match=pattern):
        call(cluster)
    # the cluster still works afterwards
    assert celerynb.cmap(lambda xs: [x * 3 for x in xs], [1, 2, 3], cluster=cluster) == [3, 6, 9]


def test_more_chunks_than_rows_is_capped(cluster: celerynb.LocalCluster) -> None:
    future = celerynb.cmap_async(lambda xs: xs, [1, 2, 3], chunks=50, cluster=cluster)
    assert future.result(timeout=60) == [1, 2, 3]
    assert future.n_chunks == 3


def test_result_too_large_for_the_store(tmp_path: Any) -> None:
    """With a 1 MiB payload limit, a 2 MiB result fails clearly and the next call works."""
    script = """
import numpy as np, celerynb
with celerynb.LocalCluster(1) as c:
    try:
        # bytes go through Redis (arrays and frames would take the shm files)
        celerynb.cmap(lambda x: b"x" * 2**21, [1], cluster=c, progress=False)
    except celerynb.ChunkError as e:
        print("ERROR", e)
    try:
        celerynb.cmap(len, [np.zeros(2**18)], cluster=c, progress=False)
    except ValueError as e:
        print("ERROR", e)
    print("NEXT", celerynb.cmap(lambda xs: xs, [1, 2], cluster=c, progress=False))
"""
    env = dict(os.environ, CELERYNB_MAX_PAYLOAD=str(2**20))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "result of this chunk is 2.0 MiB" in lines[0] and "more, smaller chunks" in lines[0]
    assert "chunk 0 of 1" in lines[1] and "pass more chunks" in lines[1]
    assert lines[2] == "NEXT [1, 2]"
