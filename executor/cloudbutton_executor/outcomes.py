"""Every item's outcome in a job, and the futures that show them.

The store knows nothing of dispatch policy (retries, deadlines, backups live in
the dispatcher): it is told which tasks exist, which started, and which
statuses were stored, and keeps one state byte and one value per item. The
future of an item is made when someone first asks for it and kept in step from
then on, so a job of 10,000 tiny items costs no 10,000 futures (each with its
own lock and condition) unless they are used, and ``result()`` hands back the
values the store already holds.
"""
from __future__ import annotations

import array
import bisect
import concurrent.futures as cf
import gc
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import protocol
from .errors import INFRA_ERRORS, InfrastructureError, RemoteError, RemoteTraceback
from .futures import TaskFuture

log = logging.getLogger("cloudbutton.job")

# An item's state, one byte each. Items only move forward (queued -> running -> an end
# state) and an end state is final; ``rerun`` alone moves failed items back to queued.
# CACHED: its result came from the result cache (``cache.py``), nothing ran.
QUEUED, RUNNING, DONE, FAILED, CANCELLED, CANCELLED_RUNNING, CACHED = range(7)
STATE_NAMES = ("queued", "running", "done", "failed", "cancelled", "cancelled", "cached")
CACHED_TASK = "cached"  # the task id ``ended_tasks`` gives a run of items served by the cache
_TO_RUNNING = (bytes([QUEUED]), bytes([RUNNING]))
# cancel(): queued items end cancelled, running ones cancelled while running.
_CANCEL_TABLE = bytes([CANCELLED, CANCELLED_RUNNING, DONE, FAILED, CANCELLED, CANCELLED_RUNNING,
                       CACHED])
_CANCEL_TABLE += bytes(range(len(_CANCEL_TABLE), 256))
_OPEN_TABLE = bytes([1, 1] + [0] * 254)  # queued and running items are open
_OK_TABLE = bytes([0, 0, 1, 0, 0, 0, 1] + [0] * 249)  # items with a result (done or cached)

Outcome = tuple[bool, Any]  # (ok, result or the exception the item raised)
Clock = Callable[[], float]

_gc_lock = threading.Lock()
_gc_depth = 0
_gc_we_disabled = False


class gc_paused:
    """Pause the cyclic GC while allocating many objects at once.

    With tens of thousands of GC-tracked objects alive, collections triggered
    in the middle of a bulk loop rescan all of them and cost more than the loop
    itself. Re-enabled (if it was enabled) when the last concurrent user leaves."""

    def __enter__(self) -> None:
        global _gc_depth, _gc_we_disabled
        with _gc_lock:
            if _gc_depth == 0 and gc.isenabled():
                gc.disable()
                _gc_we_disabled = True
            _gc_depth += 1

    def __exit__(self, *exc: object) -> None:
        global _gc_depth, _gc_we_disabled
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_we_disabled:
                _gc_we_disabled = False
                gc.enable()


class OutcomeStore:
    """Item states and values, the tasks that cover them, and the futures view."""

    def __init__(self, job_id: str, n_items: int, clock: Clock = time.time):
        self.job_id = job_id
        self.n = n_items
        self.clock = clock
        self.finished_at: float | None = None
        self._state = bytearray(n_items)  # QUEUED .. CANCELLED_RUNNING per item
        self._values: list[Any] = [None] * n_items  # a result, or the exception a failed item raises
        self._n_ended = 0
        self._futs: dict[int, TaskFuture] = {}  # the futures made so far
        self._sync_lock = threading.Lock()  # moves futures between states, one at a time
        self._task_starts: list[int] = []  # sorted first items of the known tasks
        self._task_at: dict[int, tuple[str, int]] = {}  # first item -> (task id, stop)
        self._task_host: dict[str, _HostSeen] = {}  # task id -> host-side times, attempts
        # Kept for the job's life, one per task: packed (see ``_packed``), not dicts.
        self._task_stats: dict[str, tuple[Any, ...]] = {}  # task id -> the status's stats
        self._task_items: dict[str, tuple[Any, ...]] = {}  # task id -> the status's item columns
        self._error_info: dict[int, dict[str, Any]] = {}  # item -> type, message, traceback
        self._flops = 0.0
        self._ended_log: list[tuple[str | None, int, int]] = []  # see ended_tasks()
        self._cache_info: dict[int, dict[str, Any]] = {}  # cached item -> its original timings
        self._live: dict[int, str] = {}  # item -> what it printed so far, while it runs
        self._live_log: list[tuple[int, str]] = []  # (item, new text) in arrival order
        self._listeners: list[Callable[[], None]] = []
        self.listener_error: Exception | None = None  # the last error a listener raised
        self._done = threading.Event()
        self._lock = threading.RLock()
        self.job: Any = None  # the Job over this store: a future's wait cancels it on Ctrl-C
        if not n_items:
            self.finish()

    # Reading outcomes ------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        state = self._state
        return {"queued": state.count(QUEUED), "running": state.count(RUNNING),
                "done": state.count(DONE), "failed": state.count(FAILED),
                "cancelled": state.count(CANCELLED) + state.count(CANCELLED_RUNNING),
                "cached": state.count(CACHED)}

    def n_ended(self) -> int:
        return self._n_ended

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> list[Any]:
        """All results in input order; raises the first failure."""
        if not self._done.wait(timeout):
            raise cf.TimeoutError(f"{self.n - self._n_ended} of {self.n} tasks not done "
                                  f"after {timeout} s")
        state = self._state
        if state.count(DONE) + state.count(CACHED) == self.n:
            return list(self._values)
        first = next(i for i, s in enumerate(state) if s not in (DONE, CACHED))
        return [self.future(first).result()]  # raises what that item ended with

    def results(self, timeout: float | None = None) -> list[Any]:
        """All outcomes in input order: a result, or the exception the task ended with."""
        self._done.wait(timeout)
        out: list[Any] = []
        for i, s in enumerate(self._state):
            if s in (DONE, FAILED, CACHED):
                out.append(self._values[i])
            elif s in (CANCELLED, CANCELLED_RUNNING):
                out.append(cf.CancelledError(f"job {self.job_id} was cancelled"))
            else:
                out.append(cf.TimeoutError(f"task {i} had not finished"))
        return out

    def ended_tasks(self, since: int = 0) -> list[tuple[str | None, int, int]]:
        """What ended, in order, from position ``since`` of the log on: ``(task id, first
        item, stop)`` when a task's status was applied, ``(CACHED_TASK, a, b)`` for items the
        cache served, ``(None, 0, n)`` for a cancel."""
        with self._lock:
            return self._ended_log[since:]

    def task_ids(self) -> list[str]:
        """The tasks (invocations) known so far, in item order."""
        with self._lock:
            return [self._task_at[a][0] for a in self._task_starts]

    def task_records(self) -> list[tuple[dict[str, Any], int]]:
        """``(stats, attempt)`` of every stored status applied so far (see ``task_record``)."""
        with self._lock:
            return [self._record(tid, _unpacked(st)) for tid, st in self._task_stats.items()]

    def task_record(self, tid: str) -> tuple[dict[str, Any], int] | None:
        """``(stats, attempt)`` of task ``tid``'s applied status; None before it is applied.
        ``attempt`` counts every invocation sent after the first (retries, backups), so
        that ``accounting.Usage`` bills them all; the losers' run time is in the stats'
        ``backup_s``."""
        with self._lock:
            st = self._task_stats.get(tid)
            return None if st is None else self._record(tid, _unpacked(st))

    def _record(self, tid: str, st: dict[str, Any]) -> tuple[dict[str, Any], int]:
        host = self._task_host[tid]
        attempt = max(int(host.get("attempts", 1)), int(host.get("sent", 1))) - 1
        if host.get("backup_s"):
            st = dict(st, backup_s=host["backup_s"])
        return st, attempt

    def note_losers(self, tid: str, sent: int, backup_s: float) -> None:
        """Task ``tid`` was sent ``sent`` times; the attempts that lost ran ``backup_s``."""
        with self._lock:
            host = self._host(tid)
            host["sent"] = sent
            host["backup_s"] = backup_s

    @property
    def flops(self) -> float:
        return self._flops

    # One item, without making its future ------------------------------------
    def item_state(self, i: int) -> str:
        """queued, running, done, failed, cancelled or cached."""
        return STATE_NAMES[self._state[i]]

    def item_cache_info(self, i: int) -> dict[str, Any] | None:
        """Where a cached item's result came from (job, task) and its original timings;
        None if the item was not served by the cache."""
        return self._cache_info.get(i)

    def item_backups(self, i: int) -> list[dict[str, Any]]:
        """The backup invocations sent for item ``i``'s task: ``{"at", "reason", "attempt"}``."""
        tid = self.item_task(i)
        return list((self._task_host.get(tid) or _NO_HOST).get("backups", ())) if tid else []

    def item_task(self, i: int) -> str | None:
        """The task (invocation) that runs or ran item ``i``; None while it is queued."""
        starts = self._task_starts
        k = bisect.bisect_right(starts, i) - 1
        if k < 0:
            return None
        tid, stop = self._task_at[starts[k]]
        return tid if i < stop else None

    def item_stats(self, i: int) -> dict[str, Any]:
        """Item ``i``'s timestamps (see ``TaskFuture.stats``); a cached item's are those of
        the run that computed it."""
        tid = self.item_task(i)
        info = self._cache_info.get(i)
        if info is not None and info.get("rerun"):  # its re-run's, not the failed task's
            return dict(info.get("stats") or {})
        if tid is None:
            return dict(info.get("stats") or {}, cached=True) if info else {}
        host = self._task_host.get(tid) or _NO_HOST
        out: dict[str, Any] = {"host_submit": host.get("host_submit")}
        if "host_start_seen" in host:
            out["host_start_seen"] = host["host_start_seen"]
        st = _unpacked(self._task_stats.get(tid))
        if not st:  # not (completely) collected yet
            return out
        out.update(worker_start=st.get("worker_start"), setup_done=st.get("setup_done"),
                   result_stored=st.get("result_stored"), host_seen=host.get("host_seen"),
                   host_fetched=host.get("host_fetched"), cold_start=st.get("cold_start"),
                   peak_mem_mb=st.get("peak_mem_mb"), compute_start=None, compute_done=None,
                   flops=0)
        if st.get("read_bytes"):  # what its task read from storage (the task's, not the item's)
            out.update(read_bytes=st["read_bytes"], read_s=st.get("read_s"))
        cols = _unpacked(self._task_items.get(tid))
        times = protocol.item_time(cols, i - protocol.task_range(tid)[0])
        if times is not None:
            out["compute_start"], out["compute_done"] = times
        out["flops"] = (cols.get("flops") or {}).get(str(i), 0)
        return out

    def item_stdout(self, i: int) -> str:
        """What item ``i`` printed: all of it once its task ended, what reached the host so
        far while it runs (live stdout), what it printed when computed if it was cached."""
        tid = self.item_task(i)
        packed = self._task_items.get(tid) if tid else None
        cols = None if packed is None else _unpacked(packed)  # None: not collected yet
        rerun = self._cache_info.get(i)
        if rerun is not None and rerun.get("rerun"):
            return str(rerun.get("stdout") or "")
        if cols is not None:
            return str((cols.get("stdout") or {}).get(str(i), ""))
        if i in self._cache_info:
            return str(self._cache_info[i].get("stdout") or "")
        return self._live.get(i, "")

    def live_stdout(self, since: int = 0) -> list[tuple[int, str]]:
        """Lines printed by running tasks, as they reached the host: ``(item, new text)``
        from position ``since`` of the log on."""
        with self._lock:
            return self._live_log[since:]

    def add_live_stdout(self, texts: dict[int, str]) -> None:
        """What running items have printed so far (whole texts; only the new part is logged)."""
        with self._lock:
            for i, text in sorted(texts.items()):
                if not 0 <= i < self.n or self._state[i] > RUNNING:
                    continue
                old = self._live.get(i, "")
                if len(text) > len(old) and text.startswith(old):
                    self._live[i] = text
                    self._live_log.append((i, text[len(old):]))
        self._notify()

    def item_error_info(self, i: int) -> dict[str, Any] | None:
        """Type, message and traceback of item ``i``'s failure; None if it did not fail."""
        return self._error_info.get(i)

    def item_attempts(self, i: int) -> int:
        tid = self.item_task(i)
        return int((self._task_host.get(tid) or _NO_HOST).get("attempts", 0)) if tid else 0

    def forget(self, i: int) -> None:
        """Drop the references to ended item ``i``'s value and future (its state stays): for
        callers that take each result once (``CloudPoolExecutor.map``), so that a result
        lives only as long as they keep it."""
        with self._lock:
            if self._state[i] > RUNNING:
                self._values[i] = None
                self._futs.pop(i, None)

    # The futures view ---------------------------------------------------------
    def future(self, i: int) -> TaskFuture:
        f = self._futs.get(i)
        if f is None:
            with self._lock:
                f = self._futs.get(i)
                if f is None:
                    f = self._futs[i] = TaskFuture(self, i)
            # After registering: a change made before it is seen here, any later
            # one syncs this future itself. Syncing twice is harmless.
            self._sync(f)
        return f

    def futures(self) -> list[TaskFuture]:
        """Every item's future, in input order (made now if not yet)."""
        with self._lock:
            missing = [i for i in range(self.n) if i not in self._futs] \
                if len(self._futs) < self.n else []
            with gc_paused():
                for i in missing:
                    self._futs[i] = TaskFuture(self, i)
            futs = self._futs
        for i in missing:
            self._sync(futs[i])
        return [futs[i] for i in range(self.n)]

    def _futures_in(self, a: int, b: int) -> list[TaskFuture]:
        """The futures made so far for items [a, b) (call with the lock held)."""
        futs = self._futs
        if not futs:
            return []
        if b - a > len(futs):
            return [f for i, f in futs.items() if a <= i < b]
        return [futs[i] for i in range(a, b) if i in futs]

    def _sync(self, f: TaskFuture) -> None:
        """Bring a future to its item's state (idempotent; safe from any thread).

        The store remembers the state it last gave each future (``f.synced``), so
        it never reads the future's internals; a future its user cancelled keeps
        that cancel (setting a result on it then fails, which is expected)."""
        s = self._state[f.index]
        if s == QUEUED or f.synced == s:
            return
        with self._sync_lock:
            pushed = f.synced
            if pushed == s or pushed > RUNNING:
                return  # an end state was given already: it is final
            f.synced = s
            try:
                if s == RUNNING:
                    f.set_running_or_notify_cancel()
                elif s in (DONE, CACHED):
                    f.set_result(self._values[f.index])
                elif s == FAILED:
                    f.set_exception(self._values[f.index])
                elif s == CANCELLED and pushed == QUEUED:
                    if f.cancel():  # -> CANCELLED; the notify makes wait() see it
                        f.set_running_or_notify_cancel()
                else:  # cancelled while running
                    f.set_exception(cf.CancelledError(f"job {self.job_id} was cancelled"))
            except (cf.InvalidStateError, RuntimeError):
                pass  # its user cancelled it: their cancel stands

    def _sync_all(self, futs: Sequence[TaskFuture]) -> None:
        for f in futs:
            self._sync(f)

    # Changing outcomes (the dispatcher calls these) ---------------------------
    def add_task(self, tid: str, host_submit: float | None) -> None:
        """A task covering items of ``tid`` is sent (first attempt at ``host_submit``)."""
        with self._lock:
            self._register(tid)
            self._host(tid)["host_submit"] = host_submit

    def _host(self, tid: str) -> _HostSeen:
        """Task ``tid``'s host-side record, made if new (lock held)."""
        host = self._task_host.get(tid)
        if host is None:
            host = self._task_host[tid] = _HostSeen()
        return host

    def _register(self, tid: str) -> None:
        """Record which items a task covers (lock held)."""
        a, b = protocol.task_range(tid)
        if self._task_at.get(a, (None,))[0] == tid:
            return
        known = a in self._task_at
        self._task_at[a] = (tid, b)  # before the start is listed: item_task() reads unlocked
        if not known:
            if not self._task_starts or a > self._task_starts[-1]:
                self._task_starts.append(a)  # the usual case: tasks are made in item order
            else:
                bisect.insort(self._task_starts, a)

    def note_backup(self, tid: str, at: float, reason: str, attempt: int) -> None:
        """A backup invocation of task ``tid`` was sent (``reason``: "slow" or "lost")."""
        with self._lock:
            host = self._host(tid)
            host.setdefault("backups", []).append({"at": at, "reason": reason, "attempt": attempt})

    def task_backups(self, tid: str) -> list[dict[str, Any]]:
        with self._lock:
            return list((self._task_host.get(tid) or _NO_HOST).get("backups", ()))

    def apply_cached(self, items: Sequence[int], values: Sequence[Any],
                     infos: Sequence[dict[str, Any]]) -> None:
        """End ``items`` (ascending, not yet ended) with results the cache served."""
        if not items:
            return
        with self._lock:
            state, n_new = self._state, 0
            for i, v, info in zip(items, values, infos, strict=True):
                if state[i] > RUNNING:
                    continue
                state[i] = CACHED
                self._values[i] = v
                self._cache_info[i] = info
                n_new += 1
            self._n_ended += n_new
            # One log entry per run of consecutive items: progress views take them in runs.
            run_start = prev = items[0]
            for i in list(items[1:]) + [-1]:
                if i != prev + 1:
                    self._ended_log.append((CACHED_TASK, run_start, prev + 1))
                    run_start = i
                prev = i
            futs = [f for i in items if (f := self._futs.get(i)) is not None]
        self._sync_all(futs)
        self._notify()
        if self._n_ended >= self.n:
            self.finish()

    def reopen(self, items: Sequence[int]) -> list[int]:
        """Make failed ``items`` queued again, to be run again into the same results
        (``Job.rerun_failed``); returns those that were failed. Their old futures keep
        their exceptions; new ones are made on demand."""
        with self._lock:
            state = self._state
            again = [i for i in items if state[i] == FAILED]
            for i in again:
                state[i] = QUEUED
                self._values[i] = None
                self._error_info.pop(i, None)
                self._futs.pop(i, None)
            self._n_ended -= len(again)
            if again:
                self.finished_at = None
                self._done.clear()
        return again

    def apply_outcome(self, i: int, ok: bool, value: Any, info: dict[str, Any] | None,
                      stats: dict[str, Any] | None = None, stdout: str = "") -> None:
        """End reopened item ``i`` with what a re-run computed."""
        with self._lock:
            if self._state[i] > RUNNING:
                return
            self._state[i] = DONE if ok else FAILED
            self._values[i] = value
            if info:
                self._error_info[i] = info
            self._cache_info[i] = {"stats": stats or {}, "stdout": stdout, "rerun": True}
            self._n_ended += 1
            self._ended_log.append((CACHED_TASK, i, i + 1))
            f = self._futs.get(i)
        if f is not None:
            self._sync(f)
        self._notify()
        if self._n_ended >= self.n:
            self.finish()

    def mark_running(self, tid: str, seen_at: float) -> None:
        """A worker picked the task up: its queued items run."""
        a, b = protocol.task_range(tid)
        with self._lock:
            self._host(tid).setdefault("host_start_seen", seen_at)
            # Only queued items move to running (a retry finds them running already).
            self._state[a:b] = self._state[a:b].replace(*_TO_RUNNING)
            futs = self._futures_in(a, b)
        self._sync_all(futs)

    def apply_status(self, status: dict[str, Any], outcomes: list[Outcome] | None,
                     host_seen: float, fetched: float) -> None:
        """End the items of a stored status (``outcomes`` None for an infrastructure failure)."""
        tid = status["task"]
        a, b = protocol.task_range(tid)
        infra = status.get("infra")
        errors = protocol.item_errors(status)
        cols = {} if infra else protocol.item_columns(status)
        st = status.get("stats") or {}
        with self._lock:
            self._register(tid)
            tid = self._task_at[a][0]  # the registered id string: one per task kept, not two
            host = self._host(tid)
            host.update(host_seen=host_seen, host_fetched=fetched,
                        attempts=status.get("attempt", 0) + 1)
            if st.get("host_submit") is not None:
                host["host_submit"] = st["host_submit"]  # the attempt whose status won
            self._task_stats[tid] = _packed(st)
            # Empty columns (no errors, flops or stdout: the usual case) are not kept;
            # their readers take a missing one as empty.
            self._task_items[tid] = _packed({k: v for k, v in cols.items() if v != {}})
            self._flops += sum((cols.get("flops") or {}).values())
            self._end_items(tid, a, b, outcomes, errors, infra)
            self._ended_log.append((tid, a, b))
            futs = self._futures_in(a, b)
        self._sync_all(futs)
        self._notify()
        if self._n_ended >= self.n:
            self.finish()

    def _end_items(self, tid: str, a: int, b: int, outcomes: list[Outcome] | None,
                   errors: dict[int, dict[str, Any]], infra: dict[str, Any] | None) -> None:
        """Store the outcomes of items [a, b) that have not ended yet (lock held)."""
        state, values = self._state, self._values
        seg = state[a:b]
        n_open = seg.count(QUEUED) + seg.count(RUNNING)
        if not n_open:
            return
        if not errors and outcomes is not None and n_open == b - a:
            # The usual case: every item succeeded, all at once.
            values[a:b] = [v for _ok, v in outcomes]
            state[a:b] = bytes([DONE]) * (b - a)
            self._n_ended += b - a
            return
        for k, i in enumerate(range(a, b)):
            if state[i] > RUNNING:
                continue  # ended already (cancelled): the first end state stays
            self._n_ended += 1
            if i not in errors:
                assert outcomes is not None
                values[i], state[i] = outcomes[k][1], DONE
                continue
            err = errors[i]
            self._error_info[i] = err
            exc: BaseException
            if infra:
                kind = INFRA_ERRORS.get(infra.get("kind") or "", InfrastructureError)
                infra_exc = kind(infra.get("message", ""), tid)
                if infra.get("missing_module"):  # a worker that could not import it (setup)
                    infra_exc.missing_module = infra["missing_module"]  # type: ignore[attr-defined]
                if infra.get("traceback"):
                    infra_exc.__cause__ = RemoteTraceback(infra["traceback"])
                exc = infra_exc
            else:
                value = outcomes[k][1] if outcomes is not None else None
                exc = value if isinstance(value, BaseException) else RemoteError(
                    err.get("type", "Exception"), err.get("message", ""), err.get("traceback", ""))
                if err.get("traceback"):
                    exc.__cause__ = RemoteTraceback(err["traceback"])
            values[i], state[i] = exc, FAILED

    def cancel(self) -> int:
        """End every open item as cancelled; returns how many were open."""
        with self._lock:
            state = self._state
            n = state.count(QUEUED) + state.count(RUNNING)
            state[:] = state.translate(_CANCEL_TABLE)
            self._n_ended += n
            self._ended_log.append((None, 0, self.n))
            futs = list(self._futs.values())
        self._sync_all(futs)
        self.finish()
        return n

    def next_open(self, i: int) -> int:
        """The first item from ``i`` on that has not ended (``n`` if none)."""
        k = self._state.translate(_OPEN_TABLE).find(b"\x01", i)
        return self.n if k < 0 else k

    def open_until(self, i: int) -> int:
        """The end of the run of items not ended that starts at ``i``."""
        k = self._state.translate(_OPEN_TABLE).find(b"\x00", i)
        return self.n if k < 0 else k

    def count_open(self, a: int, b: int) -> int:
        """How many of items [a, b) have not ended."""
        seg = self._state[a:b]
        return seg.count(QUEUED) + seg.count(RUNNING)

    def any_open(self, a: int, b: int) -> bool:
        """Whether any of items [a, b) has not ended."""
        seg = self._state[a:b]
        return seg.count(QUEUED) + seg.count(RUNNING) > 0

    def ok_items(self, a: int, b: int) -> list[int]:
        """The items of [a, b) that have a result (done or cached)."""
        flags = self._state[a:b].translate(_OK_TABLE)
        return [a + m.start() for m in re.finditer(rb"\x01", flags)]

    def cached_runs(self) -> list[list[int]]:
        """The runs [a, b) of consecutive items the cache served."""
        flags = self._state.replace(bytes([CACHED]), b"\xff")
        return [list(m.span()) for m in re.finditer(rb"\xff+", flags)]

    def open_runs(self) -> list[tuple[int, int]]:
        """The runs [a, b) of consecutive items that have not ended."""
        flags = self._state.translate(_OPEN_TABLE)
        return [m.span() for m in re.finditer(rb"\x01+", flags)]

    def finish(self) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.finished_at = self.clock()
            self._done.set()
        self._notify()

    # Listeners ------------------------------------------------------------------
    def add_listener(self, fn: Callable[[], None]) -> None:
        """``fn()`` is called (from a worker thread) whenever items end."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in list(self._listeners):
            try:
                fn()
            except Exception as exc:  # a listener's bug must not stop the job
                self.listener_error = exc
                log.exception("a listener of job %s failed", self.job_id)


class _HostSeen:
    """What the host saw of one task, read and written like a dict: ``host_submit``,
    ``host_start_seen``, ``host_seen``, ``host_fetched`` and ``attempts`` in slots (a job
    keeps one per task for its life: at one task per item a dict each was most of the
    host's memory per task), rarer keys (``sent``, ``backup_s``, ``backups``) in a dict."""

    __slots__ = ("host_submit", "host_start_seen", "host_seen", "host_fetched", "attempts", "rare")
    _SLOTS = frozenset(__slots__[:-1])

    def __init__(self) -> None:
        self.host_submit = self.host_start_seen = self.host_seen = self.host_fetched = _UNSET
        self.attempts: Any = _UNSET
        self.rare: dict[str, Any] | None = None

    def get(self, key: str, default: Any = None) -> Any:
        if key in self._SLOTS:
            value = getattr(self, key)
            return default if value is _UNSET else value
        return default if self.rare is None else self.rare.get(key, default)

    def __contains__(self, key: str) -> bool:
        return self.get(key, _UNSET) is not _UNSET

    def __getitem__(self, key: str) -> Any:
        value = self.get(key, _UNSET)
        if value is _UNSET:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._SLOTS:
            setattr(self, key, value)
        else:
            if self.rare is None:
                self.rare = {}
            self.rare[key] = value

    def setdefault(self, key: str, value: Any) -> Any:
        current = self.get(key, _UNSET)
        if current is _UNSET:
            self[key] = value
            return value
        return current

    def update(self, **values: Any) -> None:
        for key, value in values.items():
            self[key] = value


_UNSET: Any = object()
_NO_HOST = _HostSeen()  # read-only stand-in for a task the host has no record of

# The key layouts shared by every packed document with the same keys and value kinds (a
# status's stats, its columns: a few shapes per job), bounded in case of documents of
# ever-new keys.
_LAYOUTS: dict[tuple[Any, ...], tuple[tuple[str, ...], tuple[bool, ...]]] = {}
_LAYOUTS_MAX = 4096


def _packed(doc: dict[str, Any]) -> tuple[Any, ...]:
    """``doc`` (decoded JSON, kept for the job's life) as ``(layout, floats, *others)``:
    its float values in one ``array('d')`` (8 bytes each instead of a 24-byte object and
    a slot), the rest in order, dicts in it packed the same way, and the layout (its keys,
    which are floats) shared with every document of the same shape. JSON decoding makes
    new key strings, a new dict and a float object per value for every status, and at one
    status per item (chunksize 1) those were most of the host's memory per task. Dicts
    keyed by item numbers (a task's errors, flops, stdout) stay dicts: their keys differ
    from task to task. ``_unpacked`` gives the dict back."""
    values = list(doc.values())
    kinds = tuple(type(v) is float for v in values)
    shape = (*doc, *kinds)
    layout = _LAYOUTS.get(shape)
    if layout is None:
        layout = (tuple(k if k.isdigit() else sys.intern(k) for k in doc), kinds)
        if len(_LAYOUTS) < _LAYOUTS_MAX:
            _LAYOUTS[shape] = layout
    floats = array.array("d", [v for v, f in zip(values, kinds) if f]) if any(kinds) else None
    return (layout, floats, *[(_packed(v) if type(v) is dict and not _numbered(v) else v)
                              for v, f in zip(values, kinds) if not f])


def _numbered(doc: dict[str, Any]) -> bool:
    return any(k.isdigit() for k in doc)


def _unpacked(packed: tuple[Any, ...] | None) -> dict[str, Any]:
    """The dict ``_packed`` made ``packed`` from (empty for None)."""
    if not packed:
        return {}
    (keys, kinds), floats, *others = packed
    fl, ot = iter(floats or ()), iter(others)
    return {k: next(fl) if f else (_unpacked(v) if type(v := next(ot)) is tuple else v)
            for k, f in zip(keys, kinds)}
