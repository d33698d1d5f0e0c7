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
import pickle
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import accounting, integrity, protocol, records, serialize
from .backends.base import Backend, BackendLimits, Event
from .batching import AutoBatcher
from .cache import CacheWriter, ResultCache, item_keys, read_timings, write_timings
from .spending import PROBE_INVOCATIONS, Spending
from .errors import (INFRA_ERRORS, InfrastructureError, IntegrityError, LostInvocationError,
                     TaskTimeoutError)
from .interrupt import block_interrupts
from .jobdata import JobInputs
from .outcomes import OutcomeStore
from .storage import CountingView, NotFound, Storage
from .worker import open_status, read_result_blob

log = logging.getLogger("cloudbutton.dispatch")

CANCEL_CHECK_INTERVAL_S = 0.5  # how often a running job looks for a cancel marker written elsewhere
FETCH_THREADS = 16  # statuses fetched at once when a poll finds many

# Speculative backups of slow tasks (cubed's rule): once a job of at least
# BACKUP_MIN_TASKS tasks has BACKUP_DONE_FRACTION of them done, a task running longer than
# BACKUP_SLOW_FACTOR times the median of the completed ones (per item) gets one backup.
# BACKUP_MIN_EXTRA_S keeps tiny tasks from being backed up for scheduling noise: a task
# must also be that much slower than the median, which is more than the host's own
# latency (a 0.2 s storage poll on Lambda, a process wake-up locally).
BACKUP_MIN_TASKS = 10
BACKUP_DONE_FRACTION = 0.5
BACKUP_SLOW_FACTOR = 3.0
BACKUP_MIN_EXTRA_S = 0.5


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
    backups: bool = True                  # speculative backups of slow tasks
    cache: bool = False                   # look items up in the result cache, add results
    identity: str | None = None           # the function's identity (``cache.py``): the
                                          # cache's and earlier runs' timings key
    budget_usd: float | None = None       # stop once the projected cost would pass it
    rerun_of: str | None = None           # the job whose failed items this one re-runs

    def manifest(self, backend: str, architecture: str | None) -> dict[str, Any]:
        from . import __version__

        return {
            "v": protocol.PROTOCOL_VERSION, "job_id": self.job_id, "created": self.created,
            "backend": backend, "architecture": architecture, "function": self.function_name,
            "function_key": self.function_key, "label": self.label, "n_items": self.n_items,
            "chunksize": self.chunksize, "timeout": self.timeout, "memory_mb": self.memory_mb,
            "retries": self.retries, "executor_version": __version__,
            "reduce": self.reduce, "batch_target_s": self.batch_target_s,
            "backups": self.backups, "cache": self.cache, "identity": self.identity,
            "budget_usd": self.budget_usd,
            "rerun_of": self.rerun_of,
        }

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], prefix: str) -> JobSpec:
        return cls(job_id=manifest["job_id"], prefix=prefix, function_key=manifest["function_key"],
                   function_name=manifest["function"], n_items=int(manifest["n_items"]),
                   chunksize=manifest["chunksize"], timeout=float(manifest["timeout"]),
                   retries=int(manifest.get("retries") or 0), memory_mb=int(manifest["memory_mb"]),
                   created=float(manifest["created"]), label=manifest.get("label"),
                   reduce=manifest.get("reduce"), batch_target_s=manifest.get("batch_target_s"),
                   backups=bool(manifest.get("backups", True)),
                   cache=bool(manifest.get("cache")), identity=manifest.get("identity"),
                   budget_usd=manifest.get("budget_usd"), rerun_of=manifest.get("rerun_of"))


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
        self._key_hex = self.key.hex()
        self._session = os.urandom(8).hex()
        self._epoch = 0                            # which dispatching host of the job this is
        self._record_dirty = False
        self._record_written = -math.inf
        self._crashes_seen: set[str] = set()       # crash reports already acted on
        self._stdout_seen: set[str] = set()        # live stdout objects already read
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
        self._per_item_s: list[float] = []        # worker time per item of collected tasks
        self._first_start: dict[str, float] = {}  # task -> when its first attempt started
        self._started: set[str] = set()           # tasks started (any attempt), not collected
        self._sent_at: dict[str, dict[int, float]] = {}  # task -> attempt -> when sent
        self._backups: dict[str, int] = {}        # task -> backups sent (slow or lost)
        self._live_attempts: dict[str, set[int]] = {}  # task -> attempts sent, not ended
        self._holes = False                       # some items ended before being sent (cache)
        self.cache_writer: CacheWriter | None = None  # adds what this job computes to the cache
        self.cache_lookup: dict[str, Any] | None = None  # hits and time of the cache lookup
        self.spending: Spending | None = None     # cost so far, projection, budget (if any)
        self.backups_sent = 0
        concurrency = backend.limits.concurrency
        self._batcher = AutoBatcher(spec.batch_target_s or backend.limits.auto_batch_target_s,
                                    concurrency) if spec.chunksize == "auto" else None
        self._window = max(2, 2 * concurrency)
        self._last_cancel_check = -math.inf
        self._follow_deadline: float | None = None
        self.following = False  # a job started elsewhere, followed through storage only
        self.cancelled = False
        self.cancelled_at: float | None = None  # the cancel marker's time, once cancelled
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
        if self._holes:  # the items the cache served, for readers of storage (the panel)
            manifest["cached"] = self.store.cached_runs()
        if spec.budget_usd is not None and spec.reduce is None:
            self._start_spending()
        if (self._payloads is not None and spec.reduce is None
                and (not self._holes or self.store.count_open(0, spec.n_items))):
            self.inputs = JobInputs.from_payloads(self._payloads, spec.chunksize)
            manifest["data"] = self.inputs.upload(self.storage, spec.prefix, spec.job_id)
        self.storage.put(protocol.manifest_key(spec.prefix, spec.job_id),
                         self._seal(protocol.manifest_key(spec.prefix, spec.job_id), manifest))
        if self._batcher is None:
            self._write_record()
            self._dispatch_more()
        else:  # one record, written with the first tasks' boundaries before they are sent
            self._dispatch_more(record=True)

    def item_payloads(self, items: Sequence[int]) -> list[serialize.Payload]:
        """The pickled calls of ``items``, as this job sent them (a re-run sends them again)."""
        if self._payloads is not None:
            return [self._payloads[i] for i in items]
        if self.inputs is None:  # a job attached from storage: its stored, verified inputs
            manifest = self.read_manifest()
            if "data" not in manifest:
                raise RuntimeError(f"job {self.spec.job_id} stored no inputs")
            self.inputs = JobInputs.load(self.storage, self.spec.prefix, self.spec.job_id,
                                         manifest["data"])
        return [self.inputs.item_bytes(i, i + 1) for i in items]

    def function_blob(self) -> bytes:
        """The job's pickled function, read back and checked against its content address."""
        blob = self.storage.get(self.spec.function_key)
        if protocol.function_key(self.spec.prefix, integrity.sha256(blob)) != self.spec.function_key:
            raise IntegrityError(f"the function blob {self.spec.function_key} does not match "
                                 "its name")
        return blob

    def use_cache(self) -> int:
        """Before ``start``: end the items the result cache holds (state "cached"), and add
        what this job computes to it. Returns how many items it served."""
        spec = self.spec
        identity = spec.identity
        assert self._payloads is not None and identity is not None
        keys = item_keys(identity, self._payloads)
        cache = ResultCache(self.storage, spec.prefix, identity)
        hits = cache.lookup(keys)
        self.cache_lookup = {"hits": len(hits), "lookup_s": cache.lookup_s}
        if hits:
            order = sorted(hits)
            self.store.apply_cached(order, [hits[i].value for i in order],
                                    [hits[i].info for i in order])
            self._holes = True
        self.cache_writer = CacheWriter(self.storage, spec.prefix, identity, spec.job_id, keys)
        return len(hits)

    # Budget ---------------------------------------------------------------------------
    def _start_spending(self) -> None:
        spec, limits = self.spec, self.limits
        self.spending = Spending(
            n_items=spec.n_items, open_items=self.store.count_open(0, spec.n_items),
            budget_usd=spec.budget_usd, memory_mb=spec.memory_mb,
            architecture=limits.architecture, concurrency=limits.concurrency,
            chunksize=spec.chunksize)
        # A job that stays within its budget even if every invocation runs to its timeout
        # needs no probe: it is sent at once (the live projection still watches it).
        size = spec.chunksize if isinstance(spec.chunksize, int) else 1
        n = -(-self.spending.open_items // size)
        self.spending.worst_usd = accounting.cost(
            accounting.Usage(tasks=n, invocations=n, run_s=n * self._invocation_timeout(size)),
            memory_mb=spec.memory_mb, architecture=limits.architecture)["cost_usd"]
        if spec.identity is not None:  # earlier runs of the same function
            earlier = read_timings(self.storage, spec.prefix, spec.identity)
            if earlier is not None:
                usage, items, wall = earlier
                self.spending.make_estimate("earlier runs", usage, items, wall)
        self._check_budget()

    def _spent(self, tid: str, items: int) -> None:
        """Task ``tid`` ended: count what it cost, make the estimate after a probe, and stop
        the job if its budget says so."""
        spending = self.spending
        assert spending is not None
        record = self.store.task_record(tid)
        if record is not None:
            spending.add_task(*record, items=items)
        if spending.estimate is None and (self.store.done() or not self._inflight) \
                and spending.tasks >= min(PROBE_INVOCATIONS, spending.invocations_for(
                    spending.open_items)):
            spending.make_estimate("probe")
        elif spending.estimate is None and spending.tasks >= PROBE_INVOCATIONS:
            spending.make_estimate("first tasks")
        self._check_budget()
        if self.store.done() and self.spec.identity is not None and spending.computed:
            self._guarded(write_timings, self.storage, self.spec.prefix, self.spec.identity,
                          spending.usage, spending.computed, spending.wall_s())

    def _check_budget(self) -> None:
        spending = self.spending
        if spending is None:
            return
        why = spending.verdict()
        if why is None:
            return
        c = self.store.counts()
        spending.stopped = (f"stopped by its budget: {why}; {c['done'] + c['cached']} of "
                            f"{self.spec.n_items} items have results, every one kept")
        log.warning("job %s %s", self.spec.job_id, spending.stopped)
        self.cancel(by="budget", reason=spending.stopped)

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
        if self._holes and remaining > 0:  # items the cache served are not sent
            remaining = self.store.count_open(self._next_item, self.spec.n_items)
        if remaining <= 0 or self.cancelled or self.following or (
                self.inputs is None and self.spec.reduce is None):
            return []
        spending = self.spending
        if spending is not None and (spending.stopped or spending.probing):
            # A probe (PROBE_INVOCATIONS invocations) runs alone: the rest waits for the
            # estimate it gives, which needs that many tasks.
            if spending.stopped or self._next_item > 0:
                return []
            remaining = min(remaining, int(self.spec.chunksize) * PROBE_INVOCATIONS
                            if self._batcher is None else PROBE_INVOCATIONS)
        if self._batcher is None:
            size = int(self.spec.chunksize)
            count = -(-remaining // size)
            # Backends without their own queue (Lambda) get only about their concurrency
            # at once, so an invocation's deadline clock starts when it can really run. Only
            # those are planned (not a list of every remaining task per dispatch).
            cap = self.limits.max_inflight
            if cap:
                count = min(count, max(0, cap - len(self._inflight)))
            return [min(size, remaining - k * size) for k in range(count)]
        sizes = []
        free = self._window - len(self._inflight)
        while free > 0 and remaining > 0:
            n = self._batcher.next_size(remaining)
            sizes.append(n)
            remaining -= n
            free -= 1
        return sizes

    def _dispatch_more(self, record: bool = False) -> None:
        """Plan and send what may go now. ``record``: write the dispatch record even if
        nothing goes."""
        events = []
        with self._lock:
            for n in self.plan_sizes():
                start = self._next_item
                if self._resumed or self._holes:
                    # Items a dead host's workers stored meanwhile, or the cache served,
                    # are not sent again: a task covers a run of items still open.
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
                self._sent_at[tid] = {0: event["host_submit"]}
                self._live_attempts[tid] = {0}
                self.store.add_task(tid, event["host_submit"])
                events.append(event)
            if events:
                self._record_dirty = True
        if record or (events and self._batcher is not None and self.limits.lost_after_s is not None):
            # Sizes chosen on the fly: where an event outlives its host (Lambda), a host
            # that takes over must know these tasks' boundaries before any of them runs
            # (fixed sizes give the same task ids again, so their record may lag: a task
            # sent twice is only done twice). Local workers die with their host
            # (PDEATHSIG): all they will ever store is stored when another host takes
            # over, which collects it and plans only items still open, so the record
            # follows at its interval, as for fixed sizes (one write per task before).
            self._write_record()
        if events:
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
            if inputs.size(start, stop) <= protocol.inline_event_limit(self.limits.payload_limit_bytes):
                data = {"inline": base64.b64encode(inputs.item_bytes(start, stop)).decode()}
            else:  # read from storage by the worker, which checks the covering blocks
                data = {"key": protocol.data_key(spec.prefix, spec.job_id),
                        "start": int(base[start]), "stop": int(base[stop]),
                        "blocks": [list(b) for b in inputs.covering(start, stop)]}
            data.update(protocol.encode_item_sizes(inputs.sizes[start:stop]))
        event: Event = {
            "v": protocol.PROTOCOL_VERSION, "job_id": spec.job_id, "prefix": spec.prefix,
            "storage": self._storage_desc, "function_key": spec.function_key,
            "task": tid, "data": data, "host_submit": self.clock(), "attempt": 0,
            "timeout": self._invocation_timeout(stop - start), "memory_mb": spec.memory_mb,
            "auth": self._key_hex,  # one string for every event (a job's events may all be queued)
        }
        if spec.reduce is not None:
            event["reduce"] = dict(spec.reduce, auth=integrity.job_key(spec.reduce["job_id"]).hex())
        if self.limits.live_stdout_s:
            event["live_stdout"] = self.limits.live_stdout_s
        if self.limits.calls_back:
            event["reply_status"] = True  # the response carries the status it stored
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
            # The slow clock starts at the first attempt accepted: a retry of an event that
            # was throttled until the backend gave up starts it, or the task gets no backup.
            self._first_start.setdefault(event["task"], at)

    def on_throttled(self, event: Event, retry_after: float | None) -> None:
        with self._lock:
            self.throttled += 1

    def on_start(self, event: Event) -> None:
        now = self.clock()
        with self._lock:
            if not event.get("attempt"):  # a later start (a Lambda accept) is the same attempt's
                self._first_start[event["task"]] = now
            self._started.add(event["task"])
        self.store.mark_running(event["task"], now)

    def on_done(self, event: Event, response: dict[str, Any]) -> None:
        if response.get("state") == "cancelled" or self.cancelled:
            return  # the worker saw the cancel marker: the job is (being) cancelled
        # The status the worker stored, if its write was the first (else read the winner's);
        # verified in _collect exactly as the stored object would be.
        sealed = response.get("sealed") if response.get("written") is True else None
        raw = sealed.encode("ascii") if isinstance(sealed, str) else None
        self._guarded(self._collect, event["task"], self.clock(), raw)

    def on_failure(self, event: Event, error: InfrastructureError) -> None:
        """Retry the task if the user allowed it, else end it with ``error``. An attempt
        that fails while another attempt of the task still runs (a backup race) is
        dropped: the other may still deliver, and the deadline still applies."""
        if self.cancelled:
            return
        tid = event["task"]
        with self._lock:
            if tid in self._applied:
                return  # a loser of a backup race, stopped once the winner's status came
            live = self._live_attempts.get(tid)
            if live is not None:
                live.discard(event.get("attempt", 0))
                if live:
                    return
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

    def _resend(self, tid: str, event: Event, backup: str | None = None) -> Event:
        """A new attempt of a task (lock held); the caller invokes it. ``backup`` ("slow"
        or "lost"): the attempt races the ones sent before, which keep running."""
        attempt = self._last_attempt.get(tid, 0) + 1
        self._last_attempt[tid] = attempt
        again = dict(event, attempt=attempt, host_submit=self.clock())
        again.pop("backup", None)
        self._inflight[tid] = again
        self._accepted.pop(tid, None)
        self._sent_at.setdefault(tid, {})[attempt] = again["host_submit"]
        live = self._live_attempts.setdefault(tid, set())
        if backup:
            again["backup"] = backup
            self._backups[tid] = self._backups.get(tid, 0) + 1
            self.backups_sent += 1
            self.store.note_backup(tid, again["host_submit"], backup, attempt)
        else:
            live.clear()  # a retry replaces an attempt that ended
        live.add(attempt)
        self._inherited.discard(tid)
        self._record_dirty = True
        self.retried += 1
        return again

    def _guarded(self, fn: Callable[..., object], *args: Any) -> None:
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
                blob = None if "infra" in status else read_result_blob(
                    self.storage, spec.prefix, spec.job_id, status)
                outcomes = None if blob is None else pickle.loads(blob)
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
            self._started.discard(tid)
            self._uncollected.discard(tid)
            st = status.get("stats") or {}
            if st.get("result_stored") and st.get("host_submit"):
                self._latencies.append(st["result_stored"] - st["host_submit"])
            a, b = protocol.task_range(tid)
            if "infra" not in status and st.get("result_stored") and st.get("worker_start"):
                self._per_item_s.append((st["result_stored"] - st["worker_start"]) / (b - a))
            raced = self._backups.get(tid, 0) > 0
            sent = self._sent_at.pop(tid, {})
            self._live_attempts.pop(tid, None)
        writer = self.cache_writer
        if writer is not None and blob is not None:
            errors = protocol.item_errors(status)
            writer.add(status, blob, [k for k in range(b - a) if a + k not in errors])
            # The last task's results are written before the job ends: a re-run right
            # after it finds them.
            self._guarded(writer.flush, self.store.count_open(0, spec.n_items) <= b - a)
        if raced:
            # The first status stored won; the other attempts are stopped where the backend
            # can, and what they ran is billed (until now: when the host saw the winner).
            self.backend.stop_task(self.spec.job_id, tid)
            winner = int(status.get("attempt", 0))
            losers_s = sum(max(0.0, host_seen - t) for k, t in sent.items() if k != winner)
            self.store.note_losers(tid, len(sent), losers_s)
        self.store.apply_status(status, outcomes, host_seen, self.clock())
        if self._batcher is not None and "infra" not in status:
            self._batcher.record(b - a, st["compute_done"] - st["worker_start"])
        if self.spending is not None:
            self._spent(tid, b - a)
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
        if self.spending is not None:  # it ended: a probe waiting for it goes on
            a, b = protocol.task_range(tid)
            self._spent(tid, b - a)
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
            elif self.limits.live_stdout_s:
                self.poll_live_stdout()
            self.check_deadlines()
            self._maybe_write_record(now)
            if self.cache_writer is not None:
                self.cache_writer.flush()
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
        self._read_live_stdout(keys, pending)
        if len(new) > 1:
            # Fetch the new statuses concurrently: on S3 each GET is a round trip, and
            # one at a time they would cap how many tasks per second the host can see.
            def fetch(tid: str) -> bytes:
                return self.storage.get(protocol.status_key(spec.prefix, spec.job_id, tid))

            # A pool per poll (a thread costs tens of microseconds, a GET milliseconds):
            # no thread outlives the job, so shutdown(wait=True) leaves none behind.
            with cf.ThreadPoolExecutor(max_workers=min(len(new), FETCH_THREADS),
                                       thread_name_prefix="cloudbutton-fetch",
                                       initializer=block_interrupts) as pool:
                futs = [pool.submit(fetch, tid) for tid in new]
                for tid, fut in zip(new, futs, strict=True):
                    self._collect(tid, seen, raw=fut.result(), any_task=wide)
        elif new:
            self._collect(new[0], seen, any_task=wide)
        for key in crashes:
            self._crash_reported(key)
        return len(new)

    def poll_live_stdout(self) -> None:
        """What the running tasks printed so far, for a backend that reports each end itself
        (the storage poll reads it on the others): a listing of each started task's own
        keys. A task prints only once started (``on_start`` comes before its event is
        sent), and one that ended hands all it printed in its status: queued and finished
        tasks are not listed (a listing of the whole job from its first pending task read
        every later task's directory on each tick, O(tasks) per tick at chunksize 1)."""
        with self._lock:
            running = sorted(self._started & self._inflight.keys())
        if not running:
            return
        tasks_prefix = protocol.tasks_prefix(self.spec.prefix, self.spec.job_id)
        keys = [key for tid in running for key in self.storage.list(f"{tasks_prefix}{tid}/")]
        self._read_live_stdout(keys, set(running))

    def _read_live_stdout(self, keys: Sequence[str], pending: set[str]) -> None:
        """Read the new live stdout objects among ``keys`` (of tasks still running), verify
        their seals, and hand their texts to the store. An object that does not verify is
        ignored: the task's status, verified too, carries all its output."""
        new = []
        for key in keys:
            found = protocol.live_stdout_from_key(key)
            if found is not None and found[0] in pending and key not in self._stdout_seen:
                self._stdout_seen.add(key)
                new.append((key, found))
        for key, (tid, attempt, seq) in new:  # in key order: a task's flushes in sequence
            try:
                doc = integrity.open_sealed(self.key, protocol.object_name(self.spec.prefix, key),
                                            self.storage.get(key), "the live stdout")
                if doc.get("task") != tid or doc.get("attempt") != attempt or doc.get("seq") != seq:
                    raise IntegrityError(f"the live stdout {key} is a foreign object")
                a, b = protocol.task_range(tid)
                texts = {int(i): str(t) for i, t in (doc.get("items") or {}).items()
                         if str(i).isdigit() and a <= int(i) < b}
            except (IntegrityError, NotFound, ValueError) as err:
                log.warning("job %s: %s", self.spec.job_id, err)
                continue
            with self._lock:
                self._ran.add(tid)  # it runs: not a lost event (no backups for that)
            self.store.add_live_stdout(texts)

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
            self._live_attempts.pop(tid, None)  # no backup race: the crash ends this round
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
        self._send_backups(now)
        grace = limits.deadline_grace_s
        if grace is None:  # the backend enforces timeouts itself and always reports
            return
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
                    # The deadline is the task's (backups do not move it): it ends every
                    # attempt, else silent backups would keep the task waiting forever.
                    self._live_attempts.pop(tid, None)
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

    def _send_backups(self, now: float) -> None:
        """Backup invocations: one mechanism for tasks presumed lost and tasks merely slow.

        A backup is a new attempt of the same task sent while the others still run: the
        first status stored wins (first write wins), the others are stopped where the
        backend can (``Backend.stop_task``), and every attempt is billed.

        - Lost (backends that may drop events silently, ``lost_after_s``: Lambda's async
          invokes): an event silent for ``lost_after_s`` plus twice the 90th percentile
          submit-to-stored time of this job's finished tasks is sent again, at most
          ``redeliveries`` times, spaced so that all fit before the task's deadline
          (backups do not move it).
        - Slow (every backend, unless ``backups=False``): cubed's rule, see
          ``BACKUP_SLOW_FACTOR``; one backup per task.
        """
        limits = self.limits
        backups: list[Event] = []
        with self._lock:
            if not self._inflight or self.cancelled:
                return
            slow_limit = self._slow_limit() if self.spec.backups else None
            lost = None
            if limits.lost_after_s is not None and self._latencies:
                latencies = sorted(self._latencies)
                lost = limits.lost_after_s + 2 * latencies[int(0.9 * (len(latencies) - 1))]
            if slow_limit is None and lost is None:
                return  # nothing to compare with yet: the timeout deadline still applies
            budget, grace = limits.redeliveries, limits.deadline_grace_s or 0.0
            for tid, e in list(self._inflight.items()):
                reason = None
                sent = self._accepted.get(tid)
                if (lost is not None and sent is not None and tid not in self._ran
                        and self._redelivered.get(tid, 0) < budget):
                    wait = min(lost, max(limits.lost_after_s or 0.0,
                                         (e["timeout"] + grace) / (budget + 1)))
                    if now - sent >= wait:
                        reason = "lost"
                        self._redelivered[tid] = self._redelivered.get(tid, 0) + 1
                if reason is None and slow_limit is not None and not self._backups.get(tid):
                    started = self._first_start.get(tid)
                    a, b = protocol.task_range(tid)
                    if started is not None and (now - started) / (b - a) > slow_limit:
                        reason = "slow"
                if reason is None:
                    continue
                if tid not in self._clock_start and sent is not None:
                    self._clock_start[tid] = sent  # a backup does not extend the deadline
                backups.append(self._resend(tid, e, backup=reason))
        if backups:
            log.info("job %s: backup invocations for %s", self.spec.job_id,
                     ", ".join(f"{e['task']} ({e['backup']})" for e in backups))
            self._invoke(backups)

    def _slow_limit(self) -> float | None:
        """Seconds per item past which a running task is slow (lock held); None while the
        job is too small or not half done (cubed's rule)."""
        done = len(self._per_item_s)
        if not done:
            return None
        running = len(self._inflight)
        unplanned = self.spec.n_items - self._next_item
        if unplanned > 0:  # tasks still to plan, at the size of those done so far
            unplanned = math.ceil(unplanned / max(1.0, (self._next_item / max(1, done + running))))
        total = done + running + unplanned
        if total < BACKUP_MIN_TASKS or done < BACKUP_DONE_FRACTION * total:
            return None
        durations = sorted(self._per_item_s)
        median = durations[len(durations) // 2]
        return max(BACKUP_SLOW_FACTOR * median, median + BACKUP_MIN_EXTRA_S)

    def _marker_time(self, key: str, default: float) -> float:
        """The time the cancel marker at ``key`` states; ``default`` if it cannot be read."""
        try:
            at = protocol.read_cancel_marker(self.storage.get(key)).get("at")
        except Exception as exc:  # the cancel goes on: only the shown end time is at stake
            log.warning("job %s: cannot read its cancel marker: %s", self.spec.job_id, exc)
            return default
        return float(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else default

    def _end_open_items_as_lost(self) -> None:
        for a, b in self.store.open_runs():
            tid = protocol.task_id(a, b, self.spec.n_items)
            err = LostInvocationError(
                f"items {a}..{b - 1} of job {self.spec.job_id} have no result and their "
                "deadline passed", tid)
            self._end_task({"task": tid, "attempt": 0}, err)

    # Cancelling ---------------------------------------------------------------------
    def cancel(self, by: str = "executor", reason: str | None = None) -> int:
        """Stop the job: no more invocations, the backend told to stop the running ones,
        every open item cancelled. Returns how many items had not ended."""
        with self._lock:
            if self.cancelled or self.store.done():
                return 0
            self.cancelled = True
            self._inflight.clear()
        at = self.clock()
        key = protocol.cancel_key(self.spec.prefix, self.spec.job_id)
        try:
            if not self.storage.put_if_absent(key, protocol.cancel_marker(by=by, at=at, reason=reason)):
                # Cancelled by someone else first (the panel, another kernel): the job ended
                # when their marker says, as the panel and the CLI read it.
                at = self._marker_time(key, at)
        finally:
            self.cancelled_at = at
            self.backend.cancel_job(self.spec.job_id)
            if self.cache_writer is not None:  # what finished is kept
                self._guarded(self.cache_writer.flush, True)
        return self.store.cancel()

