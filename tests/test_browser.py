"""The progress widget in a real browser: JupyterLab (headless) driven by Chromium.

Needs Debian's Chromium at /usr/bin/chromium (``apt-get install -y chromium``)
and the ``playwright`` Python package (its own browser download is not used).
Screenshots go to a temp dir (printed; ``CELERYNB_SCREENSHOT_DIR`` overrides it);
``CELERYNB_UPDATE_SCREENSHOT=1`` (or a missing file) also copies the finished
widget to docs/images/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from celerynb.procs import free_port

CHROMIUM = Path(os.environ.get("CELERYNB_CHROMIUM", "/usr/bin/chromium"))
REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = Path(__file__).parent / "notebooks"
SCREENSHOT = REPO / "docs" / "images" / "progress-widget.png"
RAW_TEXTS = ("IntProgress(", "HBox(children", "Loading widget", "Error displaying widget")
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"no Chromium at {CHROMIUM}: install it with "
        "`apt-get update && apt-get install -y chromium` (or set CELERYNB_CHROMIUM)",
    ),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")

# JavaScript run in the page; `nb()` is the current notebook panel
JS_NB = "(() => window.jupyterapp && window.jupyterapp.shell.currentWidget)"
JS_KERNEL_STATUS = f"""() => {{
    const nb = {JS_NB}();
    const kernel = nb && nb.sessionContext && nb.sessionContext.session
        && nb.sessionContext.session.kernel;
    return kernel ? kernel.status : null;
}}"""


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, method: str = "GET") -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body = response.read()
        return json.loads(body) if body else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except (ProcessLookupError, OSError):
        return False


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """JupyterLab on a free port with every Jupyter / IPython / XDG dir in a temp dir."""
    home = tmp_path_factory.mktemp("lab")
    root = home / "notebooks"
    root.mkdir()
    for name in ("browser_progress.ipynb", "browser_interrupt.ipynb"):
        shutil.copy(NOTEBOOKS / name, root / name)
    env = dict(os.environ)
    dirs = {
        "JUPYTER_CONFIG_DIR": "config", "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTER_DATA_DIR": "data", "IPYTHONDIR": "ipython", "XDG_CONFIG_HOME": "xdg-config",
        "XDG_CACHE_HOME": "xdg-cache", "XDG_DATA_HOME": "xdg-data",
    }  # fmt: skip
    for var, sub in dirs.items():
        (home / sub).mkdir()
        env[var] = str(home / sub)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("CELERYNB_BROKER_URL", None)
    labconfig = home / "config" / "labconfig"
    labconfig.mkdir()
    (labconfig / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    port, token = free_port(), os.urandom(16).hex()
    log = home / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
             f"--port={port}", "--ip=127.0.0.1", f"--ServerApp.root_dir={root}",
             f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=None", "--ServerApp.port_retries=0"],
            env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    server = Lab(f"http://127.0.0.1:{port}", token, root, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"JupyterLab exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"JupyterLab did not start:\n{log.read_text()}"
            try:
                server.api("/api/status")
                break
            except OSError:
                time.sleep(0.2)
        yield server
    finally:
        _stop_lab(server)


def _stop_lab(server: Lab) -> None:
    """Shut the kernels down through the API (their clusters stop with them), then the server."""
    try:
        for kernel in server.api("/api/kernels"):
            server.api(f"/api/kernels/{kernel['id']}", method="DELETE")
    except OSError:
        pass
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)  # jupyter-server asks once; a second one confirms
        time.sleep(0.2)
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(viewport={"width": 1300, "height": 800})
            yield context.new_page()
        finally:
            browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("CELERYNB_SCREENSHOT_DIR")  # pytest prunes its old temp dirs
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots in {path}")
    return path


def _open(page: Any, lab: Lab, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/{name}?token={lab.token}")
    page.wait_for_function(
        f"name => {{ const nb = {JS_NB}(); return nb && nb.context && nb.context.path === name; }}",
        arg=name,
        timeout=30_000,
    )
    page.wait_for_function(f"() => ({JS_KERNEL_STATUS})() === 'idle'", timeout=30_000)


def _wait_idle(page: Any, timeout: float = 60.0) -> None:
    """Wait until the kernel is idle and no cell is queued or running."""
    page.wait_for_function(
        f"""() => {{
            const nb = {JS_NB}();
            return ({JS_KERNEL_STATUS})() === 'idle' && nb.content.widgets.every(
                c => c.model.type !== 'code' || !c.promptNode
                     || !c.promptNode.textContent.includes('*'));
        }}""",
        timeout=timeout * 1000,
    )


def _run(page: Any, command: str) -> None:
    page.evaluate(f"() => {{ window.jupyterapp.commands.execute({command!r}); }}")


def _wait_text(page: Any, text: str, shots: Path, timeout: float = 30.0) -> None:
    """Wait until ``text`` shows on the page; on timeout fail with a screenshot and the text."""
    try:
        page.wait_for_function(
            "t => document.body.innerText.includes(t)", arg=text, timeout=timeout * 1000
        )
    except sync_api.TimeoutError:
        page.screenshot(path=str(shots / "timeout.png"), full_page=True)
        pytest.fail(f"{text!r} did not show in {timeout} s; page text:\n{_notebook_text(page)}")


def _wait_in(locator: Any, text: str, timeout: float = 30.0) -> None:
    """Wait until ``text`` shows inside the element of ``locator``."""
    locator.wait_for(timeout=timeout * 1000)
    locator.page.wait_for_function(
        "([e, t]) => e.innerText.includes(t)",
        arg=[locator.element_handle(), text],
        timeout=timeout * 1000,
    )


def _run_cell(page: Any, index: int) -> None:
    page.evaluate(f"i => {{ {JS_NB}().content.activeCellIndex = i; }}", index)
    _run(page, "notebook:run-cell")


def _notebook_text(page: Any) -> str:
    return str(page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").inner_text())


def _cell(page: Any, index: int) -> Any:
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell").nth(index)


def _pids(text: str) -> list[int]:
    found = re.search(r"pids: \[([\d, ]*)\]", text)
    assert found, text
    return [int(p) for p in found.group(1).split(",") if p.strip()]


def _bar_width(cell: Any) -> str:
    return str(cell.locator(".widget-hprogress .progress-bar").first.evaluate("e => e.style.width"))


def _assert_rendered(text: str) -> None:
    for raw in RAW_TEXTS:
        assert raw not in text, f"{raw!r} in the notebook:\n{text}"


def test_widget_renders_and_completes(page: Any, lab: Lab, shots: Path) -> None:
    started = time.monotonic()
    _open(page, lab, "browser_progress.ipynb")
    _run(page, "notebook:run-all-cells")
    cell = _cell(page, 1)
    cell.locator(".widget-hprogress").wait_for(timeout=30_000)  # shown while running
    page.wait_for_function(
        "() => [...document.querySelectorAll('.widget-hprogress .progress-bar')]"
        ".some(e => parseFloat(e.style.width) > 0)",
        timeout=30_000,
    )
    cell.screenshot(path=str(shots / "progress-running.png"))
    assert "finished" not in cell.inner_text()
    _wait_idle(page)

    text = _notebook_text(page)
    _assert_rendered(text)
    assert "total: 2646700" in text  # sum(x * x for x in range(200))
    assert cell.locator(".widget-hprogress").count() == 1
    assert _bar_width(cell) == "100%"
    assert cell.locator(".widget-hprogress .progress-bar-success").count() == 1
    label = cell.locator(".widget-html-content").nth(1).inner_text()
    assert "finished" in label and "12/12 chunks" in label and "200 items in" in label, label
    assert (
        cell.locator(".widget-button").count() == 0
        or not cell.locator(".widget-button").first.is_visible()
    )
    cell.screenshot(path=str(shots / "progress-finished.png"))
    if os.environ.get("CELERYNB_UPDATE_SCREENSHOT") or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / "progress-finished.png", SCREENSHOT)
    print(f"\nprogress scenario: {time.monotonic() - started:.1f} s")
    test_widget_renders_and_completes.pids = _pids(text)  # type: ignore[attr-defined]


def test_interrupt_cancels_and_next_call_runs(page: Any, lab: Lab, shots: Path) -> None:
    started = time.monotonic()
    _open(page, lab, "browser_interrupt.ipynb")
    _run(page, "notebook:run-all-cells")
    cell = _cell(page, 1)
    cell.locator(".widget-hprogress").wait_for(timeout=30_000)
    _wait_text(page, "2/2 workers busy", shots)  # both pool processes run a chunk
    stop = page.locator(
        ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Toolbar "
        "[data-command='notebook:interrupt-kernel']"
    )
    (lab.root / "interrupt_time.txt").write_text(repr(time.time()))
    clicked = time.monotonic()
    stop.first.click()
    _wait_idle(page, timeout=30)  # the kernel is idle and the cell has stopped running
    to_idle = time.monotonic() - clicked
    label = cell.locator(".widget-html-content").nth(1)
    page.wait_for_function(
        "e => e.innerText.includes('cancelled')", arg=label.element_handle(), timeout=10_000
    )
    assert cell.locator(".widget-hprogress .progress-bar-warning").count() == 1
    assert "KeyboardInterrupt" in cell.inner_text()
    cell.screenshot(path=str(shots / "progress-cancelled.png"))

    _run_cell(page, 2)
    _wait_text(page, "next: [1, 2", shots)
    _wait_idle(page)
    text = _notebook_text(page)
    _assert_rendered(text)
    assert "next: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]" in text
    workers_idle = re.search(r"workers idle: ([\d.]+) s", text)
    assert workers_idle, text
    print(
        f"\ninterrupt -> kernel idle: {to_idle:.2f} s; "
        f"interrupt -> workers idle (seen from the next cell): {workers_idle.group(1)} s; "
        f"scenario: {time.monotonic() - started:.1f} s"
    )
    assert to_idle < 5
    assert float(workers_idle.group(1)) < 10
    cell3 = _cell(page, 2)
    assert "finished" in cell3.locator(".widget-html-content").nth(1).inner_text()

    # the widget's Cancel button stops a blocking cmap too (its clicks go to a kernel subshell)
    _run_cell(page, 3)
    cell4 = _cell(page, 3)
    _wait_in(cell4.locator(".widget-hprogress"), "")
    _wait_in(cell4, "2/2 workers busy")
    clicked = time.monotonic()
    cell4.locator(".widget-button").first.click()
    _wait_in(cell4, "CancelledError", timeout=10)
    button_to_stopped = time.monotonic() - clicked
    _wait_idle(page, timeout=30)
    assert "cancelled" in cell4.locator(".widget-html-content").nth(1).inner_text()
    assert cell4.locator(".widget-hprogress .progress-bar-warning").count() == 1
    cell4.screenshot(path=str(shots / "progress-cancel-button.png"))
    _run_cell(page, 4)
    _wait_in(_cell(page, 4), "after cancel: [0, 10, 20, 30, 40]")
    _wait_idle(page)
    print(f"Cancel button -> call stopped: {button_to_stopped:.2f} s")

    # everything stops with the server: kernels, and the clusters inside them
    mains = _pids(text)[:2] + getattr(test_widget_renders_and_completes, "pids", [])[:2]
    assert len(mains) == 4 and all(_alive(p) for p in mains)  # redis-server + worker, twice
    pids = mains + [c for p in mains for c in _children(p)]
    _stop_lab(lab)
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in pids):
        assert time.monotonic() < deadline, f"left running: {[p for p in pids if _alive(p)]}"
        time.sleep(0.1)
    assert lab.proc.poll() is not None
