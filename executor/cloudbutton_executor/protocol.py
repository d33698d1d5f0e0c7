"""The storage protocol shared by the host, the workers and the Jupyter panel.

Everything here is plain data: key names, id formats, the cancel marker, the
deadline after which nobody can finish a job, and the JSON shapes of
manifests, events and statuses. Keep it importable without cloudpickle so the
server extension (which must never unpickle) can use it. Prices live beside
it, in ``accounting.py``.
"""
from __future__ import annotations

import array
import base64
import datetime
import functools
import itertools
import json
import os
import re
import struct
import sys
import threading
import time
from typing import Any

# 3: statuses, crash reports, manifests and dispatch records are sealed (``integrity``),
# inputs are stored with a verifiable index; 2: a status's "items" is columnar (see
# ``item_columns``); 1 had one record per item.
PROTOCOL_VERSION = 3

# YYYYMMDD-HHMMSSmmm-xxxxxx: UTC creation time to the millisecond, then 6 random hex digits,
# so ids sort by creation time. Ids of earlier versions lack the milliseconds.
JOB_ID_PATTERN = r"\d{8}-\d{6}(?:\d{3})?-[0-9a-f]{6}"
JOB_ID_RE = re.compile(rf"^{JOB_ID_PATTERN}\Z")
# A task (one invocation) covers items [start, stop) of its job; both numbers are
# zero-padded to the same width within a job (``task_id_width``), so that the order
# of status keys in a listing is the order of the items. Jobs of fewer than a
# million items have the 6-digit ids of every earlier version of the protocol.
TASK_ID_RE = re.compile(r"^(\d{6,})-(\d{6,})\Z")
MIN_TASK_ID_DIGITS = 6

# A result (or a batch of results) at most this big travels inside status.json.
INLINE_RESULT_BYTES = 64 * 1024
# Inputs of one invocation at most this big travel inside the event (base64 adds a
# third; a backend's payload limit caps it further, see ``inline_event_limit``).
INLINE_EVENT_BYTES = 96 * 1024
STDOUT_LIMIT = 64 * 1024

# A job followed from storage only (re-attached) ends its missing items as lost this
# long after the last moment its own host could still have run them (see ``lost_deadline``).
LOST_JOB_GRACE_S = 60.0
# A dispatching host rewrites its job's dispatch record at least this often while the
# job runs; a record older than DISPATCH_STALE_S means that host is gone.
HEARTBEAT_S = 10.0
DISPATCH_STALE_S = 3 * HEARTBEAT_S


_last_job_ms = 0
_job_id_lock = threading.Lock()


def new_job_id() -> str:
    """A new job id; ids made by one process are strictly increasing (newest sorts last)."""
    global _last_job_ms
    with _job_id_lock:
        ms = max(time.time_ns() // 1_000_000, _last_job_ms + 1)
        _last_job_ms = ms
    stamp = datetime.datetime.fromtimestamp(ms // 1000, datetime.timezone.utc)
    return f"{stamp:%Y%m%d-%H%M%S}{ms % 1000:03d}-{os.urandom(3).hex()}"


def job_created(job_id: str) -> float:
    """The creation time (UTC, to the second) a job id starts with."""
    stamp = datetime.datetime.strptime(job_id[:15], "%Y%m%d-%H%M%S")
    return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()


def task_id_width(n_items: int) -> int:
    """Digits of each number in the task ids of a job of ``n_items`` items."""
    return max(MIN_TASK_ID_DIGITS, len(str(max(0, n_items))))


def task_id(start: int, stop: int, n_items: int) -> str:
    """The id of the task (one invocation) covering items [start, stop) of a job of
    ``n_items`` items."""
    if not 0 <= start < stop <= n_items:
        raise ValueError(f"no task [{start}, {stop}) in a job of {n_items} items")
    w = task_id_width(n_items)
    return f"{start:0{w}d}-{stop:0{w}d}"


@functools.lru_cache(maxsize=1 << 12)  # the host asks ~10 times per task it runs
def task_range(tid: str) -> tuple[int, int]:
    """``(start, stop)`` of a task id, whatever its width."""
    m = TASK_ID_RE.match(tid)
    if m is None:
        raise ValueError(f"not a task id: {tid!r}")
    return int(m.group(1)), int(m.group(2))


def is_task_id(text: str) -> bool:
    m = TASK_ID_RE.match(text)
    return m is not None and int(m.group(1)) < int(m.group(2))


# Keys -------------------------------------------------------------------------------
def functions_prefix(prefix: str) -> str:
    return f"{prefix}/functions/"


def function_key(prefix: str, digest: str) -> str:
    return f"{functions_prefix(prefix)}{digest}.pickle"


def values_prefix(prefix: str) -> str:
    return f"{prefix}/values/"


def value_key(prefix: str, digest: str) -> str:
    """A large captured value, stored once and named by its pickle's sha256 (see largevalues)."""
    return f"{values_prefix(prefix)}{digest}.pickle"


def content_digest(key: str) -> str | None:
    """The sha256 a function's or a value's key names (None for any other key)."""
    m = re.search(r"/(?:functions|values)/([0-9a-f]{64})\.pickle\Z", key)
    return m.group(1) if m else None


# Function blobs and large values are shared by jobs (content-addressed). A host about to
# name one in a new job stores it or refreshes its last-modified time first, at least this
# often; ``cloudbutton clean`` deletes only those no remaining job names AND unmodified for
# twice as long, so a job being submitted never loses what it is about to name.
CONTENT_REFRESH_S = 1800.0
CONTENT_GRACE_S = 2 * CONTENT_REFRESH_S


# A captured global whose pickle is larger than this is stored once on its own (content-
# addressed) instead of inside every function blob, and loaded once per warm worker.
LARGE_VALUE_BYTES = 10 * 1024 * 1024


def jobs_prefix(prefix: str) -> str:
    """Where every job of a prefix lives: one folder per job id below it."""
    return f"{prefix}/jobs/"


def job_prefix(prefix: str, job_id: str) -> str:
    return f"{jobs_prefix(prefix)}{job_id}"


def manifest_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/manifest.json"


def data_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/data.pickle"


def data_index_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/data.index"


def dispatch_key(prefix: str, job_id: str) -> str:
    """What the job's dispatching host has sent, and when (see ``dispatch.DispatchRecord``)."""
    return f"{job_prefix(prefix, job_id)}/dispatch.json"


def owner_key(prefix: str, job_id: str, epoch: int) -> str:
    """The claim of a host that dispatches the job from ``epoch`` on (first write wins)."""
    return f"{job_prefix(prefix, job_id)}/owner-{epoch}"


def tasks_prefix(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/tasks/"


def status_key(prefix: str, job_id: str, tid: str) -> str:
    return f"{tasks_prefix(prefix, job_id)}{tid}/status.json"


def result_key(prefix: str, job_id: str, tid: str) -> str:
    return f"{tasks_prefix(prefix, job_id)}{tid}/result.pickle"


def crash_key(prefix: str, job_id: str, tid: str, attempt: int) -> str:
    """Where a supervisor reports that attempt ``attempt`` of task ``tid`` crashed (its
    worker died, or ran out of time); the host then retries it or ends it."""
    return f"{tasks_prefix(prefix, job_id)}{tid}/crash-{attempt}.json"


def inputs_shown_key(prefix: str, job_id: str) -> str:
    """Short reprs of the job's first inputs (``shown_inputs``), for the panel."""
    return f"{job_prefix(prefix, job_id)}/inputs_shown.json"


INPUT_REPRS_MAX = 1000   # items whose input the panel can show
INPUT_REPR_CHARS = 80    # characters of each


def cancel_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/cancel"


def is_digest(text: str) -> bool:
    """A sha256 as 64 lowercase hex digits (content addresses, cache identities)."""
    return re.fullmatch(r"[0-9a-f]{64}", text or "") is not None


def function_digest(fkey: str) -> str:
    """The sha256 a content-addressed function key names."""
    name = fkey.rsplit("/", 1)[-1]
    digest = name.removesuffix(".pickle")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"not a content-addressed function key: {fkey!r}")
    return digest


def object_name(prefix: str, key: str) -> str:
    """A key below its prefix: what a seal binds an object to."""
    return key[len(prefix) + 1:] if key.startswith(prefix + "/") else key


def task_id_from_status_key(key: str) -> str | None:
    parts = key.rsplit("/", 2)
    if len(parts) == 3 and parts[2] == "status.json" and is_task_id(parts[1]):
        return parts[1]
    return None


def live_stdout_key(prefix: str, job_id: str, tid: str, attempt: int, seq: int) -> str:
    """What attempt ``attempt`` of task ``tid`` printed so far, its ``seq``-th flush (live
    stdout: a new key per flush, so the host's listing says what is new)."""
    return f"{tasks_prefix(prefix, job_id)}{tid}/stdout-{attempt}-{seq:06d}.json"


def live_stdout_from_key(key: str) -> tuple[str, int, int] | None:
    """``(task id, attempt, seq)`` of a live stdout key, else None."""
    parts = key.rsplit("/", 2)
    if len(parts) == 3 and is_task_id(parts[1]):
        m = re.fullmatch(r"stdout-(\d+)-(\d+)\.json", parts[2])
        if m:
            return parts[1], int(m.group(1)), int(m.group(2))
    return None


def crash_from_key(key: str) -> tuple[str, int] | None:
    """``(task id, attempt)`` of a crash report's key, else None."""
    parts = key.rsplit("/", 2)
    if len(parts) == 3 and is_task_id(parts[1]):
        m = re.fullmatch(r"crash-(\d+)\.json", parts[2])
        if m:
            return parts[1], int(m.group(1))
    return None


def job_ids(names: list[str]) -> list[str]:
    """The job ids among the names below ``jobs_prefix``, newest first (a job id
    starts with its UTC creation time)."""
    return sorted((n for n in names if JOB_ID_RE.match(n)), reverse=True)


# The cancel marker ------------------------------------------------------------------
# Whoever cancels a job (its own host, the Jupyter panel, `%cloud cancel` in another
# kernel) writes it once, first write wins; workers and hosts only test that it exists.
def cancel_marker(by: str, at: float, reason: str | None = None) -> bytes:
    """``by``: who cancels ("budget" when the job's budget stopped it, with ``reason``)."""
    doc: dict[str, Any] = {"v": PROTOCOL_VERSION, "by": by, "at": at}
    if reason:
        doc["reason"] = reason
    return json.dumps(doc).encode()


def read_cancel_marker(raw: bytes) -> dict[str, Any]:
    """``{"by": ..., "at": ...}`` of a cancel marker; a marker written by an older
    version (free text) gives ``{"by": <the text>}``."""
    try:
        info = json.loads(raw)
    except ValueError:
        info = None
    if isinstance(info, dict):
        return info
    return {"by": raw.decode("utf-8", "replace")[:200]}


# Deadlines --------------------------------------------------------------------------
def lost_deadline(manifest: dict[str, Any], record: dict[str, Any] | None = None) -> float:
    """When a job that nobody is dispatching any more can no longer get a result it has not
    stored (``attach`` then finishes it: it sends what was never sent and what is overdue).

    With its dispatch record: once its host stopped writing it (``DISPATCH_STALE_S``) and
    what it had sent is past its deadline (the record's ``deadline``). A job of an older
    version (no record): every item one after another at its timeout, plus a grace."""
    if record:
        return max(float(record.get("updated") or 0) + DISPATCH_STALE_S,
                   float(record.get("deadline") or 0))
    n = max(1, int(manifest.get("n_items") or 0))
    timeout = float(manifest.get("timeout") or 300)
    return float(manifest.get("created") or 0) + timeout * n + LOST_JOB_GRACE_S


def inline_event_limit(payload_limit_bytes: int | None) -> int:
    """The most input bytes one event may carry inline for a backend with this payload
    limit (base64 and the event's other fields must fit beside them)."""
    if payload_limit_bytes is None:
        return INLINE_EVENT_BYTES
    return min(INLINE_EVENT_BYTES, payload_limit_bytes // 2)


# Statuses -------------------------------------------------------------------------
# A status's "items" describes the items of its task column-wise, so a batch of
# thousands of tiny items stays a small, fast JSON document:
#   {"t_marks": "<base64>",                          compute start/end, see below
#    "errors": {"<i>": record}, "flops": {"<i>": n}, "stdout": {"<i>": text}}
# "t_marks" is the worker's clock (epoch seconds) read once per item, as little-endian
# float64s, base64: one more mark than items, item k ran from mark k to mark k + 1. It
# costs the worker one clock read per item and no per-item JSON; earlier statuses of
# this version carry "base" (seconds) with "t0_us" and "t1_us" (µs after it) instead:
# ``item_times`` reads both.
# Only failed items have an error record; flops and stdout only where non-empty.
# A host-written status (an infrastructure failure) has "infra" and empty "items":
# all of its items failed with that error.
# Its "stats" holds the invocation's timestamps (host_submit, worker_start, setup_done,
# compute_done, result_stored), cold_start, peak_mem_mb, the storage requests the
# worker made ("requests": {"PUT": n, ...}), where the backend reports it, the
# billed INIT time of a cold start ("init_s") and, for a task that read data from
# storage (``obj`` chunks, ``ObjectStorage``), "read_bytes" and the "read_s" spent on them.

def item_columns(status: dict[str, Any]) -> dict[str, Any]:
    """The columnar "items" of a status, whatever the version that wrote it."""
    items = status.get("items") or {}
    if isinstance(items, list):  # version 1: one record per item
        base = min((r["t0"] for r in items if r.get("t0") is not None), default=0.0)
        cols: dict[str, Any] = {"base": base, "errors": {}, "flops": {}, "stdout": {}}
        if all(r.get("t0") is not None and r.get("t1") is not None for r in items):
            cols["t0_us"] = [round((r["t0"] - base) * 1e6) for r in items]
            cols["t1_us"] = [round((r["t1"] - base) * 1e6) for r in items]
        for r in items:
            key = str(r.get("i"))
            if not r.get("ok"):
                cols["errors"][key] = r.get("error") or {}
            if r.get("flops"):
                cols["flops"][key] = r["flops"]
            if r.get("stdout"):
                cols["stdout"][key] = r["stdout"]
        return cols
    return dict(items)


def encode_marks(marks: array.array[float]) -> str:
    """``marks`` (float64 clock readings) as a status's "t_marks"."""
    if sys.byteorder != "little":
        marks = array.array("d", marks)
        marks.byteswap()
    return base64.b64encode(marks.tobytes()).decode("ascii")


def item_times(cols: dict[str, Any]) -> list[tuple[float, float]]:
    """``(compute start, compute end)`` of every item of a status's columns, in seconds
    (empty if the status has none: an infrastructure failure)."""
    text = cols.get("t_marks")
    if text is not None:
        marks = array.array("d", base64.b64decode(text))
        if sys.byteorder != "little":
            marks.byteswap()
        return list(itertools.pairwise(marks))
    t0, t1 = cols.get("t0_us") or [], cols.get("t1_us") or []
    base = cols.get("base") or 0.0
    return [(base + a / 1e6, base + b / 1e6) for a, b in zip(t0, t1)]


def item_time(cols: dict[str, Any], k: int) -> tuple[float, float] | None:
    """``(compute start, compute end)`` of the ``k``-th item of a status's columns, decoding
    only its two marks; None if the status has no times for it."""
    text = cols.get("t_marks")
    if text is not None:
        raw = base64.b64decode(text)
        if not 0 <= k < len(raw) // 8 - 1:
            return None
        start, end = struct.unpack_from("<2d", raw, 8 * k)
        return start, end
    t0, t1 = cols.get("t0_us"), cols.get("t1_us")
    if not t0 or not t1 or not 0 <= k < min(len(t0), len(t1)):
        return None
    base = cols.get("base") or 0.0
    return base + t0[k] / 1e6, base + t1[k] / 1e6


def encode_item_sizes(sizes: array.array[int]) -> dict[str, Any]:
    """An event's item boundaries: ``{"sizes": base64 of little-endian uint32s}``, one per
    item (no JSON number per item: the host encodes and the worker decodes them in C), or
    ``{"offsets": [0, ...]}`` if an item is too big for 32 bits."""
    try:
        packed = array.array("I", sizes)
    except OverflowError:
        return {"offsets": list(itertools.accumulate(sizes, initial=0))}
    if sys.byteorder != "little":
        packed.byteswap()
    return {"sizes": base64.b64encode(packed.tobytes()).decode("ascii")}


def item_offsets(data: dict[str, Any]) -> list[int]:
    """The item offsets (from 0, one more than items) of an event's data, either form."""
    text = data.get("sizes")
    if text is None:
        return list(data["offsets"])
    sizes = array.array("I", base64.b64decode(text))
    if sys.byteorder != "little":
        sizes.byteswap()
    return list(itertools.accumulate(sizes, initial=0))


def item_errors(status: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Item index -> error record, for every failed item of a status."""
    infra = status.get("infra")
    if infra is not None:
        record = {"type": infra.get("type", "InfrastructureError"), "kind": infra.get("kind"),
                  "message": infra.get("message", ""), "traceback": infra.get("traceback", "")}
        return dict.fromkeys(range(*task_range(status["task"])), record)
    return {int(k): v for k, v in (item_columns(status).get("errors") or {}).items()}


def item_flops(status: dict[str, Any]) -> float:
    """The FLOPs the items of a status reported, summed."""
    return float(sum((item_columns(status).get("flops") or {}).values()))


def item_stdout(status: dict[str, Any]) -> dict[int, str]:
    return {int(k): v for k, v in (item_columns(status).get("stdout") or {}).items()}


def host_failure_status(job_id: str, tid: str, attempt: int, error_type: str, kind: str,
                        message: str, host_submit: float | None) -> dict[str, Any]:
    """The status the host stores for a task that ended without a worker's status
    (lost, timed out, its worker died): every item failed with that error."""
    return {
        "v": PROTOCOL_VERSION, "job_id": job_id, "task": tid, "state": "error",
        "attempt": attempt, "written_by": "host",
        "infra": {"type": error_type, "kind": kind, "message": message},
        "items": {},
        "stats": {"host_submit": host_submit},
    }
