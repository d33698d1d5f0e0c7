"""Where a job's time went: each task's wall time split into phases, summed per job.

From the timestamps every status carries (``protocol``'s task stats): the host sends the
event (``host_submit``), the worker starts (``worker_start``; a cold container's INIT time,
``init_s``, is part of that wait), has loaded the function and its inputs (``setup_done``),
has computed (``compute_done``) and has stored the result (``result_stored``). The widget
(live and static), the panel and ``job.time_breakdown()`` show the same sums, so a user
sees whether batching would pay: when invoking, starting and moving data take longer than
computing, fewer, larger invocations (``chunksize``) cost less of it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (key, label): in the order a task goes through them.
PHASES: tuple[tuple[str, str], ...] = (
    ("invoke", "invoke/queue"),
    ("cold_start", "cold start"),
    ("download", "function + input download"),
    ("compute", "compute"),
    ("upload", "result upload"),
)


def _span(a: Any, b: Any) -> float:
    # Host and worker clocks may differ a little (Lambda): a phase is never negative.
    return max(0.0, float(b) - float(a)) if a is not None and b is not None else 0.0


def task_phases(stats: Mapping[str, Any]) -> dict[str, float]:
    """Seconds of each phase of one task, from its status's stats."""
    wait = _span(stats.get("host_submit"), stats.get("worker_start"))
    cold = min(wait, float(stats.get("init_s") or 0.0)) if stats.get("cold_start") else 0.0
    return {"invoke": wait - cold, "cold_start": cold,
            "download": _span(stats.get("worker_start"), stats.get("setup_done")),
            "compute": _span(stats.get("setup_done"), stats.get("compute_done")),
            "upload": _span(stats.get("compute_done"), stats.get("result_stored"))}


class Breakdown:
    """The phases of a job's tasks, summed as they end."""

    def __init__(self) -> None:
        self.seconds = {key: 0.0 for key, _ in PHASES}
        self.tasks = 0

    def add(self, stats: Mapping[str, Any]) -> None:
        if stats.get("worker_start") is None:
            return  # never ran (a host-side failure): nothing to split
        for key, s in task_phases(stats).items():
            self.seconds[key] += s
        self.tasks += 1

    def as_dict(self) -> dict[str, Any]:
        """Seconds per phase (summed over tasks), their total, and how many tasks."""
        total = sum(self.seconds.values())
        return {"seconds": dict(self.seconds), "total_s": total, "tasks": self.tasks}


def batching_hint(breakdown: Mapping[str, Any]) -> str:
    """One sentence on whether fewer, larger invocations would pay."""
    s, total = breakdown["seconds"], breakdown["total_s"]
    if not total:
        return ""
    overhead = total - s["compute"]
    share = overhead / total
    if share > 0.5:
        return (f"{share:.0%} of the tasks' time went to invoking, starting and moving data: "
                "larger batches (chunksize) would pay")
    return f"{1 - share:.0%} of the tasks' time was compute: batching would gain little"
