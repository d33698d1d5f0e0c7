"""A running job as its user sees it: a list of futures, one per input item.

``Job`` is a thin facade over two parts: the ``OutcomeStore`` (what each item
ended with, and the futures view, made on demand) and the ``Dispatcher``
(what is sent to the backend and how each task ends). Neither knows the
other's internals; see ``outcomes.py`` and ``dispatch.py``.
"""
from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

from . import accounting, phases, serialize
from .backends.base import Backend
from .dispatch import Dispatcher, JobSpec
from .futures import TaskFuture
from .interrupt import cancel_on_interrupt
from .outcomes import OutcomeStore
from .storage import Storage


def new_job(spec: JobSpec, backend: Backend, storage: Storage,
            payloads: Sequence[serialize.Payload] | None,
            clock: Callable[[], float] = time.time) -> Job:
    """A job of ``spec`` on ``backend``: nothing is sent until ``job.dispatcher.start()``
    (or ``follow()`` for a job started elsewhere)."""
    store = OutcomeStore(spec.job_id, spec.n_items, clock)
    return Job(spec, store, Dispatcher(spec, store, backend, storage, payloads, clock))


class Job(Sequence[TaskFuture]):
    """A list of ``TaskFuture`` (one per input item) with ``job_id``, ``cancel()`` and ``stats``.

    ``result()``, ``results()``, ``counts()``, ``item_state(i)`` and ``ended_tasks()``
    read the outcomes without making futures; ``job[i]``, iteration, ``wait`` and
    ``as_completed`` make the futures they need.
    """

    def __init__(self, spec: JobSpec, store: OutcomeStore, dispatcher: Dispatcher):
        self.spec = spec
        self.outcomes = store
        self.dispatcher = dispatcher
        # The Executor that submitted it (re-runs go through it), weakly: a job must not keep
        # an executor alive, whose collection shuts it down (CloudPoolExecutor's ``del``).
        self._executor: weakref.ref[Any] | None = None
        self._shared: Any = None  # its out-of-band inputs (sharedbuffers.HostBuffers)
        store.job = self

    @property
    def executor(self) -> Any:
        return self._executor() if self._executor is not None else None

    @executor.setter
    def executor(self, ex: Any) -> None:
        self._executor = weakref.ref(ex) if ex is not None else None

    # What the job is -----------------------------------------------------------
    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def function_name(self) -> str:
        return self.spec.function_name

    @property
    def function_key(self) -> str:
        """Where the pickled function is stored (content-addressed)."""
        return self.spec.function_key

    @property
    def prefix(self) -> str:
        return self.spec.prefix

    @property
    def label(self) -> str | None:
        return self.spec.label

    @property
    def chunksize(self) -> int | str:
        return self.spec.chunksize

    @property
    def timeout(self) -> float:
        return self.spec.timeout

    @property
    def retries(self) -> int:
        return self.spec.retries

    @property
    def memory_mb(self) -> int:
        return self.spec.memory_mb

    @property
    def created(self) -> float:
        return self.spec.created

    @property
    def backend(self) -> Backend:
        return self.dispatcher.backend

    # How it goes ------------------------------------------------------------------
    @property
    def finished_at(self) -> float | None:
        return self.outcomes.finished_at

    @property
    def cancelled(self) -> bool:
        return self.dispatcher.cancelled

    @property
    def cancelled_at(self) -> float | None:
        """When the job was cancelled, as its cancel marker says (None if it was not)."""
        return self.dispatcher.cancelled_at

    @property
    def attached(self) -> bool:
        """Re-attached from storage: statuses are polled, nothing is dispatched."""
        return self.dispatcher.following

    @property
    def retried(self) -> int:
        return self.dispatcher.retried

    @property
    def throttled(self) -> int:
        return self.dispatcher.throttled

    @property
    def spending(self) -> dict[str, Any] | None:
        """With a budget: spent and projected USD, the budget, the pre-flight estimate
        (``{"invocations", "usd", "seconds", "source"}``) and why the budget stopped the job
        (``stopped``); None without a budget."""
        s = self.dispatcher.spending
        return None if s is None else s.figures()

    def time_breakdown(self) -> dict[str, Any]:
        """Where the time of the tasks ended so far went (``phases``): seconds of invoke/queue,
        cold start, function + input download, compute and result upload, summed."""
        b = phases.Breakdown()
        for stats, _attempt in self.outcomes.task_records():
            b.add(stats)
        return b.as_dict()

    @property
    def stop_reason(self) -> str | None:
        """Why the job stopped before its end other than a cancel (its budget)."""
        s = self.dispatcher.spending
        return None if s is None else s.stopped

    @property
    def backups_sent(self) -> int:
        """Backup invocations sent for slow or presumed-lost tasks."""
        return self.dispatcher.backups_sent

    @property
    def monitor_error(self) -> Exception | None:
        """The last error met while following the job, or else the last one a listener
        raised (both are also logged to the ``cloudbutton`` logger)."""
        return self.dispatcher.error or self.outcomes.listener_error

    # Sequence protocol ----------------------------------------------------
    @overload
    def __getitem__(self, i: int) -> TaskFuture: ...

    @overload
    def __getitem__(self, i: slice) -> list[TaskFuture]: ...

    def __getitem__(self, i: int | slice) -> TaskFuture | list[TaskFuture]:
        n = self.outcomes.n
        if isinstance(i, slice):
            return [self.outcomes.future(k) for k in range(*i.indices(n))]
        k = i + n if i < 0 else i
        if not 0 <= k < n:
            raise IndexError(f"job {self.job_id} has {n} tasks, no task {i}")
        return self.outcomes.future(k)

    def __len__(self) -> int:
        return self.outcomes.n

    def __iter__(self) -> Iterator[TaskFuture]:
        return iter(self.futures)

    def __repr__(self) -> str:
        c = self.counts()
        return (f"<Job {self.job_id} {self.function_name} {len(self)} tasks: "
                + ", ".join(f"{v} {k}" for k, v in c.items() if v) + ">")

    @property
    def futures(self) -> list[TaskFuture]:
        """Every item's future, in input order (made now if not yet)."""
        return self.outcomes.futures()

    # Waiting and results ------------------------------------------------------------
    def result(self, timeout: float | None = None) -> list[Any]:
        """All results in input order; raises the first failure. Ctrl-C cancels the job."""
        with cancel_on_interrupt(self):
            return self.outcomes.result(timeout)

    def results(self, timeout: float | None = None) -> list[Any]:
        """All outcomes in input order: a result, or the exception the task ended with."""
        with cancel_on_interrupt(self):
            return self.outcomes.results(timeout)

    def forget(self, i: int) -> None:
        """See ``OutcomeStore.forget``."""
        self.outcomes.forget(i)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every task has ended; False on timeout."""
        return self.outcomes.wait(timeout)

    def done(self) -> bool:
        return self.outcomes.done()

    def add_listener(self, fn: Callable[[Job], None]) -> None:
        """``fn(job)`` is called (from a worker thread) whenever tasks end."""
        self.outcomes.add_listener(lambda: fn(self))

    def cancel(self) -> int:
        """Stop the job: no more invocations, running workers told to stop.
        Returns the number of tasks cancelled."""
        return self.dispatcher.cancel()

    def hold_shared_buffers(self, buffers: Any) -> None:
        """Keep the job's out-of-band inputs (``sharedbuffers.HostBuffers``) while they may be
        read: freed when the job ends with no failed item, else when the job is released
        (a re-run of its failed items reads them again)."""
        self._shared = buffers
        store = self.outcomes

        def release() -> None:
            if store.done() and not store.counts()["failed"]:
                buffers.close()

        store.add_listener(release)
        release()

    def rerun_failed(self) -> Job | None:
        """Run this job's failed items again, into its own results: they become queued, a
        new job (its manifest says ``rerun_of`` this one) computes them with the same
        function and settings, and each ends here as it ends there. Returns that job, or
        None if no item failed."""
        ex = self.executor
        if ex is None:
            raise RuntimeError(f"job {self.job_id} has no executor of this process (shut down, "
                               "or the job was started elsewhere): attach it first "
                               "(Executor.attach)")
        if not self.done():
            raise RuntimeError(f"job {self.job_id} is still running: re-run its failed items "
                               "once it has ended")
        failed = [i for i in range(len(self)) if self.outcomes.item_state(i) == "failed"]
        if not failed:
            return None
        spec = self.spec
        payloads = self.dispatcher.item_payloads(failed)
        blob = self.dispatcher.function_blob()
        self.outcomes.reopen(failed)
        again: Job = ex._submit_blob(
            blob, spec.function_name, payloads,
            chunksize=spec.chunksize if isinstance(spec.chunksize, int) else 1,
            timeout=spec.timeout, retries=spec.retries, memory_mb=spec.memory_mb,
            label=spec.label, identity=spec.identity, cache=spec.cache,
            budget=spec.budget_usd, backups=spec.backups, rerun_of=spec.job_id)
        if self._shared is not None:  # the re-run reads the same out-of-band inputs
            again.hold_shared_buffers(self._shared)
        cursor = [0]
        lock = threading.Lock()

        def forward(rerun: Job) -> None:
            with lock:  # each ended item once, in order
                ended = rerun.ended_tasks(cursor[0])
                cursor[0] += len(ended)
                for _tid, a, b in ended:
                    for k in range(a, b):
                        self._take_rerun(failed[k], rerun, k)

        again.add_listener(forward)
        forward(again)  # what ended before the listener was added
        return again

    def _take_rerun(self, i: int, rerun: Job, k: int) -> None:
        """Item ``i`` of this job ends as item ``k`` of its re-run ended."""
        state = rerun.item_state(k)
        fut = rerun[k]
        if state in ("done", "cached"):
            self.outcomes.apply_outcome(i, True, fut.result(), None, rerun.item_stats(k),
                                        rerun.item_stdout(k))
            return
        exc = fut.exception()
        info = rerun.item_error_info(k) or {"type": type(exc).__name__, "message": str(exc)}
        self.outcomes.apply_outcome(i, False, exc, info, rerun.item_stats(k),
                                    rerun.item_stdout(k))

    # Progress -------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        return {**self.outcomes.counts(), "retried": self.retried, "throttled": self.throttled}

    @property
    def stats(self) -> dict[str, Any]:
        """Counts, timings, FLOPs, storage requests and the Lambda cost (``accounting``)."""
        c = self.counts()
        usage = accounting.Usage()
        last_stored = 0.0
        for st, attempt in self.outcomes.task_records():
            usage.add_task(st, attempt)
            last_stored = max(last_stored, st.get("result_stored") or st.get("compute_done") or 0.0)
        worker_req = dict(usage.requests)
        host_req = dict(self.dispatcher.storage.counts)
        usage.add_requests(host_req)
        total_req = sum(usage.requests.values())
        end = accounting.job_end(finished=self.done(), last_stored=last_stored,
                                 cancelled_at=self.cancelled_at if self.cancelled else None,
                                 now=self.finished_at or self.dispatcher.clock())
        figures = accounting.job_stats(
            n_items=len(self), counts=c, created=self.created, end=end, usage=usage,
            flops=self.outcomes.flops, memory_mb=self.memory_mb,
            architecture=self.backend.limits.architecture)
        return {
            "job_id": self.job_id, "backend": self.backend.name, "function": self.function_name,
            "tasks": len(self), "invocations": usage.tasks,
            "billed_invocations": usage.invocations, "backups": self.backups_sent, **c, **figures,
            "requests": {"host": host_req, "workers": worker_req, "total": total_req,
                         "per_task": total_req / len(self) if len(self) else 0.0},
        }

    def ended_tasks(self, since: int = 0) -> list[tuple[str | None, int, int]]:
        """What ended, in order, from position ``since`` of the log on: ``(task id, first
        item, stop)`` when a task's status was applied, ``(None, 0, len)`` for cancel().
        Progress views follow a job with it instead of a callback per future."""
        return self.outcomes.ended_tasks(since)

    def task_ids(self) -> list[str]:
        """The tasks (invocations) known so far, in item order."""
        return self.outcomes.task_ids()

    # One item, without making its future ------------------------------------
    def item_state(self, i: int) -> str:
        """queued, running, done, failed or cancelled."""
        return self.outcomes.item_state(i)

    def item_task(self, i: int) -> str | None:
        return self.outcomes.item_task(i)

    def item_stats(self, i: int) -> dict[str, Any]:
        return self.outcomes.item_stats(i)

    def item_stdout(self, i: int) -> str:
        return self.outcomes.item_stdout(i)

    def live_stdout(self, since: int = 0) -> list[tuple[int, str]]:
        """``(item, new text)`` that running tasks printed, as it reached this host, from
        position ``since`` of the log on (``item_stdout`` has each item's whole text)."""
        return self.outcomes.live_stdout(since)

    def item_error_info(self, i: int) -> dict[str, Any] | None:
        return self.outcomes.item_error_info(i)

    def item_input_repr(self, i: int, limit: int = 200) -> str:
        """A short repr of item ``i``'s input, as its call (``f(3)``'s ``(3,)``): from what
        this host sent, or the job's stored, verified inputs."""
        try:
            args, kwargs = serialize.loads(serialize.join(self.dispatcher.item_payloads([i])))
        except Exception as exc:  # an inspector: say why rather than fail
            return f"<not available: {type(exc).__name__}: {exc}>"
        text = ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
        return text if len(text) <= limit else text[:limit - 1] + "…"

    def item_attempts(self, i: int) -> int:
        return self.outcomes.item_attempts(i)

    def item_backups(self, i: int) -> list[dict[str, Any]]:
        return self.outcomes.item_backups(i)

    def item_cache_info(self, i: int) -> dict[str, Any] | None:
        return self.outcomes.item_cache_info(i)
