"""One cost model (accounting.py): prices by request kind and architecture, INIT time,
and the same figures for one job from the job's stats, the widget and the panel."""
from __future__ import annotations

import pytest

from cloudbutton_executor import accounting
from cloudbutton_executor.accounting import PRICES, Usage, billed_seconds, cost

STATS = {"worker_start": 10.0, "result_stored": 12.0, "init_s": 0.5,
         "requests": {"PUT": 2, "GET": 3, "LIST": 4, "HEAD": 5, "DELETE": 6}}


def test_lambda_and_s3_are_priced_by_kind_architecture_and_init():
    u = Usage()
    u.add_task(STATS, attempt=1)  # the second attempt's status: two invocations billed
    c = cost(u, memory_mb=2048, architecture="x86_64")
    assert c["gb_seconds"] == pytest.approx(2 * (2.0 + 0.5))  # invoke + INIT, at 2 GB
    assert c["init_gb_seconds"] == pytest.approx(1.0)
    assert c["compute_usd"] == pytest.approx(5.0 * 0.0000166667)
    assert c["invocations_usd"] == pytest.approx(2 * 0.20 / 1e6)
    # PUT and LIST at $0.005 per 1,000; GET and HEAD at $0.0004; DELETE free.
    assert c["storage_usd"] == pytest.approx((2 + 4) * 0.005 / 1000 + (3 + 5) * 0.0004 / 1000)
    assert c["cost_usd"] == pytest.approx(c["compute_usd"] + c["invocations_usd"] + c["storage_usd"])
    arm = cost(u, memory_mb=2048, architecture="arm64")
    assert arm["compute_usd"] == pytest.approx(5.0 * 0.0000133334)
    assert cost(u, memory_mb=None)["gb_seconds"] == pytest.approx(2.5)  # 1 GB by default
    with pytest.raises(ValueError, match="architecture 'sparc'"):
        cost(u, memory_mb=1024, architecture="sparc")
    assert PRICES.source and PRICES.checked and PRICES.region == "us-east-1"


def test_a_task_no_worker_ran_bills_no_time():
    assert billed_seconds({"host_submit": 1.0}) == 0.0  # a host-written (lost) status
    assert billed_seconds({"worker_start": 5.0, "result_stored": 5.0}) == accounting.MIN_BILLED_S


def sleepy(x):
    import time

    time.sleep(0.05)
    return x


def test_the_job_the_widget_and_the_panel_agree_on_a_job(ex, storage, monkeypatch, tmp_path):
    from cloudbutton_jupyter.manager import CloudManager
    from cloudbutton_magic.widget_state import JobTracker

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "none.yaml"))
    job = ex.map(sleepy, range(6), chunksize=2)
    job.result(timeout=60)
    (panel,) = CloudManager(storage=storage).list_jobs()
    tracker = JobTracker(job)
    tracker.poll()
    widget = tracker.header_stats()
    stats = job.stats
    assert panel["cost_usd"] > 0 and stats["invocations"] == panel["tasks"] == 3
    assert widget["cost_usd"] == pytest.approx(panel["cost_usd"])  # the workers' share
    assert stats["gb_seconds"] == pytest.approx(panel["gb_seconds"])
    host = Usage(requests=stats["requests"]["host"])  # only the job knows the host's requests
    assert stats["cost_usd"] == pytest.approx(
        panel["cost_usd"] + cost(host, memory_mb=job.memory_mb)["cost_usd"])


def slow_but_first(x):
    import time

    time.sleep(0.05 if x == 0 else 30)
    return x


@pytest.mark.parametrize("by", ["kernel", "panel"])
def test_a_cancelled_job_shows_one_elapsed_time_everywhere(by, ex, storage, monkeypatch, tmp_path):
    import time

    from cloudbutton_jupyter.manager import CloudManager
    from cloudbutton_magic.widget_state import JobTracker

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "none.yaml"))
    job = ex.map(slow_but_first, range(3))
    job[0].result(timeout=30)
    time.sleep(0.3)
    manager = CloudManager(storage=storage)
    if by == "kernel":
        job.cancel()
    else:  # the panel writes the marker; the kernel's monitor notices it a moment later
        manager.cancel(job.job_id)
        assert job.wait(10) and job.cancelled
    assert job.finished_at >= job.cancelled_at  # the host ends it after the marker's time
    if by == "panel":  # by up to a cancel check interval: what the views disagreed on
        assert job.finished_at > job.cancelled_at + 0.01
    time.sleep(0.2)
    (panel,) = manager.list_jobs()
    tracker = JobTracker(job)
    tracker.poll()
    widget = tracker.header_stats()
    assert panel["state"] == "cancelled"
    assert widget["elapsed_s"] == panel["duration_s"] == job.stats["elapsed_s"]
    assert manager.job_detail(job.job_id)["duration_s"] == panel["duration_s"]
    assert panel["duration_s"] == pytest.approx(job.cancelled_at - job.created)
