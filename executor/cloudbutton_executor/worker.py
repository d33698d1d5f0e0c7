"""The one worker handler: ``handler(event, context)``.

Lambda calls it; the local backend's worker processes call the same function.
It needs only its event: everything else (function, inputs) comes from
storage, and everything it produces (results, stats, stdout) goes to storage.
The event never carries credentials: storage is reached with the worker's own
role (on Lambda) or the local filesystem.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import pickle
import sys
import time
import traceback

from . import context as _context
from . import protocol
from .errors import ExceptionByState, OutOfMemoryError, RemoteError
from .storage import NotFound, storage_from_description

_PROCESS_START = time.time()
_invocations = 0
_functions: dict[str, object] = {}  # warm containers keep function blobs
_storages: dict[str, object] = {}
_no_cancel_seen: dict[str, float] = {}  # job id -> when this container last found no cancel marker


def _storage(desc: dict):
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


def _error_record(exc: BaseException) -> dict:
    return {
        "type": type(exc).__qualname__,
        "module": type(exc).__module__,
        "message": str(exc)[:2000],
        "traceback": _format_traceback(exc)[-20000:],
    }


def _picklable_exception(exc: BaseException, record: dict) -> BaseException:
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
    """Captures a task's prints while keeping them visible in the worker's log."""

    def __init__(self, stream):
        self.buf = io.StringIO()
        self.stream = stream

    def writable(self):
        return True

    def write(self, s):
        if self.buf.tell() < protocol.STDOUT_LIMIT:
            self.buf.write(s)
        if self.stream is not None:
            try:
                self.stream.write(s)
            except Exception:
                pass
        return len(s)

    def flush(self):
        if self.stream is not None:
            try:
                self.stream.flush()
            except Exception:
                pass


def _load_inputs(storage, event) -> list[bytes]:
    data = event["data"]
    if "inline" in data:
        blob = base64.b64decode(data["inline"])
    else:
        blob = storage.get(data["key"], data["start"], data["stop"])
    offs = data["offsets"]
    view = memoryview(blob)  # slices without copying (pickle.loads takes any buffer)
    return [view[offs[i]:offs[i + 1]] for i in range(len(offs) - 1)]


def _load_reduce_inputs(storage, event) -> list[bytes]:
    """A reduce task's input: the results of another job's tasks, in order."""
    spec = event["reduce"]
    values = []
    for tid in spec["tasks"]:
        status = json.loads(storage.get(protocol.status_key(event["prefix"], spec["job_id"], tid)))
        for ok, value in _read_results(storage, event["prefix"], spec["job_id"], tid, status):
            if not ok:
                raise value
            values.append(value)
    return [pickle.dumps(((values,), {}))]


def _read_results(storage, prefix, job_id, tid, status):
    res = status["result"]
    if "inline" in res:
        blob = base64.b64decode(res["inline"])
    else:
        blob = storage.get(protocol.result_key(prefix, job_id, tid))
    return pickle.loads(blob)


def handler(event, context=None):
    global _invocations
    worker_start = time.time()
    cold = _invocations == 0
    _invocations += 1
    prefix, job_id, tid = event["prefix"], event["job_id"], event["task"]
    storage = _storage(event["storage"])
    counts_before = storage.request_counts

    # An event may allow a warm container to trust a recent "not cancelled" answer for
    # ``cancel_check_ttl`` seconds (Lambda: saves one HEAD per task; the host also stops
    # sending a cancelled job's events). Without it, every task checks.
    ttl = event.get("cancel_check_ttl")
    seen = _no_cancel_seen.get(job_id)
    if ttl is None or seen is None or worker_start - seen > ttl:
        if storage.exists(protocol.cancel_key(prefix, job_id)):
            return {"task": tid, "state": "cancelled"}
        if ttl is not None:
            _no_cancel_seen[job_id] = worker_start

    fkey = event["function_key"]
    fn = _functions.get(fkey)
    if fn is None:
        import cloudpickle

        fn = _functions[fkey] = cloudpickle.loads(storage.get(fkey))
    inputs = _load_reduce_inputs(storage, event) if "reduce" in event else _load_inputs(storage, event)
    setup_done = time.time()

    first = protocol.task_range(tid)[0]
    outcomes, items = _run_items(fn, inputs, first, tid, event)
    compute_done = time.time()

    blob = _dump_outcomes(outcomes, items["errors"], first)  # may add errors (unpicklable results)
    status = {
        "v": protocol.PROTOCOL_VERSION,
        "job_id": job_id,
        "task": tid,
        "state": "error" if items["errors"] else "done",
        "attempt": event.get("attempt", 0),
        "items": items,
        "stats": {
            "host_submit": event.get("host_submit"),
            "worker_start": worker_start,
            "setup_done": setup_done,
            "compute_done": compute_done,
            "cold_start": cold,
            "runtime_start": _PROCESS_START,
            "peak_mem_mb": round(_peak_mem_mb(), 1),
            "request_id": getattr(context, "aws_request_id", None),
            "pid": os.getpid(),
        },
    }
    if len(blob) <= protocol.INLINE_RESULT_BYTES:
        status["result"] = {"inline": base64.b64encode(blob).decode()}
    else:
        storage.put_if_absent(protocol.result_key(prefix, job_id, tid), blob)
        status["result"] = {"key": protocol.result_key(prefix, job_id, tid), "bytes": len(blob)}
    counts = storage.request_counts
    # The status PUT itself is counted here, before it happens, so the count is complete.
    worker_requests = {k: counts.get(k, 0) - counts_before.get(k, 0) for k in counts}
    worker_requests["PUT"] = worker_requests.get("PUT", 0) + 1
    status["stats"]["requests"] = {k: v for k, v in worker_requests.items() if v}
    status["stats"]["result_stored"] = time.time()
    written = storage.put_if_absent(protocol.status_key(prefix, job_id, tid),
                                    json.dumps(status, separators=(",", ":")).encode())
    return {"task": tid, "state": status["state"], "written": written}


def _run_items(fn, inputs, first: int, tid: str, event):
    """Run the task's items in order: their (ok, value) outcomes and the status's
    item columns (see ``protocol.item_columns``).

    Kept lean: a batch of tiny items spends most of its time here, so the
    per-item work is a few attribute reads, two clock reads and an unpickle."""
    outcomes, errors, flops, stdout, t0_us, t1_us = [], {}, {}, {}, [], []
    tee = _Tee(sys.stdout)  # one capture for the batch, emptied after each item
    buf = tee.buf
    reported = _context._flops
    reported[0] = 0
    clock, loads = time.time, pickle.loads
    base = clock()
    with contextlib.redirect_stdout(tee):
        for k, raw in enumerate(inputs):
            t0 = clock()
            try:
                args, kwargs = loads(raw)
                outcomes.append((True, fn(*args, **kwargs)))
            except MemoryError as exc:
                limit = event.get("memory_mb")
                oom = OutOfMemoryError(f"task exceeded the memory limit of {limit} MB" if limit
                                       else "task ran out of memory", tid)
                oom.__cause__ = exc
                errors[str(first + k)] = dict(_error_record(oom), kind="oom")
                outcomes.append((False, oom))
            except BaseException as exc:  # the user's exception, whatever it is
                if isinstance(exc, (SystemExit, KeyboardInterrupt)) and not isinstance(exc, Exception):
                    exc = RuntimeError(f"task raised {type(exc).__name__}({exc})")
                rec = errors[str(first + k)] = _error_record(exc)
                outcomes.append((False, _picklable_exception(exc, rec)))
            t0_us.append(int((t0 - base) * 1e6))
            t1_us.append(int((clock() - base) * 1e6))
            if reported[0]:
                flops[str(first + k)] = reported[0]
                reported[0] = 0
            if buf.tell():
                stdout[str(first + k)] = buf.getvalue()
                buf = tee.buf = io.StringIO()
    return outcomes, {"base": base, "t0_us": t0_us, "t1_us": t1_us,
                      "errors": errors, "flops": flops, "stdout": stdout}


def _dump_outcomes(outcomes, errors, first: int) -> bytes:
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
        return cloudpickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return cloudpickle.dumps([_safe_outcome(o, errors, first + k) for k, o in enumerate(outcomes)],
                                 protocol=pickle.HIGHEST_PROTOCOL)


def _safe_outcome(outcome, errors, i):
    ok, value = outcome
    import cloudpickle

    try:
        cloudpickle.dumps(value)
        return outcome
    except Exception as exc:
        msg = f"the task's result of type {type(value).__qualname__} cannot be pickled: {exc}"
        errors[str(i)] = {"type": "RemoteError", "module": __name__, "message": msg, "traceback": ""}
        return (False, RemoteError("PicklingError", msg))


def read_status(storage, prefix: str, job_id: str, tid: str) -> dict | None:
    try:
        return json.loads(storage.get(protocol.status_key(prefix, job_id, tid)))
    except NotFound:
        return None


def read_results(storage, prefix: str, job_id: str, status: dict):
    """The (ok, value) outcomes of a stored task, in item order."""
    return _read_results(storage, prefix, job_id, status["task"], status)
