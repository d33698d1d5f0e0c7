"""The storage protocol shared by the host, the workers and the Jupyter panel.

Everything here is plain data: key names, id formats and the JSON shapes of
manifests, events and statuses. Keep it importable without cloudpickle so the
server extension (which must never unpickle) can use it.
"""
from __future__ import annotations

import datetime
import os
import re
import time

PROTOCOL_VERSION = 1

JOB_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{6}$")
TASK_ID_RE = re.compile(r"^\d{6}-\d{6}$")

# A result (or a batch of results) at most this big travels inside status.json.
INLINE_RESULT_BYTES = 64 * 1024
# Inputs of one invocation at most this big travel inside the event
# (Lambda's async payload limit is 256 KB; base64 adds a third).
INLINE_EVENT_BYTES = 96 * 1024
STDOUT_LIMIT = 64 * 1024


def new_job_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + os.urandom(3).hex()


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


def now() -> float:
    return time.time()
