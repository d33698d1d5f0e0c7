"""The storage protocol shared by the host, the workers and the Jupyter panel.

Everything here is plain data: key names, id formats and the JSON shapes of
manifests, events and statuses. Keep it importable without cloudpickle so the
server extension (which must never unpickle) can use it.
"""
from __future__ import annotations

import datetime
import os
import re
import threading
import time

# 2: a status's "items" is columnar (see ``item_columns``); 1 had one record per item.
PROTOCOL_VERSION = 2

# YYYYMMDD-HHMMSSmmm-xxxxxx: UTC creation time to the millisecond, then 6 random hex digits,
# so ids sort by creation time. Ids of earlier versions lack the milliseconds.
JOB_ID_RE = re.compile(r"^\d{8}-\d{6}(?:\d{3})?-[0-9a-f]{6}$")
TASK_ID_RE = re.compile(r"^\d{6}-\d{6}$")

# A result (or a batch of results) at most this big travels inside status.json.
INLINE_RESULT_BYTES = 64 * 1024
# Inputs of one invocation at most this big travel inside the event
# (Lambda's async payload limit is 256 KB; base64 adds a third).
INLINE_EVENT_BYTES = 96 * 1024
STDOUT_LIMIT = 64 * 1024


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


def task_id(start: int, stop: int) -> str:
    """A task is one invocation covering items [start, stop)."""
    return f"{start:06d}-{stop:06d}"


def task_range(tid: str) -> tuple[int, int]:
    a, b = tid.split("-")
    return int(a), int(b)


def function_key(prefix: str, digest: str) -> str:
    return f"{prefix}/functions/{digest}.pickle"


def job_prefix(prefix: str, job_id: str) -> str:
    return f"{prefix}/jobs/{job_id}"


def manifest_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/manifest.json"


def data_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/data.pickle"


def tasks_prefix(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/tasks/"


def status_key(prefix: str, job_id: str, tid: str) -> str:
    return f"{tasks_prefix(prefix, job_id)}{tid}/status.json"


def result_key(prefix: str, job_id: str, tid: str) -> str:
    return f"{tasks_prefix(prefix, job_id)}{tid}/result.pickle"


def cancel_key(prefix: str, job_id: str) -> str:
    return f"{job_prefix(prefix, job_id)}/cancel"


def task_id_from_status_key(key: str) -> str | None:
    parts = key.rsplit("/", 2)
    if len(parts) == 3 and parts[2] == "status.json" and TASK_ID_RE.match(parts[1]):
        return parts[1]
    return None


# Statuses -------------------------------------------------------------------------
# A status's "items" describes the items of its task column-wise, so a batch of
# thousands of tiny items stays a small, fast JSON document:
#   {"base": t, "t0_us": [...], "t1_us": [...],     compute start/end, µs after base
#    "errors": {"<i>": record}, "flops": {"<i>": n}, "stdout": {"<i>": text}}
# Only failed items have an error record; flops and stdout only where non-empty.
# A host-written status (an infrastructure failure) has "infra" and empty "items":
# all of its items failed with that error.

def item_columns(status: dict) -> dict:
    """The columnar "items" of a status, whatever the version that wrote it."""
    items = status.get("items") or {}
    if isinstance(items, list):  # version 1: one record per item
        base = min((r["t0"] for r in items if r.get("t0") is not None), default=0.0)
        cols = {"base": base, "errors": {}, "flops": {}, "stdout": {}}
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
    return items


def item_errors(status: dict) -> dict[int, dict]:
    """Item index -> error record, for every failed item of a status."""
    infra = status.get("infra")
    if infra is not None:
        record = {"type": infra.get("type", "InfrastructureError"), "kind": infra.get("kind"),
                  "message": infra.get("message", ""), "traceback": infra.get("traceback", "")}
        return dict.fromkeys(range(*task_range(status["task"])), record)
    return {int(k): v for k, v in (item_columns(status).get("errors") or {}).items()}


def item_flops(status: dict) -> float:
    """The FLOPs the items of a status reported, summed."""
    return sum((item_columns(status).get("flops") or {}).values())


def item_stdout(status: dict) -> dict[int, str]:
    return {int(k): v for k, v in (item_columns(status).get("stdout") or {}).items()}


def now() -> float:
    return time.time()
