"""A running job: its items' outcomes, its futures, its dispatch plan and its completion logic.

The job turns backend callbacks (or, for backends that cannot call back, the
statuses found in storage) into ended items and finished futures. Storage is
the source of truth: an item ends only from a stored status, and a failure the
host detects is stored first (first write wins, so a late real result beats it).
"""
from __future__ import annotations

import base64
import bisect
import collections.abc
import concurrent.futures as cf
import gc
import json
import threading
import time

from . import protocol, serialize
from .batching import AutoBatcher
from .errors import (INFRA_ERRORS, InfrastructureError, LostInvocationError, RemoteError,
                     RemoteTraceback, TaskTimeoutError)
from .storage import CountingView
from .futures import TaskFuture
from .worker import read_results

# AWS Lambda list prices (x86, us-east-1) used for cost estimates.
LAMBDA_GB_SECOND_USD = 0.0000166667
LAMBDA_REQUEST_USD = 0.20 / 1_000_000
S3_PUT_USD = 0.005 / 1000
S3_GET_USD = 0.0004 / 1000


_pool = None
_pool_lock = threading.Lock()


def _fetch_pool() -> cf.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ThreadPoolExecutor(max_workers=16, thread_name_prefix="cloudbutton-fetch")
        return _pool


_PENDING = "PENDING"  # concurrent.futures' state name of a future not yet running
assert getattr(cf._base, "PENDING", _PENDING) == _PENDING

# An item's state, one byte each in ``Job._state``. Items only move forward
# (queued -> running -> an end state) and an end state is final.
QUEUED, RUNNING, DONE, FAILED, CANCELLED, CANCELLED_RUNNING = range(6)
STATE_NAMES = ("queued", "running", "done", "failed", "cancelled", "cancelled")
_TO_RUNNING = (bytes([QUEUED]), bytes([RUNNING]))
# cancel(): queued items end cancelled, running ones cancelled while running.
_CANCEL_TABLE = bytes([CANCELLED, CANCELLED_RUNNING, DONE, FAILED, CANCELLED, CANCELLED_RUNNING])
_CANCEL_TABLE += bytes(range(len(_CANCEL_TABLE), 256))

_FINAL_FUTURE_STATES = frozenset({"FINISHED", "CANCELLED_AND_NOTIFIED"})
_cancel_sync_lock = threading.RLock()

_gc_lock = threading.Lock()
_gc_depth = 0
_gc_we_disabled = False


class _gc_paused:
    """Pause the cyclic GC while allocating many objects at once.

    With tens of thousands of GC-tracked objects alive, collections triggered
    in the middle of a bulk loop rescan all of them and cost more than the loop
    itself. Re-enabled (if it was enabled) when the last concurrent user leaves."""

    def __enter__(self):
        global _gc_depth, _gc_we_disabled
        with _gc_lock:
            if _gc_depth == 0 and gc.isenabled():
                gc.disable()
                _gc_we_disabled = True
            _gc_depth += 1

    def __exit__(self, *exc):
        global _gc_depth, _gc_we_disabled
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_we_disabled:
                _gc_we_disabled = False
                gc.enable()
        return False


class Job(collections.abc.Sequence):
    """A list of ``TaskFuture`` (one per input item) with ``job_id``, ``cancel()`` and ``stats``.

    Outcomes live in the job (one state byte and one value per item); the
    future of an item is made when someone first asks for it and kept in step
    from then on. A job of 10,000 tiny items thus costs no 10,000 futures (each
    with its own lock and condition) unless they are used, and ``result()``
    hands back the values it already holds.
    """

    def __init__(self, *, job_id, backend, storage, prefix, function_key, function_name,
                 payloads, chunksize, timeout, retries, memory_mb, auto_target_s, concurrency,
                 label=None, reduce=None):
        self.job_id = job_id
        self.backend = backend
        self.storage = CountingView(storage)  # counts this job's host requests
        self.prefix = prefix
        self.function_key = function_key
        self.function_name = function_name
        self.label = label
        self.timeout = timeout
        self.retries = retries
        self.memory_mb = memory_mb
        self.chunksize = chunksize
        self._n = n = len(payloads)
        self._state = bytearray(n)  # QUEUED .. CANCELLED_RUNNING per item
        self._values: list = [None] * n  # a result, or the exception a failed item raises
        self._n_ended = 0
        self._futs: dict[int, TaskFuture] = {}  # the futures made so far
        self._task_starts: list[int] = []  # sorted first items of the known tasks
        self._task_at: dict[int, tuple[str, int]] = {}  # first item -> (task id, stop)
        self._task_host: dict[str, dict] = {}  # task id -> host-side times and attempts
        self._task_items: dict[str, dict] = {}  # task id -> the status's item columns
        self._error_info: dict[int, dict] = {}  # item -> type, message, traceback of its failure
        self._flops = 0.0
        self._ended_log: list[tuple[str | None, int, int]] = []  # see ended_tasks()
        self.created = time.time()
        self.finished_at: float | None = None
        self.cancelled = False
        self.retried = 0
        self.throttled = 0
        self._payloads = payloads
        self._storage_desc = storage.describe()
        self._reduce = reduce
        self._lock = threading.RLock()
        self._next_item = 0
        self._inflight: dict[str, dict] = {}  # task id -> event
        self._attempts: dict[str, int] = {}
        self._clock_start: dict[str, float] = {}  # task id -> when its deadline clock started
        self._backups: dict[str, int] = {}  # task id -> backup invocations sent (presumed lost)
        self._task_stats: dict[str, dict] = {}
        self._worker_requests = collections.Counter()
        self._data_offsets: list[int] | None = None
        self._data_uploaded = False
        self._batcher = AutoBatcher(auto_target_s, concurrency) if chunksize == "auto" else None
        self._window = max(2, 2 * concurrency)
        self._done_event = threading.Event()
        self.attached = False  # re-attached from storage: statuses are polled, nothing dispatched
        self._deadline: float | None = None
        self.monitor_error: Exception | None = None
        self._listeners: list = []
        if not n:
            self._finish()

    # Sequence protocol ----------------------------------------------------
    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._future(k) for k in range(*i.indices(self._n))]
        k = i + self._n if i < 0 else i
        if not 0 <= k < self._n:
            raise IndexError(f"job {self.job_id} has {self._n} tasks, no task {i}")
        return self._future(k)

    def __len__(self):
        return self._n

    def __iter__(self):
        return iter(self.futures)

    def __repr__(self):
        c = self.counts()
        return (f"<Job {self.job_id} {self.function_name} {len(self)} tasks: "
                + ", ".join(f"{v} {k}" for k, v in c.items() if v) + ">")

    @property
    def futures(self) -> list[TaskFuture]:
        """Every item's future, in input order (made now if not yet)."""
        with self._lock:
            missing = [i for i in range(self._n) if i not in self._futs] \
                if len(self._futs) < self._n else []
            with _gc_paused():
                for i in missing:
                    self._futs[i] = TaskFuture(self, i)
            futs = self._futs
        for i in missing:
            self._sync(futs[i])
        return [futs[i] for i in range(self._n)]

    # Public API -------------------------------------------------------------
    def result(self, timeout=None) -> list:
        """All results in input order; raises the first failure."""
        if not self._done_event.wait(timeout):
            raise cf.TimeoutError(f"{self._n - self._n_ended} of {self._n} tasks not done "
                                  f"after {timeout} s")
        state = self._state
        if state.count(DONE) == self._n:
            return list(self._values)
        first = next(i for i, s in enumerate(state) if s != DONE)
        return self._future(first).result()  # raises what that item ended with

    def results(self, timeout=None) -> list:
        """All outcomes in input order: a result, or the exception the task ended with."""
        self._done_event.wait(timeout)
        out = []
        for i, s in enumerate(self._state):
            if s == DONE or s == FAILED:
                out.append(self._values[i])
            elif s >= CANCELLED:
                out.append(cf.CancelledError(f"job {self.job_id} was cancelled"))
            else:
                out.append(cf.TimeoutError(f"task {i} had not finished"))
        return out

    def wait(self, timeout=None) -> bool:
        """Block until every task has ended; False on timeout."""
        return self._done_event.wait(timeout)

    def done(self) -> bool:
        return self._done_event.is_set()

    def add_listener(self, fn) -> None:
        """``fn(job)`` is called (from a worker thread) whenever a task ends."""
        self._listeners.append(fn)

    def cancel(self) -> int:
        """Stop the job: no more invocations, running workers told to stop.
        Returns the number of tasks cancelled."""
        with self._lock:
            if self.cancelled or self.done():
                return 0
            self.cancelled = True
            self._inflight.clear()
        try:
            self.storage.put(protocol.cancel_key(self.prefix, self.job_id), b"cancelled")
        finally:
            self.backend.cancel_job(self.job_id)
        with self._lock:
            state = self._state
            n = state.count(QUEUED) + state.count(RUNNING)
            state[:] = state.translate(_CANCEL_TABLE)
            self._n_ended += n
            self._ended_log.append((None, 0, self._n))
            futs = list(self._futs.values())
        for f in futs:
            self._sync(f)
        self._finish()
        return n

    def counts(self) -> dict:
        state = self._state
        return {"queued": state.count(QUEUED), "running": state.count(RUNNING),
                "done": state.count(DONE), "failed": state.count(FAILED),
                "cancelled": state.count(CANCELLED) + state.count(CANCELLED_RUNNING),
                "retried": self.retried, "throttled": self.throttled}

    @property
    def stats(self) -> dict:
        """Counts, timings, FLOPs, storage requests and an estimated Lambda cost."""
        c = self.counts()
        end = self.finished_at or time.time()
        elapsed = end - self.created
        ended = c["done"] + c["failed"]
        flops = self._flops
        with self._lock:
            task_stats = list(self._task_stats.values())
            worker_req = dict(self._worker_requests)
            host_req = dict(self.storage.counts)
        total_req = sum(worker_req.values()) + sum(host_req.values())
        gb_s = sum(max(0.001, (t.get("result_stored") or 0) - (t.get("worker_start") or 0))
                   for t in task_stats if t.get("worker_start")) * (self.memory_mb or 1024) / 1024
        puts = worker_req.get("PUT", 0) + host_req.get("PUT", 0)
        gets = total_req - puts
        cost = (gb_s * LAMBDA_GB_SECOND_USD + len(task_stats) * LAMBDA_REQUEST_USD
                + puts * S3_PUT_USD + gets * S3_GET_USD)
        rate = ended / elapsed if elapsed > 0 else 0.0
        remaining = len(self) - ended - c["cancelled"]
        return {
            "job_id": self.job_id, "backend": self.backend.name, "function": self.function_name,
            "tasks": len(self), "invocations": len(task_stats), **c,
            "elapsed_s": elapsed, "tasks_per_s": rate,
            "eta_s": (remaining / rate) if rate > 0 and remaining else (0.0 if not remaining else None),
            "flops": flops, "gflops": flops / elapsed / 1e9 if elapsed > 0 else 0.0,
            "requests": {"host": host_req, "workers": worker_req, "total": total_req,
                         "per_task": total_req / len(self) if len(self) else 0.0},
            "gb_seconds": gb_s, "cost_usd": cost,
        }

    def ended_tasks(self, since: int = 0) -> list[tuple[str | None, int, int]]:
        """What ended, in order, from position ``since`` of the log on: ``(task id, first
        item, stop)`` when a task's status was applied, ``(None, 0, len)`` for cancel().
        Progress views follow a job with it instead of a callback per future."""
        with self._lock:
            return self._ended_log[since:]

    def task_ids(self) -> list[str]:
        """The tasks (invocations) known so far, in item order."""
        with self._lock:
            return [self._task_at[a][0] for a in self._task_starts]

    # One item, without making its future ------------------------------------
    def item_state(self, i: int) -> str:
        """queued, running, done, failed or cancelled."""
        return STATE_NAMES[self._state[i]]

    def item_task(self, i: int) -> str | None:
        """The task (invocation) that runs or ran item ``i``; None while it is queued."""
        starts = self._task_starts
        k = bisect.bisect_right(starts, i) - 1
        if k < 0:
            return None
        tid, stop = self._task_at[starts[k]]
        return tid if i < stop else None

    def item_stats(self, i: int) -> dict:
        """Item ``i``'s timestamps (see ``TaskFuture.stats``)."""
        tid = self.item_task(i)
        if tid is None:
            return {}
        host = self._task_host.get(tid) or {}
        out = {"host_submit": host.get("host_submit")}
        if "host_start_seen" in host:
            out["host_start_seen"] = host["host_start_seen"]
        st = self._task_stats.get(tid)
        if not st:  # not (completely) collected yet
            return out
        out.update(worker_start=st.get("worker_start"), setup_done=st.get("setup_done"),
                   result_stored=st.get("result_stored"), host_seen=host.get("host_seen"),
                   host_fetched=host.get("host_fetched"), cold_start=st.get("cold_start"),
                   peak_mem_mb=st.get("peak_mem_mb"), compute_start=None, compute_done=None,
                   flops=0)
        cols = self._task_items.get(tid) or {}
        t0, t1 = cols.get("t0_us"), cols.get("t1_us")
        k = i - protocol.task_range(tid)[0]
        if t0 and t1 and k < len(t0):
            base = cols.get("base") or 0.0
            out["compute_start"] = base + t0[k] / 1e6
            out["compute_done"] = base + t1[k] / 1e6
        out["flops"] = (cols.get("flops") or {}).get(str(i), 0)
        return out

    def item_stdout(self, i: int) -> str:
        tid = self.item_task(i)
        cols = self._task_items.get(tid) if tid else None
        return (cols.get("stdout") or {}).get(str(i), "") if cols else ""

    def item_error_info(self, i: int) -> dict | None:
        """Type, message and traceback of item ``i``'s failure; None if it did not fail."""
        return self._error_info.get(i)

    def item_attempts(self, i: int) -> int:
        tid = self.item_task(i)
        return (self._task_host.get(tid) or {}).get("attempts", 0) if tid else 0

    # Futures, made on demand and kept in step with the item states ------------
    def _future(self, i: int) -> TaskFuture:
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

    def _futures_in(self, a: int, b: int) -> list:
        """The futures made so far for items [a, b) (call with the lock held)."""
        futs = self._futs
        if not futs:
            return []
        if b - a > len(futs):
            return [f for i, f in futs.items() if a <= i < b]
        return [futs[i] for i in range(a, b) if i in futs]

    def _sync(self, f: TaskFuture) -> None:
        """Bring a future to its item's state (idempotent; safe from any thread)."""
        i = f.index
        s = self._state[i]
        if s == QUEUED:
            return
        if f._state in _FINAL_FUTURE_STATES:
            return
        try:
            if s == RUNNING:
                if f._state == _PENDING:
                    f.set_running_or_notify_cancel()
            elif s == DONE:
                f.set_result(self._values[i])
            elif s == FAILED:
                f.set_exception(self._values[i])
            elif s == CANCELLED and f._state != "RUNNING":
                # cancel() then the notify: two steps, which two threads must not interleave.
                with _cancel_sync_lock:
                    if f.cancel() and f._state == "CANCELLED":
                        f.set_running_or_notify_cancel()  # -> CANCELLED_AND_NOTIFIED, as wait() needs
            else:  # cancelled while running
                f.set_exception(cf.CancelledError(f"job {self.job_id} was cancelled"))
        except (cf.InvalidStateError, RuntimeError):
            pass  # another thread brought it there first

    def _add_task(self, tid: str) -> None:
        """Record which items a task covers (call with the lock held)."""
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

    # Dispatch ---------------------------------------------------------------
    def _start(self) -> None:
        self._write_manifest()
        self._dispatch_more()

    def _write_manifest(self) -> None:
        from . import __version__

        manifest = {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "created": self.created,
            "backend": self.backend.name, "function": self.function_name,
            "function_key": self.function_key, "label": self.label, "n_items": len(self),
            "chunksize": self.chunksize, "timeout": self.timeout, "memory_mb": self.memory_mb,
            "retries": self.retries, "executor_version": __version__,
        }
        self.storage.put(protocol.manifest_key(self.prefix, self.job_id),
                         json.dumps(manifest, indent=1).encode())

    def _plan_sizes(self) -> list[int]:
        """Sizes of the invocations to send now."""
        with self._lock:
            remaining = len(self) - self._next_item
            if remaining <= 0 or self.cancelled:
                return []
            if self._batcher is None:
                sizes = [min(self.chunksize, remaining - k)
                         for k in range(0, remaining, self.chunksize)]
                # Backends without their own queue (Lambda) get only about their concurrency
                # at once, so an invocation's deadline clock starts when it can really run.
                cap = getattr(self.backend, "max_inflight", None)
                if cap:
                    sizes = sizes[:max(0, cap - len(self._inflight))]
                return sizes
            sizes = []
            free = self._window - len(self._inflight)
            while free > 0 and remaining > 0:
                n = self._batcher.next_size(remaining)
                sizes.append(n)
                remaining -= n
                free -= 1
            return sizes

    def _dispatch_more(self) -> None:
        events = []
        with self._lock:
            for n in self._plan_sizes():
                start = self._next_item
                self._next_item += n
                tid = protocol.task_id(start, start + n)
                event = self._event(tid, start, start + n)
                self._inflight[tid] = event
                self._attempts[tid] = 0
                self._add_task(tid)
                self._task_host[tid] = {"host_submit": event["host_submit"]}
                events.append(event)
        if events:
            self.backend.invoke(events, self)

    def _event(self, tid, start, stop) -> dict:
        if self._reduce is not None:
            data = {"offsets": [0, 0], "inline": ""}
        else:
            blobs = self._payloads[start:stop]
            size = sum(len(b) for b in blobs)
            if size <= protocol.INLINE_EVENT_BYTES:
                offs = [0]
                for b in blobs:
                    offs.append(offs[-1] + len(b))
                data = {"inline": base64.b64encode(serialize.join(blobs)).decode(), "offsets": offs}
            else:
                base = self._ensure_data_uploaded()
                data = {"key": protocol.data_key(self.prefix, self.job_id),
                        "start": base[start], "stop": base[stop],
                        "offsets": [base[i] - base[start] for i in range(start, stop + 1)]}
        event = {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "prefix": self.prefix,
            "storage": self._storage_desc, "function_key": self.function_key,
            "task": tid, "data": data, "host_submit": time.time(), "attempt": 0,
            "timeout": self._invocation_timeout(stop - start), "memory_mb": self.memory_mb,
        }
        if self._reduce is not None:
            event["reduce"] = self._reduce
        return event

    def _invocation_timeout(self, n_items: int) -> float:
        # ``timeout`` is per item; a batch gets the sum, capped by the backend (Lambda: 900 s).
        cap = getattr(self.backend, "max_timeout", None)
        t = self.timeout * n_items
        return min(t, cap) if cap else t

    def _ensure_data_uploaded(self) -> list[int]:
        with self._lock:
            if not self._data_uploaded:
                offs = [0]
                for b in self._payloads:
                    offs.append(offs[-1] + len(b))
                key = protocol.data_key(self.prefix, self.job_id)
                if hasattr(self.storage.inner, "put_parts"):  # no joined copy of all inputs
                    self.storage.put_parts(key, serialize.flatten(self._payloads))
                else:
                    self.storage.put(key, serialize.join(self._payloads))
                self._data_offsets = offs
                self._data_uploaded = True
            return self._data_offsets

    # Backend listener -----------------------------------------------------
    def on_start(self, event) -> None:
        tid = event["task"]
        a, b = protocol.task_range(tid)
        with self._lock:
            self._task_host.setdefault(tid, {}).setdefault("host_start_seen", time.time())
            # Only queued items move to running (a retry finds them running already).
            self._state[a:b] = self._state[a:b].replace(*_TO_RUNNING)
            futs = self._futures_in(a, b)
        for f in futs:
            self._sync(f)

    def on_done(self, event, response) -> None:
        if response.get("state") == "cancelled" or self.cancelled:
            return
        self._collect(event["task"], host_seen=time.time())

    def on_failure(self, event, error: InfrastructureError) -> None:
        if self.cancelled:
            return
        tid = event["task"]
        with self._lock:
            attempts = self._attempts.get(tid, 0)
            retry = attempts < self.retries and tid in self._inflight
            if retry:
                self._attempts[tid] = attempts + 1
                self.retried += 1
                self._clock_start.pop(tid, None)  # a retry gets a fresh deadline
        if retry:
            again = dict(event, attempt=attempts + 1, host_submit=time.time())
            again.pop("invoked_at", None)
            with self._lock:
                if tid in self._inflight:
                    self._inflight[tid] = again
            self.backend.invoke([again], self)
            return
        self._store_failure(event, error)
        self._collect(tid, host_seen=time.time())

    def _store_failure(self, event, error: InfrastructureError) -> None:
        tid = event["task"]
        status = {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "task": tid, "state": "error",
            "attempt": event.get("attempt", 0), "written_by": "host",
            "infra": {"type": type(error).__name__, "kind": error.kind, "message": str(error)},
            "items": {},  # every item failed with the infrastructure error
            "stats": {"host_submit": event.get("host_submit")},
        }
        self.storage.put_if_absent(protocol.status_key(self.prefix, self.job_id, tid),
                                   json.dumps(status).encode())

    # Completion -------------------------------------------------------------
    def _collect(self, tid: str, host_seen: float, status: dict | None = None) -> None:
        with self._lock:
            if tid in self._task_stats or (not self.attached and tid not in self._inflight):
                return  # a duplicate notice, or cancelled
            self._task_stats[tid] = {}  # claimed: applied once
        if status is None:
            status = json.loads(self.storage.get(protocol.status_key(self.prefix, self.job_id, tid)))
        with self._lock:
            self._inflight.pop(tid, None)
        self._apply_status(status, host_seen)
        if self._batcher is not None and "infra" not in status:
            st = status["stats"]
            a, b = protocol.task_range(tid)
            self._batcher.record(b - a, st["compute_done"] - st["worker_start"])
        self._dispatch_more()
        self._maybe_finish()

    def _apply_status(self, status: dict, host_seen: float) -> None:
        tid = status["task"]
        a, b = protocol.task_range(tid)
        st = status.get("stats", {})
        infra = status.get("infra")
        outcomes = None if infra else read_results(self.storage, self.prefix, self.job_id, status)
        fetched = time.time()
        errors = protocol.item_errors(status)
        cols = {} if infra else protocol.item_columns(status)
        with self._lock:
            self._add_task(tid)
            host = self._task_host.setdefault(tid, {})
            host.update(host_seen=host_seen, host_fetched=fetched, attempts=status.get("attempt", 0) + 1)
            if st.get("host_submit") is not None:
                host["host_submit"] = st["host_submit"]  # the attempt whose status won
            self._task_stats[tid] = st
            self._task_items[tid] = cols
            self._worker_requests.update(st.get("requests", {}))
            self._flops += sum((cols.get("flops") or {}).values())
            self._end_items(tid, a, b, outcomes, errors, infra)
            self._ended_log.append((tid, a, b))
            futs = self._futures_in(a, b)
        for f in futs:
            self._sync(f)
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:
                pass

    def _end_items(self, tid, a, b, outcomes, errors, infra) -> None:
        """Store the outcomes of items [a, b) that have not ended yet (lock held)."""
        state, values = self._state, self._values
        seg = state[a:b]
        n_open = seg.count(QUEUED) + seg.count(RUNNING)
        if not n_open:
            return
        if not errors and n_open == b - a:  # the usual case: every item succeeded, all at once
            values[a:b] = [v for _ok, v in outcomes]
            state[a:b] = bytes([DONE]) * (b - a)
            self._n_ended += b - a
            return
        for k, i in enumerate(range(a, b)):
            if state[i] > RUNNING:
                continue  # ended already (cancelled): the first end state stays
            self._n_ended += 1
            if i not in errors:
                values[i], state[i] = outcomes[k][1], DONE
                continue
            err = errors[i]
            self._error_info[i] = err
            if infra:
                exc = INFRA_ERRORS.get(infra.get("kind"), InfrastructureError)(infra.get("message", ""), tid)
                if infra.get("missing_module"):
                    exc.missing_module = infra["missing_module"]
                if infra.get("traceback"):
                    exc.__cause__ = RemoteTraceback(infra["traceback"])
            else:
                value = outcomes[k][1]
                exc = value if isinstance(value, BaseException) else RemoteError(
                    err.get("type", "Exception"), err.get("message", ""), err.get("traceback", ""))
                if err.get("traceback"):
                    exc.__cause__ = RemoteTraceback(err["traceback"])
            values[i], state[i] = exc, FAILED

    def _maybe_finish(self) -> None:
        if self._n_ended >= self._n:
            self._finish()

    def _finish(self) -> None:
        if not self._done_event.is_set():
            self.finished_at = time.time()
            self._done_event.set()
            for fn in list(self._listeners):
                try:
                    fn(self)
                except Exception:
                    pass

    # Storage polling (backends that cannot call back, and re-attached jobs) --
    def poll_storage(self) -> int:
        """Collect the statuses that appeared in storage; returns how many."""
        with self._lock:
            if not self._inflight and not self.attached:
                return 0
            pending = set(self._inflight)
            applied = set(self._task_stats)
        tasks_prefix = protocol.tasks_prefix(self.prefix, self.job_id)
        # Every task before the first pending one is collected: list only from there on
        # (one LIST page per poll instead of re-reading the whole job).
        start_after = tasks_prefix + min(pending) if pending and not self.attached else None
        keys = self.storage.list(tasks_prefix, start_after=start_after)
        seen = time.time()
        new = [tid for tid in map(protocol.task_id_from_status_key, keys)
               if tid and tid not in applied and (self.attached or tid in pending)]
        if len(new) > 1:
            # Fetch the new statuses concurrently: on S3 each GET is a round trip, and
            # one at a time they would cap how many tasks per second the host can see.
            key = lambda tid: protocol.status_key(self.prefix, self.job_id, tid)  # noqa: E731
            futs = [_fetch_pool().submit(self.storage.get, key(tid)) for tid in new]
            for tid, fut in zip(new, futs):
                self._collect(tid, host_seen=seen, status=json.loads(fut.result()))
        elif new:
            self._collect(new[0], host_seen=seen)
        return len(new)

    def attach_existing(self, deadline: float) -> None:
        """Follow a job started elsewhere (another kernel) through storage only."""
        self.attached = True
        self._deadline = deadline
        self._next_item = len(self)
        if self.storage.exists(protocol.cancel_key(self.prefix, self.job_id)):
            self.poll_storage()
            self.cancel()
            return
        self.poll_storage()

    def check_deadlines(self) -> None:
        """End invocations that can no longer finish (lost events, dead hosts)."""
        now = time.time()
        if self.attached:
            if self._deadline is not None and now > self._deadline and not self.done():
                self._end_uncovered_as_lost()
            return
        grace = getattr(self.backend, "deadline_grace_s", None)
        if grace is None:  # the backend enforces timeouts itself and always calls back
            return
        lost_after = getattr(self.backend, "lost_after_s", None)
        if lost_after is not None:
            self._send_backups(now, lost_after, grace)
        with self._lock:
            late = []
            for tid, e in self._inflight.items():
                start = self._clock_start.get(tid)
                if start is None:
                    # Backends that report acceptance (Lambda, after throttling) start the clock then.
                    start = e.get("invoked_at") if getattr(self.backend, "reports_invoked_at", False) \
                        else e["host_submit"]
                    if start is None:
                        continue  # not accepted yet: the backend bounds that wait itself
                    self._clock_start[tid] = start
                if now > start + e["timeout"] + grace:
                    late.append(e)
        for event in late:
            if lost_after is not None:
                # Lost events were already re-sent as backups: silence past the timeout
                # means the task ran too long or its runtime died.
                err = TaskTimeoutError(
                    f"task {event['task']} produced no result within the timeout of "
                    f"{event['timeout']:g} s (+ {grace:g} s grace): it ran too long, its runtime "
                    "died, or its invocations were lost", event["task"])
            else:
                err = LostInvocationError(
                    f"task {event['task']} produced no result within its timeout of "
                    f"{event['timeout']:g} s + {grace:g} s", event["task"])
            self.on_failure(event, err)

    def _send_backups(self, now: float, lost_after: float, grace: float) -> None:
        """Re-send invocations presumed lost (Lambda may drop async events; nothing tells us).

        An invocation is presumed lost when it has been silent for ``lost_after`` s plus
        twice the 90th percentile submit-to-stored time of this job's finished tasks. The backup
        is a new attempt of the same task: if the original was only slow, the first
        stored status wins and the other is ignored. Bounded by ``backend.redeliveries``,
        and spaced so that all of them fit before the task's deadline (backups don't move it).
        """
        budget = getattr(self.backend, "redeliveries", 0)
        backups = []
        with self._lock:
            if not self._inflight or self.cancelled:
                return
            latencies = [st["result_stored"] - st["host_submit"] for st in self._task_stats.values()
                         if st.get("result_stored") and st.get("host_submit")]
            if not latencies:
                return  # nothing to compare with yet: the timeout deadline still applies
            latencies.sort()
            limit = lost_after + 2 * latencies[int(0.9 * (len(latencies) - 1))]
            for tid, e in list(self._inflight.items()):
                sent = e.get("invoked_at")
                wait = min(limit, max(lost_after, (e["timeout"] + grace) / (budget + 1)))
                if sent is None or now - sent < wait or self._backups.get(tid, 0) >= budget:
                    continue
                self._backups[tid] = self._backups.get(tid, 0) + 1
                self.retried += 1
                if tid not in self._clock_start:
                    self._clock_start[tid] = sent  # a backup does not extend the deadline
                again = dict(e, attempt=e.get("attempt", 0) + 1, host_submit=now)
                again.pop("invoked_at", None)
                self._inflight[tid] = again
                backups.append(again)
        if backups:
            self.backend.invoke(backups, self)

    def _end_uncovered_as_lost(self) -> None:
        missing = [i for i, s in enumerate(self._state) if s <= RUNNING]
        runs, start = [], None
        for k, i in enumerate(missing):
            if start is None:
                start = i
            if k + 1 == len(missing) or missing[k + 1] != i + 1:
                runs.append((start, i + 1))
                start = None
        for a, b in runs:
            tid = protocol.task_id(a, b)
            err = LostInvocationError(
                f"items {a}..{b - 1} of job {self.job_id} have no result and their deadline passed",
                tid)
            self._store_failure({"task": tid, "attempt": 0}, err)
            self._collect(tid, host_seen=time.time())

    def check_cancel_marker(self) -> bool:
        """Cancel the job if someone else (the Jupyter panel) wrote its cancel marker."""
        if self.done() or self.cancelled:
            return False
        marked = self.storage.exists(protocol.cancel_key(self.prefix, self.job_id))
        if marked:
            self.cancel()
        return marked

