"""Static checks as part of the suite: ruff (lint + format), mypy, and the package's structure
(no hidden import cycles, configuration read in one place, Redis behind the store, every
module in docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        ("ruff", "check", "celerynb", "tests", "benchmarks", "notebooks"),
        ("ruff", "format", "--check", "celerynb", "tests", "benchmarks", "notebooks"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(args: tuple[str, ...]) -> None:
    if shutil.which("ruff") is None and not _has_module("ruff"):
        pytest.skip("ruff is not installed: pip install -e '.[test]'")
    done = _run(sys.executable, "-m", *args)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy() -> None:
    done = _run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr


# -- the package's structure -----------------------------------------------------------------------
PACKAGE = ROOT / "celerynb"

#: Function-level imports of celerynb modules that are there on purpose, as
#: (importing file, imported module): reason. Anything else imported inside a function
#: hides a cycle between modules; a cycle is a design question: move the shared piece
#: down. Modules that import an optional dependency themselves only when it is used
#: (``widget``: ipywidgets, ``stats``: matplotlib) need no entry: import them at module level.
ALLOWED_LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    # start-up cost: `import celerynb`, `%load_ext celerynb` and `celerynb --help` stay light
    ("celerynb/__init__.py", "celerynb.magics"): "IPython's magics, only for `%load_ext`",
    ("celerynb/cli.py", "celerynb.plane"): "the Redis client, for `celerynb worker`'s check",
    ("celerynb/cli.py", "celerynb.worker"): "the worker's app, read from the environment "
    "the command has just set",
    ("celerynb/cli.py", "celerynb.worker.embedded"): "the worker's fork hook, same",
    ("celerynb/cli.py", "celerynb.demo"): "NumPy and pandas, only for `celerynb demo`",
    ("celerynb/cli.py", "celerynb.detached"): "Redis, only for `celerynb cluster ...`",
    ("celerynb/magics.py", "celerynb.cluster"): "Celery and Redis, only once a magic needs a "
    "cluster (`%load_ext celerynb` starts and loads nothing)",
    ("celerynb/demo.py", "celerynb"): "the driver (Celery, Redis) when the demo runs, not when "
    "the benchmarks import its frame and scoring function",
    # optional dependencies
    ("celerynb/worker/__init__.py", "celerynb.plane.shm"): "the shared-memory store, only in "
    "the embedded cluster's workers (its plane is the only one that uses it)",
}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _package_of(path: Path) -> str:
    """The package a module's relative imports start from (``celerynb.plane`` for
    ``celerynb/plane/keys.py`` and for ``celerynb/plane/__init__.py``)."""
    return ".".join(path.parent.relative_to(ROOT).parts)


def _exists(module: str) -> bool:
    target = ROOT.joinpath(*module.split("."))
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def _imported(path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The celerynb modules an import statement imports (none for other packages)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "celerynb"]
    if node.level == 0:
        module = node.module or ""
        base = module if module.split(".")[0] == "celerynb" else None
    else:
        parts = _package_of(path).split(".")
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    if base is None:
        return []
    if node.module is None:  # `from . import x`: x is a submodule, or a name of the package
        found = [f"{base}.{a.name}" for a in node.names if _exists(f"{base}.{a.name}")]
        return found if len(found) == len(node.names) else [*found, base]
    return [base]


def _local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every celerynb module imported inside a function or method."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                found.extend((child.lineno, m) for m in _imported(path, child))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(_parse(path), False)
    return found


def test_no_function_level_imports_of_the_package() -> None:
    """A celerynb module imports celerynb modules at module level (or under
    ``if TYPE_CHECKING:``), except the deferrals in ALLOWED_LOCAL_IMPORTS."""
    offenders: list[str] = []
    used: set[tuple[str, str]] = set()
    for path in _sources():
        for line, module in _local_imports(path):
            pair = (_rel(path), module)
            if pair in ALLOWED_LOCAL_IMPORTS:
                used.add(pair)
            else:
                offenders.append(f"  {pair[0]}:{line} imports {module}")
    stale = [f"  {f} -> {m}" for f, m in sorted(set(ALLOWED_LOCAL_IMPORTS) - used)]
    assert not offenders and not stale, (
        ("imports inside a function hide import cycles:\n" + "\n".join(offenders) + "\n"
         "Fix: import at module level; if that makes a cycle, move the piece both modules "
         "need down into a module that imports neither; only a deferral of start-up cost "
         "or of an optional dependency goes into ALLOWED_LOCAL_IMPORTS, with its reason.\n"
         if offenders else "")
        + ("ALLOWED_LOCAL_IMPORTS names imports no function makes any more: remove them:\n"
           + "\n".join(stale) if stale else "")
    )  # fmt: skip


# -- configuration: CELERYNB_* is read in settings.py only ---------------------------------------
def _is_environ(node: ast.AST) -> bool:
    """``os.environ`` or ``environ``."""
    return (isinstance(node, ast.Attribute) and node.attr == "environ") or (
        isinstance(node, ast.Name) and node.id == "environ"
    )


def _names_variable(node: ast.AST | None) -> bool:
    """A ``"CELERYNB_..."`` string or an ``ENV_*`` constant (``ENV_BROKER``, ``settings.ENV_X``)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and "CELERYNB_" in node.value
    if isinstance(node, ast.JoinedStr):
        return any(_names_variable(v) for v in node.values)
    if isinstance(node, ast.Name):
        return node.id.startswith("ENV_")
    if isinstance(node, ast.Attribute):
        return node.attr.startswith("ENV_")
    return False


def _reads_variable(node: ast.AST) -> bool:
    """``os.environ.get(X)`` (``pop``, ``setdefault``), ``os.getenv(X)``, ``os.environ[X]``
    or ``X in os.environ``, with X naming a CELERYNB_* variable."""
    if isinstance(node, ast.Call) and node.args and _names_variable(node.args[0]):
        f = node.func
        if isinstance(f, ast.Attribute):
            return f.attr == "getenv" or (
                f.attr in ("get", "pop", "setdefault") and _is_environ(f.value)
            )
        return isinstance(f, ast.Name) and f.id == "getenv"
    if isinstance(node, ast.Subscript):
        return (
            isinstance(node.ctx, ast.Load)
            and _is_environ(node.value)
            and _names_variable(node.slice)
        )
    if isinstance(node, ast.Compare):
        return (
            _names_variable(node.left)
            and any(isinstance(op, ast.In | ast.NotIn) for op in node.ops)
            and any(_is_environ(c) for c in node.comparators)
        )
    return False


def _env_uses(tree: ast.Module) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if _reads_variable(node):
            found.append((getattr(node, "lineno", 0), f"reads {ast.unparse(node)}"))
        elif (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
            and node.value.value.startswith("CELERYNB_")
        ):
            found.append((node.lineno, f"defines {node.value.value}"))
    return found


def test_environment_read_in_settings_only() -> None:
    """Every ``CELERYNB_*`` variable is named and read in celerynb/settings.py, when a
    cluster or a worker starts; other modules take the values from its objects."""
    offenders = [
        f"  {_rel(path)}:{line} {what}"
        for path in _sources()
        if _rel(path) != "celerynb/settings.py"
        for line, what in _env_uses(_parse(path))
    ]
    assert not offenders, (
        "CELERYNB_* variables named or read outside celerynb/settings.py:\n"
        + "\n".join(offenders)
        + "\nFix: define the name in settings.py and read it there (Settings, Liveness, Tuning, "
        "or a new settings object made when a cluster or worker starts); pass the value on."
    )


# -- Redis: through the store, with key names from plane/keys.py ---------------------------------
#: Redis commands (redis-py method names) no other object of the package has.
REDIS_COMMANDS = frozenset(
    {
        *("hget", "hset", "hsetnx", "hmget", "hmset", "hgetall", "hdel", "hincrby", "hkeys"),
        *("hvals", "hlen", "hexists", "hscan_iter", "lpush", "rpush", "lpop", "rpop", "blpop"),
        *("brpop", "brpoplpush", "rpoplpush", "lmove", "blmove", "lrange", "llen", "lrem"),
        *("lindex", "ltrim", "sadd", "srem", "smembers", "sismember", "scard", "sscan_iter"),
        *("zadd", "zrem", "zrange", "zrangebyscore", "zremrangebyscore", "zscore", "zcard"),
        *("zscan_iter", "setex", "psetex", "setnx", "mget", "mset", "getdel", "getex"),
        *("expire", "pexpire", "expireat", "persist", "ttl", "pttl", "scan", "scan_iter"),
        *("incr", "incrby", "decr", "pipeline", "evalsha"),
        *("register_script", "script_load"),
    }
)
#: ``celerynb:`` followed by anything but a blank: a key, not a message's prefix
KEY_STRING = re.compile(r"celerynb:(?!\s)")


def _docstrings(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _text_of(node: ast.Constant | ast.JoinedStr) -> str:
    """A string's text, ``{}`` for an f-string's fields."""
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ""
    return "".join(_text_of(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)


def _key_strings(tree: ast.Module) -> list[tuple[int, str]]:
    skipped = _docstrings(tree)  # and the pieces of f-strings, read with their f-string:
    skipped |= {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    return [
        (node.lineno, f"spells a key: {_text_of(node)!r}")
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant | ast.JoinedStr)
        and id(node) not in skipped
        and KEY_STRING.search(_text_of(node))
    ]


def _client_use(node: ast.AST, makes_client: bool) -> str | None:
    """What ``node`` does with Redis: import the client library, use a client
    (``x.redis``), make one (``plane.connect``), call a command; None: nothing."""
    if makes_client:
        pass
    elif isinstance(node, ast.Import | ast.ImportFrom):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            names = [node.module or ""] if node.level == 0 else []
        if any(n == "redis" or n.startswith("redis.") for n in names):
            return "imports redis"
    elif isinstance(node, ast.Attribute) and node.attr == "redis":  # cluster.redis, ctx.redis
        return f"uses a client: {ast.unparse(node)}"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        name, owner = node.func.attr, node.func.value
        if name in REDIS_COMMANDS:
            return f"calls Redis: {ast.unparse(node.func)}"
        if name == "connect" and isinstance(owner, ast.Name) and owner.id == "plane":
            return None if makes_client else f"makes a client: {ast.unparse(node.func)}"
    return None


def _redis_uses(path: Path, tree: ast.Module) -> list[tuple[int, str]]:
    """Redis touched outside the store's side, and key names spelled outside keys.py."""
    rel = _rel(path)
    found = [] if rel == "celerynb/plane/keys.py" else _key_strings(tree)
    if not rel.startswith(("celerynb/plane/", "celerynb/cluster/")):
        makes_client = rel == "celerynb/worker/__init__.py"  # the worker's start-up
        for node in ast.walk(tree):
            use = _client_use(node, makes_client)
            if use is not None:
                found.append((getattr(node, "lineno", 0), use))
    by_line: dict[int, list[str]] = {}
    for line, what in sorted(set(found)):
        by_line.setdefault(line, []).append(what)
    return [(line, "; ".join(whats)) for line, whats in by_line.items()]


def test_redis_through_the_store_only() -> None:
    """Only celerynb/plane/ and celerynb/cluster/ touch Redis (the driver through
    ``cluster.store``); the worker's start-up may make a client for its store; key names
    are spelled in celerynb/plane/keys.py only."""
    offenders = [
        f"  {_rel(path)}:{line} {what}"
        for path in _sources()
        for line, what in _redis_uses(path, _parse(path))
    ]
    assert not offenders, (
        "Redis touched outside celerynb/plane/ and celerynb/cluster/, or a key name spelled "
        "outside celerynb/plane/keys.py:\n"
        + "\n".join(offenders)
        + "\nFix: add a typed method to plane.store.CallStore and call it through "
        "cluster.store (or the worker's store); name keys with CallKeys / QueueKeys."
    )


# -- docs/architecture.md names every module ------------------------------------------------------
def _documented_modules() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("\n## Modules", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([^`]+\.py)`", section, flags=re.MULTILINE))


def test_architecture_names_every_module() -> None:
    """docs/architecture.md's modules table has a row per module of the package, and
    none for a module that is gone."""
    modules = {path.relative_to(PACKAGE).as_posix() for path in _sources()}
    documented = _documented_modules()
    missing, gone = sorted(modules - documented), sorted(documented - modules)
    assert not missing and not gone, (
        "docs/architecture.md's modules table is out of date:\n"
        + "".join(f"  no row for {m}\n" for m in missing)
        + "".join(f"  a row for {m}, which is gone\n" for m in gone)
        + "Fix: a row per module, `path` relative to celerynb/ and its job in one line."
    )
