"""What a running task can tell the host about itself."""
from __future__ import annotations

import threading
from typing import Any

_flops: list[float] = [0]
# Bytes the running invocation read from storage (its ``obj`` chunks, ``ObjectStorage``
# reads) and the seconds spent waiting for them: its read throughput, in its stats.
_reads = {"bytes": 0, "seconds": 0.0}
_reads_lock = threading.Lock()
# The invocation running in this process (set by the worker handler): its job storage's
# description, prefix, job id and task id. ``ObjectStorage()`` in a task reads it.
_task: dict[str, Any] | None = None


def set_task(event: dict[str, Any] | None) -> None:
    global _task
    _task = None if event is None else {k: event[k] for k in ("storage", "prefix", "job_id", "task")}


def current_task() -> dict[str, Any] | None:
    """Where the running task's job lives, or None outside a task (on the host)."""
    return _task


def report_flops(n: float) -> None:
    """Add ``n`` floating-point operations to the current task's count.

    The count lands in the task's stats; the GFLOPS plot sums it.
    """
    if n < 0:
        raise ValueError(f"report_flops: a FLOP count cannot be negative (got {n!r})")
    _flops[0] += n



def count_read(n_bytes: int, seconds: float) -> None:
    """The running task read ``n_bytes`` from storage in ``seconds``."""
    with _reads_lock:
        _reads["bytes"] += n_bytes
        _reads["seconds"] += seconds


def take_reads() -> tuple[int, float]:
    """``(bytes, seconds)`` read since the last call (the worker's, once per invocation)."""
    with _reads_lock:
        out = (int(_reads["bytes"]), float(_reads["seconds"]))
        _reads["bytes"], _reads["seconds"] = 0, 0.0
    return out
