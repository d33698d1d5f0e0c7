"""Dispatch: what is sent when, and what happens to what does not come back.

The dispatcher turns a job's items into invocation events for its backend
(planning, batching, inline inputs or one uploaded data object), listens to the
backend's events about them, collects the statuses workers store, and applies
the policies that end every task: retries of infrastructure failures,
deadlines, backups of events presumed lost, and the cancel marker. Storage is
the source of truth: an item ends only from a stored status, and a failure the
host detects is stored first (first write wins, so a late real result beats it).

Nothing read back is trusted before it is verified (``integrity``): every status
reaches the host through ``_collect``, which checks its seal (and a large
result's sha256) before anything is unpickled, whatever brought it (a backend's
callback, a storage poll, a re-attach); one that fails ends its task with an
``IntegrityError``. The inputs are stored, indexed and hashed before the first
invocation (``jobdata``), and the dispatch record (``records``) says what was sent
when, so a host that attaches after this one died finishes the job (``resume``).

Time comes from an injectable ``clock`` and nothing here sleeps: ``tick()`` is
called periodically (the executor's monitor thread does it), so every policy
can be tested by moving a fake clock. Policies to come (result cache, budget,
speculative backups) belong here: ``plan_sizes``/``_dispatch_more`` decide what
is sent, ``tick`` runs the periodic checks, and ``_resend`` is the one way to
send a task again.
"""
from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import integrity, protocol, records, serialize
from .backends.base import Backend, BackendLimits, Event
from .batching import AutoBatcher
from .errors import (INFRA_ERRORS, InfrastructureError, IntegrityError, LostInvocationError,
                     TaskTimeoutError)
from .jobdata import JobInputs
from .outcomes import OutcomeStore
from .storage import CountingView, NotFound, Storage
from .worker import open_status, read_results

log = logging.getLogger("cloudbutton.dispatch")

CANCEL_CHECK_INTERVAL_S = 0.5  # how often a running job looks for a cancel marker written elsewhere
FETCH_THREADS = 16  # statuses fetched at once when a poll finds many

@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What a job is: fixed when it is submitted, written to its manifest."""

    job_id: str
    prefix: str
    function_key: str
    function_name: str
    n_items: int
    chunksize: int | str
    timeout: float          # per item; a batch gets the sum, capped by the backend
    retries: int            # re-runs of a task after an infrastructure failure
    memory_mb: int
    created: float
    label: str | None = None
    reduce: dict[str, Any] | None = None  # a reduce task: the map job and tasks it reads
    batch_target_s: float | None = None   # "auto" batches: how long one should run
                                          # (None: the backend's ``auto_batch_target_s``)

    def manifest(self, backend: str, architecture: str | None) -> dict[str, Any]:
        from . import __version__

        return {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "created": self.created,
            "backend": backend, "architecture": architecture, "function": self.function_name,
            "function_key": self.function_key, "label": self.label, "n_items": self.n_items,
            "chunksize": self.chunksize, "timeout": self.timeout, "memory_mb": self.memory_mb,
            "retries": self.retries, "executor_version": __version__,
            "reduce": self.reduce, "batch_target_s": self.batch_target_s,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], prefix: str) -> JobSpec:
        return cls(job_id=manifest["job_id"], prefix=prefix, function_key=manifest["function_key"],
                   function_name=manifest["function"], n_items=int(manifest["n_items"]),
                   chunksize=manifest["chunksize"], timeout=float(manifest["timeout"]),
                   retries=int(manifest.get("retries") or 0), memory_mb=int(manifest["memory_mb"]),
                   created=float(manifest["created"]), label=manifest.get("label"),
                   reduce=manifest.get("reduce"), batch_target_s=manifest.get("batch_target_s"))


class Dispatcher:
    """Sends a job's tasks to a backend and ends each of them; see the module docstring.

    It is the backend's ``InvocationListener`` for the job's events.
    """

    def __init__(self, spec: JobSpec, store: OutcomeStore, backend: Backend, storage: Storage,
                 payloads: Sequence[serialize.Payload] | None,
                 clock: Callable[[], float] = time.time):
        self.spec = spec
        self.store = store
        self.backend = backend
        self.storage = CountingView(storage)  # counts this job's host requests
        self.clock = clock
        self._payloads = payloads  # None: a job followed from storage (until it resumes)
        self.inputs: JobInputs | None = None  # the stored inputs' index (start or resume)
        self.key = integrity.job_key(spec.job_id)  # seals what this job's hosts and workers write
        self._session = os.urandom(8).hex()
        self._epoch = 0                            # which dispatching host of the job this is
        self._record_dirty = False
        self._record_written = -math.inf
        self._crashes_seen: set[str] = set()       # crash reports already acted on
        self._crash_floor: dict[str, int] = {}     # task -> first attempt a crash still counts for
        self._ran: set[str] = set()                # tasks known to have run (no backups for them)
        self._inherited: set[str] = set()          # tasks a dead host sent (see resume)
        self._next_record_check = -math.inf
        self._resumed = False                      # taken over from a host that died
        self._storage_desc = storage.describe()
        self._lock = threading.RLock()
        self._next_item = 0                       # the first item not yet planned
        self._inflight: dict[str, Event] = {}     # task -> the event of its current attempt
        self._last_attempt: dict[str, int] = {}   # task -> the attempt number sent last
        self._retries_used: dict[str, int] = {}   # task -> retries after infrastructure errors
        self._redelivered: dict[str, int] = {}    # task -> events sent again as lost
        self._accepted: dict[str, float] = {}     # task -> when the backend took its current event
        self._clock_start: dict[str, float] = {}  # task -> when its deadline clock started
        self._applied: set[str] = set()           # tasks whose status was applied (or is being)
        self._uncollected: set[str] = set()       # tasks whose status could not be read yet
        self._latencies: list[float] = []         # submit -> stored of collected tasks
        concurrency = backend.limits.concurrency
        self._batcher = AutoBatcher(spec.batch_target_s or backend.limits.auto_batch_target_s,
                                    concurrency) if spec.chunksize == "auto" else None
        self._window = max(2, 2 * concurrency)
        self._last_cancel_check = -math.inf
        self._follow_deadline: float | None = None
        self.following = False  # a job started elsewhere, followed through storage only
        self.cancelled = False
        self.retried = 0        # tasks sent again: retries, redeliveries and backups
        self.throttled = 0      # times the backend refused an event for now
        self.error: Exception | None = None  # the last error of the job's monitoring

    @property
    def limits(self) -> BackendLimits:
        return self.backend.limits

    # Starting ---------------------------------------------------------------------
    def start(self) -> None:
        """Store the inputs (indexed, hashed), the sealed manifest and dispatch record, then
        send the first tasks: everything a host needs to finish the job is in storage first."""
        spec = self.spec
        manifest = spec.manifest(self.backend.name, self.limits.architecture)
        if self._payloads is not None and spec.reduce is None:
            self.inputs = JobInputs.from_payloads(self._payloads, spec.chunksize)
            manifest["data"] = self.inputs.upload(self.storage, spec.prefix, spec.job_id)
        self.storage.put(protocol.manifest_key(spec.prefix, spec.job_id),
                         self._seal(protocol.manifest_key(spec.prefix, spec.job_id), manifest))
        self._write_record()
        self._dispatch_more()

    def follow(self, deadline: float | None = None) -> None:
        """Follow a job another host dispatches, through storage only. With ``deadline``
        (a job of an older version, which cannot be resumed) its missing items end as lost
        after it; otherwise this host takes the job over (``resume``) once that host stops
        writing its dispatch record."""
        with self._lock:
            self.following = True
            self._follow_deadline = deadline
            self._next_item = self.spec.n_items
        marked = self.storage.exists(protocol.cancel_key(self.spec.prefix, self.spec.job_id))
        self.poll_storage()
        if marked:
            self.cancel()

    # Resuming a job whose host died -----------------------------------------------------
    def read_record(self) -> dict[str, Any] | None:
        """The job's dispatch record, verified; None if it has none."""
        rkey = protocol.dispatch_key(self.spec.prefix, self.spec.job_id)
        try:
            raw = self.storage.get(rkey)
        except NotFound:
            return None
        return integrity.open_sealed(self.key, protocol.object_name(self.spec.prefix, rkey), raw,
                                     "the dispatch record")

    def resume(self, record: dict[str, Any], inputs: JobInputs | None) -> bool:
        """Take the job over from the host that wrote ``record`` (it is gone): claim the
        next epoch (first claim wins; False if another host won), then go on where it
        stopped. Its tasks in flight keep their deadlines and spent budgets; on a backend
        whose events cannot outlive their host (local workers die with it) they are sent
        again at once. What was never sent is sent as usual."""
        spec = self.spec
        epoch = int(record.get("epoch", 0)) + 1
        if not self.storage.put_if_absent(protocol.owner_key(spec.prefix, spec.job_id, epoch),
                                          json.dumps(records.owner(self._session)).encode()):
            return False
        sent = records.in_flight(record)
        with self._lock:
            self._epoch = epoch
            self._resumed = True
            self.following = False
            self._follow_deadline = None
            self.inputs = inputs
            self._payloads = None
            self._next_item = int(record["next_item"])
            for s in sent:
                a, b = protocol.task_range(s.tid)
                if s.tid in self._applied or not self.store.any_open(a, b):
                    continue  # its status was stored (and collected while following)
                event = self.event(s.tid, a, b)
                event.update(attempt=s.attempt, host_submit=s.sent_at)
                self._inflight[s.tid] = event
                self._last_attempt[s.tid] = s.attempt
                self._retries_used[s.tid] = s.retries_used
                self._redelivered[s.tid] = s.redelivered
                self._accepted[s.tid] = s.sent_at
                self._inherited.add(s.tid)
                self.store.add_task(s.tid, s.sent_at)
            self._record_dirty = True
        log.info("job %s: resumed from a host that stopped at %s (%d tasks in flight, items %d.. "
                 "never sent)", spec.job_id, time.strftime("%H:%M:%S", time.localtime(
                     float(record.get("updated") or 0))), len(sent), self._next_item)
        self._write_record()
        self.poll_storage(everything=True)  # what the dead host's workers stored meanwhile
        if self.limits.lost_after_s is None:
            # Local workers die with their host: what it had in flight will never report.
            again = []
            with self._lock:
                for tid in sorted(self._inflight):
                    if tid in self._inherited:
                        again.append(self._resend(tid, self._inflight[tid]))
            if again:
                self._invoke(again)
        self._dispatch_more()
        return True

    def check_owner(self, now: float, force: bool = False) -> bool:
        """Following a job: take it over (``resume``) once its host stopped writing its
        dispatch record, or never wrote one long after creating the job. True if it did."""
        if not force and now < self._next_record_check:
            return False
        self._next_record_check = now + protocol.HEARTBEAT_S / 2
        if self.cancelled or self.store.done():
            return False
        record = self.read_record()
        if record is None:
            if now - self.spec.created < protocol.DISPATCH_STALE_S:
                return False  # its host may be about to write it
            record = records.document(self.spec.job_id, -1, {}, 0, (), 0.0, self.spec.n_items)
        elif records.owner_alive(record, now):
            return False
        inputs = None
        if self.spec.reduce is None and self.spec.n_items:
            manifest = self.read_manifest()
            inputs = JobInputs.load(self.storage, self.spec.prefix, self.spec.job_id,
                                    manifest["data"])
        return self.resume(record, inputs)

    def read_manifest(self) -> dict[str, Any]:
        mkey = protocol.manifest_key(self.spec.prefix, self.spec.job_id)
        return integrity.open_sealed(self.key, protocol.object_name(self.spec.prefix, mkey),
                                     self.storage.get(mkey), "the manifest")

    # The dispatch record ----------------------------------------------------------------
    def _seal(self, key: str, doc: dict[str, Any]) -> bytes:
        return integrity.seal(self.key, protocol.object_name(self.spec.prefix, key), doc)

    def _write_record(self) -> None:
        """Rewrite the job's dispatch record: what is in flight, since when (see ``records``)."""
        spec = self.spec
        now = self.clock()
        grace = self.limits.deadline_grace_s or 0.0
        with self._lock:
            sent = [records.Sent(tid, e["host_submit"], e.get("attempt", 0),
                                 self._retries_used.get(tid, 0), self._redelivered.get(tid, 0))
                    for tid, e in self._inflight.items()]
            deadline = max((s.sent_at + self._inflight[s.tid]["timeout"] + grace for s in sent),
                           default=now)
            doc = records.document(spec.job_id, self._epoch, records.owner(self._session),
                                   self._next_item, sent, now, spec.n_items)
            doc["deadline"] = deadline
            self._record_dirty = False
            self._record_written = now
        rkey = protocol.dispatch_key(spec.prefix, spec.job_id)
        self.storage.put(rkey, self._seal(rkey, doc))

    def _maybe_write_record(self, now: float) -> None:
        if self.following or self.cancelled:
            return
        since = now - self._record_written
        if (self._record_dirty and since >= records.RECORD_INTERVAL_S) or since >= protocol.HEARTBEAT_S:
            self._write_record()

    # Planning -----------------------------------------------------------------------
    def plan_sizes(self) -> list[int]:
        """Sizes of the invocations to send now (lock held)."""
        remaining = self.spec.n_items - self._next_item
        if remaining <= 0 or self.cancelled or self.following or (
                self.inputs is None and self.spec.reduce is None):
            return []
        if self._batcher is None:
            size = int(self.spec.chunksize)
            sizes = [min(size, remaining - k) for k in range(0, remaining, size)]
            # Backends without their own queue (Lambda) get only about their concurrency
            # at once, so an invocation's deadline clock starts when it can really run.
            cap = self.limits.max_inflight
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
            for n in self.plan_sizes():
                start = self._next_item
                if self._resumed:
                    # Items a dead host's workers stored meanwhile are not sent again.
                    start = self.store.next_open(start)
                    if start >= self.spec.n_items:
                        self._next_item = start
                        break
                    n = min(n, self.store.open_until(start) - start)
                self._next_item = start + n
                tid = protocol.task_id(start, start + n, self.spec.n_items)
                event = self.event(tid, start, start + n)
                self._inflight[tid] = event
                self._last_attempt[tid] = 0
                self.store.add_task(tid, event["host_submit"])
                events.append(event)
            if events:
                self._record_dirty = True
        if not events:
            return
        if self._batcher is not None:
            # Sizes chosen on the fly: a host that takes over must know these tasks'
            # boundaries before any of them runs (fixed sizes give the same task ids
            # again, so their record may lag: a task sent twice is only done twice).
            self._write_record()
        self._invoke(events)

    def event(self, tid: str, start: int, stop: int) -> Event:
        """The invocation event of task ``tid`` (items [start, stop)), first attempt. It
        carries the job's key (hex) to its worker: the only way the key travels."""
        spec = self.spec
        data: dict[str, Any]
        inputs = self.inputs
        if spec.reduce is not None or inputs is None:
            data = {"offsets": [0, 0], "inline": ""}
        else:
            base = inputs.offsets
            offs = [int(base[i] - base[start]) for i in range(start, stop + 1)]
            if inputs.size(start, stop) <= protocol.inline_event_limit(self.limits.payload_limit_bytes):
                data = {"inline": base64.b64encode(inputs.item_bytes(start, stop)).decode(),
                        "offsets": offs}
            else:  # read from storage by the worker, which checks the covering blocks
                data = {"key": protocol.data_key(spec.prefix, spec.job_id),
                        "start": int(base[start]), "stop": int(base[stop]), "offsets": offs,
                        "blocks": [list(b) for b in inputs.covering(start, stop)]}
        event: Event = {
            "v": protocol.PROTOCOL_VERSION, "job_id": spec.job_id, "prefix": spec.prefix,
            "storage": self._storage_desc, "function_key": spec.function_key,
            "task": tid, "data": data, "host_submit": self.clock(), "attempt": 0,
            "timeout": self._invocation_timeout(stop - start), "memory_mb": spec.memory_mb,
            "auth": self.key.hex(),
        }
        if spec.reduce is not None:
            event["reduce"] = dict(spec.reduce, auth=integrity.job_key(spec.reduce["job_id"]).hex())
        return event

    def _invocation_timeout(self, n_items: int) -> float:
        # ``timeout`` is per item; a batch gets the sum, capped by the backend (Lambda: 900 s).
        cap = self.limits.max_timeout_s
        t = self.spec.timeout * n_items
        return min(t, cap) if cap else t

    def _invoke(self, events: list[Event]) -> None:
        """Hand events to the backend; one it refuses at once ends its task."""
        try:
            self.backend.invoke(events, self)
        except Exception as exc:
            log.warning("job %s: the %s backend refused %d events: %s", self.spec.job_id,
                        self.backend.name, len(events), exc)
            for event in events:
                self._end_task(event, InfrastructureError(
                    f"task {event['task']}: the {self.backend.name} backend could not take it: "
                    f"{exc}", event["task"]))

    # The backend's events -------------------------------------------------------------
    def on_accepted(self, event: Event, at: float) -> None:
        with self._lock:
            if self._inflight.get(event["task"]) is event:
                self._accepted[event["task"]] = at

    def on_throttled(self, event: Event, retry_after: float | None) -> None:
        with self._lock:
            self.throttled += 1

    def on_start(self, event: Event) -> None:
        self.store.mark_running(event["task"], self.clock())

    def on_done(self, event: Event, response: dict[str, Any]) -> None:
        if response.get("state") == "cancelled" or self.cancelled:
            return  # the worker saw the cancel marker: the job is (being) cancelled
        self._guarded(self._collect, event["task"], self.clock())

    def on_failure(self, event: Event, error: InfrastructureError) -> None:
        """Retry the task if the user allowed it, else end it with ``error``."""
        if self.cancelled:
            return
        tid = event["task"]
        with self._lock:
            used = self._retries_used.get(tid, 0)
            again = None
            if used < self.spec.retries and tid in self._inflight:
                self._retries_used[tid] = used + 1
                self._clock_start.pop(tid, None)  # a retry gets a fresh deadline
                again = self._resend(tid, self._inflight[tid])
        if again is not None:
            log.info("job %s: retrying task %s after %s", self.spec.job_id, tid, error)
            self._invoke([again])
            return
        self._guarded(self._end_task, event, error)

    def on_lost(self, event: Event, error: InfrastructureError) -> None:
        """Send a lost event again while the backend's redeliveries last, then fail it."""
        if self.cancelled:
            return
        tid = event["task"]
        with self._lock:
            again = None
            n = self._redelivered.get(tid, 0)
            if tid in self._inflight and n < self.limits.redeliveries:
                self._redelivered[tid] = n + 1
                again = self._resend(tid, self._inflight[tid])
        if again is not None:
            self._invoke([again])
            return
        self.on_failure(event, error)

    def _resend(self, tid: str, event: Event) -> Event:
        """A new attempt of a task (lock held); the caller invokes it."""
        attempt = self._last_attempt.get(tid, 0) + 1
        self._last_attempt[tid] = attempt
        again = dict(event, attempt=attempt, host_submit=self.clock())
        self._inflight[tid] = again
        self._accepted.pop(tid, None)
        self._inherited.discard(tid)
        self._record_dirty = True
        self.retried += 1
        return again

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a step that reads or writes storage; its error is recorded, not lost."""
        try:
            fn(*args)
        except Exception as exc:
            self._record_error(exc)

    def _record_error(self, exc: Exception) -> None:
        self.error = exc
        log.error("job %s: %s: %s", self.spec.job_id, type(exc).__name__, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))

    # Ending tasks ------------------------------------------------------------------
    def _end_task(self, event: Event, error: InfrastructureError) -> None:
        """Store ``error`` as the task's status (unless a worker's came first) and apply it."""
        tid = event["task"]
        status = protocol.host_failure_status(
            self.spec.job_id, tid, event.get("attempt", 0), type(error).__name__, error.kind,
            str(error), event.get("host_submit"))
        skey = protocol.status_key(self.spec.prefix, self.spec.job_id, tid)
        self.storage.put_if_absent(skey, self._seal(skey, status))
        self._collect(tid, self.clock())

    def _collect(self, tid: str, host_seen: float, raw: bytes | None = None,
                 any_task: bool = False) -> None:
        """Apply task ``tid``'s stored status, once, and send what can go next.

        Every status reaches the host here (``raw``: its bytes, if the caller has them),
        and is verified before anything of it is used: one that fails (a tampered or
        foreign object) ends the task with an IntegrityError, nothing unpickled.
        ``any_task``: also a task this host did not send (following, resuming)."""
        with self._lock:
            mine = self.following or any_task or tid in self._inflight
            if tid in self._applied or not mine or self.cancelled:
                return  # a duplicate notice, or cancelled
            self._applied.add(tid)
        spec = self.spec
        skey = protocol.status_key(spec.prefix, spec.job_id, tid)
        try:
            if raw is None:
                raw = self.storage.get(skey)
            try:
                status = open_status(raw, spec.prefix, skey, self.key, spec.job_id, tid)
                outcomes = None if "infra" in status else read_results(
                    self.storage, spec.prefix, spec.job_id, status)
            except IntegrityError as err:
                self._refuse(tid, err)
                return
        except Exception:
            with self._lock:  # the next tick tries again
                self._applied.discard(tid)
                self._uncollected.add(tid)
            raise
        with self._lock:
            self._inflight.pop(tid, None)
            self._uncollected.discard(tid)
            st = status.get("stats") or {}
            if st.get("result_stored") and st.get("host_submit"):
                self._latencies.append(st["result_stored"] - st["host_submit"])
        self.store.apply_status(status, outcomes, host_seen, self.clock())
        if self._batcher is not None and "infra" not in status:
            a, b = protocol.task_range(tid)
            self._batcher.record(b - a, st["compute_done"] - st["worker_start"])
        self._dispatch_more()

    def _refuse(self, tid: str, err: IntegrityError) -> None:
        """End task ``tid`` with ``err``: what storage holds for it failed verification.
        Nothing is stored (its key is taken, first write wins); a re-attach finds the same."""
        log.error("job %s: task %s: %s", self.spec.job_id, tid, err)
        with self._lock:
            event = self._inflight.pop(tid, None) or {}
            self._uncollected.discard(tid)
        status = protocol.host_failure_status(
            self.spec.job_id, tid, event.get("attempt", 0), "IntegrityError", err.kind,
            f"task {tid}: {err}", event.get("host_submit"))
        now = self.clock()
        self.store.apply_status(status, None, now, now)
        self._dispatch_more()

    # Periodic checks -------------------------------------------------------------------
    def tick(self) -> None:
        """What the monitor does every poll interval: look for a cancel marker, collect
        the statuses a backend that does not call back has stored, end what is overdue.
        An error is recorded in ``error`` (and logged); the next tick tries again."""
        if self.store.done():
            return
        now = self.clock()
        try:
            if now - self._last_cancel_check >= CANCEL_CHECK_INTERVAL_S:
                self._last_cancel_check = now
                if self.check_cancel_marker():
                    return
            if self.following and self._follow_deadline is None:
                self.check_owner(now)
            if self.following or not self.limits.calls_back or self._uncollected:
                self.poll_storage()
            self.check_deadlines()
            self._maybe_write_record(now)
        except Exception as exc:  # keep monitoring
            self._record_error(exc)

    def check_cancel_marker(self) -> bool:
        """Cancel the job if someone else (the Jupyter panel) wrote its cancel marker."""
        if self.store.done() or self.cancelled:
            return False
        marked = self.storage.exists(protocol.cancel_key(self.spec.prefix, self.spec.job_id))
        if marked:
            self.cancel()
        return marked

    def poll_storage(self, everything: bool = False) -> int:
        """Collect the statuses that appeared in storage and act on crash reports; returns
        how many statuses. ``everything``: any task's status whose items are open (a job
        resumed from another host's record), not only this host's tasks in flight."""
        spec = self.spec
        with self._lock:
            if not self._inflight and not self.following and not self._uncollected and not everything:
                return 0
            pending = set(self._inflight) | self._uncollected
            applied = set(self._applied)
        tasks_prefix = protocol.tasks_prefix(spec.prefix, spec.job_id)
        wide = self.following or everything
        # Every task before the first pending one is collected: list only from there on
        # (one LIST page per poll instead of re-reading the whole job). Task ids of a job
        # have one width, so key order is item order.
        start_after = tasks_prefix + min(pending) if pending and not wide else None
        keys = self.storage.list(tasks_prefix, start_after=start_after)
        seen = self.clock()
        new = [tid for tid in map(protocol.task_id_from_status_key, keys)
               if tid and tid not in applied and (wide or tid in pending)]
        if wide:
            # Another host's tasks may overlap ours (sizes chosen on the fly): apply those
            # whose items are still open, in item order.
            new = [tid for tid in new if self.store.any_open(*protocol.task_range(tid))]
        crashes = [key for key in keys if key not in self._crashes_seen
                   and protocol.crash_from_key(key) is not None] if not self.following else []
        if len(new) > 1:
            # Fetch the new statuses concurrently: on S3 each GET is a round trip, and
            # one at a time they would cap how many tasks per second the host can see.
            def fetch(tid: str) -> bytes:
                return self.storage.get(protocol.status_key(spec.prefix, spec.job_id, tid))

            # A pool per poll (a thread costs tens of microseconds, a GET milliseconds):
            # no thread outlives the job, so shutdown(wait=True) leaves none behind.
            with cf.ThreadPoolExecutor(max_workers=min(len(new), FETCH_THREADS),
                                       thread_name_prefix="cloudbutton-fetch") as pool:
                futs = [pool.submit(fetch, tid) for tid in new]
                for tid, fut in zip(new, futs, strict=True):
                    self._collect(tid, seen, raw=fut.result(), any_task=wide)
        elif new:
            self._collect(new[0], seen, any_task=wide)
        for key in crashes:
            self._crash_reported(key)
        return len(new)

    def _crash_reported(self, key: str) -> None:
        """A supervisor reported that an attempt of a task crashed (its worker died or ran
        out of time): retry it within the budget, or end it with that reason, at once."""
        self._crashes_seen.add(key)
        found = protocol.crash_from_key(key)
        assert found is not None
        tid, attempt = found
        with self._lock:
            event = self._inflight.get(tid)
            if event is None or tid in self._applied or attempt < self._crash_floor.get(tid, 0):
                return  # ended already, or an attempt a retry after a crash superseded
        try:
            report = integrity.open_sealed(self.key, protocol.object_name(self.spec.prefix, key),
                                           self.storage.get(key), "the crash report")
            if report.get("task") != tid or report.get("attempt") != attempt:
                raise IntegrityError(f"the crash report {key} is a foreign object")
        except IntegrityError as err:
            log.error("job %s: %s", self.spec.job_id, err)
            return  # not the task's: its own deadline still ends it
        kind = INFRA_ERRORS.get(report.get("kind") or "", InfrastructureError)
        with self._lock:
            # It ran: not a lost event. No more backups; only retries may run it again,
            # and crashes of the attempts sent before this one count as this one.
            self._ran.add(tid)
            self._crash_floor[tid] = self._last_attempt.get(tid, 0) + 1
        self.on_failure(event, kind(report.get("message") or "the worker crashed", tid))

    def check_deadlines(self) -> None:
        """End invocations that can no longer finish (lost events, dead hosts)."""
        now = self.clock()
        if self.following:  # the dispatching host ends its tasks (or this one, once it resumes)
            deadline = self._follow_deadline
            if deadline is not None and now > deadline and not self.store.done():
                self._end_open_items_as_lost()
            return
        limits = self.limits
        grace = limits.deadline_grace_s
        if grace is None:  # the backend enforces timeouts itself and always reports
            return
        if limits.lost_after_s is not None:
            self._send_backups(now, limits.lost_after_s, grace)
        with self._lock:
            late = []
            for tid, e in self._inflight.items():
                start = self._clock_start.get(tid)
                if start is None:
                    # A backend that reports acceptance (Lambda, after throttling) starts
                    # the clock then; until then it bounds the wait itself.
                    start = self._accepted.get(tid) if limits.reports_accepted else e["host_submit"]
                    if start is None:
                        continue
                    self._clock_start[tid] = start
                if now > start + e["timeout"] + grace:
                    late.append(e)
        for event in late:
            err: InfrastructureError
            if event["task"] in self._inherited:
                # Sent by a host that died: whether it ever ran is unknown. Sent again
                # while redeliveries last, as an event that was lost.
                self.on_lost(event, LostInvocationError(
                    f"task {event['task']} (sent before its host stopped) produced no result "
                    f"within its timeout of {event['timeout']:g} s + {grace:g} s", event["task"]))
                continue
            if limits.lost_after_s is not None:
                # Lost events were already sent again as backups: silence past the timeout
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
        """Send again the events presumed lost (Lambda may drop async events; nothing says so).

        An event is presumed lost when it has been silent for ``lost_after`` s plus
        twice the 90th percentile submit-to-stored time of this job's finished tasks. The
        backup is a new attempt of the same task: if the original was only slow, the first
        stored status wins and the other is ignored. Bounded by the backend's
        ``redeliveries``, and spaced so that all of them fit before the task's deadline
        (backups don't move it).
        """
        budget = self.limits.redeliveries
        backups = []
        with self._lock:
            if not self._inflight or self.cancelled or not self._latencies:
                return  # nothing to compare with yet: the timeout deadline still applies
            latencies = sorted(self._latencies)
            limit = lost_after + 2 * latencies[int(0.9 * (len(latencies) - 1))]
            for tid, e in list(self._inflight.items()):
                sent = self._accepted.get(tid)
                wait = min(limit, max(lost_after, (e["timeout"] + grace) / (budget + 1)))
                if (sent is None or now - sent < wait or self._redelivered.get(tid, 0) >= budget
                        or tid in self._ran):
                    continue
                self._redelivered[tid] = self._redelivered.get(tid, 0) + 1
                if tid not in self._clock_start:
                    self._clock_start[tid] = sent  # a backup does not extend the deadline
                backups.append(self._resend(tid, e))
        if backups:
            self._invoke(backups)

    def _end_open_items_as_lost(self) -> None:
        for a, b in self.store.open_runs():
            tid = protocol.task_id(a, b, self.spec.n_items)
            err = LostInvocationError(
                f"items {a}..{b - 1} of job {self.spec.job_id} have no result and their "
                "deadline passed", tid)
            self._end_task({"task": tid, "attempt": 0}, err)

    # Cancelling ---------------------------------------------------------------------
    def cancel(self) -> int:
        """Stop the job: no more invocations, the backend told to stop the running ones,
        every open item cancelled. Returns how many items had not ended."""
        with self._lock:
            if self.cancelled or self.store.done():
                return 0
            self.cancelled = True
            self._inflight.clear()
        try:
            self.storage.put_if_absent(
                protocol.cancel_key(self.spec.prefix, self.spec.job_id),
                protocol.cancel_marker(by="executor", at=self.clock()))
        finally:
            self.backend.cancel_job(self.spec.job_id)
        return self.store.cancel()
