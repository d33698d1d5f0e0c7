"""What a job has spent, what it will spend, and whether it may go on (a budget cap).

Pure bookkeeping over ``accounting`` (the one cost model): the dispatcher feeds it
every task that ends and asks it, after each, whether the job must stop. Before a
job that is billed launches (Lambda), the estimate comes from earlier runs of the
same function (the timings a finished job leaves, or the cache's timings) or, when
there are none, from a probe: the first ``PROBE_INVOCATIONS`` invocations run
alone and the rest waits for their figures.
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from . import accounting
from .units import format_usd

PROBE_INVOCATIONS = 3   # invocations that run before the rest of a billed, budgeted job
MIN_TASKS_TO_PROJECT = 3  # ended tasks before a projection may stop a job


class Spending:
    """A job's cost so far, its projected total and its budget."""

    def __init__(self, *, n_items: int, open_items: int, budget_usd: float | None,
                 memory_mb: float | None, architecture: str | None, concurrency: int,
                 chunksize: int | str):
        self.n_items = n_items
        self.open_items = open_items        # items to compute (not served by the cache)
        self.budget_usd = budget_usd
        self.memory_mb = memory_mb
        self.architecture = architecture
        self.concurrency = concurrency
        self.chunksize = chunksize
        self.usage = accounting.Usage()      # the ended tasks' (workers' side)
        self.computed = 0                    # items those tasks covered
        self.tasks = 0
        self._wall: list[float] = []         # submit -> stored of each ended task
        self.estimate: dict[str, Any] | None = None
        self.stopped: str | None = None      # why the budget stopped the job
        self.worst_usd: float | None = None  # every invocation running to its timeout

    @property
    def probing(self) -> bool:
        """Hold the job back to a probe: billed, budgeted, and nothing to estimate from."""
        return (self.budget_usd is not None and self.architecture is not None
                and self.estimate is None
                and (self.worst_usd is None or self.worst_usd > self.budget_usd))

    def add_task(self, stats: Mapping[str, Any], attempt: int, items: int) -> None:
        self.usage.add_task(stats, attempt)
        self.computed += items
        self.tasks += 1
        if stats.get("result_stored") and stats.get("host_submit"):
            self._wall.append(float(stats["result_stored"]) - float(stats["host_submit"]))

    def wall_s(self) -> float:
        """The median submit-to-stored time of the ended tasks."""
        return statistics.median(self._wall) if self._wall else 0.0

    def invocations_for(self, items: int) -> int:
        size = self.chunksize if isinstance(self.chunksize, int) else max(
            1, round(self.computed / max(1, self.tasks)))
        return -(-items // size)

    def make_estimate(self, source: str, usage: accounting.Usage | None = None,
                      sample_items: int = 0, wall_s: float | None = None) -> dict[str, Any]:
        """The estimate for the job's open items, from this job's ended tasks (a probe) or
        from ``usage`` of ``sample_items`` items of earlier runs."""
        if usage is None:
            usage, sample_items, wall_s = self.usage, self.computed, self.wall_s()
        est = accounting.estimate(
            usage, items=self.open_items, invocations=self.invocations_for(self.open_items),
            seconds_per_invocation=wall_s or 0.0, concurrency=self.concurrency,
            memory_mb=self.memory_mb, architecture=self.architecture, sample_items=sample_items)
        est["source"] = source
        self.estimate = est
        return est

    def spent_usd(self, host_requests: Mapping[str, int] | None = None) -> float:
        usage = self.usage
        if host_requests:
            usage = accounting.Usage(usage.tasks, usage.invocations, usage.run_s, usage.init_s,
                                     dict(usage.requests))
            usage.add_requests(host_requests)
        return accounting.cost(usage, memory_mb=self.memory_mb,
                               architecture=self.architecture)["cost_usd"]

    def projected_usd(self) -> float:
        return accounting.projected_usd(self.usage, computed=self.computed,
                                        remaining=max(0, self.open_items - self.computed),
                                        memory_mb=self.memory_mb, architecture=self.architecture)

    def verdict(self) -> str | None:
        """Why the job must stop now (None: it may go on)."""
        budget = self.budget_usd
        if budget is None or self.stopped:
            return None
        spent = self.spent_usd()
        if spent > budget:
            return (f"it has spent {format_usd(spent)}, over its budget of {format_usd(budget)}")
        est = self.estimate
        if (est is not None and est["source"] in ("probe", "earlier runs")
                and self.tasks <= PROBE_INVOCATIONS and est["usd"] > budget):
            return (f"the estimate ({est['invocations']:,} invocations, about "
                    f"{format_usd(est['usd'])}) is over its budget of {format_usd(budget)}")
        if self.tasks >= MIN_TASKS_TO_PROJECT:
            projected = self.projected_usd()
            if projected > budget:
                return (f"its projected total of {format_usd(projected)} would pass its budget "
                        f"of {format_usd(budget)}")
        return None

    def figures(self) -> dict[str, Any]:
        """For the widget and ``job.spending``: spent, projected, budget, estimate, stop."""
        return {"spent_usd": self.spent_usd(), "projected_usd": self.projected_usd(),
                "budget_usd": self.budget_usd, "estimate": self.estimate,
                "stopped": self.stopped}
