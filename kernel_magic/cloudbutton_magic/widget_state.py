"""Incremental bookkeeping of a running job for the progress views.

Pure Python (plus numpy): no ipywidgets, bokeh or IPython here, so the text
progress and the tests can use it anywhere.

Why incremental: the views refresh five times a second. The tracker follows
the job's log of ended tasks (``job.ended_tasks``) and only looks at the items
of tasks that ended since the last poll; counts come from the job's per-item
state bytes, which are cheap to count.
"""
from __future__ import annotations

import math
import threading
import time

import numpy as np

from cloudbutton_executor import accounting, phases, protocol
from cloudbutton_executor.outcomes import CACHED_TASK

# Above this many items the timeline draws one row per invocation (sampled).
MAX_TIMELINE_ROWS = 2000

NAN = float("nan")
SMOOTH_MIN_BINS = 1  # the tasks/s line is smoothed over at least this many bins (sigma)
COMPUTE_OK = "#2ca02c"
COMPUTE_FAILED = "#d62728"
COMPUTE_CACHED = "#17becf"  # items the result cache served (STATE_COLOURS["cached"])

TIMELINE_COLUMNS = (
    "bottom", "top", "submit", "start", "setup", "c0", "c1", "fetched", "compute_color",
    "cold_x", "cold_y", "task", "items", "state", "queue_s", "setup_s", "compute_s", "return_s",
    "cold", "error", "read", "read_mbs",
)


def read_columns(stats: dict) -> dict:
    """The timeline's read columns of a task that read data from storage (``obj`` chunks,
    ``ObjectStorage``): "read" for the hover, "read_mbs" (MB/s, NaN if it read nothing)."""
    n, s = stats.get("read_bytes"), stats.get("read_s")
    if not n:
        return {"read": "", "read_mbs": NAN}
    mbs = n / 1e6 / s if s else NAN
    rate = f" at {mbs:,.1f} MB/s" if s else ""
    return {"read": f"{n / 1e6:,.1f} MB{rate}", "read_mbs": mbs}


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


def failure_info(job, i: int) -> dict:
    """{type, message, traceback} of a failed item, from the remote record if any."""
    info = job.item_error_info(i)
    if info:
        return info
    exc = job[i].exception(timeout=0) if job.item_state(i) == "failed" else None
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
            inst = self._moving_rate(self.tasks_done[:n], dt)
        return {"x_end": x_end, "x_mid": x_mid, "eff": eff, "inst": inst}

    @staticmethod
    def _moving_rate(counts: np.ndarray, dt: float) -> np.ndarray:
        """Completions per second, smoothed with a Gaussian window that fits the job.

        Completions are discrete: per bin they read as a 0/N/0 sawtooth. The window's
        width (sigma) is a twelfth of the time plotted so far, so a 3-second job and a
        1-hour job both show their trend. Near the ends the weights are renormalised
        over the bins that exist (the future is unknown), so the last point is not
        dragged towards zero.
        """
        n = len(counts)
        sigma = max(SMOOTH_MIN_BINS, n / 12)
        half = int(3 * sigma)
        x = np.arange(-half, half + 1)
        kernel = np.exp(-0.5 * (x / sigma) ** 2)
        # Before the start there were no completions (zeros that count); after the last
        # bin nothing is known yet (left out of the weights).
        padded = np.concatenate((np.zeros(half), counts))
        total = np.convolve(padded, kernel, mode="full")[2 * half:2 * half + n]
        weight = np.convolve(np.ones(n + half), kernel, mode="full")[2 * half:2 * half + n]
        return total / weight / dt

class Delta:
    """What changed since the previous poll."""

    __slots__ = ("ended", "failures", "rows", "stdout")

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
        self.counts = {"done": 0, "failed": 0, "cancelled": 0, "cached": 0}
        self.running = 0
        self.usage = accounting.Usage()  # what the ended tasks used, priced like job.stats
        self.phases = phases.Breakdown()  # where the ended tasks' time went
        self.last_stored: float | None = None  # when the last status was stored (the job's end)
        self.series = RateSeries(max_bins=max_bins)
        self._cursor = 0                      # position in job.ended_tasks()
        self._taken = bytearray(self.n)       # 1 once an ended item was taken into the views
        self._live_cursor = 0                 # position in the job's live stdout log
        self._live_shown: dict[int, int] = {}  # running item -> characters of it shown so far
        self._live_partial: dict[int, str] = {}  # running item -> its unfinished last line
        self._lock = threading.Lock()

    @property
    def ended(self) -> int:
        c = self.counts
        return c["done"] + c["failed"] + c["cancelled"] + c["cached"]

    @property
    def queued(self) -> int:
        return max(0, self.n - self.ended - self.running)

    def poll(self) -> Delta:
        """What ended since the last poll. Counts are always exact (read from the
        job), even when an interrupt broke off the previous poll midway."""
        with self._lock:
            delta = Delta()
            self._take_live(delta)
            for tid, a, b in self.job.ended_tasks(self._cursor):
                self._cursor += 1
                self._take(tid, a, b, delta)
            c = self.job.counts()
            self.counts = {k: c[k] for k in ("done", "failed", "cancelled", "cached")}
            self.running = c["running"]
            return delta

    def _take_live(self, delta: Delta) -> None:
        """Whole lines that running items printed since the last poll (live stdout); an
        unfinished line waits for its end, or for its item's end."""
        live = self.job.live_stdout(self._live_cursor)
        self._live_cursor += len(live)
        for i, text in live:
            if self._taken[i]:
                continue
            pending = self._live_partial.get(i, "") + text
            cut = pending.rfind("\n") + 1
            if cut:
                delta.stdout.append((i, pending[:cut]))
                self._live_shown[i] = self._live_shown.get(i, 0) + cut
            self._live_partial[i] = pending[cut:]

    def _take(self, tid: str | None, a: int, b: int, delta: Delta) -> None:
        """The items of one ended task (or of a cancel, ``tid`` None) into the delta."""
        job, taken = self.job, self._taken
        state = job.item_state
        new = [i for i in range(a, b) if not taken[i] and state(i) not in ("queued", "running")]
        if not new:
            return
        for i in new:
            taken[i] = 1
            delta.ended += 1
        if tid is None:
            return  # cancelled: never ran, nothing to time or bill
        if tid == CACHED_TASK:  # served by the cache: not computed (nor billed) now
            if self.per_item:
                delta.rows.extend(self._row(i, i + 1, tid) for i in new)
            elif -(-a // self.stride) * self.stride < b:
                delta.rows.append(self._row(a, b, tid))
            return
        record = job.outcomes.task_record(tid)
        if record is not None:
            self.usage.add_task(*record)
            self.phases.add(record[0])
            stored = record[0].get("result_stored") or record[0].get("compute_done")
            if stored:
                self.last_stored = max(self.last_stored or 0.0, stored)
        st = job.item_stats(new[0])
        t0 = self.t0
        for i in new:
            s = job.item_stats(i) if i != new[0] else st
            # What live stdout showed already is not shown again.
            shown = self._live_shown.pop(i, 0)
            self._live_partial.pop(i, None)
            out = job.item_stdout(i)[shown:]
            if out:
                delta.stdout.append((i, out))
            if state(i) == "failed":
                delta.failures.append((i, tid, failure_info(job, i)))
            end = s.get("compute_done") or s.get("host_seen") or time.time()
            c0, c1 = s.get("compute_start"), s.get("compute_done")
            self.series.add(end - t0, s.get("flops") or 0,
                            None if c0 is None else c0 - t0, None if c1 is None else c1 - t0)
            if self.per_item:
                delta.rows.append(self._row(i, i + 1, tid))
        if not self.per_item and self._sampled(tid):
            delta.rows.append(self._row(a, b, tid))

    def _sampled(self, tid: str) -> bool:
        a, b = protocol.task_range(tid)
        return -(-a // self.stride) * self.stride < b

    def _row(self, a: int, b: int, tid: str) -> dict:
        if tid == CACHED_TASK:
            return self._cached_row(a, b)
        job, t0 = self.job, self.t0
        first, last = job.item_stats(a), job.item_stats(b - 1)
        states = [job.item_state(i) for i in range(a, b)]
        failed = [i for i, s in zip(range(a, b), states, strict=True) if s == "failed"]
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

        if len(states) == 1:
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
            "state": state if len(states) == 1 or not n_failed else f"{n_failed} failed",
            "queue_s": _dur(submit, start), "setup_s": _dur(start, setup),
            "compute_s": _dur(c0, c1), "return_s": _dur(c1, fetched),
            "cold": "yes" if cold else "no",
            "error": error_line(failure_info(job, failed[0])) if failed else "",
            **read_columns(first),
        }

    def _cached_row(self, a: int, b: int) -> dict:
        """Items [a, b) the cache served: a bar over the lookup at the job's start, in the
        cache's colour; the hover gives the original run's compute time."""
        first, last = self.job.item_stats(a), self.job.item_stats(b - 1)
        lookup = (self.job.dispatcher.cache_lookup or {}).get("lookup_s") or 0.0
        return {
            "bottom": a, "top": b - 0.15 if b - a == 1 else b - 0.5,
            "submit": 0.0, "start": 0.0, "setup": 0.0, "c0": 0.0, "c1": lookup, "fetched": lookup,
            "compute_color": COMPUTE_CACHED, "cold_x": NAN, "cold_y": NAN, "task": CACHED_TASK,
            "items": str(a) if b - a == 1 else f"{a}..{b - 1} ({b - a})", "state": "cached",
            "queue_s": 0.0, "setup_s": 0.0,
            "compute_s": _dur(first.get("compute_start"), last.get("compute_done")),
            "return_s": 0.0, "cold": "no", "error": "", "read": "", "read_mbs": NAN,
        }

    @property
    def invocations(self) -> int:
        return self.usage.tasks

    @property
    def gb_seconds(self) -> float:
        return accounting.cost(self.usage, memory_mb=self.job.memory_mb)["gb_seconds"]

    def header_stats(self, now: float | None = None) -> dict:
        """Elapsed time, rate, ETA, GFLOPS and the cost so far (``accounting.job_stats``)."""
        job = self.job
        end = accounting.job_end(finished=job.done(), last_stored=self.last_stored,
                                 cancelled_at=job.cancelled_at if job.cancelled else None,
                                 now=job.finished_at or now or time.time())
        return accounting.job_stats(
            n_items=self.n, counts=self.counts, created=self.t0,
            end=end, usage=self.usage,
            flops=self.series.total_flops, memory_mb=job.memory_mb,
            architecture=job.backend.limits.architecture)
