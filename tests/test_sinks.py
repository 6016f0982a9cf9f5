"""``to=``: the workers write each chunk's result to its own file; the call returns the paths.

On the session's real embedded cluster (local files, ``file://`` URLs), with
``WriteTo`` run in this process for fsspec's ``memory://`` filesystem and for
re-runs of a chunk, and on a deployment of two ``celerynb worker`` processes
one of which is SIGKILLed while it writes: still exactly one file per chunk.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from test_elastic import Deployment
from test_scaleout import REDIS, _redis_up

import celerynb
from celerynb import ChunkError, cmap, running, sinks
from celerynb.sinks import Format, Target, WriteTo

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FRAME = pd.DataFrame(
    {
        "key": np.arange(300) % 7,
        "x": np.linspace(0.0, 1.0, 300),
        "tag": [f"t{i}" for i in range(300)],
    }
)


def enrich(chunk: pd.DataFrame) -> pd.DataFrame:
    """Row-wise: a filter and a new column (the index left is not 0..n-1)."""
    kept = chunk[chunk["key"] != 3]
    return kept.assign(y=kept["x"] * 2 + kept["key"])


def run(cluster: celerynb.LocalCluster, func: Callable[..., Any], *data: Any, **kw: Any) -> Any:
    return cmap(func, *data, cluster=cluster, progress=False, **kw)


def read_json_lines(path: str) -> pd.DataFrame:
    return pd.read_json(path, lines=True)


READERS: dict[str, Callable[[str], pd.DataFrame]] = {
    "parquet": pd.read_parquet,
    "csv": pd.read_csv,
    "json": read_json_lines,
    "csv.gz": pd.read_csv,
}


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (hidden ones too), relative to it, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- local files -------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", list(READERS))
def test_each_chunk_is_one_file_and_together_they_equal_func_of_the_data(
    cluster: celerynb.LocalCluster, tmp_path: Path, suffix: str
) -> None:
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
    paths = run(cluster, enrich, FRAME, to=str(tmp_path / f"out/part-{{chunk:05d}}.{suffix}"),
                chunks=6)  # fmt: skip
    assert paths == [str(tmp_path / f"out/part-{i:05d}.{suffix}") for i in range(6)]
    assert files_in(tmp_path / "out") == [f"part-{i:05d}.{suffix}" for i in range(6)]
    expected = enrich(FRAME)
    if suffix == "parquet":  # Parquet keeps the index
        got = pd.concat([pd.read_parquet(p) for p in paths])
    else:  # text formats: an unnamed index is not written
        got = pd.concat([READERS[suffix](p) for p in paths], ignore_index=True)
        expected = expected.reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected)


def test_a_named_index_is_written_as_columns_in_text_formats(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    def totals(chunk: pd.DataFrame) -> pd.DataFrame:
        return chunk.groupby("key")[["x"]].sum()

    paths = run(cluster, totals, FRAME, to=str(tmp_path / "t-{chunk}.csv"), chunks=3)
    first = pd.read_csv(paths[0])
    pd.testing.assert_frame_equal(first, totals(FRAME.iloc[:100]).reset_index())


def test_a_series_an_array_and_any_object(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    s = pd.Series(np.arange(20.0))
    paths = run(cluster, lambda c: c * 2, s, to=str(tmp_path / "s-{chunk}.csv"), chunks=2)
    assert pd.concat(map(pd.read_csv, paths), ignore_index=True)["0"].tolist() == (s * 2).tolist()

    arr = np.arange(40).reshape(20, 2)
    paths = run(cluster, lambda c: c + 1, arr, to=str(tmp_path / "a/{chunk}.npy"), chunks=4)
    np.testing.assert_array_equal(np.concatenate([np.load(p) for p in paths]), arr + 1)

    paths = run(cluster, lambda c: {"n": len(c)}, list(range(10)), to=str(tmp_path / "{chunk}.pkl"),
                chunks=2)  # fmt: skip
    assert [pd.read_pickle(p) for p in paths] == [{"n": 5}, {"n": 5}]


def test_a_file_url_and_compression(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    url = f"file://{tmp_path}/deep/er/part-{{chunk:03d}}.json.gz"
    paths = run(cluster, enrich, FRAME, to=url, chunks=3)
    assert paths == [url.format(chunk=i) for i in range(3)]
    got = pd.concat([pd.read_json(p, lines=True, compression="gzip") for p in paths])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), enrich(FRAME).reset_index(drop=True))


def test_a_relative_path_is_made_absolute_in_the_notebooks_directory(
    cluster: celerynb.LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = run(cluster, enrich, FRAME, to="rel/part-{chunk}.csv", chunks=2)
    assert paths == [str(tmp_path / f"rel/part-{i}.csv") for i in range(2)]
    assert all(Path(p).is_file() for p in paths)


def test_as_completed_yields_paths_and_an_iterator_and_overlap_work(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    future = celerynb.cmap_async(enrich, FRAME, to=str(tmp_path / "c/{chunk}.csv"), chunks=4,
                                 cluster=cluster, progress=False)  # fmt: skip
    got = dict(future.as_completed())
    assert got == {i: str(tmp_path / f"c/{i}.csv") for i in range(4)}
    assert future.result() == [got[i] for i in range(4)]

    parts = (FRAME.iloc[i : i + 100] for i in range(0, 300, 100))
    paths = run(cluster, enrich, parts, to=str(tmp_path / "it/{chunk}.csv"))
    assert len(paths) == 3
    assert sum(len(pd.read_csv(p)) for p in paths) == len(enrich(FRAME))

    s = pd.Series(np.arange(30.0))
    paths = run(cluster, lambda c: c.rolling(3).sum(), s, overlap=2, chunks=3,
                to=str(tmp_path / "w/{chunk}.csv"))  # fmt: skip
    got_s = pd.concat(map(pd.read_csv, paths), ignore_index=True)["0"]
    pd.testing.assert_series_equal(got_s, s.rolling(3).sum(), check_names=False)


def test_empty_data_writes_no_file(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    assert run(cluster, enrich, FRAME.iloc[:0], to=str(tmp_path / "e/{chunk}.csv")) == []
    assert not (tmp_path / "e").exists()


def test_a_named_call_returns_the_paths(remote: celerynb.Cluster, tmp_path: Path) -> None:
    to = str(tmp_path / "named/{chunk}.csv")
    name = f"sink-{os.getpid()}-{time.time_ns()}"
    paths = cmap(enrich, FRAME, to=to, name=name, chunks=3, cluster=remote, progress=False)
    assert paths == [to.format(chunk=i) for i in range(3)]
    again = celerynb.attach(name, cluster=remote, progress=False)
    assert again.result(30) == paths
    again.forget()


# -- errors ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("out/part.csv", "{chunk}"),
        ("out/part-{}.csv", "{chunk}"),
        ("out/{name}-{chunk}.csv", "'name'"),
        ("out/part-{chunk:s}.csv", "{chunk:05d}"),
        ("out/part-{chunk.csv", "not a valid pattern"),
        ("out/part-{chunk}.txt", ".csv"),
        ("out/part-{chunk}.parquet.gz", "compress themselves"),
        ("out/part-{chunk:.0}.csv", "{chunk:05d}"),
    ],
)
def test_a_bad_pattern_is_refused_with_the_fix(to: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"to=") as info:
        cmap(enrich, FRAME, to=to)
    assert message in str(info.value)


def test_options_that_do_not_go_with_to_are_refused() -> None:
    with pytest.raises(ValueError, match="second cmap over the returned paths"):
        cmap(enrich, FRAME, to="o/{chunk}.csv", reduce=len)
    with pytest.raises(ValueError, match="pass to= too"):
        cmap(enrich, FRAME, storage_options={"anon": True})
    with pytest.raises(ValueError, match="not for a groupby"):
        cmap(len, FRAME.groupby("key"), to="o/{chunk}.csv")
    with pytest.raises(TypeError, match="storage_options must be a dict"):
        cmap(enrich, FRAME, to="o/{chunk}.csv", storage_options="anon")  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match="path or URL pattern"):
        cmap(enrich, FRAME, to=3)  # type: ignore[typeddict-item]


def test_a_result_the_format_cannot_take_names_its_type_and_the_fix(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    with pytest.raises(ChunkError) as info:
        run(cluster, len, FRAME, to=str(tmp_path / "{chunk}.csv"), chunks=2)
    text = str(info.value)
    assert "func returned a int" in text and "return a DataFrame or Series" in text
    with pytest.raises(ChunkError, match=r"\.to_numpy\(\)"):
        run(cluster, enrich, FRAME, to=str(tmp_path / "{chunk}.npy"), chunks=2)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_missing_pyarrow_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    target = Target.parse(str(tmp_path / "{chunk}.parquet"))
    with pytest.raises(ImportError, match=r"pip install 'celerynb\[parquet\]'"):
        target.write(FRAME, 0)
    assert list(tmp_path.iterdir()) == [], "the temporary file is removed"


# -- fsspec, re-runs (WriteTo in this process) ----------------------------------------------------
def write_chunk(wrapper: WriteTo, index: int, *args: Any) -> Any:
    with running.chunk(index):
        return wrapper(*args)


def test_a_memory_url_with_storage_options() -> None:
    import fsspec

    to = f"memory://sinks-{os.getpid()}/part-{{chunk}}.csv"
    wrapper = WriteTo(enrich, Target.parse(to, {"skip_instance_cache": True}))
    assert "skip_instance_cache" not in repr(wrapper) and "part-{chunk}.csv" in repr(wrapper)
    paths = [write_chunk(wrapper, i, FRAME.iloc[i * 100 : (i + 1) * 100]) for i in range(3)]
    assert paths == [to.format(chunk=i) for i in range(3)]
    fs = fsspec.filesystem("memory")
    got = pd.concat([pd.read_csv(fs.open(p)) for p in paths], ignore_index=True)
    pd.testing.assert_frame_equal(got, enrich(FRAME).reset_index(drop=True))
    assert sorted(p.rsplit("/", 1)[1] for p in fs.ls(f"/sinks-{os.getpid()}", detail=False)) == [
        f"part-{i}.csv" for i in range(3)
    ]
    fs.rm(f"/sinks-{os.getpid()}", recursive=True)


def test_a_rerun_overwrites_and_removes_the_stale_temporary_files_of_its_chunk(
    tmp_path: Path,
) -> None:
    wrapper = WriteTo(enrich, Target.parse(str(tmp_path / "part-{chunk}.csv")))
    stale = [tmp_path / ".part-1.csv.dead01.tmp", tmp_path / ".part-1.csv.dead02.tmp"]
    other = tmp_path / ".part-11.csv.dead03.tmp"  # another chunk's: not ours to remove
    for p in [*stale, other]:
        p.write_text("half a fi")
    (tmp_path / "part-1.csv").write_text("old")
    for _ in range(2):
        assert write_chunk(wrapper, 1, FRAME) == str(tmp_path / "part-1.csv")
    assert files_in(tmp_path) == [other.name, "part-1.csv"]
    pd.testing.assert_frame_equal(
        pd.read_csv(tmp_path / "part-1.csv"), enrich(FRAME).reset_index(drop=True)
    )


def test_a_failing_write_leaves_no_file(tmp_path: Path) -> None:
    def broken(value: Any, file: IO[bytes]) -> None:
        file.write(b"half")
        raise OSError("disk full")

    fmt = Format(".broken", "anything", lambda v: True, broken)
    target = Target(str(tmp_path / "{chunk}.broken"), fmt)
    with pytest.raises(OSError, match="disk full"):
        target.write(1, 0)
    assert files_in(tmp_path) == []


# -- a worker SIGKILLed while it writes ---------------------------------------------------------
SLOW_WRITE_S = 0.3  # each chunk's write: half the file, a pause, the rest


def write_slowly(value: Any, file: IO[bytes]) -> None:
    """CSV, written in two halves with a pause between, marked by a file named after the
    pool process while it is in the middle."""
    buffer = io.BytesIO()
    value.to_csv(buffer, index=False)
    data = buffer.getvalue()
    file.write(data[: len(data) // 2])
    file.flush()
    marker = Path(value.attrs["markers"]) / str(os.getpid())
    marker.touch()
    time.sleep(SLOW_WRITE_S)
    marker.unlink()
    file.write(data[len(data) // 2 :])


def tagged(chunk: pd.DataFrame, markers: str) -> pd.DataFrame:
    out = chunk.assign(y=chunk["x"] * 3)
    out.attrs["markers"] = markers
    return out


@pytest.fixture
def slow_format() -> Iterator[None]:
    sinks.register(Format(".slowcsv", "a DataFrame", sinks._is_frame, write_slowly))
    yield
    del sinks.FORMATS[".slowcsv"]


@pytest.mark.slow
@pytest.mark.skipif(not _redis_up(), reason=f"no Redis at {REDIS}")
@pytest.mark.usefixtures("slow_format")
def test_one_file_per_chunk_when_a_worker_is_killed_mid_write(tmp_path: Path) -> None:
    psutil = pytest.importorskip("psutil")
    d = Deployment(tmp_path, "redis")
    try:
        keep, lose = d.start("keep"), d.start("lose")
        d.ready(keep, lose)
        markers, out = tmp_path / "writing", tmp_path / "out"
        markers.mkdir()
        n = 24
        future = celerynb.cmap_async(
            tagged, FRAME, kwargs={"markers": str(markers)}, chunks=n, cluster=d.client,
            progress=False, to=str(out / "part-{chunk:03d}.slowcsv"),
        )  # fmt: skip
        losers = {str(p.pid) for p in psutil.Process(lose.proc.pid).children(recursive=True)}
        deadline = time.monotonic() + 30
        while not {m.name for m in markers.iterdir()} & losers:  # it is mid-write: kill it
            assert time.monotonic() < deadline, "the worker to kill never wrote"
            losers |= {str(p.pid) for p in psutil.Process(lose.proc.pid).children(recursive=True)}
            time.sleep(0.01)
        os.killpg(lose.proc.pid, signal.SIGKILL)
        torn = [name for name in files_in(out) if name.endswith(".tmp")]
        paths = future.result(120)
        assert torn, "a temporary file was being written when the worker died"
        assert paths == [str(out / f"part-{i:03d}.slowcsv") for i in range(n)]
        # the killed worker's temporary file went when its chunk ran again: nothing else left
        assert files_in(out) == [f"part-{i:03d}.slowcsv" for i in range(n)]
        got = pd.concat(map(pd.read_csv, paths), ignore_index=True)
        expected = tagged(FRAME, "").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, expected)
        print(f"\nkilled mid-write; torn at the kill: {torn}")
    finally:
        d.close()
