"""The bokeh figures of the job widget: the task timeline and the GFLOPS plot.

Both are built once; refreshes stream new rows and patch changed values into
their ColumnDataSources, so only the change crosses the comm to the browser.
"""
from __future__ import annotations

import numpy as np
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, HoverTool, TapTool
from bokeh.plotting import figure

from .widget_state import TIMELINE_COLUMNS

SEGMENTS = (  # left column, right column, colour, legend
    ("submit", "start", "#b0b0b0", "queue/invoke"),
    ("start", "setup", "#ff9f1c", "setup"),
    ("c0", "c1", None, "compute"),  # coloured per row: green, red if failed
    ("c1", "fetched", "#8e6bbf", "return"),
)

FLOPS_LABELS = {
    "title": "Effective GFLOPS (reported FLOPs / elapsed) and GFLOPS in flight",
    "y": "GFLOPS", "eff": "effective (cumulative)", "inst": "in flight",
}
TASKS_LABELS = {
    "title": "No task reported FLOPs (report_flops): showing tasks/s instead",
    "y": "tasks/s", "eff": "effective tasks/s (cumulative)", "inst": "tasks/s ended (moving average)",
}
TIME_AXIS = "seconds since the job started"  # every view counts time from the job's creation


def _legend_above(fig) -> None:
    # Outside the plot area, so it never hides rows or lines.
    legend = fig.legend[0]
    legend.orientation = "horizontal"
    legend.label_text_font_size = "8pt"
    legend.padding = 2
    legend.margin = 2
    fig.add_layout(legend, "above")


class JobPlots:
    """Timeline + rate figures in one bokeh column, with incremental pushes."""

    def __init__(self, n_items: int, per_item: bool, stride: int):
        self.timeline_source = ColumnDataSource({c: [] for c in TIMELINE_COLUMNS})
        self.series_source = ColumnDataSource({"x_end": [], "x_mid": [], "eff": [], "inst": []})
        if per_item:
            title = f"Timeline: one row per item ({n_items})"
        else:
            title = (f"Timeline: {n_items} items, one row per invocation"
                     + (f", sampled (invocations holding every {stride}th item)" if stride > 1 else ""))
        tl = figure(height=280, sizing_mode="stretch_width", title=title,
                    x_axis_label=TIME_AXIS, y_axis_label="item index",
                    tools="xpan,xwheel_zoom,box_zoom,reset,save", toolbar_location="right")
        renderers = []
        for left, right, colour, label in SEGMENTS:
            fill = colour or "compute_color"
            renderers.append(tl.quad(left=left, right=right, bottom="bottom", top="top",
                                     source=self.timeline_source, fill_color=fill,
                                     line_color=None, legend_label=label))
        tl.add_tools(TapTool(renderers=renderers))  # a click shows the task (JobWidget)
        tl.scatter(x="cold_x", y="cold_y", source=self.timeline_source, marker="triangle",
                   size=7, fill_color="black", line_color=None, legend_label="cold start")
        tl.add_tools(HoverTool(renderers=renderers, tooltips=[
            ("task", "@task"), ("items", "@items"), ("state", "@state"),
            ("queue/invoke", "@queue_s{0.000} s"), ("setup", "@setup_s{0.000} s"),
            ("compute", "@compute_s{0.000} s"), ("return", "@return_s{0.000} s"),
            ("cold start", "@cold"), ("error", "@error"), ("read (task)", "@read"),
        ]))
        _legend_above(tl)
        self.timeline = tl

        gf = figure(height=220, sizing_mode="stretch_width", title=TASKS_LABELS["title"],
                    x_axis_label=TIME_AXIS, y_axis_label=TASKS_LABELS["y"],
                    tools="xpan,xwheel_zoom,box_zoom,reset,save", toolbar_location="right")
        gf.y_range.start = 0  # rates: keep zero in view
        gf.x_range = tl.x_range  # same time axis: zooming one zooms both, as in the PyWren plots
        self._eff = gf.line("x_end", "eff", source=self.series_source, line_width=2,
                            color="#1f77b4", legend_label=TASKS_LABELS["eff"])
        self._inst = gf.line("x_mid", "inst", source=self.series_source, line_width=1.5,
                             color="#2ca02c", legend_label=TASKS_LABELS["inst"])
        # Markers too: a job shorter than one bin has a single point, which a line can't draw.
        gf.scatter("x_end", "eff", source=self.series_source, size=5, color="#1f77b4")
        gf.scatter("x_mid", "inst", source=self.series_source, size=4, color="#2ca02c")
        gf.add_tools(HoverTool(renderers=[self._eff, self._inst], mode="vline",
                               tooltips=[("t", "@x_end{0.0} s"), ("effective", "@eff{0.000}"),
                                         ("in flight / interval", "@inst{0.000}")]))
        _legend_above(gf)
        self.rates = gf
        self.layout = column(tl, gf, sizing_mode="stretch_width")
        self.flops_mode = False
        self._sent: dict | None = None        # the series columns last sent
        self._sent_key: tuple | None = None   # (bin width version, mode) they were computed with

    def push_rows(self, rows: list[dict]) -> None:
        if rows:
            self.timeline_source.stream({c: [r[c] for r in rows] for c in TIMELINE_COLUMNS})

    def set_mode(self, flops_mode: bool) -> None:
        if flops_mode == self.flops_mode:
            return
        self.flops_mode = flops_mode
        labels = FLOPS_LABELS if flops_mode else TASKS_LABELS
        self.rates.title.text = labels["title"]
        self.rates.yaxis.axis_label = labels["y"]
        items = self.rates.legend[0].items
        items[0].label = {"value": labels["eff"]}
        items[1].label = {"value": labels["inst"]}

    def push_series(self, cols: dict, version: int) -> None:
        """Send only what changed: patch revised bins, stream new ones."""
        key = (version, self.flops_mode)
        old = self._sent
        if old is None or key != self._sent_key or len(cols["x_end"]) < len(old["x_end"]):
            self.series_source.data = {k: v.tolist() for k, v in cols.items()}
        else:
            n_old = len(old["x_end"])
            patches = {}
            for k in ("x_end", "eff", "inst"):  # x_mid of existing bins never changes
                a, b = old[k], cols[k][:n_old]
                diff = np.flatnonzero(~np.isclose(a, b, rtol=1e-9, atol=0.0))
                if len(diff):
                    i = int(diff[0])
                    patches[k] = [(slice(i, n_old), b[i:].tolist())]
            if patches:
                self.series_source.patch(patches)
            if len(cols["x_end"]) > n_old:
                self.series_source.stream({k: v[n_old:].tolist() for k, v in cols.items()})
        self._sent = {k: v.copy() for k, v in cols.items()}
        self._sent_key = key
