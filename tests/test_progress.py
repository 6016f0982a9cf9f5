"""Progress displays: widget state, text fallbacks, choice of display, update rate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import celerynb
from celerynb import progress, widget
from celerynb.call import CallState, Snapshot
from celerynb.display import NoDisplay, Progress, format_rate, format_seconds
from celerynb.progress import NotebookTextDisplay, TextDisplay, make_display
from celerynb.widget import WidgetDisplay

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
RAW_REPRS = ("HBox(children", "IntProgress(", "VBox(children")
REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = Path(__file__).parent / "notebooks"


def snap(
    chunks_done: int = 0,
    n_chunks: int = 4,
    items_done: int = 0,
    n_items: int = 100,
    busy: int = 0,
    state: CallState = CallState.RUNNING,
    message: str = "",
    label: str = "cmap",
    started: float | None = None,
) -> Snapshot:
    """A call's snapshot, as the supervisor hands it to a display."""
    now = time.monotonic()
    return Snapshot(
        label, state, chunks_done, n_chunks, items_done, n_items, busy,
        started if started is not None else now,
        None if state in (CallState.RUNNING, CallState.WAITING) else now,
        message,
    )  # fmt: skip


class Canceller:
    def __init__(self) -> None:
        self.cancels = 0

    def __call__(self) -> bool:
        self.cancels += 1
        return True


@pytest.fixture(scope="module")
def shell() -> InteractiveShell:
    return InteractiveShell.instance()


def slow_double(xs: list[int]) -> list[int]:
    time.sleep(0.25)
    return [x * 2 for x in xs]


# -- formatting ------------------------------------------------------------------
def test_format_seconds() -> None:
    assert format_seconds(0.423) == "0.42 s"
    assert format_seconds(4.23) == "4.2 s"
    assert format_seconds(42.3) == "42 s"
    assert format_seconds(242) == "4:02"
    assert format_seconds(3842) == "1:04:02"


def test_format_rate() -> None:
    assert format_rate(0) == "0"
    assert format_rate(950) == "950"
    assert format_rate(9_512) == "9.51k"
    assert format_rate(1_234_567) == "1.23M"


def test_progress_parts_and_summary() -> None:
    p = Progress(snap(n_chunks=8, n_items=1000), capacity=4)
    assert p.header() == "cmap: 8 chunks, 1,000 items"
    started = time.monotonic() - 2.0
    p.snap = snap(2, 8, 250, 1000, busy=3, started=started)
    parts = p.parts()
    assert parts[:2] == ["2/8 chunks", "250/1,000 items"]
    assert parts[2].endswith("elapsed")
    assert parts[3].startswith("ETA ") and parts[3] != "ETA -"
    assert parts[4].endswith("items/s")
    assert parts[5] == "3/4 workers busy"
    p.snap = snap(8, 8, 1000, 1000, state=CallState.FINISHED, started=started)
    assert p.summary().startswith("cmap finished: 8/8 chunks, 1,000 items in 2.")
    message = "chunk 1 of 4 (positions 25:50) failed: ValueError: x"
    q = Progress(snap(state=CallState.FAILED, message=message))
    assert q.summary().endswith("- chunk 1 of 4 (positions 25:50) failed: ValueError: x")


# -- the widget ----------------------------------------------------------------
def test_widget_updates_and_finishes(shell: InteractiveShell) -> None:
    with capture_output() as cap:
        d = WidgetDisplay(snap(n_chunks=4, n_items=100))
    assert d.bar.max == 100 and d.bar.value == 0 and d.bar.bar_style == "info"  # over items
    assert "0/4 chunks" in d.label.value and "0/100 items" in d.label.value
    bundle = cap.outputs[0].data
    assert WIDGET_MIME in bundle
    assert bundle["text/plain"] == "cmap: 4 chunks, 100 items"

    d.update(snap(1, 4, 25, 100, 2))
    assert d.bar.value == 25
    for text in ("1/4 chunks", "25/100 items", "elapsed", "ETA", "items/s", "2 workers busy"):
        assert text in d.label.value
    d.update(snap(2, 4, 50, 100, 2))  # within the refresh interval: kept, not sent
    assert d.bar.value == 25 and d.progress.snap.chunks_done == 2
    d.update(snap(4, 4, 100, 100, 0))  # complete: always sent
    assert d.bar.value == 100
    with capture_output() as cap:
        d.close(snap(4, 4, 100, 100, state=CallState.FINISHED))
    assert d.bar.value == d.bar.max and d.bar.bar_style == "success"
    assert "finished" in d.label.value and "4/4 chunks" in d.label.value
    assert "100 items in" in d.label.value
    assert d.button.layout.display == "none"
    final = cap.outputs[-1].data["text/plain"]
    assert final.startswith("cmap finished: 4/4 chunks, 100 items in")
    d.update(snap(1, 4, 1, 100, 1))  # late updates after close are ignored
    assert d.bar.value == 100


def test_widget_failed_names_chunk(shell: InteractiveShell) -> None:
    with capture_output():
        d = WidgetDisplay(snap())
        d.update(snap(1, 4, 25, 100, 1))
        message = "chunk 2 of 4 (positions 50:75) failed on worker w1: KeyError: 'x'"
        d.close(snap(1, 4, 25, 100, state=CallState.FAILED, message=message))
    assert d.bar.bar_style == "danger" and d.bar.value == 25
    assert "failed" in d.label.value
    assert "chunk 2 of 4 (positions 50:75)" in d.label.value
    assert "KeyError: &#x27;x&#x27;" in d.label.value  # escaped
    d.close(snap(4, state=CallState.FINISHED))  # only the first close counts
    assert d.bar.bar_style == "danger"


def test_widget_cancel_button_calls_cancel(shell: InteractiveShell) -> None:
    cancel = Canceller()
    with capture_output():
        d = WidgetDisplay(snap(), cancel)
    d.button.click()
    assert cancel.cancels == 1 and d.button.disabled
    with capture_output():
        message = "the call was cancelled (0 of 4 chunks done)"
        d.close(snap(state=CallState.CANCELLED, message=message))
    assert d.bar.bar_style == "warning" and "cancelled" in d.label.value


def test_label_from_the_future_and_second_view(shell: InteractiveShell) -> None:
    with capture_output() as cap:
        d = WidgetDisplay(snap(n_chunks=2, n_items=10, label="cmap(score)"))
    assert "cmap(score)" in d.title.value
    assert cap.outputs[0].data["text/plain"] == "cmap(score): 2 chunks, 10 items"
    view = widget.mimebundle(d)  # e.g. for displaying a cmap_async handle
    assert view is not None
    assert view[WIDGET_MIME]["model_id"] == d.box.model_id
    assert view["text/plain"] == "cmap(score): 2 chunks, 10 items"
    assert widget.mimebundle(NoDisplay()) is None


def test_notebook_text_display(shell: InteractiveShell) -> None:
    with capture_output() as cap:
        d = NotebookTextDisplay(snap(n_chunks=2, n_items=10))
        d.update(snap(1, 2, 5, 10, 1))
        d.update(snap(2, 2, 10, 10, 0))
        d.close(snap(2, 2, 10, 10, state=CallState.FINISHED))
    texts = [o.data["text/plain"] for o in cap.outputs]
    assert texts[0] == "cmap: 2 chunks, 10 items"
    assert texts[-1].startswith("cmap finished: 2/2 chunks, 10 items in")
    assert all(WIDGET_MIME not in o.data for o in cap.outputs)


# -- choosing a display ------------------------------------------------------------
@pytest.mark.parametrize("choice", [False, None])
def test_no_display(choice: Any) -> None:
    assert isinstance(make_display(choice, snap()), NoDisplay)


@pytest.mark.parametrize("choice", ["bar", "Widget", 1, 0, 2.0, "", ["text"]])
def test_invalid_choice(choice: Any) -> None:
    with pytest.raises(ValueError, match="progress must be one of"):
        make_display(choice, snap())


def test_choice_outside_a_kernel(shell: InteractiveShell) -> None:
    assert not progress.in_kernel()
    for choice in (True, "auto", "text"):
        d = make_display(choice, snap())
        assert isinstance(d, TextDisplay)
        d.close(snap(state=CallState.FINISHED))
    with capture_output():
        assert isinstance(make_display("widget", snap()), WidgetDisplay)


def test_auto_in_a_kernel(shell: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "in_kernel", lambda: True)
    with capture_output():
        assert isinstance(make_display(True, snap()), WidgetDisplay)
        assert isinstance(make_display("auto", snap()), WidgetDisplay)
        assert isinstance(make_display("text", snap()), TextDisplay)
        monkeypatch.setattr(progress, "has_ipywidgets", lambda: False)
        assert isinstance(make_display(True, snap()), NotebookTextDisplay)
        with pytest.raises(ImportError, match="pip install"):
            make_display("widget", snap())


# -- with a real cluster -----------------------------------------------------------
def test_widget_with_real_calls(cluster: celerynb.LocalCluster, shell: InteractiveShell) -> None:
    """Two calls in one cell give two bars; each ends complete with a clean summary."""
    df = pd.DataFrame({"a": range(40)})
    with capture_output() as cap:
        first = celerynb.cmap_async(
            lambda d: d * 2, df, chunks=4, progress="widget", cluster=cluster
        )
        second = celerynb.cmap_async(
            lambda d: d + 1, df, chunks=5, progress="widget", cluster=cluster
        )
        pd.testing.assert_frame_equal(first.result(30), df * 2)
        pd.testing.assert_frame_equal(second.result(30), df + 1)
    ids = {o.data[WIDGET_MIME]["model_id"] for o in cap.outputs if WIDGET_MIME in o.data}
    assert len(ids) == 2
    for out in cap.outputs:
        assert not any(raw in out.data["text/plain"] for raw in RAW_REPRS)
    for future, n in ((first, 4), (second, 5)):
        d = future._display
        assert isinstance(d, WidgetDisplay)
        assert (d.bar.value, d.bar.max, d.bar.bar_style) == (40, 40, "success")
        assert f"{n}/{n} chunks" in d.label.value and "40 items in" in d.label.value


def test_widget_real_failure_and_cancel(
    cluster: celerynb.LocalCluster, shell: InteractiveShell
) -> None:
    def bad(xs: list[int]) -> list[int]:
        if 7 in xs:
            raise ValueError("seven")
        return xs

    with capture_output():
        failing = celerynb.cmap_async(bad, list(range(20)), chunks=4, progress="widget",
                                      cluster=cluster)  # fmt: skip
        with pytest.raises(ValueError, match="seven"):
            failing.result(30)
        d = failing._display
        assert d.bar.bar_style == "danger"
        assert "chunk 1 of 4 (positions 5:10)" in d.label.value

        slow = celerynb.cmap_async(lambda xs: time.sleep(30), list(range(20)), chunks=4,
                                   progress="widget", cluster=cluster)  # fmt: skip
        time.sleep(0.3)
        slow._display.button.click()  # the Cancel button
        assert slow.state == "cancelled"
        assert slow._display.bar.bar_style == "warning"
        assert "cancelled" in slow._display.label.value
        # the cluster is ready for the next call
        again = celerynb.cmap(slow_double, [1, 2, 3], progress="widget", cluster=cluster)
        assert again == [2, 4, 6]


def test_widget_update_rate(cluster: celerynb.LocalCluster, shell: InteractiveShell) -> None:
    """The widget refreshes several times a second (and never much more than 12)."""
    with capture_output():
        future = celerynb.cmap_async(
            slow_double, list(range(64)), chunks=16, progress="widget", cluster=cluster
        )
        future.result(60)
    d = future._display
    elapsed = d.progress.snap.elapsed
    rate = d.updates / elapsed
    print(f"\nwidget update rate: {rate:.1f} refreshes/s over {elapsed:.1f} s")
    assert 4 <= rate <= 13


# -- clean fallbacks, in subprocesses ------------------------------------------------
BLOCKER = """
import importlib.abc, sys

class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ipywidgets" or name.startswith("ipywidgets."):
            raise ModuleNotFoundError("No module named 'ipywidgets' (blocked by the test)")
        return None

sys.meta_path.insert(0, _Block())
"""


def _env(tmp_path: Path, block_widgets: bool) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR"):
        env[name] = str(tmp_path / name.lower())
    paths = [str(REPO)]
    if block_widgets:
        (tmp_path / "blocker").mkdir(exist_ok=True)
        (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCKER)
        paths.insert(0, str(tmp_path / "blocker"))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.pop("CELERYNB_BROKER_URL", None)
    return env


def test_script_without_ipywidgets(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import celerynb
        try:
            import ipywidgets
        except ImportError:
            print("blocked")
        with celerynb.LocalCluster(n_workers=1) as c:
            print(celerynb.cmap(lambda xs: [x + 1 for x in xs], list(range(10)), cluster=c))
            try:
                celerynb.cmap(len, [1, 2], cluster=c, progress="widget")
            except ImportError as exc:
                print("ImportError:", exc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(tmp_path, block_widgets=True),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "blocked"
    assert lines[1] == str(list(range(1, 11)))
    assert "progress='widget' needs ipywidgets: pip install" in lines[2]
    assert "cmap(<lambda>): 100%" in out.stderr  # the tqdm bar


def _execute(notebook: Path, tmp_path: Path, block_widgets: bool) -> dict[str, Any]:
    out_dir = tmp_path / ("blocked" if block_widgets else "widgets")
    result = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=120", "--output-dir", str(out_dir), str(notebook)],
        env=_env(tmp_path, block_widgets),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    nb: dict[str, Any] = json.loads((out_dir / notebook.name).read_text())
    return nb


def _outputs(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for cell in nb["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]


def _plain(output: dict[str, Any]) -> str:
    text = output.get("data", {}).get("text/plain", output.get("text", ""))
    return "".join(text) if isinstance(text, list) else str(text)


@pytest.mark.slow
@pytest.mark.parametrize("block_widgets", [False, True], ids=["ipywidgets", "no-ipywidgets"])
def test_nbconvert_execute_is_clean(tmp_path: Path, block_widgets: bool) -> None:
    """Under ``nbconvert --execute`` every output is clean text ending in a summary."""
    nb = _execute(NOTEBOOKS / "progress_fallback.ipynb", tmp_path, block_widgets)
    outputs = _outputs(nb)
    texts = [_plain(o) for o in outputs]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert not any(raw in t for t in texts for raw in (*RAW_REPRS, "Traceback")), texts
    summaries = [t for t in texts if t.startswith("cmap(double) finished: 8/8 chunks, 40 items in")]
    assert len(summaries) == 2, texts  # two calls in one cell: two displays
    assert "[0, 2, 4, 6, 8]" in texts[-1]
    has_widgets = any(WIDGET_MIME in o.get("data", {}) for o in outputs)
    assert has_widgets is not block_widgets
    stderr = [o for o in outputs if o.get("name") == "stderr"]
    assert not stderr, stderr  # no tqdm \r noise in a notebook


@pytest.mark.slow
def test_strict_nbval_passes(tmp_path: Path) -> None:
    """Strict ``--nbval`` compares ``text/plain`` at display time: a stable header line."""
    notebook = tmp_path / "progress_nbval.ipynb"
    notebook.write_bytes((NOTEBOOKS / "progress_nbval.ipynb").read_bytes())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "-p", "no:cacheprovider", "-q",
         "--noconftest", str(notebook)],
        env=_env(tmp_path, block_widgets=False),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 passed" in result.stdout
