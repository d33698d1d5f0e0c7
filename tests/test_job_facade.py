"""The Job as its user sees it (job.py): what it says about itself, its sequence protocol,
per-item views, stats and cancel, each checked against what the job really ran."""
import threading
import time

import pytest

from cloudbutton_executor import protocol


def square(x):
    print(f"item {x}")
    return x * x


def fail_on_three(x):
    if x == 3:
        raise ValueError(f"three is bad ({x})")
    return x


def slow(x):
    import time

    time.sleep(30)
    return x


def test_a_job_reports_the_settings_it_runs_with(ex):
    t0 = time.time()
    job = ex.map(square, range(5), chunksize=2, label="squares", timeout=40, retries=2,
                 memory_mb=512)
    assert job.result(timeout=60) == [0, 1, 4, 9, 16]
    assert job.function_name == "square"
    assert job.label == "squares"
    assert (job.chunksize, job.timeout, job.retries, job.memory_mb) == (2, 40, 2, 512)
    assert job.prefix == ex.prefix
    assert job.function_key.startswith(protocol.functions_prefix(ex.prefix))
    assert job.function_key == job.spec.function_key
    assert t0 - 1 <= job.created <= time.time()
    assert job.created == protocol.job_created(job.job_id) or abs(
        job.created - protocol.job_created(job.job_id)) < 1
    assert job.backend is ex.backend
    assert job.executor is ex
    # How it went: nothing cancelled, retried, throttled or backed up; no budget.
    assert job.created <= job.finished_at <= time.time()
    assert job.cancelled is False and job.cancelled_at is None
    assert job.attached is False
    assert (job.retried, job.throttled, job.backups_sent) == (0, 0, 0)
    assert job.spending is None and job.stop_reason is None
    assert job.monitor_error is None


def test_the_sequence_protocol_indexes_slices_and_refuses_out_of_range(ex):
    job = ex.map(square, range(5))
    job.wait(60)
    assert len(job) == 5
    assert job[-1] is job[4] and job[-5] is job[0]
    assert [f.result() for f in job[1:3]] == [1, 4]
    assert [f.result() for f in job[::2]] == [0, 4, 16]
    assert [f.result() for f in job] == [0, 1, 4, 9, 16]
    assert job.futures == list(job)
    for bad in (5, -6):
        with pytest.raises(IndexError, match=f"job {job.job_id} has 5 tasks, no task {bad}"):
            job[bad]
    assert repr(job) == f"<Job {job.job_id} square 5 tasks: 5 done>"


def test_results_keep_each_items_outcome_and_result_raises_the_failure(ex):
    job = ex.map(fail_on_three, range(5))
    outcomes = job.results(timeout=60)
    assert outcomes[:3] == [0, 1, 2] and outcomes[4] == 4
    assert isinstance(outcomes[3], ValueError) and "three is bad (3)" in str(outcomes[3])
    with pytest.raises(ValueError, match="three is bad"):
        job.result(timeout=60)
    assert job.done() and job.wait(0)
    assert job.item_state(3) == "failed" and job.item_state(2) == "done"
    info = job.item_error_info(3)
    assert info["type"] == "ValueError" and info["message"] == "three is bad (3)"
    assert job.item_error_info(2) is None
    c = job.counts()
    assert (c["done"], c["failed"], c["retried"], c["throttled"]) == (4, 1, 0, 0)
    assert repr(job) == f"<Job {job.job_id} fail_on_three 5 tasks: 4 done, 1 failed>"


def test_per_item_views_name_the_task_its_output_and_its_input(ex):
    job = ex.map(square, [3, "x" * 300, 5], chunksize=2)
    job.wait(60)
    tids = job.task_ids()
    assert tids == [protocol.task_id(0, 2, 3), protocol.task_id(2, 3, 3)]
    assert [job.item_task(i) for i in range(3)] == [tids[0], tids[0], tids[1]]
    assert job.item_stdout(0) == "item 3\n" and job.item_stdout(2) == "item 5\n"
    assert job.item_input_repr(0) == "3"
    long = job.item_input_repr(1)
    assert len(long) == 200 and long.endswith("…") and long.startswith("'xxx")
    assert job.item_input_repr(1, limit=10) == "'xxxxxxxx…"
    assert job.item_input_repr(1, limit=400) == repr("x" * 300)
    assert [job.item_attempts(i) for i in range(3)] == [1, 1, 1]
    assert [job.item_backups(i) for i in range(3)] == [[], [], []]
    assert job.item_cache_info(0) is None
    stats = job.item_stats(2)
    assert stats["compute_done"] >= stats["worker_start"] >= job.created
    # What ended, as (task, first item, stop): both tasks, then nothing new.
    ended = job.ended_tasks()
    assert sorted(ended) == sorted([(tids[0], 0, 2), (tids[1], 2, 3)])
    assert job.ended_tasks(len(ended)) == []
    assert job.ended_tasks(1) == ended[1:]


def test_stats_count_what_ran_and_add_up_the_requests(ex):
    job = ex.map(square, range(5), chunksize=2)
    job.wait(60)
    s = job.stats
    assert (s["job_id"], s["backend"], s["function"]) == (job.job_id, "local", "square")
    assert (s["tasks"], s["invocations"], s["billed_invocations"]) == (5, 3, 3)
    assert (s["done"], s["failed"], s["backups"]) == (5, 0, 0)
    req = s["requests"]
    assert req["total"] == sum(req["host"].values()) + sum(req["workers"].values()) > 0
    assert req["per_task"] == req["total"] / 5
    assert req["host"] == dict(job.dispatcher.storage.counts)
    last = max(job.item_stats(i)["result_stored"] for i in range(5))
    assert s["elapsed_s"] == pytest.approx(last - job.created)
    b = job.time_breakdown()
    assert b["tasks"] == 3  # one per task (invocation), not per item
    assert b["total_s"] == pytest.approx(sum(b["seconds"].values())) and b["seconds"]["compute"] > 0


def test_cancel_counts_the_tasks_it_stopped_and_says_when(ex):
    job = ex.map(slow, range(4))
    seen = []
    job.add_listener(seen.append)
    deadline = time.time() + 30
    while job.counts()["running"] < 2 and time.time() < deadline:
        time.sleep(0.05)
    before = time.time()
    assert job.cancel() == 4
    assert job.cancelled is True
    assert before - 1 <= job.cancelled_at <= time.time() + 1
    assert job.wait(30)
    assert job.counts()["cancelled"] == 4
    assert seen and all(j is job for j in seen)
    assert job.stats["elapsed_s"] == pytest.approx(job.cancelled_at - job.created)


def test_rerun_failed_needs_the_executor_and_returns_none_when_nothing_failed(ex):
    job = ex.map(square, range(2))
    job.wait(60)
    assert job.rerun_failed() is None
    job.executor = None
    assert job.executor is None
    with pytest.raises(RuntimeError, match=f"job {job.job_id} has no executor of this process"):
        job.rerun_failed()


def test_forget_drops_an_ended_items_value_but_keeps_its_state(ex):
    job = ex.map(square, range(3))
    job.wait(60)
    first = job[1]
    job.forget(1)
    assert job.item_state(1) == "done"
    assert job[1] is not first  # its future was dropped; a new one is made on demand


def test_a_listener_sees_the_job_itself_from_a_worker_thread(ex):
    job = ex.map(square, range(3))
    threads = []
    job.add_listener(lambda j: threads.append((j, threading.current_thread())))
    job.wait(60)
    deadline = time.time() + 10
    while not threads and time.time() < deadline:
        time.sleep(0.05)
    assert threads and all(j is job for j, _ in threads)


def flaky(x, fixed):
    import os

    print(f"trying {x}")
    if x % 2 and not os.path.exists(fixed):
        raise ValueError(f"odd {x}")
    return x + 100


def test_a_rerun_runs_with_the_jobs_own_settings(ex, tmp_path):
    job = ex.map(flaky, range(4), extra_args=(str(tmp_path / "fixed"),), chunksize=2,
                 timeout=45, retries=1, memory_mb=640, label="again", backups=False,
                 cache=True, budget=5.0)
    job.wait(60)
    assert job.counts()["failed"] == 2
    (tmp_path / "fixed").write_text("")
    again = job.rerun_failed()
    assert again.function_name == job.function_name == "flaky"
    keep = ("chunksize", "timeout", "retries", "memory_mb", "label", "identity", "cache",
            "budget_usd", "backups")
    assert {k: getattr(again.spec, k) for k in keep} == {k: getattr(job.spec, k) for k in keep}
    assert (again.spec.chunksize, again.spec.retries, again.spec.label) == (2, 1, "again")
    assert again.spec.identity is not None and again.spec.cache is True
    assert again.spec.budget_usd == 5.0 and again.spec.backups is False
    assert job.result(timeout=60) == [100, 101, 102, 103]
    assert again.wait(60)
    assert again.monitor_error is None and job.monitor_error is None  # listeners raised nothing


def test_a_rerun_of_an_auto_batched_job_sends_an_item_per_task(ex, tmp_path):
    job = ex.map(flaky, range(6), extra_args=(str(tmp_path / "fixed"),), chunksize="auto")
    job.wait(60)
    failed = job.counts()["failed"]
    assert failed >= 3  # every odd item (a whole batch fails with its first failing item)
    again = job.rerun_failed()
    assert again.spec.chunksize == 1 and len(again.task_ids()) == failed


def test_an_item_that_fails_again_takes_the_reruns_whole_error_and_output(ex, tmp_path):
    job = ex.map(flaky, [1, 2, 3], extra_args=(str(tmp_path / "never"),))
    job.wait(60)
    again = job.rerun_failed()
    assert again.wait(60) and job.wait(60)
    for i, k in ((0, 0), (2, 1)):
        assert job.item_state(i) == "failed"
        assert job.item_error_info(i) == again.item_error_info(k)
        assert "traceback" in str(job.item_error_info(i)) or len(job.item_error_info(i)) > 2
        assert job.item_stdout(i) == again.item_stdout(k) == f"trying {(1, 3)[k]}\n"
    assert job.monitor_error is None and again.monitor_error is None


def test_every_failed_item_of_a_large_rerun_ends_once_in_the_jobs_results(ex, tmp_path):
    n = 40
    job = ex.map(flaky, range(n), extra_args=(str(tmp_path / "fixed"),))
    job.wait(60)
    (tmp_path / "fixed").write_text("")
    before = len(job.ended_tasks())
    again = job.rerun_failed()
    assert job.result(timeout=60) == [x + 100 for x in range(n)]
    assert again.wait(60)
    rerun_ends = job.ended_tasks(before)
    assert sorted(a for _t, a, _b in rerun_ends) == list(range(1, n, 2))


def test_a_rerun_finds_an_item_another_job_has_cached_meanwhile(ex, tmp_path):
    fixed = str(tmp_path / "fixed")
    job = ex.map(flaky, [1, 2], extra_args=(fixed,), cache=True)
    job.wait(60)
    assert job.item_state(0) == "failed"
    (tmp_path / "fixed").write_text("")
    assert ex.map(flaky, [1], extra_args=(fixed,), cache=True).result(timeout=60) == [101]
    (tmp_path / "fixed").unlink()  # computed again, item 1 would fail: it must come from the cache
    again = job.rerun_failed()
    assert again.wait(60) and again.item_state(0) == "cached"
    assert job.result(timeout=60) == [101, 102]
    assert job.item_state(0) == "done"
    assert job.item_cache_info(0)["rerun"] is True and job.item_cache_info(1) is None


def test_waiting_with_a_timeout_gives_up_in_time(ex):
    job = ex.map(slow, [1])
    t = time.time()
    assert job.wait(0.3) is False
    with pytest.raises(TimeoutError):
        job.result(timeout=0.3)
    [pending] = job.results(timeout=0.3)  # an item not ended yet is a TimeoutError in place
    assert isinstance(pending, TimeoutError) and str(pending) == "task 0 had not finished"
    assert time.time() - t < 10
    job.cancel()
    [cancelled] = job.results(timeout=30)
    assert str(cancelled) == f"job {job.job_id} was cancelled"


def test_live_stdout_reads_on_from_a_position(ex):
    job = ex.map(square, range(3))
    job.wait(60)
    everything = job.live_stdout()
    assert job.live_stdout(len(everything)) == []
    assert job.live_stdout(1) == everything[1:]


def test_rerun_refusals_say_why_in_full(ex):
    job = ex.map(slow, [1])
    with pytest.raises(RuntimeError) as running:
        job.rerun_failed()
    assert str(running.value) == (f"job {job.job_id} is still running: re-run its failed items "
                                  "once it has ended")
    job.executor = None
    with pytest.raises(RuntimeError) as orphan:
        job.rerun_failed()
    assert str(orphan.value) == (
        f"job {job.job_id} has no executor of this process (shut down, or the job was started "
        "elsewhere): attach it first (Executor.attach)")
    job.cancel()


def pair(a, b=0):
    return a + b


def test_an_items_input_is_shown_as_its_call(ex):
    job = ex.map(pair, [(1, 2), {"a": 3, "b": 4}, "x" * 8])
    job.wait(60)
    assert job.item_input_repr(0) == "1, 2"
    assert job.item_input_repr(1) == "a=3, b=4"
    assert job.item_input_repr(2, limit=10) == "'xxxxxxxx'"  # exactly the limit: whole
    assert job.item_input_repr(2, limit=9) == "'xxxxxxx…"
