"""The job's timeline and rate plots as PNG images, for the output that stays.

The live widget draws with bokeh, which needs BokehJS and a widget manager in the
page. What a saved notebook, nbconvert's HTML, GitHub or nbviewer show must need
neither, so the final rendering carries the same two plots as images drawn with
matplotlib (its Agg canvas: no display, no pyplot state).
"""
from __future__ import annotations

import base64
import io
import math

from .plots import SEGMENTS, TIME_AXIS
from .widget_state import COMPUTE_CACHED, COMPUTE_FAILED

WIDTH_IN = 9.0
DPI = 80


def _figure(height_in: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    return fig, fig.add_subplot()


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _finite(v) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def timeline_png(rows: list[dict], title: str, elapsed: float | None = None) -> str | None:
    """Base64 PNG of the timeline (one bar per row, coloured by phase), or None without rows.
    ``elapsed``: the job's length, so the time axis matches the rate plot's."""
    if not rows:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    from matplotlib.collections import PolyCollection

    fig, ax = _figure(3.2)
    handles: list = []  # legend entries: patches and the cold-start marker
    boxes, colours = [], []
    for left, right, colour, label in SEGMENTS:
        for r in rows:
            a, b = r[left], r[right]
            if not (_finite(a) and _finite(b)):
                continue
            b = max(a, b)
            boxes.append(((a, r["bottom"]), (b, r["bottom"]), (b, r["top"]), (a, r["top"])))
            colours.append(colour or r["compute_color"])
        handles.append(Patch(color=colour or "#2ca02c", label=label))
    # One collection for every bar: thousands of separate patches take minutes to lay out.
    ax.add_collection(PolyCollection(boxes, facecolors=colours, edgecolors="none", linewidths=0))
    ax.autoscale_view()
    cold = [(r["cold_x"], r["cold_y"]) for r in rows if _finite(r["cold_x"])]
    if cold:
        ax.plot([c[0] for c in cold], [c[1] for c in cold], "k>", markersize=4, linestyle="none")
        handles.append(Line2D([], [], color="k", marker=">", linestyle="none", label="cold start"))
    if any(r["compute_color"] == COMPUTE_FAILED for r in rows):
        handles.append(Patch(color=COMPUTE_FAILED, label="compute (failed)"))
    if any(r["compute_color"] == COMPUTE_CACHED for r in rows):
        handles.append(Patch(color=COMPUTE_CACHED, label="cached"))
    title += _read_labels(ax, rows)
    ax.set_title(title, fontsize=10, loc="left")
    ax.set_xlabel(TIME_AXIS)
    ax.set_ylabel("item index")
    ax.set_xlim(left=0, right=elapsed if elapsed else None)
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=len(handles),
              fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# Up to this many rows each bar is labelled with its task's read throughput.
MAX_READ_LABELS = 60


def _read_labels(ax, rows: list[dict]) -> str:
    """Per-task read throughput (tasks that read data from storage): a label at the end of
    each compute bar, and the median and range for the title ("" if nothing was read)."""
    rates = [(r, r["read_mbs"]) for r in rows if _finite(r.get("read_mbs"))]
    if not rates:
        return ""
    if len(rows) <= MAX_READ_LABELS:
        for r, mbs in rates:
            if _finite(r["c1"]):
                ax.annotate(f" {mbs:,.0f} MB/s", (r["c1"], (r["bottom"] + r["top"]) / 2),
                            fontsize=7, va="center", ha="left", annotation_clip=False)
    values = sorted(v for _r, v in rates)
    return (f"\nread per task: median {values[len(values) // 2]:,.1f} MB/s "
            f"(min {values[0]:,.1f}, max {values[-1]:,.1f}; {len(values)} tasks)")


def rates_png(series: dict, labels: dict) -> str | None:
    """Base64 PNG of the effective and in-interval rates, or None without points."""
    if not len(series["x_end"]):
        return None
    fig, ax = _figure(2.6)
    ax.plot(series["x_end"], series["eff"], color="#1f77b4", linewidth=2, marker="o", markersize=3,
            label=labels["eff"])
    ax.plot(series["x_mid"], series["inst"], color="#2ca02c", linewidth=1.5, marker="o",
            markersize=2.5, label=labels["inst"])
    ax.set_title(labels["title"], fontsize=10, loc="left")
    ax.set_xlabel(TIME_AXIS)
    ax.set_ylabel(labels["y"])
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.08), ncol=2, fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig)
