"""``cmap`` on files: a list of paths is split into chunks of paths for the workers.

Checked on the session's real embedded cluster: ``pathlib.Path`` and ``str``
paths; the files are opened by worker processes (their pids are the pool's,
and the file contents never pass through the store); results come back in
path order; a single path (a folder) is refused with a hint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import cloudpickle
import pandas as pd
import pytest

import celerynb
from celerynb import cmap

# The workers cannot import this test module: ship its functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

N_FILES = 9
FILE_BYTES = 2 * 2**20  # per file, so that shipping contents would show


def run(cluster: celerynb.LocalCluster, func: Any, data: Any, **kw: Any) -> Any:
    return cmap(func, data, cluster=cluster, progress=False, **kw)


def make_files(folder: Path) -> list[Path]:
    paths = []
    for i in range(N_FILES):
        path = folder / f"part-{i:02d}.bin"
        path.write_bytes(bytes([i]) * (FILE_BYTES + i))
        paths.append(path)
    return paths


def inspect(paths: list[Any]) -> list[tuple[str, str, int, int, int]]:
    """For each path: its type, name, size read, first byte, and this process's pid."""
    out = []
    for p in paths:
        with open(p, "rb") as f:
            data = f.read()
        out.append((type(p).__name__, os.path.basename(p), len(data), data[0], os.getpid()))
    return out


@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_paths_are_read_on_the_workers(
    cluster: celerynb.LocalCluster, tmp_path: Path, as_str: bool
) -> None:
    paths: list[Any] = make_files(tmp_path)
    if as_str:
        paths = [str(p) for p in paths]
    r = cluster.redis
    received_before = r.info("stats")["total_net_input_bytes"]
    out = run(cluster, inspect, paths, chunks=3)
    received = r.info("stats")["total_net_input_bytes"] - received_before
    # in path order, each file read whole, with the path type the notebook passed
    assert [(kind, name, size, first) for kind, name, size, first, _ in out] == [
        (type(p).__name__, f"part-{i:02d}.bin", FILE_BYTES + i, i) for i, p in enumerate(paths)
    ]
    pids = {pid for *_, pid in out}
    assert os.getpid() not in pids, "a file was read in the notebook's process"
    assert pids <= set(cluster.pids), (pids, cluster.pids)
    # the 18 MiB of contents never went through the store: only paths and small results
    assert received < FILE_BYTES, f"{received} bytes reached Redis"


def test_chunks_of_paths(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    paths = make_files(tmp_path)
    sizes = run(cluster, lambda ps: [len(ps)], paths, chunks=3)
    assert sizes == [3, 3, 3]
    sizes = run(cluster, lambda ps: [len(ps)], paths, chunk_size=4)
    assert sizes == [3, 3, 3]  # ceil(9 / 4) = 3 chunks
    future = celerynb.cmap_async(
        lambda ps: [p.name for p in ps], paths, cluster=cluster, progress=False
    )
    assert future.result(timeout=60) == [p.name for p in paths]
    assert future.n_chunks == cluster.n_workers  # a small input: one chunk per worker


def read_csvs(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([pd.read_csv(p).assign(source=p.stem) for p in paths])


def test_csv_pipeline(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    """The file-pipeline pattern: each worker reads its CSVs, the notebook gets one frame."""
    for i in range(6):
        pd.DataFrame({"day": range(i * 10, i * 10 + 5), "value": [i * 0.5] * 5}).to_csv(
            tmp_path / f"day-{i}.csv", index=False
        )
    paths = sorted(tmp_path.glob("*.csv"))
    out = run(cluster, read_csvs, paths, chunks=3)
    expected = read_csvs(paths)
    pd.testing.assert_frame_equal(out, expected, check_exact=True)


def test_missing_file_fails_on_the_worker(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    paths = [*make_files(tmp_path)[:3], tmp_path / "gone.bin"]
    with pytest.raises(celerynb.ChunkError) as info:
        run(cluster, inspect, paths, chunks=2)
    assert isinstance(info.value, FileNotFoundError)
    assert "chunk 1 of 2 (positions 2:4)" in str(info.value)
    assert "gone.bin" in str(info.value)


@pytest.mark.parametrize("as_str", [False, True], ids=["Path", "str"])
def test_one_folder_is_refused(
    cluster: celerynb.LocalCluster, tmp_path: Path, as_str: bool
) -> None:
    make_files(tmp_path)
    with pytest.raises(TypeError) as info:
        run(cluster, inspect, str(tmp_path) if as_str else tmp_path)
    if as_str:
        assert "strings are not split" in str(info.value)
    else:
        assert "sorted(folder.glob('*'))" in str(info.value)
        assert str(tmp_path) in str(info.value)


def test_one_file_is_refused(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    (path,) = make_files(tmp_path)[:1]
    with pytest.raises(TypeError, match="one path"):
        run(cluster, inspect, path)


def test_glob_generator_is_refused(cluster: celerynb.LocalCluster, tmp_path: Path) -> None:
    make_files(tmp_path)
    with pytest.raises(TypeError, match=r"items are its chunks.*PosixPath.*list\(\.\.\.\)"):
        run(cluster, inspect, tmp_path.glob("*"))
