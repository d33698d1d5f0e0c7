"""A running job: its futures, its dispatch plan and its completion logic.

The job turns backend callbacks (or, for backends that cannot call back, the
statuses found in storage) into finished futures. Storage is the source of
truth: a future finishes only from a stored status, and a failure the host
detects is stored first (first write wins, so a late real result beats it).
"""
from __future__ import annotations

import base64
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
from .futures import TaskFuture, get_result, wait
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
_DONE_STATES = frozenset({"FINISHED", "CANCELLED", "CANCELLED_AND_NOTIFIED"})

_gc_lock = threading.Lock()
_gc_depth = 0
_gc_we_disabled = False


class _gc_paused:
    """Pause the cyclic GC while creating or finishing many futures at once.

    Each future is a handful of GC-tracked objects; with tens of thousands of
    them alive, collections triggered in the middle of a bulk loop rescan all of
    them and cost more than the loop itself. Re-enabled (if it was enabled) when
    the last concurrent user leaves."""

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
    """A list of ``TaskFuture`` (one per input item) with ``job_id``, ``cancel()`` and ``stats``."""

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
        with _gc_paused():
            self.futures = [TaskFuture(job_id, i) for i in range(len(payloads))]
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
        self._done_cursor = 0  # every future before it is done (see _maybe_finish)
        self._values = [None] * len(self.futures)  # results as set, for result()
        self._n_ok = 0  # how many futures got their result through _apply_item
        if not self.futures:
            self._finish()

    # Sequence protocol ----------------------------------------------------
    def __getitem__(self, i):
        return self.futures[i]

    def __len__(self):
        return len(self.futures)

    def __repr__(self):
        c = self.counts()
        return (f"<Job {self.job_id} {self.function_name} {len(self)} tasks: "
                + ", ".join(f"{v} {k}" for k, v in c.items() if v) + ">")

    # Public API -------------------------------------------------------------
    def result(self, timeout=None) -> list:
        """All results in input order; raises the first failure."""
        # The job's own done event instead of cf.wait(), which would lock and
        # unlock every one of the (possibly 10,000s of) futures twice.
        if not self._done_event.wait(timeout):
            return get_result(self.futures, timeout=0)  # raises the usual TimeoutError
        with self._lock:
            if self._n_ok == len(self.futures):  # every future got its value from us
                return list(self._values)
        return [f.result() for f in self.futures]

    def results(self, timeout=None) -> list:
        """All outcomes in input order: a result, or the exception the task ended with."""
        wait(self.futures, timeout=timeout)
        out = []
        for f in self.futures:
            if f.cancelled():
                out.append(cf.CancelledError(f"job {self.job_id} was cancelled"))
            elif not f.done():
                out.append(cf.TimeoutError(f"task {f.index} had not finished"))
            else:
                out.append(f.exception() if f.exception() is not None else f.result())
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
        n = 0
        for f in self.futures:
            if not f.done():
                if f.cancel():
                    # Moves CANCELLED to CANCELLED_AND_NOTIFIED, which is what wait() counts as done.
                    f.set_running_or_notify_cancel()
                else:  # already running: end it as cancelled anyway
                    try:
                        f.set_exception(cf.CancelledError(f"job {self.job_id} was cancelled"))
                    except cf.InvalidStateError:
                        continue
                n += 1
        self._finish()
        return n

    def counts(self) -> dict:
        c = {"queued": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0}
        for f in self.futures:
            c[f.state] += 1
        c["retried"] = self.retried
        c["throttled"] = self.throttled
        return c

    @property
    def stats(self) -> dict:
        """Counts, timings, FLOPs, storage requests and an estimated Lambda cost."""
        c = self.counts()
        end = self.finished_at or time.time()
        elapsed = end - self.created
        ended = c["done"] + c["failed"]
        flops = sum(f.stats.get("flops", 0) or 0 for f in self.futures)
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
                for f in self.futures[start:start + n]:
                    f.task_id = tid
                    f.stats["host_submit"] = event["host_submit"]
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
        now = time.time()
        start, stop = protocol.task_range(event["task"])
        for f in self.futures[start:stop]:
            f.stats.setdefault("host_start_seen", now)
            # Only a pending future moves to running (a retry finds it running
            # already). Reading the state without its lock saves two lock round
            # trips per item; only this method makes a future running, and a
            # future cancelled meanwhile is what set_running_or_notify_cancel()
            # expects anyway.
            if f._state == _PENDING:
                f.set_running_or_notify_cancel()

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
        start, stop = protocol.task_range(tid)
        record = {"type": type(error).__name__, "kind": error.kind, "message": str(error),
                  "traceback": ""}
        status = {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "task": tid, "state": "error",
            "attempt": event.get("attempt", 0), "written_by": "host",
            "infra": {"kind": error.kind, "message": str(error)},
            "items": [{"i": i, "ok": False, "error": record} for i in range(start, stop)],
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
            self._batcher.record(len(status["items"]), st["compute_done"] - st["worker_start"])
        self._dispatch_more()
        self._maybe_finish()

    def _apply_status(self, status: dict, host_seen: float) -> None:
        tid = status["task"]
        st = status.get("stats", {})
        with self._lock:
            self._task_stats[tid] = st
            self._worker_requests.update(st.get("requests", {}))
        if "infra" in status:
            outcomes = [(False, None)] * len(status["items"])
        else:
            outcomes = read_results(self.storage, self.prefix, self.job_id, status)
        fetched = time.time()
        attempts = status.get("attempt", 0) + 1
        common = {  # the task's share of every item's stats, built once per task
            "worker_start": st.get("worker_start"), "setup_done": st.get("setup_done"),
            "result_stored": st.get("result_stored"), "host_seen": host_seen,
            "host_fetched": fetched, "cold_start": st.get("cold_start"),
            "peak_mem_mb": st.get("peak_mem_mb"),
        }
        with _gc_paused():
            self._apply_items(status, tid, st, outcomes, attempts, common)
        for fn in list(self._listeners):
            try:
                fn(self)
            except Exception:
                pass

    def _apply_items(self, status, tid, st, outcomes, attempts, common) -> None:
        futures, values, n_ok = self.futures, self._values, 0
        try:
            for rec, (ok, value) in zip(status["items"], outcomes):
                n_ok += self._apply_item(rec, ok, value, status, tid, st, attempts, common,
                                         futures, values)
        finally:
            with self._lock:
                self._n_ok += n_ok

    def _apply_item(self, rec, ok, value, status, tid, st, attempts, common, futures, values) -> int:
        """Finish one item's future; 1 if it got its value (counted for result())."""
        f = futures[rec["i"]]
        f.task_id = tid
        f.attempts = attempts
        f.stdout = rec.get("stdout", "")
        stats = f.stats
        stats["host_submit"] = st.get("host_submit", stats.get("host_submit"))
        stats.update(common)
        stats["compute_start"] = rec.get("t0")
        stats["compute_done"] = rec.get("t1")
        stats["flops"] = rec.get("flops", 0)
        if ok:
            try:
                f.set_result(value)
            except cf.InvalidStateError:  # already ended (cancelled)
                pass
            else:
                values[f.index] = value
                return 1
            return 0
        if f.done():
            return 0
        err = rec.get("error", {})
        f.error_info = err
        if "infra" in status:
            cls = INFRA_ERRORS.get(status["infra"]["kind"], InfrastructureError)
            exc = cls(status["infra"]["message"], tid)
        else:
            exc = value if isinstance(value, BaseException) else RemoteError(
                err.get("type", "Exception"), err.get("message", ""), err.get("traceback", ""))
            if err.get("traceback"):
                exc.__cause__ = RemoteTraceback(err["traceback"])
        try:
            f.set_exception(exc)
        except cf.InvalidStateError:
            pass
        return 0

    def _maybe_finish(self) -> None:
        # Futures never become undone, so a cursor past the done prefix makes
        # this amortised O(1) per task instead of O(tasks) (O(N^2) per job).
        # The state is read without each future's lock (a future never leaves
        # a done state); the last step re-checks with done() under its lock.
        futures, i, n = self.futures, self._done_cursor, len(self.futures)
        while i < n and futures[i]._state in _DONE_STATES:
            i += 1
        while i < n and futures[i].done():
            i += 1
        self._done_cursor = i
        if i == len(futures):
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
        missing = [f.index for f in self.futures if not f.done()]
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

