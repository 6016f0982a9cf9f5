"""Files the workers read: celerynb.read_csv / read_json / read_parquet on a real cluster.

``cmap(f, read_csv(files))`` equals ``f`` of the files read whole and concatenated, for
any blocksize (parts that cut lines too), trailing newlines or not, CRLF, header-only and
empty files; Parquet by row groups with ``columns=`` / ``filters=``; JSON lines; over HTTP
from a real server that serves byte ranges (read through fsspec's HTTP filesystem).
"""

from __future__ import annotations

import gzip
import io
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from http_ranges import RangeServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import celerynb
from celerynb.sources.text import read_lines

cloudpickle.register_pickle_by_value(sys.modules[__name__])
SETTINGS = settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def double(frame: pd.DataFrame) -> pd.DataFrame:
    """A row-wise function: one row out per row in."""
    return frame.assign(twice=frame["n"] * 2)


def rows_of(files: list[Path], read=pd.read_csv, **kwargs: object) -> pd.DataFrame:
    """The files read whole and concatenated. Files without rows add none (pandas 3 would
    make every column of the concatenation `object` for an empty frame's sake)."""
    frames = [read(f, **kwargs) for f in files if f.stat().st_size]
    return pd.concat([f for f in frames if len(f)], ignore_index=True)


# -- the line rule, without a cluster ------------------------------------------------------------
@given(
    text=st.lists(st.text(alphabet="ab,\r", max_size=12), max_size=30),
    trailing=st.booleans(),
    blocksize=st.integers(1, 40),
)
def test_byte_ranges_read_every_line_exactly_once(
    text: list[str], trailing: bool, blocksize: int
) -> None:
    data = "\n".join(text).encode() + (b"\n" if trailing and text else b"")
    f, size = io.BytesIO(data), len(data)
    pieces = [read_lines(f, s, min(s + blocksize, size), size) for s in range(0, size, blocksize)]
    assert b"".join(pieces) == data
    filled = [piece for piece in pieces if piece]
    assert all(piece.endswith(b"\n") for piece in filled[:-1])  # whole lines in each part


# -- CSV ------------------------------------------------------------------------------------------
def write_csv(path: Path, frame: pd.DataFrame, newline: str = "\n", trailing: bool = True) -> Path:
    text = frame.to_csv(index=False, lineterminator=newline)
    path.write_text(text if trailing else text[: -len(newline)], newline="")
    return path


def table(rng: np.random.Generator, n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "n": np.arange(start, start + n),
            "x": rng.random(n).round(4),
            "label": [f"k{v}" for v in rng.integers(0, 50, n)],
        }
    )


@pytest.mark.parametrize("blocksize", [50, 7, 333, "1MB", None])
def test_csv_files_equal_the_concatenated_read(
    cluster: celerynb.LocalCluster, tmp_path: Path, blocksize: int | str | None
) -> None:
    rng = np.random.default_rng(1)
    files = [
        write_csv(tmp_path / "a.csv", table(rng, 40)),
        write_csv(tmp_path / "b.csv", table(rng, 25, 40), trailing=False),
        write_csv(tmp_path / "c.csv", table(rng, 30, 65), newline="\r\n"),
        write_csv(tmp_path / "d.csv", table(rng, 0)),  # header only
        write_csv(tmp_path / "e.csv", table(rng, 9, 95), newline="\r\n", trailing=False),
    ]
    (tmp_path / "f.csv").write_bytes(b"")  # empty
    files.append(tmp_path / "f.csv")
    source = celerynb.read_csv(str(tmp_path / "*.csv"), blocksize=blocksize)
    assert len(source.files) == 6
    got = celerynb.cmap(double, source, cluster=cluster, progress=False)
    pd.testing.assert_frame_equal(got, double(rows_of(files)))


@SETTINGS
@given(
    sizes=st.lists(st.integers(0, 60), min_size=1, max_size=4),
    newline=st.sampled_from(["\n", "\r\n"]),
    trailing=st.booleans(),
    blocksize=st.one_of(st.integers(1, 400), st.none()),
    missing=st.booleans(),
)
def test_random_csv_files_and_blocksizes(
    cluster: celerynb.LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    newline: str,
    trailing: bool,
    blocksize: int | None,
    missing: bool,
) -> None:
    folder = tmp_path_factory.mktemp("csv")
    rng = np.random.default_rng(sum(sizes))
    start, files = 0, []
    for i, n in enumerate(sizes):
        frame = table(rng, n, start)
        if missing and n > 3:  # a float column with gaps, an int column with a gap
            frame.loc[frame.index[1::3], "x"] = np.nan
            frame["k"] = pd.array(np.arange(n), dtype="Int64")
            frame.loc[frame.index[-2], "k"] = pd.NA
        elif missing:
            frame["k"] = np.arange(n)
        files.append(write_csv(folder / f"{i:02}.csv", frame, newline, trailing))
        start += n
    if not any(sizes):
        return  # header-only files: nothing to compare with (pandas would read objects)
    got = celerynb.cmap(
        double, celerynb.read_csv(files, blocksize=blocksize), cluster=cluster, progress=False
    )
    pd.testing.assert_frame_equal(got, double(rows_of(files)))


def test_compressed_files_are_one_part_each(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    plain = write_csv(tmp_path / "a.csv", table(rng, 200))
    packed = tmp_path / "b.csv.gz"
    packed.write_bytes(gzip.compress(table(rng, 300, 200).to_csv(index=False).encode()))
    source = celerynb.read_csv([str(plain), str(packed)], blocksize=500)
    assert [p.whole for p in source.parts if p.url.endswith(".gz")] == [True]
    assert sum(p.url.endswith(".csv") for p in source.parts) > 5
    got = celerynb.cmap(double, source, cluster=cluster, progress=False)
    pd.testing.assert_frame_equal(got, double(rows_of([plain, packed])))


def test_quoted_newlines_need_one_part_per_file(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    frame = pd.DataFrame({"n": range(50), "note": [f"line one\nline two {i}" for i in range(50)]})
    path = tmp_path / "quoted.csv"
    frame.to_csv(path, index=False)
    got = celerynb.cmap(double, celerynb.read_csv(path, blocksize=None), cluster=cluster)
    pd.testing.assert_frame_equal(got, double(pd.read_csv(path)))


def test_text_columns_keep_their_dtype_in_every_part(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    # the later rows of `code` look like numbers; a part of only those must read them as text
    frame = pd.DataFrame({"n": range(400), "code": ["a1"] * 10 + [str(i) for i in range(390)]})
    path = tmp_path / "codes.csv"
    frame.to_csv(path, index=False)
    got = celerynb.cmap(double, celerynb.read_csv(path, blocksize=300), cluster=cluster)
    pd.testing.assert_frame_equal(got, double(pd.read_csv(path)))


def test_reduce_as_completed_and_progress_in_bytes(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    files = [write_csv(tmp_path / f"{i}.csv", table(rng, 500, 500 * i)) for i in range(3)]
    source = celerynb.read_csv(str(tmp_path / "*.csv"), blocksize="4kB")
    assert repr(source).startswith("<CsvSource 3 files, ")
    whole = rows_of(files)

    def count(frame: pd.DataFrame) -> pd.Series:
        return frame.groupby("label")["n"].count()

    def add(parts: list[pd.Series]) -> pd.Series:
        return pd.concat(parts).groupby(level=0).sum()

    total = celerynb.cmap(count, source, reduce=add, cluster=cluster, progress=False)
    pd.testing.assert_series_equal(total, count(whole))
    future = celerynb.cmap_async(len, source, cluster=cluster, progress=False)
    assert sum(n for _, n in future.as_completed()) == len(whole)
    assert future.n_items == sum(f.stat().st_size for f in files)  # progress counts bytes


def test_bad_options_are_refused_with_the_fix(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "a.csv", table(np.random.default_rng(4), 5))
    with pytest.raises(TypeError, match="skiprows"):
        celerynb.read_csv(path, skiprows=2)
    with pytest.raises(ValueError, match="blocksize"):
        celerynb.read_csv(path, blocksize="lots")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        celerynb.read_csv(str(tmp_path / "nothing-*.csv"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "z.csv").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        celerynb.read_csv(str(tmp_path / "empty" / "*.csv"))
    source = celerynb.read_csv(path)
    with pytest.raises(ValueError, match="blocksize="):
        celerynb.cmap(double, source, cluster=cluster, chunks=3)
    with pytest.raises(TypeError, match="alone"):
        celerynb.cmap(lambda a, b: a, source, [1], cluster=cluster)


def test_a_failing_part_names_its_file_and_bytes(
    cluster: celerynb.LocalCluster, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "a.csv", table(np.random.default_rng(5), 100))

    def fails(frame: pd.DataFrame) -> pd.DataFrame:
        raise KeyError("nope")

    with pytest.raises(celerynb.ChunkError) as caught:
        celerynb.cmap(fails, celerynb.read_csv(path, blocksize=1000), cluster=cluster)
    error = caught.value
    start, stop = error.chunk.start, error.chunk.stop  # (whichever part failed first)
    assert f"(in {path} bytes {start}:{stop})" in error.remote_traceback


# -- JSON lines -----------------------------------------------------------------------------------
@SETTINGS
@given(
    sizes=st.lists(st.integers(0, 40), min_size=1, max_size=3),
    blocksize=st.integers(1, 300),
    trailing=st.booleans(),
)
def test_json_lines_equal_the_concatenated_read(
    cluster: celerynb.LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    sizes: list[int],
    blocksize: int,
    trailing: bool,
) -> None:
    folder = tmp_path_factory.mktemp("json")
    rng, start, files = np.random.default_rng(sum(sizes)), 0, []
    for i, n in enumerate(sizes):
        text = table(rng, n, start).to_json(orient="records", lines=True) if n else ""
        path = folder / f"{i}.jsonl"
        path.write_text(text if trailing else text.rstrip("\n"))
        files.append(path)
        start += n
    if not any(sizes):
        return
    source = celerynb.read_json(str(folder / "*.jsonl"), blocksize=blocksize)
    got = celerynb.cmap(double, source, cluster=cluster, progress=False)
    expected = double(rows_of(files, pd.read_json, lines=True))
    pd.testing.assert_frame_equal(got, expected)


# -- Parquet --------------------------------------------------------------------------------------
@pytest.fixture
def parquet_files(tmp_path: Path) -> list[Path]:
    pytest.importorskip("pyarrow")
    rng, files = np.random.default_rng(6), []
    for i, n in enumerate([100, 37, 0, 250]):
        path = tmp_path / f"part-{i}.parquet"
        table(rng, n, 1000 * i).to_parquet(path, row_group_size=16)
        files.append(path)
    return files


@pytest.mark.parametrize("blocksize", [1, 2000, None])
@pytest.mark.parametrize(
    ("columns", "filters"),
    [
        (None, None),
        (["n", "label"], None),
        (None, [("n", ">=", 1050)]),
        (["n", "x"], [[("x", "<", 0.3)], [("n", "<", 20)]]),
        (None, [("n", ">", 10**6)]),  # no row at all
    ],
)
def test_parquet_by_row_groups_with_columns_and_filters(
    cluster: celerynb.LocalCluster,
    parquet_files: list[Path],
    blocksize: int | None,
    columns: list[str] | None,
    filters: list[object] | None,
) -> None:
    folder = parquet_files[0].parent
    source = celerynb.read_parquet(folder, columns=columns, filters=filters, blocksize=blocksize)
    groups = [(p.url, g) for p in source.parts for g in p.row_groups]
    assert len(groups) == len(set(groups))  # no row group read twice
    if blocksize == 1 and filters is None:
        assert len(groups) == 7 + 3 + 16 and len(source) == len(groups)
    got = celerynb.cmap(lambda f: f.assign(twice=f["n"] * 2), source, cluster=cluster)
    frames = [pd.read_parquet(f, columns=columns, filters=filters) for f in parquet_files]
    expected = pd.concat([f for f in frames if len(f)] or frames[:1], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected.assign(twice=expected["n"] * 2))


def test_parquet_filters_skip_row_groups_in_the_notebook(parquet_files: list[Path]) -> None:
    source = celerynb.read_parquet(parquet_files, filters=[("n", "<", 16)], blocksize=1)
    assert [p.row_groups for p in source.parts] == [(0,)]
    assert "rows" in repr(source)


# -- over HTTP, from a real server that serves byte ranges ---------------------------------------
def test_csv_and_parquet_over_http_with_byte_ranges(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    # pool processes of their own: once, a pool process of the session's cluster, after a
    # long run of earlier tests (cancels among them), never sent its HTTP request
    with celerynb.LocalCluster(2) as cluster:
        _over_http(cluster, tmp_path)


def _over_http(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    files = [write_csv(tmp_path / f"{i}.csv", table(rng, 300, 300 * i)) for i in range(2)]
    table(rng, 200).to_parquet(tmp_path / "t.parquet", row_group_size=50)
    with RangeServer(tmp_path) as server:
        urls = [f"{server.url}/{f.name}" for f in files]
        source = celerynb.read_csv(urls, blocksize=2000, storage_options={"block_size": 512})
        assert len(source) > 4
        got = celerynb.cmap(double, source, cluster=cluster, progress=False)
        pd.testing.assert_frame_equal(got, double(rows_of(files)))
        assert any(first > 0 for _, first, _ in server.ranges_served)  # ranges, not whole files
        pytest.importorskip("pyarrow")
        source = celerynb.read_parquet(f"{server.url}/t.parquet", blocksize=1)
        assert len(source) == 4
        got = celerynb.cmap(double, source, cluster=cluster, progress=False)
        pd.testing.assert_frame_equal(got, double(pd.read_parquet(tmp_path / "t.parquet")))


# -- named (durable) calls ------------------------------------------------------------------------
def test_a_named_source_call_is_attached_again(remote: celerynb.Cluster, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    files = [write_csv(tmp_path / f"{i}.csv", table(rng, 200, 200 * i)) for i in range(2)]
    source = celerynb.read_csv([str(f) for f in files], blocksize=1500)
    first = celerynb.cmap(double, source, cluster=remote, name="read-csv", progress=False)
    pd.testing.assert_frame_equal(first, double(rows_of(files)))
    again = celerynb.attach("read-csv", cluster=remote, progress=False).result()
    pd.testing.assert_frame_equal(again, first)
    celerynb.forget("read-csv", cluster=remote)
