"""Live progress of a job: a widget in a notebook, a tqdm line elsewhere.

    view = make_progress(job, capture_report=report)
    view.display()
    while not job.wait(0.2):
        view.update()          # cheap; renders at most 5 times a second
    view.finish()

or ``view.start_background()`` for a job that runs while the user works on.

ipykernel 7 routes a message by the parent header in the sending thread's
context. Updates therefore come from the cell's own loop, or from a thread
started inside a copy of the cell's context (``start_background``).
"""
from __future__ import annotations

import abc
import contextvars
import html
import os
import sys
import threading
import time
import weakref
from typing import Any

from cloudbutton_executor.interrupt import start_thread
from cloudbutton_executor.phases import PHASES, batching_hint, task_phases
from cloudbutton_executor.units import format_usd

from .widget_state import COMPUTE_CACHED, JobTracker, error_line

MIN_INTERVAL_S = 0.2      # at most 5 renders a second
STDOUT_TAIL_CHARS = 32_000  # what the widget keeps of the tasks' stdout
# How often a running job's cell output gets its static rendering again (header, counts,
# PNG plots): what a saved notebook shows if the kernel dies mid-job. A refresh draws the
# plots (0.1-0.3 s for 400 rows, seconds on a loaded machine) in the thread that follows
# the job, and sends tens of KB: every 5 s, and at most a fifth of the time.
STATIC_REFRESH_S = 5.0
STATIC_REFRESH_SHARE = 0.2
MAX_FAILURES_LISTED = 50
TEXT_STDOUT_CHARS = 200_000

__all__ = ["JobView", "JobWidget", "TextProgress", "make_progress", "watch", "widgets_available"]


def widgets_available() -> bool:
    """True inside an IPython kernel (a notebook) with ipywidgets and jupyter_bokeh.

    Terminal IPython and plain scripts have no ``kernel``; they get TextProgress.
    ``CLOUDBUTTON_PROGRESS=text`` forces text anywhere.
    """
    if os.environ.get("CLOUDBUTTON_PROGRESS", "").lower() == "text":
        return False
    ipy_mod = sys.modules.get("IPython")
    if ipy_mod is None:  # not imported: certainly not running in a kernel
        return False
    try:
        ip = ipy_mod.get_ipython()
    except Exception:
        return False
    if ip is None or getattr(ip, "kernel", None) is None:
        return False
    try:
        import bokeh  # noqa: F401
        import ipywidgets  # noqa: F401
        import jupyter_bokeh  # noqa: F401
    except ImportError:
        return False
    return True


def make_progress(job, capture_report=None, *, force_text: bool = False):
    """A JobWidget in a notebook kernel with widgets, else a TextProgress."""
    if not force_text and widgets_available():
        return JobWidget(job, capture_report=capture_report)
    return TextProgress(job, capture_report=capture_report)


def watch(job, capture_report=None):
    """Show a job's live progress (what ``%%cloud map`` shows) and block until it ends;
    returns the job. For jobs made with the Python API in a notebook."""
    view = make_progress(job, capture_report=capture_report)
    view.display()
    while not job.wait(MIN_INTERVAL_S):
        view.update()
    view.finish()
    return job


def normalize_report(report) -> dict | None:
    """The capture report as {rows: [{name, type, size}], total, warnings}.

    Accepts a ``CaptureReport`` (``.rows``, ``.total``, ``.warnings``) or a dict;
    a row's size may be called ``size`` or ``size_bytes``.
    """
    if report is None:
        return None
    get = report.get if isinstance(report, dict) else (lambda k, d=None: getattr(report, k, d))
    rows: list[dict] = []
    for r in get("rows", None) or []:
        r = r if isinstance(r, dict) else vars(r)
        size = r.get("size", r.get("size_bytes", 0)) or 0
        rows.append({"name": str(r.get("name", "?")), "type": str(r.get("type", "")),
                     "size": int(size), "stored": bool(r.get("stored"))})
    total = get("total", None)
    if total is None:
        total = get("total_bytes", None)
    if total is None:
        total = sum(r["size"] for r in rows)
    warnings = [str(w) for w in (get("warnings", None) or [])]
    return {"rows": rows, "total": int(total), "warnings": warnings}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def fmt_seconds(s) -> str:
    if s is None:
        return "—"
    if s < 10:
        return f"{s:.2f} s"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(s), 60)
    return f"{m}m{sec:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"


def fmt_cost(usd: float) -> str:
    return format_usd(usd)


def estimate_text(est: dict) -> str:
    """The pre-flight estimate as one line: "N invocations, about $X, about T s"."""
    source = {"probe": "from a probe", "earlier runs": "from earlier runs",
              "first tasks": "from the first tasks"}.get(str(est.get("source")), "")
    return (f"estimate: {est['invocations']:,} invocations, about {fmt_cost(est['usd'])}, "
            f"about {fmt_seconds(est['seconds'])}" + (f" ({source})" if source else ""))


def budget_lines(spending: dict | None, running: bool) -> list[str]:
    """The estimate, the cost meter (spent, projected while it runs, the budget) and why the
    budget stopped the job, from ``job.spending`` (nothing without a budget)."""
    if not spending:
        return []
    lines = []
    if spending.get("estimate"):
        lines.append(estimate_text(spending["estimate"]))
    meter = [f"spent {fmt_cost(spending['spent_usd'])}"]
    if running:
        meter.append(f"projected {fmt_cost(spending['projected_usd'])}")
    meter.append(f"budget {fmt_cost(spending['budget_usd'])}")
    lines.append(" · ".join(meter))
    if spending.get("stopped"):
        lines.append(spending["stopped"])
    return lines


PHASE_COLOURS = {"invoke": "#b0b0b0", "cold_start": "#4d4d4d", "download": "#ff9f1c",
                 "compute": "#2ca02c", "upload": "#8e6bbf"}  # as the timeline's segments


def phases_html(breakdown: dict) -> str:
    """Where the time went: one thin stacked bar of the phases, a legend with their shares,
    and whether batching would pay (``phases.batching_hint``)."""
    total = breakdown["total_s"]
    if not total:
        return ""
    secs = breakdown["seconds"]
    segs = "".join(
        f"<div class='cb-phase-{key}' title='{label}: {fmt_seconds(secs[key])}' "
        f"style='width:{100 * secs[key] / total:.3f}%;background:{PHASE_COLOURS[key]}'></div>"
        for key, label in PHASES if secs[key] > 0)
    legend = " · ".join(
        f"<span style='color:{PHASE_COLOURS[key]}'>■</span> {label} {secs[key] / total:.0%}"
        for key, label in PHASES if secs[key] > 0)
    return (f"<div class='cloudbutton-phases' style='{FONT}; font-size: 12px; margin-top: 4px'>"
            f"<div>Where the time went ({breakdown['tasks']} tasks, "
            f"{fmt_seconds(total)} in all): {legend}</div>"
            "<div class='cb-phase-bar' style='display: flex; height: 8px; width: 100%; "
            f"border-radius: 3px; overflow: hidden'>{segs}</div>"
            f"<div class='cb-phase-hint' style='color: #616161'>"
            f"{html.escape(batching_hint(breakdown))}</div></div>")


def task_detail_html(job, i: int) -> str:
    """What item ``i``'s task did: its input (short repr), state, task, attempts and backups,
    cold or warm start, per-phase times, stdout and traceback (a click on its bar)."""
    state = job.item_state(i)
    stats = job.item_stats(i)
    facts = [f"item {i}", f"state {state}", f"task {job.item_task(i) or '—'}"]
    attempts, backups = job.item_attempts(i), job.item_backups(i)
    if attempts:
        facts.append(f"{attempts} attempt{'s' if attempts > 1 else ''}")
    if backups:
        facts.append(f"{len(backups)} backup{'s' if len(backups) > 1 else ''} "
                     f"({', '.join(str(b.get('reason')) for b in backups)})")
    if stats.get("cold_start") is not None:
        facts.append("cold start" if stats["cold_start"] else "warm start")
    if state == "cached":
        facts.append("served by the cache (original timings)")
    parts = [f"<div><b>{html.escape(' · '.join(facts))}</b></div>",
             f"<div>input: <code>{html.escape(job.item_input_repr(i))}</code></div>"]
    if stats.get("worker_start") is not None:
        times = task_phases(stats)
        parts.append("<div class='cb-task-phases'>" + " · ".join(
            f"{label} {fmt_seconds(times[key])}" for key, label in PHASES) + "</div>")
    out = job.item_stdout(i)
    if out:
        parts.append(f"<div>stdout:</div><pre style='{PRE}'>{html.escape(out)}</pre>")
    info = job.item_error_info(i)
    if info:
        parts.append(f"<div style='color:#d62728'>{html.escape(error_line(info))}</div>"
                     f"<pre style='{PRE}'>{html.escape(info.get('traceback') or '')}</pre>")
    return (f"<div class='cloudbutton-task' style='{FONT}; border: 1px solid #ddd; "
            f"padding: 4px 6px; margin: 4px 0'>{''.join(parts)}</div>")


def _prefix_lines(index: int, text: str) -> str:
    return "".join(f"[{index}] {line}\n" for line in text.rstrip("\n").split("\n"))


class _Progress(abc.ABC):
    """What both views share: throttling, the tracker and the background thread."""

    def __init__(self, job, capture_report=None, *, min_interval: float = MIN_INTERVAL_S):
        self.job = job
        self.report = normalize_report(capture_report)
        self.tracker = JobTracker(job)
        self.min_interval = min_interval
        self.renders = 0
        self.update_cpu_s = 0.0  # thread CPU spent rendering (for the benchmark)
        self.finished = False
        self._last = -1e9
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # What a caller drives ------------------------------------------------------
    def update(self, force: bool = False) -> bool:
        """Refresh if the last refresh is older than ``min_interval``; True if it did."""
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return False
        if not self._lock.acquire(blocking=force):
            return False  # the other thread is rendering right now
        try:
            if self.finished:
                return False
            self._last = now
            c0 = time.thread_time()
            self._render(final=False)
            self.update_cpu_s += time.thread_time() - c0
            self.renders += 1
            return True
        finally:
            self._lock.release()

    def finish(self) -> None:
        """Final refresh: final counts, failures, stdout; stops the background thread."""
        self._stop.set()
        with self._lock:
            if self.finished:
                return
            self.finished = True
            c0 = time.thread_time()
            self._render(final=True)
            self.update_cpu_s += time.thread_time() - c0
            self.renders += 1
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    def start_background(self, interval: float | None = None) -> threading.Thread:
        """Update from a daemon thread until the job ends, then ``finish()``.

        The thread runs in a copy of the calling cell's context, where ipykernel 7
        keeps the cell's parent header, so its messages land in this cell.
        """
        interval = interval or self.min_interval
        ctx = contextvars.copy_context()
        parent = _kernel_parent()

        def loop():
            _adopt_parent(parent)
            while not self._stop.is_set():
                if self.job.wait(interval):
                    break
                self.update()
            if not self.finished:
                self.finish()

        self._thread = start_thread(ctx.run, loop, name=f"cloudbutton-progress-{self.job.job_id}")
        return self._thread

    @abc.abstractmethod
    def _render(self, final: bool) -> None:
        """Draw the current state (``final``: the job has ended)."""

    def error_text(self) -> str:
        """The job's last monitoring or listener error, one line ('' if none)."""
        err = self.job.monitor_error
        return f"{type(err).__name__}: {err}".splitlines()[0][:300] if err is not None else ""

    def state_text(self) -> str:
        if self.job.cancelled:
            return "cancelled"
        if self.job.done():
            return "finished"
        return "stopped" if self.finished else "running"


def _kernel_parent():
    """(kernel, parent message) of the current cell, or (None, None) outside a kernel."""
    ipy_mod = sys.modules.get("IPython")
    ip = ipy_mod.get_ipython() if ipy_mod is not None else None
    kernel = getattr(ip, "kernel", None)
    if kernel is None or not hasattr(kernel, "get_parent"):
        return None, None
    try:
        return kernel, kernel.get_parent()
    except Exception:
        return kernel, None


def _adopt_parent(captured) -> None:
    """Make sure the thread's messages carry the captured cell's parent header."""
    kernel, parent = captured
    if kernel is None or not parent:
        return
    try:
        current = kernel.get_parent()
    except Exception:
        current = None
    want = parent.get("header", {}).get("msg_id")
    if current and current.get("header", {}).get("msg_id") == want:
        return  # the copied context already carries it (ipykernel 7)
    try:
        ident = kernel._get_shell_context_var(kernel._shell_parent_ident)
    except Exception:
        ident = b""
    try:
        kernel.set_parent(ident, parent)
    except Exception:  # another kernel implementation: messages may land in a later cell
        pass


# ---------------------------------------------------------------------------
# Text progress (plain scripts, terminal IPython)
# ---------------------------------------------------------------------------
class TextProgress(_Progress):
    """A tqdm bar with counts as postfix; failures and stdout printed at the end."""

    def __init__(self, job, capture_report=None, *, file=None, out=None,
                 min_interval: float = MIN_INTERVAL_S):
        super().__init__(job, capture_report, min_interval=min_interval)
        self.file = file        # the bar (default: stderr)
        self.out = out          # failures, stdout and summary (default: stdout)
        self.bar: Any = None  # the tqdm bar, made by display()
        self._estimate_shown = False
        self._stdout_printed = 0  # characters of task stdout printed so far
        self._stdout_held = 0     # and not printed, past TEXT_STDOUT_CHARS
        self._failures: list[tuple[int, str, dict]] = []
        self._error_shown = ""

    def display(self) -> None:
        with self._lock:
            if self.bar is not None:
                return
            from tqdm import tqdm

            self.bar = tqdm(total=len(self.job), desc=f"job {self.job.job_id}", unit="task",
                            file=self.file if self.file is not None else sys.stderr,
                            mininterval=self.min_interval, dynamic_ncols=True, leave=True)
            rep = self.report
            if rep and rep["warnings"]:
                for w in rep["warnings"]:
                    self._print(f"warning: {w}")

    def _print(self, text: str) -> None:
        out = self.out if self.out is not None else sys.stdout
        if self.bar is not None:
            self.bar.clear()
        print(text, file=out, flush=True)

    def _render(self, final: bool) -> None:
        if self.bar is None:
            self.display()
        d = self.tracker.poll()
        spending = self.job.spending
        if spending and spending.get("estimate") and not self._estimate_shown:
            self._estimate_shown = True
            self._print(f"cloudbutton: {estimate_text(spending['estimate'])}")
        self._print_stdout(d.stdout)
        self._failures.extend(d.failures)
        error = self.error_text()
        if error and error != self._error_shown:
            self._error_shown = error
            self._print(f"cloudbutton: following job {self.job.job_id} met an error: {error}")
        t = self.tracker
        self.bar.update(t.ended - self.bar.n)
        c = t.counts
        self.bar.set_postfix_str((f"{c['cached']} cached, " if c["cached"] else "")
                                 + f"{c['done']} done, {c['failed']} failed, {t.running} running, "
                                 f"{t.queued} queued" + (f", {c['cancelled']} cancelled"
                                                         if c["cancelled"] else ""),
                                 refresh=False)  # close() or the next update() redraws
        if final:
            self.bar.close()
            self._print_summary()

    def _print_stdout(self, chunks) -> None:
        """Task stdout as it arrives (live while tasks run), up to TEXT_STDOUT_CHARS."""
        if not chunks:
            return
        text = "".join(_prefix_lines(i, s) for i, s in sorted(chunks))
        room = TEXT_STDOUT_CHARS - self._stdout_printed
        if room <= 0:
            self._stdout_held += len(text)
            return
        self._stdout_printed += min(room, len(text))
        self._stdout_held += max(0, len(text) - room)
        self._print(text[:room].rstrip("\n"))

    def _print_summary(self) -> None:
        out = []
        if self._stdout_held:
            out.append(f"[... {self._stdout_held} more characters of task stdout; "
                       "see job[i].stdout]")
        for i, tid, info in sorted(self._failures, key=lambda x: x[0])[:MAX_FAILURES_LISTED]:
            out.append(f"--- item {i} failed (task {tid}): {error_line(info)}")
            if info.get("traceback"):
                out.append(info["traceback"].rstrip("\n"))
        if len(self._failures) > MAX_FAILURES_LISTED:
            out.append(f"... and {len(self._failures) - MAX_FAILURES_LISTED} more failures")
        c, hs = self.tracker.counts, self.tracker.header_stats()
        line = (f"job {self.job.job_id} {self.state_text()}: "
                + (f"{c['cached']} cached, " if c["cached"] else "")
                + f"{c['done']} done, {c['failed']} failed"
                + (f", {c['cancelled']} cancelled" if c["cancelled"] else "")
                + f" in {fmt_seconds(hs['elapsed_s'])}")
        if hs["flops"]:
            line += f", {hs['gflops']:.2f} GFLOPS effective"
        out.append(line)
        out.extend(budget_lines(self.job.spending, running=False)[-2:])  # meter, stop
        self._print("\n".join(out))


# ---------------------------------------------------------------------------
# The notebook widget
# ---------------------------------------------------------------------------
_BOKEHJS_SESSIONS: set = set()  # frontend connections BokehJS was published to


def _ensure_bokehjs() -> None:
    """Publish BokehJS inline (the page has no CDN access offline), once per frontend,
    and take it out of the notebook again at once.

    A reloaded page (or a second notebook on the same kernel) is a new client
    session without BokehJS: the parent header's ``session`` tells them apart.
    The 1.3 MB script runs when the frontend renders the output; the output is then
    emptied in place (its display id), so the saved notebook does not carry it. The
    rendering that stays (``JobView``) needs no BokehJS.
    """
    _, parent = _kernel_parent()
    session = ((parent or {}).get("header") or {}).get("session") or "-"
    if session in _BOKEHJS_SESSIONS:
        return
    from bokeh.resources import Resources

    # Only the core bundle: the plots use no bokeh widgets, tables or GL.
    resources = Resources(mode="inline", components=["bokeh"])
    try:
        from IPython.display import display
        from bokeh.embed.bundle import bundle_for_objs_and_resources
        from bokeh.io.notebook import JS_MIME_TYPE, LOAD_MIME_TYPE, _loading_js

        bundle = bundle_for_objs_and_resources(None, resources)
        handle = display({JS_MIME_TYPE: _loading_js(bundle, None, 5000, register_mime=True),
                          LOAD_MIME_TYPE: _loading_js(bundle, None, 5000, register_mime=False)},
                         raw=True, display_id=True)
        handle.update({"text/plain": ""}, raw=True)
    except (ImportError, AttributeError, TypeError):  # bokeh moved its internals: plain load
        from bokeh.io.notebook import load_notebook

        load_notebook(resources, hide_banner=True)
    _BOKEHJS_SESSIONS.add(session)


_FOLLOWED: "weakref.WeakSet[JobView]" = weakref.WeakSet()  # views updated in the background


def flush_followed(*_args) -> None:
    """After each cell (IPython's ``post_run_cell``): the jobs followed in the background
    that have ended get their final rendering, sent from this cell (see resend_final)."""
    for view in list(_FOLLOWED):
        if view.job.done():
            view.finish()
            view.resend_final()
            _FOLLOWED.discard(view)


CSS = """<style>
.cloudbutton-stdout pre, .cloudbutton-failures pre {max-height: 240px; overflow: auto;
                                                    font-size: 12px; margin: 2px 0}
</style>"""

STATE_COLOURS = {"done": "#2ca02c", "failed": "#d62728", "running": "#1f77b4",
                 "cancelled": "#7f7f7f", "queued": "#c7c7c7", "cached": COMPUTE_CACHED}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
# An ended job's live widget, by model id: rendered by the lab extension (labextension/src/
# joboutput.ts) while the kernel has the model, beside the static text/html it falls back to.
JOB_VIEW = "application/vnd.cloudbutton.job+json"
FONT = "font-family: var(--jp-ui-font-family, sans-serif); font-size: 13px; line-height: 1.5"
PRE = ("max-height: 240px; overflow: auto; font-size: 12px; margin: 2px 0; "
       "white-space: pre-wrap")


class JobView(_Progress):
    """A job as HTML that needs nothing to show: no kernel, widget manager or network.

    It follows the job like the other views and keeps what it saw (timeline rows,
    stdout, failures), so that ``static_html()`` can draw the final state: header and
    counts as HTML, the timeline and rate plots as PNG images (``static_plots``). A
    finished job displayed in a notebook is shown this way; ``JobWidget`` shows it
    live and leaves this rendering in the cell's output when the job ends.
    """

    def __init__(self, job, capture_report=None, *, min_interval: float = MIN_INTERVAL_S):
        super().__init__(job, capture_report, min_interval=min_interval)
        self.rows: list[dict] = []
        self.flops_mode = False
        self._stdout_parts: list[str] = []
        self._stdout_chars = 0
        self._stdout_dropped = 0
        self._failed: list[tuple[int, str, dict]] = []
        self._header_stats: dict | None = None
        self._handle: Any = None  # the DisplayHandle, once displayed

    # Display --------------------------------------------------------------------
    def display(self) -> None:
        from IPython.display import display

        self._handle = display(self.bundle(), raw=True, display_id=True)

    def bundle(self) -> dict:
        return {"text/html": self.static_html(), "text/plain": self.text_line()}

    def _repr_mimebundle_(self, **kwargs):
        return self.bundle()

    def start_background(self, interval: float | None = None) -> threading.Thread:
        _FOLLOWED.add(self)
        return super().start_background(interval)

    def resend_final(self) -> None:
        """Send the final rendering again, from the current cell.

        A job followed in the background ends after the cell that showed it. The
        background thread updates the output under that cell's message, which
        JupyterLab routes but nbclient (``make demo``, CI) drops; the same update
        sent while a later cell runs reaches both (outputs are found by display id).
        """
        if self.finished and self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    # Following the job -------------------------------------------------------------
    def _collect(self, final: bool):
        """Take what ended since the last poll; returns the delta and the header figures."""
        t = self.tracker
        d = t.poll()
        self.rows.extend(d.rows)
        if t.series.total_flops:
            self.flops_mode = True
        # The figures the panel and the CLI compute from the same statuses (accounting);
        # job.stats adds this host's own storage requests, which only it can count.
        hs = t.header_stats()
        self._header_stats = hs
        if d.stdout:
            self._add_stdout(d.stdout)
        if d.failures:
            self._failed.extend(d.failures)
        return d, hs

    def _render(self, final: bool) -> None:
        self._collect(final)
        if final and self._handle is not None:
            self._handle.update(self.bundle(), raw=True)

    # Text ----------------------------------------------------------------------------
    def text_line(self) -> str:
        c, t = self.tracker.counts, self.tracker
        hs = self._header_stats or t.header_stats()
        cached = f"{c['cached']} cached, " if c["cached"] else ""
        return (f"job {self.job.job_id} {self.state_text()}: {cached}{c['done']} done, "
                f"{c['failed']} failed, {t.running} running, {t.queued} queued, "
                f"{c['cancelled']} cancelled in {fmt_seconds(hs['elapsed_s'])}")

    def header_html(self) -> str:
        t = self.tracker
        c = t.counts
        hs = self._header_stats or t.header_stats()
        state = self.state_text()
        counts = (f"{c['done']} done · {c['failed']} failed · {t.running} running · "
                  f"{t.queued} queued · {c['cancelled']} cancelled · {self.job.retried} retried")
        if c["cached"]:
            counts = f"{c['cached']} cached · " + counts
        if self.job.throttled:
            counts += f" · {self.job.throttled} throttled"
        backend = self.job.backend.name
        cost = fmt_cost(hs["cost_usd"])
        if backend != "lambda" and not cost.startswith("<"):
            cost = f"≈ {cost}"  # an estimate: what these tasks would cost on Lambda
        cost = f"{cost} on Lambda"
        rate = (f"{hs['gflops']:.2f} GFLOPS" if hs["flops"] else "")
        parts = [f"elapsed {fmt_seconds(hs['elapsed_s'])}",
                 f"ETA {fmt_seconds(hs['eta_s']) if state == 'running' else '—'}",
                 f"{hs['tasks_per_s']:.1f} tasks/s", rate, cost]
        colour = {"finished": "#2ca02c", "cancelled": "#7f7f7f", "running": "#1f77b4"}.get(
            state, "#d62728")
        error = self.error_text()
        if error:
            parts.append(f"<span class='cb-error' style='color:#d62728'>error: "
                         f"{html.escape(error)}</span>")
        budget = budget_lines(self.job.spending, running=state == "running")
        spending_html = "".join(
            f"<div class='cb-{kind}'{style}>{html.escape(line)}</div>"
            for line, (kind, style) in zip(budget, self._budget_kinds(budget), strict=True))
        n = max(1, t.n)
        segs = [("cached", c["cached"]), ("done", c["done"]), ("failed", c["failed"]),
                ("running", t.running),
                ("cancelled", c["cancelled"]), ("queued", t.queued)]
        bar = ("<div class='cloudbutton-bar' title='{}' style='display: flex; height: 12px; "
               "width: 100%; background: #e6e6e6; border-radius: 3px; overflow: hidden'>{}</div>"
               ).format(html.escape(counts), "".join(
                   f"<div class='cb-{s}' style='width:{100 * k / n:.3f}%;"
                   f"background:{STATE_COLOURS[s]}'></div>" for s, k in segs if k))
        return (
            f"<div class='cloudbutton-header' style='{FONT}'>"
            f"<div><b>job {html.escape(self.job.job_id)}</b> · {html.escape(backend)} · "
            f"{len(self.job)} tasks · <span class='cb-state' style='color:{colour};"
            f"font-weight:600'>{state}</span>"
            + (f" · <span style='color:#d62728'>{c['failed']} failed</span>" if c["failed"] else "")
            + f"</div><div class='cb-counts' style='font-weight:600'>{counts}</div>"
            f"<div>{' · '.join(p for p in parts if p)}</div>{spending_html}</div>{bar}"
            + phases_html(t.phases.as_dict()))

    def _budget_kinds(self, lines: list[str]) -> list[tuple[str, str]]:
        """The class and style of each of ``budget_lines``: estimate, meter, stop."""
        spending = self.job.spending or {}
        kinds = [("estimate", "")] if spending.get("estimate") else []
        kinds.append(("cost-meter", ""))
        if spending.get("stopped"):
            kinds.append(("budget-stop", " style='color:#d62728;font-weight:600'"))
        return kinds[:len(lines)]

    # The rendering that stays -------------------------------------------------------
    def static_html(self) -> str:
        """Header, counts, plots (PNG), warnings, stdout and failures as one HTML string."""
        from . import static_plots
        from .plots import FLOPS_LABELS, TASKS_LABELS

        parts = [self.header_html()]
        if self.report and self.report["warnings"]:
            parts.append("".join(f"<div style='color:#b35900;{FONT}'>⚠ {html.escape(wn)}</div>"
                                 for wn in self.report["warnings"]))
        t = self.tracker
        if self.rows:
            hs = self._header_stats or t.header_stats()
            series = t.series.series(hs["elapsed_s"], self.flops_mode)
            labels = FLOPS_LABELS if self.flops_mode else TASKS_LABELS
            title = self._timeline_title()
            if t.counts["cancelled"]:
                title += f"; {t.counts['cancelled']} cancelled items never ran"
            plots = [("timeline", title, len(self.rows),
                      static_plots.timeline_png(self.rows, title, hs["elapsed_s"])),
                     ("rates", labels["title"], len(series["x_end"]),
                      static_plots.rates_png(series, labels))]
            # alt: the plot's title; data-points: how many rows or points it drew.
            parts.extend(f"<img class='cloudbutton-plot cloudbutton-{kind}' alt='{html.escape(title)}' "
                         f"data-points='{points}' style='max-width: 100%' "
                         f"src='data:image/png;base64,{png}'/>"
                         for kind, title, points, png in plots if png)
        else:
            parts.append(f"<div class='cloudbutton-empty' style='{FONT}; color: #616161'>"
                         f"{html.escape(self.empty_sentence())}</div>")
        if self._stdout_parts:
            parts.append(self._stdout_html())
        if self._failed:
            parts.append(self._failures_html())
        if self.report is not None:
            parts.append(f"<details style='{FONT}'><summary>{html.escape(self._report_title())}"
                         f"</summary>{self._report_html()}</details>")
        return f"<div class='cloudbutton-job' style='{FONT}'>{''.join(parts)}</div>"

    def empty_sentence(self) -> str:
        """What the plots' place says when no task has ended with timings."""
        state = self.state_text()
        if state == "cancelled":
            return "The job was cancelled before any task ended: nothing to plot."
        if state == "running":
            return "No task has ended yet: the timeline and the rate plot fill in as tasks end."
        if not len(self.job):
            return "The job has no tasks: nothing to plot."
        return "No task ran long enough to be timed: nothing to plot."

    def _timeline_title(self) -> str:
        t = self.tracker
        if t.per_item:
            return f"Timeline: one row per item ({t.n})"
        return (f"Timeline: {t.n} items, one row per invocation"
                + (f", sampled (every {t.stride}th item)" if t.stride > 1 else ""))

    def _stdout_html(self) -> str:
        note = (f"<div><i>{self._stdout_dropped} earlier task outputs not shown "
                "(all are in job[i].stdout)</i></div>" if self._stdout_dropped else "")
        return (f"<details open class='cloudbutton-stdout'><summary>stdout of tasks</summary>{note}"
                f"<pre style='{PRE}'>{html.escape(''.join(self._stdout_parts))}</pre></details>")

    def _add_stdout(self, chunks) -> None:
        for i, text in sorted(chunks):
            part = _prefix_lines(i, text)
            self._stdout_parts.append(part)
            self._stdout_chars += len(part)
        # Keep only the tail: resending a growing pre would make the browser sluggish.
        while self._stdout_chars > STDOUT_TAIL_CHARS and len(self._stdout_parts) > 1:
            self._stdout_chars -= len(self._stdout_parts[0])
            self._stdout_dropped += 1
            self._stdout_parts.pop(0)

    def _failures_html(self) -> str:
        failed = sorted(self._failed, key=lambda x: x[0])
        items = []
        for i, tid, info in failed[:MAX_FAILURES_LISTED]:
            tb = info.get("traceback") or ""
            items.append(f"<details><summary>[{i}] task {html.escape(str(tid))}: "
                         f"{html.escape(error_line(info))}</summary>"
                         f"<pre style='{PRE}'>{html.escape(tb or 'no remote traceback')}</pre>"
                         "</details>")
        more = (f"<div>... and {len(failed) - MAX_FAILURES_LISTED} more</div>"
                if len(failed) > MAX_FAILURES_LISTED else "")
        return (f"<div class='cloudbutton-failures'><div style='color:#d62728;font-weight:600'>"
                f"{len(failed)} failed</div>" + "".join(items) + more + "</div>")

    def _report_title(self) -> str:
        r = self.report
        assert r is not None  # only shown with a capture report
        warn = f", {len(r['warnings'])} warning(s)" if r["warnings"] else ""
        n = len(r["rows"])
        return f"Captured: {n} name{'' if n == 1 else 's'}, {fmt_bytes(r['total'])}{warn}"

    def _report_html(self) -> str:
        r = self.report
        assert r is not None
        rows = "".join(f"<tr><td>{html.escape(x['name'])}</td><td>{html.escape(x['type'])}</td>"
                       f"<td style='text-align:right'>{fmt_bytes(x['size'])}"
                       + (" (stored once, loaded by each worker on first use)" if x["stored"] else "")
                       + "</td></tr>" for x in r["rows"])
        warns = "".join(f"<div style='color:#b35900'>⚠ {html.escape(wn)}</div>"
                        for wn in r["warnings"])
        return (f"{warns}<table class='cloudbutton-capture'><tr><th>name</th><th>type</th>"
                f"<th>pickled size</th></tr>{rows}<tr><td><b>total</b></td><td></td>"
                f"<td style='text-align:right'><b>{fmt_bytes(r['total'])}</b></td></tr></table>")


class JobWidget(JobView):
    """ipywidgets box: header, stacked progress bar, bokeh timeline + GFLOPS, stdout, failures.

    Displayed with a fallback: the output carries the widget view and, beside it, the
    static rendering (``text/html``), which viewers without a widget manager show.
    When the job ends the output is replaced, in place (its display id), by the final
    static rendering and a reference to the widget (``JOB_VIEW``), not a widget view:
    what stays in the notebook needs no kernel, no widget manager and no network, and
    weighs a few tens of KB. The widgets stay open while the kernel lives, so that the
    lab extension's renderer for ``JOB_VIEW`` shows the live widget (whose timeline bars
    a click still opens, after the job) while its model exists, and the static rendering
    otherwise: after a kernel restart, in nbconvert's HTML, on GitHub, in viewers without
    the extension (they skip a mimetype they do not know).
    """

    def __init__(self, job, capture_report=None, *, min_interval: float = MIN_INTERVAL_S):
        import ipywidgets as w
        from jupyter_bokeh import BokehModel

        from .plots import JobPlots

        super().__init__(job, capture_report, min_interval=min_interval)
        t = self.tracker
        self.plots = JobPlots(t.n, t.per_item, t.stride)
        self.header = w.HTML()
        self.bokeh = BokehModel(self.plots.layout)
        # An empty frame reads as broken: until a task ends, a sentence stands in for it.
        self.bokeh.layout.display = "none"
        self.waiting = w.HTML(f"<div style='{FONT}; color: #616161'>"
                              f"{html.escape(self.empty_sentence())}</div>")
        # A click on a bar shows what its task did (TapTool: the selection syncs back here).
        self.task_detail = w.HTML()
        self.task_detail.add_class("cloudbutton-task-detail")
        self.plots.timeline_source.selected.on_change("indices", self._on_tap)
        self.stdout = w.HTML()
        self.failures = w.HTML()
        self.failures.add_class("cloudbutton-failures")
        self.rerun_button: Any = None  # "Re-run N failed", left below the final rendering
        children = [w.HTML(CSS), self.header, self.waiting, self.bokeh, self.task_detail,
                    self.stdout, self.failures]
        self.report_box = None
        if self.report is not None:
            self.report_box = w.Accordion(children=[w.HTML(self._report_html())],
                                          titles=(self._report_title(),), selected_index=None)
            children.append(self.report_box)
        self.box = w.VBox(children)
        self.box.add_class("cloudbutton-job-widget")
        self.box.add_class("cloudbutton-job")  # what the static rendering's root is called
        self._closed = False
        self.static_refresh_s = STATIC_REFRESH_S
        self._static_sent = time.monotonic()
        self._static_cost_s = 0.0  # how long the last static rendering took to draw
        self._render_text()

    # Display ------------------------------------------------------------------
    def display(self) -> None:
        from IPython.display import display

        _ensure_bokehjs()
        self._handle = display(self.bundle(), raw=True, display_id=True)

    def bundle(self) -> dict:
        if self.finished:
            if self._closed:
                return super().bundle()
            return {JOB_VIEW: {"model_id": self.box.model_id}, **super().bundle()}
        # While it runs, the widget view too (for frontends without the lab extension);
        # in JupyterLab the extension's renderer (JOB_VIEW) keeps one live view across the
        # periodic refreshes of the static rendering.
        started = time.monotonic()
        page = self.static_html()
        self._static_sent = time.monotonic()  # the next one a full interval after this one
        self._static_cost_s = self._static_sent - started
        return {**self.box._repr_mimebundle_(), JOB_VIEW: {"model_id": self.box.model_id},
                "text/html": page, "text/plain": self.text_line()}

    # Rendering ----------------------------------------------------------------
    def _render(self, final: bool) -> None:
        d, hs = self._collect(final)
        self.plots.push_rows(d.rows)
        if self.rows and self.bokeh.layout.display == "none":
            self.bokeh.layout.display = None
            self.waiting.layout.display = "none"
        if self.flops_mode and not self.plots.flops_mode:
            self.plots.set_mode(True)
        self.plots.push_series(self.tracker.series.series(hs["elapsed_s"], self.plots.flops_mode),
                               self.tracker.series.version)
        if d.stdout:
            self.stdout.value = self._stdout_html()
        if d.failures:
            self.failures.value = self._failures_html()
        self._render_text()
        if final:
            if self._handle is not None:
                # The ended job's output shows the widget in a new view, which starts from
                # the plots' document as first sent: send the document as it is now.
                self.bokeh.update_from_model(self.plots.layout)
                self._handle.update(self.bundle(), raw=True)
            self._offer_rerun()
        elif (self._handle is not None and time.monotonic() - self._static_sent
              >= max(self.static_refresh_s, self._static_cost_s / STATIC_REFRESH_SHARE)):
            self._handle.update(self.bundle(), raw=True)  # in case the kernel dies

    def _on_tap(self, _attr, _old, new) -> None:
        if not new:
            self.task_detail.value = ""
            return
        data = self.plots.timeline_source.data
        k = new[0]
        self.task_detail.value = task_detail_html(self.job, int(data["bottom"][k]))

    def _offer_rerun(self) -> None:
        """Below the final rendering: a button that re-runs the failed items into the same
        results (``Job.rerun_failed``) and follows the re-run in a widget of its own."""
        import ipywidgets as w
        from IPython.display import display

        n = self.tracker.counts["failed"]
        if not n or self.job.executor is None or self.job.cancelled:
            return
        button = self.rerun_button = w.Button(description=f"Re-run {n} failed",
                                              button_style="warning", icon="redo",
                                              tooltip="run the failed items again, into the "
                                                      "same results")
        out = w.Output()

        def rerun(_button) -> None:
            button.disabled = True
            again = self.job.rerun_failed()
            if again is not None:
                with out:
                    view = make_progress(again)
                    view.display()
                    view.start_background()

        button.on_click(rerun)
        display(w.VBox([button, out]))

    def close(self) -> None:
        """Close the widgets (their comms and kernel-side state); the output keeps the
        static rendering."""
        import ipywidgets as w

        self._closed = True
        widgets = [self.box, *self.box.children]
        if self.report_box is not None:
            widgets.extend(self.report_box.children)
        for widget in widgets:
            # The base close for all: BokehModel.close also detaches from its bokeh document,
            # which it does again (and fails) when collected.
            w.Widget.close(widget)

    def _render_text(self) -> None:
        self.header.value = self.header_html()
