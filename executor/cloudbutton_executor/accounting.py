"""What a job costs and how fast it goes, computed from its records.

One set of prices and one set of pure functions, used by the job's ``stats``,
the progress widget, the Jupyter panel's job summaries and the CLI, so they
agree on the same job. The inputs are the records every one of them can read:
the task statuses (their ``stats``), the manifest, and, where the caller has
them, the host's own storage requests. Memory and CPU architecture are inputs
because Lambda bills what is deployed, which the caller knows best.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from . import phases, protocol


@dataclasses.dataclass(frozen=True)
class Prices:
    """List prices in USD, for one region and the first usage tier."""

    region: str
    source: str
    checked: str
    lambda_gb_second: Mapping[str, float]   # by CPU architecture
    lambda_request: float                   # per invocation
    s3_request: Mapping[str, float]         # per request, by kind (as storages count them)


PRICES = Prices(
    region="us-east-1",
    source="https://aws.amazon.com/lambda/pricing/ and https://aws.amazon.com/s3/pricing/ "
           "(S3 Standard requests); INIT time of cold starts billed like the invoke since "
           "2025-08-01 (AWS Compute Blog, 'AWS Lambda standardizes billing for INIT phase')",
    checked="2025-08",
    lambda_gb_second={"x86_64": 0.0000166667, "arm64": 0.0000133334},
    lambda_request=0.20 / 1_000_000,
    # PUT, COPY, POST and LIST are one tier; GET, HEAD and SELECT the other; DELETE is free.
    s3_request={"PUT": 0.005 / 1000, "LIST": 0.005 / 1000, "GET": 0.0004 / 1000,
                "HEAD": 0.0004 / 1000, "DELETE": 0.0},
)
DEFAULT_ARCHITECTURE = "x86_64"
DEFAULT_MEMORY_MB = 1024
MIN_BILLED_S = 0.001  # Lambda bills by the millisecond


def billed_seconds(stats: Mapping[str, Any]) -> float:
    """The billed duration of one invocation from its status's stats: from the handler's
    first line to its status stored, at least a millisecond; 0 if no worker ran it (a
    status the host wrote for a lost or timed-out task)."""
    start = stats.get("worker_start")
    if not start:
        return 0.0
    end = stats.get("result_stored") or stats.get("compute_done") or start
    return max(MIN_BILLED_S, float(end) - float(start))


@dataclasses.dataclass
class Usage:
    """What a job used, accumulated record by record (the widget adds tasks as they end)."""

    tasks: int = 0            # task statuses seen
    invocations: int = 0      # invocations billed: every attempt that led to a status
    run_s: float = 0.0        # billed invoke time
    init_s: float = 0.0       # billed INIT time of cold starts, where the status records it
    requests: dict[str, int] = dataclasses.field(default_factory=dict)  # storage, by kind

    def add_status(self, status: Mapping[str, Any]) -> None:
        """One task's status (as stored)."""
        self.add_task(status.get("stats") or {}, int(status.get("attempt") or 0))

    def add_task(self, stats: Mapping[str, Any], attempt: int = 0) -> None:
        self.tasks += 1
        self.invocations += attempt + 1
        # backup_s: the run time of invocations that lost to a backup (or whose backup lost)
        self.run_s += billed_seconds(stats) + float(stats.get("backup_s") or 0.0)
        self.init_s += float(stats.get("init_s") or 0.0)
        self.add_requests(stats.get("requests") or {})

    def add_requests(self, counts: Mapping[str, int]) -> None:
        for kind, n in counts.items():
            self.requests[kind] = self.requests.get(kind, 0) + int(n)


def cost(usage: Usage, *, memory_mb: float | None, architecture: str | None = None,
         prices: Prices = PRICES) -> dict[str, float]:
    """The Lambda and S3 bill of ``usage`` at ``memory_mb`` on ``architecture``."""
    arch = architecture or DEFAULT_ARCHITECTURE
    if arch not in prices.lambda_gb_second:
        raise ValueError(f"no Lambda price for architecture {arch!r}; known: "
                         f"{', '.join(prices.lambda_gb_second)}")
    gb = (memory_mb or DEFAULT_MEMORY_MB) / 1024
    gb_seconds = (usage.run_s + usage.init_s) * gb
    compute = gb_seconds * prices.lambda_gb_second[arch]
    invokes = usage.invocations * prices.lambda_request
    storage = sum(n * prices.s3_request.get(kind, prices.s3_request["GET"])
                  for kind, n in usage.requests.items())
    return {"gb_seconds": gb_seconds, "init_gb_seconds": usage.init_s * gb,
            "compute_usd": compute, "invocations_usd": invokes, "storage_usd": storage,
            "cost_usd": compute + invokes + storage}


def scaled(usage: Usage, factor: float) -> Usage:
    """``usage`` as if ``factor`` times as much work had been done (projections)."""
    return Usage(tasks=round(usage.tasks * factor), invocations=round(usage.invocations * factor),
                 run_s=usage.run_s * factor, init_s=usage.init_s * factor,
                 requests={k: round(n * factor) for k, n in usage.requests.items()})


def projected_usd(usage: Usage, *, computed: int, remaining: int, memory_mb: float | None,
                  architecture: str | None = None) -> float:
    """What a job will have cost once its ``remaining`` items are computed like its
    ``computed`` ones were (items served by the cache cost nothing)."""
    spent = cost(usage, memory_mb=memory_mb, architecture=architecture)["cost_usd"]
    if not remaining or not computed:
        return spent
    return spent + cost(scaled(usage, remaining / computed), memory_mb=memory_mb,
                        architecture=architecture)["cost_usd"]


def estimate(usage: Usage, *, items: int, invocations: int, seconds_per_invocation: float,
             concurrency: int, memory_mb: float | None, architecture: str | None = None,
             sample_items: int) -> dict[str, Any]:
    """The pre-flight estimate of a job of ``items`` items in ``invocations`` invocations,
    from a sample (``usage`` of ``sample_items`` items, e.g. a probe or earlier runs):
    its cost and how long it takes at ``concurrency`` invocations at once."""
    factor = items / sample_items if sample_items else 0.0
    usd = cost(scaled(usage, factor), memory_mb=memory_mb, architecture=architecture)["cost_usd"]
    waves = -(-invocations // max(1, concurrency))
    return {"invocations": invocations, "items": items, "usd": usd,
            "seconds": waves * seconds_per_invocation}


def job_stats(*, n_items: int, counts: Mapping[str, int], created: float, end: float,
              usage: Usage, flops: float, memory_mb: float | None,
              architecture: str | None = None) -> dict[str, Any]:
    """Rates, ETA, GFLOPS and cost of a job from its counts and usage."""
    elapsed = max(0.0, end - created)
    ended = counts.get("done", 0) + counts.get("failed", 0)  # computed (cached items were not)
    rate = ended / elapsed if elapsed > 0 else 0.0
    remaining = max(0, n_items - ended - counts.get("cancelled", 0) - counts.get("cached", 0))
    eta = 0.0 if not remaining else (remaining / rate if rate > 0 else None)
    bill = cost(usage, memory_mb=memory_mb, architecture=architecture)
    projected = projected_usd(usage, computed=ended, remaining=remaining, memory_mb=memory_mb,
                              architecture=architecture)
    return {"elapsed_s": elapsed, "tasks_per_s": rate, "eta_s": eta, "flops": flops,
            "gflops": flops / elapsed / 1e9 if elapsed > 0 else 0.0,
            "gb_seconds": bill["gb_seconds"], "cost_usd": bill["cost_usd"], "cost": bill,
            "projected_usd": projected}


def job_end(*, finished: bool, cancelled_at: float | None, last_stored: float | None,
            now: float) -> float:
    """When a job's elapsed time stops, the same in every view (widget, panel, CLI): a
    cancelled job's at its cancel marker's time (whoever wrote it), a finished job's at its
    last status stored (not when some host happened to see it), a running job's now."""
    if cancelled_at is not None:
        return float(cancelled_at)
    if finished and last_stored:
        return float(last_stored)
    return now


def ended_items(task_ids: Iterable[str]) -> int:
    """How many items the stored statuses of these tasks cover."""
    return sum(b - a for a, b in map(protocol.task_range, set(task_ids)))


def stored_state(manifest: dict[str, Any], ended: int, failed: int | None, cancelled: bool,
                 now: float, record: dict[str, Any] | None = None) -> str:
    """done, failed, ended (all items have a status; failures not counted), cancelled,
    lost (nobody dispatches it and nothing it sent can still finish: ``attach`` finishes
    it) or running. ``record``: the job's dispatch record (see ``protocol.lost_deadline``)."""
    if ended >= int(manifest.get("n_items", 0)):
        return "ended" if failed is None else ("failed" if failed else "done")
    if cancelled:
        return "cancelled"
    if now > protocol.lost_deadline(manifest, record):
        return "lost"
    return "running"


def stored_job_summary(manifest: dict[str, Any], statuses: Mapping[str, Mapping[str, Any]],
                       cancel: Mapping[str, Any] | None, now: float,
                       record: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job as its storage tells it (the panel and the CLI, which never unpickle and hold
    no job key: these figures are read unverified): state, counts, progress, duration and
    cost from the manifest, the task statuses, the cancel marker (None if there is none)
    and the dispatch record (None for a job of an older version)."""
    n = int(manifest.get("n_items", 0))
    done = failed = 0
    covered: set[int] = set()
    usage = Usage()
    breakdown = phases.Breakdown()
    end = None
    flops = 0.0
    for tid, st in statuses.items():
        a, b = protocol.task_range(tid)
        covered.update(range(a, b))
        n_failed = len(protocol.item_errors(dict(st)))
        failed += n_failed
        done += b - a - n_failed
        flops += protocol.item_flops(dict(st))
        usage.add_status(st)
        s = st.get("stats") or {}
        breakdown.add(s)
        t_end = s.get("result_stored") or s.get("compute_done")
        if t_end:
            end = max(end or 0.0, t_end)
    cached = 0
    for a, b in manifest.get("cached") or ():  # items the result cache served: no status
        fresh = set(range(int(a), int(b))) - covered
        cached += len(fresh)
        covered |= fresh
    remaining = max(0, n - len(covered))
    created = manifest.get("created") or now
    state = stored_state(manifest, len(covered), failed, cancel is not None, now, record)
    if state == "running" and not statuses and cached:
        now = created  # everything so far came from the cache
    end = job_end(finished=state != "running", last_stored=end, now=now,
                  cancelled_at=(cancel or {}).get("at") if state == "cancelled" else None)
    stats = job_stats(n_items=n, counts={"done": done, "failed": failed, "cached": cached},
                      created=created, end=end, usage=usage, flops=flops,
                      memory_mb=manifest.get("memory_mb"), architecture=manifest.get("architecture"))
    return {
        "job_id": manifest.get("job_id"), "created": created,
        "notebook": manifest.get("label"), "function": manifest.get("function"),
        "backend": manifest.get("backend"), "n_items": n, "state": state,
        "counts": {"done": done, "failed": failed, "cached": cached,
                   "pending": remaining if state == "running" else 0,
                   "cancelled": remaining if state == "cancelled" else 0,
                   "lost": remaining if state == "lost" else 0},
        "progress": (done + failed + cached) / n if n else 1.0,
        "duration_s": stats["elapsed_s"], "finished": state != "running",
        "tasks": len(statuses), "memory_mb": manifest.get("memory_mb"),
        "timeout": manifest.get("timeout"), "chunksize": manifest.get("chunksize"),
        "gb_seconds": stats["gb_seconds"], "cost_usd": stats["cost_usd"], "flops": flops,
        "projected_usd": stats["projected_usd"] if state == "running" else stats["cost_usd"],
        "budget_usd": manifest.get("budget_usd"),
        "stopped": (cancel or {}).get("reason") if (cancel or {}).get("by") == "budget" else None,
        "phases": breakdown.as_dict(), "rerun_of": manifest.get("rerun_of"),
    }


def rerun_outcome(rerun: Mapping[str, Any]) -> str:
    """What a re-run came to, in words, from its summary (or brief: no failure count)."""
    state = rerun.get("state")
    if state == "done":
        return "all succeeded"
    if state == "failed":  # a summary counts failures in ``counts``, a CLI row beside them
        failed = (rerun.get("counts") or {}).get("failed", rerun.get("failed"))
        return "some still failed" if failed is None else f"{failed} still failed"
    return str(state)


def link_reruns(jobs: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``jobs`` (summaries or briefs, each with ``job_id``, ``state`` and ``rerun_of``), each
    job that another of them re-ran (``Job.rerun_failed``) given ``rerun_by``: its newest
    re-run's id, state and outcome, and the line the views show ("failed → re-run as <id>:
    all succeeded"). Its own records stay as they were: the re-run's results reach the
    original job's results only in the kernel."""
    out = [dict(j) for j in jobs]
    newest: dict[str, dict[str, Any]] = {}
    for j in out:
        of = j.get("rerun_of")
        if of and (of not in newest or str(j["job_id"]) > str(newest[of]["job_id"])):
            newest[of] = j
    for j in out:
        rerun = newest.get(str(j.get("job_id")))
        if rerun is not None:
            outcome = rerun_outcome(rerun)
            j["rerun_by"] = {"job_id": rerun["job_id"], "state": rerun.get("state"),
                             "outcome": outcome,
                             "text": f"{j.get('state')} → re-run as {rerun['job_id']}: {outcome}"}
    return out
