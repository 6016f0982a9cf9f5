"""What func prints, warns and logs, in a real kernel's cells; stats(), timeline(), events.

A real IPython kernel (jupyter_client) runs the calls on a real embedded
cluster (and, for remote output and Celery events, on `celerynb worker`
processes against the machine's Redis); the tests read the iopub messages
each cell produced, as a notebook front end would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from support import SYSTEM_REDIS, Kernel, WorkerProcess, forget_queue, system_redis_available

import celerynb
from celerynb.plane.codec import new_secret
from celerynb.settings import Settings

pytestmark = pytest.mark.slow

SETUP = """
import logging, time, warnings
import celerynb
from celerynb import cmap, cmap_async
cluster = celerynb.LocalCluster(2)

def chatty(xs):
    for x in xs:
        print(f"item {x}")
    return xs

def warns(xs):
    warnings.warn("careful with these")
    logging.getLogger("mine").warning("chunk of %d", len(xs))
    logging.getLogger("mine").info("not at this level")
    return xs

def floods(xs):
    for i in range(250_000):
        print("flood line", i)
    return len(xs)

def fails(xs):
    print("about to fail on", xs)
    raise ValueError("no good")

def slow_chatty(xs):
    time.sleep(1.0)
    print("late line", xs[0])
    return xs
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    k = Kernel(tmp_path_factory.mktemp("kernel"))
    try:
        setup = k.run(SETUP)
        assert not setup.error, setup.error
        yield k
    finally:
        k.close()


def test_printed_lines_of_every_chunk_reach_the_cell(kernel: Kernel) -> None:
    cell = kernel.run("out = cmap(chatty, list(range(8)), chunks=4, cluster=cluster)")
    assert not cell.error, cell.error
    lines = cell.stdout.splitlines()
    for x in range(8):
        assert f"[chunk {x // 2}] item {x}" in lines, cell.stdout
    assert "item" not in cell.stderr


def test_a_warning_of_every_chunk_is_shown_once_with_a_count(kernel: Kernel) -> None:
    cell = kernel.run("cmap(warns, list(range(16)), chunks=8, cluster=cluster, progress=False)")
    assert not cell.error, cell.error
    shown = [ln for ln in cell.stderr.splitlines() if "UserWarning: careful with these" in ln]
    assert len(shown) == 2, cell.stderr  # once as it came, once in the count
    assert shown[0].startswith("[chunk ") and shown[1].startswith("[celerynb] 8 times")
    assert "<dynamic-code>" not in cell.stderr  # the notebook cell's file, as a local warning
    logged = [ln for ln in cell.stderr.splitlines() if "WARNING:mine:chunk of 2" in ln]
    assert len(logged) == 8 and "not at this level" not in cell.stderr


def test_log_level_and_output_false(kernel: Kernel) -> None:
    cell = kernel.run(
        "cmap(warns, list(range(4)), chunks=2, cluster=cluster, progress=False, log_level='INFO')"
    )
    assert cell.stderr.count("INFO:mine:not at this level") == 2, cell.stderr
    quiet = kernel.run("cmap(chatty, list(range(8)), chunks=4, cluster=cluster, output=False)")
    assert "[chunk" not in quiet.stdout + quiet.stderr


def test_end_mode_writes_in_chunk_order_after_the_call(kernel: Kernel) -> None:
    cell = kernel.run(
        "cmap(chatty, list(range(12)), chunks=6, cluster=cluster, progress=False, output='end')"
    )
    marks = [ln.split("]")[0] for ln in cell.stdout.splitlines() if ln.startswith("[chunk")]
    assert marks == sorted(marks, key=lambda m: int(m.split()[1])) and len(marks) == 12


def test_a_million_line_flood_is_bounded(kernel: Kernel) -> None:
    pid = kernel.pid
    before = psutil.Process(pid).memory_info().rss
    started = time.monotonic()
    cell = kernel.run(
        "n = cmap(floods, list(range(4)), chunks=4, cluster=cluster, progress=False)", timeout=300
    )
    took = time.monotonic() - started
    grew = (psutil.Process(pid).memory_info().rss - before) / 2**20
    assert not cell.error, cell.error
    shown = [ln for ln in cell.stdout.splitlines() if "flood line" in ln]
    assert len(shown) == 1000, len(shown)  # output_lines
    summary = [ln for ln in cell.stderr.splitlines() if ln.startswith("[celerynb]")]
    assert summary and "more lines of output" in summary[-1], cell.stderr
    left_out = int(summary[-1].split()[1].replace(",", ""))
    assert left_out + len(shown) == 1_000_000
    assert grew < 64, f"the kernel grew {grew:.0f} MiB"
    print(f"\nflood of 1,000,000 lines: {took:.1f} s, kernel RSS +{grew:.1f} MiB")


def test_a_failing_chunks_output_comes_with_its_error(kernel: Kernel) -> None:
    cell = kernel.run("cmap(fails, [1, 2, 3], chunks=1, cluster=cluster, output=False)")
    text = "\n".join(cell.error)
    assert "ChunkError" in text and "Output of the chunk" in text
    assert text.index("about to fail on [1, 2, 3]") < text.index("Remote traceback"), text
    kept = kernel.run(
        """
        try:
            cmap(fails, [4], cluster=cluster, progress=False)
        except ValueError as err:
            print("kept:", err.output)
        """
    )
    assert "kept: about to fail on [4]" in kept.stdout


def test_an_async_calls_output_goes_to_the_cell_that_made_it(kernel: Kernel) -> None:
    first = kernel.start("f = cmap_async(slow_chatty, [7, 8], chunks=2, cluster=cluster)")
    later = kernel.run("time.sleep(2.5); f.result()")
    assert "late line" not in later.stdout, "it went to the cell that ran meanwhile"
    assert "[chunk 0] late line 7" in kernel.cells[first].stdout


def test_stats_and_timeline_in_a_notebook(kernel: Kernel) -> None:
    cell = kernel.run(
        """
        f = cmap_async(chatty, list(range(20)), chunks=5, cluster=cluster, progress=False,
                       output=False)
        f.result()
        stats = f.stats()
        print(list(stats.columns), len(stats), int(stats["items"].sum()))
        f.timeline()
        """
    )
    assert not cell.error, cell.error
    assert (
        "['chunk', 'items', 'worker', 'pid', 'start', 'end', 'seconds', 'bytes_in', "
        "'bytes_out', 'tries'] 5 20"
    ) in cell.stdout
    assert cell.results and "image/png" in cell.results[0], cell.results
    saved = kernel.run(
        "f.timeline().savefig('timeline.png'); print(os.path.getsize('timeline.png'))"
    )
    assert int(saved.stdout.strip()) > 1000


# -- remote workers ---------------------------------------------------------------------------
needs_redis = pytest.mark.skipif(not system_redis_available(), reason=f"no Redis at {SYSTEM_REDIS}")


@needs_redis
def test_remote_worker_output_and_celery_events(tmp_path: Path) -> None:
    """A `celerynb worker -E`: its chunks' prints reach the cell through the store; Celery's
    event receiver sees the draining tasks with the call's label and chunk numbers."""
    secret = new_secret()
    worker = WorkerProcess(SYSTEM_REDIS, secret, tmp_path, "-E", "--hostname", "printer@remote")
    k = Kernel(tmp_path)
    settings = Settings(SYSTEM_REDIS, secret=secret)
    events: list[dict[str, Any]] = []
    app = celerynb.Cluster(settings).app
    stop = threading.Event()

    def listen() -> None:
        with app.connection_for_read() as conn:
            recv = app.events.Receiver(conn, handlers={"*": events.append})
            while not stop.is_set():
                try:
                    recv.capture(limit=None, timeout=0.5, wakeup=False)
                except Exception:  # timeout: look at the flag again
                    continue

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        cell = k.run(
            f"""
            import celerynb
            client = celerynb.connect({SYSTEM_REDIS!r}, secret={secret!r})
            def shout(xs):
                print("remote", xs)
                return xs
            out = celerynb.cmap(shout, [1, 2, 3, 4], chunks=2, progress=False)
            print("done", out)
            """
        )
        assert not cell.error, "\n".join(cell.error) + worker.log.read_text()
        assert "[chunk 0 @ printer] remote [1, 2]" in cell.stdout, cell.stdout
        assert "[chunk 1 @ printer] remote [3, 4]" in cell.stdout, cell.stdout
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            e.get("type") == "task-succeeded" for e in events
        ):
            time.sleep(0.2)
        received = [e for e in events if e.get("type") == "task-received"]
        assert received and all(e["name"] == "celerynb.run_chunks" for e in received), events
        assert any("cmap(shout)" in e["args"] for e in received), received
        done = [e for e in events if e.get("type") == "task-succeeded"]
        assert any("cmap(shout)" in e["result"] and "chunks" in e["result"] for e in done), done
    finally:
        stop.set()
        k.close()
        worker.stop()
        forget_queue(SYSTEM_REDIS, settings.queue)
