"""The one worker handler: ``handler(event, context)``.

Lambda calls it; the local backend's worker processes call the same function.
It needs only its event: everything else (function, inputs) comes from
storage, and everything it produces (results, stats, stdout) goes to storage.
The event never carries credentials: storage is reached with the worker's own
role (on Lambda) or the local filesystem.
"""
from __future__ import annotations

import array
import base64
import contextlib
import io
import math
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TextIO

from . import context as _context
from . import integrity, largevalues, protocol, sharedbuffers
from .errors import (ExceptionByState, IntegrityError, OutOfMemoryError, RemoteError,
                     TaskTimeoutError)
from .local_runtime import CANCELLED_EXIT_CODE, seconds_since_process_start
from .storage import NotFound, Storage, storage_from_description

Outcome = tuple[bool, Any]  # (ok, the result or the exception an item raised)

_PROCESS_START = time.time()
# Seconds from the runtime's start to this module's import (the part of Lambda's INIT
# phase we can see): reported once, by the container's first (cold) invocation.
_INIT_DURATION_S = seconds_since_process_start()
_invocations = 0
_functions: dict[str, Callable[..., Any]] = {}  # warm containers keep function blobs
_storages: dict[tuple[tuple[str, Any], ...], Storage] = {}
_no_cancel_seen: dict[str, float] = {}  # job id -> when this container last found no cancel marker


def _storage(desc: dict[str, Any]) -> Storage:
    key = tuple(sorted(desc.items()))
    st = _storages.get(key)
    if st is None:
        st = _storages[key] = storage_from_description(desc)
    return st


def _peak_mem_mb() -> float:
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    except Exception:  # pragma: no cover - not on Linux
        return 0.0


_OWN_DIR = os.path.dirname(os.path.abspath(__file__))


def _format_traceback(exc: BaseException) -> str:
    """The traceback of the user's code: our own frames (handler, cell runner) are dropped."""
    te = traceback.TracebackException.from_exception(exc)
    frames = [f for f in te.stack if not os.path.abspath(f.filename).startswith(_OWN_DIR + os.sep)]
    if frames:
        te.stack = traceback.StackSummary.from_list(frames)
    return "".join(te.format())


def _error_record(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc)[:2000],
        "traceback": _format_traceback(exc)[-20000:],
    }


def _picklable_exception(exc: BaseException, record: dict[str, Any]) -> Any:
    """``exc`` if it survives the trip back, else a RemoteError with its type, message
    and traceback. cloudpickle, not pickle: an exception class defined in the notebook
    or a local module came by value and goes back by value (cloudpickle's class
    tracker hands the host its own class again, so ``except Boom`` works there).
    An exception whose ``__init__`` takes other arguments than its ``args`` (which
    plain unpickling cannot call) travels as its type, args and attributes."""
    import cloudpickle

    for candidate in (exc, ExceptionByState(exc)):
        try:
            cloudpickle.loads(cloudpickle.dumps(candidate, protocol=pickle.HIGHEST_PROTOCOL))
            return candidate
        except Exception:
            continue
    return RemoteError(record["type"], record["message"], record["traceback"])


class _Tee(io.TextIOBase):
    """Captures a task's prints, item by item, while keeping them visible in the worker's
    log. The item printing is the one whose outcome comes next (``first`` + how many
    outcomes there are), so the item loop does no per-item work for stdout; an item's
    buffer becomes a plain string once the next item prints."""

    def __init__(self, stream: TextIO | None, outcomes: list[Outcome], first: int,
                 live: _LiveStdout | None = None):
        self.texts: dict[int, str] = {}  # item -> what it printed (items before ``_item``)
        self._item = first               # the item ``_buf`` holds the prints of
        self._buf = io.StringIO()
        self.stream = stream
        self.outcomes = outcomes
        self.first = first
        self.live = live

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        live = self.live
        if live is None:
            self._capture(s)
        else:
            with live.lock:
                kept = self._capture(s)
            if kept:
                live.printed()
        if self.stream is not None:
            try:
                self.stream.write(s)
            except Exception:
                pass
        return len(s)

    def _capture(self, s: str) -> bool:
        item = self.first + len(self.outcomes)
        if item != self._item:  # a later item prints: the earlier one's text is final
            if self._buf.tell():
                self.texts[self._item] = self._buf.getvalue()
            self._item, self._buf = item, io.StringIO()
        if self._buf.tell() >= protocol.STDOUT_LIMIT:
            return False
        self._buf.write(s)
        return True

    def flush(self) -> None:
        if self.stream is not None:
            try:
                self.stream.flush()
            except Exception:
                pass

    def captured(self) -> dict[str, str]:
        """What each item printed (those that printed), for the status's "stdout"."""
        out = {str(i): text for i, text in self.texts.items()}
        current = self._buf.getvalue()
        if current:
            out[str(self._item)] = current
        return out


class _LiveStdout:
    """Stores what a running task has printed so far, so that it shows while the task runs
    (``event["live_stdout"]``: at most that often, and only while it prints: a silent task
    writes nothing). Each flush is a new sealed object (``protocol.live_stdout_key``)
    holding the whole text so far of every item whose text changed since the last one."""

    def __init__(self, storage: Storage, event: dict[str, Any], key: bytes, interval: float):
        self.storage, self.event, self.key = storage, event, key
        self.interval = interval
        self.lock = threading.Lock()
        self.tee: _Tee | None = None
        self._timer: threading.Timer | None = None
        self._last = 0.0
        self._seq = 0
        self._sent: dict[str, int] = {}  # item -> length of its text already stored
        self._closed = False

    def printed(self) -> None:
        """Something was printed: flush within ``interval`` (one timer at a time)."""
        if self._timer is not None or self._closed:
            return
        with self.lock:
            if self._timer is not None or self._closed:
                return
            delay = max(0.0, self._last + self.interval - time.monotonic())
            self._timer = threading.Timer(delay, self.flush)
            self._timer.daemon = True
            self._timer.start()

    def flush(self) -> None:
        with self.lock:
            self._timer = None
            if self._closed or self.tee is None:
                return
            texts = self.tee.captured()
            changed = {i: t for i, t in texts.items() if len(t) != self._sent.get(i)}
            if not changed:
                return
            self._sent.update((i, len(t)) for i, t in changed.items())
            self._seq += 1
            seq = self._seq
            self._last = time.monotonic()
        ev = self.event
        name = protocol.live_stdout_key(ev["prefix"], ev["job_id"], ev["task"],
                                        ev.get("attempt", 0), seq)
        doc = {"job_id": ev["job_id"], "task": ev["task"], "attempt": ev.get("attempt", 0),
               "seq": seq, "items": changed}
        try:
            self.storage.put(name, integrity.seal(self.key, protocol.object_name(ev["prefix"], name),
                                                  doc))
        except Exception:  # live output is a courtesy: the status carries all of it
            pass

    def close(self) -> None:
        with self.lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None


def _load_inputs(storage: Storage, event: dict[str, Any]) -> list[memoryview]:
    data = event["data"]
    if "inline" in data:  # the event itself is trusted: it came through the invoke API
        blob = base64.b64decode(data["inline"])
        view = memoryview(blob)  # slices without copying (pickle.loads takes any buffer)
    else:
        # Fetch the blocks covering the range, check each against the digest the event
        # names (the host hashed them when it stored them), then take the range.
        blocks = data.get("blocks")
        if not blocks or blocks[0][0] > data["start"] or blocks[-1][1] < data["stop"]:
            raise IntegrityError(f"the event of task {event['task']} reads inputs it cannot verify")
        first = blocks[0][0]
        blob = storage.get(data["key"], first, blocks[-1][1])
        view = memoryview(blob)
        for a, b, digest in blocks:
            integrity.check_content(view[a - first:b - first], digest,
                                    f"bytes {a}-{b} of {data['key']}")
        view = view[data["start"] - first:data["stop"] - first]
    offs = protocol.item_offsets(data)
    return [view[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]


def _load_reduce_inputs(storage: Storage, event: dict[str, Any]) -> list[memoryview]:
    """A reduce task's input: the results of another job's tasks, in order, each status
    verified with that job's key (which the event carries)."""
    spec = event["reduce"]
    key = bytes.fromhex(spec["auth"])
    values = []
    for tid in spec["tasks"]:
        status = read_status(storage, event["prefix"], spec["job_id"], tid, key)
        if status is None:
            raise FileNotFoundError(f"task {tid} of job {spec['job_id']} has no stored status")
        for ok, value in read_results(storage, event["prefix"], spec["job_id"], status):
            if not ok:
                raise value
            values.append(value)
    return [memoryview(pickle.dumps(((values,), {})))]


def handler(event: dict[str, Any], context: Any = None, *,
            setup_error: BaseException | None = None) -> dict[str, Any]:
    """Run one invocation; whatever happens, exactly one terminal status is written
    (PyWren's rule): a setup failure (the runtime's own, as ``setup_error``, e.g. a
    full /tmp; cancel check, function, inputs) becomes an error status naming the
    cause, so the host ends the task at once."""
    global _invocations
    worker_start = time.time()
    # Under a supervisor (Lambda), the container's cold start and INIT time are its.
    runtime = event.get("runtime") or {}
    cold = bool(runtime.get("cold", _invocations == 0))
    init_s = runtime.get("init_s", _INIT_DURATION_S)
    _invocations += 1
    prefix, job_id, tid = event["prefix"], event["job_id"], event["task"]
    storage = _storage(event["storage"])
    counts_before = storage.request_counts
    stats: dict[str, Any] = {"host_submit": event.get("host_submit"), "worker_start": worker_start,
             "cold_start": cold, "runtime_start": _PROCESS_START,
             "request_id": getattr(context, "aws_request_id", None), "pid": os.getpid()}
    if cold and init_s is not None:
        stats["init_s"] = init_s  # billed INIT time of this container (cold starts)
    try:
        key = bytes.fromhex(event["auth"])  # seals what this invocation writes
    except (KeyError, TypeError, ValueError):
        # Without the job's key its status could not be told from a forgery: write nothing.
        return {"task": tid, "state": "refused", "error": "the event carries no valid job key"}
    try:
        if setup_error is not None:
            raise setup_error
        if _cancelled(storage, prefix, job_id, worker_start, event.get("cancel_check_ttl")):
            return {"task": tid, "state": "cancelled"}
        fn = _load_function(storage, event["function_key"], prefix)
        inputs = _load_reduce_inputs(storage, event) if "reduce" in event else _load_inputs(storage, event)
    except BaseException as exc:  # noqa: B902 - any setup failure must end the task now
        return _write_status(storage, event, key, _setup_failure_status(event, exc, stats),
                             counts_before)
    stats["setup_done"] = time.time()
    first = protocol.task_range(tid)[0]
    _context.set_task(event)  # ObjectStorage() in the task: this job's storage
    _context.take_reads()  # from zero: what this invocation's task reads
    outcomes: list[Outcome] | None = None
    try:
        with _job_deadline(event, context, worker_start), \
                _WATCH.watching(storage, protocol.cancel_key(prefix, job_id)):
            outcomes, items = _run_items(fn, inputs, first, tid, event, storage, key)
    except _Cancelled:  # its job was cancelled while it ran: no results, no status
        return {"task": tid, "state": "cancelled"}
    except _JobDeadline:
        if outcomes is None:  # it passed before the items' loop could catch it (a setup that
            # took the invocation's time): every item ends as a timeout, in a status as usual
            outcomes, items = _run_items(_deadline_passed, inputs, first, tid, event)
    finally:  # a handler run in the host's own process (tests, tools) leaves no task behind
        _context.set_task(None)
        sharedbuffers.forget_maps()
    stats["compute_done"] = time.time()
    read_bytes, read_s = _context.take_reads()
    if read_bytes:  # its read throughput (obj chunks, ObjectStorage): the timeline shows it
        stats["read_bytes"], stats["read_s"] = read_bytes, round(read_s, 6)

    # May add errors (a result that cannot be pickled, or not within the memory limit).
    blob = _dump_outcomes(outcomes, items["errors"], first, event.get("memory_mb"))
    stats["peak_mem_mb"] = round(_peak_mem_mb(), 1)
    status: dict[str, Any] = {"v": protocol.PROTOCOL_VERSION, "job_id": job_id, "task": tid,
              "state": "error" if items["errors"] else "done", "attempt": event.get("attempt", 0),
              "items": items, "stats": stats}
    if len(blob) <= protocol.INLINE_RESULT_BYTES:
        status["result"] = {"inline": base64.b64encode(blob).decode()}
    else:  # named by its sha256 inside the sealed status: the host checks it before loading
        storage.put_if_absent(protocol.result_key(prefix, job_id, tid), blob)
        status["result"] = {"key": protocol.result_key(prefix, job_id, tid), "bytes": len(blob),
                            "sha256": integrity.sha256(blob)}
    return _write_status(storage, event, key, status, counts_before)


def _cancelled(storage: Storage, prefix: str, job_id: str, now: float, ttl: float | None) -> bool:
    # An event may allow a warm container to trust a recent "not cancelled" answer for
    # ``cancel_check_ttl`` seconds (Lambda: saves one HEAD per task; the host also stops
    # sending a cancelled job's events). Without it, every task checks.
    seen = _no_cancel_seen.get(job_id)
    if ttl is None or seen is None or now - seen > ttl:
        if storage.exists(protocol.cancel_key(prefix, job_id)):
            return True
        if ttl is not None:
            _no_cancel_seen[job_id] = now
    return False


def _load_function(storage: Storage, fkey: str, prefix: str) -> Callable[..., Any]:
    fn = _functions.get(fkey)
    if fn is None:
        import cloudpickle

        blob = storage.get(fkey)
        integrity.check_content(blob, protocol.function_digest(fkey), f"the function blob {fkey}")
        with largevalues.reading_from(storage, prefix):  # large globals it names
            fn = _functions[fkey] = cloudpickle.loads(blob)
    return fn


def _worker_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    try:
        import cloudpickle

        out["cloudpickle"] = cloudpickle.__version__
    except Exception:  # the very thing that failed, perhaps
        out["cloudpickle"] = None
    return out


def _setup_failure_status(event: dict[str, Any], exc: BaseException,
                          stats: dict[str, Any]) -> dict[str, Any]:
    """An error status for a task whose function or inputs could not be loaded: every
    item fails with one infrastructure error saying why, and on which worker."""
    versions = _worker_versions()
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    what = f"{type(exc).__name__}: {str(exc)[:1500]}"
    message = (f"task {event['task']} could not start on the worker (Python {versions['python']}, "
               f"cloudpickle {versions['cloudpickle']}): {what}")
    if missing:
        message += (f". The worker has no module {missing!r}: deploy the job's packages "
                    "(`cloudbutton deploy --sync`) or install it for the local workers")
    error_type, kind = "WorkerSetupError", "setup"
    if isinstance(exc, IntegrityError):  # not a problem of the worker's setup: say what it is
        message = f"task {event['task']} could not start: {exc}"
        error_type, kind = "IntegrityError", IntegrityError.kind
    infra: dict[str, Any] = {"type": error_type, "kind": kind, "message": message,
             "exception": {"type": type(exc).__qualname__, "module": type(exc).__module__,
                           "message": str(exc)[:2000]},
             "traceback": traceback.format_exc()[-20000:], "worker": versions}
    if missing:
        infra["missing_module"] = missing
    stats["setup_done"] = stats["compute_done"] = time.time()
    stats["peak_mem_mb"] = round(_peak_mem_mb(), 1)
    return {"v": protocol.PROTOCOL_VERSION, "job_id": event["job_id"], "task": event["task"],
            "state": "error", "attempt": event.get("attempt", 0), "infra": infra, "items": {},
            "stats": stats}


def _write_status(storage: Storage, event: dict[str, Any], key: bytes, status: dict[str, Any],
                  counts_before: dict[str, int]) -> dict[str, Any]:
    counts = storage.request_counts
    # The status PUT itself is counted here, before it happens, so the count is complete.
    worker_requests = {k: counts.get(k, 0) - counts_before.get(k, 0) for k in counts}
    worker_requests["PUT"] = worker_requests.get("PUT", 0) + 1
    status["stats"]["requests"] = {k: v for k, v in worker_requests.items() if v}
    status["stats"]["result_stored"] = time.time()
    skey = protocol.status_key(event["prefix"], event["job_id"], event["task"])
    sealed = integrity.seal(key, protocol.object_name(event["prefix"], skey), status)
    written = storage.put_if_absent(skey, sealed)
    response = {"task": event["task"], "state": status["state"], "written": written}
    if written and event.get("reply_status"):
        # What it stored, for a host that hears back (local workers): the host verifies it
        # as it would the stored object, without reading it back. (Sealed JSON is ASCII.)
        response["sealed"] = sealed.decode("ascii")
    return response


# Cancel while running ------------------------------------------------------------------
CANCEL_WATCH_S = 3.0      # a running invocation looks for its job's cancel marker this often
CANCEL_GRACE_S = 2.0      # a task still running this long after it was told to stop ...
# ... ends its process with local_runtime.CANCELLED_EXIT_CODE (its supervisor writes nothing)


class _Cancelled(BaseException):
    """The invocation's job was cancelled while it ran (see ``_CancelWatch``)."""


class _CancelWatch:
    """Notices, within ``CANCEL_WATCH_S``, that the job of the running invocation was
    cancelled, from a daemon thread (one per worker process): one HEAD of the cancel
    marker every ``CANCEL_WATCH_S`` while an invocation runs longer than that, and none
    for shorter ones. The task is stopped between items (a flag) and inside a long item
    (SIGUSR1 to the main thread, which interrupts sleeps and Python code); one stuck in
    native code for ``CANCEL_GRACE_S`` more ends its process, so the runtime is freed."""

    def __init__(self) -> None:
        self.current: tuple[Storage, str] | None = None  # (storage, cancel key) while running
        self.checked = 0.0          # when the cancel marker was last looked for
        self.cancelled = False      # the running invocation's job is cancelled
        self.generation = 0         # which invocation runs (the thread stops only that one)
        self._thread: threading.Thread | None = None
        self._main_ident: int | None = None

    def watching(self, storage: Storage, cancel_key: str) -> _CancelWatch:
        """Watch the job of the invocation that runs inside ``with`` (the watch itself is
        the context manager: no object made per invocation)."""
        self.generation += 1
        self.cancelled = False
        self.checked = time.time()  # the handler looked at its start
        self.current = (storage, cancel_key)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="cloudbutton-cancel-watch")
            self._thread.start()
        if self._main_ident is None and threading.current_thread() is threading.main_thread():
            # Installed once and left: a signal that arrives just after an invocation ended
            # must find this (harmless) handler, not the default action (death).
            signal.signal(signal.SIGUSR1, self._raise)
            self._main_ident = threading.get_ident()
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        self.current = None

    def _raise(self, signum: int, frame: Any) -> None:
        if self.cancelled and self.current is not None:
            raise _Cancelled()

    def _run(self) -> None:
        while True:
            time.sleep(CANCEL_WATCH_S / 4)
            current, generation = self.current, self.generation
            if current is None or time.time() - self.checked < CANCEL_WATCH_S:
                continue
            self.checked = time.time()
            storage, key = current
            try:
                found = storage.exists(key)
            except Exception:  # storage trouble: try again at the next look
                continue
            if found and self.generation == generation and self.current is not None:
                self.cancelled = True
                self._stop(generation)

    def _stop(self, generation: int) -> None:
        if self._main_ident is not None:
            signal.pthread_kill(self._main_ident, signal.SIGUSR1)
        deadline = time.time() + CANCEL_GRACE_S
        while time.time() < deadline:
            if self.generation != generation or self.current is None:
                return
            time.sleep(0.05)
        sys.stderr.write("cloudbutton: the job was cancelled and the task did not stop: ending "
                         "the worker process\n")
        os._exit(CANCELLED_EXIT_CODE)


_WATCH = _CancelWatch()


class _JobDeadline(BaseException):
    """The job's own timeout, shorter than the runtime's, has passed (see _job_deadline)."""


_NO_DEADLINE = contextlib.nullcontext()


def _job_deadline(event: dict[str, Any], context: Any,
                  started: float) -> contextlib.AbstractContextManager[Any]:
    """Stop the task at the job's timeout when it is shorter than what the runtime allows
    (Lambda: a per-job timeout under the function's Timeout): the items not finished
    then end as timeouts in this invocation's status, instead of running on and billing."""
    limit = event.get("timeout")
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    left = remaining() / 1000.0 if remaining else None
    main = threading.current_thread() is threading.main_thread()
    if event.get("stop_at") and main:
        # Under Lambda's supervisor: stop in time to store what finished, before Lambda
        # ends the invocation (its deadline, less the supervisor's margin).
        stop_at = min(started + float(limit or math.inf), float(event["stop_at"]))
    elif limit and left is not None and limit + 1.0 < left and main:
        stop_at = started + limit
    else:
        return _NO_DEADLINE  # the runtime's own timeout is the job's (local workers)
    return _timer_until(stop_at)


def _deadline_passed(*args: Any, **kwargs: Any) -> None:
    raise _JobDeadline()


@contextlib.contextmanager
def _timer_until(stop_at: float) -> Iterator[None]:
    """Raise _JobDeadline in the main thread at ``stop_at`` (SIGALRM)."""
    def expire(signum: int, frame: Any) -> None:
        raise _JobDeadline()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, stop_at - time.time()))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _run_items(fn: Callable[..., Any], inputs: list[memoryview], first: int, tid: str,
               event: dict[str, Any], storage: Storage | None = None,
               key: bytes | None = None) -> tuple[list[Outcome], dict[str, Any]]:
    """Run the task's items in order: their (ok, value) outcomes and the status's
    item columns (see ``protocol.item_columns``).

    Kept lean: a batch of tiny items spends most of its time here, so the per-item
    work is an unpickle, the call, one clock read (an item ends when the next starts)
    and two flag checks; stdout is attributed by the capture itself (``_Tee``)."""
    outcomes: list[Outcome] = []
    errors: dict[str, dict[str, Any]] = {}
    flops: dict[str, float] = {}
    live = None
    if event.get("live_stdout") and storage is not None and key is not None:
        live = _LiveStdout(storage, event, key, float(event["live_stdout"]))
    tee = _Tee(sys.stdout, outcomes, first, live)  # one capture for the batch
    if live is not None:
        live.tee = tee
    marks = array.array("d", [time.time()])  # item k ran from marks[k] to marks[k + 1]
    try:
        _run_batch(fn, inputs, first, tid, event, outcomes, errors, flops, marks, tee)
    except _JobDeadline:
        # The item running then and the rest end as timeouts; the status still gets written.
        now = time.time()
        for j in range(len(outcomes), len(inputs)):
            tmo = TaskTimeoutError(f"item {first + j} did not finish within the job's "
                                   f"timeout of {event.get('timeout'):g} s", tid)
            errors[str(first + j)] = dict(_error_record(tmo), kind="timeout")
            outcomes.append((False, tmo))
        del marks[len(outcomes) + 1:]
        marks.extend([now] * (len(outcomes) + 1 - len(marks)))
    finally:
        if live is not None:
            live.close()
    return outcomes, {"t_marks": protocol.encode_marks(marks), "errors": errors,
                      "flops": flops, "stdout": tee.captured()}


def _run_batch(fn: Callable[..., Any], inputs: list[memoryview], first: int, tid: str,
               event: dict[str, Any], outcomes: list[Outcome], errors: dict[str, dict[str, Any]],
               flops: dict[str, float], marks: array.array[float], tee: _Tee) -> None:
    reported = _context._flops
    reported[0] = 0
    clock, mark, done = time.time, marks.append, outcomes.append
    # Plain pickle.loads first; an input naming out-of-band buffers fails it with an
    # UnpicklingError and is loaded again with them mapped (sharedbuffers.loads).
    loads, oob_loads, unpickling_error = pickle.loads, sharedbuffers.loads, pickle.UnpicklingError
    watch = _WATCH
    with contextlib.redirect_stdout(tee):
        for raw in inputs:
            if watch.cancelled:
                raise _Cancelled()
            try:
                try:
                    args, kwargs = loads(raw)
                except unpickling_error:
                    args, kwargs = oob_loads(raw)
                done((True, fn(*args, **kwargs)))
            except (_JobDeadline, _Cancelled):
                raise  # ends the batch: see _run_items and handler
            except MemoryError as exc:
                limit = event.get("memory_mb")
                oom = OutOfMemoryError(f"task exceeded the memory limit of {limit} MB" if limit
                                       else "task ran out of memory", tid)
                oom.__cause__ = exc
                errors[str(first + len(outcomes))] = dict(_error_record(oom), kind="oom")
                done((False, oom))
            except BaseException as exc:  # the user's exception, whatever it is
                if isinstance(exc, (SystemExit, KeyboardInterrupt)) and not isinstance(exc, Exception):
                    exc = RuntimeError(f"task raised {type(exc).__name__}({exc})")
                rec = errors[str(first + len(outcomes))] = _error_record(exc)
                done((False, _picklable_exception(exc, rec)))
            mark(clock())
            if reported[0]:
                flops[str(first + len(outcomes) - 1)] = reported[0]
                reported[0] = 0


def _dump_outcomes(outcomes: list[Outcome], errors: dict[str, dict[str, Any]], first: int,
                   memory_mb: int | None = None) -> bytes:
    # Plain pickle first: it is several times cheaper than cloudpickle for the
    # usual results, and it refuses (rather than mis-pickles) what it cannot
    # name: classes and functions defined inside the task, which exist only in
    # this worker, fail its lookup-by-name check and go through cloudpickle.
    try:
        return pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pass
    import cloudpickle  # results may be instances of classes defined inside the task

    try:
        return bytes(cloudpickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return bytes(cloudpickle.dumps([_safe_outcome(o, errors, first + k, memory_mb)
                                        for k, o in enumerate(outcomes)],
                                       protocol=pickle.HIGHEST_PROTOCOL))


def _safe_outcome(outcome: Outcome, errors: dict[str, dict[str, Any]], i: int,
                  memory_mb: int | None) -> Outcome:
    ok, value = outcome
    import cloudpickle

    try:
        cloudpickle.dumps(value)
        return outcome
    except MemoryError:
        # Pickling needs about another copy of the result: name the limit it hit.
        oom = OutOfMemoryError(
            f"the task's result of type {type(value).__qualname__} could not be pickled within "
            + (f"the memory limit of {memory_mb} MB" if memory_mb else "the worker's memory")
            + " (pickling needs about as much memory again as the result): return a smaller "
            "result, or run with more memory", None)
        errors[str(i)] = dict(_error_record(oom), kind="oom", traceback="")
        return (False, oom)
    except Exception as exc:
        msg = f"the task's result of type {type(value).__qualname__} cannot be pickled: {exc}"
        errors[str(i)] = {"type": "RemoteError", "module": __name__, "message": msg, "traceback": ""}
        return (False, RemoteError("PicklingError", msg))


def read_status(storage: Storage, prefix: str, job_id: str, tid: str,
                key: bytes) -> dict[str, Any] | None:
    """Task ``tid``'s stored status, verified with the job's ``key`` (IntegrityError if
    it does not verify); None if it is not stored."""
    skey = protocol.status_key(prefix, job_id, tid)
    try:
        raw = storage.get(skey)
    except NotFound:
        return None
    return open_status(raw, prefix, skey, key, job_id, tid)


def open_status(raw: bytes, prefix: str, skey: str, key: bytes, job_id: str,
                tid: str) -> dict[str, Any]:
    """A status read from ``skey``, verified: its seal, and that it is this task's."""
    status = integrity.open_sealed(key, protocol.object_name(prefix, skey), raw, "the status")
    if status.get("job_id") != job_id or status.get("task") != tid:
        raise IntegrityError(f"the status {skey} is a foreign object: it is task "
                             f"{status.get('task')!r} of job {status.get('job_id')!r}")
    return status


def read_results(storage: Storage, prefix: str, job_id: str,
                 status: dict[str, Any]) -> list[Outcome]:
    """The (ok, value) outcomes of a verified stored task, in item order: a result blob is
    checked against the sha256 its status names before it is unpickled."""
    outcomes: list[Outcome] = pickle.loads(read_result_blob(storage, prefix, job_id, status))
    return outcomes


def read_result_blob(storage: Storage, prefix: str, job_id: str, status: dict[str, Any]) -> bytes:
    """The pickled outcomes of a verified stored task, checked against their sha256."""
    res = status["result"]
    if "inline" in res:
        blob = base64.b64decode(res["inline"])
    else:
        rkey = protocol.result_key(prefix, job_id, status["task"])
        blob = storage.get(rkey)
        if "sha256" not in res:
            raise IntegrityError(f"the status of {rkey} names no sha256 for it")
        integrity.check_content(blob, res["sha256"], f"the result {rkey}")
    return blob
