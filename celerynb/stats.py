"""A look inside a call: one row per chunk run, and a picture of the chunks over time.

Cheap to import, so its importers need no deferral: pandas, and matplotlib (an optional
dependency), are imported when a frame or a figure is first made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .inputs import pandas

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .call import Call

COLUMNS = [
    "chunk", "items", "worker", "pid", "start", "end", "seconds", "bytes_in", "bytes_out", "tries",
]  # fmt: skip


def frame(call: Call) -> Any:
    """A pandas DataFrame: one row per chunk run so far (see ``MapFuture.stats``)."""
    pd = pandas()
    fields = ("worker", "pid", "start", "end", "seconds", "bytes_in", "bytes_out", "tries")
    rows = [
        [i, call.plan.items(i), *(getattr(run, f) for f in fields)]
        for i, run in enumerate(call.runs)
        if run is not None
    ]
    out = pd.DataFrame(rows, columns=COLUMNS)
    for name in ("start", "end"):
        out[name] = pd.to_datetime(out[name], unit="s", utc=True)
    return out


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(
            "timeline() draws with matplotlib: pip install 'celerynb[plot]' (or matplotlib)"
        ) from None

    class Timeline(Figure):
        """A Figure that shows itself in a notebook (and saves with ``savefig``)."""

        def _repr_png_(self) -> bytes:
            import io

            FigureCanvasAgg(self)
            with io.BytesIO() as out:
                self.savefig(out, format="png", bbox_inches="tight")
                return out.getvalue()

    return Timeline


def timeline(call: Call, width: float = 9.0) -> Figure:
    """Chunks per worker slot (a pool process) over time: a bar per chunk run."""
    runs = frame(call)
    fig = _figure_class()(
        figsize=(width, 1.2 + 0.35 * max(1, runs.groupby(["worker", "pid"]).ngroups))
    )
    ax = fig.add_subplot()
    if runs.empty:
        ax.set_title(f"{call.label}: no chunk has run yet")
        return fig
    t0 = runs["start"].min()
    lanes = {key: n for n, key in enumerate(sorted(runs.groupby(["worker", "pid"]).groups))}
    for row in runs.itertuples():
        lane = lanes[(row.worker, row.pid)]
        left = (row.start - t0).total_seconds()
        ax.barh(lane, max(row.seconds, 1e-3), left=left, height=0.7, color="tab:orange",
                edgecolor="white")  # fmt: skip
        if len(runs) <= 60:
            ax.text(left + row.seconds / 2, lane, str(row.chunk), ha="center", va="center",
                    fontsize=7)  # fmt: skip
    ax.set_yticks(list(lanes.values()), [f"{w.split('@')[0]} pid {p}" for w, p in lanes])
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the first chunk started")
    ax.set_title(f"{call.label}: {len(runs)} chunks on {len(lanes)} worker processes")
    fig.tight_layout()
    return fig
