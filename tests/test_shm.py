"""ShmStore: objects in files on a tmpfs, signed headers, zero-copy reads."""

from __future__ import annotations

import fcntl
import mmap
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from celerynb.errors import SignatureError
from celerynb.plane.codec import new_secret
from celerynb.plane.shm import ShmStore

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShmStore]:
    with ShmStore.create(new_secret(), root=tmp_path) as s:
        yield s


def _mapped(arr: np.ndarray[Any, Any]) -> bool:
    """Whether ``arr``'s memory is a slice of an mmap (not a copy of it)."""
    base: Any = arr
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


def _frame() -> pd.DataFrame:
    n = 2000
    return pd.DataFrame(
        {
            "f": np.linspace(0, 1, n),
            "i": np.arange(n, dtype="int32"),
            "b": np.arange(n) % 3 == 0,
            "o": pd.Series([("x", k) if k % 2 else str(k) for k in range(n)], dtype=object),
            "s": [f"s{k}" for k in range(n)],
            "c": pd.Categorical(["red", "green", "blue", "red"] * (n // 4)),
            "t": pd.date_range("2024-01-01", periods=n, freq="min", tz="UTC"),
            "n": pd.array([None if k % 5 == 0 else k for k in range(n)], dtype="Int64"),
        },
        index=pd.RangeIndex(10, 10 + n, name="row"),
    )


BIG = np.arange(1_000_000, dtype="float64").reshape(1000, 1000)
SAMPLES: dict[str, Any] = {
    "frame": _frame(),
    "frame-rows": _frame().iloc[300:900],
    "series": pd.Series(np.arange(5000.0), index=[f"k{i}" for i in range(5000)], name="v"),
    "ndarray": BIG,
    "fortran": np.asfortranarray(BIG),
    "strided": BIG[::3, 1::2],
    "column": BIG[:, 7],
    "zero-d": np.array(3.5),
    "empty": np.zeros((0, 4)),
    "structured": np.zeros(500, dtype=[("a", "i8"), ("b", "f4")]),
    "objects": np.array([1, "a", None, (2,)] * 300, dtype=object),
    "masked": np.ma.masked_array(np.arange(4000.0), mask=np.arange(4000) % 7 == 0),
    "list": [1, 2.5, "three", None, [4, 5], {"six": 6}],
    "dict": {"a": np.arange(3000), "b": {"nested": (1, 2)}, 3: "x"},
    "bytes": os.urandom(100_000),
    "small": b"x",
    "none": None,
}


def _assert_same(got: Any, want: Any) -> None:
    assert type(got) is type(want)
    if isinstance(want, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    elif isinstance(want, pd.Series):
        pd.testing.assert_series_equal(got, want)
    elif isinstance(want, np.ma.MaskedArray):
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.data, want.data)
    elif isinstance(want, np.ndarray):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    elif isinstance(want, dict) and isinstance(want.get("a"), np.ndarray):
        np.testing.assert_array_equal(got["a"], want["a"])
        assert got["b"] == want["b"] and got[3] == want[3]
    else:
        assert got == want


@pytest.mark.parametrize("key", list(SAMPLES))
def test_round_trip(store: ShmStore, key: str) -> None:
    size = store.put(key, SAMPLES[key])
    assert size == (store.directory / key).stat().st_size
    _assert_same(store.get(key), SAMPLES[key])


@pytest.mark.parametrize("key", ["ndarray", "fortran", "strided", "column"])
def test_arrays_map_the_file_and_stay_writable_after_delete(store: ShmStore, key: str) -> None:
    want = SAMPLES[key]
    store.put(key, want)
    got = store.get(key)
    store.delete([key])
    assert not (store.directory / key).exists()
    assert _mapped(got), "the array was copied out of the mapped file"
    assert got.flags.writeable
    np.testing.assert_array_equal(got, want)
    got[...] = -1  # copy-on-write: private pages, no SIGBUS, no effect on `want`
    assert (got == -1).all() and not (want == -1).any()


def test_frame_blocks_map_the_file(store: ShmStore) -> None:
    frame = pd.DataFrame(BIG, columns=[f"c{i}" for i in range(1000)])
    store.put("f", frame.iloc[100:600])  # a row slice, as chunking makes them
    got = store.get("f")
    store.delete(["f"])
    (block,) = got._mgr.blocks
    assert _mapped(block.values) and block.values.flags.writeable
    got.iloc[0, 0] = -1.0
    assert got.iloc[0, 0] == -1.0 and frame.iloc[100, 0] == BIG[100, 0]
    pd.testing.assert_frame_equal(got.iloc[1:], frame.iloc[101:600])


def test_writes_do_not_reach_the_file(store: ShmStore) -> None:
    store.put("a", np.zeros(10_000))
    store.get("a")[:] = 1
    assert not store.get("a").any()


def test_put_replaces_and_leaves_no_temp_files(store: ShmStore) -> None:
    for k in range(5):
        store.put("x", np.full(5000, k))
    assert store.get("x")[0] == 4
    assert sorted(os.listdir(store.directory)) == ["x"]


class _Unpicklable:
    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling")


def test_failed_put_leaves_nothing(store: ShmStore) -> None:
    with pytest.raises(RuntimeError, match="no pickling"):
        store.put("x", [np.ones(10_000), _Unpicklable()])
    assert os.listdir(store.directory) == []


def test_permissions(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        with ShmStore.create(new_secret(), root=tmp_path) as s:
            s.put("x", [1])
            assert stat.S_IMODE(s.directory.stat().st_mode) == 0o700
            assert stat.S_IMODE((s.directory / "x").stat().st_mode) == 0o600
            assert s.directory.stat().st_uid == os.getuid()
            assert s.directory.name.startswith(f"celerynb-{os.getpid()}-")
    finally:
        os.umask(old)


def test_attach_refuses_a_shared_directory(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    with pytest.raises(PermissionError, match="mode 0700"):
        ShmStore(tmp_path, new_secret())
    tmp_path.chmod(0o700)
    ShmStore(tmp_path, new_secret())


def test_wrong_secret_is_refused(store: ShmStore) -> None:
    store.put("x", {"a": 1})
    other = ShmStore(store.directory, new_secret())
    with pytest.raises(SignatureError, match=r"'x'.*bad signature"):
        other.get("x")


@pytest.mark.parametrize("where", ["magic", "mac", "table", "stream"])
def test_tampered_header_is_refused(store: ShmStore, where: str) -> None:
    store.put("x", ["payload", np.arange(5000)])
    path = store.directory / "x"
    data = bytearray(path.read_bytes())
    header_end = 16 + int.from_bytes(data[8:16], "little")
    # file magic | header length | CNB1 | HMAC | buffer count and lengths | stream
    offset = {"magic": 0, "mac": 30, "table": 16 + 36 + 8, "stream": header_end - 1}[where]
    data[offset] ^= 0xFF
    path.write_bytes(data)
    with pytest.raises(SignatureError, match="'x'"):
        store.get("x")


@pytest.mark.parametrize("keep", [0, 10, 200, -64])
def test_truncated_file_is_refused(store: ShmStore, keep: int) -> None:
    store.put("x", np.arange(5000))
    path = store.directory / "x"
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(SignatureError, match="'x'"):
        store.get("x")


def test_missing_names(store: ShmStore) -> None:
    with pytest.raises(FileNotFoundError, match="'nope'"):
        store.get("nope")
    store.delete(["nope", "neither"])
    with pytest.raises(TypeError):
        store.delete("abc")


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", "a..b", ".hidden", "../x", "x" * 129, "é", "a\n", "a b", 3]
)
def test_bad_names(store: ShmStore, name: Any) -> None:
    with pytest.raises(ValueError, match="bad shared-memory object name"):
        store.put(name, 1)
    with pytest.raises(ValueError, match="bad shared-memory object name"):
        store.get(name)


def test_good_names(store: ShmStore) -> None:
    for name in ["0123abcdef-c0", "0123abcdef-r17", "_a.b-c", "x" * 128]:
        store.put(name, name)
        assert store.get(name) == name


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    s = ShmStore.create(new_secret(), root=tmp_path)
    attached = ShmStore(s.directory, "secret")
    attached.close()  # a worker's close leaves the directory alone
    assert s.directory.is_dir()
    s.put("x", 1)
    s.close()
    s.close()
    assert not s.directory.exists()
    assert "closed" in repr(s)
    with pytest.raises(ValueError, match="closed"):
        s.get("x")


def test_repr_hides_the_secret(store: ShmStore) -> None:
    assert str(store.directory) in repr(store)
    assert store._secret not in repr(store)


def test_forked_child_does_not_remove_the_directory(store: ShmStore) -> None:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        store.close()
        os._exit(0)
    os.waitpid(pid, 0)
    assert store.directory.is_dir()


def test_sweep_removes_a_killed_drivers_directory(tmp_path: Path) -> None:
    code = (
        "import os, sys; from celerynb.plane.shm import ShmStore\n"
        "s = ShmStore.create('k', root=sys.argv[1]); s.put('x', b'data')\n"
        "print(s.directory, flush=True); os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == -9, done.stderr
    dead = Path(done.stdout.strip())
    assert (dead / "x").exists()
    live = tmp_path / f"celerynb-{os.getpid()}-abc123"
    live.mkdir(mode=0o700)
    other = tmp_path / "celerynb-notapid-1"
    other.mkdir()
    with ShmStore.create(new_secret(), root=tmp_path) as s:
        assert not dead.exists()
        assert live.is_dir() and other.is_dir() and s.directory.is_dir()


def test_sweep_keeps_a_locked_directory(tmp_path: Path) -> None:
    # a creator in another pid namespace: its pid looks dead here, its lock is held
    locked = tmp_path / "celerynb-999999999-abc"
    locked.mkdir(mode=0o700)
    fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert ShmStore.sweep(tmp_path) == []
        assert locked.is_dir()
    finally:
        os.close(fd)
    assert ShmStore.sweep(tmp_path) == [locked]
    assert not locked.exists()


def test_available(tmp_path: Path) -> None:
    assert not ShmStore.available(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    assert not ShmStore.available(tmp_path / "file")


@pytest.mark.skipif(not ShmStore.available(), reason="no writable tmpfs at /dev/shm")
def test_real_dev_shm() -> None:
    with ShmStore.create(new_secret()) as s:
        assert s.directory.parent == Path("/dev/shm")
        frame = pd.DataFrame(np.random.default_rng(0).random((50_000, 8)))
        s.put("c0", frame)
        got = s.get("c0")
        s.delete(["c0"])
        pd.testing.assert_frame_equal(got, frame)
    assert not s.directory.exists()


@pytest.fixture
def tiny_tmpfs() -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and a kernel that lets us mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="celerynb-test-"))
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        mount.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


def test_full_tmpfs(tiny_tmpfs: Path) -> None:
    assert ShmStore.available(tiny_tmpfs)
    with ShmStore.create(new_secret(), root=tiny_tmpfs) as s:
        with pytest.raises(OSError, match=f"{tiny_tmpfs} is full.*more chunks.*size=") as info:
            s.put("big", np.ones(500_000))  # 4 MB
        assert info.value.errno == 28
        assert os.listdir(s.directory) == []
        s.put("small", np.ones(1000))
        assert s.get("small").sum() == 1000
