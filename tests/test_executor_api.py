"""The futures API over real local worker processes."""
import concurrent.futures as cf
import json
import os
import random
import time

import pytest

import cloudbutton_executor as cb
from cloudbutton_executor import (ALL_COMPLETED, ANY_COMPLETED, FIRST_EXCEPTION, Executor,
                                  RemoteError, SerializationError, report_flops)


def slow_square(x):
    time.sleep(random.random() * 0.05)
    return x * x


def test_results_in_input_order(ex):
    job = ex.map(slow_square, range(30))
    assert job.result(timeout=60) == [x * x for x in range(30)]
    assert len(job) == 30 and job.job_id and all(isinstance(f, cf.Future) for f in job)
    assert job.done() and job.stats["done"] == 30


def test_iterdata_forms_and_extra_args(ex):
    def f(a, b=10, c=100):
        return a + b + c

    assert ex.map(f, [1, (1, 2), {"a": 1, "c": 3}]).result() == [111, 103, 14]
    assert ex.map(f, [1, 2], extra_args=(5,)).result() == [106, 107]
    assert ex.map(f, [1, (2,)], extra_args={"c": 0}).result() == [11, 12]
    # Scalars of every kind (the pre-pickled fast path), big bytes among them.
    scalars = [1, 2.5, 1j, "s", b"b" * (1 << 16), None, True]
    assert ex.map(repr, scalars).result() == [repr(x) for x in scalars]


def test_remote_exception_keeps_type_and_traceback(ex):
    def fails(x):
        if x == 2:
            raise KeyError(f"missing {x}")
        return x

    job = ex.map(fails, range(4))
    cf.wait(job.futures)
    assert [f.result() for i, f in enumerate(job) if i != 2] == [0, 1, 3]
    with pytest.raises(KeyError) as info:
        job[2].result()
    cause = info.value.__cause__
    assert isinstance(cause, cb.errors.RemoteTraceback)
    assert "in fails" in cause.tb and "KeyError: 'missing 2'" in cause.tb
    assert job[2].error_info["type"] == "KeyError"
    assert job.stats["failed"] == 1


class Unpicklable(Exception):
    def __init__(self, handle):
        super().__init__("custom failure")
        self.handle = handle

    def __reduce__(self):
        raise TypeError("no pickling for you")


def test_unpicklable_exception_comes_back_as_remote_error(ex):
    def fails(_):
        raise Unpicklable(lambda: 1)

    with pytest.raises(RemoteError, match="Unpicklable: custom failure") as info:
        ex.call_async(fails, 1).result(timeout=30)
    assert "no pickling" not in str(info.value) and "raise Unpicklable" in info.value.remote_traceback


def test_empty_and_bad_iterdata(ex):
    job = ex.map(slow_square, [])
    assert len(job) == 0 and job.done() and job.result() == []
    with pytest.raises(TypeError, match="iterable.*got int"):
        ex.map(slow_square, 42)
    with pytest.raises(TypeError, match="got a str"):
        ex.map(slow_square, "abc")
    with pytest.raises(TypeError, match="callable"):
        ex.map(42, [1])
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(slow_square, [1], chunksize=0)


def test_unpicklable_argument_is_named_before_upload(ex, storage):
    import threading

    lock = threading.Lock()
    before = set(storage.list("cloudbutton/jobs/"))
    with pytest.raises(SerializationError, match=r"iterdata\[1\].*_thread.lock|_thread.lock.*iterdata\[1\]"):
        ex.map(slow_square, [1, lock, 3])
    assert set(storage.list("cloudbutton/jobs/")) == before


CONNECTION = None


def test_unpicklable_global_is_named(ex):
    global CONNECTION
    import sqlite3

    CONNECTION = sqlite3.connect(":memory:")

    def query(x):
        return CONNECTION.execute("select ?", (x,)).fetchone()

    with pytest.raises(SerializationError, match=r"global 'CONNECTION'.*sqlite3.Connection"):
        ex.map(query, [1])


REBOUND = 1


def test_rebound_global_is_shipped_fresh(ex):
    global REBOUND

    def read(_):
        return REBOUND

    REBOUND = 1  # as the module left it, even when this test runs again in one process
    assert ex.map(read, [0]).result() == [1]
    REBOUND = 2
    assert ex.map(read, [0]).result() == [2]


def test_stdout_and_flops_land_in_stats(ex):
    def work(x):
        print("working on", x)
        report_flops(1e6 * x)
        return x

    # One task of three items: each item's prints and FLOPs are its own.
    batch = ex.map(work, [1, 2, 3], chunksize=3)
    assert batch.result() == [1, 2, 3]
    assert [batch[i].stdout for i in range(3)] == [f"working on {x}\n" for x in (1, 2, 3)]
    assert [batch[i].stats["flops"] for i in range(3)] == [1e6, 2e6, 3e6]
    job = ex.map(work, [1, 2])
    job.result()
    assert job[1].stdout == "working on 2\n"
    assert job[1].stats["flops"] == 2e6
    assert job.stats["flops"] == 3e6
    s = job[0].stats
    order = ["host_submit", "worker_start", "setup_done", "compute_start", "compute_done",
             "result_stored", "host_seen", "host_fetched"]
    assert all(s[a] <= s[b] for a, b in zip(order, order[1:])), s
    assert s["peak_mem_mb"] > 5


def test_batched_status_is_columnar_and_v1_statuses_still_read(ex, storage):
    """One status per invocation; its items column-wise (small and fast for big batches)."""
    from cloudbutton_executor import protocol

    def work(x):
        if x == 4:
            print("four")
            raise KeyError(x)
        report_flops(x)
        return x

    job = ex.map(work, range(6), chunksize=3)
    assert job.results()[:4] == [0, 1, 2, 3]
    st = json.loads(storage.get(protocol.status_key(ex.prefix, job.job_id, "000003-000006")))
    cols = st["items"]
    times = protocol.item_times(cols)  # one clock read per item: each starts where the last ended
    assert st["state"] == "error" and len(times) == 3
    assert all(0 < a <= b for a, b in times) and all(times[k][1] == times[k + 1][0] for k in range(2))
    assert [protocol.item_time(cols, k) for k in range(4)] == times + [None]
    assert list(cols["errors"]) == ["4"] and cols["errors"]["4"]["type"] == "KeyError"
    assert cols["stdout"] == {"4": "four\n"} and cols["flops"] == {"3": 3, "5": 5}
    assert protocol.item_errors(st).keys() == {4} and protocol.item_flops(st) == 8
    assert job[4].stdout == "four\n" and job.stats["flops"] == 11
    # Statuses written by version 1 workers (one record per item) read the same.
    v1 = {"task": "000003-000005", "items": [
        {"i": 3, "ok": True, "t0": 10.0, "t1": 10.5, "flops": 3},
        {"i": 4, "ok": False, "t0": 10.5, "t1": 11.0, "stdout": "four\n", "error": {"type": "KeyError"}}]}
    assert protocol.item_columns(v1) == {"base": 10.0, "t0_us": [0, 500000], "t1_us": [500000, 1000000],
                                         "errors": {"4": {"type": "KeyError"}}, "flops": {"3": 3},
                                         "stdout": {"4": "four\n"}}
    assert protocol.item_errors(v1) == {4: {"type": "KeyError"}} and protocol.item_stdout(v1) == {4: "four\n"}
    assert protocol.item_times(protocol.item_columns(v1)) == [(10.0, 10.5), (10.5, 11.0)]
    assert protocol.item_time(protocol.item_columns(v1), 1) == (10.5, 11.0)


def test_chunksize_and_auto_batching(ex):
    job = ex.map(slow_square, range(20), chunksize=6)
    assert job.result() == [x * x for x in range(20)]
    assert job.stats["invocations"] == 4
    assert {f.task_id for f in job} == {"000000-000006", "000006-000012", "000012-000018",
                                       "000018-000020"}
    job = ex.map(abs, range(-3000, 0), chunksize="auto")
    assert job.result() == list(range(3000, 0, -1))
    assert job.stats["invocations"] < 300, job.stats["invocations"]


def test_call_async_and_map_reduce(ex):
    assert ex.call_async(pow, 2, 10).result(timeout=30) == 1024
    fut = ex.map_reduce(slow_square, range(10), sum)
    assert fut.result(timeout=60) == sum(x * x for x in range(10))
    assert fut.map_job.done()

    def broken(x):
        raise ValueError("map failed")

    with pytest.raises(ValueError, match="map failed"):
        ex.map_reduce(broken, [1, 2], sum).result(timeout=60)
    assert ex.map_reduce(slow_square, [], sum).result(timeout=60) == 0


def test_wait_and_as_completed_vocabulary(ex):
    def nap(t):
        time.sleep(t)
        if t < 0.05:
            raise RuntimeError("early failure")
        return t

    job = ex.map(nap, [0.01, 1.5, 1.5])
    done, not_done = cb.wait(job, return_when=FIRST_EXCEPTION, timeout=30)
    assert job[0] in done and job[0].exception() is not None
    done, _ = cb.wait(job, return_when=ANY_COMPLETED, timeout=30)
    assert done
    done, not_done = ex.wait(job, return_when=ALL_COMPLETED, timeout=30)
    assert not not_done
    assert sorted(f.index for f in cb.as_completed(job, timeout=30)) == [0, 1, 2]
    # The stdlib functions work on our futures too.
    assert len(cf.wait(job.futures).done) == 3
    with pytest.raises(RuntimeError):
        cb.get_result(job)
    assert job.results()[1:] == [1.5, 1.5]


def test_futures_taken_before_during_and_after_the_run_agree(ex, tmp_path):
    """A job keeps every item's outcome; futures are made on request and kept in step."""
    gate = str(tmp_path / "go")

    def held(x):
        while x == 5 and not os.path.exists(gate):
            time.sleep(0.01)
        if x == 7:
            raise ValueError("seven")
        print("item", x)
        return x * 10

    job = ex.map(held, range(10))
    early = job[5]  # taken while item 5 is queued or running
    assert not early.done() and early.state in ("queued", "running")
    assert job[-5] is early and job[2:4] == [job[2], job[3]]
    with pytest.raises(IndexError, match="no task 10"):
        job[10]
    done, not_done = cf.wait([early, job[0]], return_when=cf.FIRST_COMPLETED, timeout=30)
    assert job[0] in done and early in not_done
    open(gate, "w").close()
    assert early.result(timeout=30) == 50 and early.stdout == "item 5\n"
    job.wait(30)
    late = job[9]  # made after the end: already done, with its stats
    assert late.done() and late.result() == 90 and late.stats["compute_done"] >= late.stats["compute_start"]
    assert isinstance(job[7].exception(), ValueError) and job[7].state == "failed"
    assert job[7].error_info["type"] == "ValueError" and "seven" in job[7].error_info["message"]
    assert [f.index for f in cf.as_completed(job, timeout=5)] and len(job.futures) == 10
    assert job.counts()["done"] == 9 and job.counts()["failed"] == 1
    with pytest.raises(ValueError, match="seven"):
        job.result()
    with pytest.raises(ValueError, match="seven"):
        cb.get_result(job)


def test_cancel_reaches_futures_made_before_and_after(ex):
    job = ex.map(time.sleep, [0.5] * 2 + [5] * 20)
    before = job[21]
    assert job.cancel() == 22 - job.counts()["done"] - job.counts()["failed"]
    after = job[20]
    assert before.cancelled() and after.cancelled()  # queued ones: cancelled as futures are
    assert all(f.done() for f in job) and job.done()
    assert all(f.state == "cancelled" for f in job[2:])
    with pytest.raises(cf.CancelledError):
        job.result()
    assert job.results()[-1].__class__ is cf.CancelledError


def test_retries_rerun_infrastructure_failures(ex, tmp_path):
    marker = str(tmp_path / "crashed-once")

    def crash_once(x):
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        return x

    job = ex.map(crash_once, [7], retries=1)
    assert job.result(timeout=60) == [7]
    assert job.retried == 1 and job[0].attempts == 2


def test_reattach_collects_without_rerunning(ex, storage, tmp_path):
    log = tmp_path / "runs.log"

    def logged(x):
        with open(log, "a") as f:
            f.write(f"{x}\n")
        return x * 3

    job = ex.map(logged, range(5), chunksize=2)
    job.result()
    runs = log.read_text()
    with Executor(workers=2, storage=storage) as other:
        again = other.attach(job.job_id)
        assert again.result(timeout=30) == [0, 3, 6, 9, 12]
        assert [j["job_id"] for j in other.jobs()][0] == job.job_id
    assert log.read_text() == runs
    with pytest.raises(KeyError):
        ex.attach("20000101-000000-abcdef")
    with pytest.raises(ValueError):
        ex.attach("../../etc")


def test_executor_context_waits_and_refuses_after_shutdown(storage):
    with Executor(workers=2, storage=storage) as ex:
        job = ex.map(slow_square, range(4))
    assert job.done()
    with pytest.raises(RuntimeError, match="shutdown"):
        ex.map(slow_square, [1])


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="backend"):
        Executor(backend="k8s")
    with pytest.raises(ValueError, match="workers"):
        Executor(workers=0)
    with pytest.raises(ValueError, match="timeout"):
        Executor(timeout=-1)


def test_jobs_made_within_one_second_list_newest_first(ex):
    """Job ids carry their creation time to the millisecond, and one process never makes
    two equal stamps: the listing is newest first even for jobs of the same second."""
    from cloudbutton_executor import protocol

    made = [ex.map(abs, [-i]) for i in range(6)]
    for job in made:
        job.result(timeout=30)
    ids = [job.job_id for job in made]
    assert all(protocol.JOB_ID_RE.match(j) for j in ids)
    assert ids == sorted(ids) and len(set(ids)) == 6
    assert [j["job_id"] for j in ex.jobs(6)] == ids[::-1]
    stamps = [protocol.new_job_id() for _ in range(50)]  # faster than the clock's millisecond
    assert stamps == sorted(stamps) and len({s[:18] for s in stamps}) == 50
    assert abs(protocol.job_created(stamps[0]) - time.time()) < 5
