"""Budget cap and pre-flight estimate: a probe before a billed job launches, earlier
runs' timings instead of a probe, the live projection, and a stop that keeps every
result. Dispatcher tests use a billed fake backend and a fake clock; the local test
runs real workers priced at Lambda's prices (the one cost model)."""
from __future__ import annotations

import json
import time

import pytest

from cloudbutton_executor import accounting, cache, protocol, spending
from test_dispatch import FakeBackend, FakeClock, forge_status, start_job


def billed(**limits):
    return FakeBackend(architecture="x86_64", **limits)


@pytest.fixture
def clock():
    return FakeClock()


def drain(be):
    """Run every event sent, including those sent while running the others."""
    k = 0
    while k < len(be.sent):
        be.run(be.sent[k])
        k += 1


def identity_of(n):
    return f"{n:064x}"


def test_a_billed_job_with_a_budget_runs_a_probe_first_then_the_rest(storage, clock):
    be = billed(concurrency=10)
    # 40 invocations of up to 10 s at 1 GB could cost $0.0067: more than the budget.
    job = start_job(storage, be, clock, list(range(40)), budget_usd=0.005)
    assert len(be.sent) == spending.PROBE_INVOCATIONS  # the rest waits for the estimate
    drain(be)
    est = job.spending["estimate"]
    assert est["source"] == "probe" and est["invocations"] == 40 and 0 < est["usd"] < 0.005
    assert len(be.sent) == 40 and not job.stop_reason


def test_a_job_within_its_budget_at_its_worst_needs_no_probe(storage, clock):
    be = billed(concurrency=10)
    job = start_job(storage, be, clock, list(range(40)), budget_usd=0.01)  # worst: $0.0067
    assert len(be.sent) == 40  # all at once
    drain(be)
    assert job.result(timeout=0) == [x * x for x in range(40)] and not job.stop_reason


def test_an_estimate_over_the_budget_stops_the_job_after_its_probe(storage, clock):
    be = billed()
    job = start_job(storage, be, clock, list(range(1000)), budget_usd=1e-4)
    for e in list(be.sent):
        be.run(e)
    assert len(be.sent) == spending.PROBE_INVOCATIONS and job.done() and job.cancelled
    assert "estimate (1,000 invocations, about $" in job.stop_reason
    assert "is over its budget of $0.0001" in job.stop_reason
    out = job.results(timeout=0)
    assert out[:3] == [0, 1, 4]  # the probe's results are kept
    marker = json.loads(storage.get(protocol.cancel_key("cb", job.job_id)))
    assert marker["by"] == "budget" and marker["reason"] == job.stop_reason


def test_earlier_runs_timings_replace_the_probe(storage, clock):
    ident = identity_of(7)
    be = billed(concurrency=4)
    first = start_job(storage, be, clock, list(range(8)), budget_usd=1e-3, identity=ident)
    drain(be)
    assert first.done() and first.spending["estimate"]["source"] == "probe"
    usage, items, wall = cache.read_timings(storage, "cb", ident)
    assert items == 8 and usage.tasks == 8
    be2 = billed(concurrency=4)
    second = start_job(storage, be2, clock, list(range(100)), budget_usd=5.0, identity=ident)
    est = second.spending["estimate"]
    assert est["source"] == "earlier runs" and est["invocations"] == 100
    assert len(be2.sent) == 100  # no probe: all sent at once (the fake backend queues)
    # Too small a budget for what earlier runs cost: nothing is sent at all.
    be3 = billed()
    third = start_job(storage, be3, clock, list(range(100)), budget_usd=1e-7, identity=ident)
    assert be3.sent == [] and third.done() and "estimate" in third.stop_reason
    assert all(type(o).__name__ == "CancelledError" for o in third.results(timeout=0))


def test_the_projection_stops_a_running_job_and_keeps_its_results(storage, clock):
    """Without a probe (an unbilled backend) the projection after a few tasks decides."""
    be = FakeBackend(concurrency=100)
    job = start_job(storage, be, clock, list(range(50)), budget_usd=3e-5)
    assert len(be.sent) == 50
    ran = 0
    for e in list(be.sent):
        if job.done():
            break
        # Warm: an in-process first invocation would bill this process's start-up as its
        # INIT time, which on a loaded machine alone passes this tiny budget.
        be.run(dict(e, runtime={"cold": False}))
        ran += 1
    assert ran == spending.MIN_TASKS_TO_PROJECT and job.cancelled
    assert "projected total of" in job.stop_reason and "would pass its budget" in job.stop_reason
    assert be.cancelled == [job.job_id]  # what runs is told to stop
    c = job.counts()
    assert c["done"] == ran and c["cancelled"] == 50 - ran
    fig = job.spending
    assert fig["projected_usd"] > fig["budget_usd"] > 0 and fig["spent_usd"] > 0
    assert fig["projected_usd"] == pytest.approx(
        accounting.projected_usd(job.dispatcher.spending.usage, computed=ran, remaining=50 - ran,
                                 memory_mb=1024), rel=1e-9)


def test_no_budget_no_spending_and_no_probe(storage, clock):
    be = billed()
    job = start_job(storage, be, clock, list(range(20)))
    assert job.spending is None and len(be.sent) == 20


def slow_square(x):
    time.sleep(0.2)
    return x * x


def test_a_local_job_stops_at_its_budget(ex):
    job = ex.map(slow_square, range(60), budget=0.0002)
    out = job.results(timeout=60)
    assert job.cancelled and "stopped by its budget" in job.stop_reason
    done = [i for i, o in enumerate(out) if isinstance(o, int)]
    # Two workers: a task running when the budget stops the job is cancelled, so the items
    # with results need not be the first ones; each is right.
    assert 3 <= len(done) < 60 and all(out[i] == i * i for i in done)
    assert job.counts()["cancelled"] == 60 - len(done) - job.counts()["failed"]


def test_a_probe_task_refused_by_verification_still_ends_the_probe(storage, clock):
    """A probe task whose stored status is forged ends with an IntegrityError; the probe
    goes on to its estimate from the tasks that ran, and the rest of the job is sent."""
    from cloudbutton_executor import IntegrityError

    be = billed(concurrency=10)
    job = start_job(storage, be, clock, list(range(40)), budget_usd=0.005)
    probe = list(be.sent)
    assert len(probe) == spending.PROBE_INVOCATIONS
    forged = probe[1]  # items [1, 2)
    forge_status(storage, job, forged["task"])
    be.listener.on_done(forged, {"state": "done"})
    assert isinstance(job[1].exception(timeout=0), IntegrityError)
    for e in (probe[0], probe[2]):
        be.run(e)
    est = job.spending["estimate"]
    assert est["source"] == "probe" and est["invocations"] == 40 and job.monitor_error is None
    assert len(be.sent) == 40
    # What the three probe items cost, scaled to the 40 items (the refused one counts).
    assert est["usd"] == pytest.approx(job.spending["spent_usd"] * 40 / 3, rel=0.02)
