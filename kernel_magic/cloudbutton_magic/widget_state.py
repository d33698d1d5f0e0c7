"""Incremental bookkeeping of a running job for the progress views.

Pure Python (plus numpy): no ipywidgets, bokeh or IPython here, so the text
progress and the tests can use it anywhere.

Why incremental: ``job.counts()`` and ``job.stats`` walk every future and take
its lock (about 20 and 35 ms for 10,000 tasks), too much for five refreshes a
second. The tracker learns about ended futures from their done callbacks and
only looks at futures that were dispatched and have not ended yet.
"""
from __future__ import annotations

import collections
import math
import threading
import time

import numpy as np

from cloudbutton_executor import protocol

# Above this many items the timeline draws one row per invocation (sampled).
MAX_TIMELINE_ROWS = 2000
# Lambda list prices, the same the executor uses for ``job.stats["cost_usd"]``.
try:
    from cloudbutton_executor.job import LAMBDA_GB_SECOND_USD, LAMBDA_REQUEST_USD
except ImportError:  # pragma: no cover - older executor
    LAMBDA_GB_SECOND_USD, LAMBDA_REQUEST_USD = 0.0000166667, 0.20 / 1_000_000

NAN = float("nan")
COMPUTE_OK = "#2ca02c"
COMPUTE_FAILED = "#d62728"

TIMELINE_COLUMNS = (
    "bottom", "top", "submit", "start", "setup", "c0", "c1", "fetched", "compute_color",
    "cold_x", "cold_y", "task", "items", "state", "queue_s", "setup_s", "compute_s", "return_s",
    "cold", "error",
)


def _num(v):
    return NAN if v is None else float(v)


def _dur(a, b):
    if a is None or b is None:
        return NAN
    return max(0.0, b - a)


def error_line(info) -> str:
    """``Type: message`` of a failure, one line, short."""
    if not info:
        return ""
    msg = (info.get("message") or "").strip().splitlines()
    text = f"{info.get('type', 'Error')}: {msg[0] if msg else ''}"
    return text if len(text) <= 200 else text[:197] + "..."


def failure_info(f) -> dict:
    """{type, message, traceback} of a failed future, from the remote record if any."""
    info = getattr(f, "error_info", None)
    if info:
        return info
    exc = f.exception() if f.done() and not f.cancelled() else None
    return {"type": type(exc).__name__ if exc else "Error", "message": str(exc or ""),
            "traceback": ""}


class RateSeries:
    """FLOPs and task completions binned over time since the job started.

    Fixed number of bins; when the job outlives them the bin width doubles
    (pairs merge), so memory and per-refresh work stay bounded. ``version``
    changes when that happens so the plot knows to resend instead of patch.
    """

    def __init__(self, max_bins: int = 240, dt: float = 0.05):
        if max_bins % 2:
            raise ValueError("max_bins must be even (bins merge in pairs)")
        self.max_bins = max_bins
        self.dt = dt
        self.version = 0
        self.flops_done = np.zeros(max_bins)   # FLOPs of tasks whose compute ended in the bin
        self.flops_run = np.zeros(max_bins)    # FLOPs computed during the bin (rate x overlap)
        self.tasks_done = np.zeros(max_bins)
        self.total_flops = 0.0

    def _fit(self, t: float) -> None:
        while t >= self.max_bins * self.dt:
            for a in (self.flops_done, self.flops_run, self.tasks_done):
                merged = a.reshape(-1, 2).sum(axis=1)
                a[:] = 0.0
                a[:len(merged)] = merged
            self.dt *= 2
            self.version += 1

    def add(self, t_end: float, flops: float, t0: float | None = None, t1: float | None = None):
        """A task ended at ``t_end``; it computed ``flops`` between ``t0`` and ``t1``."""
        t_end = max(0.0, t_end)
        self._fit(max(t_end, t1 or 0.0))
        b = int(t_end / self.dt)
        self.tasks_done[b] += 1
        if not flops:
            return
        self.total_flops += flops
        self.flops_done[b] += flops
        if t0 is None or t1 is None:
            self.flops_run[b] += flops
            return
        t0, t1 = max(0.0, t0), max(0.0, t1)
        if t1 <= t0:
            self.flops_run[int(t0 / self.dt)] += flops
            return
        rate = flops / (t1 - t0)
        dt = self.dt
        for k in range(int(t0 / dt), int(t1 / dt) + 1):
            overlap = min(t1, (k + 1) * dt) - max(t0, k * dt)
            if overlap > 0:
                self.flops_run[k] += rate * overlap

    def series(self, elapsed: float, flops_mode: bool) -> dict:
        """Columns x_end, x_mid, eff, inst up to ``elapsed`` seconds.

        FLOPs mode: eff = cumulative FLOPs / time (GFLOPS), inst = FLOPs in
        flight (GFLOPS, averaged over the bin). Otherwise tasks/s: eff =
        cumulative completions / time, inst = completions per second in the bin.
        """
        self._fit(max(0.0, elapsed - 1e-9))
        n = min(self.max_bins, max(1, math.ceil(elapsed / self.dt)))
        dt = self.dt
        x_end = (np.arange(n) + 1.0) * dt
        x_end[-1] = max(min(x_end[-1], elapsed), (n - 1 + 0.5) * dt)  # the last bin is still filling
        x_mid = (np.arange(n) + 0.5) * dt
        if flops_mode:
            eff = np.cumsum(self.flops_done[:n]) / x_end / 1e9
            inst = self.flops_run[:n] / dt / 1e9
        else:
            eff = np.cumsum(self.tasks_done[:n]) / x_end
            inst = self.tasks_done[:n] / dt
        return {"x_end": x_end, "x_mid": x_mid, "eff": eff, "inst": inst}


class Delta:
    """What changed since the previous poll."""

    __slots__ = ("ended", "rows", "stdout", "failures")

    def __init__(self):
        self.ended = 0          # futures newly ended
        self.rows = []          # new timeline rows (dicts of TIMELINE_COLUMNS)
        self.stdout = []        # (item index, text)
        self.failures = []      # (item index, task id, info dict)


class JobTracker:
    """Counts, timeline rows, stdout, failures and rate series of a job, incrementally."""

    def __init__(self, job, *, max_rows: int = MAX_TIMELINE_ROWS, max_bins: int = 240):
        self.job = job
        self.n = len(job)
        self.t0 = job.created
        self.per_item = self.n <= max_rows
        # Invocation mode draws an invocation when it holds an item index that is
        # a multiple of ``stride``: at most ``max_rows`` rows, spread over the input,
        # whatever the batch sizes (which "auto" chunking only decides at run time).
        self.stride = 1 if self.per_item else math.ceil(self.n / max_rows)
        self.counts = {"done": 0, "failed": 0, "cancelled": 0}
        self.running = 0
        self.rows_drawn = 0
        self.invocations = 0
        self.gb_seconds = 0.0
        self.series = RateSeries(max_bins=max_bins)
        self._memory_gb = (getattr(job, "memory_mb", None) or 1024) / 1024
        self._ended = collections.deque()          # indices, appended from executor threads
        self._dispatch_ptr = 0
        self._inflight: set[int] = set()           # dispatched, not ended
        self._seen_tasks: set[str] = set()
        self._states: dict[int, str] = {}          # final state of each ended item
        self._waiting_tasks: set[str] = set()      # sampled invocations not fully ended yet
        self._lock = threading.Lock()
        self.needs_reconcile = False
        for f in job.futures:
            f.add_done_callback(self._on_done)

    def _on_done(self, f) -> None:
        self._ended.append(f.index)  # deque.append is atomic: safe from any thread

    @property
    def ended(self) -> int:
        return self.counts["done"] + self.counts["failed"] + self.counts["cancelled"]

    @property
    def queued(self) -> int:
        return max(0, self.n - self.ended - self.running)

    def poll(self) -> Delta:
        with self._lock:
            try:
                return self._poll()
            except BaseException:  # e.g. Ctrl-C mid-way: counts may miss a future
                self.needs_reconcile = True
                raise

    def _poll(self) -> Delta:
        futures = self.job.futures
        delta = Delta()
        # Futures are dispatched in index order: follow the frontier of assigned task ids.
        while self._dispatch_ptr < self.n and futures[self._dispatch_ptr].task_id is not None:
            if not futures[self._dispatch_ptr].done():
                self._inflight.add(self._dispatch_ptr)
            self._dispatch_ptr += 1
        while self._ended:
            i = self._ended.popleft()
            self._inflight.discard(i)
            self._take(futures[i], delta)
        for tid in list(self._waiting_tasks):
            self._maybe_invocation_row(tid, delta)
        self.running = sum(1 for i in self._inflight if futures[i].running())
        return delta

    def reconcile(self) -> None:
        """Recount every future's state (O(n); the final refresh does it if a poll broke).

        A KeyboardInterrupt landing inside ``poll()`` can drop an ended future
        between the queue and the counts; the final numbers must still be exact.
        """
        with self._lock:
            counts = {"done": 0, "failed": 0, "cancelled": 0}
            running = 0
            for f in self.job.futures:
                st = f.state
                if st in counts:
                    counts[st] += 1
                    self._states[f.index] = st
                elif st == "running":
                    running += 1
            self.counts = counts
            self.running = running
            self.needs_reconcile = False

    def _take(self, f, delta: Delta) -> None:
        state = f.state
        self._states[f.index] = state
        self.counts[state] = self.counts.get(state, 0) + 1
        delta.ended += 1
        st = f.stats
        if f.stdout:
            delta.stdout.append((f.index, f.stdout))
        if state == "failed":
            delta.failures.append((f.index, f.task_id, failure_info(f)))
        if state == "cancelled" and st.get("worker_start") is None:
            return  # never ran: nothing to time or bill
        tid = f.task_id
        if tid and tid not in self._seen_tasks and st.get("host_submit") is not None:
            self._seen_tasks.add(tid)
            self.invocations += 1
            if st.get("worker_start"):
                self.gb_seconds += max(0.001, (st.get("result_stored") or st.get("compute_done")
                                               or st["worker_start"]) - st["worker_start"]) \
                    * self._memory_gb
            if not self.per_item and self._sampled(tid):
                self._waiting_tasks.add(tid)
        t0 = self.t0
        end = st.get("compute_done") or st.get("host_seen") or time.time()
        c0, c1 = st.get("compute_start"), st.get("compute_done")
        self.series.add(end - t0, st.get("flops") or 0,
                        None if c0 is None else c0 - t0, None if c1 is None else c1 - t0)
        if self.per_item:
            delta.rows.append(self._row([f], f.index, f.index + 1, tid or f"item {f.index}"))

    def _sampled(self, tid: str) -> bool:
        a, b = protocol.task_range(tid)
        return -(-a // self.stride) * self.stride < b

    def _maybe_invocation_row(self, tid: str, delta: Delta) -> None:
        a, b = protocol.task_range(tid)
        fs = self.job.futures[a:b]
        # The job applies a status item by item: wait until the last one has ended.
        if not fs[-1].done():
            return
        self._waiting_tasks.discard(tid)
        delta.rows.append(self._row(fs, a, b, tid))

    def _row(self, fs, a: int, b: int, tid: str) -> dict:
        t0 = self.t0
        first, last = fs[0].stats, fs[-1].stats
        # Final states as recorded when each future ended (f.state takes three locks).
        states = [self._states.get(f.index) or f.state for f in fs]
        failed = [f for f, s in zip(fs, states, strict=True) if s == "failed"]
        submit = first.get("host_submit")
        start = first.get("worker_start")
        setup = first.get("setup_done")
        c0 = first.get("compute_start")
        c1 = last.get("compute_done")
        fetched = last.get("host_fetched") or last.get("host_seen")
        if start is None:  # ended without running (infrastructure failure, lost invocation)
            start = setup = c0 = submit
            c1 = last.get("host_seen") or fetched
        cold = bool(first.get("cold_start"))

        def rel(t):
            return NAN if t is None or t0 is None else t - t0

        if len(fs) == 1:
            state = states[0]
        else:
            state = "failed" if failed else states[-1]
        n_failed = len(failed)
        return {
            "bottom": a, "top": b - 0.15 if b - a == 1 else b - 0.5,
            "submit": rel(submit), "start": rel(start), "setup": rel(setup),
            "c0": rel(c0), "c1": rel(c1), "fetched": rel(fetched),
            "compute_color": COMPUTE_FAILED if failed else COMPUTE_OK,
            "cold_x": rel(start) if cold else NAN, "cold_y": (a + b) / 2 if cold else NAN,
            "task": tid, "items": str(a) if b - a == 1 else f"{a}..{b - 1} ({b - a})",
            "state": state if len(fs) == 1 or not n_failed else f"{n_failed} failed",
            "queue_s": _dur(submit, start), "setup_s": _dur(start, setup),
            "compute_s": _dur(c0, c1), "return_s": _dur(c1, fetched),
            "cold": "yes" if cold else "no",
            "error": error_line(failure_info(failed[0])) if failed else "",
        }

    def header_stats(self, now: float | None = None) -> dict:
        job = self.job
        end = job.finished_at or now or time.time()
        elapsed = max(0.0, end - self.t0)
        finished = self.counts["done"] + self.counts["failed"]
        rate = finished / elapsed if elapsed > 0 else 0.0
        remaining = self.n - self.ended
        eta = 0.0 if not remaining else (remaining / rate if rate > 0 else None)
        cost = self.gb_seconds * LAMBDA_GB_SECOND_USD + self.invocations * LAMBDA_REQUEST_USD
        return {"elapsed_s": elapsed, "tasks_per_s": rate, "eta_s": eta, "cost_usd": cost,
                "flops": self.series.total_flops,
                "gflops": self.series.total_flops / elapsed / 1e9 if elapsed > 0 else 0.0}
