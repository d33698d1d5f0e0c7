"""What a running task can tell the host about itself."""
from __future__ import annotations

from typing import Any

_flops: list[float] = [0]
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

