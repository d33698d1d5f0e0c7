"""CloudPoolExecutor against what CPython's own executor tests check.

Each test names the CPython test it follows (Lib/test/test_concurrent_futures:
ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest), rewritten for
workers that are separate processes seeing only their event: side effects go
through files, and "no thread left" is checked in a fresh interpreter.
"""
import concurrent.futures as cf
import gc
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import weakref

import pytest

import cloudbutton_executor as cb
from cloudbutton_executor import CloudPoolExecutor


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def sleep_and_raise(t):
    time.sleep(t)
    raise Exception("this is an exception")


class MyObject:
    def my_method(self):
        pass


def make_dummy_object(_):
    return MyObject()


def _done_future(state, result=None, exception=None):
    f = cf.Future()
    if state == "cancelled":
        f.cancel()
    elif state == "cancelled_and_notified":
        f.cancel()
        f.set_running_or_notify_cancel()
    elif state == "running":
        f.set_running_or_notify_cancel()
    elif state == "finished":
        if exception is not None:
            f.set_exception(exception)
        else:
            f.set_result(result)
    return f


@pytest.fixture(scope="module")
def shared_pool(tmp_path_factory):
    from cloudbutton_executor.storage import LocalStorage

    p = CloudPoolExecutor(max_workers=2, storage=LocalStorage(str(tmp_path_factory.mktemp("pool"))))
    yield p
    p.shutdown(wait=True)


@pytest.fixture
def pool(shared_pool):
    """The module's pool of 2. Calls a test leaves running (a sleep it waited for only
    briefly) are cancelled after it: in another order they would hold both workers while
    the next test's calls wait out its timeout."""
    yield shared_pool
    for job in list(shared_pool.executor._jobs):
        job.cancel()


@pytest.fixture
def fixed():
    """CPython's module-level futures in their fixed states."""
    return {"PENDING": _done_future("pending"), "RUNNING": _done_future("running"),
            "CANCELLED": _done_future("cancelled"),
            "CANCELLED_AND_NOTIFIED": _done_future("cancelled_and_notified"),
            "EXCEPTION": _done_future("finished", exception=OSError()),
            "SUCCESSFUL": _done_future("finished", result=42)}


def test_is_a_concurrent_futures_executor(pool):
    assert isinstance(pool, cf.Executor) and isinstance(pool.submit(abs, -1), cf.Future)


# --- ExecutorTest ------------------------------------------------------------------------
def test_submit(pool):
    assert pool.submit(pow, 2, 8).result() == 256


def test_submit_keyword(pool):
    assert pool.submit(mul, 2, y=8).result() == 16
    assert pool.submit(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    with pytest.raises(TypeError):
        pool.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        pool.submit(arg=1)


def test_call_async_and_submit_take_fn_and_self_keywords(pool):
    ex = pool.executor
    assert ex.call_async(capture, 1, self=2, fn=3).result() == ((1,), {"self": 2, "fn": 3})
    assert ex.submit(capture, fn=3).result() == ((), {"fn": 3})


def test_map(pool):
    assert list(pool.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(pool.map(pow, range(10), range(10), chunksize=3)) == list(map(pow, range(10), range(10)))
    # several iterables of different lengths stop at the shortest, as zip() does
    assert list(pool.map(capture, "abc", [1, 2])) == [(("a", 1), {}), (("b", 2), {})]
    # a dict element is one argument here (not keyword arguments as in Executor.map)
    assert list(pool.map(capture, [{"a": 1}])) == [(({"a": 1},), {})]


def test_map_is_lazy_in_order(pool):
    it = pool.map(time.sleep, [0.5, 0])
    assert not isinstance(it, (list, tuple)) and iter(it) is it
    assert list(it) == [None, None]


def test_map_exception(pool):
    i = pool.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(i) == (0, 1)
    assert next(i) == (0, 1)
    with pytest.raises(ZeroDivisionError):
        next(i)


def test_map_timeout(pool):
    results = []
    with pytest.raises(cf.TimeoutError):
        for r in pool.map(time.sleep, [0, 0, 60], timeout=5):
            results.append(r)
    assert results == [None, None]


def test_shutdown_race_issue12456(tmp_path):
    p = CloudPoolExecutor(max_workers=2)
    p.map(str, [2] * 3)
    p.shutdown()


def test_no_stale_references(pool):
    obj = MyObject()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    fut = pool.submit(obj.my_method)
    del obj
    assert collected.wait(timeout=30)
    assert fut.result(timeout=30) is None and ref() is None


def test_max_workers_negative():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            CloudPoolExecutor(max_workers=number)


def test_free_reference(pool):
    for obj in pool.map(make_dummy_object, range(10)):
        wr = weakref.ref(obj)
        del obj
        gc.collect()
        assert wr() is None


def test_map_submits_without_iteration(tmp_path):
    marks = str(tmp_path / "marks")
    os.mkdir(marks)

    def record_finished(n):
        open(os.path.join(marks, str(n)), "w").close()

    p = CloudPoolExecutor(max_workers=2)
    p.map(record_finished, range(10))
    p.shutdown(wait=True)
    assert sorted(map(int, os.listdir(marks))) == list(range(10))


# --- WaitTests (cf.wait and our own wait) -----------------------------------------------
@pytest.mark.parametrize("wait", [cf.wait, cb.wait])
def test_wait_20369(pool, wait):
    future = pool.submit(time.sleep, 1.0)
    done, not_done = wait([future, future], return_when=cf.ALL_COMPLETED)
    assert done == {future} and not not_done


@pytest.mark.parametrize("wait", [cf.wait, cb.wait])
def test_wait_first_completed(pool, fixed, wait):
    future1 = pool.submit(mul, 21, 2)
    future2 = pool.submit(time.sleep, 3)
    done, not_done = wait([fixed["CANCELLED"], future1, future2], return_when=cf.FIRST_COMPLETED)
    assert done == {future1} and not_done == {fixed["CANCELLED"], future2}


def test_wait_first_completed_some_already_completed(pool, fixed):
    future1 = pool.submit(time.sleep, 1.5)
    finished, pending = cf.wait([fixed["CANCELLED_AND_NOTIFIED"], fixed["SUCCESSFUL"], future1],
                                return_when=cf.FIRST_COMPLETED)
    assert finished == {fixed["CANCELLED_AND_NOTIFIED"], fixed["SUCCESSFUL"]} and pending == {future1}


@pytest.mark.parametrize("wait", [cf.wait, cb.wait])
def test_wait_first_exception(pool, wait):
    future1 = pool.submit(mul, 2, 21)
    future2 = pool.submit(sleep_and_raise, 1.5)
    future3 = pool.submit(time.sleep, 6)
    finished, pending = wait([future1, future2, future3], return_when=cf.FIRST_EXCEPTION)
    assert finished == {future1, future2} and pending == {future3}


def test_wait_first_exception_some_already_complete(pool, fixed):
    future1 = pool.submit(divmod, 21, 0)
    future2 = pool.submit(time.sleep, 3)
    finished, pending = cf.wait([fixed["SUCCESSFUL"], fixed["CANCELLED"], fixed["CANCELLED_AND_NOTIFIED"],
                                 future1, future2], return_when=cf.FIRST_EXCEPTION)
    assert finished == {fixed["SUCCESSFUL"], fixed["CANCELLED_AND_NOTIFIED"], future1}
    assert pending == {fixed["CANCELLED"], future2}


def test_wait_first_exception_one_already_failed(pool, fixed):
    future1 = pool.submit(time.sleep, 2)
    finished, pending = cf.wait([fixed["EXCEPTION"], future1], return_when=cf.FIRST_EXCEPTION)
    assert finished == {fixed["EXCEPTION"]} and pending == {future1}


@pytest.mark.parametrize("wait", [cf.wait, cb.wait])
def test_wait_all_completed(pool, fixed, wait):
    future1 = pool.submit(divmod, 2, 0)
    future2 = pool.submit(mul, 2, 21)
    given = [fixed["SUCCESSFUL"], fixed["CANCELLED_AND_NOTIFIED"], fixed["EXCEPTION"], future1, future2]
    finished, pending = wait(given, return_when=cf.ALL_COMPLETED)
    assert finished == set(given) and not pending


def test_wait_timeout(pool, fixed):
    future1 = pool.submit(mul, 6, 7)
    future2 = pool.submit(time.sleep, 10)
    finished, pending = cf.wait([fixed["CANCELLED_AND_NOTIFIED"], fixed["EXCEPTION"], fixed["SUCCESSFUL"],
                                 future1, future2], timeout=5, return_when=cf.ALL_COMPLETED)
    assert finished == {fixed["CANCELLED_AND_NOTIFIED"], fixed["EXCEPTION"], fixed["SUCCESSFUL"], future1}
    assert pending == {future2}


# --- AsCompletedTests (cf.as_completed and our own) --------------------------------------
@pytest.mark.parametrize("as_completed", [cf.as_completed, cb.as_completed])
def test_as_completed_no_timeout(pool, fixed, as_completed):
    future1 = pool.submit(mul, 2, 21)
    future2 = pool.submit(mul, 7, 6)
    given = {fixed["CANCELLED_AND_NOTIFIED"], fixed["EXCEPTION"], fixed["SUCCESSFUL"], future1, future2}
    assert set(as_completed(given)) == given


@pytest.mark.parametrize("as_completed", [cf.as_completed, cb.as_completed])
def test_as_completed_future_times_out(pool, fixed, as_completed):
    already = {fixed["CANCELLED_AND_NOTIFIED"], fixed["EXCEPTION"], fixed["SUCCESSFUL"]}
    future = pool.submit(time.sleep, 6)
    for timeout in (0, 0.01):
        completed = set()
        with pytest.raises(cf.TimeoutError):
            for f in as_completed(already | {future}, timeout):
                completed.add(f)
        assert completed == already


def test_as_completed_duplicate_futures(pool):
    future1 = pool.submit(time.sleep, 2)
    assert len(list(cb.as_completed(itertools.repeat(future1, 3)))) == 1


def test_as_completed_free_reference_yielded_future():
    futures_list = [cf.Future() for _ in range(8)]
    futures_list.append(_done_future("cancelled_and_notified"))
    futures_list.append(_done_future("finished", result=42))
    with pytest.raises(cf.TimeoutError):
        for future in cb.as_completed(futures_list, timeout=0):
            futures_list.remove(future)
            wr = weakref.ref(future)
            del future
            gc.collect()
            assert wr() is None


def test_as_completed_correct_timeout_exception_msg(fixed):
    given = [fixed["CANCELLED_AND_NOTIFIED"], fixed["PENDING"], fixed["RUNNING"], fixed["SUCCESSFUL"]]
    with pytest.raises(cf.TimeoutError) as info:
        list(cb.as_completed(given, timeout=0))
    assert str(info.value) == "2 (of 4) futures unfinished"


# --- ExecutorShutdownTest -----------------------------------------------------------------
def test_run_after_shutdown():
    p = CloudPoolExecutor(max_workers=1)
    p.shutdown()
    with pytest.raises(RuntimeError):
        p.submit(pow, 2, 5)
    with pytest.raises(RuntimeError):
        p.map(pow, [2], [5])


def test_hang_issue12364():
    p = CloudPoolExecutor(max_workers=2)
    fs = [p.submit(time.sleep, 0.1) for _ in range(20)]
    p.shutdown()
    assert [f.result() for f in fs] == [None] * 20


def test_cancel_futures():
    p = CloudPoolExecutor(max_workers=2)
    fs = [p.submit(time.sleep, 0.5) for _ in range(20)]
    p.shutdown(cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    assert len(cancelled) >= 10
    assert all(f.done() for f in fs)  # with wait=True every future has ended


@pytest.mark.parametrize("how", ["shutdown", "ctrl-c"])
def test_cancel_futures_cancels_every_call_not_yet_started(tmp_path, how):
    """Only the calls the 2 workers had started end as "cancelled while running"; a worker
    freed by one job's cancel must not start the next job's queued call first. Ctrl-C
    while waiting cancels the same way (``interrupt.cancel_jobs``)."""
    from cloudbutton_executor.interrupt import cancel_jobs
    from cloudbutton_executor.storage import LocalStorage

    p = CloudPoolExecutor(max_workers=2, storage=LocalStorage(str(tmp_path / "storage")))
    fs = [p.submit(time.sleep, 2) for _ in range(20)]  # submitted well within one call
    if how == "shutdown":
        p.shutdown(cancel_futures=True)
    else:
        assert cancel_jobs(p.executor._jobs) is not None
        p.shutdown(wait=True)
    started = [f for f in fs if not f.cancelled()]
    assert len(started) <= 2, f"{len(started)} of 20 calls were started"
    for f in started:
        with pytest.raises(cf.CancelledError, match="was cancelled"):
            f.result(timeout=0)


def _fresh_interpreter(body: str, tmp_path) -> dict:
    """Run ``body`` in a new interpreter; it ends by printing the leftovers as JSON."""
    script = tmp_path / "prog.py"
    script.write_text(textwrap.dedent("""
        import gc, json, os, sys, threading, time
        import psutil
        from cloudbutton_executor import CloudPoolExecutor

        def alive(p):
            try:
                return p.status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:  # ended between the listing and the look
                return False

        def leftovers():
            return {"threads": sorted(t.name for t in threading.enumerate() if t.name != "MainThread"),
                    "children": [p.pid for p in psutil.Process().children(recursive=True)
                                 if alive(p)]}

        def settled(limit=30):
            end = time.time() + limit
            while (leftovers()["threads"] or leftovers()["children"]) and time.time() < end:
                time.sleep(0.05)
            return leftovers()
    """) + textwrap.dedent(body))
    p = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True,
                       timeout=120, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_context_manager_shutdown_leaves_nothing_behind(tmp_path):
    out = _fresh_interpreter("""
        with CloudPoolExecutor(max_workers=5) as p:
            assert p.submit(abs, -5).result() == 5
            assert list(p.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
            during = leftovers()
        after = leftovers()  # at once: shutdown(wait=True) returned
        print(json.dumps({"during": during, "after": after}))
    """, tmp_path)
    assert len([t for t in out["during"]["threads"] if t.startswith("cloudbutton-local")]) == 5
    assert out["during"]["children"]
    assert out["after"] == {"threads": [], "children": []}


def test_shutdown_no_wait_and_del_shutdown(tmp_path):
    out = _fresh_interpreter("""
        p = CloudPoolExecutor(max_workers=5)
        res = p.map(abs, range(-5, 5))
        p.shutdown(wait=False)  # returns at once; everything ends when the work has
        no_wait = settled()
        values = list(res)
        q = CloudPoolExecutor(max_workers=3)
        res = q.map(abs, range(-5, 5))
        del q
        gc.collect()
        deleted = settled()
        print(json.dumps({"no_wait": no_wait, "deleted": deleted, "values": values + list(res)}))
    """, tmp_path)
    assert out["no_wait"] == {"threads": [], "children": []}
    assert out["deleted"] == {"threads": [], "children": []}
    assert out["values"] == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4] * 2


def test_interpreter_shutdown_finishes_pending_work(tmp_path):
    out = _fresh_interpreter(f"""
        def sleep_and_mark(t, path):
            import time
            time.sleep(t)
            open(path, "w").close()

        p = CloudPoolExecutor(max_workers=1)
        p.submit(sleep_and_mark, 1.0, {str(tmp_path / "apple")!r})
        print(json.dumps({{}}))  # and exit without shutdown()
    """, tmp_path)
    assert out == {} and (tmp_path / "apple").exists()


def test_executor_shutdown_leaves_nothing_behind(tmp_path):
    """The PyWren-style Executor too (five cloudbutton-local-N threads used to survive)."""
    out = _fresh_interpreter("""
        from cloudbutton_executor import Executor
        with Executor(workers=5) as ex:
            ex.map(abs, range(10)).result()
            ex.map_reduce(abs, range(4), sum).result()
        print(json.dumps(leftovers()))
    """, tmp_path)
    assert out == {"threads": [], "children": []}
