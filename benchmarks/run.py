"""celerynb vs the alternatives, side by side: ``python -m benchmarks [--quick] [--out PATH]``.

One process run. First, each candidate's cold start-up and W3 driver peak
memory, in a fresh subprocess per candidate and repeat (rotating the order).
Then, in this process, every candidate is started once, each workload gets
one untimed warm-up call per candidate (its result checked against serial
pandas), and the timed repeats interleave the candidates (rotating their
order each repeat). Writes a markdown table with the machine description
(default ``benchmarks/RESULTS.md``) and a chart next to it (``results.png``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python benchmarks/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from benchmarks import candidates, elastic, peers, streaming
from benchmarks.candidates import (
    ALL,
    BY_NAME,
    Candidate,
    Checked,
    Isolated,
    Workload,
    compare,
    workload_set,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# (key, title) of every row group of the table, in order
DASH = "\N{EN DASH}"
COLD_READY = "ready"
COLD_FIRST = "first"
MEMORY = "W3mem"


SECTIONS = ("elastic", "streaming", "peers")  # the sections after the main table


class Skip(Exception):
    """A section left out with --sections."""


_T0 = time.perf_counter()
QUICK_COLD = ("serial", "cmap", "pool")  # --quick: fresh-process runs of these only


def log(message: str) -> None:
    """Progress on stderr (stdout gets the table), with seconds since the start."""
    print(f"[{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Metric:
    """The samples of one candidate on one metric, plus what to say about them."""

    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chunks: int | None = None

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def skipped(self) -> bool:
        """Not run: not applicable, or its candidate failed."""
        return bool(self.notes) and self.notes[0].startswith(("n/a", "failed"))


Results = dict[str, dict[str, Metric]]  # metric key -> candidate name -> Metric


# -- measuring ---------------------------------------------------------------


def rotated(items: list[Any], shift: int) -> list[Any]:
    """``items`` rotated left by ``shift`` (interleaving: no candidate always goes first)."""
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_cold(
    names: list[str], repeats: int, workers: int, w2_rows: int, w3_rows: int, results: Results
) -> None:
    """Start-up and W3 memory of each candidate, each from a fresh subprocess."""
    limit = 2 * candidates.TIMEOUT
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    for r in range(repeats):
        for name in rotated(names, r):
            args = [
                sys.executable, "-m", "benchmarks.child", name, "--workers", str(workers),
                "--w2-rows", str(w2_rows), "--w3-rows", str(w3_rows),
            ]  # fmt: skip
            proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            try:
                stdout, stderr = proc.communicate(timeout=limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                stdout, stderr = proc.communicate()
                stderr += f"\ntimed out after {limit:.0f} s"
            lines = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                tail = (stderr.strip().splitlines() or ["no output"])[-1][:120]
                for key in (COLD_READY, COLD_FIRST, MEMORY):
                    results[key][name].note(f"failed: {tail}")
                log(f"  cold {name}: FAILED ({tail})")
                continue
            data = json.loads(lines[-1][len("RESULT ") :])
            if name != "serial":
                if data.get("ready") is not None:
                    results[COLD_READY][name].samples.append(data["ready"])
                else:
                    results[COLD_READY][name].note("starts its workers on the first call")
                results[COLD_FIRST][name].samples.append(data["first"])
            mem = results[MEMORY][name]
            mem.samples.append(data["peak_mb"])
            mem.chunks = None
            mem.note(f"data {data['data_mb']:.0f} MB")
            if name == "pandarallel":
                mem.note("its chunks go through /dev/shm files, which RSS does not count")
            if data.get("peak_note"):
                mem.note(data["peak_note"])
            ready = f"{data['ready']:.2f}" if data.get("ready") is not None else "-"
            log(
                f"  cold {name}: ready {ready} s, first result {data['first']:.2f} s, "
                f"W3 peak +{data['peak_mb']:.0f} MB"
            )


def run_warm(
    candidates: list[Candidate],
    workloads: list[Workload],
    repeats: int,
    heavy_repeats: int,
    results: Results,
) -> None:
    """Warm-ups (checked against serial), then interleaved timed repeats."""
    for w in workloads:
        warm = w.warmup if w.warmup is not None else w.data
        expected = w.func(warm)
        for c in candidates:
            metric = results[w.key][c.name]
            if metric.skipped:
                continue
            try:
                seconds, out = c.timed(w, warm, warm=True)
            except Exception as exc:
                metric.notes.insert(0, f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                log(f"  warm-up {w.key} {c.name}: FAILED {exc!r}")
                continue
            problem = out.problem if isinstance(out, Checked) else compare(out, expected)
            if problem:
                metric.note(problem)
            log(f"  warm-up {w.key} {c.name}: {seconds:.3f} s{'  ' + problem if problem else ''}")
    for r in range(max(repeats, heavy_repeats)):
        for w in workloads:
            if r >= (heavy_repeats if w.key in ("W1", "W2c", "W3") else repeats):
                continue
            for c in rotated(candidates, r):
                metric = results[w.key][c.name]
                if metric.skipped:
                    continue
                try:
                    seconds, out = c.timed(w, w.data)
                except Exception as exc:
                    metric.notes.insert(0, f"failed: {type(exc).__name__}: {str(exc)[:80]}")
                    log(f"  {w.key} {c.name}: FAILED {exc!r}")
                    continue
                del out
                metric.samples.append(seconds)
                metric.chunks = c.last_chunks
                log(f"  repeat {r + 1} {w.key} {c.name}: {seconds:.3f} s")


# -- reporting ---------------------------------------------------------------


def fmt_seconds(s: float) -> str:
    """Seconds, in ms below one second."""
    return f"{s:.2f} s" if s >= 1 else f"{s * 1000:.3g} ms" if s >= 0.001 else f"{s * 1e6:.3g} µs"


def ratio(x: float) -> str:
    """A ratio with two decimals, or two significant digits when small."""
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def fmt_value(v: float, unit: str) -> str:
    return f"+{v:.0f} MB" if unit == "MB" else fmt_seconds(v)


@dataclass
class Row:
    """One line of the table."""

    metric: str
    title: str
    candidate: Candidate
    m: Metric
    unit: str

    @property
    def median(self) -> float | None:
        return statistics.median(self.m.samples) if self.m.samples else None


def build_rows(results: Results, titles: dict[str, str], candidates: list[Candidate]) -> list[Row]:
    """Rows of the table in order: metric, then candidate."""
    rows = []
    for key, title in titles.items():
        unit = "MB" if key == MEMORY else "s"
        for c in candidates:
            if key in (COLD_READY, COLD_FIRST) and c.name == "serial":
                continue
            rows.append(Row(key, title, c, results[key][c.name], unit))
    return rows


def table(rows: list[Row]) -> str:
    """The markdown table: medians (min-max), speed-up vs serial, ratio to the best peer."""
    header = (
        f"| workload | candidate | median | min{DASH}max | speed-up vs serial | vs best peer "
        "| per chunk | notes |\n"
        "|---|---|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    by_metric: dict[str, list[Row]] = {}
    for row in rows:
        by_metric.setdefault(row.metric, []).append(row)
    for key, group in by_metric.items():
        serial = next((r.median for r in group if r.candidate.name == "serial"), None)
        peers = [r.median for r in group if r.candidate.peer and r.median is not None]
        best = min(peers) if peers else None
        for i, row in enumerate(group):
            title = f"**{row.title}**" if i == 0 else ""
            med = row.median
            notes = list(row.m.notes)
            if med is None:
                if not notes:
                    notes = ["no sample"]
                lines.append(f"| {title} | {row.candidate.label} | — | — | — | — | — | "
                             f"{'; '.join(notes)} |")  # fmt: skip
                continue
            lo, hi = min(row.m.samples), max(row.m.samples)
            spread = f"{fmt_value(lo, row.unit)} {DASH} {fmt_value(hi, row.unit)}"
            vs_serial = "—"
            if row.unit == "s" and serial and key in ("W1", "W2", "W2c", "W3"):
                vs_serial = ratio(serial / med) if med else "—"
            if row.unit == "MB":
                data_mb = next((n for n in notes if n.startswith("data ")), None)
                if data_mb:
                    size = float(data_mb.split()[1])
                    notes = [n for n in notes if n != data_mb]
                    notes.insert(0, f"{med / size:.2f}x the data ({size:.0f} MB)")
            vs_best = "—"
            if best:
                vs_best = ratio(med / best) + (" (best)" if med == best else "")
            per_chunk = "—"
            if row.unit == "s" and key in ("W2", "W2c") and row.m.chunks:
                per_chunk = f"{med / row.m.chunks * 1000:.3g} ms ({row.m.chunks})"
            lines.append(
                f"| {title} | {row.candidate.label} | {fmt_value(med, row.unit)} | {spread} "
                f"| {vs_serial} | {vs_best} | {per_chunk} | {'; '.join(notes)} |"
            )
    return header + "\n".join(lines) + "\n"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, str]:
    """CPU, cores, RAM, OS, and the versions that matter."""
    info: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["CPU"] = line.split(":", 1)[1].strip()
                break
    info.setdefault("CPU", platform.processor() or platform.machine())
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info["cores"] = f"{os.cpu_count()} logical ({usable} usable by this process)"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        info["RAM"] = f"{kb / 2**20:.1f} GiB"
    info["OS"] = platform.platform()
    info["Python"] = platform.python_version()
    for dist in ("pandas", "numpy", "celery", "kombu", "redis", "cloudpickle", "joblib",
                 "dask", "distributed", "pandarallel"):  # fmt: skip
        info[dist] = _version(dist)
    try:
        from benchmarks.procs import redis_server

        out = subprocess.run([redis_server(), "--version"], capture_output=True, text=True)
        info["redis-server"] = out.stdout.split("v=")[1].split()[0]
    except Exception:
        info["redis-server"] = "not found"
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["celerynb"] = f"{_version('celerynb')} (git {head or '?'})"
    except (OSError, subprocess.SubprocessError):
        info["celerynb"] = _version("celerynb")
    return info


def chart(
    rows: list[Row],
    path: Path,
    scaling: dict[str, list[float]] | None = None,
    streams: dict[str, dict[str, list[dict[str, float]]]] | None = None,
    documented: peers.Section | None = None,
) -> str | None:
    """A PNG with one panel per metric (and for elastic scale-out and streaming, and a
    full-width one for pandarallel's documented workloads); returns why it was not drawn,
    or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no chart"
    by_metric: dict[str, list[Row]] = {}
    for row in rows:
        if row.median is not None:
            by_metric.setdefault(row.metric, []).append(row)
    stream_panels = _stream_panels(streams or {})
    n = len(by_metric) + (1 if scaling and any(scaling.values()) else 0) + len(stream_panels)
    wide = documented is not None and any(
        documented.median(k, "serial") for k in documented.titles
    )  # a last row of its own, both columns
    if not n and not wide:
        return "nothing measured: no chart"
    cols = 2
    n_rows = (n + cols - 1) // cols + (1 if wide else 0)
    fig, axes = plt.subplots(n_rows, cols, figsize=(13, 2.6 * n_rows + (0.8 if wide else 0)))
    grid = np.atleast_2d(axes)
    flat = list(grid[:-1].ravel() if wide else grid.ravel())
    for ax, group in zip(flat, by_metric.values(), strict=False):
        unit = group[0].unit
        scale = 1.0 if unit == "MB" or max(r.median or 0 for r in group) >= 1 else 1000.0
        label = "MB above baseline" if unit == "MB" else ("s" if scale == 1 else "ms")
        meds = [(r.median or 0) * scale for r in group]
        lows = [m - min(r.m.samples) * scale for m, r in zip(meds, group, strict=True)]
        highs = [max(r.m.samples) * scale - m for m, r in zip(meds, group, strict=True)]
        colours = ["tab:orange" if r.candidate.name == "cmap" else "tab:blue" for r in group]
        colours = [
            "tab:gray" if r.candidate.name in ("serial", "raw-celery") else c
            for r, c in zip(group, colours, strict=True)
        ]
        y = range(len(group))
        ax.barh(y, meds, xerr=[lows, highs], color=colours, capsize=2)
        ax.set_yticks(list(y), [r.candidate.label for r in group], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(group[0].title, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for yi, m in zip(y, meds, strict=True):
            ax.text(m, yi, f" {m:.3g}", va="center", fontsize=7)
    if scaling and any(scaling.values()):
        ax = flat[len(by_metric)]
        keys = [k for k in elastic.SCENARIOS if scaling.get(k)]
        meds = [statistics.median(scaling[k]) for k in keys]
        lows = [m - min(scaling[k]) for m, k in zip(meds, keys, strict=True)]
        highs = [max(scaling[k]) - m for m, k in zip(meds, keys, strict=True)]
        y = range(len(keys))
        ax.barh(y, meds, xerr=[lows, highs], color="tab:orange", capsize=2)
        ax.set_yticks(list(y), [elastic.SCENARIOS[k] for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_title("elastic scale-out: one call, celerynb workers", fontsize=9)
        ax.set_xlabel("s", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for yi, m in zip(y, meds, strict=True):
            ax.text(m, yi, f" {m:.3g}", va="center", fontsize=7)
    for ax, (title, unit, labels, values) in zip(
        flat[n - len(stream_panels) : n], stream_panels, strict=True
    ):
        y = range(len(labels))
        colours = ["tab:orange" if "celerynb" in lb else "tab:blue" for lb in labels]
        ax.barh(y, values, color=colours)
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
    for ax in flat[n:]:
        ax.axis("off")
    if wide and documented is not None:
        for ax in grid[-1]:
            ax.remove()
        peers.draw(fig.add_subplot(grid[0, 0].get_gridspec()[-1, :]), documented)
    fig.suptitle(f"celerynb cmap (orange) vs peers: median, whiskers min{DASH}max", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _stream_panels(
    streams: dict[str, dict[str, list[dict[str, float]]]],
) -> list[tuple[str, str, list[str], list[float]]]:
    """(title, unit, labels, values) of the streaming panels: time and peak, per size."""
    panels = []
    for label, by_name in streams.items():
        names = [n for n in streaming.CANDIDATES if by_name.get(n)]
        if not names:
            continue
        titles = [f"{streaming.CANDIDATES[n]}" for n in names]
        secs = [statistics.median(s["seconds"] for s in by_name[n]) for n in names]
        peaks = [statistics.median(s["peak_mb"] for s in by_name[n]) for n in names]
        size = label.split(" (")[0]
        panels.append((f"CSV in chunks, {label}: time", "s", titles, secs))
        panels.append((f"CSV in chunks, {size}: driver peak RSS", "MB above start", titles, peaks))
    return panels


def write_report(
    path: Path,
    rows: list[Row],
    info: dict[str, str],
    settings: dict[str, str],
    skipped: list[str],
    chart_note: str | None,
    scaling: str = "",
    streams: str = "",
    documented: str = "",
) -> str:
    """Write the markdown report to ``path``; return the table."""
    text = table(rows)
    machine_lines = "\n".join(f"| {k} | {v} |" for k, v in info.items())
    setting_lines = "\n".join(f"- {k}: {v}" for k, v in settings.items())
    skip_lines = "\n".join(f"- {s}" for s in skipped) or "- none"
    png = path.with_name("results.png")
    picture = f"![results]({png.name})\n\n" if chart_note is None else f"({chart_note})\n\n"
    path.write_text(
        "# celerynb benchmarks\n\n"
        "Written by `python -m benchmarks` (see `benchmarks/run.py`). Median of the "
        f"repeats, min{DASH}max beside it. *speed-up vs serial*: serial pandas time / this "
        "time. *vs best peer*: this time / the best of multiprocessing.Pool, joblib, "
        "pandarallel and dask (lower is better; the best peer shows 1.00x). *per chunk*: "
        "time / number of chunks (in brackets). Memory: the driver's peak RSS during one W3 "
        "call above its RSS just before the call (which already holds the input frame), "
        "measured in a fresh process per candidate and repeat. Start-up: a fresh process per "
        "candidate and repeat, timed from before the library's import (pandas already "
        "imported).\n\n"
        f"## Run\n\n{setting_lines}\n\n"
        f"## Results\n\n{text}\n{picture}"
        f"## Elastic scale-out\n\n{scaling or 'not measured'}\n"
        f"## Data bigger than memory\n\n{streams or 'not measured'}\n"
        f"## pandarallel's documented workloads\n\n{documented or 'not measured'}\n"
        f"## Skipped\n\n{skip_lines}\n\n"
        "## How each candidate runs\n\n"
        "- **serial pandas**: `func(df)` in the driver process.\n"
        "- **celerynb cmap**: `cmap(func, df, progress=False)` on a warm embedded "
        "`LocalCluster(workers)`; default chunking unless a workload forces `chunks=`.\n"
        "- **multiprocessing.Pool**: a persistent fork `Pool(workers)`, `pool.map` over "
        "`4 x workers` row chunks (or the forced count), `pd.concat`.\n"
        "- **joblib**: `Parallel(n_jobs=workers)` (loky, reusable workers, auto batching) "
        "over the same chunks.\n"
        "- **pandarallel**: `df.parallel_apply(row_func, axis=1, raw=True)` (W1: the score "
        "column only; W2: the row sum) or `df.parallel_apply(double)` by column (W3); it "
        "splits into one part per worker and starts a new pool each call; no chunk control, "
        "so no W2 forced-chunks or W4 figure. It runs in a spawned helper process of the "
        "harness that holds its own copy of the data and times the calls: it forks on every "
        "call, and a fork of a process with live Celery connections and threads can hang.\n"
        "- **dask client.map**: `LocalCluster(workers, threads_per_worker=1)` processes, "
        "`client.map(func, chunks, pure=False)` + `gather`, `pd.concat`.\n"
        "- **dask map_partitions**: the same cluster, `dd.from_pandas(df, npartitions)."
        "map_partitions(func, meta)`, computed on it.\n"
        "- **raw Celery group**: a minimal Celery app (`benchmarks/rawcelery.py`, pickle, "
        "default worker flags, a private redis-server as broker and result backend), "
        "`group(task.s(func, chunk) ...)().get()` with the chunk bytes inside the messages "
        "(one task and `AsyncResult.get()` for a one-chunk call): what celerynb saves you.\n"
        "- **pandarallel's documented workloads**: each library's own API for each of "
        "pandarallel's examples (`benchmarks/peers.py` says how).\n\n"
        f"## Machine\n\n| | |\n|---|---|\n{machine_lines}\n"
    )
    return text


# -- main --------------------------------------------------------------------


@contextlib.contextmanager
def stopping(candidates: list[Candidate]) -> Iterator[None]:
    """Close every candidate at the end, also on SIGTERM / Ctrl-C."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        for c in reversed(candidates):
            log(f"closing {c.name}")
            try:
                c.close()
            except Exception as exc:
                log(f"  closing {c.name}: {exc!r}")
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 1 repeat (CI smoke)")
    parser.add_argument(
        "--out", type=Path, default=HERE / "RESULTS.md", help="report path (default: %(default)s)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed repeats of W2 default chunks, W4 and W5 (default 5; quick 1)",
    )
    parser.add_argument(
        "--heavy-repeats",
        type=int,
        help="timed repeats of W1, W2 chunks=1000 and W3 (default 3; quick 1)",
    )
    parser.add_argument(
        "--cold-repeats", type=int, help="fresh-process start-up runs (default 3; quick 1)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated sections after the main table (default all): {','.join(SECTIONS)}",
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated candidates (default all): {','.join(BY_NAME)}",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; write the report; return an exit code."""
    args = parse_args(argv)
    quick = args.quick
    repeats = args.repeats or (1 if quick else 5)
    heavy = args.heavy_repeats or (1 if quick else 3)
    cold_repeats = args.cold_repeats or (1 if quick else 3)
    names = args.only.split(",") if args.only else [c.name for c in ALL]
    sections = set(args.sections.split(",")) if args.sections else set()
    if sections - set(SECTIONS):
        raise SystemExit(f"unknown sections {sorted(sections - set(SECTIONS))}: {SECTIONS}")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise SystemExit(f"unknown candidates {unknown}; choose from {list(BY_NAME)}")
    warnings.filterwarnings("ignore", message="Sending large graph")
    candidates.TIMEOUT = 120.0 if quick else 600.0
    started_at = time.perf_counter()
    load_before = os.getloadavg()

    workloads = workload_set(quick)
    titles = {w.key: w.title for w in workloads}
    titles = {
        **{k: titles[k] for k in ("W1", "W2", "W2c", "W3")},
        MEMORY: f"{titles['W3'].split(':')[0]} driver peak memory (above baseline)",
        "W4": titles["W4"],
        "W5": titles["W5"],
        COLD_READY: "start-up: cluster ready, fresh process",
        COLD_FIRST: "start-up: first pandas result, fresh process",
    }
    results: Results = {key: {n: Metric() for n in names} for key in titles}

    everyone = [BY_NAME[n](args.workers) for n in names]
    # pandarallel forks on every call: in a helper process of its own (see Isolated)
    everyone = [Isolated(c, quick) if c.name == "pandarallel" else c for c in everyone]
    skipped = []
    runnable = []
    for c in everyone:
        reason = c.missing()
        if reason:
            skipped.append(f"{c.label}: {reason}")
            for key in titles:
                results[key][c.name].note(f"n/a: {reason}")
        else:
            runnable.append(c)
    for c in runnable:
        for w in workloads:
            why = c.supports(w)
            if why:
                results[w.key][c.name].note(f"n/a: {why}")

    w2, w3 = workloads[1], workloads[3]
    cold = [c.name for c in runnable if not quick or c.name in QUICK_COLD]
    for c in runnable:
        if c.name not in cold:
            for key in (COLD_READY, COLD_FIRST, MEMORY):
                results[key][c.name].note("not measured in --quick mode")
    log(f"cold start-up and W3 memory, {cold_repeats} x {len(cold)} fresh processes")
    run_cold(cold, cold_repeats, args.workers, len(w2.data), len(w3.data), results)

    started: list[Candidate] = []
    with stopping(started):
        log("starting candidates in this process")
        live = []
        # a fork Pool first, before other candidates start threads
        for c in sorted(runnable, key=lambda c: c.name != "pool"):
            try:
                started.append(c)
                c.start()
                live.append(c)
            except Exception as exc:
                skipped.append(f"{c.label}: failed to start: {exc}")
                for key in ("W1", "W2", "W2c", "W3", "W4", "W5"):
                    results[key][c.name].notes.insert(0, f"failed to start: {str(exc)[:80]}")
                log(f"  {c.name}: failed to start: {exc!r}")
        order = [c for c in runnable if c in live]
        run_warm(order, workloads, repeats, heavy, results)

    scaling: dict[str, list[float]] = {}
    scaling_text = "not run (--sections)"
    try:
        if "elastic" not in sections:
            raise Skip
        log("elastic scale-out: celerynb workers that join mid-call")
        scaling = elastic.run(quick, 1 if quick else heavy, log)
        scaling_text = elastic.table(scaling, *elastic.size(quick))
    except Skip:
        pass
    except Exception as exc:
        scaling_text = f"failed: {type(exc).__name__}: {exc}"
        log(f"  elastic: FAILED {exc!r}")

    streams: dict[str, dict[str, list[dict[str, float]]]] = {}
    streams_text = "not run (--sections)"
    try:
        if "streaming" not in sections:
            raise Skip
        log("data bigger than memory: a CSV read in chunks")
        streams = streaming.run(quick, args.workers, log=log)
        streams_text = streaming.table(streams)
    except Skip:
        pass
    except Exception as exc:
        streams_text = f"failed: {type(exc).__name__}: {exc}"
        log(f"  streaming: FAILED {exc!r}")

    documented: peers.Section | None = None
    documented_text = "not run (--sections)"
    try:
        if "peers" not in sections:
            raise Skip
        log("pandarallel's documented workloads")
        documented = peers.run(quick, args.workers, heavy, log)
        documented_text = peers.table(documented, heavy, args.workers)
    except Skip:
        pass
    except Exception as exc:
        documented_text = f"failed: {type(exc).__name__}: {exc}"
        log(f"  peers: FAILED {exc!r}")

    log("writing the report")
    load_after = os.getloadavg()
    elapsed = time.perf_counter() - started_at
    rows = build_rows(results, titles, everyone)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    chart_note = chart(rows, out.with_name("results.png"), scaling, streams, documented)
    settings = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick (small sizes, smoke check)" if quick else "full",
        "workers per candidate": str(args.workers),
        "repeats": f"W2 default chunks, W4 and W5 {repeats}, W1, W2 forced chunks and W3 {heavy}, "
        f"start-up/memory {cold_repeats}, pandarallel's documented workloads {heavy} (each "
        "after one untimed warm-up call)",
        "load average (1 min) before / after": f"{load_before[0]:.2f} / {load_after[0]:.2f}",
        "wall time of the run": f"{elapsed:.0f} s",
    }
    text = write_report(
        out,
        rows,
        machine(),
        settings,
        skipped,
        chart_note,
        scaling_text,
        streams_text,
        documented_text,
    )
    print(text)
    print(scaling_text)
    print(streams_text)
    print(documented_text)
    if chart_note:
        log(chart_note)
    log(f"wrote {out} in {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
