"""A job of more than a million items, end to end on the local backend: task ids past
999,999 are wider than six digits and must parse in the job, on re-attach, in the
Jupyter server's summaries and in the CLI."""
from __future__ import annotations

import time

from cloudbutton_executor import Executor, catalog, cli

N = 1_000_001


def plus_one(x):
    return x + 1


def test_a_job_of_a_million_and_one_items(storage, monkeypatch, tmp_path):
    from cloudbutton_jupyter.manager import CloudManager

    monkeypatch.setenv("CLOUDBUTTON_CONFIG", str(tmp_path / "none.yaml"))
    expected = list(range(1, N + 1))
    t0 = time.time()
    with Executor(workers=2, storage=storage, timeout=60) as ex:
        job = ex.map(plus_one, range(N), chunksize=100_000)
        assert job.result(timeout=240) == expected
        took = time.time() - t0
        tids = job.task_ids()
        assert len(tids) == 11 and tids[0] == "0000000-0100000" and tids[-1] == "1000000-1000001"
        assert job.item_task(N - 1) == "1000000-1000001" and job[N - 1].result() == N
        assert job.stats["done"] == N and job.stats["invocations"] == 11
        # Re-attached from storage (another kernel): every status is found and applied.
        again = ex.attach(job.job_id)
        assert again.result(timeout=120) == expected and again.task_ids() == tids
    # The Jupyter server's summaries and detail, and the CLI's rows.
    m = CloudManager(storage=storage)
    (summary,) = m.list_jobs()
    assert summary["state"] == "done" and summary["counts"]["done"] == N and summary["tasks"] == 11
    detail = m.job_detail(job.job_id)
    assert detail["tasks_detail"][-1]["items"] == [1_000_000, N]
    (row,) = cli._job_rows(storage, "cloudbutton", 5)
    assert row["items"] == N and row["tasks_stored"] == 11 and row["ended"] == N
    assert row["state"] == "ended"
    (row,) = cli._job_rows(storage, "cloudbutton", 5, cost=True)
    assert row["state"] == "done" and row["done"] == N and row["cost_usd"] > 0
    assert catalog.stored_task_ids(storage, "cloudbutton", job.job_id) == tids
    print(f"{N:,} items in {took:.1f} s")
